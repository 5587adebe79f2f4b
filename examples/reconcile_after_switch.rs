//! After a failover: find the writes the alternate may not have, check them, re-apply the
//! missing ones.
//!
//! Two hyper servers on loopback keep a store of `accounts` records behind the Dynamics 365
//! names. The primary replicates every change to the alternate 300 ms late, as a real
//! disaster-recovery pair does (asynchronously). The application upserts accounts through one
//! failover-wrapped hyper-util client, every write carrying an `Idempotency-Key`, and keeps its
//! own copy of what it wrote. Mid-run the primary dies with the changes it had not shipped yet.
//!
//! When the `Switched` event arrives (read from `handle.events()`), the application walks the
//! event's `DataLossReport`: for every write at risk it finds its own copy by the write's key,
//! reads the record back on the alternate (through the same failover service, which now points
//! there), and re-applies it (PATCH, same key) if it is missing. At the end it checks that every
//! write it made is on the alternate.
//!
//! ```text
//! cargo run --example reconcile_after_switch
//! ```

// The example shares the test servers rather than growing a second copy of them.
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::fmt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, Notify};
use tower::{ServiceBuilder, ServiceExt};
use tower_failover::{
    DataLossReport, DefaultClassifier, Endpoints, Failover, FailoverHandle, FailoverLayer, ReplayBody,
    SwitchEvent, WriteRecord,
};

use support::{custom, json, Behavior, Pair, Received, Resolver, ALTERNATE_HOST, PRIMARY_HOST, PRIMARY_URL};

/// Account upserts the application makes, one account each.
const WRITES: usize = 120;
const WORKERS: usize = 4;
/// The primary dies once this many writes have been acknowledged.
const KILL_AFTER: usize = 80;
/// How far the alternate's copy lags behind the primary.
const REPLICATION_LAG: Duration = Duration::from_millis(300);
/// The layer's replication window: how far back an acknowledged write counts as at risk. The
/// default is 5 minutes; here the lag is known, so a smaller window with room to spare.
const REPLICATION_WINDOW: Duration = Duration::from_secs(2);
/// Each server works on a write this long before applying it, so some writes are in flight
/// (sent, not answered) when the primary dies.
const WRITE_WORK: Duration = Duration::from_millis(20);
/// Pause between two writes of one worker.
const PACE: Duration = Duration::from_millis(15);
const DEADLINE: Duration = Duration::from_secs(9);

/// The failover service: the layer over hyper-util's client, which reaches both servers by name.
type Api = Failover<Client<HttpConnector<Resolver>, ReplayBody<Full<Bytes>>>, DefaultClassifier>;

type BoxError = Box<dyn Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    match tokio::time::timeout(DEADLINE, run()).await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => {
            eprintln!("reconcile_after_switch failed: {error}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("reconcile_after_switch did not finish within {DEADLINE:?}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let clock = Clock(Instant::now());

    // The two servers, each with its own store, and the primary's replication to the alternate.
    let pair = Pair::start().await;
    let primary_store = Store::default();
    let alternate_store = Store::default();
    let (replicate, mut changes) = mpsc::unbounded_channel::<Change>();
    pair.primary.set(records_server(
        PRIMARY_HOST,
        primary_store.clone(),
        Some(replicate),
    ));
    pair.alternate
        .set(records_server(ALTERNATE_HOST, alternate_store.clone(), None));
    let replicator = {
        let alternate_store = alternate_store.clone();
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                tokio::time::sleep_until(change.due).await;
                alternate_store.put(change.id, change.record);
            }
        })
    };
    println!(
        "primary   {PRIMARY_HOST} -> {} (replicates to the alternate {} ms behind)",
        pair.primary.addr,
        REPLICATION_LAG.as_millis()
    );
    println!("alternate {ALTERNATE_HOST} -> {}", pair.alternate.addr);

    // `Idempotency-Key` names each write in the report (the default key header).
    let layer = FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL)?)
        .replication_window(REPLICATION_WINDOW)
        .build()?;
    let handle = layer.handle();
    let api: Api = ServiceBuilder::new()
        .layer(layer)
        .service(pair.client::<ReplayBody<Full<Bytes>>>());
    let journal = Arc::new(Journal::default());

    // The reconciler: waits for `Switched`, then works through its report.
    let mut events = handle.events();
    let reconciler = {
        let (api, journal) = (api.clone(), journal.clone());
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(SwitchEvent::Switched { report, .. }) => {
                        println!("{clock} event Switched; at risk: {}", describe(report.as_deref()));
                        let Some(report) = report else {
                            return Err::<_, BoxError>("the Switched event carries no report".into());
                        };
                        return reconcile(&api, &journal, &report, clock).await;
                    }
                    Ok(other) => println!("{clock} event {other}"),
                    Err(RecvError::Lagged(missed)) => println!("{clock} missed {missed} events"),
                    Err(RecvError::Closed) => return Err("the event stream closed".into()),
                }
            }
        })
    };

    println!(
        "{clock} {WRITES} account upserts (POST/PATCH with Idempotency-Key), {WORKERS} workers; \
         the primary dies after {KILL_AFTER}"
    );
    let next = Arc::new(AtomicUsize::new(0));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let kill_now = Arc::new(Notify::new());
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let (api, journal) = (api.clone(), journal.clone());
        let (next, acknowledged, kill_now) = (next.clone(), acknowledged.clone(), kill_now.clone());
        workers.push(tokio::spawn(async move {
            // Staggered starts, so that at any moment some writes are in flight.
            tokio::time::sleep((WRITE_WORK + PACE) * worker as u32 / WORKERS as u32).await;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= WRITES {
                    break;
                }
                let write = Write::new(n);
                journal.begin(&write);
                let state = write_with_retries(&api, &write).await;
                let ok = matches!(state, State::Acknowledged { .. });
                journal.settle(&write.key, state);
                if ok && acknowledged.fetch_add(1, Ordering::Relaxed) + 1 == KILL_AFTER {
                    // A stored permit: the kill happens even if main is not waiting yet.
                    kill_now.notify_one();
                }
                tokio::time::sleep(PACE).await;
            }
        }));
    }

    kill_now.notified().await;
    println!(
        "{clock} {} writes acknowledged: killing the primary, and the changes it has not shipped yet",
        acknowledged.load(Ordering::Relaxed)
    );
    replicator.abort();
    pair.primary.kill().await;
    let on_primary = primary_store.ids();
    let on_alternate = alternate_store.ids();
    let lacking: BTreeSet<String> = on_primary.difference(&on_alternate).cloned().collect();
    println!(
        "{clock} primary is down; its store holds {} records, the alternate lacks {} of them",
        on_primary.len(),
        lacking.len()
    );

    for worker in workers {
        worker.await?;
    }
    println!("{clock} all {WRITES} writes done");
    let tally = match tokio::time::timeout(Duration::from_secs(3), reconciler).await {
        Ok(joined) => joined??,
        Err(_) => return Err("no Switched event: the primary's death went unnoticed".into()),
    };
    println!("{clock} reconciliation done");

    // Every write the application made must now be on the alternate, as the application wrote it.
    let (present, problems) = verify(&api, &journal).await;
    println!("{clock} final check done");

    tally.print(&handle);
    println!();
    println!(
        "final check: {present} of {WRITES} writes present on the alternate as the application wrote them \
         (GET through the failover service)"
    );
    let still_lacking = lacking.difference(&alternate_store.ids()).count();
    println!(
        "server side: when the primary died the alternate lacked {} of its {} records; it lacks {still_lacking} now",
        lacking.len(),
        on_primary.len()
    );
    let counters = handle.counters();
    println!(
        "layer: {} calls, {} re-sent on the alternate, {} switch(es); active endpoint {} ({})",
        counters.calls,
        counters.failover_resends,
        counters.switches,
        handle.active_endpoint(),
        handle.active()
    );
    if !problems.is_empty() || still_lacking > 0 {
        for problem in &problems {
            eprintln!("  {problem}");
        }
        return Err(format!(
            "{} writes missing or different on the alternate after reconciliation",
            problems.len().max(still_lacking)
        )
        .into());
    }
    Ok(())
}

/// Milliseconds since the start, for the log lines.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl fmt::Display for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:>7.1} ms]", self.0.elapsed().as_secs_f64() * 1000.0)
    }
}

fn describe(report: Option<&DataLossReport>) -> String {
    report.map_or_else(|| "no report".to_string(), |r| r.to_string())
}

// ---- The servers: a store of account records, and the primary's lagging replication ----

/// A server's records: account id -> the JSON body last written.
#[derive(Clone, Default)]
struct Store(Arc<Mutex<BTreeMap<String, Bytes>>>);

impl Store {
    fn put(&self, id: String, record: Bytes) {
        self.0.lock().unwrap().insert(id, record);
    }

    fn get(&self, id: &str) -> Option<Bytes> {
        self.0.lock().unwrap().get(id).cloned()
    }

    fn ids(&self) -> BTreeSet<String> {
        self.0.lock().unwrap().keys().cloned().collect()
    }
}

/// A change on its way from the primary to the alternate.
struct Change {
    due: tokio::time::Instant,
    id: String,
    record: Bytes,
}

/// `POST`/`PATCH /api/data/v9.2/accounts(<id>)` upserts the record, `GET` returns it (or 404).
/// The primary also queues each change for the alternate, due `REPLICATION_LAG` later.
fn records_server(
    name: &'static str,
    store: Store,
    replicate: Option<mpsc::UnboundedSender<Change>>,
) -> Behavior {
    custom(move |received: Received| {
        let store = store.clone();
        let replicate = replicate.clone();
        async move {
            let path = received.head.uri.path();
            let Some(id) = account_id(path) else {
                return json(
                    StatusCode::NOT_FOUND,
                    format!(r#"{{"error":{{"message":"no route {path}"}}}}"#),
                );
            };
            match received.head.method {
                Method::GET => match store.get(&id) {
                    Some(record) => Response::builder()
                        .header(CONTENT_TYPE, "application/json")
                        .body(Full::new(record))
                        .unwrap(),
                    None => json(
                        StatusCode::NOT_FOUND,
                        format!(r#"{{"error":{{"message":"account {id} not found on {name}"}}}}"#),
                    ),
                },
                Method::POST | Method::PATCH => {
                    // A kill during this work loses the write: it is never applied.
                    tokio::time::sleep(WRITE_WORK).await;
                    store.put(id.clone(), received.body.clone());
                    if let Some(replicate) = &replicate {
                        let due = tokio::time::Instant::now() + REPLICATION_LAG;
                        let _ = replicate.send(Change {
                            due,
                            id: id.clone(),
                            record: received.body,
                        });
                    }
                    json(
                        StatusCode::OK,
                        format!(r#"{{"server":"{name}","accountid":"{id}"}}"#),
                    )
                }
                _ => json(StatusCode::METHOD_NOT_ALLOWED, r#"{"error":{}}"#.to_string()),
            }
        }
    })
}

/// The id in `/api/data/v9.2/accounts(<id>)`.
fn account_id(path: &str) -> Option<String> {
    let id = path.strip_prefix("/api/data/v9.2/accounts(")?.strip_suffix(')')?;
    (!id.is_empty()).then(|| id.to_string())
}

// ---- The application: its writes, and its own copy of them ----

/// One upsert, as the application keeps it.
#[derive(Clone)]
struct Write {
    n: usize,
    key: String,
    id: String,
    method: Method,
    body: Bytes,
}

impl Write {
    fn new(n: usize) -> Write {
        let id = format!("00000000-0000-0000-0000-{n:012}");
        Write {
            n,
            key: format!("upsert-account-{n:03}"),
            method: if n % 2 == 0 { Method::PATCH } else { Method::POST },
            body: Bytes::from(format!(
                r#"{{"accountid":"{id}","name":"Account {n}","revenue":{}}}"#,
                n * 1000
            )),
            id,
        }
    }

    /// The application always names the primary; the layer sends it to the active endpoint.
    fn uri(&self) -> String {
        format!("{PRIMARY_URL}/api/data/v9.2/accounts({})", self.id)
    }

    fn upsert(&self, method: Method) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .uri(self.uri())
            .header(CONTENT_TYPE, "application/json")
            .header("idempotency-key", &self.key)
            .body(Full::new(self.body.clone()))
            .expect("a valid request")
    }

    fn read(&self) -> Request<Full<Bytes>> {
        Request::get(self.uri())
            .body(Full::new(Bytes::new()))
            .expect("a valid request")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    InFlight,
    Acknowledged { by_alternate: bool },
    Failed(String),
}

/// The application's own copy of every write, by key.
#[derive(Default)]
struct Journal(Mutex<BTreeMap<String, (Write, State)>>);

impl Journal {
    fn begin(&self, write: &Write) {
        self.0
            .lock()
            .unwrap()
            .insert(write.key.clone(), (write.clone(), State::InFlight));
    }

    fn settle(&self, key: &str, state: State) {
        if let Some(entry) = self.0.lock().unwrap().get_mut(key) {
            entry.1 = state;
        }
    }

    fn get(&self, key: &str) -> Option<(Write, State)> {
        self.0.lock().unwrap().get(key).cloned()
    }

    fn all(&self) -> Vec<(Write, State)> {
        self.0.lock().unwrap().values().cloned().collect()
    }

    /// Waits until the application's own call for `key` has ended (the layer may be re-sending
    /// it on the alternate right now).
    async fn settled(&self, key: &str) -> Option<(Write, State)> {
        let give_up = Instant::now() + Duration::from_secs(3);
        loop {
            let entry = self.get(key)?;
            if entry.1 != State::InFlight || Instant::now() > give_up {
                return Some(entry);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Sends one request through the failover service: the status and the whole body.
async fn send(api: &Api, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String> {
    let response = api.clone().oneshot(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("response cut off: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// One upsert, tried up to three times (it carries its key, so a repeat is harmless).
async fn write_with_retries(api: &Api, write: &Write) -> State {
    let mut last = String::new();
    for _ in 0..3 {
        match send(api, write.upsert(write.method.clone())).await {
            Ok((status, body)) if status.is_success() => {
                let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                return State::Acknowledged {
                    by_alternate: answer["server"] == ALTERNATE_HOST,
                };
            }
            Ok((status, _)) => last = format!("answered {status}"),
            Err(error) => last = error,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    State::Failed(last)
}

// ---- The reconciliation ----

/// What the reconciliation found, per list of the report.
#[derive(Default)]
struct Tally {
    // [acknowledged, unknown]
    at_risk: [usize; 2],
    checked: [usize; 2],
    present: [usize; 2],
    reapplied: [usize; 2],
    // At risk but not this application's (no key, or a key it does not know).
    unmatched: [usize; 2],
    // Unknown outcome, and the application's call was still in flight when the report came.
    in_flight: usize,
    reapplied_accounts: Vec<usize>,
    window: Duration,
    from: String,
    to: String,
}

/// Walks the report: for every write at risk, the application's own copy by key, a read on the
/// endpoint calls now go to, and a re-apply (PATCH, same key) when it is missing or different.
async fn reconcile(
    api: &Api,
    journal: &Journal,
    report: &DataLossReport,
    clock: Clock,
) -> Result<Tally, BoxError> {
    let mut tally = Tally {
        window: report.window,
        from: report.from.to_string(),
        to: report.to.to_string(),
        ..Tally::default()
    };
    if report.dropped > 0 {
        println!(
            "{clock} the ledger dropped {} writes: the lists are incomplete, check more widely",
            report.dropped
        );
    }
    println!(
        "{clock} reconciling {} at-risk writes on {}",
        report.at_risk().count(),
        report.to
    );
    // An unknown write may still be in flight in this application: the layer may be re-sending
    // it on the alternate. Each is checked once its call has ended.
    tally.in_flight = report
        .unknown
        .iter()
        .filter_map(|record| journal.get(record.key.as_deref()?))
        .filter(|(_, state)| *state == State::InFlight)
        .count();
    let lists: [(usize, &Vec<WriteRecord>); 2] = [(0, &report.acknowledged), (1, &report.unknown)];
    for (list, records) in lists {
        for record in records {
            tally.at_risk[list] += 1;
            let Some(key) = record.key.as_deref() else {
                println!(
                    "{clock} {} {} has no key: cannot look it up",
                    record.method, record.path
                );
                tally.unmatched[list] += 1;
                continue;
            };
            let Some((write, _)) = journal.settled(key).await else {
                tally.unmatched[list] += 1;
                continue;
            };
            tally.checked[list] += 1;
            let (status, body) = send(api, write.read()).await?;
            if status.is_success() && body == write.body {
                tally.present[list] += 1;
                continue;
            }
            if status != StatusCode::NOT_FOUND && !status.is_success() {
                return Err(format!("reading {key} back answered {status}").into());
            }
            // Missing (or not as the application wrote it): upsert it again, with the same key.
            let (status, _) = send(api, write.upsert(Method::PATCH)).await?;
            if !status.is_success() {
                return Err(format!("re-applying {key} answered {status}").into());
            }
            tally.reapplied[list] += 1;
            tally.reapplied_accounts.push(write.n);
        }
    }
    Ok(tally)
}

/// Reads every write the application made back through the failover service.
async fn verify(api: &Api, journal: &Journal) -> (usize, Vec<String>) {
    let mut present = 0;
    let mut problems = Vec::new();
    for (write, state) in journal.all() {
        if let State::Failed(error) = &state {
            problems.push(format!("{}: the application's write failed: {error}", write.key));
        }
        match send(api, write.read()).await {
            Ok((status, body)) if status.is_success() && body == write.body => present += 1,
            Ok((status, _)) => problems.push(format!("{}: reading it back answered {status}", write.key)),
            Err(error) => problems.push(format!("{}: reading it back failed: {error}", write.key)),
        }
    }
    (present, problems)
}

impl Tally {
    fn print(&self, handle: &FailoverHandle) {
        let row = |label: &str, values: [usize; 2]| {
            println!(
                "{label:<44}{:>14}{:>10}{:>8}",
                values[0],
                values[1],
                values[0] + values[1]
            );
        };
        println!();
        println!(
            "data-loss report of the switch {} -> {} (replication window {:?})",
            self.from, self.to, self.window
        );
        println!("{:<44}{:>14}{:>10}{:>8}", "", "acknowledged", "unknown", "total");
        println!("{}", "-".repeat(76));
        row("at-risk writes in the report", self.at_risk);
        row("checked on the alternate (GET by key)", self.checked);
        row("present, as the application wrote them", self.present);
        row("missing, re-applied (PATCH, same key)", self.reapplied);
        if self.unmatched != [0, 0] {
            row("not checked (no key, or not this app's)", self.unmatched);
        }
        println!("{}", "-".repeat(76));
        println!(
            "unknown outcome: {} of {} still in flight here when the report came (checked once their calls ended)",
            self.in_flight, self.at_risk[1]
        );
        let mut accounts: Vec<String> = self
            .reapplied_accounts
            .iter()
            .map(|n| format!("{n:03}"))
            .collect();
        if accounts.is_empty() {
            accounts.push("none".to_string());
        }
        println!("re-applied accounts: {}", accounts.join(" "));
        if let Some(report) = handle.last_report() {
            println!("handle.last_report(): {report}");
        }
    }
}
