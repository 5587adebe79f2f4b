//! The switch under load: 32 workers send GETs through the layer to a loopback primary (each
//! call served in `SERVICE_TIME`), then the primary is killed (listener closed, open
//! connections dropped) with 32 calls in flight. Measured per round, then over all rounds:
//!
//! * the time from the kill to the switch, and to the first success on the alternate;
//! * the latency of the calls that span the switch (in flight at the kill), from the kill to
//!   their answer and end to end, against the alternate's own baseline in the same run: 32
//!   concurrent calls from a fresh client straight to the alternate (new connections, as the
//!   spanning calls need) and the steady state on the alternate after the switch;
//! * every attempt the layer sent to the primary, by when it was sent: before the kill (in
//!   flight), between the kill and the switch, and after the switch (target: none).
//!
//! A bench binary that prints a table (`harness = false`); `SWITCH_ROUNDS` sets the rounds.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use support::{Behavior, Pair, ALTERNATE_HOST, ALTERNATE_URL, PRIMARY_HOST, PRIMARY_URL};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_failover::{Endpoints, FailoverLayer, ReplayBody};

const IN_FLIGHT: usize = 32;
const SERVICE_TIME: Duration = Duration::from_millis(10);
const BEFORE_KILL: Duration = Duration::from_millis(300);
const AFTER_KILL: Duration = Duration::from_millis(400);
/// Calls that start this long after the switch count as the alternate's steady state.
const SETTLED: Duration = Duration::from_millis(100);

/// Logs every attempt the layer sends: whether it went to the primary, and when.
#[derive(Clone)]
struct Recorder<S> {
    inner: S,
    log: Arc<Mutex<Vec<(bool, Instant)>>>,
}

impl<S, B> Service<Request<B>> for Recorder<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> S::Future {
        let primary = request.uri().host() == Some(PRIMARY_HOST);
        self.log.lock().unwrap().push((primary, Instant::now()));
        self.inner.call(request)
    }
}

struct Call {
    start: Instant,
    end: Instant,
    ok: bool,
    on_alternate: bool,
}

#[derive(Default)]
struct Round {
    kill_to_switch: Option<Duration>,
    kill_to_first_alternate_success: Option<Duration>,
    spanning_from_kill: Vec<f64>,
    spanning_total: Vec<f64>,
    cold_baseline: Vec<f64>,
    warm_baseline: Vec<f64>,
    primary_before_kill: usize,
    primary_kill_to_switch: usize,
    primary_after_switch: usize,
    calls: usize,
    errors: usize,
    switches: u64,
    resends: u64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(format!("{url}/api/data/v9.2/WhoAmI"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn round() -> Round {
    let pair = Pair::start().await;
    pair.primary.set(Behavior::Delay(SERVICE_TIME));
    pair.alternate.set(Behavior::Delay(SERVICE_TIME));
    let mut out = Round::default();

    // The alternate's own baseline, cold: a fresh client, 32 calls at once, 32 new connections.
    let bare = pair.client::<Full<Bytes>>();
    let cold: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let bare = bare.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let response = bare.request(get(ALTERNATE_URL)).await.unwrap();
                response.into_body().collect().await.unwrap();
                ms(start.elapsed())
            })
        })
        .collect();
    for task in cold {
        out.cold_baseline.push(task.await.unwrap());
    }

    let switched_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let at = switched_at.clone();
    let layer = FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL).unwrap())
        .on_switched(move |_| {
            at.lock().unwrap().get_or_insert(Instant::now());
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let log: Arc<Mutex<Vec<(bool, Instant)>>> = Arc::default();
    let service = ServiceBuilder::new().layer(layer).service(Recorder {
        inner: pair.client::<ReplayBody<Full<Bytes>>>(),
        log: log.clone(),
    });

    let stop = Arc::new(AtomicBool::new(false));
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let service = service.clone();
            let stop = stop.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let result = service.clone().oneshot(get(PRIMARY_URL)).await;
                    let (ok, on_alternate) = match result {
                        Ok(response) => {
                            let ok = response.status() == 200;
                            let body = response.into_body().collect().await.map(|c| c.to_bytes());
                            let on_alternate = body
                                .as_ref()
                                .is_ok_and(|b| String::from_utf8_lossy(b).contains(ALTERNATE_HOST));
                            (ok && body.is_ok(), on_alternate)
                        }
                        Err(_) => (false, false),
                    };
                    let end = Instant::now();
                    calls.lock().unwrap().push(Call {
                        start,
                        end,
                        ok,
                        on_alternate,
                    });
                }
            })
        })
        .collect();

    tokio::time::sleep(BEFORE_KILL).await;
    let kill = Instant::now();
    pair.primary.kill().await;
    tokio::time::sleep(AFTER_KILL).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    let switched = *switched_at.lock().unwrap();
    out.kill_to_switch = switched.map(|s| s.saturating_duration_since(kill));
    let calls = std::mem::take(&mut *calls.lock().unwrap());
    out.calls = calls.len();
    out.errors = calls.iter().filter(|c| !c.ok).count();
    out.kill_to_first_alternate_success = calls
        .iter()
        .filter(|c| c.ok && c.on_alternate && c.end > kill)
        .map(|c| c.end - kill)
        .min();
    for call in calls.iter().filter(|c| c.start < kill && c.end > kill) {
        out.spanning_from_kill.push(ms(call.end - kill));
        out.spanning_total.push(ms(call.end - call.start));
    }
    if let Some(switched) = switched {
        out.warm_baseline = calls
            .iter()
            .filter(|c| c.ok && c.start > switched + SETTLED)
            .map(|c| ms(c.end - c.start))
            .collect();
    }
    for &(_, at) in log.lock().unwrap().iter().filter(|(primary, _)| *primary) {
        if at < kill {
            out.primary_before_kill += 1;
        } else if switched.is_none_or(|s| at < s) {
            out.primary_kill_to_switch += 1;
        } else {
            out.primary_after_switch += 1;
        }
    }
    let counters = handle.counters();
    out.switches = counters.switches;
    out.resends = counters.failover_resends;
    out
}

fn main() {
    let rounds: usize = std::env::var("SWITCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(8);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "== switch: primary killed with {IN_FLIGHT} calls in flight; service time {} ms on both sides; {rounds} rounds",
        ms(SERVICE_TIME)
    );
    println!(
        "{:>5} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}",
        "round",
        "kill->sw",
        "kill->1st ok",
        "spanning",
        "span p50",
        "cold p50",
        "prim<kill",
        "kill..sw",
        "after sw",
        "errors",
        "resends"
    );
    let mut all = Round::default();
    let mut to_switch = Vec::new();
    let mut to_first = Vec::new();
    for r in 0..rounds {
        let round = rt.block_on(round());
        let opt_ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.2} ms", ms(d)));
        println!(
            "{:>5} {:>10} {:>12} {:>9} {:>9.2} {:>9.2} {:>9} {:>9} {:>9} {:>7} {:>7}",
            r + 1,
            opt_ms(round.kill_to_switch),
            opt_ms(round.kill_to_first_alternate_success),
            round.spanning_from_kill.len(),
            median(round.spanning_from_kill.clone()),
            median(round.cold_baseline.clone()),
            round.primary_before_kill,
            round.primary_kill_to_switch,
            round.primary_after_switch,
            round.errors,
            round.resends,
        );
        assert_eq!(round.switches, 1, "one switch per round");
        to_switch.extend(round.kill_to_switch.map(ms));
        to_first.extend(round.kill_to_first_alternate_success.map(ms));
        all.spanning_from_kill.extend(round.spanning_from_kill);
        all.spanning_total.extend(round.spanning_total);
        all.cold_baseline.extend(round.cold_baseline);
        all.warm_baseline.extend(round.warm_baseline);
        all.primary_before_kill += round.primary_before_kill;
        all.primary_kill_to_switch += round.primary_kill_to_switch;
        all.primary_after_switch += round.primary_after_switch;
        all.calls += round.calls;
        all.errors += round.errors;
        all.resends += round.resends;
    }

    let p = |v: &Vec<f64>, q: f64| quantile(v.clone(), q);
    println!("\n== switch: over all {rounds} rounds (latencies in ms)");
    println!(
        "kill -> switch:                     p50 {:>8.2}   p99 {:>8.2}",
        p(&to_switch, 0.5),
        p(&to_switch, 0.99)
    );
    println!(
        "kill -> first success on alternate: p50 {:>8.2}   p99 {:>8.2}",
        p(&to_first, 0.5),
        p(&to_first, 0.99)
    );
    println!("{:<52} {:>6} {:>9} {:>9}", "latency", "n", "p50", "p99");
    let rows = [
        ("spanning calls, kill -> answer", &all.spanning_from_kill),
        ("spanning calls, end to end", &all.spanning_total),
        (
            "baseline: alternate, fresh client, 32 at once",
            &all.cold_baseline,
        ),
        (
            "baseline: alternate, steady state after the switch",
            &all.warm_baseline,
        ),
    ];
    for (name, v) in rows {
        println!("{name:<52} {:>6} {:>9.2} {:>9.2}", v.len(), p(v, 0.5), p(v, 0.99));
    }
    let cold = &all.cold_baseline;
    println!(
        "ratio spanning (kill -> answer) / cold baseline:   p50 {:.2}x   p99 {:.2}x",
        p(&all.spanning_from_kill, 0.5) / p(cold, 0.5),
        p(&all.spanning_from_kill, 0.99) / p(cold, 0.99)
    );
    let warm = &all.warm_baseline;
    println!(
        "ratio spanning (kill -> answer) / steady state:    p50 {:.2}x   p99 {:.2}x",
        p(&all.spanning_from_kill, 0.5) / p(warm, 0.5),
        p(&all.spanning_from_kill, 0.99) / p(warm, 0.99)
    );
    println!(
        "attempts sent to the primary: {} before the kill, {} between the kill and the switch, {} after the switch (target 0)",
        all.primary_before_kill, all.primary_kill_to_switch, all.primary_after_switch
    );
    println!(
        "calls in flight at the kill: {}; calls: {}, failed: {}, re-sent on the alternate: {}",
        all.spanning_from_kill.len(),
        all.calls,
        all.errors,
        all.resends
    );
}
