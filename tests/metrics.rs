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

/// A tracing layer that publishes the metrics again when it sees an event (a layer that
/// scrapes on warnings, say): the warning about two layers sharing labels is user code run
/// while publishing, so the process-wide list of publishers must not be held across it.
#[test]
fn a_subscriber_that_publishes_on_the_shared_labels_warning_does_not_deadlock() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tracing_subscriber::layer::SubscriberExt;

    struct PublishOnEvent {
        handle: tower_failover::FailoverHandle,
        once: Arc<AtomicBool>,
    }
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PublishOnEvent {
        fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            if !self.once.swap(true, Ordering::SeqCst) {
                self.handle.publish_metrics_as("reentrant");
            }
        }
    }

    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let pair = Endpoints::dynamics("https://reentrant.api.crm.dynamics.com").unwrap();
        let first = FailoverLayer::new(pair.clone()).handle();
        let second = FailoverLayer::new(pair).handle();
        let once = Arc::new(AtomicBool::new(false));
        let subscriber = tracing_subscriber::registry().with(PublishOnEvent {
            handle: first.clone(),
            once: once.clone(),
        });
        tracing::subscriber::with_default(subscriber, || {
            first.publish_metrics_as("reentrant");
            // Warns (same labels as `first`): the layer publishes `first` from inside.
            second.publish_metrics_as("reentrant");
        });
        done.send(once.load(Ordering::SeqCst)).unwrap();
    });
    let warned = finished
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("publishing from inside the warning deadlocked");
    assert!(warned, "the shared labels were warned about");
}
