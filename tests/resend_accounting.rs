//! What a re-send that was decided on but never went out costs and says: counters count
//! re-sends as they go out, the budget gets back what one that never went out took, and errors
//! say which attempts were made. (In process where the inner service must fail `poll_ready`,
//! which no real client does on demand; over loopback otherwise.)

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use support::*;
use tower_failover::{FailoverLayer, RetryBudget, Side};

/// A failover re-send that is then throttled and retried counts one of each.
#[tokio::test]
async fn a_resend_throttled_and_retried_counts_one_of_each() {
    within(10, async {
        let pair = Pair::start().await;
        pair.primary.set(Behavior::Status(503, "{}"));
        let (behavior, _) = first_n_then_ok(1, || reply(429, &[("retry-after", "0")], ""));
        pair.alternate.set(behavior);
        let layer = layer_builder().build().unwrap();
        let handle = layer.handle();
        let service = pair.through(layer);
        send_ok(&service, request(Method::GET, "/api/data/v9.2/accounts")).await;
        let c = handle.counters();
        assert_eq!(handle.active(), Side::Alternate);
        assert_eq!(pair.primary.count() + pair.alternate.count(), 3);
        assert_eq!((c.failover_resends, c.throttle_retries), (1, 1), "{c:?}");
    })
    .await
}

/// A throttling retry that never goes out (the caller drops the call during the wait) is
/// neither counted nor charged: the next call's retry, the first to go out, is not refused by
/// the budget.
#[tokio::test]
async fn a_call_dropped_during_its_throttling_wait_does_not_spend_the_budget() {
    within(10, async {
        let pair = Pair::start().await;
        pair.primary.set(throttled_once_per_query());
        let layer = layer_builder()
            .throttle_budget(RetryBudget::new(0.0).floor_per_second(1))
            .build()
            .unwrap();
        let handle = layer.handle();
        let service = pair.through(layer);

        // The first call is throttled for 5 s; the caller gives up after 200 ms.
        let first = send(&service, request(Method::GET, "/api/data/v9.2/accounts?wait=5"));
        assert!(tokio::time::timeout(Duration::from_millis(200), first).await.is_err());
        let c = handle.counters();
        assert_eq!((c.throttled, c.throttle_retries), (1, 0), "nothing was retried: {c:?}");

        // The second call is throttled for 0 s: its retry is the first to go out.
        let response = send(&service, request(Method::GET, "/api/data/v9.2/accounts?wait=0"))
            .await
            .unwrap();
        let c = handle.counters();
        assert_eq!(
            (response.status().as_u16(), c.throttle_retries, c.refused_by_budget),
            (200, 1, 0),
            "the only retry that would go out was refused by a budget spent on a retry that never went out: {c:?}"
        );
    })
    .await
}

/// Whether the stand-in inner service gets ready, given how often it has been called.
#[derive(Clone, Copy)]
enum Ready {
    Yes,
    Fails,
    // Back-pressure (a full concurrency limit, say) that outlasts the call.
    Never,
}

type Answer = Result<http::Response<http_body_util::Full<bytes::Bytes>>, std::io::Error>;

/// An inner service that follows a script: whether it is ready after `n` calls, and what its
/// call number `n` answers. A stand-in: no real client fails or stalls its readiness on demand.
#[derive(Clone)]
struct Scripted {
    calls: Arc<AtomicUsize>,
    ready_after: fn(usize) -> Ready,
    answer: fn(usize, &http::Request<TestBody>) -> Answer,
}

impl Scripted {
    fn new(ready_after: fn(usize) -> Ready, answer: fn(usize, &http::Request<TestBody>) -> Answer) -> Self {
        Scripted {
            calls: Arc::default(),
            ready_after,
            answer,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl tower::Service<http::Request<TestBody>> for Scripted {
    type Response = http::Response<http_body_util::Full<bytes::Bytes>>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Answer>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        match (self.ready_after)(self.calls()) {
            Ready::Yes => std::task::Poll::Ready(Ok(())),
            Ready::Fails => std::task::Poll::Ready(Err(std::io::Error::other("service closed"))),
            Ready::Never => std::task::Poll::Pending,
        }
    }

    fn call(&mut self, request: http::Request<TestBody>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready((self.answer)(n, &request))
    }
}

fn refused() -> Answer {
    Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
}

fn throttled() -> Answer {
    Ok(reply(429, &[("retry-after", "0")], ""))
}

/// Sends one GET through the layer to `inner`; its error.
async fn fails(layer: FailoverLayer, inner: Scripted) -> tower_failover::FailoverError {
    use tower::{ServiceBuilder, ServiceExt};
    let mut service = ServiceBuilder::new().layer(layer).service(inner);
    let request = request(Method::GET, "/api/data/v9.2/WhoAmI");
    tower::Service::call(service.ready().await.unwrap(), request)
        .await
        .unwrap_err()
}

/// The failover re-send went out (refused at connect on the primary, answered 429 by the
/// alternate); only the throttling retry after it could not get the inner service ready. The
/// error says the call was re-sent, as the counters do, and names no reason it was not.
#[tokio::test]
async fn a_not_ready_retry_after_a_re_send_says_the_re_send_went_out() {
    let inner = Scripted::new(
        |calls| if calls < 2 { Ready::Yes } else { Ready::Fails },
        |n, request| match n {
            0 => {
                assert_eq!(request.uri().host(), Some(PRIMARY_HOST));
                refused()
            }
            _ => {
                assert_eq!(request.uri().host(), Some(ALTERNATE_HOST));
                throttled()
            }
        },
    );
    let layer = layer_builder().build().unwrap();
    let handle = layer.handle();
    let error = fails(layer, inner.clone()).await;
    assert_eq!(inner.calls(), 2, "primary, then the alternate");
    let counters = handle.counters();
    assert_eq!(counters.failover_resends, 1);
    assert!(error.was_resent(), "{error}; counters {counters:?}");
    assert_eq!(error.not_resent_because(), None, "{error}");
}

/// The primary refused the GET at connect (never sent), and the re-send waited for the inner
/// service until the deadline passed: nothing went out after the refused connect, and the
/// counters and the error agree (no re-send, not possibly applied).
#[tokio::test]
async fn a_deadline_passing_while_the_resend_waits_to_go_out_says_what_went_out() {
    use tower_failover::RetryPolicy;
    let inner = Scripted::new(
        |calls| if calls == 0 { Ready::Yes } else { Ready::Never },
        |_, _| refused(),
    );
    let layer = layer_builder()
        .default_policy(RetryPolicy::by_method().deadline(Duration::from_millis(200)))
        .build()
        .unwrap();
    let handle = layer.handle();
    let error = fails(layer, inner.clone()).await;
    assert_eq!(inner.calls(), 1, "only the refused connect");
    let counters = handle.counters();
    assert_eq!(counters.failover_resends, 0, "nothing was re-sent");
    assert!(
        !error.was_resent() && !error.possibly_applied(),
        "was_resent={} possibly_applied={}: {error}; counters {counters:?}",
        error.was_resent(),
        error.possibly_applied()
    );
}

/// No outage at all (a 429, then the throttling retry cannot get the inner service ready):
/// `not_resent_because` is `None`, as documented for a failure that was not an outage.
#[tokio::test]
async fn a_not_ready_throttling_retry_without_an_outage_names_no_failover_reason() {
    let inner = Scripted::new(
        |calls| if calls < 1 { Ready::Yes } else { Ready::Fails },
        |_, _| throttled(),
    );
    let layer = layer_builder().build().unwrap();
    let handle = layer.handle();
    let error = fails(layer, inner.clone()).await;
    assert_eq!(inner.calls(), 1);
    assert_eq!(handle.active(), Side::Primary, "no outage, no switch");
    assert_eq!(error.not_resent_because(), None, "{error}");
}
