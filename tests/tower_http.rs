//! Composition with tower-http: TraceLayer, TimeoutLayer in both orders, SetRequestHeader,
//! and (feature `tower-http`) a tower-http classifier as the failover classifier.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderName;
use http::HeaderValue;
use http_body_util::Full;
use support::*;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_failover::{Endpoints, FailoverLayer, Side};
use tower_http::set_header::SetRequestHeaderLayer;
use tower_http::trace::TraceLayer;

fn get(path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(format!("{PRIMARY_URL}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn trace_and_set_request_header_outside_the_failover_layer() {
    within(10, async {
        let pair = Pair::start().await;
        let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
        let handle = layer.handle();
        let mut service = ServiceBuilder::new()
            .layer(TraceLayer::new_for_http())
            .layer(SetRequestHeaderLayer::overriding(
                HeaderName::from_static("x-ms-client-request-id"),
                HeaderValue::from_static("req-1"),
            ))
            .layer(layer)
            .service(pair.client::<TestBody>());
        pair.alternate.set(custom(|received: Received| async move {
            let id = received.head.headers.get("x-ms-client-request-id").cloned();
            let id = id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_string();
            json(http::StatusCode::OK, format!(r#"{{"request_id":"{id}"}}"#))
        }));
        pair.primary.kill().await;
        let response = service
            .ready()
            .await
            .unwrap()
            .call(get("/api/data/v9.2/WhoAmI"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(handle.active(), Side::Alternate);
        // The header set outside reached the alternate: the re-send keeps the request's head.
        assert_eq!(text(response).await, r#"{"request_id":"req-1"}"#);
        let seen = pair.alternate.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].host.as_deref(), Some(ALTERNATE_HOST));
    })
    .await
}

#[tokio::test]
async fn a_tower_timeout_inside_limits_each_attempt_and_fails_over() {
    // Inside the failover layer a timeout is per attempt: the primary's slow attempt is cut
    // and the call is re-sent. (tower's `TimeoutLayer` returns an error the classifier reads
    // as a timeout; tower-http's answers 408, which is indistinguishable from a server's 408,
    // so put tower's inside.)
    within(10, async {
        let pair = Pair::start().await;
        pair.primary.set(Behavior::Delay(Duration::from_secs(5)));
        let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
        let mut service = ServiceBuilder::new()
            .layer(layer)
            .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(200)))
            .service(pair.client::<TestBody>());
        let started = Instant::now();
        let response = service.ready().await.unwrap().call(get("/x")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(pair.alternate.count(), 1);
    })
    .await
}

#[tokio::test]
async fn a_tower_http_timeout_outside_limits_the_whole_call() {
    // Outside the failover layer a timeout bounds the whole call, both attempts included.
    within(10, async {
        let pair = Pair::start().await;
        pair.primary.set(Behavior::Delay(Duration::from_secs(5)));
        pair.alternate.set(Behavior::Delay(Duration::from_secs(5)));
        let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
        let mut service = ServiceBuilder::new()
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                http::StatusCode::GATEWAY_TIMEOUT,
                Duration::from_millis(300),
            ))
            .layer(layer)
            .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(200)))
            .service(pair.client::<TestBody>());
        let started = Instant::now();
        let response = service.ready().await.unwrap().call(get("/x")).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::GATEWAY_TIMEOUT);
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(290) && elapsed < Duration::from_secs(2),
            "{elapsed:?}"
        );
    })
    .await
}

#[cfg(feature = "tower-http")]
#[tokio::test]
async fn a_tower_http_classifier_decides_what_is_down() {
    use tower_failover::TowerHttpClassifier;
    use tower_http::classify::StatusInRangeAsFailures;
    within(10, async {
        let pair = Pair::start().await;
        // The default classifier hands a plain 500 back; this one calls it an outage.
        pair.primary.set(Behavior::Status(500, r#"{"error":"boom"}"#));
        let layer = FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL).unwrap())
            .classifier(TowerHttpClassifier::new(StatusInRangeAsFailures::new(500..=599)))
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut service = pair.through(layer);
        let response = service.ready().await.unwrap().call(get("/x")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(handle.active(), Side::Alternate);

        // Errors are still read the default way: a refused connection is an outage.
        pair.alternate.kill().await;
        let error = service.ready().await.unwrap().call(get("/x")).await.unwrap_err();
        assert_eq!(
            error.kind(),
            &tower_failover::FailoverErrorKind::Unavailable {
                status: http::StatusCode::INTERNAL_SERVER_ERROR
            }
        );
        assert_eq!(handle.generation(), 2);
    })
    .await
}

/// A `RetryPolicy` put in the request's extensions by tower-http's `AddExtensionLayer`, outside
/// the failover layer, is the call's policy.
#[tokio::test]
async fn add_extension_outside_the_failover_layer_sets_the_calls_policy() {
    within(10, async {
        let pair = Pair::start().await;
        let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
        let handle = layer.handle();
        let mut service = ServiceBuilder::new()
            .layer(tower_http::add_extension::AddExtensionLayer::new(
                tower_failover::RetryPolicy::never(),
            ))
            .layer(layer)
            .service(pair.client::<TestBody>());
        pair.primary.kill().await;
        let error = service.ready().await.unwrap().call(get("/x")).await.unwrap_err();
        assert_eq!(
            error.not_resent_because(),
            Some(tower_failover::NotResent::PolicyForbids)
        );
        assert_eq!(handle.active(), Side::Alternate);
        assert_eq!(pair.alternate.count(), 0);
    })
    .await
}

/// Layers inside the failover layer are part of every attempt: the re-send goes through them
/// too.
#[tokio::test]
async fn trace_and_set_request_header_inside_the_failover_layer_apply_to_the_re_send() {
    within(10, async {
        let pair = Pair::start().await;
        let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
        let mut service = ServiceBuilder::new()
            .layer(layer)
            .layer(TraceLayer::new_for_http())
            .layer(SetRequestHeaderLayer::overriding(
                HeaderName::from_static("idempotency-key"),
                HeaderValue::from_static("inner-key"),
            ))
            .service(pair.client::<TestBody>());
        pair.primary.kill().await;
        let response = service.ready().await.unwrap().call(get("/x")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            pair.alternate.seen()[0].idempotency_key.as_deref(),
            Some("inner-key")
        );
    })
    .await
}

/// The README's example: tower-http's `ServerErrorsAsFailures` as the failover classifier makes
/// a 500 an outage.
#[cfg(feature = "tower-http")]
#[tokio::test]
async fn server_errors_as_failures_from_the_readme_fails_over_a_500() {
    use tower_failover::TowerHttpClassifier;
    use tower_http::classify::ServerErrorsAsFailures;

    within(10, async {
        let pair = Pair::start().await;
        pair.primary.set(Behavior::Status(500, "{}"));
        let layer = FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL).unwrap())
            .classifier(TowerHttpClassifier::new(ServerErrorsAsFailures::new()))
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut service = pair.through(layer);
        let response = service.ready().await.unwrap().call(get("/x")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(handle.active(), Side::Alternate);
    })
    .await
}

/// The README's second row with tower's own `TimeoutLayer`: outside the failover layer it
/// bounds the whole call. Alone, a slow primary is not an outage (the call is dropped, nothing
/// switches); with tower's timeout inside too, the re-send is cut by the outer limit.
#[tokio::test]
async fn a_tower_timeout_outside_limits_the_whole_call() {
    within(10, async {
        let pair = Pair::start().await;
        pair.primary.set(Behavior::Delay(Duration::from_secs(5)));
        pair.alternate.set(Behavior::Delay(Duration::from_secs(5)));

        let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
        let handle = layer.handle();
        let mut alone = ServiceBuilder::new()
            .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(300)))
            .layer(layer)
            .service(pair.client::<TestBody>());
        let started = Instant::now();
        let error = alone.ready().await.unwrap().call(get("/x")).await.unwrap_err();
        assert!(error.is::<tower::timeout::error::Elapsed>(), "{error}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(handle.active(), Side::Primary, "an overall timeout is no outage");
        assert_eq!(pair.alternate.count(), 0);

        let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
        let handle = layer.handle();
        let mut both = ServiceBuilder::new()
            .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(300)))
            .layer(layer)
            .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(200)))
            .service(pair.client::<TestBody>());
        let started = Instant::now();
        let error = both.ready().await.unwrap().call(get("/x")).await.unwrap_err();
        let elapsed = started.elapsed();
        assert!(error.is::<tower::timeout::error::Elapsed>(), "{error}");
        assert!(
            elapsed >= Duration::from_millis(290) && elapsed < Duration::from_secs(2),
            "{elapsed:?}"
        );
        assert_eq!(
            handle.active(),
            Side::Alternate,
            "the attempt's timeout failed over"
        );
        wait_until(2, "the re-send reached the alternate", || {
            pair.alternate.count() == 1
        })
        .await;
    })
    .await
}

/// tower-http's `TimeoutLayer` inside the failover layer answers with its status (408 by
/// default), which the classifier cannot tell from a server's own: handed back, no failover.
#[tokio::test]
async fn a_tower_http_timeout_inside_answers_408_and_does_not_fail_over() {
    use http_body_util::BodyExt;
    within(10, async {
        let pair = Pair::start().await;
        pair.primary.set(Behavior::Delay(Duration::from_secs(5)));
        let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
        let handle = layer.handle();
        let mut service = ServiceBuilder::new()
            .layer(layer)
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                http::StatusCode::REQUEST_TIMEOUT,
                Duration::from_millis(200),
            ))
            // tower-http's timeout makes its answer from a `Default` body: hyper's has none.
            .map_response(|response: http::Response<hyper::body::Incoming>| {
                response.map(|body| body.map_err(tower::BoxError::from).boxed_unsync())
            })
            .service(pair.client::<TestBody>());
        let started = Instant::now();
        let response = service.ready().await.unwrap().call(get("/x")).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::REQUEST_TIMEOUT);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(handle.active(), Side::Primary);
        assert_eq!(pair.alternate.count(), 0);
    })
    .await
}
