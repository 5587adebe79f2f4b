//! Per-request retry policies: which one a request gets (extensions, then the route table,
//! then the default), what `never` and `reads_only` allow, and the route patterns `build()`
//! refuses.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use support::*;
use tower::ServiceBuilder;
use tower_failover::{FailoverError, FailoverErrorKind, NotResent, RetryPolicy, Side};

fn with_policy(mut request: Request<Full<Bytes>>, policy: RetryPolicy) -> Request<Full<Bytes>> {
    request.extensions_mut().insert(policy);
    request
}

fn expect_error(result: FailoverResult, what: &str) -> FailoverError {
    match result {
        Ok(response) => panic!("{what}: expected an error, got {}", response.status()),
        Err(error) => error,
    }
}

/// The per-attempt timeout in the timeout tests; the primary takes much longer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(200);
const PRIMARY_DELAY: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extensions_beat_the_route_table_which_beats_the_default() {
    within(15, async {
        let pair = Pair::start().await;
        pair.primary.set(Behavior::Delay(PRIMARY_DELAY));
        // Each case gets a fresh layer (its own switch state, starting on the primary) over
        // the same servers.
        let service = || {
            let layer = layer_builder()
                .route(Method::POST, "/api/orders*", RetryPolicy::idempotent())
                .build()
                .unwrap();
            let handle = layer.handle();
            let service = ServiceBuilder::new()
                .layer(layer)
                .timeout(ATTEMPT_TIMEOUT)
                .service(pair.client::<TestBody>());
            (service, handle)
        };

        // The route table makes this POST safe to send twice: it is re-sent on the alternate.
        let (svc, handle) = service();
        let body = send_ok(&svc, request(Method::POST, "/api/orders/1")).await;
        assert!(body.contains(ALTERNATE_HOST), "{body}");
        assert_eq!(handle.active(), Side::Alternate);
        assert_eq!(pair.alternate.count(), 1);
        assert_eq!(handle.counters().failover_resends, 1);

        // The same POST with `never` in its extensions: the extension wins, no re-send.
        let (svc, handle) = service();
        let error = expect_error(
            send(
                &svc,
                with_policy(request(Method::POST, "/api/orders/1"), RetryPolicy::never()),
            )
            .await,
            "POST /api/orders/1 with never",
        );
        assert_eq!(*error.kind(), FailoverErrorKind::Timeout);
        assert_eq!(error.not_resent_because(), Some(NotResent::PolicyForbids));
        assert!(error.possibly_applied());
        assert!(!error.was_resent());
        assert_eq!(pair.alternate.count(), 1, "not re-sent");
        assert_eq!(handle.active(), Side::Alternate, "the endpoint still switches");

        // A POST the table does not name falls to the default, by_method: not idempotent.
        let (svc, handle) = service();
        let error = expect_error(
            send(&svc, request(Method::POST, "/api/other")).await,
            "POST /api/other",
        );
        assert_eq!(*error.kind(), FailoverErrorKind::Timeout);
        assert_eq!(error.not_resent_because(), Some(NotResent::NotIdempotent));
        assert_eq!(pair.alternate.count(), 1, "not re-sent");
        assert_eq!(handle.active(), Side::Alternate);

        // And an extension beats the default too.
        let (svc, _handle) = service();
        let body = send_ok(
            &svc,
            with_policy(request(Method::POST, "/api/other"), RetryPolicy::idempotent()),
        )
        .await;
        assert!(body.contains(ALTERNATE_HOST), "{body}");
        assert_eq!(pair.alternate.count(), 2);

        assert_eq!(
            pair.alternate.requests(),
            [
                (Method::POST, "/api/orders/1".to_string()),
                (Method::POST, "/api/other".to_string())
            ]
        );
        assert_eq!(pair.primary.count(), 4, "every case reached the primary first");
    })
    .await
}

#[tokio::test]
async fn the_route_table_takes_the_first_matching_route_by_method_and_path() {
    within(10, async {
        let pair = Pair::start().await;
        pair.primary.kill().await;
        // Connect refused: only the policy can stop a re-send. The exact route comes first.
        let layer = || {
            layer_builder()
                .route(Method::GET, "/api/data/v9.2/WhoAmI", RetryPolicy::never())
                .route(Method::GET, "/api/data/v9.2/*", RetryPolicy::reads_only())
                .route_any_method("/api/data/v9.2/accounts*", RetryPolicy::never())
                .build()
                .unwrap()
        };
        let send_via_fresh_layer = |request: Request<Full<Bytes>>| {
            let service = pair.through(layer());
            async move { send(&service, request).await }
        };

        let error = expect_error(
            send_via_fresh_layer(request(Method::GET, "/api/data/v9.2/WhoAmI")).await,
            "GET WhoAmI (never)",
        );
        assert_eq!(*error.kind(), FailoverErrorKind::EndpointNotFound);
        assert_eq!(error.not_resent_because(), Some(NotResent::PolicyForbids));
        assert!(!error.possibly_applied());

        // Matches the GET prefix route before the any-method route.
        let response = send_via_fresh_layer(request(Method::GET, "/api/data/v9.2/accounts")).await;
        assert_eq!(response.unwrap().status(), 200);

        // A PUT matches only the any-method route.
        let error = expect_error(
            send_via_fresh_layer(request(Method::PUT, "/api/data/v9.2/accounts(1)/name")).await,
            "PUT accounts (never)",
        );
        assert_eq!(error.not_resent_because(), Some(NotResent::PolicyForbids));

        // No route matches: the default re-sends a PUT refused at connect.
        let response = send_via_fresh_layer(request(Method::PUT, "/api/data/v9.2/contacts(1)/name")).await;
        assert_eq!(response.unwrap().status(), 200);

        assert_eq!(
            pair.alternate.requests(),
            [
                (Method::GET, "/api/data/v9.2/accounts".to_string()),
                (Method::PUT, "/api/data/v9.2/contacts(1)/name".to_string())
            ]
        );
    })
    .await
}

#[tokio::test]
async fn never_does_not_resend_even_a_refused_get_but_still_switches() {
    within(10, async {
        let pair = Pair::start().await;
        let log = EventLog::new();
        let layer = layer_builder()
            .default_policy(RetryPolicy::never())
            .on_switched(log.recorder())
            .build()
            .unwrap();
        let handle = layer.handle();
        let service = pair.through(layer);

        pair.primary.kill().await;
        let error = expect_error(
            send(&service, request(Method::GET, "/api/data/v9.2/WhoAmI")).await,
            "GET to a killed primary",
        );
        assert_eq!(*error.kind(), FailoverErrorKind::EndpointNotFound);
        assert_eq!(error.not_resent_because(), Some(NotResent::PolicyForbids));
        assert!(!error.possibly_applied(), "refused at connect: never sent");
        assert_eq!(pair.alternate.count(), 0, "not re-sent");

        assert_eq!(handle.active(), Side::Alternate, "the switch still happens");
        assert_eq!(log.all().len(), 1);
        let counters = handle.counters();
        assert_eq!(counters.switches, 1);
        assert_eq!(counters.failover_resends, 0);

        let body = send_ok(&service, request(Method::GET, "/api/data/v9.2/WhoAmI")).await;
        assert!(
            body.contains(ALTERNATE_HOST),
            "the next call goes to the alternate: {body}"
        );
        assert_eq!(pair.alternate.count(), 1);
    })
    .await
}

#[tokio::test]
async fn reads_only_resends_reads_after_a_timeout_but_never_a_write() {
    within(10, async {
        let pair = Pair::start().await;

        // A GET that timed out on the primary is re-sent.
        pair.primary.set(Behavior::Delay(PRIMARY_DELAY));
        let layer = layer_builder()
            .default_policy(RetryPolicy::reads_only())
            .build()
            .unwrap();
        let handle = layer.handle();
        let service = ServiceBuilder::new()
            .layer(layer)
            .timeout(ATTEMPT_TIMEOUT)
            .service(pair.client::<TestBody>());
        let body = send_ok(&service, request(Method::GET, "/api/data/v9.2/accounts")).await;
        assert!(body.contains(ALTERNATE_HOST), "{body}");
        assert_eq!(handle.active(), Side::Alternate);
        assert_eq!(pair.alternate.count(), 1);

        // A PUT is not, even refused at connect (where by_method would re-send it).
        pair.primary.kill().await;
        let layer = layer_builder()
            .default_policy(RetryPolicy::reads_only())
            .build()
            .unwrap();
        let handle = layer.handle();
        let service = pair.through(layer);
        let error = expect_error(
            send(&service, request(Method::PUT, "/api/data/v9.2/accounts(1)/name")).await,
            "PUT to a killed primary under reads_only",
        );
        assert_eq!(*error.kind(), FailoverErrorKind::EndpointNotFound);
        assert_eq!(error.not_resent_because(), Some(NotResent::PolicyForbids));
        assert!(!error.possibly_applied());
        assert_eq!(handle.active(), Side::Alternate);
        assert_eq!(pair.alternate.count(), 1, "the PUT was not re-sent");

        // The control: the same PUT under the default policy is re-sent.
        let layer = layer_builder().build().unwrap();
        let service = pair.through(layer);
        send_ok(&service, request(Method::PUT, "/api/data/v9.2/accounts(1)/name")).await;
        assert_eq!(pair.alternate.count(), 2);
    })
    .await
}

#[tokio::test]
async fn bad_route_patterns_make_build_fail_with_what_to_fix() {
    within(5, async {
        let error = layer_builder()
            .route(Method::POST, "api", RetryPolicy::never())
            .build()
            .unwrap_err()
            .to_string();
        assert!(error.contains("`api`"), "names the pattern: {error}");
        assert!(error.contains("must start with `/`"), "says what to fix: {error}");

        let error = layer_builder()
            .route_any_method("/a*b", RetryPolicy::never())
            .build()
            .unwrap_err()
            .to_string();
        assert!(error.contains("`/a*b`"), "names the pattern: {error}");
        assert!(error.contains("only a trailing `*`"), "says what to fix: {error}");

        // A good route after a bad one does not hide the mistake.
        let error = layer_builder()
            .route(Method::GET, "api/*", RetryPolicy::never())
            .route(Method::GET, "/api/*", RetryPolicy::never())
            .build()
            .unwrap_err()
            .to_string();
        assert!(error.contains("`api/*`"), "{error}");

        // The good forms build.
        layer_builder()
            .route(Method::GET, "/api/data/v9.2/WhoAmI", RetryPolicy::never())
            .route_any_method("/api/*", RetryPolicy::idempotent())
            .build()
            .unwrap();
    })
    .await
}

#[tokio::test]
async fn a_policy_replay_cap_replaces_the_layers() {
    within(10, async {
        let pair = Pair::start().await;
        pair.primary.set(Behavior::Delay(PRIMARY_DELAY));
        let big = || {
            let mut request = request(Method::POST, "/api/uploads");
            *request.body_mut() = Full::new(Bytes::from(vec![b'x'; 1024]));
            request
        };
        let service = |policy: RetryPolicy| {
            let layer = layer_builder()
                .route(Method::POST, "/api/uploads", policy)
                .build()
                .unwrap();
            ServiceBuilder::new()
                .layer(layer)
                .timeout(ATTEMPT_TIMEOUT)
                .service(pair.client::<TestBody>())
        };

        let error = expect_error(
            send(&service(RetryPolicy::idempotent().replay_cap(16)), big()).await,
            "1 KiB POST over a 16-byte cap",
        );
        assert_eq!(
            *error.kind(),
            FailoverErrorKind::NotReplayable {
                reason: NotResent::BodyOverCap { cap: 16 }
            }
        );
        assert_eq!(pair.alternate.count(), 0);

        // Within the layer's default cap, the same request is re-sent whole.
        send_ok(&service(RetryPolicy::idempotent()), big()).await;
        let seen = pair.alternate.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].body_len, 1024);
    })
    .await
}

/// A policy's replay cap obeys the layer's limit: given to the builder above it, `build()`
/// refuses it and says which policy, as it does for the layer's own cap.
#[test]
fn a_policy_replay_cap_above_the_limit_is_refused_at_build_time() {
    use tower_failover::MAX_REPLAY_CAP;
    let too_large = RetryPolicy::by_method().replay_cap(MAX_REPLAY_CAP * 2);

    let error = layer_builder()
        .default_policy(too_large)
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("default_policy: replay_cap(134217728) is above the limit"),
        "{error}"
    );
    let error = layer_builder()
        .route(http::Method::PUT, "/api/data/v9.2/annotations*", too_large)
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("route `/api/data/v9.2/annotations*`: replay_cap(134217728) is above the limit"),
        "{error}"
    );
    let error = layer_builder()
        .route_any_method("/api/data/v9.2/imports*", too_large)
        .build()
        .unwrap_err()
        .to_string();
    assert!(error.contains("above the limit"), "{error}");
    // At the limit: accepted.
    layer_builder()
        .default_policy(RetryPolicy::by_method().replay_cap(MAX_REPLAY_CAP))
        .build()
        .unwrap();
}

/// Routes match the request's path, without its query, so a pattern with a `?` (or a `#`,
/// which never reaches a server) can match no request: the route would be silently dead and
/// the request would get the default policy, a write the route said to send `never` re-sent
/// after all. `build()` refuses such a pattern and says what to give instead.
#[test]
fn a_route_pattern_with_a_query_or_fragment_is_refused_at_build_time() {
    for pattern in [
        "/api/data/v9.2/accounts?$select=name",
        "/api/payments?*",
        "/api/payments#receipt",
    ] {
        let error = layer_builder()
            .route(Method::POST, pattern, RetryPolicy::never())
            .build()
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&format!("`{pattern}`")),
            "names the pattern: {error}"
        );
        assert!(error.contains("path only"), "says what to fix: {error}");
        let error = layer_builder()
            .route_any_method(pattern, RetryPolicy::never())
            .build()
            .map(|_| ())
            .unwrap_err();
        assert!(error.to_string().contains("path only"), "{error}");
    }
}
