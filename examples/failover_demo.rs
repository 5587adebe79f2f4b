//! A real outage in the middle of a real workload.
//!
//! Two hyper servers run on loopback behind the Dynamics 365 names
//! `contoso.api.crm.dynamics.com` (primary) and `contoso--s.api.crm.dynamics.com` (alternate).
//! Eight workers send 400 reads and writes through one failover-wrapped hyper-util client;
//! once 40% of the calls have completed the primary is killed (listener closed, open
//! connections dropped). Once the workload is done the primary is brought back and a few more
//! calls are made while failback probes find it healthy and calls return to it. The demo
//! prints the `SwitchRequired` / `Switched` events as they are raised and ends with what
//! happened to every call, the writes each switch put at risk, and how long the return took.
//!
//! ```text
//! cargo run --example failover_demo
//! ```

// The demo shares the test servers rather than growing a second copy of them.
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashSet};
use std::error::Error;
use std::fmt;
use std::io;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::sync::Notify;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_failover::{
    policy, Endpoints, Failback, FailoverError, FailoverHandle, FailoverLayer, NotResent, ReplayBody, Side,
    SwitchEvent,
};

use support::{Behavior, Pair, ALTERNATE_HOST, PRIMARY_HOST, PRIMARY_URL};

const CALLS: usize = 400;
const WORKERS: usize = 8;
/// The primary goes down once this many calls have completed.
const KILL_AFTER: usize = CALLS * 2 / 5;
/// Each server holds every request this long after reading it, so that some calls are
/// always in flight (read by the primary, not yet answered) when it is killed.
const SERVER_DELAY: Duration = Duration::from_millis(3);
/// Pause between the chunks of a streamed body, so a kill can also land mid-upload.
const CHUNK_PAUSE: Duration = Duration::from_millis(1);
const DEADLINE: Duration = Duration::from_secs(9);
/// Failback, with intervals short enough for a demo (the defaults are 5 s between probes, 30 s
/// on the alternate at least, and a 60 s hold between two failbacks).
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
const MIN_TIME_ON_ALTERNATE: Duration = Duration::from_millis(300);
const HEALTHY_PROBES: u32 = 3;
const FAILBACK_HOLD: Duration = Duration::from_secs(1);
/// After the primary is back: pause between calls, calls made once back on the primary, and how
/// long to wait for the failback before giving up.
const AFTER_RESTART_PAUSE: Duration = Duration::from_millis(20);
const CALLS_BACK_ON_PRIMARY: usize = 5;
const FAILBACK_LIMIT: Duration = Duration::from_secs(4);

/// One body type for every request: hyper-util's client is typed by its body, and the layer
/// hands it `ReplayBody<ReqBody>`.
type ReqBody = BoxBody<Bytes, io::Error>;

type BoxError = Box<dyn Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    match tokio::time::timeout(DEADLINE, run()).await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => {
            eprintln!("demo failed: {error}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("demo did not finish within {DEADLINE:?}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let clock = Clock(Instant::now());
    let mut pair = Pair::start().await;
    pair.primary.set(Behavior::Delay(SERVER_DELAY));
    pair.alternate.set(Behavior::Delay(SERVER_DELAY));
    println!("primary   {PRIMARY_HOST} -> {}", pair.primary.addr);
    println!("alternate {ALTERNATE_HOST} -> {}", pair.alternate.addr);

    let completed = Arc::new(AtomicUsize::new(0));
    let events: Events = Arc::new(Mutex::new(Vec::new()));
    let layer = FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL)?)
        .on_switch_required(announce(clock, completed.clone(), events.clone()))
        .on_switched(announce(clock, completed.clone(), events.clone()))
        .failback(
            Failback::new()
                .interval(PROBE_INTERVAL)
                .min_time_on_alternate(MIN_TIME_ON_ALTERNATE)
                .healthy_probes(HEALTHY_PROBES)
                .hold(FAILBACK_HOLD, FAILBACK_HOLD * 8),
        )
        .build()?;
    let handle = layer.handle();
    println!("auto_switch_enabled: {}", handle.auto_switch_enabled());
    println!("{clock} {CALLS} calls, {WORKERS} workers, primary killed after {KILL_AFTER} calls complete");

    // The counting layer sits under the failover layer, so it sees each attempt, the re-send
    // included: that is how a call knows it was re-sent, whatever the timing.
    let service = ServiceBuilder::new()
        .layer(layer)
        .map_request(count_attempt)
        .service(pair.client::<ReplayBody<ReqBody>>());

    let next_id = Arc::new(AtomicUsize::new(0));
    let kill_now = Arc::new(Notify::new());
    let mut workers = Vec::with_capacity(WORKERS);
    for _ in 0..WORKERS {
        let mut service = service.clone();
        let (next_id, completed, kill_now) = (next_id.clone(), completed.clone(), kill_now.clone());
        workers.push(tokio::spawn(async move {
            let mut records = Vec::new();
            loop {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                if id >= CALLS {
                    break records;
                }
                records.push(call(&mut service, id).await);
                if completed.fetch_add(1, Ordering::Relaxed) + 1 == KILL_AFTER {
                    // A stored permit: the kill happens even if main is not waiting yet.
                    kill_now.notify_one();
                }
            }
        }));
    }

    kill_now.notified().await;
    println!(
        "{clock} {} calls done: killing the primary",
        completed.load(Ordering::Relaxed)
    );
    pair.primary.kill().await;
    println!("{clock} primary is down (listener closed, open connections dropped)");

    let mut records = Vec::with_capacity(CALLS);
    for worker in workers {
        records.extend(worker.await?);
    }
    records.sort_by_key(|r| r.id);
    println!("{clock} all {} calls done", records.len());
    // What the primary read before it died (restarting it starts a fresh server).
    let read_by_primary: HashSet<Fingerprint> = pair
        .primary
        .seen()
        .into_iter()
        .map(|seen| (seen.path, seen.body_sha256))
        .collect();

    // The primary comes back. Calls carry on (on the alternate) while the probes count healthy
    // answers; once the failback is made they go to the primary again.
    pair.restart_primary().await;
    pair.primary.set(Behavior::Delay(SERVER_DELAY));
    let restarted = Instant::now();
    println!(
        "{clock} primary restarted on {}; failback once {HEALTHY_PROBES} probes in a row (every ~{} ms) find it \
         healthy, after at least {} ms on the alternate",
        pair.primary.addr,
        PROBE_INTERVAL.as_millis(),
        MIN_TIME_ON_ALTERNATE.as_millis()
    );
    let mut service = service.clone();
    let mut after_restart = Vec::new();
    let mut calls_at_failback = None;
    while calls_at_failback.is_none_or(|at| after_restart.len() < at + CALLS_BACK_ON_PRIMARY) {
        if restarted.elapsed() > FAILBACK_LIMIT {
            return Err(format!("no failback within {FAILBACK_LIMIT:?} of the primary's restart").into());
        }
        after_restart.push(call(&mut service, CALLS + after_restart.len()).await);
        completed.fetch_add(1, Ordering::Relaxed);
        if calls_at_failback.is_none() && handle.active() == Side::Primary {
            calls_at_failback = Some(after_restart.len());
        }
        tokio::time::sleep(AFTER_RESTART_PAUSE).await;
    }
    println!("{clock} {} calls made since the restart", after_restart.len());

    let events = events.lock().unwrap().clone();
    report(&records, &read_by_primary, &handle, &events);
    report_failback(&after_restart, &handle, &events, restarted)
}

/// Milliseconds since the demo started, for the log lines.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl fmt::Display for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:>7.1} ms]", self.0.elapsed().as_secs_f64() * 1000.0)
    }
}

/// Every event raised, with when it was raised.
type Events = Arc<Mutex<Vec<(Instant, SwitchEvent)>>>;

/// Prints an event as it is raised (callbacks run synchronously in the call, or the failback
/// probe, that switches) and keeps it for the summary.
fn announce(
    clock: Clock,
    completed: Arc<AtomicUsize>,
    events: Events,
) -> impl Fn(&SwitchEvent) + Send + Sync + 'static {
    move |event| {
        let mut events = events.lock().unwrap();
        let detail = match event {
            SwitchEvent::SwitchRequired { cause, .. } => format!(", cause: {cause}"),
            // `Switched` follows its `SwitchRequired` at once (switches are serialized).
            SwitchEvent::Switched { report, .. } => {
                let cause = match events.last() {
                    Some((_, SwitchEvent::SwitchRequired { cause, .. })) => cause.to_string(),
                    _ => "?".to_string(),
                };
                let at_risk = report.as_ref().map_or(String::new(), |r| {
                    format!(
                        "; at risk: {} acknowledged, {} unknown",
                        r.acknowledged.len(),
                        r.unknown.len()
                    )
                });
                format!(" ({cause}){at_risk}")
            }
            _ => String::new(),
        };
        println!(
            "{clock} event {:<14} {} -> {}{detail} ({} calls done)",
            event.name(),
            event.previous(),
            event.new_endpoint(),
            completed.load(Ordering::Relaxed)
        );
        events.push((Instant::now(), event.clone()));
    }
}

/// Per-call attempt counter, carried in the request extensions (which the layer copies to
/// the re-sent request).
#[derive(Clone, Default)]
struct Attempts(Arc<AtomicU8>);

fn count_attempt(request: Request<ReplayBody<ReqBody>>) -> Request<ReplayBody<ReqBody>> {
    if let Some(attempts) = request.extensions().get::<Attempts>() {
        attempts.0.fetch_add(1, Ordering::Relaxed);
    }
    request
}

/// The kinds of call in the workload, chosen by call id so every run sends the same calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Get,
    Post,
    PostKeyed,
    Patch,
    PutStreamed,
    PostStreamed,
    PatchKeyedStreamed,
}

const MIX: [Op; 8] = [
    Op::Get,
    Op::Post,
    Op::PostKeyed,
    Op::PutStreamed,
    Op::Get,
    Op::PostStreamed,
    Op::Patch,
    Op::PatchKeyedStreamed,
];

impl Op {
    fn of(id: usize) -> Op {
        MIX[id % MIX.len()]
    }

    fn label(self) -> &'static str {
        match self {
            Op::Get => "GET",
            Op::Post => "POST",
            Op::PostKeyed => "POST + Idempotency-Key",
            Op::Patch => "PATCH",
            Op::PutStreamed => "PUT, streamed",
            Op::PostStreamed => "POST, streamed",
            Op::PatchKeyedStreamed => "PATCH + key, streamed",
        }
    }

    fn method(self) -> Method {
        match self {
            Op::Get => Method::GET,
            Op::Post | Op::PostKeyed | Op::PostStreamed => Method::POST,
            Op::Patch | Op::PatchKeyedStreamed => Method::PATCH,
            Op::PutStreamed => Method::PUT,
        }
    }

    fn keyed(self) -> bool {
        matches!(self, Op::PostKeyed | Op::PatchKeyedStreamed)
    }

    fn streamed(self) -> bool {
        matches!(self, Op::PutStreamed | Op::PostStreamed | Op::PatchKeyedStreamed)
    }
}

/// What a server records of a request (path and body digest), to look the call up in
/// `Server::seen()` afterwards.
type Fingerprint = (String, [u8; 32]);

fn build(id: usize, op: Op) -> (Request<ReqBody>, Fingerprint) {
    let record = format!("/api/data/v9.2/accounts(00000000-0000-0000-0000-{id:012})");
    let path = match op.method() {
        Method::POST => "/api/data/v9.2/accounts".to_string(),
        _ => record,
    };
    let payload = match op {
        Op::Get => Bytes::new(),
        _ => Bytes::from(format!(
            r#"{{"name":"Account {id}","call":{id},"revenue":{},"description":"written by the failover demo"}}"#,
            id * 1000
        )),
    };
    let fingerprint = (path.clone(), support::digest(&payload));
    let body = if op.streamed() {
        streamed(payload)
    } else {
        Full::new(payload).map_err(|never| match never {}).boxed()
    };
    let mut request = Request::builder()
        .method(op.method())
        .uri(format!("{PRIMARY_URL}{path}"))
        .header(http::header::CONTENT_TYPE, "application/json");
    if op.keyed() {
        request = request.header("idempotency-key", format!("demo-call-{id}"));
    }
    let request = request.body(body).expect("a valid request");
    (request, fingerprint)
}

/// The payload in four chunks with no declared length (sent chunked), as an upload would be.
fn streamed(payload: Bytes) -> ReqBody {
    let step = payload.len().div_ceil(4).max(1);
    let chunks: Vec<Bytes> = (0..payload.len())
        .step_by(step)
        .map(|at| payload.slice(at..(at + step).min(payload.len())))
        .collect();
    let stream = futures_util::stream::unfold(chunks.into_iter(), |mut rest| async move {
        let chunk = rest.next()?;
        tokio::time::sleep(CHUNK_PAUSE).await;
        Some((Ok::<_, io::Error>(Frame::data(chunk)), rest))
    });
    StreamBody::new(stream).boxed()
}

struct Record {
    id: usize,
    op: Op,
    // By the layer's own rule: an idempotent method or an `Idempotency-Key` header.
    idempotent: bool,
    fingerprint: Fingerprint,
    outcome: Outcome,
}

enum Outcome {
    Ok {
        resent: bool,
        by_alternate: bool,
    },
    Failed {
        kind: String,
        possibly_applied: bool,
        message: String,
    },
}

async fn call<S, B>(service: &mut S, id: usize) -> Record
where
    S: Service<Request<ReqBody>, Response = Response<B>, Error = FailoverError>,
    B: Body,
    B::Error: fmt::Display,
{
    let op = Op::of(id);
    let (mut request, fingerprint) = build(id, op);
    let idempotent = policy::is_idempotent(request.method(), request.headers());
    let attempts = Attempts::default();
    request.extensions_mut().insert(attempts.clone());
    let result = match service.ready().await {
        Ok(ready) => ready.call(request).await,
        Err(error) => Err(error),
    };
    let outcome = match result {
        Err(error) => Outcome::Failed {
            kind: kind_of(&error),
            possibly_applied: error.possibly_applied(),
            message: with_causes(&error),
        },
        Ok(response) => {
            let status = response.status();
            match response.into_body().collect().await {
                Err(error) => Outcome::Failed {
                    kind: "response body cut off".into(),
                    possibly_applied: true,
                    message: error.to_string(),
                },
                Ok(_) if !status.is_success() => Outcome::Failed {
                    kind: format!("answered {status}"),
                    possibly_applied: false,
                    message: format!("answered {status}"),
                },
                Ok(body) => {
                    let json: serde_json::Value =
                        serde_json::from_slice(&body.to_bytes()).unwrap_or_default();
                    Outcome::Ok {
                        resent: attempts.0.load(Ordering::Relaxed) > 1,
                        by_alternate: json["server"] == ALTERNATE_HOST,
                    }
                }
            }
        }
    };
    Record {
        id,
        op,
        idempotent,
        fingerprint,
        outcome,
    }
}

/// The error's message, then the causes under the inner client's error: hyper-util's own
/// message (`client error (SendRequest)`) does not say what happened on the wire.
fn with_causes(error: &FailoverError) -> String {
    let mut message = error.to_string();
    let mut cause = error.last_attempt().error().and_then(|inner| inner.source());
    while let Some(inner) = cause {
        message.push_str(&format!("\n          caused by: {inner}"));
        cause = inner.source();
    }
    message
}

/// The error's kind, with why it was not re-sent (or that it failed twice): the grouping key
/// of the report.
fn kind_of(error: &FailoverError) -> String {
    let kind = error.kind().to_string();
    if error.was_resent() {
        return format!("{kind} (failed on both endpoints)");
    }
    let reason = match error.not_resent_because() {
        None => return kind,
        Some(NotResent::NotIdempotent) => "not idempotent",
        Some(NotResent::AutoSwitchOff) => "auto switch off",
        Some(NotResent::BodyOverCap { .. }) => "body over the replay cap",
        Some(NotResent::BodyInUse) => "body still held by the first attempt",
        Some(NotResent::BodyFailed) => "body failed",
        Some(NotResent::NotRouted) => "not routed",
        Some(_) => "other reason",
    };
    format!("{kind} (not re-sent: {reason})")
}

impl Outcome {
    fn resent(&self) -> bool {
        matches!(self, Outcome::Ok { resent: true, .. })
    }

    fn by_alternate(&self) -> bool {
        matches!(
            self,
            Outcome::Ok {
                by_alternate: true,
                ..
            }
        )
    }

    fn possibly_applied(&self) -> bool {
        matches!(
            self,
            Outcome::Failed {
                possibly_applied: true,
                ..
            }
        )
    }
}

#[derive(Default)]
struct Row {
    calls: usize,
    ok: usize,
    resent: usize,
    failed: usize,
    possibly_applied: usize,
}

impl Row {
    fn add(&mut self, outcome: &Outcome) {
        self.calls += 1;
        match outcome {
            Outcome::Ok { resent, .. } => {
                self.ok += 1;
                self.resent += usize::from(*resent);
            }
            Outcome::Failed { possibly_applied, .. } => {
                self.failed += 1;
                self.possibly_applied += usize::from(*possibly_applied);
            }
        }
    }

    fn print(&self, label: &str) {
        println!(
            "{label:<24}{:>7}{:>11}{:>10}{:>8}{:>18}",
            self.calls, self.ok, self.resent, self.failed, self.possibly_applied
        );
    }
}

fn report(
    records: &[Record],
    read_by_primary: &HashSet<Fingerprint>,
    handle: &FailoverHandle,
    events: &[(Instant, SwitchEvent)],
) {
    let mut rows: BTreeMap<Op, Row> = BTreeMap::new();
    let mut total = Row::default();
    // Kind -> (count, first call that failed so, its message).
    let mut errors: BTreeMap<&str, (usize, usize, &str)> = BTreeMap::new();
    for record in records {
        rows.entry(record.op).or_default().add(&record.outcome);
        total.add(&record.outcome);
        if let Outcome::Failed { kind, message, .. } = &record.outcome {
            errors.entry(kind).or_insert((0, record.id, message)).0 += 1;
        }
    }

    println!();
    println!(
        "{:<24}{:>7}{:>11}{:>10}{:>8}{:>18}",
        "operation", "calls", "succeeded", "re-sent", "failed", "possibly applied"
    );
    println!("{}", "-".repeat(78));
    for (op, row) in &rows {
        row.print(op.label());
    }
    println!("{}", "-".repeat(78));
    total.print("total");

    println!();
    println!("errors by kind:");
    if errors.is_empty() {
        println!("  none");
    }
    for (kind, (count, id, message)) in &errors {
        println!("  {count:>4}  {kind}");
        println!("        e.g. call {id} ({}): {message}", Op::of(*id).label());
    }

    // Check the report against what the primary really read: "possibly applied" is an upper
    // bound, and a re-sent call the primary had read reached the servers twice.
    let count = |pick: fn(&Outcome) -> bool| {
        let picked = records.iter().filter(|r| pick(&r.outcome));
        let read = picked
            .clone()
            .filter(|r| read_by_primary.contains(&r.fingerprint))
            .count();
        (picked.count(), read)
    };
    let (resent, resent_read) = count(Outcome::resent);
    let (possibly, possibly_read) = count(Outcome::possibly_applied);
    let (by_alternate, _) = count(Outcome::by_alternate);
    // The one thing failover must never do: apply a non-idempotent call on both endpoints.
    let applied_twice = records
        .iter()
        .filter(|r| r.outcome.resent() && !r.idempotent && read_by_primary.contains(&r.fingerprint))
        .count();

    println!();
    println!(
        "successes answered by the primary: {}, by the alternate: {by_alternate}",
        total.ok - by_alternate
    );
    println!(
        "re-sent on the alternate: {resent} calls, of which the primary had already read {resent_read} \
         (those reached both servers)"
    );
    if applied_twice > 0 {
        println!("WARNING: {applied_twice} non-idempotent calls reached both endpoints");
    }
    println!(
        "possibly applied on the primary: {possibly} calls (an upper bound: the primary had in fact read \
         {possibly_read} of them)"
    );
    println!(
        "  (\"possibly applied\": the call failed after the request may have reached the primary, so it may \
         have been carried out there; read it back before sending it again.)"
    );
    // The data-loss report of each switch: writes the endpoint left behind acknowledged within
    // the replication window (the other one may not have them yet), and writes whose outcome
    // was unknown when calls moved.
    for (_, event) in events {
        if let SwitchEvent::Switched { previous, report, .. } = event {
            let left = if previous == handle.endpoints().primary() {
                "the primary"
            } else {
                "the alternate"
            };
            match report {
                Some(report) => println!(
                    "at-risk writes when calls left {left}: {} acknowledged within the {} s replication window, \
                     {} with unknown outcome{}",
                    report.acknowledged.len(),
                    report.window.as_secs(),
                    report.unknown.len(),
                    if report.dropped > 0 {
                        format!(" ({} dropped from the ledger)", report.dropped)
                    } else {
                        String::new()
                    }
                ),
                None => println!("at-risk writes when calls left {left}: no report"),
            }
        }
    }
    let names: Vec<&str> = events.iter().map(|(_, event)| event.name()).collect();
    println!("events raised: {}", names.join(", "));
    let counters = handle.counters();
    println!(
        "layer counters: {} calls, {} re-sent, {} switches, {} possibly applied",
        counters.calls, counters.failover_resends, counters.switches, counters.possibly_applied
    );
}

/// The calls made after the primary came back, and the failback.
fn report_failback(
    after_restart: &[Record],
    handle: &FailoverHandle,
    events: &[(Instant, SwitchEvent)],
    restarted: Instant,
) -> Result<(), BoxError> {
    let failed = after_restart
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed { .. }))
        .count();
    let by_alternate = after_restart.iter().filter(|r| r.outcome.by_alternate()).count();
    println!(
        "after the restart: {} calls, {} succeeded ({by_alternate} answered by the alternate, {} by the primary), \
         {failed} failed",
        after_restart.len(),
        after_restart.len() - failed,
        after_restart.len() - failed - by_alternate
    );
    let state = handle.state();
    println!(
        "final active endpoint: {} ({}), generation {}, cause of the last switch: {}",
        state.endpoint,
        state.active,
        state.generation,
        state
            .cause
            .as_ref()
            .map_or("none".to_string(), ToString::to_string)
    );
    // The switch to the alternate, and the one back.
    let switched_at = |to: Side| {
        events.iter().rev().find_map(|(at, event)| match event {
            SwitchEvent::Switched { new, .. } if Some(new) == handle.endpoints().get(to) => Some(*at),
            _ => None,
        })
    };
    let (Some(left), Some(back)) = (switched_at(Side::Alternate), switched_at(Side::Primary)) else {
        return Err("no failback was made".into());
    };
    if state.active != Side::Primary || failed > 0 {
        return Err(format!(
            "after the restart: active {}, {failed} calls failed",
            state.active
        )
        .into());
    }
    println!(
        "back on the primary after {} ms (from its restart; {} ms on the alternate in all)",
        back.saturating_duration_since(restarted).as_millis(),
        back.saturating_duration_since(left).as_millis()
    );
    Ok(())
}
