//! (feature `metrics`) the handle's counters through the `metrics` facade.
#![cfg(feature = "metrics")]

mod support;

use bytes::Bytes;
use http_body_util::Full;
use support::*;
use tower::{Service, ServiceExt};
use tower_failover::{Endpoints, FailoverLayer};

fn get(path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(format!("{PRIMARY_URL}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn counters_are_published_through_the_metrics_facade() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    within(10, async {
        let pair = Pair::start().await;
        let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
        let handle = layer.handle();
        let mut service = pair.through(layer);
        pair.primary.kill().await;
        service.ready().await.unwrap().call(get("/x")).await.unwrap();

        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || handle.publish_metrics());
        let values: Vec<(String, DebugValue)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| (key.key().name().to_string(), value))
            .collect();
        let find = |name: &str| {
            values
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("no {name} in {values:?}"))
        };
        assert!(
            matches!(find("failover_calls_total"), DebugValue::Counter(1)),
            "failover_calls_total"
        );
        assert!(
            matches!(find("failover_switches_total"), DebugValue::Counter(1)),
            "failover_switches_total"
        );
        assert!(
            matches!(find("failover_resends_total"), DebugValue::Counter(1)),
            "failover_resends_total"
        );
        assert!(
            matches!(find("failover_generation"), DebugValue::Gauge(v) if v.into_inner() == 1.0),
            "failover_generation"
        );
        assert!(
            matches!(find("failover_active_alternate"), DebugValue::Gauge(v) if v.into_inner() == 1.0),
            "failover_active_alternate"
        );
    })
    .await
}
