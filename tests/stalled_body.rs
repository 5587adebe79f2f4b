//! A server that sends an error head and then stalls its body must not hold the call: the
//! peek gives up after the classifier's `peek_timeout` and the response is handed back.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};
use tower_failover::{Endpoints, FailoverLayer, Side};

#[tokio::test]
async fn a_stalled_error_body_is_handed_back_after_the_peek_timeout() {
    within(10, async {
        // A primary that answers 500 with a small declared body, sends none of it, and keeps
        // the connection open.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stalling = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            socket
                .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: 80\r\n\r\n")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let pair = Pair::start().await;
        pair.resolver.map(PRIMARY_HOST, addr);
        let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
        let handle = layer.handle();
        let mut service = pair.through(layer);
        let started = Instant::now();
        let request = http::Request::get(format!("{PRIMARY_URL}/x")).body(Full::new(Bytes::new())).unwrap();
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        let elapsed = started.elapsed();
        // Judged by its head: a plain 500 is not an outage, so it comes back as it is.
        assert_eq!(response.status(), 500);
        assert!(elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_secs(5), "{elapsed:?}");
        assert_eq!(handle.active(), Side::Primary);
        stalling.abort();
    })
    .await
}
