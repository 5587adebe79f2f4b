//! Throttling: 429, 503 with `Retry-After` and the service-protection codes are retried on the
//! same endpoint after the server's delay, never switched; the policy's limits and deadline
//! and the throttling budget bound those retries, and the counters tell what happened.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use http::Method;
use support::*;
use tower_failover::{FailoverErrorKind, RetryBudget, RetryPolicy, Side};

fn too_many_requests(
    retry_after: &'static str,
) -> impl Fn() -> http::Response<http_body_util::Full<bytes::Bytes>> {
    move || reply(429, &[("retry-after", retry_after)], "")
}

/// A server that always answers 429 with this `Retry-After`.
fn always_429(retry_after: &'static str) -> Behavior {
    custom(move |_| async move { reply(429, &[("retry-after", retry_after)], "") })
}

#[tokio::test]
async fn a_429_is_retried_on_the_same_host_after_retry_after() {
    within(10, async {
        let pair = Pair::start().await;
        let (behavior, answered) = first_n_then_ok(1, too_many_requests("1"));
        pair.primary.set(behavior);
        let log = EventLog::new();
        let layer = layer_builder()
            .on_switch_required(log.recorder())
            .on_switched(log.recorder())
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut events = handle.events();
        let service = pair.through(layer);

        let started = Instant::now();
        let response = send(&service, request(Method::GET, "/api/data/v9.2/accounts"))
            .await
            .unwrap();
        let elapsed = started.elapsed();
        assert_eq!(response.status(), 200, "the second answer is returned");
        assert_eq!(text(response).await, r#"{"ok":true}"#);
        assert!(
            elapsed >= Duration::from_millis(900),
            "waited for Retry-After: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_secs(3),
            "waited about a second: {elapsed:?}"
        );

        assert_eq!(answered.load(Ordering::SeqCst), 2);
        assert_eq!(pair.primary.count(), 2);
        assert_eq!(pair.alternate.count(), 0);
        assert!(pair
            .primary
            .seen()
            .iter()
            .all(|s| s.host.as_deref() == Some(PRIMARY_HOST)));
        assert_eq!(handle.active(), Side::Primary);
        assert!(log.all().is_empty(), "throttling never switches");
        assert!(events.try_recv().is_err(), "no event");

        let counters = handle.counters();
        assert_eq!(counters.calls, 1);
        assert_eq!(counters.throttled, 1);
        assert_eq!(counters.throttle_retries, 1);
        assert_eq!(counters.switches, 0);
        assert_eq!(counters.failover_resends, 0);
        assert_eq!(counters.refused_by_budget, 0);
    })
    .await
}

#[tokio::test]
async fn an_http_date_retry_after_is_waited_for() {
    within(10, async {
        let pair = Pair::start().await;
        let (behavior, answered) = first_n_then_ok(1, || {
            let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
            reply(429, &[("retry-after", &date)], "")
        });
        pair.primary.set(behavior);
        let layer = layer_builder().build().unwrap();
        let handle = layer.handle();
        let service = pair.through(layer);

        let started = Instant::now();
        send_ok(&service, request(Method::GET, "/api/data/v9.2/accounts")).await;
        let elapsed = started.elapsed();
        // The date has whole seconds: two seconds from now, rounded down, is 1 to 2 s away.
        assert!(
            elapsed >= Duration::from_millis(900),
            "waited for the date: {elapsed:?}"
        );
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
        assert_eq!(answered.load(Ordering::SeqCst), 2);
        assert_eq!(pair.alternate.count(), 0);
        assert_eq!(handle.counters().throttle_retries, 1);
    })
    .await
}

#[tokio::test]
async fn a_retry_after_beyond_the_policy_maximum_is_handed_straight_back() {
    within(10, async {
        let pair = Pair::start().await;
        let layer = layer_builder()
            .route(
                Method::GET,
                "/api/short*",
                RetryPolicy::by_method().max_throttle_delay(Duration::from_secs(1)),
            )
            .build()
            .unwrap();
        let handle = layer.handle();
        let service = pair.through(layer);

        // Longer than the default maximum of 60 s.
        pair.primary.set(always_429("120"));
        let started = Instant::now();
        let response = send(&service, request(Method::GET, "/api/data/v9.2/accounts"))
            .await
            .unwrap();
        assert_eq!(response.status(), 429);
        assert_eq!(
            response.headers()["retry-after"],
            "120",
            "the server's answer, as it was"
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(pair.primary.count(), 1);

        // Longer than a route's maximum of 1 s.
        pair.primary.set(always_429("2"));
        let started = Instant::now();
        let response = send(&service, request(Method::GET, "/api/short/1"))
            .await
            .unwrap();
        assert_eq!(response.status(), 429);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(pair.primary.count(), 2);

        let counters = handle.counters();
        assert_eq!(counters.throttled, 2);
        assert_eq!(counters.throttle_retries, 0);
        assert_eq!(handle.active(), Side::Primary);
        assert_eq!(pair.alternate.count(), 0);
    })
    .await
}

#[tokio::test]
async fn the_deadline_stops_a_throttling_wait_that_would_pass_it() {
    within(10, async {
        let pair = Pair::start().await;
        pair.primary.set(always_429("2"));
        let layer = layer_builder()
            .default_policy(RetryPolicy::by_method().deadline(Duration::from_millis(500)))
            .build()
            .unwrap();
        let handle = layer.handle();
        let service = pair.through(layer);

        let started = Instant::now();
        let response = send(&service, request(Method::GET, "/api/data/v9.2/accounts"))
            .await
            .unwrap();
        let elapsed = started.elapsed();
        assert_eq!(response.status(), 429, "the throttling answer is handed back");
        assert!(
            elapsed < Duration::from_millis(500),
            "handed back at once: {elapsed:?}"
        );
        assert_eq!(pair.primary.count(), 1, "no retry");
        let counters = handle.counters();
        assert_eq!(counters.throttle_retries, 0);
        assert_eq!(counters.deadline_exceeded, 0, "the call ended with an answer");
    })
    .await
}

#[tokio::test]
async fn the_deadline_stops_an_attempt_in_flight() {
    within(10, async {
        let pair = Pair::start().await;
        pair.primary.set(Behavior::Delay(Duration::from_secs(3)));
        let layer = layer_builder()
            .default_policy(RetryPolicy::by_method().deadline(Duration::from_millis(300)))
            .build()
            .unwrap();
        let handle = layer.handle();
        let service = pair.through(layer);

        let started = Instant::now();
        let result = send(&service, request(Method::GET, "/api/data/v9.2/accounts")).await;
        let elapsed = started.elapsed();
        let error = match result {
            Ok(response) => panic!("expected the deadline, got {}", response.status()),
            Err(error) => error,
        };
        assert_eq!(*error.kind(), FailoverErrorKind::DeadlineExceeded, "{error}");
        assert!(error.possibly_applied(), "the attempt was in flight");
        assert!(
            elapsed >= Duration::from_millis(290),
            "not before the deadline: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_secs(1),
            "soon after the deadline: {elapsed:?}"
        );

        let counters = handle.counters();
        assert_eq!(counters.deadline_exceeded, 1);
        assert_eq!(handle.active(), Side::Primary, "a deadline is not an outage");
        assert_eq!(pair.alternate.count(), 0);
    })
    .await
}

#[tokio::test]
async fn service_protection_codes_in_hex_and_decimal_are_throttling() {
    within(10, async {
        let pair = Pair::start().await;
        let log = EventLog::new();
        let layer = layer_builder()
            .throttle_budget(RetryBudget::unlimited())
            .on_switch_required(log.recorder())
            .build()
            .unwrap();
        let handle = layer.handle();
        let service = pair.through(layer);

        let cases: [(u16, &str); 6] = [
            (500, r#""0x80072322""#),
            (500, r#""-2147015902""#),
            (400, r#""0x80072322""#),
            (400, r#""-2147015902""#),
            (500, "-2147015902"),
            (400, r#""0x80072326""#),
        ];
        for (status, code) in cases {
            let body =
                format!(r#"{{"error":{{"code":{code},"message":"Number of requests exceeded the limit"}}}}"#);
            let (behavior, answered) =
                first_n_then_ok(1, move || reply(status, &[("retry-after", "0")], &body));
            pair.primary.set(behavior);
            let before = pair.primary.count();
            let answer = send_ok(&service, request(Method::GET, "/api/data/v9.2/accounts")).await;
            assert_eq!(answer, r#"{"ok":true}"#, "{status} with code {code}");
            assert_eq!(
                answered.load(Ordering::SeqCst),
                2,
                "{status} with code {code}: retried once"
            );
            assert_eq!(pair.primary.count(), before + 2);
        }
        assert_eq!(pair.alternate.count(), 0);
        assert_eq!(handle.active(), Side::Primary);
        assert!(log.all().is_empty(), "no switch");
        assert_eq!(handle.counters().throttled, cases.len() as u64);
        assert_eq!(handle.counters().throttle_retries, cases.len() as u64);

        // The control: another code is an ordinary failure, handed back and not retried.
        pair.primary.set(Behavior::Status(
            500,
            r#"{"error":{"code":"0x80040217","message":"Record not found"}}"#,
        ));
        let before = pair.primary.count();
        let response = send(&service, request(Method::GET, "/api/data/v9.2/accounts"))
            .await
            .unwrap();
        assert_eq!(response.status(), 500);
        assert!(
            text(response).await.contains("0x80040217"),
            "the body is handed back intact"
        );
        assert_eq!(pair.primary.count(), before + 1);
        assert_eq!(handle.active(), Side::Primary);
    })
    .await
}

#[tokio::test]
async fn a_503_with_retry_after_is_throttling_and_without_it_failover() {
    within(10, async {
        let pair = Pair::start().await;
        let log = EventLog::new();
        let layer = layer_builder()
            .on_switch_required(log.recorder())
            .on_switched(log.recorder())
            .build()
            .unwrap();
        let handle = layer.handle();
        let service = pair.through(layer);

        let (behavior, answered) = first_n_then_ok(1, || reply(503, &[("retry-after", "0")], ""));
        pair.primary.set(behavior);
        let body = send_ok(&service, request(Method::GET, "/api/data/v9.2/accounts")).await;
        assert_eq!(body, r#"{"ok":true}"#, "answered by the primary, retried");
        assert_eq!(answered.load(Ordering::SeqCst), 2);
        assert_eq!(pair.alternate.count(), 0);
        assert_eq!(handle.active(), Side::Primary);
        assert!(log.all().is_empty());

        pair.primary.set(Behavior::Status(503, ""));
        let body = send_ok(&service, request(Method::GET, "/api/data/v9.2/accounts")).await;
        assert!(body.contains(ALTERNATE_HOST), "failed over: {body}");
        assert_eq!(handle.active(), Side::Alternate);
        let names: Vec<_> = log.all().iter().map(|e| e.name()).collect();
        assert_eq!(names, ["SwitchRequired", "Switched"]);
        let counters = handle.counters();
        assert_eq!(counters.throttled, 1);
        assert_eq!(counters.throttle_retries, 1);
        assert_eq!(counters.switches, 1);
        assert_eq!(counters.failover_resends, 1);
    })
    .await
}

#[tokio::test]
async fn throttling_retries_are_limited_by_the_policy_and_replay_the_body() {
    within(10, async {
        let pair = Pair::start().await;
        pair.primary.set(always_429("0"));
        let layer = layer_builder()
            .throttle_budget(RetryBudget::unlimited())
            .default_policy(RetryPolicy::by_method().throttle_retries(2))
            .build()
            .unwrap();
        let handle = layer.handle();
        let service = pair.through(layer);

        let response = send(&service, request(Method::GET, "/api/data/v9.2/accounts"))
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            429,
            "the last answer once the retries are used up"
        );
        assert_eq!(pair.primary.count(), 3, "one call and two retries");

        // `never` makes no throttling retry either.
        let mut never = request(Method::GET, "/api/data/v9.2/accounts");
        never.extensions_mut().insert(RetryPolicy::never());
        let response = send(&service, never).await.unwrap();
        assert_eq!(response.status(), 429);
        assert_eq!(pair.primary.count(), 4);

        // A throttled POST (not idempotent: a 429 means it was not processed) is retried with
        // the same body.
        let (behavior, answered) = first_n_then_ok(2, too_many_requests("0"));
        pair.primary.set(behavior);
        send_ok(&service, request(Method::POST, "/api/data/v9.2/accounts")).await;
        assert_eq!(answered.load(Ordering::SeqCst), 3);
        let posts: Vec<_> = pair.primary.seen().into_iter().skip(4).collect();
        assert_eq!(posts.len(), 3);
        assert!(posts.iter().all(|s| s.method == Method::POST));
        assert!(posts
            .iter()
            .all(|s| s.body_len > 0 && s.body_sha256 == posts[0].body_sha256));

        let counters = handle.counters();
        assert_eq!(counters.throttled, 3 + 1 + 2);
        assert_eq!(counters.throttle_retries, 2 + 2);
        assert_eq!(pair.alternate.count(), 0);
    })
    .await
}

#[tokio::test]
async fn without_retry_after_a_short_backoff_is_used() {
    within(10, async {
        let pair = Pair::start().await;
        let (behavior, answered) = first_n_then_ok(1, || reply(429, &[], ""));
        pair.primary.set(behavior);
        let layer = layer_builder().build().unwrap();
        let service = pair.through(layer);

        let started = Instant::now();
        send_ok(&service, request(Method::GET, "/api/data/v9.2/accounts")).await;
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(answered.load(Ordering::SeqCst), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_throttling_storm_stays_within_the_budget_and_failover_still_works() {
    within(20, async {
        let pair = Pair::start().await;
        pair.primary.set(always_429("0"));
        // The failover budget has the same shape as the throttling one: it still has room after
        // the storm only because the two are separate.
        let budget = RetryBudget::new(0.2).floor_per_second(0);
        let layer = layer_builder()
            .throttle_budget(budget)
            .failover_budget(budget)
            .default_policy(RetryPolicy::by_method().throttle_retries(3))
            .build()
            .unwrap();
        let handle = layer.handle();
        let service = pair.through(layer);

        const TASKS: usize = 50;
        const CALLS_EACH: usize = 4;
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let service = service.clone();
                tokio::spawn(async move {
                    for _ in 0..CALLS_EACH {
                        let response = send(&service, request(Method::GET, "/api/data/v9.2/accounts"))
                            .await
                            .unwrap();
                        assert_eq!(response.status(), 429);
                        text(response).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }

        let calls = (TASKS * CALLS_EACH) as u64;
        let seen = pair.primary.count() as u64;
        let retries = seen - calls;
        assert!(retries <= calls / 5 + 2, "{retries} retries for {calls} calls");
        assert!(
            retries >= calls / 10,
            "the budget is used, not only refused: {retries}"
        );

        let counters = handle.counters();
        assert_eq!(counters.calls, calls);
        assert_eq!(counters.throttled, seen, "every answer the server gave was a 429");
        assert_eq!(counters.throttle_retries, retries);
        assert!(counters.refused_by_budget > 0);
        // A call that ends on a 429 ran out of budget or of its 3 retries; at most
        // `retries / 3` calls can have done the latter.
        assert!(counters.refused_by_budget <= calls);
        assert!(
            counters.refused_by_budget >= calls - retries / 3,
            "{counters:?}, {retries} retries"
        );
        assert_eq!(counters.switches, 0);
        assert_eq!(handle.active(), Side::Primary);
        assert_eq!(pair.alternate.count(), 0);

        // Failover draws from its own budget.
        pair.primary.kill().await;
        let body = send_ok(&service, request(Method::GET, "/api/data/v9.2/accounts")).await;
        assert!(body.contains(ALTERNATE_HOST), "{body}");
        assert_eq!(handle.active(), Side::Alternate);
        let after = handle.counters();
        assert_eq!(after.failover_resends, 1);
        assert_eq!(after.switches, 1);
        assert_eq!(after.refused_by_budget, counters.refused_by_budget);
        assert_eq!(after.calls, calls + 1);
    })
    .await
}

/// Sends `request` on a task of its own while the primary throttles it (`Retry-After: 1`), and
/// once the primary has seen it, moves calls to the alternate: a GET finds the primary down.
/// The task's handle, for the throttled call's status.
async fn throttled_while_calls_move<S>(
    pair: &Pair,
    service: &S,
    handle: &tower_failover::FailoverHandle,
    request: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> tokio::task::JoinHandle<Result<http::StatusCode, tower_failover::FailoverError>>
where
    S: tower::Service<
            http::Request<http_body_util::Full<bytes::Bytes>>,
            Response = http::Response<tower_failover::ResponseBody<hyper::body::Incoming>>,
            Error = tower_failover::FailoverError,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    pair.primary.set(always_429("1"));
    let throttled = tokio::spawn({
        let service = service.clone();
        async move { send(&service, request).await.map(|response| response.status()) }
    });
    wait_until(5, "the primary throttled the call", || pair.primary.count() == 1).await;
    pair.primary.set(Behavior::Status(503, ""));
    send_ok(service, support::request(Method::GET, "/api/data/v9.2/WhoAmI")).await;
    assert_eq!(handle.active(), Side::Alternate);
    throttled
}

/// Calls move to the alternate while a throttled POST waits out its `Retry-After`: the retry
/// goes to the alternate, not to the primary calls left because it went down. (The 429 proved
/// the POST was not processed, so it may go anywhere.) The data-loss report of a switch back
/// lists it off the alternate, where it was applied, and not off the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_retry_goes_where_calls_went_during_the_wait() {
    within(15, async {
        let pair = Pair::start().await;
        let layer = layer_builder().build().unwrap();
        let handle = layer.handle();
        let service = pair.through(layer);
        let post = request(Method::POST, "/api/data/v9.2/tasks");
        let throttled = throttled_while_calls_move(&pair, &service, &handle, post).await;

        let result = throttled.await.unwrap();
        let posts_to = |server: &Server| server.count_of(&Method::POST);
        assert_eq!(
            (posts_to(&pair.primary), posts_to(&pair.alternate)),
            (1, 1),
            "the retry went to the alternate; result {result:?}"
        );
        assert_eq!(result.unwrap(), 200);

        pair.primary.set(Behavior::Ok);
        handle.fail_back();
        let report = handle.last_report().unwrap();
        let listed: Vec<_> = report.at_risk().map(|w| (w.path.as_str(), w.outcome)).collect();
        assert_eq!(
            listed,
            [("/api/data/v9.2/tasks", tower_failover::WriteOutcome::Acknowledged)]
        );
    })
    .await
}

/// As `a_throttling_retry_goes_where_calls_went_during_the_wait`, with a body that is not a
/// `Full<Bytes>` (a `String`), so it is recorded rather than kept whole: the retry built before
/// the wait, which holds the recording, is pointed at the alternate, body and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_retry_of_a_streamed_body_goes_where_calls_went_during_the_wait() {
    use tower::ServiceExt;
    use tower_failover::ReplayBody;
    within(15, async {
        let pair = Pair::start().await;
        let layer = layer_builder().build().unwrap();
        let handle = layer.handle();
        let service = tower::Layer::layer(&layer, pair.client::<ReplayBody<String>>());
        pair.primary.set(always_429("1"));
        let throttled = tokio::spawn({
            let service = service.clone();
            async move {
                let request = http::Request::post(format!("{PRIMARY_URL}/api/data/v9.2/tasks"))
                    .body(String::from(r#"{"name":"x"}"#))
                    .unwrap();
                service.oneshot(request).await.map(|response| response.status())
            }
        });
        wait_until(5, "the primary throttled the POST", || pair.primary.count() == 1).await;
        pair.primary.set(Behavior::Status(503, ""));
        let get = http::Request::get(format!("{PRIMARY_URL}/api/data/v9.2/WhoAmI"))
            .body(String::new())
            .unwrap();
        assert_eq!(service.clone().oneshot(get).await.unwrap().status(), 200);
        assert_eq!(handle.active(), Side::Alternate);

        let result = throttled.await.unwrap();
        let posts_to = |server: &Server| server.count_of(&Method::POST);
        assert_eq!(
            (posts_to(&pair.primary), posts_to(&pair.alternate)),
            (1, 1),
            "the retry should have gone to the alternate; result {:?}",
            result.as_ref().map_err(|e| e.to_string())
        );
    })
    .await
}

/// Under `RetryPolicy::reads_only()` a write is never sent to the other endpoint: a throttled
/// PUT stays where it was throttled, even when calls moved during its wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_only_never_sends_a_write_to_the_other_endpoint_even_after_a_throttling_wait() {
    within(15, async {
        let pair = Pair::start().await;
        let layer = layer_builder()
            .default_policy(RetryPolicy::reads_only())
            .build()
            .unwrap();
        let handle = layer.handle();
        let service = pair.through(layer);
        let put = request(Method::PUT, "/api/data/v9.2/tasks(1)");
        let throttled = throttled_while_calls_move(&pair, &service, &handle, put).await;
        let result = throttled.await.unwrap();
        let puts_to_alternate = pair.alternate.count_of(&Method::PUT);
        assert_eq!(
            puts_to_alternate,
            0,
            "reads_only: a write is never sent to the other endpoint; result {:?}",
            result.as_ref().map_err(|e| e.to_string())
        );
    })
    .await
}

/// A call re-sent on the other endpoint never goes back to the one it failed on (README,
/// step 3): a keyed POST fails on the primary (503), is re-sent on the alternate and throttled
/// there, and while it waits calls move back to the primary; the retry stays on the alternate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_sent_call_throttled_on_the_alternate_never_goes_back_to_the_endpoint_it_failed_on() {
    within(15, async {
        let pair = Pair::start().await;
        let layer = layer_builder().build().unwrap();
        let handle = layer.handle();
        let service = pair.through(layer);
        pair.primary.set(Behavior::Status(503, ""));
        pair.alternate.set(custom(|received| async move {
            if received.head.method == Method::POST {
                reply(429, &[("retry-after", "1")], "")
            } else {
                reply(503, &[], "")
            }
        }));
        let post = tokio::spawn({
            let service = service.clone();
            async move {
                let mut request = request(Method::POST, "/api/data/v9.2/tasks");
                request
                    .headers_mut()
                    .insert("idempotency-key", "task-1".parse().unwrap());
                send(&service, request).await.map(|r| r.status())
            }
        });
        wait_until(5, "the alternate throttled the re-send", || {
            pair.alternate.count() == 1
        })
        .await;
        assert_eq!(handle.active(), Side::Alternate);
        // The alternate goes down for a GET: calls move back to the primary.
        pair.primary.set(Behavior::Ok);
        send_ok(&service, request(Method::GET, "/api/data/v9.2/WhoAmI")).await;
        assert_eq!(handle.active(), Side::Primary);
        let result = post.await.unwrap();
        let posts_to_primary = pair.primary.count_of(&Method::POST);
        assert_eq!(
            posts_to_primary,
            1,
            "sent back to the endpoint it failed on; result {:?}",
            result.as_ref().map_err(|e| e.to_string())
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Edge cases: an overflowed recording, a throttled re-send on the alternate, a past date
// ---------------------------------------------------------------------------------------------

/// A throttled POST whose body was streamed past the replay cap cannot be retried: the 429 is
/// handed back as it is, and nothing else is sent.
#[tokio::test]
async fn a_throttled_streamed_body_over_the_replay_cap_hands_the_429_back() {
    use tower::ServiceExt;
    use tower_failover::ReplayBody;
    within(10, async {
        let pair = Pair::start().await;
        pair.primary.set(always_429("0"));
        let layer = layer_builder().replay_cap(16).build().unwrap();
        let handle = layer.handle();
        let service = tower::Layer::layer(&layer, pair.client::<ReplayBody<String>>());
        let request = http::Request::post(format!("{PRIMARY_URL}/api/data/v9.2/tasks"))
            .body("x".repeat(1024))
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.status(), 429);
        assert_eq!(pair.primary.count(), 1);
        assert_eq!(pair.alternate.count(), 0);
        let counters = handle.counters();
        assert_eq!(counters.throttled, 1);
        assert_eq!(counters.throttle_retries, 0);
        assert_eq!(counters.switches, 0);
    })
    .await
}

/// After a failover, the alternate throttles the re-send (429, then a 503 with `Retry-After`):
/// it is retried on the alternate after the delay, and the call succeeds there.
#[tokio::test]
async fn a_re_send_throttled_on_the_alternate_is_retried_there() {
    within(10, async {
        for throttle in [429u16, 503] {
            let pair = Pair::start().await;
            let layer = layer_builder().build().unwrap();
            let handle = layer.handle();
            let service = pair.through(layer);
            pair.primary.set(Behavior::Status(502, ""));
            let (behavior, answered) =
                first_n_then_ok(1, move || reply(throttle, &[("retry-after", "1")], ""));
            pair.alternate.set(behavior);
            let started = Instant::now();
            let body = send_ok(&service, request(Method::GET, "/api/data/v9.2/accounts")).await;
            assert_eq!(body, r#"{"ok":true}"#, "{throttle}");
            assert!(started.elapsed() >= Duration::from_millis(900), "{throttle}");
            assert_eq!(answered.load(Ordering::SeqCst), 2, "{throttle}");
            assert_eq!(pair.primary.count(), 1, "{throttle}");
            assert_eq!(handle.active(), Side::Alternate);
            let counters = handle.counters();
            assert_eq!(counters.failover_resends, 1, "{throttle}");
            assert_eq!(counters.throttle_retries, 1, "{throttle}");
            assert_eq!(counters.switches, 1, "{throttle}");
        }
    })
    .await
}

/// `Retry-After` as an HTTP date in the past: retried at once.
#[tokio::test]
async fn a_retry_after_date_in_the_past_is_retried_at_once() {
    within(10, async {
        let pair = Pair::start().await;
        let (behavior, answered) = first_n_then_ok(1, || {
            let date = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(3600));
            reply(429, &[("retry-after", &date)], "")
        });
        pair.primary.set(behavior);
        let service = pair.through(layer_builder().build().unwrap());
        let started = Instant::now();
        send_ok(&service, request(Method::GET, "/api/data/v9.2/accounts")).await;
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(answered.load(Ordering::SeqCst), 2);
    })
    .await
}
