//! tracing spans and fields named after the OpenTelemetry HTTP conventions, and the counters
//! on the handle. Alone in its test binary: a thread-local subscriber must be the only one
//! that sees the crate's callsites first, or tracing caches "no interest" for them.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use support::*;
use tower::{Service, ServiceExt};
use tower_failover::{Endpoints, FailoverLayer};

/// Collects what the fmt subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn get(path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(format!("{PRIMARY_URL}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn calls_are_traced_with_opentelemetry_field_names_and_counted() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // The test runs on one thread, so a thread-local default sees every event of the call.
    let _guard = tracing::subscriber::set_default(subscriber);
    within(10, async {
        let pair = Pair::start().await;
        let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
        let handle = layer.handle();
        let mut service = pair.through(layer);
        service.ready().await.unwrap().call(get("/ok")).await.unwrap();
        pair.primary.kill().await;
        service.ready().await.unwrap().call(get("/after")).await.unwrap();

        let counters = handle.counters();
        assert_eq!(counters.calls, 2);
        assert_eq!(counters.switches, 1);
        assert_eq!(counters.failover_resends, 1);
        assert_eq!(counters.possibly_applied, 0);
    })
    .await;
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for expected in [
        "failover.call",
        // A host, as OpenTelemetry's `server.address` is, and its port apart.
        "server.address=\"contoso.api.crm.dynamics.com\"",
        "server.port=",
        "http.request.method=GET",
        "http.response.status_code=200",
        "error.type=\"endpoint_not_found\"",
        "failover: switching endpoint",
        "failover: re-sending on the other endpoint",
    ] {
        assert!(log.contains(expected), "missing `{expected}` in:\n{log}");
    }
    // The span is entered while the call is worked on: the switch the second call caused is
    // logged inside it, and after the re-send the span names the endpoint that answered.
    let switch = log
        .lines()
        .find(|line| line.contains("failover: switching endpoint"))
        .unwrap();
    assert!(
        switch.contains("failover.call{"),
        "outside the call's span: {switch}"
    );
    let answered = log
        .lines()
        .rev()
        .find(|line| line.contains("failover.call{") && line.contains("http.response.status_code=200"))
        .unwrap();
    assert!(
        answered.contains("server.address=\"contoso--s.api.crm.dynamics.com\""),
        "the span still names the endpoint the call left: {answered}"
    );
}

/// Two layers for one primary publishing under the same labels would overwrite each other's
/// series without a word; the second to publish says so, once.
#[cfg(feature = "metrics")]
#[test]
fn two_layers_publishing_metrics_under_the_same_labels_are_warned_about() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let pair = Endpoints::dynamics(PRIMARY_URL).unwrap();
    let first = FailoverLayer::new(pair.clone()).handle();
    let second = FailoverLayer::new(pair.clone()).handle();
    let named = FailoverLayer::new(pair).handle();
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let warnings = || {
        String::from_utf8(captured.0.lock().unwrap().clone())
            .unwrap()
            .matches("publish_metrics_as")
            .count()
    };
    metrics::with_local_recorder(&recorder, || {
        // Alone under its labels, and again: nothing to say.
        first.publish_metrics();
        first.publish_metrics();
        // Its own name: no clash either.
        named.publish_metrics_as("billing");
    });
    assert_eq!(warnings(), 0);
    metrics::with_local_recorder(&recorder, || {
        second.publish_metrics();
        second.publish_metrics();
        first.publish_metrics();
    });
    // Each of the two clashing layers is warned once, however often it publishes.
    assert_eq!(warnings(), 2);
    // Once one of them is gone, the other publishes in peace.
    drop(second);
    metrics::with_local_recorder(&recorder, || first.publish_metrics());
    assert_eq!(warnings(), 2);
}
