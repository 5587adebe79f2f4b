//! What a re-send that was decided on but never went out costs and says: counters count
//! re-sends as they go out, the budget gets back what one that never went out took, and errors
//! say which attempts were made. (In process where the inner service must fail `poll_ready`,
//! which no real client does on demand; over loopback otherwise.)

mod support;

use std::time::Duration;

use http::Method;
use support::*;
use tower_failover::{Endpoints, FailoverLayer, RetryBudget, Side};

fn builder() -> tower_failover::FailoverLayerBuilder {
    FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL).unwrap())
}

/// A failover re-send that is then throttled and retried counts one of each.
#[tokio::test]
async fn a_resend_throttled_and_retried_counts_one_of_each() {
    within(10, async {
        let pair = Pair::start().await;
        pair.primary.set(Behavior::Status(503, "{}"));
        let (behavior, _) = first_n_then_ok(1, || reply(429, &[("retry-after", "0")], ""));
        pair.alternate.set(behavior);
        let layer = builder().build().unwrap();
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
        let layer = builder()
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

/// Refused at connect on the primary, then 429 on the alternate, then `poll_ready` fails.
#[derive(Clone)]
struct RefusedThen429ThenNotReady {
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl tower::Service<http::Request<TestBody>> for RefusedThen429ThenNotReady {
    type Response = http::Response<http_body_util::Full<bytes::Bytes>>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        if self.calls.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            std::task::Poll::Ready(Ok(()))
        } else {
            std::task::Poll::Ready(Err(std::io::Error::other("service closed")))
        }
    }

    fn call(&mut self, request: http::Request<TestBody>) -> Self::Future {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::ready(match n {
            0 => {
                assert_eq!(request.uri().host(), Some(PRIMARY_HOST));
                Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
            }
            _ => {
                assert_eq!(request.uri().host(), Some(ALTERNATE_HOST));
                Ok(reply(429, &[("retry-after", "0")], ""))
            }
        })
    }
}

/// The failover re-send went out (and was answered 429 by the alternate); only the throttling
/// retry after it could not get the inner service ready. The error must not say the call was
/// not re-sent while the counters say it was.
#[tokio::test]
async fn a_throttling_retry_not_ready_after_a_resend_does_not_unsay_the_resend() {
    use tower::{ServiceBuilder, ServiceExt};
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let layer = builder().build().unwrap();
    let handle = layer.handle();
    let mut service = ServiceBuilder::new()
        .layer(layer)
        .service(RefusedThen429ThenNotReady { calls: calls.clone() });
    let error = tower::Service::call(
        service.ready().await.unwrap(),
        request(Method::GET, "/api/data/v9.2/WhoAmI"),
    )
    .await
    .unwrap_err();
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "primary, then the alternate"
    );
    let c = handle.counters();
    assert_eq!(c.failover_resends, 1);
    assert!(
        error.was_resent(),
        "the alternate answered the re-send (429), yet the error says it was not re-sent \
         ({:?}): {error}; counters {c:?}",
        error.not_resent_because()
    );
}

/// Refused at connect on the primary; the inner service then never gets ready again.
#[derive(Clone)]
struct RefusedThenNeverReady {
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl tower::Service<http::Request<TestBody>> for RefusedThenNeverReady {
    type Response = http::Response<http_body_util::Full<bytes::Bytes>>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        if self.calls.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            std::task::Poll::Ready(Ok(()))
        } else {
            // Back-pressure (a full concurrency limit, say) that outlasts the deadline.
            std::task::Poll::Pending
        }
    }

    fn call(&mut self, _: http::Request<TestBody>) -> Self::Future {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::ready(Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)))
    }
}

/// The primary refused the GET at connect (never sent), and the re-send waited for the inner
/// service until the deadline passed: nothing ever went out after the refused connect, and
/// the counters say so (no re-send). The error must agree: not re-sent, not possibly applied.
#[tokio::test]
async fn a_deadline_passing_while_the_resend_waits_to_go_out_says_what_went_out() {
    use tower::{ServiceBuilder, ServiceExt};
    use tower_failover::RetryPolicy;
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let layer = builder()
        .default_policy(RetryPolicy::by_method().deadline(Duration::from_millis(200)))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = ServiceBuilder::new()
        .layer(layer)
        .service(RefusedThenNeverReady { calls: calls.clone() });
    let error = tower::Service::call(
        service.ready().await.unwrap(),
        request(Method::GET, "/api/data/v9.2/WhoAmI"),
    )
    .await
    .unwrap_err();
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the refused connect"
    );
    let c = handle.counters();
    assert_eq!(c.failover_resends, 0, "nothing was re-sent");
    assert!(
        !error.was_resent() && !error.possibly_applied(),
        "the only attempt was refused at connect and no re-send went out, yet the error says \
         was_resent={} possibly_applied={}: {error}; counters {c:?}",
        error.was_resent(),
        error.possibly_applied()
    );
}

/// `was_resent()` and `not_resent_because()` never contradict each other: a failover re-send
/// went out (and was throttled); only its retry could not get the inner service ready.
#[tokio::test]
async fn a_not_ready_retry_after_a_re_send_does_not_say_both_re_sent_and_not_re_sent() {
    use tower::{ServiceBuilder, ServiceExt};
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let layer = builder().build().unwrap();
    let mut service = ServiceBuilder::new()
        .layer(layer)
        .service(RefusedThen429ThenNotReady { calls: calls.clone() });
    let error = tower::Service::call(
        service.ready().await.unwrap(),
        request(Method::GET, "/api/data/v9.2/WhoAmI"),
    )
    .await
    .unwrap_err();
    assert!(error.was_resent(), "{error}");
    assert_eq!(
        error.not_resent_because(),
        None,
        "was_resent() is true, yet not_resent_because() names a reason: {error}"
    );
}

/// 429 on the first call; `poll_ready` fails after that.
#[derive(Clone)]
struct ThrottledThenNotReady {
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl tower::Service<http::Request<TestBody>> for ThrottledThenNotReady {
    type Response = http::Response<http_body_util::Full<bytes::Bytes>>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        if self.calls.load(std::sync::atomic::Ordering::SeqCst) < 1 {
            std::task::Poll::Ready(Ok(()))
        } else {
            std::task::Poll::Ready(Err(std::io::Error::other("service closed")))
        }
    }

    fn call(&mut self, _: http::Request<TestBody>) -> Self::Future {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::ready(Ok(reply(429, &[("retry-after", "0")], "")))
    }
}

/// No outage at all (a 429, then the throttling retry cannot get the inner service ready):
/// `not_resent_because` is `None`, as documented for a failure that was not an outage.
#[tokio::test]
async fn a_not_ready_throttling_retry_without_an_outage_names_no_failover_reason() {
    use tower::{ServiceBuilder, ServiceExt};
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let layer = builder().build().unwrap();
    let handle = layer.handle();
    let mut service = ServiceBuilder::new()
        .layer(layer)
        .service(ThrottledThenNotReady { calls: calls.clone() });
    let error = tower::Service::call(
        service.ready().await.unwrap(),
        request(Method::GET, "/api/data/v9.2/WhoAmI"),
    )
    .await
    .unwrap_err();
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(handle.active(), Side::Primary, "no outage, no switch");
    assert_eq!(
        error.not_resent_because(),
        None,
        "no endpoint was found down, yet the error gives a reason it was not re-sent on the other endpoint: {error}"
    );
}
