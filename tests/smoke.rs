mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::*;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_failover::{Endpoints, FailoverLayer, Side};

#[tokio::test]
async fn killed_primary_fails_over() {
    within(10, async {
        let pair = Pair::start().await;
        let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
        let handle = layer.handle();
        let mut svc = ServiceBuilder::new()
            .layer(layer)
            .service(pair.client::<tower_failover::ReplayBody<Full<Bytes>>>());
        let req = || {
            http::Request::post(format!("{PRIMARY_URL}/api/data/v9.2/accounts"))
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap()
        };
        let resp = svc.ready().await.unwrap().call(req()).await.unwrap();
        assert_eq!(resp.status(), 200);
        pair.primary.kill().await;
        let resp = svc.ready().await.unwrap().call(req()).await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains(ALTERNATE_HOST));
        assert_eq!(handle.active(), Side::Alternate);
        assert_eq!(pair.alternate.seen()[0].host.as_deref(), Some(ALTERNATE_HOST));
    })
    .await
}
