//! HTTP/2: hyper-util's client with `http2_only(true)` (h2c, prior knowledge) through the
//! failover layer.
//!
//! * A refusal that proves the request was not processed (RST_STREAM with REFUSED_STREAM, or a
//!   GOAWAY whose last stream id is below the request's stream) counts as never sent: the call
//!   switches and is re-sent, whatever its method, a POST without key included.
//! * A stream cut after the request was sent (the connection killed after the handler read the
//!   body, RST_STREAM with INTERNAL_ERROR or CANCEL, a GOAWAY that covers the stream followed by
//!   the connection closing) may have been processed: a POST without key is not re-sent and is
//!   reported "possibly applied".
//!
//! The servers are real: hyper-util's auto server (which speaks h2c prior knowledge) for the
//! ordinary cases and for REFUSED_STREAM over `max_concurrent_streams`; the `h2` crate's server
//! for explicit resets; and, for a GOAWAY with last stream id 0 (which the `h2` crate's server
//! cannot send once it has read a request), a few lines that write the frames by hand.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::Reason;
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tower::ServiceBuilder;
use tower_failover::{
    DownKind, Endpoints, Failover, FailoverError, FailoverErrorKind, FailoverHandle, FailoverLayer,
    NotResent, Side, SwitchCause, SwitchEvent,
};

type H2Client = Client<HttpConnector<Resolver>, TestBody>;
type Svc = Failover<H2Client, tower_failover::DefaultClassifier>;

/// hyper-util's client speaking HTTP/2 only, reaching the names through `resolver`.
fn h2_client(resolver: &Resolver) -> H2Client {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(resolver.connector())
}

struct Setup {
    /// The support servers; the primary is replaced by a special server in some tests.
    pair: Pair,
    handle: FailoverHandle,
    events: tokio::sync::broadcast::Receiver<SwitchEvent>,
    service: Svc,
}

fn setup(pair: Pair) -> Setup {
    let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
    let handle = layer.handle();
    let events = handle.events();
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(h2_client(&pair.resolver));
    Setup {
        pair,
        handle,
        events,
        service,
    }
}

/// Most tests put a misbehaving server of their own in the primary's place: the set-up over a
/// pair whose primary host resolves to `addr`.
async fn setup_with_the_primary_at(addr: SocketAddr) -> Setup {
    let pair = Pair::start().await;
    pair.resolver.map(PRIMARY_HOST, addr);
    setup(pair)
}

fn post(id: usize) -> Request<Full<Bytes>> {
    Request::post(format!("{PRIMARY_URL}/api/data/v9.2/tasks"))
        .header("x-request-id", id.to_string())
        .body(Full::new(Bytes::from(format!(r#"{{"id":{id}}}"#))))
        .unwrap()
}

fn get() -> Request<Full<Bytes>> {
    request(Method::GET, "/api/data/v9.2/WhoAmI")
}

fn failed(result: FailoverResult) -> FailoverError {
    match result {
        Ok(response) => panic!("expected an error, got {}", response.status()),
        Err(error) => error,
    }
}

fn next_cause(events: &mut tokio::sync::broadcast::Receiver<SwitchEvent>) -> SwitchCause {
    loop {
        match events.try_recv().expect("a switch event") {
            SwitchEvent::SwitchRequired { cause, .. } => return cause,
            _ => continue,
        }
    }
}

/// Aborts a test server's tasks when dropped.
#[derive(Default, Clone)]
struct Tasks(Arc<Mutex<Vec<AbortHandle>>>);

impl Tasks {
    fn spawn(&self, future: impl std::future::Future<Output = ()> + Send + 'static) {
        let task = tokio::spawn(future);
        self.0.lock().unwrap().push(task.abort_handle());
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        if Arc::strong_count(&self.0) == 1 {
            for task in self.0.lock().unwrap().drain(..) {
                task.abort();
            }
        }
    }
}

/// Accepts connections on a fresh loopback port and hands each to `serve`.
async fn listen<F, Fut>(serve: F) -> (SocketAddr, Tasks)
where
    F: Fn(TcpStream, Tasks) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tasks = Tasks::default();
    let inner = tasks.clone();
    tasks.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let connection = serve(stream, inner.clone());
            inner.spawn(connection);
        }
    });
    (addr, tasks)
}

// ---------------------------------------------------------------------------------------------
// The ordinary path, and a connection killed after the request was read
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn calls_go_over_http2_and_fail_over_on_a_dead_primary() {
    within(10, async {
        let s = setup(Pair::start().await);
        let response = send(&s.service, get()).await.unwrap();
        assert_eq!(response.version(), Version::HTTP_2);
        assert!(text(response).await.contains(PRIMARY_HOST));

        // HTTP/2 names the host in `:authority` (no `Host` header): the alternate answers
        // with the authority it saw.
        s.pair.alternate.set(custom(|received: Received| {
            let authority = received.head.uri.authority().map(|a| a.to_string());
            async move {
                json(
                    StatusCode::OK,
                    format!(r#"{{"authority":"{}"}}"#, authority.unwrap_or_default()),
                )
            }
        }));
        s.pair.primary.kill().await;
        // The pooled h2 connection is gone and the port refuses: never sent, so re-sent.
        let response = send(&s.service, post(1)).await.unwrap();
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(
            text(response).await,
            format!(r#"{{"authority":"{ALTERNATE_HOST}"}}"#)
        );
        assert_eq!(s.handle.active(), Side::Alternate);
        assert_eq!(s.pair.alternate.seen()[0].host, None, "h2: no Host header");
    })
    .await
}

/// The primary reads the whole request, then its connection is killed: over HTTP/2 too, the
/// POST without key is possibly applied and not re-sent; the GET in flight with it is re-sent.
#[tokio::test]
async fn a_connection_killed_after_the_body_was_read_does_not_resend_a_post() {
    within(10, async {
        let s = setup(Pair::start().await);
        s.pair.primary.set(Behavior::Delay(Duration::from_secs(30)));
        let write = tokio::spawn({
            let service = s.service.clone();
            async move { send(&service, post(1)).await }
        });
        let read = tokio::spawn({
            let service = s.service.clone();
            async move { send(&service, get()).await }
        });
        wait_until(5, "the primary has read both requests", || {
            s.pair.primary.count() == 2
        })
        .await;
        s.pair.primary.kill().await;

        let error = failed(write.await.unwrap());
        assert_eq!(error.kind(), &FailoverErrorKind::ConnectionLost, "{error}");
        assert!(error.possibly_applied());
        assert_eq!(error.not_resent_because(), Some(NotResent::NotIdempotent));
        let response = read
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("the read failed: {e}"));
        assert!(text(response).await.contains(ALTERNATE_HOST));
        let methods: Vec<Method> = s.pair.alternate.seen().into_iter().map(|r| r.method).collect();
        assert_eq!(methods, vec![Method::GET]);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// REFUSED_STREAM: not processed, re-sent whatever the method
// ---------------------------------------------------------------------------------------------

/// hyper's own server refuses streams over its `max_concurrent_streams` with REFUSED_STREAM.
/// Several POSTs without key start at once on a fresh connection, before the client has the
/// server's SETTINGS: the seven the primary refuses are re-sent on the alternate. Every POST is
/// answered, and each is applied exactly once over the two servers.
#[tokio::test]
async fn refused_streams_over_max_concurrent_streams_are_resent_and_applied_once() {
    within(15, async {
        let applied: Arc<Mutex<Vec<(String, &'static str)>>> = Arc::default();
        let (addr, _primary) = {
            let applied = applied.clone();
            listen(move |stream, _| {
                let applied = applied.clone();
                async move {
                    // Hold the one stream allowed, so the others are refused.
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        apply_on_the_primary(request, applied.clone(), Duration::from_millis(300))
                    });
                    // Start serving a little late, as over a slow link: by then the client has
                    // sent every request, not yet knowing the server's limit of one stream.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    builder.http2().max_concurrent_streams(1);
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                }
            })
            .await
        };
        let mut s = setup_with_the_primary_at(addr).await;
        alternate_recording(&s.pair, &applied);

        const CALLS: usize = 8;
        let calls: Vec<_> = (0..CALLS)
            .map(|id| {
                let service = s.service.clone();
                tokio::spawn(async move { send(&service, post(id)).await })
            })
            .collect();
        for call in calls {
            let response = call
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("a POST failed: {e}"));
            assert_eq!(response.status(), StatusCode::OK);
        }
        let applied = applied.lock().unwrap().clone();
        let mut ids: Vec<String> = applied.iter().map(|(id, _)| id.clone()).collect();
        ids.sort();
        let mut expected: Vec<String> = (0..CALLS).map(|id| id.to_string()).collect();
        expected.sort();
        assert_eq!(ids, expected, "each POST applied exactly once: {applied:?}");
        let on_alternate = applied.iter().filter(|(_, side)| *side == ALTERNATE_HOST).count();
        eprintln!(
            "{} of {CALLS} POSTs refused by the primary (REFUSED_STREAM) and re-sent on the alternate",
            on_alternate
        );
        // The primary allows one stream at a time and holds it for 300 ms: all but the first
        // are refused.
        assert_eq!(on_alternate, CALLS - 1, "{applied:?}");
        assert_eq!(
            next_cause(&mut s.events),
            SwitchCause::EndpointDown(DownKind::Refused)
        );
        assert_eq!(s.handle.counters().possibly_applied, 0);
    })
    .await
}

fn header(request: &Request<Incoming>, name: &str) -> String {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// An `h2` server that answers every stream with RST_STREAM(`reason`), after reading the whole
/// request body when `read_body` (the request was then processed: it counts in `processed`).
async fn resetting_server(reason: Reason, read_body: bool) -> (SocketAddr, Tasks, Arc<AtomicUsize>) {
    let processed = Arc::new(AtomicUsize::new(0));
    let counter = processed.clone();
    let (addr, tasks) = listen(move |stream, tasks| {
        let processed = counter.clone();
        async move {
            let Ok(mut connection) = h2::server::handshake(stream).await else {
                return;
            };
            while let Some(Ok((request, mut respond))) = connection.accept().await {
                let processed = processed.clone();
                tasks.spawn(async move {
                    if read_body {
                        let mut body = request.into_body();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                        }
                        processed.fetch_add(1, Ordering::SeqCst);
                    }
                    respond.send_reset(reason);
                });
            }
        }
    })
    .await;
    (addr, tasks, processed)
}

/// RST_STREAM(REFUSED_STREAM) before any processing: a POST without key switches and is re-sent.
#[tokio::test]
async fn refused_stream_resends_a_post_without_key() {
    within(10, async {
        let (addr, _tasks, processed) = resetting_server(Reason::REFUSED_STREAM, false).await;
        let mut s = setup_with_the_primary_at(addr).await;

        let response = send(&s.service, post(7)).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status(), StatusCode::OK);
        assert!(text(response).await.contains(ALTERNATE_HOST));
        assert_eq!(s.handle.active(), Side::Alternate);
        assert_eq!(
            next_cause(&mut s.events),
            SwitchCause::EndpointDown(DownKind::Refused)
        );
        let seen = s.pair.alternate.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].body_len,
            br#"{"id":7}"#.len(),
            "the whole body was re-sent"
        );
        assert_eq!(processed.load(Ordering::SeqCst), 0);
        assert_eq!(s.handle.counters().possibly_applied, 0);
    })
    .await
}

/// RST_STREAM with INTERNAL_ERROR or CANCEL after the server read the body: it may have been
/// processed. The POST without key is not re-sent and is possibly applied; a GET is re-sent.
#[tokio::test]
async fn other_resets_after_the_body_was_read_do_not_resend_a_post() {
    within(10, async {
        for reason in [Reason::INTERNAL_ERROR, Reason::CANCEL] {
            let (addr, _tasks, processed) = resetting_server(reason, true).await;
            let s = setup_with_the_primary_at(addr).await;

            let error = failed(send(&s.service, post(1)).await);
            assert!(error.possibly_applied(), "{reason:?}: {error}");
            assert_eq!(
                error.kind(),
                &FailoverErrorKind::ConnectionLost,
                "{reason:?}: {error}"
            );
            assert_eq!(
                error.not_resent_because(),
                Some(NotResent::NotIdempotent),
                "{reason:?}"
            );
            assert_eq!(processed.load(Ordering::SeqCst), 1, "{reason:?}");
            assert_eq!(
                s.pair.alternate.count(),
                0,
                "{reason:?}: the POST went nowhere else"
            );

            // A read reset the same way is re-sent (the pair has switched already).
            assert_eq!(s.handle.fail_back(), Side::Primary);
            let body = send_ok(&s.service, get()).await;
            assert!(body.contains(ALTERNATE_HOST), "{reason:?}: {body}");
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// GOAWAY: not processed when the request's stream is above the last stream id
// ---------------------------------------------------------------------------------------------

/// Writes one HTTP/2 frame.
async fn write_frame(stream: &mut TcpStream, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    let mut frame = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    frame.extend_from_slice(&stream_id.to_be_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame).await.unwrap();
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;

/// A server that writes its frames by hand: SETTINGS, then, once a request has arrived in full
/// (HEADERS and DATA up to END_STREAM), GOAWAY(NO_ERROR) with `last_stream_id`, then closes.
/// Nothing is processed; `requests` counts the requests that arrived.
async fn goaway_server(last_stream_id: u32) -> (SocketAddr, Tasks, Arc<AtomicUsize>) {
    goaway_server_with(last_stream_id, 0).await
}

/// As [`goaway_server`], with the GOAWAY's error code.
async fn goaway_server_with(last_stream_id: u32, code: u32) -> (SocketAddr, Tasks, Arc<AtomicUsize>) {
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let (addr, tasks) = listen(move |mut stream, _| {
        let requests = counter.clone();
        async move {
            let mut preface = [0u8; 24];
            if stream.read_exact(&mut preface).await.is_err() {
                return;
            }
            assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
            write_frame(&mut stream, SETTINGS, 0, 0, &[]).await;
            loop {
                let mut head = [0u8; 9];
                if stream.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
                let (kind, flags) = (head[3], head[4]);
                let mut payload = vec![0u8; len];
                if stream.read_exact(&mut payload).await.is_err() {
                    return;
                }
                if kind == SETTINGS && flags & ACK == 0 {
                    write_frame(&mut stream, SETTINGS, ACK, 0, &[]).await;
                }
                if kind == HEADERS {
                    requests.fetch_add(1, Ordering::SeqCst);
                }
                if (kind == HEADERS || kind == DATA) && flags & END_STREAM != 0 {
                    let mut goaway = last_stream_id.to_be_bytes().to_vec();
                    goaway.extend_from_slice(&code.to_be_bytes());
                    write_frame(&mut stream, GOAWAY, 0, 0, &goaway).await;
                    let _ = stream.flush().await;
                    // Give the client a moment to read it, then close.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return;
                }
            }
        }
    })
    .await;
    (addr, tasks, requests)
}

/// GOAWAY with last stream id 0 after the request arrived: stream 1 was not processed, so the
/// POST without key switches and is re-sent, and is applied once, on the alternate.
#[tokio::test]
async fn goaway_below_the_stream_resends_a_post_without_key() {
    within(10, async {
        let (addr, _tasks, requests) = goaway_server(0).await;
        let mut s = setup_with_the_primary_at(addr).await;

        let response = send(&s.service, post(3)).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status(), StatusCode::OK);
        assert!(text(response).await.contains(ALTERNATE_HOST));
        assert_eq!(
            requests.load(Ordering::SeqCst),
            1,
            "the request did reach the primary"
        );
        assert_eq!(
            next_cause(&mut s.events),
            SwitchCause::EndpointDown(DownKind::Refused)
        );
        let seen = s.pair.alternate.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method, Method::POST);
        assert_eq!(s.handle.counters().possibly_applied, 0);
    })
    .await
}

/// GOAWAY whose last stream id covers the request, then the connection closes without an
/// answer: the stream may have been processed, so the POST without key is not re-sent.
#[tokio::test]
async fn goaway_covering_the_stream_then_close_does_not_resend_a_post() {
    within(10, assert_a_post_is_not_resent_after_a_goaway_covering_it(0)).await
}

/// The GOAWAY tests differ only in the frame's error code: the primary sends a GOAWAY with
/// `code` whose last stream id covers the POST, then closes. The stream may have been
/// processed, so the POST without key fails possibly applied and is not re-sent.
async fn assert_a_post_is_not_resent_after_a_goaway_covering_it(code: u32) {
    let (addr, _tasks, requests) = goaway_server_with(1, code).await;
    let s = setup_with_the_primary_at(addr).await;

    let error = failed(send(&s.service, post(4)).await);
    assert!(error.possibly_applied(), "code {code}: {error}");
    assert_eq!(
        error.not_resent_because(),
        Some(NotResent::NotIdempotent),
        "code {code}: {error}"
    );
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    assert_eq!(s.pair.alternate.count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown: hyper's server sends GOAWAY(NO_ERROR), finishes what it took, closes
// ---------------------------------------------------------------------------------------------

/// A primary served by hyper's HTTP/2 server: each request counts in `applied` once its body
/// is read, and is answered after `hold`. Sending on `shutdown` makes every connection shut
/// down gracefully (`graceful_shutdown`: GOAWAY(NO_ERROR), the streams it took are finished,
/// then it closes); `keep_listening` says whether new connections are still accepted.
async fn gracefully_closing_primary(
    applied: Arc<Mutex<Vec<(String, &'static str)>>>,
    hold: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
    keep_listening: bool,
) -> (SocketAddr, Tasks) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tasks = Tasks::default();
    let inner = tasks.clone();
    tasks.spawn(async move {
        let mut listening_shutdown = shutdown.clone();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = listening_shutdown.wait_for(|down| *down), if !keep_listening => return,
            };
            let Ok((stream, _)) = accepted else { return };
            let applied = applied.clone();
            let mut shutdown = shutdown.clone();
            inner.spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    apply_on_the_primary(request, applied.clone(), hold)
                });
                let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                // The shutdown first: `wait_for` is ready at once if it is already down, so
                // such a connection is shut down before it serves anything.
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|down| *down) => {}
                    _ = connection.as_mut() => return,
                }
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            });
        }
    });
    (addr, tasks)
}

/// What the primaries of the tests of what was applied where do with each request: read it
/// whole, note its `x-request-id` in `applied`, and answer 200 after `hold`.
async fn apply_on_the_primary(
    request: Request<Incoming>,
    applied: Arc<Mutex<Vec<(String, &'static str)>>>,
    hold: Duration,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let id = header(&request, "x-request-id");
    let _ = request.into_body().collect().await;
    applied.lock().unwrap().push((id, PRIMARY_HOST));
    tokio::time::sleep(hold).await;
    Ok(json(StatusCode::OK, format!(r#"{{"server":"{PRIMARY_HOST}"}}"#)))
}

/// Makes the alternate answer 200 and note each request's `x-request-id` in `applied`, with
/// its host: the tests of what was applied where count over both servers.
fn alternate_recording(pair: &Pair, applied: &Arc<Mutex<Vec<(String, &'static str)>>>) {
    let applied = applied.clone();
    pair.alternate.set(custom(move |received: Received| {
        let id = received
            .head
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        applied.lock().unwrap().push((id, ALTERNATE_HOST));
        async move { json(StatusCode::OK, format!(r#"{{"server":"{ALTERNATE_HOST}"}}"#)) }
    }));
}

/// Calls in flight when the primary shuts down gracefully: the streams it took finish there;
/// the calls sent after its GOAWAY were not processed and are re-sent. Every POST is
/// answered, and each is applied exactly once over the two servers.
async fn graceful_shutdown_with_calls_in_flight(keep_listening: bool, delay: Duration) {
    let applied: Arc<Mutex<Vec<(String, &'static str)>>> = Arc::default();
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let (addr, _primary) = gracefully_closing_primary(
        applied.clone(),
        Duration::from_millis(400),
        shutdown_rx,
        keep_listening,
    )
    .await;
    let s = setup_with_the_primary_at(addr).await;
    alternate_recording(&s.pair, &applied);

    const BEFORE: usize = 4;
    const AFTER: usize = 4;
    let spawn = |id: usize| {
        let service = s.service.clone();
        tokio::spawn(async move { (id, send(&service, post(id)).await) })
    };
    let mut calls: Vec<_> = (0..BEFORE).map(spawn).collect();
    wait_until(5, "the primary has taken the first calls", || {
        applied.lock().unwrap().len() == BEFORE
    })
    .await;
    shutdown_tx.send(true).unwrap();
    tokio::time::sleep(delay).await;
    calls.extend((BEFORE..BEFORE + AFTER).map(spawn));
    for call in calls {
        let (id, result) = call.await.unwrap();
        match result {
            Ok(response) => assert_eq!(response.status(), StatusCode::OK, "call {id}"),
            Err(error) => panic!(
                "call {id} failed: {error} (kind {:?}, possibly applied {}); applied: {:?}",
                error.kind(),
                error.possibly_applied(),
                applied.lock().unwrap()
            ),
        }
    }
    let applied = applied.lock().unwrap().clone();
    let mut ids: Vec<String> = applied.iter().map(|(id, _)| id.clone()).collect();
    ids.sort();
    let mut expected: Vec<String> = (0..BEFORE + AFTER).map(|id| id.to_string()).collect();
    expected.sort();
    assert_eq!(ids, expected, "each POST applied exactly once: {applied:?}");
    for (id, side) in &applied {
        if id.parse::<usize>().unwrap() < BEFORE {
            assert_eq!(*side, PRIMARY_HOST, "a call the primary took finished there");
        }
    }
    eprintln!(
        "keep_listening {keep_listening} delay {delay:?}: {applied:?}, generation {}",
        s.handle.generation()
    );
    assert_eq!(s.handle.counters().possibly_applied, 0);
}

/// Both graceful-close tests run [`graceful_shutdown_with_calls_in_flight`] at the same delays
/// (the close at once, or a little after the calls went out); they differ in `keep_listening`.
async fn graceful_shutdown_at_each_delay(keep_listening: bool) {
    for ms in [0u64, 2, 10] {
        within(
            15,
            graceful_shutdown_with_calls_in_flight(keep_listening, Duration::from_millis(ms)),
        )
        .await
    }
}

#[tokio::test]
async fn a_graceful_shutdown_of_the_primary_finishes_what_it_took_and_resends_the_rest() {
    graceful_shutdown_at_each_delay(false).await
}

#[tokio::test]
async fn a_graceful_connection_close_with_the_primary_still_listening_loses_nothing() {
    graceful_shutdown_at_each_delay(true).await
}

/// A GOAWAY with an error code that covers the stream, then a close: the stream may have been
/// processed, whatever the code, so the POST without key is not re-sent.
#[tokio::test]
async fn goaway_with_an_error_covering_the_stream_then_close_does_not_resend_a_post() {
    within(10, async {
        // INTERNAL_ERROR, ENHANCE_YOUR_CALM, PROTOCOL_ERROR
        for code in [0x2u32, 0xb, 0x1] {
            assert_a_post_is_not_resent_after_a_goaway_covering_it(code).await;
        }
    })
    .await
}

/// A recorded (not whole) body throttled over HTTP/2 after the server read all of it: the
/// retry replays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_throttled_over_http2_after_it_was_read_is_retried() {
    use tower::ServiceExt;
    use tower_failover::ReplayBody;
    within(20, async {
        let pair = Pair::start().await;
        let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
        let handle = layer.handle();
        let client: Client<HttpConnector<Resolver>, ReplayBody<String>> =
            Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(pair.resolver.connector());
        let service = tower::Layer::layer(&layer, client);
        let mut handed_back = 0;
        for i in 0..10 {
            let (behavior, _) = first_n_then_ok(1, || reply(429, &[("retry-after", "0")], ""));
            pair.primary.set(behavior);
            let request = http::Request::post(format!("{PRIMARY_URL}/api/data/v9.2/tasks"))
                .body(format!(r#"{{"name":"{i}"}}"#))
                .unwrap();
            let response = service.clone().oneshot(request).await.unwrap();
            if response.status() != StatusCode::OK {
                handed_back += 1;
            }
        }
        eprintln!(
            "handed back {handed_back} of 10; counters {:?}",
            handle.counters()
        );
        assert_eq!(handed_back, 0);
    })
    .await
}

/// Over HTTP/2 the service-protection code in a small error body is read as over HTTP/1: the
/// POST is retried on the same endpoint after `Retry-After`, never switched.
#[tokio::test]
async fn a_service_protection_code_over_http2_is_throttling() {
    within(10, async {
        let s = setup(Pair::start().await);
        let (behavior, answered) = first_n_then_ok(1, || {
            reply(
                400,
                &[("retry-after", "0")],
                r#"{"error":{"code":"0x80072322","message":"Number of requests exceeded the limit"}}"#,
            )
        });
        s.pair.primary.set(behavior);
        let response = send(&s.service, post(1)).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(answered.load(Ordering::SeqCst), 2);
        assert_eq!(s.handle.active(), Side::Primary);
        assert_eq!(s.handle.counters().throttle_retries, 1);
    })
    .await
}
