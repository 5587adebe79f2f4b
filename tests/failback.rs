//! Failback, health probing and planned maintenance, against real hyper servers on loopback
//! reached through the real hyper-util client. Outages are made by killing the primary and
//! ended by restarting it on the same port.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use support::*;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::TryRecvError;
use tower::{Service, ServiceExt};
use tower_failover::{
    Endpoints, Failback, FailoverError, FailoverLayer, FailoverLayerBuilder, Side, SwitchCause, SwitchEvent,
};

type ReqBody = Full<Bytes>;

const INTERVAL: Duration = Duration::from_millis(50);
const JITTER: u8 = 20;
const MIN_TIME: Duration = Duration::from_millis(300);
const HEALTHY: u32 = 3;
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
const HOLD: Duration = Duration::from_secs(1);
const MAX_HOLD: Duration = Duration::from_secs(4);

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// The failback configuration most tests use: short enough for a test, the same shape as
/// production.
fn quick_failback() -> Failback {
    Failback::new()
        .interval(INTERVAL)
        .jitter_percent(JITTER)
        .min_time_on_alternate(MIN_TIME)
        .healthy_probes(HEALTHY)
        .probe_timeout(PROBE_TIMEOUT)
        .hold(HOLD, MAX_HOLD)
}

fn endpoints() -> Endpoints {
    Endpoints::dynamics(PRIMARY_URL).unwrap()
}

fn service(pair: &Pair, layer: FailoverLayer) -> Through {
    pair.through(layer)
}

/// The tests that move calls by hand need the probe task's client, which the first call
/// through the service lends: as [`logged_service`], after one call answered by the primary.
async fn logged_service_that_lent_the_prober(
    pair: &Pair,
    failback: Failback,
) -> (Through, tower_failover::FailoverHandle, Log) {
    let (mut svc, handle, log) = logged_service(pair, failback);
    assert_eq!(call_ok(&mut svc, API).await, Side::Primary);
    (svc, handle, log)
}

/// A service over `pair` with `failback`, its handle, and the log of its switches.
fn logged_service(pair: &Pair, failback: Failback) -> (Through, tower_failover::FailoverHandle, Log) {
    let log = Log::default();
    let layer = log
        .attach(FailoverLayer::builder(endpoints()).failback(failback))
        .build()
        .unwrap();
    let handle = layer.handle();
    (service(pair, layer), handle, log)
}

/// A service over `pair` with the default layer (no failback), and its handle.
fn plain_service(pair: &Pair) -> (Through, tower_failover::FailoverHandle) {
    let layer = FailoverLayer::builder(endpoints()).build().unwrap();
    let handle = layer.handle();
    (service(pair, layer), handle)
}

/// One call answered by the primary, then the primary killed: the next call is answered by
/// the alternate.
async fn fail_over_by_killing_the_primary(pair: &Pair, svc: &mut Through) {
    assert_eq!(call_ok(svc, API).await, Side::Primary);
    pair.primary.kill().await;
    assert_eq!(call_ok(svc, API).await, Side::Alternate);
}

/// One GET through the service: the status and the body text.
async fn call(svc: &mut Through, path: &str) -> Result<(StatusCode, String), FailoverError> {
    let request = http::Request::get(format!("{PRIMARY_URL}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = svc.ready().await?.call(request).await?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Which test server wrote this body.
fn served_by(body: &str) -> Option<Side> {
    if body.contains(&format!(r#""server":"{PRIMARY_HOST}""#)) {
        Some(Side::Primary)
    } else if body.contains(&format!(r#""server":"{ALTERNATE_HOST}""#)) {
        Some(Side::Alternate)
    } else {
        None
    }
}

/// A call that must succeed; returns the side that answered it.
async fn call_ok(svc: &mut Through, path: &str) -> Side {
    match call(svc, path).await {
        Ok((StatusCode::OK, body)) => served_by(&body).unwrap_or_else(|| panic!("unknown server: {body}")),
        Ok((status, body)) => panic!("call answered {status}: {body}"),
        Err(error) => panic!("call failed: {error}"),
    }
}

fn side_of(endpoint: &tower_failover::Endpoint) -> Side {
    if endpoint.host() == PRIMARY_HOST {
        Side::Primary
    } else {
        assert_eq!(endpoint.host(), ALTERNATE_HOST);
        Side::Alternate
    }
}

/// A short name for a cause, to compare sequences of them.
fn label(cause: &SwitchCause) -> &'static str {
    match cause {
        SwitchCause::EndpointDown(_) => "EndpointDown",
        SwitchCause::Manual => "Manual",
        SwitchCause::Failback => "Failback",
        SwitchCause::Planned => "Planned",
        SwitchCause::StartupCheck => "StartupCheck",
        _ => "other",
    }
}

/// One switch as the callbacks saw it: why, where to, and when `Switched` was raised.
#[derive(Clone, Debug)]
struct Switch {
    cause: SwitchCause,
    to: Side,
    at: Instant,
    wall: SystemTime,
}

/// Every event in the order the layer raised it, stamped by the (synchronous) callbacks, so
/// the times are those of the switches themselves, not of whoever reads them later.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<(Instant, SystemTime, SwitchEvent)>>>);

impl Log {
    fn attach<C>(&self, builder: FailoverLayerBuilder<C>) -> FailoverLayerBuilder<C> {
        let required = self.clone();
        let switched = self.clone();
        builder
            .on_switch_required(move |event| required.push(event))
            .on_switched(move |event| switched.push(event))
    }

    fn push(&self, event: &SwitchEvent) {
        self.0
            .lock()
            .unwrap()
            .push((Instant::now(), SystemTime::now(), event.clone()));
    }

    /// The switches made: each `SwitchRequired` must be followed by its `Switched`.
    fn switches(&self) -> Vec<Switch> {
        let events = self.0.lock().unwrap().clone();
        let mut switches = Vec::new();
        let mut pending: Option<SwitchCause> = None;
        for (at, wall, event) in events {
            match event {
                SwitchEvent::SwitchRequired { cause, .. } => {
                    assert!(pending.is_none(), "two SwitchRequired in a row");
                    pending = Some(cause);
                }
                SwitchEvent::Switched { new, .. } => {
                    let cause = pending.take().expect("Switched without SwitchRequired");
                    switches.push(Switch {
                        cause,
                        to: side_of(&new),
                        at,
                        wall,
                    });
                }
                other => panic!("unexpected event {other}"),
            }
        }
        assert!(pending.is_none(), "SwitchRequired without Switched");
        switches
    }

    fn labels(&self) -> Vec<(&'static str, Side)> {
        self.switches().iter().map(|s| (label(&s.cause), s.to)).collect()
    }
}

async fn next_event(events: &mut broadcast::Receiver<SwitchEvent>) -> SwitchEvent {
    tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("no event within 5 s")
        .expect("event stream")
}

/// Reads one `SwitchRequired` and its `Switched` from the stream; returns the cause.
async fn next_switch(events: &mut broadcast::Receiver<SwitchEvent>, to: Side) -> SwitchCause {
    let cause = match next_event(events).await {
        SwitchEvent::SwitchRequired { previous, new, cause } => {
            assert_eq!(side_of(&previous), to.other());
            assert_eq!(side_of(&new), to);
            cause
        }
        other => panic!("expected SwitchRequired, got {other}"),
    };
    match next_event(events).await {
        SwitchEvent::Switched { previous, new, .. } => {
            assert_eq!(side_of(&previous), to.other());
            assert_eq!(side_of(&new), to);
        }
        other => panic!("expected Switched, got {other}"),
    }
    cause
}

fn assert_no_event(events: &mut broadcast::Receiver<SwitchEvent>) {
    match events.try_recv() {
        Err(TryRecvError::Empty) => {}
        Ok(event) => panic!("unexpected event: {event}"),
        Err(error) => panic!("event stream: {error}"),
    }
}

/// Polls `check` every 5 ms until it holds; fails after `limit`.
async fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "gave up after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(ms(5)).await;
    }
}

/// Many tests wait for calls to come back to the primary by themselves; fails after `limit`.
async fn wait_for_the_failback(handle: &tower_failover::FailoverHandle, limit: Duration) {
    wait_for("the failback", limit, || handle.active() == Side::Primary).await;
}

const API: &str = "/api/data/v9.2/accounts";

/// The primary comes back at once, so the healthy probes pile up long before the minimum time
/// on the alternate: failback waits for the time, then happens by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_waits_for_min_time_on_alternate_and_healthy_probes() {
    within(15, async {
        let mut pair = Pair::start().await;
        let (mut svc, handle, log) = logged_service(&pair, quick_failback());
        let mut events = handle.events();

        assert_eq!(call_ok(&mut svc, API).await, Side::Primary);
        assert!(!handle.probing(), "nothing to probe while on the primary");

        pair.primary.kill().await;
        assert_eq!(call_ok(&mut svc, API).await, Side::Alternate);
        assert_eq!(handle.active(), Side::Alternate);
        assert!(handle.probing(), "a switch to the alternate starts the probes");
        // When the stay on the alternate began, as the layer stamped it (the callbacks' own
        // stamps come after it, by however late their thread ran).
        let stay_began = handle.state().since;

        pair.restart_primary().await;
        let restarted = Instant::now();

        // Watch the count of healthy probes while waiting; make no calls, so whatever the
        // restarted primary receives is a probe.
        let mut most_healthy = 0;
        wait_for("the failback", Duration::from_secs(5), || {
            let state = handle.state();
            if state.active == Side::Alternate {
                most_healthy = most_healthy.max(state.healthy_probes);
            }
            state.active == Side::Primary
        })
        .await;

        let switches = log.switches();
        assert_eq!(
            log.labels(),
            [("EndpointDown", Side::Alternate), ("Failback", Side::Primary)]
        );
        let on_alternate = switches[1].at - switches[0].at;
        // The minimum time is the layer's promise about its own stamps: the failback's `since`
        // against the failover's. The callbacks' stamps can be any amount later than the
        // switches they report (a thread preempted between the switch and its callback), so
        // they bound the time from above only.
        let failed_back = handle.state().since;
        let stayed = failed_back
            .duration_since(stay_began)
            .expect("the failback after the failover");
        let probes = pair.primary.seen();
        eprintln!(
            "switch -> restart {:?}, on the alternate {on_alternate:?} (min {MIN_TIME:?}), \
             (by the layer's stamps {stayed:?}), {} probes reached the primary, most healthy in \
             a row seen {most_healthy}",
            restarted - switches[0].at,
            probes.len()
        );
        assert!(
            stayed >= MIN_TIME,
            "failed back after {stayed:?}, before the minimum {MIN_TIME:?}"
        );
        assert!(
            on_alternate < MIN_TIME + Duration::from_secs(1),
            "failback took {on_alternate:?}"
        );
        assert!(probes.len() >= HEALTHY as usize, "only {} probes", probes.len());
        for probe in &probes {
            assert_eq!((&probe.method, probe.path.as_str()), (&Method::GET, "/"));
            assert_eq!(probe.host.as_deref(), Some(PRIMARY_HOST));
        }
        // The count was observable and reached N well before the minimum time was over: the
        // time, not the probes, held the failback back.
        assert!(
            most_healthy >= HEALTHY,
            "healthy_probes peaked at {most_healthy}, expected >= {HEALTHY}"
        );

        // The broadcast stream says the same, in order.
        assert!(matches!(
            next_switch(&mut events, Side::Alternate).await,
            SwitchCause::EndpointDown(_)
        ));
        assert_eq!(
            next_switch(&mut events, Side::Primary).await,
            SwitchCause::Failback
        );
        assert_no_event(&mut events);

        let state = handle.state();
        assert_eq!(state.healthy_probes, 0);
        assert_eq!(state.cause, Some(SwitchCause::Failback));
        assert_eq!(state.generation, 2);
        wait_for("the probe task to stop", ms(500), || !handle.probing()).await;

        assert_eq!(call_ok(&mut svc, API).await, Side::Primary);
        assert_eq!(pair.primary.count(), probes.len() + 1);
        assert_eq!(handle.generation(), 2);
        assert_eq!(handle.state().healthy_probes, 0);
    })
    .await
}

/// The primary comes back only after the minimum time is over: failback then needs exactly N
/// healthy probes of the restarted primary, spaced by the interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_needs_n_healthy_probes_in_a_row() {
    within(15, async {
        let mut pair = Pair::start().await;
        let (mut svc, handle, log) = logged_service(&pair, quick_failback());
        fail_over_by_killing_the_primary(&pair, &mut svc).await;
        let switched = log.switches()[0].at;

        // Down for well past the minimum time: every probe fails, nothing moves.
        let down_until = switched + MIN_TIME + ms(200);
        while Instant::now() < down_until {
            let state = handle.state();
            assert_eq!(state.active, Side::Alternate);
            assert_eq!(state.healthy_probes, 0, "a refused probe counted as healthy");
            tokio::time::sleep(ms(5)).await;
        }

        // Stamped before the restart: a probe can reach the restarted primary as soon as it
        // listens, before this task runs again, so a stamp taken after the restart can come
        // after the first healthy probe (by as long as this task was held up).
        let restarted = Instant::now();
        pair.restart_primary().await;
        wait_for_the_failback(&handle, Duration::from_secs(3)).await;

        let switches = log.switches();
        assert_eq!(
            log.labels(),
            [("EndpointDown", Side::Alternate), ("Failback", Side::Primary)]
        );
        let after_restart = switches[1].at - restarted;
        // N probes, the first possibly at once, the others at least one interval (less the
        // jitter) apart.
        let least = INTERVAL * (HEALTHY - 1) * (100 - u32::from(JITTER)) / 100;
        let probes = pair.primary.count();
        eprintln!(
            "failback {after_restart:?} after the restart (least {least:?}), {probes} probes of the restarted primary"
        );
        assert!(after_restart >= least, "failed back {after_restart:?} after the restart");
        assert_eq!(probes, HEALTHY as usize, "the failback came on the N-th healthy probe");
        assert_eq!(call_ok(&mut svc, API).await, Side::Primary);
    })
    .await
}

/// A primary that answers 503 to every other probe never gives N healthy probes in a row:
/// each failed probe resets the count, and there is no failback until it is really healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_probe_resets_the_count() {
    within(15, async {
        let mut pair = Pair::start().await;
        let (mut svc, handle, log) = logged_service(&pair, quick_failback());
        fail_over_by_killing_the_primary(&pair, &mut svc).await;
        pair.restart_primary().await;
        pair.primary.set(alternating_unavailable());

        let flaky_since = Instant::now();
        let mut most_healthy = 0;
        let mut seen_healthy = Vec::new();
        while flaky_since.elapsed() < ms(1500) {
            let state = handle.state();
            assert_eq!(
                state.active,
                Side::Alternate,
                "failed back to a half-healthy primary"
            );
            if seen_healthy.last() != Some(&state.healthy_probes) {
                seen_healthy.push(state.healthy_probes);
            }
            most_healthy = most_healthy.max(state.healthy_probes);
            tokio::time::sleep(ms(5)).await;
        }
        let probes = pair.primary.count();
        eprintln!(
            "{probes} probes in 1.5 s against the half-healthy primary, healthy count went {seen_healthy:?}"
        );
        assert_eq!(handle.generation(), 1);
        assert!(probes >= 15, "only {probes} probes in 1.5 s");
        // Healthy probes were counted, and every failed one set the count back to zero.
        assert_eq!(most_healthy, 1, "healthy_probes reached {most_healthy}");
        assert!(seen_healthy.windows(2).any(|w| w == [1, 0]), "{seen_healthy:?}");

        // Once it is really healthy the failback follows.
        pair.primary.set(Behavior::Ok);
        let healthy_since = Instant::now();
        wait_for_the_failback(&handle, Duration::from_secs(3)).await;
        eprintln!(
            "failback {:?} after the primary turned healthy",
            healthy_since.elapsed()
        );
        assert_eq!(
            log.labels(),
            [("EndpointDown", Side::Alternate), ("Failback", Side::Primary)]
        );
    })
    .await
}

/// The most failbacks flap damping allows in `span`: one at once, then one per hold, the hold
/// doubling up to `max_hold`.
fn most_failbacks(span: Duration, hold: Duration, max_hold: Duration) -> u64 {
    let mut at = Duration::ZERO;
    let mut hold = hold;
    let mut count = 1;
    while at + hold <= span {
        at += hold;
        count += 1;
        hold = (hold * 2).min(max_hold);
    }
    count
}

/// A primary that comes and goes every 200 ms, under steady traffic, makes a bounded number of
/// switches: at most one failback per hold, and the hold doubles after every failed return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flap_damping_bounds_the_switches() {
    within(20, async {
        let mut pair = Pair::start().await;
        let failback = quick_failback()
            .interval(ms(30))
            .min_time_on_alternate(ms(100))
            .healthy_probes(2);
        let (mut svc, handle, log) = logged_service(&pair, failback);
        assert_eq!(call_ok(&mut svc, API).await, Side::Primary);

        let stop = Arc::new(AtomicBool::new(false));
        let traffic = tokio::spawn({
            let stop = stop.clone();
            let mut svc = svc.clone();
            async move {
                let (mut ok, mut failed) = (0u32, 0u32);
                while !stop.load(Ordering::Relaxed) {
                    match call(&mut svc, API).await {
                        Ok((StatusCode::OK, _)) => ok += 1,
                        _ => failed += 1,
                    }
                    tokio::time::sleep(ms(20)).await;
                }
                (ok, failed)
            }
        });

        let began = Instant::now();
        let mut next = began;
        let mut flaps = 0;
        while began.elapsed() < Duration::from_secs(5) {
            pair.primary.kill().await;
            next += ms(200);
            tokio::time::sleep_until(next.into()).await;
            pair.restart_primary().await;
            next += ms(200);
            tokio::time::sleep_until(next.into()).await;
            flaps += 1;
        }
        let generation = handle.generation();
        let span = began.elapsed();
        stop.store(true, Ordering::Relaxed);
        let (ok, failed) = traffic.await.unwrap();

        let switches: Vec<Switch> = log
            .switches()
            .into_iter()
            .filter(|s| s.at <= began + span)
            .collect();
        let failbacks: Vec<Instant> = switches
            .iter()
            .filter(|s| s.cause == SwitchCause::Failback)
            .map(|s| s.at)
            .collect();
        let allowed_failbacks = most_failbacks(span, HOLD, MAX_HOLD);
        let bound = 2 * allowed_failbacks + 1;
        let offsets: Vec<Duration> = failbacks.iter().map(|at| *at - began).collect();
        eprintln!(
            "{flaps} flaps in {span:?}: {generation} switches (bound {bound}), failbacks at {offsets:?} \
             (at most {allowed_failbacks}); traffic {ok} ok, {failed} failed; switches {:?}",
            log.labels()
        );

        assert!(generation <= bound, "{generation} switches, more than {bound}");
        assert!(failbacks.len() as u64 <= allowed_failbacks);
        assert!(
            !failbacks.is_empty(),
            "the primary was up half the time and never got a failback"
        );
        assert_eq!(switches.len() as u64, generation);
        for switch in &switches {
            match label(&switch.cause) {
                "EndpointDown" => assert_eq!(switch.to, Side::Alternate),
                "Failback" => assert_eq!(switch.to, Side::Primary),
                other => panic!("unexpected switch cause {other}"),
            }
        }
        // Each failback waited out the hold in force, and the hold doubled every time the
        // primary failed again within it.
        //
        // The times are the callbacks' stamps, taken after the layer made each switch, late
        // by as long as the callback's thread was held up (preempted, on a loaded machine).
        // The layer times the hold from just before its failback, and the next failback comes
        // within a few ms of the hold's end: a first failback stamped a few ms late alone made
        // a correct run look as if the hold was cut short. So each stamp is allowed to be up
        // to `STAMP_LAG` late; a hold skipped or not doubled is off by a second or more.
        const STAMP_LAG: Duration = Duration::from_millis(50);
        let mut hold = HOLD;
        for pair_of in failbacks.windows(2) {
            let (previous, next) = (pair_of[0], pair_of[1]);
            // Only where the stamps leave no doubt that the primary failed within the hold.
            let failed_again = switches.iter().any(|s| {
                label(&s.cause) == "EndpointDown" && s.at > previous && s.at - previous + STAMP_LAG < hold
            });
            if failed_again {
                hold = (hold * 2).min(MAX_HOLD);
            }
            assert!(
                next - previous + STAMP_LAG >= hold,
                "failbacks {:?} apart, the hold was {hold:?}",
                next - previous
            );
        }
    })
    .await
}

/// `fail_back()` and `switch_to()` switch by hand with cause Manual; asking for the side already
/// active does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_switches_raise_manual_events() {
    within(10, async {
        let pair = Pair::start().await;
        // Failback on, but with a minimum time no test waits out: only manual switches here.
        let failback = quick_failback().min_time_on_alternate(Duration::from_secs(60));
        let layer = FailoverLayer::builder(endpoints())
            .failback(failback)
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut events = handle.events();
        let mut svc = service(&pair, layer);
        assert_eq!(call_ok(&mut svc, API).await, Side::Primary);

        assert_eq!(handle.switch_to(Side::Primary), Side::Primary);
        assert_no_event(&mut events);
        assert_eq!(handle.fail_back(), Side::Primary);
        assert_no_event(&mut events);
        assert_eq!(handle.generation(), 0);

        assert_eq!(handle.switch_to(Side::Alternate), Side::Alternate);
        assert_eq!(
            next_switch(&mut events, Side::Alternate).await,
            SwitchCause::Manual
        );
        assert_eq!(handle.state().cause, Some(SwitchCause::Manual));
        assert!(
            handle.probing(),
            "a manual switch to the alternate starts the probes too"
        );
        assert_eq!(handle.switch_to(Side::Alternate), Side::Alternate);
        assert_no_event(&mut events);
        assert_eq!(handle.generation(), 1);
        assert_eq!(call_ok(&mut svc, API).await, Side::Alternate);

        assert_eq!(handle.fail_back(), Side::Primary);
        assert_eq!(next_switch(&mut events, Side::Primary).await, SwitchCause::Manual);
        assert_eq!(handle.fail_back(), Side::Primary);
        assert_eq!(handle.switch_to(Side::Primary), Side::Primary);
        assert_no_event(&mut events);
        let state = handle.state();
        assert_eq!((state.active, state.generation), (Side::Primary, 2));
        assert_eq!(state.cause, Some(SwitchCause::Manual));
        assert_eq!(call_ok(&mut svc, API).await, Side::Primary);
        wait_for("the probe task to stop", ms(500), || !handle.probing()).await;
        assert_no_event(&mut events);
    })
    .await
}

/// One call of the steady traffic: when it began and ended, and who answered.
struct Traced {
    began: Instant,
    ended: Instant,
    result: Result<Side, String>,
}

/// A planned window: calls move to the alternate before it starts, none fails, a call in
/// flight on the primary finishes there, and they come back only after it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_window_moves_calls_without_errors() {
    within(15, async {
        let mut pair = Pair::start().await;
        let (mut svc, handle, log) = logged_service(&pair, quick_failback().healthy_probes(2));
        assert_eq!(call_ok(&mut svc, API).await, Side::Primary);

        let stop = Arc::new(AtomicBool::new(false));
        let traffic = tokio::spawn({
            let stop = stop.clone();
            let mut svc = svc.clone();
            async move {
                let mut traced = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    let result = match call(&mut svc, API).await {
                        Ok((StatusCode::OK, body)) => served_by(&body).ok_or(body),
                        Ok((status, body)) => Err(format!("{status}: {body}")),
                        Err(error) => Err(error.to_string()),
                    };
                    traced.push(Traced {
                        began,
                        ended: Instant::now(),
                        result,
                    });
                    tokio::time::sleep(ms(20)).await;
                }
                traced
            }
        });
        tokio::time::sleep(ms(100)).await;

        let t0 = Instant::now();
        let now = SystemTime::now();
        let (start, end, lead) = (now + ms(600), now + ms(1200), ms(200));
        handle.schedule_maintenance_with_lead(start, end, lead).unwrap();

        // A slow call starts on the primary before the switch (at start - lead, 400 ms) and
        // is still in flight at it. 200 ms either way: this task may run late on a loaded
        // machine, and the call must end before the kill at 800 ms.
        tokio::time::sleep_until((t0 + ms(200)).into()).await;
        assert_eq!(handle.active(), Side::Primary, "moved before start - lead");
        pair.primary.set(Behavior::Delay(ms(400)));
        let slow = tokio::spawn({
            let mut svc = svc.clone();
            async move {
                let result = call(&mut svc, "/api/data/v9.2/slow").await;
                (result, Instant::now())
            }
        });
        wait_for("the slow call to reach the primary", Duration::from_secs(1), || {
            pair.primary.seen().iter().any(|s| s.path == "/api/data/v9.2/slow")
        })
        .await;
        pair.primary.set(Behavior::Ok);

        // The maintenance itself: the primary is gone inside the window and back (healthy)
        // before its end, which must not bring calls back early.
        tokio::time::sleep_until((t0 + ms(800)).into()).await;
        pair.primary.kill().await;
        tokio::time::sleep_until((t0 + ms(1000)).into()).await;
        pair.restart_primary().await;

        wait_for("the return to the primary", Duration::from_secs(3), || {
            handle.active() == Side::Primary
        })
        .await;
        tokio::time::sleep(ms(200)).await;
        stop.store(true, Ordering::Relaxed);
        let traced = traffic.await.unwrap();
        let (slow_result, slow_ended) = slow.await.unwrap();

        let switches = log.switches();
        assert_eq!(
            log.labels(),
            [("Planned", Side::Alternate), ("Planned", Side::Primary)],
            "the window's switches"
        );
        let (away, back) = (&switches[0], &switches[1]);
        let since = |wall: SystemTime| wall.duration_since(now).unwrap_or_default();
        eprintln!(
            "schedule at 0: moved at {:?} (start - lead = {:?}, start = {:?}), back at {:?} (end = {:?}); {} calls",
            since(away.wall),
            since(start - lead),
            since(start),
            since(back.wall),
            since(end),
            traced.len()
        );
        // Timers never fire early; allow a few ms for the wall clock against the monotonic one.
        assert!(away.wall + ms(5) >= start - lead, "moved too early");
        assert!(away.wall < start, "moved only after the window began");
        assert!(back.wall >= end, "came back before the window ended");

        let failed: Vec<&String> = traced.iter().filter_map(|t| t.result.as_ref().err()).collect();
        assert!(failed.is_empty(), "{} calls failed: {failed:?}", failed.len());
        for t in &traced {
            let side = *t.result.as_ref().unwrap();
            if t.began > away.at && t.ended < back.at {
                assert_eq!(side, Side::Alternate, "a call inside the window went to the primary");
            }
            if t.began > back.at {
                assert_eq!(side, Side::Primary, "a call after the window went to the alternate");
            }
        }
        assert!(
            traced.iter().any(|t| t.began > away.at && t.ended < back.at),
            "no traffic inside the window"
        );
        assert!(traced.iter().any(|t| t.began > back.at), "no traffic after the window");

        // The slow call was in flight on the primary across the switch and finished there.
        match slow_result {
            Ok((StatusCode::OK, body)) => assert_eq!(served_by(&body), Some(Side::Primary), "{body}"),
            other => panic!("the slow call: {other:?}"),
        }
        assert!(slow_ended > away.at, "the slow call ended before the switch");
    })
    .await
}

/// Two windows, the second opening while the first one's task is probing the primary (slow
/// to answer): the first must not bring calls back in the middle of the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_ends_during_another_leaves_calls_on_the_alternate() {
    within(15, async {
        let pair = Pair::start().await;
        let (mut svc, handle) = plain_service(&pair);
        // The first call lends the prober.
        call_ok(&mut svc, "/api/data/v9.2/WhoAmI").await;
        pair.primary.set(Behavior::Delay(ms(500)));
        let now = SystemTime::now();
        handle
            .schedule_maintenance_with_lead(now, now + ms(200), Duration::ZERO)
            .unwrap();
        handle
            .schedule_maintenance_with_lead(now + ms(400), now + ms(6000), Duration::ZERO)
            .unwrap();
        // The first window's probe starts at 200 ms and answers at 700 ms: inside the second.
        tokio::time::sleep(ms(1500)).await;
        assert_eq!(
            (handle.active(), handle.generation()),
            (Side::Alternate, 1),
            "calls moved back during the second window (cause {:?})",
            handle.state().cause
        );
    })
    .await
}

/// With the primary down at start-up, the check starts on the alternate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_check_starts_on_alternate_when_primary_is_down() {
    within(10, async {
        let pair = Pair::start().await;
        pair.primary.kill().await;
        let (mut svc, handle) = plain_service(&pair);
        let mut events = handle.events();

        assert_eq!(svc.check_startup::<ReqBody, _>().await, Side::Alternate);
        assert_eq!(
            next_switch(&mut events, Side::Alternate).await,
            SwitchCause::StartupCheck
        );
        assert_no_event(&mut events);
        let state = handle.state();
        assert_eq!(state.active, Side::Alternate);
        assert_eq!(state.cause, Some(SwitchCause::StartupCheck));
        assert_eq!(state.generation, 1);
        // The alternate was probed (GET /) before the switch.
        let probed: Vec<_> = pair
            .alternate
            .seen()
            .iter()
            .map(|s| (s.method.clone(), s.path.clone()))
            .collect();
        assert_eq!(probed, [(Method::GET, "/".to_string())]);

        assert_eq!(call_ok(&mut svc, API).await, Side::Alternate);
        assert_eq!(handle.generation(), 1);
        assert_no_event(&mut events);
    })
    .await
}

/// With the primary up, the check stays on the primary and says nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_check_stays_on_healthy_primary() {
    within(10, async {
        let pair = Pair::start().await;
        let (mut svc, handle) = plain_service(&pair);
        let mut events = handle.events();

        assert_eq!(svc.check_startup::<ReqBody, _>().await, Side::Primary);
        assert_no_event(&mut events);
        assert_eq!(handle.generation(), 0);
        assert_eq!(handle.state().cause, None);
        assert_eq!(pair.primary.count(), 1, "one probe of the primary");
        assert_eq!(pair.alternate.count(), 0, "no need to probe the alternate");
        assert_eq!(call_ok(&mut svc, API).await, Side::Primary);
    })
    .await
}

/// With both down, there is nowhere better to go: the check stays on the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_check_stays_on_primary_when_both_are_down() {
    within(10, async {
        let pair = Pair::start().await;
        pair.primary.kill().await;
        pair.alternate.kill().await;
        let (svc, handle) = plain_service(&pair);
        let mut events = handle.events();

        assert_eq!(svc.check_startup::<ReqBody, _>().await, Side::Primary);
        assert_no_event(&mut events);
        assert_eq!(handle.generation(), 0);
        assert_eq!(handle.active(), Side::Primary);
    })
    .await
}

/// The drop tests set up alike but for the failback: the primary down, and a layer with
/// `failback` whose first call failed over to the alternate and started the probe task.
/// Returns the pair (kept for its servers), the alive tasks before the layer was built (the
/// alternate's accept loop alone: no client, no probe task yet), the layer, its handle and the
/// service.
async fn fail_over_and_start_probing(
    failback: Failback,
) -> (
    Pair,
    usize,
    FailoverLayer,
    tower_failover::FailoverHandle,
    Through,
) {
    let pair = Pair::start().await;
    pair.primary.kill().await;
    let baseline = tokio::runtime::Handle::current().metrics().num_alive_tasks();
    let layer = FailoverLayer::builder(endpoints())
        .failback(failback)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = service(&pair, layer.clone());
    assert_eq!(call_ok(&mut svc, API).await, Side::Alternate);
    assert!(handle.probing());
    (pair, baseline, layer, handle, svc)
}

/// The drop tests wait the same way for the shared state to go: its sender lives in the shared
/// state, so the receiver sees it closed once nothing holds the state any more (the probe task
/// included). Fails with `outlived` unless that happens within a second.
async fn assert_shared_state_closes(
    state: &mut tokio::sync::watch::Receiver<tower_failover::EndpointState>,
    outlived: &str,
) {
    let closed = tokio::time::timeout(Duration::from_secs(1), async {
        while state.changed().await.is_ok() {}
    })
    .await;
    assert!(closed.is_ok(), "{outlived}");
}

/// The drop tests count the tasks left behind the same way: tasks end a little after the
/// state goes, so poll the runtime's count until it falls to `baseline` or `limit` has passed
/// since `dropped`. Returns the last count.
async fn alive_tasks_once_settled(baseline: usize, dropped: Instant, limit: Duration) -> usize {
    let metrics = tokio::runtime::Handle::current().metrics();
    let mut left = metrics.num_alive_tasks();
    while left > baseline && dropped.elapsed() < limit {
        tokio::time::sleep(ms(10)).await;
        left = metrics.num_alive_tasks();
    }
    left
}

/// Dropping the layer, every handle and every service ends the probe task, even while the
/// primary is down and the task would probe forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_everything_stops_the_probe_task() {
    within(10, async {
        let metrics = tokio::runtime::Handle::current().metrics();
        let (_pair, baseline, layer, handle, svc) = fail_over_and_start_probing(quick_failback()).await;
        let mut other = svc.clone();
        // Let it run a few failing probes; it keeps going.
        tokio::time::sleep(ms(200)).await;
        assert!(handle.probing());
        assert_eq!(handle.active(), Side::Alternate);
        assert_eq!(call_ok(&mut other, API).await, Side::Alternate);

        let mut state = handle.subscribe();
        state.borrow_and_update();
        let running = metrics.num_alive_tasks();

        drop((svc, other, layer, handle));
        let dropped = Instant::now();
        assert_shared_state_closes(
            &mut state,
            "the shared state outlived every layer, service and handle",
        )
        .await;
        let state_gone = dropped.elapsed();

        // And no task is left behind: back to the alternate's accept loop alone.
        let left = alive_tasks_once_settled(baseline, dropped, Duration::from_secs(1)).await;
        eprintln!(
            "alive tasks: {baseline} before, {running} while probing, {left} {:?} after the drop \
             (state gone after {state_gone:?})",
            dropped.elapsed()
        );
        assert!(running > baseline);
        assert!(left <= baseline, "{} tasks left behind", left - baseline);
    })
    .await
}

/// The state after a failover says where calls go, why, since when, and how many switches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_state_after_a_failover() {
    within(10, async {
        let pair = Pair::start().await;
        let (mut svc, handle) = plain_service(&pair);
        let mut watch = handle.subscribe();

        let state = handle.state();
        assert_eq!(
            (state.active, state.generation, state.cause),
            (Side::Primary, 0, None)
        );
        assert_eq!(state.endpoint.host(), PRIMARY_HOST);
        assert!(state.last_event.is_none());
        assert_eq!(call_ok(&mut svc, API).await, Side::Primary);

        pair.primary.kill().await;
        let before = SystemTime::now();
        assert_eq!(call_ok(&mut svc, API).await, Side::Alternate);
        let after = SystemTime::now();

        let state = handle.state();
        assert_eq!(state.active, Side::Alternate);
        assert_eq!(state.endpoint.host(), ALTERNATE_HOST);
        assert_eq!(state.generation, 1);
        assert!(
            matches!(state.cause, Some(SwitchCause::EndpointDown(_))),
            "cause {:?}",
            state.cause
        );
        assert!(
            state.since >= before && state.since <= after,
            "since is not the time of the switch"
        );
        assert_eq!(state.healthy_probes, 0);
        assert!(matches!(state.last_event, Some(SwitchEvent::Switched { .. })));

        assert!(watch.has_changed().unwrap());
        let seen = watch.borrow_and_update().clone();
        assert_eq!((seen.active, seen.generation), (Side::Alternate, 1));
        assert_eq!(seen.since, state.since);
    })
    .await
}

/// The tests of whether a new stay on the alternate counts its own healthy probes share this
/// failback: unjittered, with no minimum time on the alternate, so that every `interval` a
/// probe is judged and only the count of healthy probes holds the failback back.
fn unjittered_failback(interval: Duration) -> Failback {
    quick_failback()
        .interval(interval)
        .jitter_percent(0)
        .min_time_on_alternate(Duration::ZERO)
}

/// Those tests first let the probes count one healthy answer short of a failback.
async fn wait_for_one_healthy_probe_short_of_failback(handle: &tower_failover::FailoverHandle) {
    wait_for("N - 1 healthy probes", Duration::from_secs(3), || {
        handle.state().healthy_probes == HEALTHY - 1
    })
    .await;
}

/// Those tests end on the same check: the failback needed `HEALTHY` probes of the new stay,
/// `probes` being how many the primary saw in it.
fn assert_failed_back_on_enough_probes_of_this_stay(probes: usize) {
    assert!(
        probes >= HEALTHY as usize,
        "failed back after {probes} healthy probes in this stay, {HEALTHY} needed"
    );
}

/// Calls fail over, the probes count healthy answers of the restarted primary, then calls come
/// back by hand and the primary fails again, all within one probe interval: the new stay on
/// the alternate must count its own N healthy probes in a row, none from the stay before (the
/// primary failed in between).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_probes_of_an_earlier_stay_on_the_alternate_do_not_count() {
    within(15, async {
        let mut pair = Pair::start().await;
        // Long unjittered intervals: the away-and-back below fits well inside one.
        let interval = ms(400);
        let (mut svc, handle, log) = logged_service(&pair, unjittered_failback(interval));
        fail_over_by_killing_the_primary(&pair, &mut svc).await;
        pair.restart_primary().await;
        wait_for_one_healthy_probe_short_of_failback(&handle).await;
        // A probe has just been judged, so the task sleeps for a whole interval now.
        let counted = Instant::now();
        assert_eq!(handle.fail_back(), Side::Primary);
        pair.primary.kill().await;
        assert_eq!(call_ok(&mut svc, API).await, Side::Alternate);
        pair.restart_primary().await;
        let again = Instant::now();
        assert!(
            again - counted < interval / 2,
            "the away-and-back took {:?}: the test proves nothing",
            again - counted
        );
        assert_eq!(handle.state().healthy_probes, 0);

        wait_for_the_failback(&handle, Duration::from_secs(5)).await;
        assert_eq!(
            log.labels(),
            [
                ("EndpointDown", Side::Alternate),
                ("Manual", Side::Primary),
                ("EndpointDown", Side::Alternate),
                ("Failback", Side::Primary)
            ]
        );
        // The primary restarted at the second failover: all it saw since are this stay's probes.
        let probes = pair.primary.count();
        eprintln!(
            "failback {:?} after the second failover, on {probes} probes of this stay",
            again.elapsed()
        );
        assert_failed_back_on_enough_probes_of_this_stay(probes);
    })
    .await
}

/// As above, with calls moved back and away again by hand in one go, before the probe task
/// can run in between: the new stay still counts its own N healthy probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_probes_of_an_earlier_stay_do_not_count_after_an_instant_away_and_back() {
    within(15, async {
        let pair = Pair::start().await;
        let (_svc, handle, log) =
            logged_service_that_lent_the_prober(&pair, unjittered_failback(ms(400))).await;
        assert_eq!(handle.switch_to(Side::Alternate), Side::Alternate);
        wait_for_one_healthy_probe_short_of_failback(&handle).await;
        assert_eq!(handle.fail_back(), Side::Primary);
        assert_eq!(handle.switch_to(Side::Alternate), Side::Alternate);
        let before = pair.primary.count();
        wait_for_the_failback(&handle, Duration::from_secs(5)).await;
        assert_eq!(
            log.labels(),
            [
                ("Manual", Side::Alternate),
                ("Manual", Side::Primary),
                ("Manual", Side::Alternate),
                ("Failback", Side::Primary)
            ]
        );
        let probes = pair.primary.count() - before;
        assert_failed_back_on_enough_probes_of_this_stay(probes);
    })
    .await
}

/// A probe still out when calls come back by hand, answering healthy afterwards, is not an
/// automatic failback: it must not start the flap-damping hold, which would keep the first
/// real failback back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_return_while_a_probe_is_out_is_not_taken_for_a_failback() {
    within(15, async {
        let pair = Pair::start().await;
        let failback = quick_failback()
            .healthy_probes(1)
            .min_time_on_alternate(Duration::ZERO)
            .probe_timeout(Duration::from_secs(2))
            .hold(Duration::from_secs(30), Duration::from_secs(60));
        let (_svc, handle, log) = logged_service_that_lent_the_prober(&pair, failback).await;
        pair.primary.set(Behavior::Delay(ms(300)));
        assert_eq!(handle.switch_to(Side::Alternate), Side::Alternate);
        wait_for("a probe to reach the primary", Duration::from_secs(2), || {
            pair.primary.count() > 1
        })
        .await;
        // Its answer is on the way: back by hand.
        assert_eq!(handle.fail_back(), Side::Primary);
        wait_for("the probe task to end", Duration::from_secs(2), || {
            !handle.probing()
        })
        .await;
        assert_eq!(handle.state().healthy_probes, 0);
        pair.primary.set(Behavior::Ok);

        // Away again with the primary healthy: no automatic failback was ever made, so one
        // healthy probe brings calls back.
        assert_eq!(handle.switch_to(Side::Alternate), Side::Alternate);
        wait_for_the_failback(&handle, Duration::from_secs(3)).await;
        assert_eq!(
            log.labels(),
            [
                ("Manual", Side::Alternate),
                ("Manual", Side::Primary),
                ("Manual", Side::Alternate),
                ("Failback", Side::Primary)
            ]
        );
    })
    .await
}

/// A lead longer than the clock reaches back (`Duration::MAX`) means "move now": calls must be
/// on the alternate before the window starts, not at its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_of_duration_max_moves_calls_before_the_window() {
    within(10, async {
        let pair = Pair::start().await;
        let (mut svc, handle) = plain_service(&pair);
        assert_eq!(call_ok(&mut svc, API).await, Side::Primary);
        let start = SystemTime::now() + Duration::from_secs(2);
        handle
            .schedule_maintenance_with_lead(start, start + Duration::from_secs(1), Duration::MAX)
            .unwrap();
        wait_for("calls to move", Duration::from_secs(1), || {
            handle.active() == Side::Alternate
        })
        .await;
        assert!(SystemTime::now() < start, "moved only once the window began");
        assert_eq!(handle.state().cause, Some(SwitchCause::Planned));
        assert_eq!(call_ok(&mut svc, API).await, Side::Alternate);
    })
    .await
}

/// Dropping everything ends the probe task and a maintenance task even while they sleep long:
/// a failback interval of `Duration::MAX`, a window an hour ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_everything_ends_tasks_that_sleep_long() {
    within(10, async {
        let metrics = tokio::runtime::Handle::current().metrics();
        let (_pair, baseline, layer, handle, svc) =
            fail_over_and_start_probing(quick_failback().interval(Duration::MAX)).await;
        let start = SystemTime::now() + Duration::from_secs(3600);
        handle
            .schedule_maintenance(start, start + Duration::from_secs(60))
            .unwrap();
        let mut state = handle.subscribe();
        state.borrow_and_update();
        let running = metrics.num_alive_tasks();

        drop((svc, layer, handle));
        let dropped = Instant::now();
        assert_shared_state_closes(&mut state, "the shared state outlived everything").await;
        let left = alive_tasks_once_settled(baseline, dropped, Duration::from_secs(2)).await;
        eprintln!("alive tasks: {baseline} before, {running} with both tasks, {left} after the drop");
        assert!(running >= baseline + 2);
        assert!(left <= baseline, "{} tasks left behind", left - baseline);
    })
    .await
}

/// A window that is already over (scheduled late, from a stale plan) has nothing to move calls
/// away from: no switch, no data-loss report, no time on the alternate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_already_over_moves_nothing() {
    within(10, async {
        let pair = Pair::start().await;
        let (mut svc, handle, log) = logged_service(&pair, quick_failback());
        assert_eq!(call_ok(&mut svc, API).await, Side::Primary);
        let hour = Duration::from_secs(3600);
        let start = SystemTime::now() - 2 * hour;
        handle.schedule_maintenance(start, start + hour).unwrap();
        let scheduled = Instant::now();
        while scheduled.elapsed() < ms(500) {
            assert_eq!(
                handle.active(),
                Side::Primary,
                "calls moved for a window that is over"
            );
            tokio::time::sleep(ms(2)).await;
        }
        assert_eq!(handle.generation(), 0);
        assert_eq!(log.labels(), []);
        assert_eq!(call_ok(&mut svc, API).await, Side::Primary);
    })
    .await
}

/// With no client lent for probes (no call made yet), calls come back at the end of a window
/// unprobed, with failback configured too: not one failback interval later for each healthy
/// probe the configuration asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nothing_to_probe_with_calls_come_back_at_the_end_of_a_window() {
    within(10, async {
        // Three probes a second apart: counted unprobed, the return would take two seconds.
        let failback = quick_failback()
            .interval(Duration::from_secs(1))
            .jitter_percent(0)
            .healthy_probes(3);
        let layer = FailoverLayer::builder(endpoints())
            .failback(failback)
            .build()
            .unwrap();
        let handle = layer.handle();
        let start = SystemTime::now() + ms(200);
        let end = start + ms(200);
        handle
            .schedule_maintenance_with_lead(start, end, Duration::ZERO)
            .unwrap();
        wait_for("the window to move calls", Duration::from_secs(2), || {
            handle.active() == Side::Alternate
        })
        .await;
        wait_for("calls back after the window", Duration::from_secs(3), || {
            handle.active() == Side::Primary
        })
        .await;
        let late = SystemTime::now().duration_since(end).unwrap_or_default();
        assert!(late < ms(800), "back {late:?} after the window's end");
        assert_eq!(handle.state().cause, Some(SwitchCause::Planned));
    })
    .await
}

/// A window opening while the probes are counting (calls already on the alternate after an
/// outage) sets the count back to zero, and the published count must say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_opening_while_probes_count_resets_the_published_count() {
    within(10, async {
        let mut pair = Pair::start().await;
        // A minimum time no test waits out: the count grows, nothing fails back.
        let failback = quick_failback().min_time_on_alternate(Duration::from_secs(60));
        let (mut svc, handle, _log) = logged_service(&pair, failback);
        fail_over_by_killing_the_primary(&pair, &mut svc).await;
        pair.restart_primary().await;
        wait_for("healthy probes", Duration::from_secs(3), || {
            handle.state().healthy_probes >= 2
        })
        .await;
        let now = SystemTime::now();
        handle
            .schedule_maintenance_with_lead(now, now + Duration::from_secs(5), Duration::ZERO)
            .unwrap();
        // A few intervals inside the window: the probe task counts nothing.
        tokio::time::sleep(INTERVAL * 6).await;
        let state = handle.state();
        assert_eq!((state.active, state.generation), (Side::Alternate, 1));
        assert_eq!(state.healthy_probes, 0, "the count inside a maintenance window");
    })
    .await
}

/// Calls brought back to the primary by hand: the probe task stops then (`probing()` is false,
/// as documented, once calls no longer go to the alternate), not a whole interval later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_return_stops_the_probe_task_at_once() {
    within(10, async {
        let pair = Pair::start().await;
        let failback = quick_failback().interval(Duration::from_secs(20));
        let (mut svc, handle, _log) = logged_service(&pair, failback);
        assert_eq!(call_ok(&mut svc, API).await, Side::Primary);
        assert_eq!(handle.switch_to(Side::Alternate), Side::Alternate);
        assert!(handle.probing());
        assert_eq!(handle.fail_back(), Side::Primary);
        wait_for("the probe task to stop", ms(500), || !handle.probing()).await;
        // And a later stay on the alternate gets a task of its own.
        assert_eq!(handle.switch_to(Side::Alternate), Side::Alternate);
        assert!(handle.probing());
    })
    .await
}

/// The probe task decides to fail back on probes of one stay on the alternate, and waits for
/// the switch lock while the application moves calls to the primary and straight back (a
/// switch asked for in `on_switched`). The failback must not then be made off the new stay:
/// no probe of it was counted, and it has not lasted `min_time_on_alternate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failback_decided_on_one_stay_is_not_made_off_the_next() {
    within(15, async {
        let pair = Pair::start().await;
        let min_time = ms(150);
        let cell: Arc<std::sync::OnceLock<tower_failover::FailoverHandle>> = Arc::default();
        let armed = Arc::new(AtomicBool::new(false));
        let (hold_lock, back_again) = (armed.clone(), armed.clone());
        let handle_cell = cell.clone();
        let layer = FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL).unwrap())
            .failback(
                quick_failback()
                    .healthy_probes(1)
                    .min_time_on_alternate(min_time)
                    .hold(ms(1), ms(1)),
            )
            .on_switch_required(move |event| {
                // The manual return: hold the switch lock while the probe task, its stay long
                // enough and its probe healthy, decides to fail back and waits for the lock.
                if hold_lock.load(Ordering::SeqCst) && event.cause() == &SwitchCause::Manual {
                    std::thread::sleep(ms(400));
                }
            })
            .on_switched(move |event| {
                // ... and the application moves calls straight back to the alternate.
                if event.cause() == &SwitchCause::Manual && back_again.swap(false, Ordering::SeqCst) {
                    handle_cell.get().unwrap().switch_endpoint();
                }
            })
            .build()
            .unwrap();
        let handle = layer.handle();
        cell.set(handle.clone()).unwrap();
        let mut events = handle.events();
        let mut svc = pair.through(layer);
        // The first call lends the prober.
        assert_eq!(call_ok(&mut svc, API).await, Side::Primary);
        assert_eq!(handle.switch_to(Side::Alternate), Side::Alternate);
        tokio::time::sleep(min_time / 3).await;
        armed.store(true, Ordering::SeqCst);
        let manual = handle.clone();
        tokio::task::spawn_blocking(move || manual.fail_back())
            .await
            .unwrap();
        // Back on the alternate: a new stay, which no failback may end for `min_time`.
        let back_at = Instant::now();
        tokio::time::sleep(ms(30)).await;
        let mut switches = Vec::new();
        while let Ok(event) = events.try_recv() {
            if let SwitchEvent::Switched { cause, new, .. } = event {
                switches.push((format!("{cause:?}"), new.host().to_string()));
            }
        }
        assert!(
            back_at.elapsed() < min_time,
            "the check came too late to mean anything"
        );
        assert_eq!(
            switches,
            [
                ("Manual".to_string(), ALTERNATE_HOST.to_string()),
                ("Manual".to_string(), PRIMARY_HOST.to_string()),
                ("Manual".to_string(), ALTERNATE_HOST.to_string()),
            ],
            "a failback off a stay of {:?}",
            back_at.elapsed()
        );
        assert_eq!(handle.active(), Side::Alternate);
        // The new stay as the layer stamped it: `back_at` came later, by however late this
        // task ran after the switch, so it cannot time the stay from below.
        let new_stay = handle.state();
        // The new stay is probed on its own, and ends once it has lasted long enough.
        wait_for("the failback off the new stay", Duration::from_secs(3), || {
            handle.active() == Side::Primary
        })
        .await;
        let state = handle.state();
        assert_eq!(state.cause, Some(SwitchCause::Failback));
        assert_eq!(
            (new_stay.generation, new_stay.active, state.generation),
            (3, Side::Alternate, 4),
            "the stay measured is the one the failback ended"
        );
        let stayed = state
            .since
            .duration_since(new_stay.since)
            .expect("the failback after the stay began");
        assert!(stayed >= min_time, "a failback after {stayed:?} on the alternate");
    })
    .await
}
