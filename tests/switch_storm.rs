//! Manual switches racing automatic ones under load: callers write and read through the layer
//! while another task flips the pair by hand (`switch_endpoint`, `switch_to`, `fail_back`), a
//! callback sometimes asks for a switch from inside a switch, failback probes run, and the
//! primary is killed and brought back. Afterwards, everything the layer said is checked
//! against what the servers did:
//!
//! * every write a server applied before a switch off it began is in that switch's report;
//! * the callbacks saw every switch once, in order, with `handle.state()` already showing it;
//!   the broadcast stream gave the same events (skipping only what it said it skipped); the
//!   `watch` channel never went back and ends where the handle is;
//! * the counters match the calls made and what the servers received;
//! * every write that succeeded was applied once, one that failed as not possibly applied was
//!   applied nowhere, and no call hung or panicked.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use support::*;
use tokio::sync::broadcast::error::RecvError;
use tower::ServiceExt;
use tower_failover::{
    DataLossReport, Failback, FailoverHandle, FailoverLayer, RetryPolicy, Side, SwitchCause, SwitchEvent,
    WriteKey,
};

const CALLERS: u64 = 24;
const CALLS_EACH: u64 = 60;
const MANUAL_SWITCHES: usize = 120;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_TIME_ON_ALTERNATE: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Get,
    KeyedPost,
    Post,
}

/// One order for everything the test stamps: writes applied by a server, switches beginning.
static CLOCK: AtomicU64 = AtomicU64::new(0);

fn tick() -> u64 {
    CLOCK.fetch_add(1, Ordering::SeqCst)
}

#[derive(Default)]
struct Db {
    /// Request id -> (server, tick) for each time it was applied.
    applied: Mutex<HashMap<u64, Vec<(&'static str, u64)>>>,
    keys: Mutex<std::collections::HashSet<String>>,
    /// Writes whose body arrived whole but not as sent.
    corrupt: Mutex<Vec<u64>>,
    /// Routed (non-probe) requests each server received.
    received: [AtomicUsize; 2],
}

fn data_behavior(name: &'static str, index: usize, db: Arc<Db>, seed: u64) -> Behavior {
    let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
    custom(move |received: Received| {
        let probe = !received.head.uri.path().starts_with("/api/");
        let (before, after, fault) = {
            let mut rng = rng.lock().unwrap();
            // Now and then a slow answer (past the calls' deadline), a throttling answer or a
            // 503, each before anything is applied.
            let slow = rng.u8(0..40) == 0;
            let fault = if probe { 0 } else { rng.u8(0..40) };
            (rng.u64(0..4), rng.u64(0..4) + if slow { 60 } else { 0 }, fault)
        };
        let db = db.clone();
        async move {
            if !probe {
                db.received[index].fetch_add(1, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(before)).await;
            match fault {
                1 => return reply(429, &[("retry-after", "0")], ""),
                2 => return reply(503, &[], r#"{"error":"busy"}"#),
                _ => {}
            }
            let headers = &received.head.headers;
            let id = headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let mut note = "read";
            if let (Some(id), &Method::POST) = (id, &received.head.method) {
                // A body cut off in the middle arrives empty (the support server gets an
                // error reading it); anything else must be the write's body, byte for byte.
                if received.body != body_of(id) {
                    if !received.body.is_empty() {
                        db.corrupt.lock().unwrap().push(id);
                    }
                    return reply(400, &[], r#"{"error":"incomplete body"}"#);
                }
                let mut keys = db.keys.lock().unwrap();
                let fresh = match headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
                    Some(key) => keys.insert(key.to_string()),
                    None => true,
                };
                if fresh {
                    db.applied
                        .lock()
                        .unwrap()
                        .entry(id)
                        .or_default()
                        .push((name, tick()));
                    note = "applied";
                } else {
                    note = "duplicate";
                }
            }
            tokio::time::sleep(Duration::from_millis(after)).await;
            json(
                StatusCode::OK,
                format!(
                    r#"{{"server":"{name}","id":{},"note":"{note}"}}"#,
                    id.unwrap_or(0)
                ),
            )
        }
    })
}

/// What the callbacks saw of one event.
struct Observed {
    event: SwitchEvent,
    /// `tick()` when it was raised.
    at: u64,
    /// `handle.state()` and `handle.generation()` inside the callback.
    state_generation: u64,
    state_active: Side,
    generation: u64,
    state_report: Option<Arc<DataLossReport>>,
    /// `handle.state().since` inside the callback.
    since: std::time::SystemTime,
}

impl Observed {
    /// What a callback sees of `event`, now.
    fn now(event: &SwitchEvent, handle: &FailoverHandle) -> Observed {
        let state = handle.state();
        Observed {
            event: event.clone(),
            at: tick(),
            state_generation: state.generation,
            state_active: state.active,
            generation: handle.generation(),
            state_report: state.last_report.clone(),
            since: state.since,
        }
    }
}

enum Outcome {
    Ok(StatusCode, String),
    /// The answer's head arrived and a kill cut its body: the layer has handed the response
    /// over by then, so the caller sees the body's error (README, "Limits").
    BodyCut(StatusCode, String),
    Failed {
        possibly_applied: bool,
        text: String,
    },
    /// The caller gave up (dropped the call) on purpose.
    Dropped,
    Hung,
}

/// How the callers reach the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Http1,
    Http2,
    #[cfg(feature = "reqwest")]
    Reqwest,
}

#[derive(Clone)]
enum Caller {
    /// The same layer over two clients: bodies whole in memory, and streamed ones.
    Tower(Box<(Through<Full<Bytes>>, Through<Trickle>)>),
    #[cfg(feature = "reqwest")]
    Reqwest(reqwest_middleware::ClientWithMiddleware),
}

impl Caller {
    async fn outcome(answer: FailoverResult) -> Outcome {
        match answer {
            Ok(response) => {
                let status = response.status();
                match response.into_body().collect().await {
                    Ok(body) => Outcome::Ok(status, String::from_utf8_lossy(&body.to_bytes()).into_owned()),
                    Err(error) => Outcome::BodyCut(status, error.to_string()),
                }
            }
            Err(error) => Outcome::Failed {
                possibly_applied: error.possibly_applied(),
                text: error.to_string(),
            },
        }
    }

    async fn call(&self, base: &str, id: u64, kind: Kind) -> Outcome {
        match self {
            Caller::Tower(stacks) => {
                let (whole, streamed) = &**stacks;
                let answer = if kind == Kind::Get || id % 3 != 0 {
                    whole.clone().oneshot(build_request(base, id, kind)).await
                } else {
                    let request = request_with(base, id, kind).map(Trickle::new);
                    streamed.clone().oneshot(request).await
                };
                Self::outcome(answer).await
            }
            #[cfg(feature = "reqwest")]
            Caller::Reqwest(client) => {
                let request =
                    reqwest::Request::try_from(request_with(base, id, kind).map(reqwest::Body::from))
                        .expect("a valid request");
                let mut extensions = http::Extensions::new();
                if kind == Kind::Post {
                    extensions.insert(WriteKey::new(format!("w-{id}")));
                }
                match client.execute_with_extensions(request, &mut extensions).await {
                    Ok(response) => {
                        let status = response.status();
                        match response.text().await {
                            Ok(body) => Outcome::Ok(status, body),
                            Err(error) => Outcome::BodyCut(status, error.to_string()),
                        }
                    }
                    Err(reqwest_middleware::Error::Middleware(error)) => {
                        let error = error
                            .downcast_ref::<tower_failover::FailoverError>()
                            .expect("the middleware fails with a FailoverError");
                        Outcome::Failed {
                            possibly_applied: error.possibly_applied(),
                            text: error.to_string(),
                        }
                    }
                    Err(error) => Outcome::Failed {
                        possibly_applied: true,
                        text: format!("not routed? {error}"),
                    },
                }
            }
        }
    }
}

fn build_request(base: &str, id: u64, kind: Kind) -> Request<Full<Bytes>> {
    request_with(base, id, kind).map(Full::new)
}

/// The body of write `id`, a few hundred bytes to a few kilobytes: the server checks it byte
/// for byte.
fn body_of(id: u64) -> Bytes {
    let pad = "x".repeat((id as usize * 37) % 3_000);
    Bytes::from(format!(r#"{{"id":{id},"pad":"{pad}"}}"#))
}

/// A body that arrives in a few chunks with pauses between them: a first attempt reads it
/// through the recording, and a kill can land in the middle of it.
struct Trickle {
    chunks: std::collections::VecDeque<Bytes>,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Trickle {
    fn new(body: Bytes) -> Self {
        let third = body.len() / 3;
        let chunks = [
            body.slice(..third),
            body.slice(third..2 * third),
            body.slice(2 * third..),
        ]
        .into_iter()
        .filter(|chunk| !chunk.is_empty())
        .collect();
        Trickle { chunks, pause: None }
    }
}

impl http_body::Body for Trickle {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if let Some(pause) = self.pause.as_mut() {
            std::task::ready!(std::future::Future::poll(pause.as_mut(), cx));
            self.pause = None;
        }
        let chunk = self.chunks.pop_front();
        if chunk.is_some() && !self.chunks.is_empty() {
            let wait = Duration::from_micros(fastrand::u64(0..2_000));
            self.pause = Some(Box::pin(tokio::time::sleep(wait)));
        }
        std::task::Poll::Ready(chunk.map(|chunk| Ok(http_body::Frame::data(chunk))))
    }
}

fn request_with(base: &str, id: u64, kind: Kind) -> Request<Bytes> {
    let (method, path, body) = match kind {
        Kind::Get => (
            Method::GET,
            format!("/api/data/v9.2/accounts({id})"),
            Bytes::new(),
        ),
        _ => (Method::POST, "/api/data/v9.2/tasks".to_string(), body_of(id)),
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("x-request-id", id.to_string());
    match kind {
        Kind::KeyedPost => builder = builder.header("idempotency-key", format!("w-{id}")),
        // Named through the extensions, so the report can be searched by id.
        Kind::Post => builder = builder.extension(WriteKey::new(format!("w-{id}"))),
        Kind::Get => {}
    }
    builder.body(body).unwrap()
}

fn kind_of(rng: &mut fastrand::Rng) -> Kind {
    match rng.u8(0..10) {
        0..=2 => Kind::Get,
        3..=6 => Kind::KeyedPost,
        _ => Kind::Post,
    }
}

/// Two sides, starting on the primary: each switch flips the side, so the generation's parity
/// names it.
fn side_at(generation: u64) -> Side {
    if generation % 2 == 0 {
        Side::Primary
    } else {
        Side::Alternate
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_switches_racing_outages_keep_reports_events_and_counters_exact() {
    within(30, storm(fastrand::u64(..), true, Transport::Http1)).await;
}

/// The same over HTTP/2: one connection, many streams, all cut at once by a kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_storm_over_http2() {
    within(30, storm(fastrand::u64(..), true, Transport::Http2)).await;
}

/// The same through the reqwest middleware.
#[cfg(feature = "reqwest")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_storm_through_reqwest() {
    within(30, storm(fastrand::u64(..), true, Transport::Reqwest)).await;
}

/// The same with automatic switching off: the application switches from `on_switch_required`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_application_switching_from_its_callbacks_under_the_same_storm() {
    within(30, storm(fastrand::u64(..), false, Transport::Http1)).await;
}

async fn storm(seed: u64, auto_switch: bool, transport: Transport) {
    eprintln!("switch storm seed {seed}, auto_switch {auto_switch}, {transport:?}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let db = Arc::new(Db::default());
    // One port on two loopback addresses (reqwest's resolver overrides ignore ports), and the
    // endpoints name the port.
    let behavior = data_behavior(PRIMARY_HOST, 0, db.clone(), rng.u64(..));
    let mut primary = Server::start_with(PRIMARY_HOST, "127.0.0.1:0".parse().unwrap(), behavior).await;
    let port = primary.addr.port();
    let behavior = data_behavior(ALTERNATE_HOST, 1, db.clone(), rng.u64(..));
    let mut alternate = Server::start_with(
        ALTERNATE_HOST,
        std::net::SocketAddr::from(([127, 0, 0, 2], port)),
        behavior,
    )
    .await;
    let base = format!("http://{PRIMARY_HOST}:{port}");

    let seen: Arc<Mutex<Vec<Observed>>> = Arc::default();
    // The callbacks' way to the handle, taken away at the end so that everything can drop.
    let me: Arc<Mutex<Option<FailoverHandle>>> = Arc::default();
    let inner_switches = Arc::new(AtomicUsize::new(0));
    let record = |seen: Arc<Mutex<Vec<Observed>>>, me: Arc<Mutex<Option<FailoverHandle>>>| {
        move |event: &SwitchEvent| {
            let Some(handle) = me.lock().unwrap().clone() else {
                return;
            };
            seen.lock().unwrap().push(Observed::now(event, &handle));
        }
    };
    let asks = inner_switches.clone();
    let asker = me.clone();
    let decider = me.clone();
    let layer = FailoverLayer::builder(tower_failover::Endpoints::dynamics(&base).unwrap())
        .failback(
            Failback::new()
                .interval(Duration::from_millis(5))
                .jitter_percent(0)
                .min_time_on_alternate(MIN_TIME_ON_ALTERNATE)
                .healthy_probes(1)
                .probe_timeout(Duration::from_millis(200))
                .hold(Duration::from_millis(1), Duration::from_millis(20)),
        )
        .default_policy(RetryPolicy::by_method().deadline(Duration::from_millis(40)))
        .auto_switch(auto_switch)
        .on_switch_required(record(seen.clone(), me.clone()))
        .on_switch_required(move |event| {
            // With automatic switching off, the application decides: it switches.
            if matches!(event.cause(), SwitchCause::EndpointDown(_)) && !auto_switch {
                let handle = decider.lock().unwrap().clone();
                if let Some(handle) = handle {
                    handle.switch_endpoint();
                }
            }
        })
        .on_switched(record(seen.clone(), me.clone()))
        .on_switched(move |_| {
            // Now and then the application switches from inside a callback (queued).
            if fastrand::u8(0..8) == 0 {
                asks.fetch_add(1, Ordering::SeqCst);
                let handle = asker.lock().unwrap().clone();
                if let Some(handle) = handle {
                    handle.switch_endpoint();
                }
            }
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    *me.lock().unwrap() = Some(handle.clone());
    let service = match transport {
        #[cfg(feature = "reqwest")]
        Transport::Reqwest => {
            let client = reqwest::Client::builder()
                .resolve(PRIMARY_HOST, primary.addr)
                .resolve(ALTERNATE_HOST, alternate.addr)
                .build()
                .unwrap();
            // reqwest alone lends no client for the failback probes: it is lent here.
            Caller::Reqwest(
                reqwest_middleware::ClientBuilder::new(client.clone())
                    .with(layer.middleware().probe_with(client))
                    .build(),
            )
        }
        _ => {
            let resolver = Resolver::pair(primary.addr, alternate.addr);
            let mut builder =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
            builder.http2_only(transport == Transport::Http2);
            Caller::Tower(Box::new((
                tower::Layer::layer(&layer, builder.build(resolver.connector())),
                tower::Layer::layer(&layer, builder.build(resolver.connector())),
            )))
        }
    };

    // The listeners, subscribed before anything happens.
    let mut events = handle.events();
    let streamed = tokio::spawn(async move {
        // (event, how many were skipped just before it)
        let mut got: Vec<(SwitchEvent, u64)> = Vec::new();
        let mut skipped = 0;
        loop {
            match events.recv().await {
                Ok(event) => {
                    got.push((event, skipped));
                    skipped = 0;
                }
                Err(RecvError::Lagged(n)) => skipped += n,
                // Every service and handle dropped.
                Err(RecvError::Closed) => return (got, skipped),
            }
        }
    });
    let mut watch = handle.subscribe();
    let watched = tokio::spawn(async move {
        let mut problems = Vec::new();
        let mut last = 0;
        let mut updates = 0usize;
        let mut last_state = watch.borrow().clone();
        while watch.changed().await.is_ok() {
            let state = watch.borrow_and_update().clone();
            updates += 1;
            if state.generation < last {
                problems.push(format!("watch went back from {last} to {}", state.generation));
            }
            if state.active != side_at(state.generation) {
                problems.push(format!(
                    "watch: generation {} on the {:?}",
                    state.generation, state.active
                ));
            }
            // Healthy probes are counted while waiting to fail back, on the alternate only.
            if state.active == Side::Primary && state.healthy_probes != 0 {
                problems.push(format!(
                    "watch: {} healthy probes on the primary (generation {})",
                    state.healthy_probes, state.generation
                ));
            }
            last = state.generation;
            last_state = state;
        }
        // Every service and handle dropped.
        (problems, updates, last_state)
    });

    let done = Arc::new(AtomicUsize::new(0));
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..CALLERS {
        let service = service.clone();
        let base = base.clone();
        let mut rng = fastrand::Rng::with_seed(rng.u64(..));
        let done = done.clone();
        callers.spawn(async move {
            let mut outcomes = Vec::new();
            for n in 0..CALLS_EACH {
                let id = caller * CALLS_EACH + n + 1;
                let kind = kind_of(&mut rng);
                let call = service.call(&base, id, kind);
                // Now and then the caller gives up early, at any point of the call.
                let (limit, gave_up) = if rng.u8(0..10) == 0 {
                    (Duration::from_micros(rng.u64(0..8_000)), Outcome::Dropped)
                } else {
                    (CALL_TIMEOUT, Outcome::Hung)
                };
                let outcome = tokio::time::timeout(limit, call).await.unwrap_or(gave_up);
                outcomes.push((id, kind, outcome));
                done.fetch_add(1, Ordering::SeqCst);
            }
            outcomes
        });
    }
    let switcher = {
        let handle = handle.clone();
        let mut rng = fastrand::Rng::with_seed(rng.u64(..));
        tokio::spawn(async move {
            for _ in 0..MANUAL_SWITCHES {
                match rng.u8(0..4) {
                    0 => {
                        handle.switch_endpoint();
                    }
                    1 => {
                        handle.fail_back();
                    }
                    2 => {
                        handle.switch_to(Side::Alternate);
                    }
                    _ => {
                        handle.switch_to(Side::Primary);
                    }
                }
                tokio::time::sleep(Duration::from_micros(rng.u64(0..4000))).await;
            }
        })
    };
    // A maintenance window on the primary in the middle of it all.
    let start = std::time::SystemTime::now() + Duration::from_millis(rng.u64(50..300));
    let end = start + Duration::from_millis(100);
    handle
        .schedule_maintenance_with_lead(start, end, Duration::ZERO)
        .unwrap();
    // Outages: the primary dies and comes back a few times while the calls run; once, the
    // alternate does.
    let total = (CALLERS * CALLS_EACH) as usize;
    for round in 0..4 {
        let kill_at = total * (2 * round + 1) / 9;
        while done.load(Ordering::SeqCst) < kill_at {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let down = Duration::from_millis(rng.u64(20..80));
        if round == 2 {
            alternate.kill().await;
            tokio::time::sleep(down).await;
            let behavior = data_behavior(ALTERNATE_HOST, 1, db.clone(), rng.u64(..));
            alternate = Server::start_with(ALTERNATE_HOST, alternate.addr, behavior).await;
        } else {
            primary.kill().await;
            tokio::time::sleep(down).await;
            let behavior = data_behavior(PRIMARY_HOST, 0, db.clone(), rng.u64(..));
            primary = Server::start_with(PRIMARY_HOST, primary.addr, behavior).await;
        }
    }
    switcher.await.expect("the switcher panicked");
    let mut outcomes = Vec::new();
    while let Some(result) = callers.join_next().await {
        outcomes.extend(result.expect("a caller panicked"));
    }
    // Calls come back to the restarted primary (failback), and nothing moves any more: two
    // looks apart, on the primary, no probe task, the same generation.
    // The window is over (it may open only after the calls end), so nothing but the failback
    // probes and the window's own return can move calls now.
    if let Ok(left) = end.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
    let settled = || {
        let state = handle.state();
        (state.active == Side::Primary && !handle.probing() && state.generation == handle.generation())
            .then_some(state.generation)
    };
    let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let first = settled();
        tokio::time::sleep(Duration::from_millis(30)).await;
        if first.is_some() && settled() == first {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "switch storm seed {seed}: calls did not settle on the primary ({:?}, probing {})",
            handle.state(),
            handle.probing()
        );
    }
    let final_generation = handle.generation();
    let final_state = handle.state();
    let counters = handle.counters();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    // Once every service and handle is gone, both channels close: nothing kept the state.
    me.lock().unwrap().take();
    drop((service, layer, handle));
    let closing = Duration::from_secs(5);
    let (streamed, trailing_skip) = tokio::time::timeout(closing, streamed)
        .await
        .expect("the event stream did not close once everything was dropped")
        .expect("the stream reader panicked");
    let (watch_problems, updates, last_watched) = tokio::time::timeout(closing, watched)
        .await
        .expect("the state did not close once everything was dropped")
        .expect("the watch reader panicked");

    let outages = seen
        .iter()
        .filter(|s| {
            matches!(s.event, SwitchEvent::SwitchRequired { .. })
                && matches!(s.event.cause(), SwitchCause::EndpointDown(_))
        })
        .count();
    let mut problems = watch_problems;
    check_events(&seen, final_generation, !auto_switch, &mut problems);
    check_stream(&seen, &streamed, trailing_skip, &mut problems);
    if last_watched.generation != final_state.generation
        || last_watched.active != final_state.active
        || final_state.generation != final_generation
        || final_state.active != side_at(final_generation)
    {
        problems.push(format!(
            "final state: watch at {} ({:?}), state() at {} ({:?}), generation() {final_generation}",
            last_watched.generation, last_watched.active, final_state.generation, final_state.active
        ));
    }
    if counters.switches != final_generation {
        problems.push(format!(
            "{} switches counted, generation {final_generation}",
            counters.switches
        ));
    }
    let applied = db.applied.lock().unwrap().clone();
    check_reports(&seen, &applied, &mut problems);
    check_calls(&outcomes, &applied, &mut problems);
    let corrupt = db.corrupt.lock().unwrap().clone();
    if !corrupt.is_empty() {
        problems.push(format!("writes whose body arrived altered: {corrupt:?}"));
    }
    let possibly = outcomes
        .iter()
        .filter(|(_, _, o)| {
            matches!(
                o,
                Outcome::Failed {
                    possibly_applied: true,
                    ..
                }
            )
        })
        .count() as u64;
    if counters.possibly_applied != possibly {
        problems.push(format!(
            "{} counted possibly applied, callers saw {possibly}",
            counters.possibly_applied
        ));
    }
    if counters.calls != total as u64 {
        problems.push(format!("{} calls counted, {total} made", counters.calls));
    }
    let received: usize = db.received.iter().map(|r| r.load(Ordering::SeqCst)).sum();
    let sent = counters.calls + counters.failover_resends + counters.throttle_retries;
    if received as u64 > sent {
        problems.push(format!(
            "the servers received {received} requests, the layer sent at most {sent} ({counters:?})"
        ));
    }
    let bodies_cut = outcomes
        .iter()
        .filter(|(_, _, outcome)| matches!(outcome, Outcome::BodyCut(..)))
        .count();
    eprintln!(
        "switch storm seed {seed}: {} switches ({} for outages, {} asked from callbacks), {updates} \
         watch updates, {} events streamed, {received} requests received, {bodies_cut} answers \
         cut after their head, {counters:?}",
        final_generation,
        outages,
        inner_switches.load(Ordering::SeqCst),
        streamed.len(),
    );
    assert!(
        problems.is_empty(),
        "switch storm seed {seed}: {} problems:\n{}",
        problems.len(),
        problems.iter().take(30).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// The callbacks saw `SwitchRequired` then `Switched` for each switch, in order, each flipping
/// the side, with the handle already showing the switch inside `on_switched`.
/// With `lone_required` (automatic switching off), a failing call's `SwitchRequired` may come
/// alone, once per generation.
fn check_events(seen: &[Observed], final_generation: u64, lone_required: bool, problems: &mut Vec<String>) {
    let mut generation = 0;
    let mut stay_began: Option<std::time::SystemTime> = None;
    let mut required: Option<&Observed> = None;
    let mut lone_in: Option<u64> = None;
    let mut lone = |earlier: &Observed, generation: u64, problems: &mut Vec<String>| {
        let outage = matches!(earlier.event.cause(), SwitchCause::EndpointDown(_));
        if !(lone_required && outage) {
            problems.push(format!("SwitchRequired without Switched: {}", earlier.event));
        } else if lone_in.replace(generation) == Some(generation) {
            problems.push(format!(
                "a second lone SwitchRequired in generation {generation}: {}",
                earlier.event
            ));
        }
    };
    for record in seen {
        match &record.event {
            SwitchEvent::SwitchRequired { previous, new, .. } => {
                if let Some(earlier) = required {
                    lone(earlier, generation, problems);
                }
                if previous == new {
                    problems.push(format!("a switch to where calls are: {}", record.event));
                }
                required = Some(record);
            }
            SwitchEvent::Switched {
                previous,
                new,
                report,
                ..
            } => {
                generation += 1;
                match required.take() {
                    Some(before)
                        if before.event.previous() == previous && before.event.new_endpoint() == new => {}
                    other => problems.push(format!(
                        "Switched {} not after its SwitchRequired ({:?})",
                        record.event,
                        other.map(|s| s.event.to_string())
                    )),
                }
                if record.state_generation != generation || record.generation != generation {
                    problems.push(format!(
                        "switch {generation}: on_switched saw state generation {} and generation() {}",
                        record.state_generation, record.generation
                    ));
                }
                // A failback only returns to the primary, after the stay on the alternate lasted
                // `min_time_on_alternate` (timed from the switch that began it, as `since` says).
                if matches!(record.event.cause(), SwitchCause::Failback) {
                    if record.state_active != Side::Primary {
                        problems.push(format!("switch {generation}: a failback to the alternate"));
                    }
                    let stayed = stay_began.and_then(|began| record.since.duration_since(began).ok());
                    if stayed.is_some_and(|stayed| stayed < MIN_TIME_ON_ALTERNATE) {
                        problems.push(format!(
                            "switch {generation}: a failback after {stayed:?} on the alternate"
                        ));
                    }
                }
                stay_began = Some(record.since);
                if record.state_active != side_at(generation) {
                    problems.push(format!(
                        "switch {generation}: on_switched saw the {:?} active",
                        record.state_active
                    ));
                }
                let same_report = match (report, &record.state_report) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    _ => false,
                };
                if !same_report {
                    problems.push(format!(
                        "switch {generation}: state().last_report is not the event's"
                    ));
                }
                match report {
                    Some(report) if &report.from == previous && &report.to == new => {}
                    _ => problems.push(format!("switch {generation}: report names other endpoints")),
                }
            }
            _ => problems.push(format!("unknown event {}", record.event)),
        }
    }
    if let Some(left) = required {
        lone(left, generation, problems);
    }
    if generation != final_generation {
        problems.push(format!(
            "callbacks saw {generation} switches, generation is {final_generation}"
        ));
    }
}

/// The broadcast stream gave the callbacks' events, in order, skipping only what it said.
fn check_stream(
    seen: &[Observed],
    streamed: &[(SwitchEvent, u64)],
    trailing: u64,
    problems: &mut Vec<String>,
) {
    let mut index = 0usize;
    for (event, skipped) in streamed {
        index += *skipped as usize;
        match seen.get(index) {
            Some(expected) if &expected.event == event => {}
            other => {
                problems.push(format!(
                    "stream event {index} is {event}, callbacks saw {:?}",
                    other.map(|s| s.event.to_string())
                ));
                return;
            }
        }
        index += 1;
    }
    if index + trailing as usize != seen.len() {
        problems.push(format!(
            "the stream accounts for {} events, callbacks saw {}",
            index + trailing as usize,
            seen.len()
        ));
    }
}

/// Every write a server applied before a switch off that server began is in its report.
fn check_reports(
    seen: &[Observed],
    applied: &HashMap<u64, Vec<(&'static str, u64)>>,
    problems: &mut Vec<String>,
) {
    let mut began = None;
    let mut missing = 0;
    for record in seen {
        match &record.event {
            SwitchEvent::SwitchRequired { .. } => began = Some(record.at),
            SwitchEvent::Switched {
                previous,
                report: Some(report),
                ..
            } => {
                let began = began.take().expect("checked in check_events");
                if report.dropped > 0 {
                    problems.push(format!("a report dropped {} writes", report.dropped));
                }
                let listed: std::collections::HashSet<&str> =
                    report.at_risk().filter_map(|w| w.key.as_deref()).collect();
                let server = if previous.host() == PRIMARY_HOST {
                    PRIMARY_HOST
                } else {
                    ALTERNATE_HOST
                };
                for (id, times) in applied {
                    let before = times.iter().any(|&(on, at)| on == server && at < began);
                    if before && !listed.contains(format!("w-{id}").as_str()) {
                        missing += 1;
                        if missing <= 10 {
                            problems.push(format!(
                                "write {id}, applied on {server} ({times:?}), is not in the report of \
                                 the switch off it that began at {began}: {report}"
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if missing > 10 {
        problems.push(format!("{missing} writes missing from reports in all"));
    }
}

fn check_calls(
    outcomes: &[(u64, Kind, Outcome)],
    applied: &HashMap<u64, Vec<(&'static str, u64)>>,
    problems: &mut Vec<String>,
) {
    for (id, kind, outcome) in outcomes {
        let times = applied.get(id).map_or(0, Vec::len);
        let what = format!("call {id} ({kind:?})");
        match outcome {
            Outcome::Hung => problems.push(format!("{what} hung")),
            Outcome::Dropped => {}
            // A throttling or unavailable answer handed back as it is (retries spent, or both
            // sides answering so): the caller has the server's own word.
            Outcome::Ok(status, _) if [429, 503].contains(&status.as_u16()) => {
                if *kind != Kind::Get && times > 0 {
                    eprintln!("note: {what} answered {status} and was applied {times} times");
                }
            }
            Outcome::Ok(status, body) => {
                if *status != StatusCode::OK || !body.contains(&format!(r#""id":{id},"#)) {
                    problems.push(format!("{what} answered {status}: {body}"));
                }
                if *kind != Kind::Get && times != 1 {
                    problems.push(format!("{what} succeeded and was applied {times} times"));
                }
            }
            // The servers apply a write before they answer, so a 200 head means applied once.
            Outcome::BodyCut(status, error) => {
                if *kind != Kind::Get && *status == StatusCode::OK && times != 1 {
                    problems.push(format!(
                        "{what} answered {status}, its body cut ({error}), and was applied {times} times"
                    ));
                }
            }
            Outcome::Failed {
                possibly_applied,
                text,
            } => {
                if *kind != Kind::Get && (times > 1 || (!possibly_applied && times != 0)) {
                    problems.push(format!(
                        "{what} failed (possibly applied: {possibly_applied}) and was applied {times} \
                         times: {text}"
                    ));
                }
            }
        }
        if *kind == Kind::Get && times != 0 {
            problems.push(format!("{what}: a read was applied"));
        }
    }
}

/// Two layers whose callbacks switch each other (and themselves), flipped by hand from four
/// threads at once: no deadlock, each layer's events stay paired and in order with the state
/// already showing each switch, and no switch asked for is left queued once the storm is over.
#[test]
fn two_layers_switching_each_other_from_callbacks_on_many_threads() {
    const THREADS: u64 = 4;
    const ROUNDS: usize = 20_000;
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(std::panic::catch_unwind(two_layer_storm));
    });
    match finished.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("two layers switching each other deadlocked (no end within 20 s)"),
    }

    fn two_layer_storm() {
        let handles: Arc<Mutex<Vec<FailoverHandle>>> = Arc::default();
        let calm = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut logs = Vec::new();
        let mut layers = Vec::new();
        for me in 0..2usize {
            let seen: Arc<Mutex<Vec<Observed>>> = Arc::default();
            logs.push(seen.clone());
            let log = |seen: Arc<Mutex<Vec<Observed>>>, handles: Arc<Mutex<Vec<FailoverHandle>>>| {
                move |event: &SwitchEvent| {
                    let handle = handles.lock().unwrap()[me].clone();
                    seen.lock().unwrap().push(Observed::now(event, &handle));
                }
            };
            let (others, quiet) = (handles.clone(), calm.clone());
            let layer = FailoverLayer::builder(tower_failover::Endpoints::dynamics(PRIMARY_URL).unwrap())
                .auto_switch(false)
                .on_switch_required(log(seen.clone(), handles.clone()))
                .on_switched(log(seen, handles.clone()))
                .on_switched(move |_| {
                    if quiet.load(Ordering::SeqCst) {
                        return;
                    }
                    let handles = others.lock().unwrap().clone();
                    match fastrand::u8(0..6) {
                        0 => {
                            handles[1 - me].switch_endpoint();
                        }
                        1 => {
                            handles[me].switch_endpoint();
                        }
                        2 => {
                            handles[1 - me].fail_back();
                        }
                        _ => {}
                    }
                })
                .build()
                .unwrap();
            layers.push(layer);
        }
        *handles.lock().unwrap() = layers.iter().map(FailoverLayer::handle).collect();
        let threads: Vec<_> = (0..THREADS)
            .map(|n| {
                let handles = handles.lock().unwrap().clone();
                std::thread::spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(n);
                    for _ in 0..ROUNDS {
                        let handle = &handles[rng.usize(0..2)];
                        match rng.u8(0..4) {
                            0 => handle.switch_endpoint(),
                            1 => handle.fail_back(),
                            2 => handle.switch_to(Side::Alternate),
                            _ => handle.switch_to(Side::Primary),
                        };
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("a switching thread panicked");
        }
        calm.store(true, Ordering::SeqCst);
        let handles = handles.lock().unwrap().clone();
        let mut problems = Vec::new();
        for (n, handle) in handles.iter().enumerate() {
            // Nothing queued is left behind: a switch made now is the last word.
            for side in [Side::Alternate, Side::Primary, Side::Alternate, Side::Primary] {
                let now = handle.switch_to(side);
                if now != side || handle.active() != side {
                    problems.push(format!(
                        "layer {n}: switch_to({side:?}) said {now:?}, calls go to the {:?}",
                        handle.active()
                    ));
                }
            }
            let seen = std::mem::take(&mut *logs[n].lock().unwrap());
            let generation = handle.generation();
            let mut layer_problems = Vec::new();
            check_events(&seen, generation, false, &mut layer_problems);
            let state = handle.state();
            if state.generation != generation || handle.counters().switches != generation {
                layer_problems.push(format!(
                    "state at {}, generation {generation}, {} switches counted",
                    state.generation,
                    handle.counters().switches
                ));
            }
            eprintln!("layer {n}: {generation} switches");
            problems.extend(layer_problems.into_iter().map(|p| format!("layer {n}: {p}")));
        }
        assert!(
            problems.is_empty(),
            "{} problems:\n{}",
            problems.len(),
            problems.iter().take(30).cloned().collect::<Vec<_>>().join("\n")
        );
    }
}
