//! How one call is driven through the tower `Service` contract: its deadline against a
//! runtime that runs late, and an inner service whose `call` panics.

mod support;

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use http::Method;
use support::*;
use tower::{Service, ServiceExt};
use tower_failover::{FailoverErrorKind, RetryPolicy};

/// The throttling wait ends (its timer fires) before the deadline, but the runtime is busy and
/// polls the call only after the deadline, before its timer driver has seen the deadline pass.
/// Nothing may go out after the deadline: the retry is not sent, and the call fails as not
/// applied (the only attempt was turned away with a 429).
#[tokio::test(flavor = "current_thread")]
async fn a_throttling_retry_whose_wait_ends_late_does_not_go_out_after_the_deadline() {
    within(10, async {
        let pair = Pair::start().await;
        pair.primary.set(throttled_once_per_query());
        let layer = layer_builder()
            .default_policy(RetryPolicy::by_method().deadline(Duration::from_millis(1300)))
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut service = pair.through(layer);
        let call = service
            .ready()
            .await
            .unwrap()
            .call(request(Method::GET, "/api/data/v9.2/accounts?wait=1"));
        let mut call = std::pin::pin!(call);
        // The first attempt is answered 429 with `Retry-After: 1`: the call waits 1 s.
        assert!(tokio::time::timeout(Duration::from_millis(500), call.as_mut())
            .await
            .is_err());
        assert_eq!(pair.primary.count(), 1);
        // The wait's timer fires at about 1 s while the call is not polled; the runtime then
        // blocks past the deadline (1.3 s) before it polls the call again.
        tokio::time::sleep(Duration::from_millis(700)).await;
        std::thread::sleep(Duration::from_millis(400));
        let error = call.await.unwrap_err();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let counters = handle.counters();
        assert_eq!(
            (pair.primary.count(), counters.throttle_retries),
            (1, 0),
            "a retry went out after the deadline: {error}; {counters:?}"
        );
        assert!(
            matches!(error.kind(), FailoverErrorKind::DeadlineExceeded),
            "{error}"
        );
        assert!(!error.possibly_applied(), "only a 429 came back: {error}");
    })
    .await
}

/// Calling the layer without `poll_ready` over a `ConcurrencyLimit` panics in the inner
/// service's `call`, as tower allows. The write that call began in the ledger must not stay
/// "in flight" for ever, listed in every later report however old: it is settled, and leaves
/// the report with the window.
#[tokio::test]
async fn a_call_whose_inner_call_panics_does_not_stay_in_flight_in_the_ledger() {
    within(10, async {
        let pair = Pair::start().await;
        let layer = layer_builder()
            .replication_window(Duration::from_millis(100))
            .build()
            .unwrap();
        let handle = layer.handle();
        let limited = tower::limit::ConcurrencyLimit::new(pair.client::<TestBody>(), 1);
        let mut service = tower::Layer::layer(&layer, limited);
        let panicked = std::panic::catch_unwind(AssertUnwindSafe(|| {
            drop(service.call(request(Method::POST, "/api/data/v9.2/accounts")));
        }));
        assert!(panicked.is_err(), "ConcurrencyLimit panics without poll_ready");
        // The service still works when used as tower asks.
        send_ok(&service, request(Method::GET, "/api/data/v9.2/WhoAmI")).await;
        assert_eq!(pair.primary.count_of(&Method::POST), 0, "the POST never left");
        // Well past the window (and its 50 ms widening).
        tokio::time::sleep(Duration::from_millis(400)).await;
        handle.switch_endpoint();
        let report = handle.last_report().unwrap();
        assert!(
            report.unknown.is_empty() && report.acknowledged.is_empty(),
            "a write that never left is still listed: {report:?}"
        );
    })
    .await
}

/// A classifier may judge an *error* as throttling. A POST is not retried after one (it may
/// have been received), but the throttled attempt was seen all the same: `throttled` counts
/// throttled attempts "retried or not".
#[tokio::test]
async fn a_throttling_error_that_is_not_retried_is_counted_as_throttled() {
    use tower_failover::{DefaultClassifier, Outcome, Verdict};
    within(10, async {
        let pair = Pair::start().await;
        pair.primary.kill().await;
        let default = DefaultClassifier::default();
        let layer = layer_builder()
            .classifier(move |outcome: Outcome<'_>| match outcome {
                // The primary's refused connect, read as "slow down".
                Outcome::Error(_) => Verdict::Throttled {
                    retry_after: Some(Duration::ZERO),
                },
                response => tower_failover::Classifier::classify(&default, response),
            })
            .build()
            .unwrap();
        let handle = layer.handle();
        let service = pair.through(layer);
        let error = send(&service, request(Method::POST, "/api/data/v9.2/accounts"))
            .await
            .unwrap_err();
        let counters = handle.counters();
        assert_eq!(counters.throttle_retries, 0, "a POST is not retried: {error}");
        assert_eq!(
            counters.throttled, 1,
            "the throttled attempt was not counted: {counters:?}"
        );
    })
    .await
}
