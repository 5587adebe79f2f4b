//! The reqwest-middleware adapter with a real `reqwest::Client` against real servers.
#![cfg(feature = "reqwest")]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Full, StreamBody};
use hyper::body::Frame;
use support::*;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_failover::{Endpoints, FailoverErrorKind, FailoverLayer, NotResent, ReplayBody, Side};

/// reqwest's own resolver overrides ignore ports, so the two servers share one port on two
/// loopback addresses and the URL names the port.
struct Setup {
    primary: Server,
    alternate: Server,
    port: u16,
    layer: FailoverLayer,
    client: reqwest_middleware::ClientWithMiddleware,
}

async fn setup(
    configure: impl FnOnce(tower_failover::FailoverLayerBuilder) -> tower_failover::FailoverLayerBuilder,
) -> Setup {
    let primary = Server::start(PRIMARY_HOST).await;
    let port = primary.addr.port();
    let alternate = Server::start_on(ALTERNATE_HOST, SocketAddr::from(([127, 0, 0, 2], port))).await;
    let endpoints = Endpoints::dynamics(&format!("http://{PRIMARY_HOST}:{port}")).unwrap();
    let layer = configure(FailoverLayer::builder(endpoints)).build().unwrap();
    let client = reqwest_through(&layer, primary.addr, alternate.addr);
    Setup {
        primary,
        alternate,
        port,
        layer,
        client,
    }
}

#[tokio::test]
async fn a_killed_primary_fails_over_with_the_alternates_host() {
    within(10, async {
        let s = setup(|b| b).await;
        let url = format!("http://{PRIMARY_HOST}:{}/api/data/v9.2/WhoAmI", s.port);
        let first = s.client.get(&url).send().await.unwrap();
        assert!(first.text().await.unwrap().contains(PRIMARY_HOST));
        s.primary.kill().await;

        let response = s.client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.text().await.unwrap().contains(ALTERNATE_HOST));
        assert_eq!(s.layer.handle().active(), Side::Alternate);
        let seen = s.alternate.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].host.as_deref(),
            Some(format!("{ALTERNATE_HOST}:{}", s.port).as_str())
        );
    })
    .await
}

#[tokio::test]
async fn a_streamed_body_is_replayed_byte_for_byte_after_a_503() {
    within(10, async {
        let s = setup(|b| b.replay_cap(1 << 20)).await;
        s.primary.set(Behavior::Status(503, r#"{"error":"down"}"#));
        let chunks: Vec<Bytes> = (0..40u8).map(|i| Bytes::from(vec![i; 4096])).collect();
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let stream = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(Frame::data(c))),
        );
        let response = s
            .client
            .post(format!("http://{PRIMARY_HOST}:{}/api/data/v9.2/accounts", s.port))
            .header("idempotency-key", "acct-7")
            .body(reqwest::Body::wrap(StreamBody::new(stream)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let primary = s.primary.seen();
        let alternate = s.alternate.seen();
        assert_eq!(primary.len(), 1);
        assert_eq!(
            primary[0].body_sha256,
            digest(&all),
            "the primary read it all before its 503"
        );
        assert_eq!(alternate.len(), 1);
        assert_eq!(alternate[0].body_len, all.len());
        assert_eq!(alternate[0].body_sha256, digest(&all), "replayed byte for byte");
        assert_eq!(alternate[0].idempotency_key.as_deref(), Some("acct-7"));
    })
    .await
}

#[tokio::test]
async fn a_tower_stack_and_a_reqwest_client_share_one_switch() {
    within(10, async {
        let s = setup(|b| b).await;
        // A hyper-util client through the same layer, resolving by the same names.
        let resolver = Resolver::pair(s.primary.addr, s.alternate.addr);
        let hyper_client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build::<_, ReplayBody<Full<Bytes>>>(resolver.connector());
        let mut tower_stack = ServiceBuilder::new().layer(s.layer.clone()).service(hyper_client);

        s.primary.set(Behavior::Status(503, ""));
        let url = format!("http://{PRIMARY_HOST}:{}/x", s.port);
        assert_eq!(s.client.get(&url).send().await.unwrap().status(), 200);
        assert_eq!(s.layer.handle().active(), Side::Alternate);

        // The tower stack goes straight to the alternate: the primary sees nothing more.
        let before = s.primary.count();
        let request = http::Request::get(&url).body(Full::new(Bytes::new())).unwrap();
        let response = tower_stack.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(s.primary.count(), before);
        assert_eq!(s.alternate.count(), 2);
    })
    .await
}

#[tokio::test]
async fn errors_carry_a_failover_error_with_both_causes() {
    within(10, async {
        let s = setup(|b| b).await;
        s.primary.kill().await;
        s.alternate.kill().await;
        let error = s
            .client
            .get(format!("http://{PRIMARY_HOST}:{}/x", s.port))
            .send()
            .await
            .unwrap_err();
        let error = failover_error(&error);
        assert_eq!(error.kind(), &FailoverErrorKind::EndpointNotFound);
        assert!(error.was_resent());
        assert!(!error.possibly_applied());
        assert_eq!(
            error.first_attempt().unwrap().endpoint().unwrap().host(),
            PRIMARY_HOST
        );
        assert_eq!(error.last_attempt().endpoint().unwrap().host(), ALTERNATE_HOST);
    })
    .await
}

#[tokio::test]
async fn a_post_that_timed_out_is_not_resent_and_may_have_been_applied() {
    within(10, async {
        let s = setup(|b| b).await;
        s.primary.set(Behavior::Delay(Duration::from_secs(3)));
        let error = s
            .client
            .post(format!("http://{PRIMARY_HOST}:{}/api/data/v9.2/tasks", s.port))
            .body("{}")
            .timeout(Duration::from_millis(200))
            .send()
            .await
            .unwrap_err();
        let error = failover_error(&error);
        assert_eq!(error.kind(), &FailoverErrorKind::Timeout);
        assert!(error.possibly_applied());
        assert_eq!(error.not_resent_because(), Some(NotResent::NotIdempotent));
        assert_eq!(s.alternate.count(), 0);
        assert_eq!(
            s.layer.handle().active(),
            Side::Alternate,
            "the switch still happened"
        );
    })
    .await
}

#[tokio::test]
async fn a_reqwest_only_client_fails_back_with_a_lent_probe_client() {
    within(15, async {
        let primary = Server::start(PRIMARY_HOST).await;
        let port = primary.addr.port();
        let alternate = Server::start_on(ALTERNATE_HOST, SocketAddr::from(([127, 0, 0, 2], port))).await;
        let endpoints = Endpoints::dynamics(&format!("http://{PRIMARY_HOST}:{port}")).unwrap();
        let layer = FailoverLayer::builder(endpoints)
            .failback(
                tower_failover::Failback::new()
                    .interval(Duration::from_millis(30))
                    .min_time_on_alternate(Duration::from_millis(100))
                    .healthy_probes(2)
                    .probe_timeout(Duration::from_millis(200)),
            )
            .build()
            .unwrap();
        let reqwest = reqwest::Client::builder()
            .resolve(PRIMARY_HOST, primary.addr)
            .resolve(ALTERNATE_HOST, alternate.addr)
            .build()
            .unwrap();
        let client = reqwest_middleware::ClientBuilder::new(reqwest.clone())
            .with(layer.middleware().probe_with(reqwest))
            .build();
        let handle = layer.handle();
        let url = format!("http://{PRIMARY_HOST}:{port}/x");

        primary.kill().await;
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
        assert_eq!(handle.active(), Side::Alternate);

        let _primary = Server::start_on(PRIMARY_HOST, primary.addr).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while handle.active() != Side::Primary {
            assert!(std::time::Instant::now() < deadline, "no failback within 5 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(handle.state().cause, Some(tower_failover::SwitchCause::Failback));
    })
    .await
}

/// A body reqwest holds in memory goes out as reqwest made it: reqwest can follow a 307 with
/// it (it follows a 307 or 308 only with a body it can send again, never with a stream), and
/// a re-send after a 503 carries the same bytes.
#[tokio::test]
async fn a_body_in_memory_follows_a_307_and_is_re_sent_whole_after_a_503() {
    within(10, async {
        let s = setup(|b| b).await;
        let payload = br#"{"name":"Contoso","revenue":1000}"#.repeat(100);
        s.primary.set(custom(|received| async move {
            if received.head.uri.path() == "/api/data/v9.2/accounts" {
                reply(307, &[("location", "/api/data/v9.2/accounts-moved")], "")
            } else {
                reply(201, &[], r#"{"created":true}"#)
            }
        }));
        let url = format!("http://{PRIMARY_HOST}:{}/api/data/v9.2/accounts", s.port);
        let response = s
            .client
            .post(&url)
            .header("idempotency-key", "acct-8")
            .body(payload.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "reqwest followed the 307 with the body");
        let seen = s.primary.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].path, "/api/data/v9.2/accounts-moved");
        assert_eq!(
            seen[1].body_sha256,
            digest(&payload),
            "the same body after the redirect"
        );

        s.primary.set(Behavior::Status(503, r#"{"error":"down"}"#));
        let response = s
            .client
            .post(&url)
            .header("idempotency-key", "acct-9")
            .body(payload.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let alternate = s.alternate.seen();
        assert_eq!(alternate.len(), 1);
        assert_eq!(alternate[0].body_len, payload.len());
        assert_eq!(alternate[0].body_sha256, digest(&payload), "re-sent whole");
        assert_eq!(alternate[0].idempotency_key.as_deref(), Some("acct-9"));
    })
    .await
}

/// A re-send keeps the caller's own `.timeout(..)`: reqwest keeps it on the request, and a
/// re-send is a new request.
#[tokio::test]
async fn a_re_sent_request_keeps_its_own_timeout() {
    within(20, async {
        let s = setup(|b| b).await;
        s.alternate.set(Behavior::Delay(Duration::from_secs(3)));
        // Refused at connect: the GET is re-sent on the alternate, which is slow.
        s.primary.kill().await;
        let started = std::time::Instant::now();
        let result = s
            .client
            .get(format!("http://{PRIMARY_HOST}:{}/api/data/v9.2/WhoAmI", s.port))
            .timeout(Duration::from_millis(300))
            .send()
            .await;
        let elapsed = started.elapsed();
        wait_until(5, "the re-send reached the alternate", || {
            s.alternate.count() == 1
        })
        .await;
        assert!(
            result.is_err() && elapsed < Duration::from_secs(2),
            "a 300 ms request ran {elapsed:?} and ended {:?}",
            result.map(|r| r.status())
        );
    })
    .await
}

/// `RetryPolicy::deadline` bounds the whole call on the reqwest path too, the read of a small
/// error body for the classifier included: here a 500 whose declared 80-byte body never comes.
#[tokio::test]
async fn the_deadline_bounds_the_read_of_an_error_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    within(20, async {
        // A server that sends a 500's head and then stalls, on a real socket.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stalling = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = socket.read(&mut buf).await;
                    let head = "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n\
                                content-length: 80\r\n\r\n";
                    let _ = socket.write_all(head.as_bytes()).await;
                    tokio::time::sleep(Duration::from_secs(30)).await;
                });
            }
        });
        let port = stalling.port();
        let layer =
            FailoverLayer::builder(Endpoints::dynamics(&format!("http://{PRIMARY_HOST}:{port}")).unwrap())
                .default_policy(tower_failover::RetryPolicy::by_method().deadline(Duration::from_millis(300)))
                .build()
                .unwrap();
        let client = reqwest_middleware::ClientBuilder::new(
            reqwest::Client::builder()
                .resolve(PRIMARY_HOST, stalling)
                .build()
                .unwrap(),
        )
        .with(layer.middleware())
        .build();
        let started = std::time::Instant::now();
        let result = client.get(format!("http://{PRIMARY_HOST}:{port}/x")).send().await;
        let elapsed = started.elapsed();
        server.abort();
        let error = result.expect_err("the deadline passed while the error body was read");
        assert_eq!(
            failover_error(&error).kind(),
            &FailoverErrorKind::DeadlineExceeded
        );
        assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    })
    .await
}

/// The tests of what a middleware below the failover one sees or does build the same client:
/// reqwest sending to the set-up's pair with `timeout`, the set-up's failover middleware, then
/// `below` under it.
fn client_with_a_middleware_below(
    s: &Setup,
    timeout: Duration,
    below: impl reqwest_middleware::Middleware,
) -> reqwest_middleware::ClientWithMiddleware {
    let reqwest = reqwest::Client::builder()
        .resolve(PRIMARY_HOST, s.primary.addr)
        .resolve(ALTERNATE_HOST, s.alternate.addr)
        .timeout(timeout)
        .build()
        .unwrap();
    reqwest_middleware::ClientBuilder::new(reqwest)
        .with(s.layer.middleware())
        .with(below)
        .build()
}

/// Notes whether each request it sees could be cloned, as a retry middleware needs.
#[derive(Clone, Default)]
struct CloneProbe(std::sync::Arc<std::sync::Mutex<Vec<bool>>>);

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for CloneProbe {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        self.0.lock().unwrap().push(request.try_clone().is_some());
        next.run(request, extensions).await
    }
}

/// Below the failover middleware, a request with a body in memory can still be cloned (what
/// a retry middleware there needs); a streamed one could not be before either.
#[tokio::test]
async fn a_body_in_memory_stays_cloneable_for_the_middlewares_below() {
    within(10, async {
        let primary = Server::start(PRIMARY_HOST).await;
        let port = primary.addr.port();
        let layer =
            FailoverLayer::new(Endpoints::dynamics(&format!("http://{PRIMARY_HOST}:{port}")).unwrap());
        let probe = CloneProbe::default();
        let client = reqwest_middleware::ClientBuilder::new(
            reqwest::Client::builder()
                .resolve(PRIMARY_HOST, primary.addr)
                .build()
                .unwrap(),
        )
        .with(layer.middleware())
        .with(probe.clone())
        .build();
        let url = format!("http://{PRIMARY_HOST}:{port}/api/data/v9.2/accounts(1)");
        let response = client.put(&url).body(b"hello".to_vec()).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(*probe.0.lock().unwrap(), [true]);
    })
    .await
}

/// On the reqwest path: a throttled POST with a streamed body waits out its
/// `Retry-After`; calls move to the alternate meanwhile. The retry should go there, as it does
/// for a body in memory, but the retry built before the wait still holds the recording, so
/// `after_wait` cannot build another and the retry goes to the primary calls left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_retry_of_a_streamed_body_goes_where_calls_went_during_the_wait() {
    within(15, async {
        let s = setup(|b| b).await;
        s.primary
            .set(custom(|_| async { reply(429, &[("retry-after", "1")], "") }));
        let url = format!("http://{PRIMARY_HOST}:{}/api/data/v9.2/tasks", s.port);
        let throttled = tokio::spawn({
            let client = s.client.clone();
            let url = url.clone();
            async move {
                let frames = futures_util::stream::iter([Ok::<_, std::io::Error>(Frame::data(
                    Bytes::from_static(br#"{"name":"x"}"#),
                ))]);
                client
                    .post(&url)
                    .body(reqwest::Body::wrap(StreamBody::new(frames)))
                    .send()
                    .await
                    .map(|r| r.status())
            }
        });
        wait_until(5, "the primary throttled the POST", || s.primary.count() == 1).await;
        s.primary.set(Behavior::Status(503, ""));
        let get = s
            .client
            .get(format!("http://{PRIMARY_HOST}:{}/api/data/v9.2/WhoAmI", s.port))
            .send()
            .await
            .unwrap();
        assert_eq!(get.status(), 200);
        assert_eq!(s.layer.handle().active(), Side::Alternate);
        let result = throttled.await.unwrap();
        let posts = |server: &Server| server.count_of(&http::Method::POST);
        assert_eq!(
            (posts(&s.primary), posts(&s.alternate)),
            (1, 1),
            "the retry should have gone to the alternate; result {:?}",
            result.as_ref().map_err(|e| e.to_string())
        );
    })
    .await
}

/// A failover re-send that is then throttled and retried counts one of each, as on the tower
/// path.
#[tokio::test]
async fn a_re_send_throttled_and_retried_counts_one_of_each() {
    within(10, async {
        let s = setup(|b| b).await;
        s.primary.set(Behavior::Status(503, "{}"));
        let (behavior, _) = first_n_then_ok(1, || reply(429, &[("retry-after", "0")], ""));
        s.alternate.set(behavior);
        let url = format!("http://{PRIMARY_HOST}:{}/api/data/v9.2/accounts", s.port);
        assert_eq!(s.client.get(&url).send().await.unwrap().status(), 200);
        let counters = s.layer.handle().counters();
        assert_eq!(s.primary.count() + s.alternate.count(), 3);
        assert_eq!(
            (counters.failover_resends, counters.throttle_retries),
            (1, 1),
            "{counters:?}"
        );
    })
    .await
}

/// A throttling retry that never goes out (the caller drops the call during the wait) is
/// neither counted nor charged to the budget, as on the tower path.
#[tokio::test]
async fn a_call_dropped_during_its_throttling_wait_does_not_spend_the_budget() {
    within(10, async {
        let s = setup(|b| b.throttle_budget(tower_failover::RetryBudget::new(0.0).floor_per_second(1))).await;
        s.primary.set(throttled_once_per_query());
        let url = |wait: u32| {
            format!(
                "http://{PRIMARY_HOST}:{}/api/data/v9.2/accounts?wait={wait}",
                s.port
            )
        };
        let first = s.client.get(url(5)).send();
        assert!(tokio::time::timeout(Duration::from_millis(200), first)
            .await
            .is_err());
        let counters = s.layer.handle().counters();
        assert_eq!(
            (counters.throttled, counters.throttle_retries),
            (1, 0),
            "{counters:?}"
        );
        let response = s.client.get(url(0)).send().await.unwrap();
        let counters = s.layer.handle().counters();
        assert_eq!(
            (
                response.status().as_u16(),
                counters.throttle_retries,
                counters.refused_by_budget
            ),
            (200, 1, 0),
            "budget spent on a retry that never went out: {counters:?}"
        );
    })
    .await
}

/// Below the failover middleware: notes when each attempt is handed on, then sends it on to the
/// real server. The attempts are timed here, not at the server: an attempt handed on after the
/// deadline is dropped at once by the attempt's own deadline timeout, and hyper drops a request
/// whose caller is gone before writing it, so the server never sees a late attempt, sent or not.
#[derive(Clone, Default)]
struct HandedOnAt(std::sync::Arc<std::sync::Mutex<Vec<tokio::time::Instant>>>);

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for HandedOnAt {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        self.0.lock().unwrap().push(tokio::time::Instant::now());
        next.run(request, extensions).await
    }
}

/// A throttling wait allowed because it ends (just) before the deadline, but whose timer fires
/// after it (a busy runtime): the retry is not sent; the call ends with its deadline, as the
/// tower future's does (the reqwest loop used to send it after the deadline). The primary is
/// real (429 `Retry-After: 1` first, 200 after); the lateness comes from a task that blocks the
/// runtime.
#[tokio::test]
async fn a_throttling_retry_is_never_sent_after_the_deadline() {
    use tower_failover::RetryPolicy;
    within(10, async {
        let limit = Duration::from_millis(1_100);
        let s = setup(|b| b.default_policy(RetryPolicy::by_method().deadline(limit))).await;
        let (throttled_once, _) = first_n_then_ok(1, || reply(429, &[("retry-after", "1")], ""));
        s.primary.set(throttled_once);
        let sent = HandedOnAt::default();
        let client = client_with_a_middleware_below(&s, Duration::from_secs(5), sent.clone());
        // A busy runtime: another task holds this (current-thread) runtime's only thread
        // across the end of the wait and the deadline.
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(900)).await;
            std::thread::sleep(Duration::from_millis(300));
        });
        let start = tokio::time::Instant::now();
        let deadline = start + limit;
        let result = client
            .get(format!("http://{PRIMARY_HOST}:{}/api/data/v9.2/accounts", s.port))
            .send()
            .await;
        let seen = sent.0.lock().unwrap().clone();
        let late: Vec<_> = seen
            .iter()
            .filter(|at| **at >= deadline)
            .map(|at| *at - start)
            .collect();
        assert!(
            late.is_empty(),
            "attempts sent at/after the call's deadline ({limit:?}): {late:?}; result {:?}; counters {:?}",
            result.map(|r| r.status()),
            s.layer.handle().counters()
        );
    })
    .await
}

/// A request extension the application put on its request (reqwest takes it over from an
/// `http::Request`), to see which attempts carry it.
#[derive(Clone, Debug, PartialEq)]
struct Tenant(&'static str);

/// Below the failover middleware: notes the `Tenant` extension of every attempt. A request's
/// extensions are reachable only through the `http::Request` conversion, both ways.
#[derive(Clone, Default)]
struct ExtensionProbe(std::sync::Arc<std::sync::Mutex<Vec<Option<Tenant>>>>);

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for ExtensionProbe {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let request = http::Request::<reqwest::Body>::try_from(request).unwrap();
        self.0
            .lock()
            .unwrap()
            .push(request.extensions().get::<Tenant>().cloned());
        let request = reqwest::Request::try_from(request).unwrap();
        next.run(request, extensions).await
    }
}

/// A re-send keeps the request's own extensions, as the tower path does: they are the
/// application's, not the attempt's.
#[tokio::test]
async fn a_re_sent_request_keeps_its_own_extensions() {
    within(10, async {
        let s = setup(|b| b).await;
        let probe = ExtensionProbe::default();
        let client = client_with_a_middleware_below(&s, Duration::from_secs(5), probe.clone());
        s.primary.kill().await;
        let mut request =
            http::Request::get(format!("http://{PRIMARY_HOST}:{}/api/data/v9.2/WhoAmI", s.port))
                .body(reqwest::Body::from(Vec::new()))
                .unwrap();
        request.extensions_mut().insert(Tenant("contoso"));
        let response = client
            .execute(reqwest::Request::try_from(request).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(s.alternate.count(), 1, "re-sent on the alternate");
        assert_eq!(
            *probe.0.lock().unwrap(),
            [Some(Tenant("contoso")), Some(Tenant("contoso"))],
            "both attempts carry the request's extension"
        );
    })
    .await
}

/// An error a middleware below hands on is judged as itself: reqwest's timeout there is a
/// timeout (the pair switches, the GET is re-sent), and the caller finds the error it was.
#[tokio::test]
async fn an_error_from_a_middleware_below_is_judged_as_itself() {
    within(10, async {
        let s = setup(|b| b).await;
        s.primary.set(Behavior::Delay(Duration::from_secs(3)));
        let client = client_with_a_middleware_below(&s, Duration::from_millis(300), AsMiddlewareError);
        let url = format!("http://{PRIMARY_HOST}:{}/api/data/v9.2/WhoAmI", s.port);
        let response = client.get(&url).send().await;
        assert_eq!(s.layer.handle().active(), Side::Alternate, "the timeout switched");
        let response = response.expect("re-sent on the alternate");
        assert!(response.text().await.unwrap().contains(ALTERNATE_HOST));

        // Both down: the last attempt's cause is the timeout as reqwest made it.
        s.alternate.set(Behavior::Delay(Duration::from_secs(3)));
        let error = client.get(&url).send().await.unwrap_err();
        let error = failover_error(&error);
        let cause = error.last_attempt().error().expect("an error, not a status");
        let cause = cause
            .downcast_ref::<reqwest::Error>()
            .expect("reqwest's error, not an opaque box");
        assert!(cause.is_timeout());
    })
    .await
}

/// A call its policy never lets be sent again keeps nothing for a re-send (not even the
/// request's base), and fails with the policy's reason when the primary is down: nothing
/// reaches the alternate.
#[tokio::test]
async fn a_call_its_policy_never_re_sends_fails_on_the_primary_with_the_policys_reason() {
    within(10, async {
        let s = setup(|b| b.default_policy(tower_failover::RetryPolicy::never())).await;
        s.primary.kill().await;
        let error = s
            .client
            .get(format!("http://{PRIMARY_HOST}:{}/api/data/v9.2/WhoAmI", s.port))
            .send()
            .await
            .unwrap_err();
        let error = failover_error(&error);
        assert_eq!(error.kind(), &FailoverErrorKind::EndpointNotFound);
        assert!(!error.was_resent());
        assert_eq!(error.not_resent_because(), Some(NotResent::PolicyForbids));
        assert_eq!(s.alternate.count(), 0);
    })
    .await
}
