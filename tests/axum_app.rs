//! The axum example, served for real: a plain client calls the application, the application
//! calls the loopback pair through its failover client, and the per-route policies (set by
//! `route_layer`, copied onto the upstream request by the handlers) decide what is re-sent.

// The example brings the loopback servers (`tests/support`) with it.
#[path = "../examples/axum_app.rs"]
mod axum_app;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tower_failover::{Endpoints, FailoverHandle, Side};

use axum_app::support::*;
use axum_app::{app, upstream_client, AppState};

/// The per-attempt limit given to the application's upstream client.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(200);

/// The application served on a loopback port, in front of a fresh pair.
struct Running {
    pair: Pair,
    handle: FailoverHandle,
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

async fn start() -> Running {
    let pair = Pair::start().await;
    let (upstream, handle) = upstream_client(
        pair.resolver.connector(),
        Endpoints::dynamics(PRIMARY_URL).unwrap(),
        ATTEMPT_TIMEOUT,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = app(AppState::new(upstream));
    tokio::spawn(async move { axum::serve(listener, router).await });
    Running {
        pair,
        handle,
        base,
        client: Client::builder(TokioExecutor::new()).build_http(),
    }
}

impl Running {
    /// Calls the application; returns its status and JSON body.
    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
        (status, json)
    }
}

fn posts_to(server: &Server) -> usize {
    server.seen().iter().filter(|s| s.method == Method::POST).count()
}

#[tokio::test]
async fn read_route_is_resent_on_the_alternate_when_the_primary_dies() {
    within(15, async {
        let app = start().await;

        let (status, body) = app.call(Method::GET, "/orders/42", &[], "").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["order_id"], "42");
        assert_eq!(body["upstream"]["server"], PRIMARY_HOST, "{body}");
        let seen = app.pair.primary.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].path, "/api/data/v9.2/salesorders(42)");
        assert_eq!(seen[0].host.as_deref(), Some(PRIMARY_HOST));

        app.pair.primary.kill().await;
        let (status, body) = app.call(Method::GET, "/orders/42", &[], "").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["upstream"]["server"], ALTERNATE_HOST, "{body}");
        assert_eq!(app.handle.active(), Side::Alternate);
        // The application's own call went through in one piece: the layer re-sent it.
        assert_eq!(app.handle.counters().failover_resends, 1);
        let seen = app.pair.alternate.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].host.as_deref(), Some(ALTERNATE_HOST));

        let (status, body) = app.call(Method::GET, "/upstream", &[], "").await;
        assert_eq!(status, 200);
        assert_eq!(body["side"], "alternate", "{body}");
        assert_eq!(body["generation"], 1, "{body}");
    })
    .await
}

#[tokio::test]
async fn write_route_is_not_resent_after_a_timeout() {
    within(15, async {
        let app = start().await;
        let order = r#"{"customer":"Fourth Coffee"}"#;

        // Healthy: the order is created on the primary.
        let (status, body) = app.call(Method::POST, "/orders", &[], order).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["upstream"]["server"], PRIMARY_HOST, "{body}");

        // The primary now reads requests and never answers within the attempt's limit. The
        // POST carries an Idempotency-Key, which would make it re-sendable under the layer's
        // default policy: only the route's `never`, copied onto the upstream request, stops it.
        app.pair.primary.set(Behavior::Delay(Duration::from_secs(5)));
        let headers = [
            ("content-type", "application/json"),
            ("idempotency-key", "order-7"),
        ];
        let (status, body) = app.call(Method::POST, "/orders", &headers, order).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert_eq!(body["possibly_applied"], true, "{body}");
        assert_eq!(body["kind"], "timeout", "{body}");
        assert_eq!(body["resent"], false, "{body}");
        assert!(
            body["not_resent_because"]
                .as_str()
                .is_some_and(|reason| reason.contains("policy")),
            "{body}"
        );

        // The primary did read it (so "possibly applied" is the truth) ...
        wait_until(2, "the primary has read both POSTs", || {
            posts_to(&app.pair.primary) == 2
        })
        .await;
        assert_eq!(
            app.pair.primary.seen()[1].idempotency_key.as_deref(),
            Some("order-7")
        );
        // ... and the alternate never got a copy, even a late one.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(posts_to(&app.pair.alternate), 0);
        assert_eq!(app.handle.counters().failover_resends, 0);
        assert_eq!(app.handle.counters().possibly_applied, 1);

        // The timeout still moved later calls to the alternate; the report lists the write
        // whose outcome is unknown under its key.
        assert_eq!(app.handle.active(), Side::Alternate);
        let report = app.handle.last_report().expect("a data-loss report");
        assert!(
            report.unknown.iter().any(|w| w.key.as_deref() == Some("order-7")),
            "{report:?}"
        );
        let (status, body) = app.call(Method::GET, "/orders/1", &[], "").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["upstream"]["server"], ALTERNATE_HOST, "{body}");
    })
    .await
}

#[tokio::test]
async fn unknown_routes_and_bad_ids_never_reach_the_upstream() {
    within(15, async {
        let app = start().await;
        let request = Request::get(format!("{}/nowhere", app.base))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = app.client.request(request).await.unwrap();
        assert_eq!(response.status(), 404);
        let (status, body) = app.call(Method::GET, "/orders/bad%20id", &[], "").await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(app.pair.primary.count() + app.pair.alternate.count(), 0);
    })
    .await
}
