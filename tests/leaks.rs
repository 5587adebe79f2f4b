//! Bounded memory and no leaked tasks: 10,000 calls through the layer with repeated switches
//! (an in-process inner service that fails on whichever side is active every so often, manual
//! switches from the handle, probe-driven failbacks), then everything is dropped.
//!
//! While it runs: the data-loss report made at each switch never lists more writes than the
//! ledger's capacity (the rest are counted as dropped), and an event receiver that never reads
//! holds at most the broadcast buffer and is told how many it missed. Once the services, the
//! layer and the handles are dropped: the `watch` receiver from `subscribe()` sees the state
//! closed, and the runtime's alive tasks are back to where they were before the layer existed.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use support::within;
use tokio::sync::broadcast::error::TryRecvError;
use tower::{ServiceBuilder, ServiceExt};
use tower_failover::{Endpoints, Failback, FailoverLayer, ReplayBody, SwitchEvent};

const PRIMARY_URL: &str = "https://contoso.api.crm.dynamics.com";
const CALLS: u64 = 10_000;
const IN_FLIGHT: usize = 32;
const LEDGER_CAPACITY: usize = 100;
/// What `FailoverHandle::events` keeps for a receiver that falls behind.
const EVENT_BUFFER: usize = 64;
/// Every this many attempts, the inner service answers 503 (on whichever side it was sent to).
const FAIL_EVERY: u64 = 97;
/// Every this many calls, the application switches by hand.
const MANUAL_EVERY: u64 = 250;

/// What the reports of the switches showed.
#[derive(Default)]
struct Reports {
    largest: usize,
    dropped: u64,
    count: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_calls_with_switches_leave_nothing_behind() {
    within(60, async {
        let metrics = tokio::runtime::Handle::current().metrics();
        let baseline = metrics.num_alive_tasks();
        let started = Instant::now();

        let reports = Arc::new(Mutex::new(Reports::default()));
        let seen = reports.clone();
        let layer = FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL).unwrap())
            .ledger_capacity(LEDGER_CAPACITY)
            .failback(
                Failback::new()
                    .interval(Duration::from_millis(5))
                    .min_time_on_alternate(Duration::ZERO)
                    .healthy_probes(1)
                    .hold(Duration::ZERO, Duration::ZERO),
            )
            .on_switched(move |event| {
                if let SwitchEvent::Switched {
                    report: Some(report), ..
                } = event
                {
                    let mut seen = seen.lock().unwrap();
                    seen.largest = seen.largest.max(report.acknowledged.len() + report.unknown.len());
                    seen.dropped += report.dropped;
                    seen.count += 1;
                }
            })
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut state = handle.subscribe();
        let mut lagging = handle.events();

        let attempts = Arc::new(AtomicU64::new(0));
        let counter = attempts.clone();
        let inner = tower::service_fn(move |request: Request<ReplayBody<Full<Bytes>>>| {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            async move {
                // Read the body, as a server would.
                let _ = request.into_body().collect().await;
                let status = if n % FAIL_EVERY == FAIL_EVERY - 1 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
                *response.status_mut() = status;
                Ok::<_, Infallible>(response)
            }
        });
        let service = ServiceBuilder::new().layer(layer.clone()).service(inner);

        let errors = Arc::new(AtomicUsize::new(0));
        futures_util::stream::iter(0..CALLS)
            .map(|i| {
                let service = service.clone();
                let handle = handle.clone();
                let errors = errors.clone();
                async move {
                    if i % MANUAL_EVERY == 0 {
                        handle.switch_endpoint();
                    }
                    let (method, key) = match i % 4 {
                        0 => (Method::GET, None),
                        1 => (Method::POST, Some(format!("key-{i}"))),
                        _ => (Method::POST, None),
                    };
                    let mut request = Request::builder()
                        .method(method)
                        .uri(format!("{PRIMARY_URL}/api/data/v9.2/tasks"))
                        .body(Full::new(Bytes::from(format!(r#"{{"call":{i}}}"#))))
                        .unwrap();
                    if let Some(key) = key {
                        request
                            .headers_mut()
                            .insert("idempotency-key", key.parse().unwrap());
                    }
                    match service.oneshot(request).await {
                        Ok(response) => {
                            let _ = response.into_body().collect().await;
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .for_each(|()| async {})
            .await;
        let elapsed = started.elapsed();

        let counters = handle.counters();
        assert_eq!(counters.calls, CALLS);
        let reports = std::mem::take(&mut *reports.lock().unwrap());
        eprintln!(
            "{CALLS} calls in {elapsed:?}: {} attempts, {} errors, {} switches ({} reports, the \
             largest listing {} writes, {} writes dropped from the ledger), {} alive tasks at the \
             start",
            attempts.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
            counters.switches,
            reports.count,
            reports.largest,
            reports.dropped,
            baseline
        );
        assert!(counters.switches >= 2 * (CALLS / MANUAL_EVERY), "{counters:?}");
        assert_eq!(reports.count as u64, counters.switches);

        // The ledger stays within its capacity; what it let go is counted.
        assert!(
            reports.largest <= LEDGER_CAPACITY,
            "a report listed {} writes",
            reports.largest
        );
        assert!(reports.dropped > 0, "10,000 writes went through a ledger of 100");
        let last = handle.last_report().expect("a report");
        assert!(last.acknowledged.len() + last.unknown.len() <= LEDGER_CAPACITY);

        // The receiver that never read: tokio's broadcast keeps the last 64 events for it, tells
        // it how many it missed, and then hands over only what it kept. (Failbacks may still
        // add a switch or two while this runs: allowed for.)
        let unread = lagging.len();
        assert!(unread >= 2 * counters.switches as usize, "{unread} unread");
        let missed = match lagging.try_recv() {
            Err(TryRecvError::Lagged(missed)) => missed as usize,
            other => panic!("expected a lag report, got {other:?}"),
        };
        let mut kept = 0;
        while lagging.try_recv().is_ok() {
            kept += 1;
        }
        let later = 2 * (handle.counters().switches - counters.switches) as usize;
        assert!(
            kept <= EVENT_BUFFER + later,
            "{kept} events kept for a lagging receiver"
        );
        assert!(
            missed + kept >= unread,
            "missed {missed}, kept {kept}, unread {unread}"
        );
        eprintln!("lagging receiver: {unread} unread, told it missed {missed}, {kept} kept");

        // Drop everything: the state closes, and every task the layer started ends.
        let running = metrics.num_alive_tasks();
        state.borrow_and_update();
        drop((service, layer, handle));
        let dropped = Instant::now();
        let closed = tokio::time::timeout(Duration::from_secs(2), async {
            while state.changed().await.is_ok() {}
        })
        .await;
        assert!(
            closed.is_ok(),
            "the shared state outlived the layer, services and handles"
        );
        let mut left = metrics.num_alive_tasks();
        while left > baseline && dropped.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            left = metrics.num_alive_tasks();
        }
        eprintln!(
            "alive tasks: {baseline} before, {running} at the end of the run, {left} {:?} after the drop",
            dropped.elapsed()
        );
        assert!(left <= baseline, "{} tasks left behind", left - baseline);
        // And the lagging receiver sees the stream closed.
        assert!(matches!(lagging.try_recv(), Err(TryRecvError::Closed)));
    })
    .await
}
