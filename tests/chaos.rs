//! Chaos under load: 64 calls in flight (GETs, POSTs with an `Idempotency-Key`, POSTs without
//! one) through the real hyper-util client to a primary and an alternate on loopback, while the
//! primary is killed and brought back at moments drawn from a seeded RNG, with failback on.
//!
//! The two servers share one "database": each applied write is recorded under the request's
//! `x-request-id`, only after the whole body was read, and a POST whose `Idempotency-Key` was
//! already applied (on either side: the alternate is a replica of the same organization) is
//! answered without being applied again. Whether a write was applied is decided from that
//! ledger, never from what the client saw, and reconciled exactly against every call's result.
//!
//! Seeds: `CHAOS_SEEDS` is a comma-separated list of numbers or `random`; the default is one
//! fixed seed and two random ones. Each seed is printed with the command that replays it.
//! `CHAOS_CALLS` sets the calls per seed (default 3,000, at most 20,000).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use support::*;
use tokio::sync::Semaphore;
use tower::{ServiceBuilder, ServiceExt};
use tower_failover::{Endpoints, Failback, FailoverErrorKind, FailoverLayer, ReplayBody, Side};

/// The seed every run includes, so a regression shows up the same way every time.
const FIXED_SEED: u64 = 0x00C4_A05D_5EED;
const DEFAULT_CALLS: usize = 3_000;
const MAX_CALLS: usize = 20_000;
const IN_FLIGHT: usize = 64;
/// One call taking longer than this counts as hung.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Get,
    KeyedPost,
    Post,
}

/// What the client saw of one call.
#[derive(Debug)]
enum Seen {
    Ok {
        status: StatusCode,
        body: String,
    },
    Failed {
        kind: FailoverErrorKind,
        possibly_applied: bool,
        text: String,
    },
    /// The answer's head arrived and the kill cut its body: the layer had handed the response
    /// over, so the caller sees the body's error (README, "Limits").
    BodyCut {
        status: StatusCode,
        error: String,
    },
    Hung,
}

/// The shared "database" behind both servers.
#[derive(Default)]
struct Db {
    /// Request id -> the servers that applied it.
    applied: Mutex<HashMap<u64, Vec<&'static str>>>,
    /// Idempotency keys already applied.
    keys: Mutex<HashSet<String>>,
    /// Keyed POSTs answered as duplicates (received again after being applied).
    duplicates: AtomicUsize,
    /// Bodies that arrived incomplete and were refused.
    incomplete: AtomicUsize,
}

/// The handler both servers run (the support server has already read the whole body): a pause
/// (server work), then, for a POST, apply it once per request id (once per key for keyed ones),
/// then another pause before the answer. A kill can land in either pause: before the write was
/// applied, or after it was applied and before the answer left.
fn data_behavior(name: &'static str, db: Arc<Db>, seed: u64) -> Behavior {
    let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
    custom(move |received: Received| {
        let (before, after) = {
            let mut rng = rng.lock().unwrap();
            (
                Duration::from_millis(rng.u64(0..25)),
                Duration::from_millis(rng.u64(0..25)),
            )
        };
        let db = db.clone();
        async move {
            tokio::time::sleep(before).await;
            let (status, note, id) = apply(name, &db, &received);
            tokio::time::sleep(after).await;
            let body = format!(
                r#"{{"server":"{name}","id":{},"note":"{note}"}}"#,
                id.map_or(-1, |id| id as i64)
            );
            json(status, body)
        }
    })
}

/// Applies one request to the database, synchronously (no await: a kill cannot cut it in two).
fn apply(name: &'static str, db: &Db, received: &Received) -> (StatusCode, &'static str, Option<u64>) {
    let headers = &received.head.headers;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let id = header("x-request-id").and_then(|v| v.parse::<u64>().ok());
    if received.head.method != Method::POST {
        return (StatusCode::OK, "read", id);
    }
    let declared = header("content-length").and_then(|v| v.parse::<usize>().ok());
    let Some(id) = id else {
        return (StatusCode::BAD_REQUEST, "no id", None);
    };
    let complete = declared == Some(received.body.len())
        && received.body.ends_with(b"}")
        && received.body.starts_with(format!(r#"{{"id":{id},"#).as_bytes());
    if !complete {
        // Cut off mid-body: nothing is applied.
        db.incomplete.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::BAD_REQUEST, "incomplete", Some(id));
    }
    // One lock order (keys, then applied), so the check and the write are one step.
    let mut keys = db.keys.lock().unwrap();
    let fresh = match header("idempotency-key") {
        Some(key) => keys.insert(key.to_string()),
        None => true,
    };
    if fresh {
        db.applied.lock().unwrap().entry(id).or_default().push(name);
        (StatusCode::OK, "applied", Some(id))
    } else {
        db.duplicates.fetch_add(1, Ordering::SeqCst);
        (StatusCode::OK, "duplicate", Some(id))
    }
}

fn seeds() -> Vec<u64> {
    let spec = std::env::var("CHAOS_SEEDS").unwrap_or_else(|_| format!("{FIXED_SEED},random,random"));
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s {
            "random" => fastrand::u64(..),
            number => number
                .parse()
                .unwrap_or_else(|_| panic!("CHAOS_SEEDS: `{number}` is neither a number nor `random`")),
        })
        .collect()
}

fn calls_per_seed() -> usize {
    std::env::var("CHAOS_CALLS")
        .ok()
        .map(|s| s.parse::<usize>().expect("CHAOS_CALLS must be a number"))
        .unwrap_or(DEFAULT_CALLS)
        .clamp(100, MAX_CALLS)
}

/// The request for call `id`.
fn build_request(id: u64, kind: Kind, body_len: usize) -> Request<Full<Bytes>> {
    let (method, path) = match kind {
        Kind::Get => (Method::GET, format!("/api/data/v9.2/accounts({id})")),
        Kind::KeyedPost | Kind::Post => (Method::POST, "/api/data/v9.2/tasks".to_string()),
    };
    let body = if kind == Kind::Get {
        Bytes::new()
    } else {
        let head = format!(r#"{{"id":{id},"pad":""#);
        let mut text = head;
        while text.len() < body_len {
            text.push('x');
        }
        text.push_str(r#""}"#);
        Bytes::from(text)
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("{PRIMARY_URL}{path}"))
        .header("x-request-id", id.to_string());
    if kind == Kind::KeyedPost {
        builder = builder.header("idempotency-key", format!("key-{id}"));
    }
    builder.body(Full::new(body)).unwrap()
}

/// The outage plan of one seed, in completed calls: kill, restart, and maybe a second round.
#[derive(Debug)]
struct Plan {
    kill_at: usize,
    restart_at: usize,
    second: Option<(usize, usize)>,
}

fn plan(rng: &mut fastrand::Rng, calls: usize) -> Plan {
    let kill_at = rng.usize(calls / 10..calls / 3);
    let restart_at = kill_at + rng.usize(calls / 20..calls / 6);
    let second = rng.bool().then(|| {
        let kill = restart_at + rng.usize(calls / 10..calls / 4);
        (kill, kill + rng.usize(calls / 20..calls / 8))
    });
    Plan {
        kill_at,
        restart_at,
        second,
    }
}

struct Outcome {
    kind: Kind,
    seen: Seen,
}

async fn run_seed(seed: u64, calls: usize) {
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(seed);
    let plan = plan(&mut rng, calls);
    eprintln!(
        "chaos seed {seed} ({calls} calls, {IN_FLIGHT} in flight, plan {plan:?}); replay with \
         CHAOS_SEEDS={seed} cargo test --test chaos -- --nocapture"
    );

    let db = Arc::new(Db::default());
    let mut pair = Pair::start().await;
    pair.primary
        .set(data_behavior(PRIMARY_HOST, db.clone(), rng.u64(..)));
    pair.alternate
        .set(data_behavior(ALTERNATE_HOST, db.clone(), rng.u64(..)));

    let layer = FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL).unwrap())
        .failback(
            Failback::new()
                .interval(Duration::from_millis(20))
                .min_time_on_alternate(Duration::from_millis(100))
                .healthy_probes(2)
                .probe_timeout(Duration::from_millis(500))
                .hold(Duration::from_millis(100), Duration::from_secs(1)),
        )
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(pair.client::<ReplayBody<Full<Bytes>>>());

    let done = Arc::new(AtomicUsize::new(0));
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    let mut outages = Outages::new(&plan, rng.u64(..));
    let mut kinds = Vec::with_capacity(calls);
    let mut outcomes = BTreeMap::new();
    for id in 0..calls as u64 {
        let kind = match rng.u8(0..10) {
            0..=3 => Kind::Get,
            4..=6 => Kind::KeyedPost,
            _ => Kind::Post,
        };
        kinds.push(kind);
        let body_len = if rng.u8(0..10) == 0 {
            rng.usize(4_000..20_000)
        } else {
            rng.usize(20..400)
        };
        let request = build_request(id, kind, body_len);
        let service = service.clone();
        let finished = done.clone();
        let permit = slots.clone().acquire_owned().await.unwrap();
        tasks.spawn(async move {
            let seen = tokio::time::timeout(CALL_TIMEOUT, call(service, request))
                .await
                .unwrap_or(Seen::Hung);
            drop(permit);
            finished.fetch_add(1, Ordering::SeqCst);
            (id, Outcome { kind, seen })
        });
        // Collect what has ended, so the set stays small.
        while let Some(result) = tasks.try_join_next() {
            let (id, outcome) = result.expect("a call panicked");
            outcomes.insert(id, outcome);
        }
        outages.drive(done.load(Ordering::SeqCst), &mut pair, &db).await;
    }
    while let Some(result) = tasks.join_next().await {
        let (id, outcome) = result.expect("a call panicked");
        outcomes.insert(id, outcome);
        outages.drive(done.load(Ordering::SeqCst), &mut pair, &db).await;
    }
    // Whatever is left of the plan (the calls may have run out first): the primary ends up back.
    outages.drive(usize::MAX, &mut pair, &db).await;
    assert_eq!(outcomes.len(), calls, "every call reported");

    // Failback: the primary is back, probes must bring calls home.
    wait_until(10, "failback to the restarted primary", || {
        handle.active() == Side::Primary
    })
    .await;

    reconcile(seed, &outcomes, &kinds, &db, &handle);
    eprintln!(
        "chaos seed {seed}: done in {:?}, generation {}, {:?}",
        started.elapsed(),
        handle.generation(),
        handle.counters()
    );
}

/// One call: the response (body read to the end) or the typed error.
async fn call<S>(service: S, request: Request<Full<Bytes>>) -> Seen
where
    S: tower::Service<
        Request<Full<Bytes>>,
        Response = http::Response<tower_failover::ResponseBody<hyper::body::Incoming>>,
        Error = tower_failover::FailoverError,
    >,
{
    match service.oneshot(request).await {
        Ok(response) => {
            let status = response.status();
            match response.into_body().collect().await {
                Ok(body) => Seen::Ok {
                    status,
                    body: String::from_utf8_lossy(&body.to_bytes()).into_owned(),
                },
                Err(error) => Seen::BodyCut {
                    status,
                    error: error.to_string(),
                },
            }
        }
        Err(error) => Seen::Failed {
            kind: error.kind().clone(),
            possibly_applied: error.possibly_applied(),
            text: error.to_string(),
        },
    }
}

/// Kills and restarts the primary when the completed calls reach the plan's marks.
struct Outages {
    /// (completed calls, kill?) in order.
    marks: Vec<(usize, bool)>,
    next: usize,
    /// Its own generator (seeds for the restarted servers), so the request mix does not depend
    /// on when the restarts happen.
    rng: fastrand::Rng,
}

impl Outages {
    fn new(plan: &Plan, seed: u64) -> Self {
        let mut marks = vec![(plan.kill_at, true), (plan.restart_at, false)];
        if let Some((kill, restart)) = plan.second {
            marks.push((kill, true));
            marks.push((restart, false));
        }
        Outages {
            marks,
            next: 0,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    async fn drive(&mut self, finished: usize, pair: &mut Pair, db: &Arc<Db>) {
        while let Some(&(at, kill)) = self.marks.get(self.next) {
            if finished < at {
                return;
            }
            self.next += 1;
            if kill {
                eprintln!("  {finished} calls done: killing the primary");
                pair.primary.kill().await;
            } else {
                eprintln!("  {finished} calls done: restarting the primary");
                // Started with its behaviour, so not even a probe meets the default one.
                let behavior = data_behavior(PRIMARY_HOST, db.clone(), self.rng.u64(..));
                pair.primary = Server::start_with(PRIMARY_HOST, pair.primary.addr, behavior).await;
            }
        }
    }
}

/// Checks every call against the servers' ledger.
fn reconcile(
    seed: u64,
    outcomes: &BTreeMap<u64, Outcome>,
    kinds: &[Kind],
    db: &Db,
    handle: &tower_failover::FailoverHandle,
) {
    let applied = db.applied.lock().unwrap().clone();
    let mut problems = Vec::new();
    let mut tally: BTreeMap<(Kind, String), usize> = BTreeMap::new();
    let mut possibly_applied_errors = 0u64;
    for (&id, outcome) in outcomes {
        assert_eq!(outcome.kind, kinds[id as usize]);
        let times = applied.get(&id).map_or(0, Vec::len);
        let label = match &outcome.seen {
            Seen::Ok { status, .. } => format!("ok {}", status.as_u16()),
            Seen::Failed {
                kind,
                possibly_applied,
                ..
            } => format!("{kind} (possibly applied: {possibly_applied}; applied {times})"),
            Seen::BodyCut { status, .. } => format!("{} with its body cut", status.as_u16()),
            Seen::Hung => "hung".to_string(),
        };
        *tally.entry((outcome.kind, label)).or_default() += 1;
        let what = format!("call {id} ({:?})", outcome.kind);
        match (&outcome.seen, outcome.kind) {
            (Seen::Hung, _) => problems.push(format!("{what} hung for {CALL_TIMEOUT:?}")),
            (Seen::Ok { status, body }, kind) => {
                if *status != StatusCode::OK {
                    problems.push(format!("{what} answered {status}: {body}"));
                }
                if !body.contains(&format!(r#""id":{id},"#)) {
                    problems.push(format!("{what} got someone else's answer: {body}"));
                }
                if kind != Kind::Get && times != 1 {
                    problems.push(format!(
                        "{what} succeeded but was applied {times} times ({:?})",
                        applied.get(&id)
                    ));
                }
            }
            // The servers apply a write before they answer, so a 200 head means applied once.
            (Seen::BodyCut { status, error }, kind) => {
                if kind != Kind::Get && *status == StatusCode::OK && times != 1 {
                    problems.push(format!(
                        "{what} answered {status}, its body cut ({error}), and was applied {times} times"
                    ));
                }
            }
            (
                Seen::Failed {
                    possibly_applied,
                    text,
                    ..
                },
                kind,
            ) => {
                if *possibly_applied {
                    possibly_applied_errors += 1;
                }
                if kind != Kind::Get {
                    if !possibly_applied && times != 0 {
                        problems.push(format!(
                            "{what} failed as NOT possibly applied, but was applied {times} times: {text}"
                        ));
                    }
                    if times > 1 {
                        problems.push(format!("{what} failed and was applied {times} times: {text}"));
                    }
                }
            }
        }
        if outcome.kind == Kind::Get && times != 0 {
            problems.push(format!("{what}: a read was applied as a write"));
        }
    }
    for id in applied.keys() {
        if !outcomes.contains_key(id) {
            problems.push(format!("the servers applied a write nobody sent: {id}"));
        }
    }
    eprintln!("chaos seed {seed}: outcomes");
    for ((kind, label), count) in &tally {
        eprintln!("  {kind:?}: {label}: {count}");
    }
    eprintln!(
        "  keyed duplicates refused by the server: {}, incomplete bodies refused: {}",
        db.duplicates.load(Ordering::SeqCst),
        db.incomplete.load(Ordering::SeqCst)
    );
    let counters = handle.counters();
    if counters.possibly_applied != possibly_applied_errors {
        problems.push(format!(
            "the layer counted {} calls possibly applied, the callers saw {possibly_applied_errors}",
            counters.possibly_applied
        ));
    }
    if counters.switches < 2 {
        problems.push(format!(
            "expected a failover and a failback, saw {} switches",
            counters.switches
        ));
    }
    assert!(
        problems.is_empty(),
        "chaos seed {seed}: {} problems (replay with CHAOS_SEEDS={seed}):\n{}",
        problems.len(),
        problems.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_under_load_reconciles_exactly() {
    let seeds = seeds();
    let calls = calls_per_seed();
    eprintln!("chaos seeds: {seeds:?}");
    for seed in seeds {
        // Each seed is bounded on its own: 20 s at most, so the default three stay within a minute.
        within(20, run_seed(seed, calls)).await;
    }
}
