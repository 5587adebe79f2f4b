//! Scaling over shared state, in process, on a multi-thread runtime (2 workers):
//!
//! * `scale_concurrency`: time per call with 1, 8, 64 and 512 calls in flight, every call a
//!   routed GET through clones of one failover service (one `Arc<Shared>`: the call counter,
//!   the active-endpoint word), against the bare inner service at the same concurrency;
//! * `scale_ledger`: the data-loss ledger's cost per write as it grows: POSTs with the report
//!   on and the ledger holding 1,000, 10,000 (the default capacity) and 100,000 writes, against
//!   the same layer with `.data_loss_report(false)`; one write after another on a
//!   current-thread runtime (`seq`), and 64 writes in flight on the 2-worker runtime (`64`).
//!
//! The inner service reads the body, yields once to the scheduler (so that the calls really
//! are in flight together and interleave), and answers 200 with an empty body.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use criterion::BenchmarkId;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};
use tower_failover::{Endpoints, FailoverLayer, ReplayBody};

const PRIMARY: &str = "https://contoso.api.crm.dynamics.com";
const CONCURRENCY: [u64; 4] = [1, 8, 64, 512];
const LEDGER_SIZES: [usize; 3] = [1_000, 10_000, 100_000];

type Answer = Response<Full<Bytes>>;

fn yielding_service<B>() -> impl Service<
    Request<B>,
    Response = Answer,
    Error = Infallible,
    Future = impl Future<Output = Result<Answer, Infallible>> + Send + 'static,
> + Clone
       + Send
       + 'static
where
    B: Body + Unpin + Send + 'static,
{
    tower::service_fn(|request: Request<B>| async move {
        drain(request.into_body()).await;
        tokio::task::yield_now().await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    })
}

fn get() -> Request<Full<Bytes>> {
    Request::get(format!("{PRIMARY}/api/data/v9.2/WhoAmI"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

static BODY: [u8; 256] = [b'x'; 256];

fn post() -> Request<Full<Bytes>> {
    Request::post(format!("{PRIMARY}/api/data/v9.2/accounts"))
        .body(Full::new(Bytes::from(BODY.to_vec())))
        .unwrap()
}

/// About `iters` calls, `concurrency` in flight (one task each, with its own clone of the
/// service); returns the wall time scaled to exactly `iters` calls.
fn run<S>(
    rt: &Runtime,
    service: &S,
    concurrency: u64,
    iters: u64,
    make: fn() -> Request<Full<Bytes>>,
) -> Duration
where
    S: Service<Request<Full<Bytes>>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
    S::Response: Send,
{
    let per_task = (iters / concurrency).max(1);
    let total = per_task * concurrency;
    let elapsed = rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let mut service = service.clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        let response = service.ready().await.unwrap().call(make()).await.unwrap();
                        drop(response);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        start.elapsed()
    });
    elapsed.mul_f64(iters as f64 / total as f64)
}

/// `iters` calls one after another on `rt` (a current-thread runtime).
fn run_seq<S>(rt: &Runtime, service: &S, iters: u64, make: fn() -> Request<Full<Bytes>>) -> Duration
where
    S: Service<Request<Full<Bytes>>> + Clone,
    S::Error: std::fmt::Debug,
{
    let mut service = service.clone();
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let response = service.ready().await.unwrap().call(make()).await.unwrap();
            drop(response);
        }
        start.elapsed()
    })
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rt = &runtime;
    let current_thread = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let current = &current_thread;
    let bare = yielding_service::<Full<Bytes>>();
    let failover = FailoverLayer::new(Endpoints::dynamics(PRIMARY).unwrap())
        .layer(yielding_service::<ReplayBody<Full<Bytes>>>());
    let ledger_off = FailoverLayer::builder(Endpoints::dynamics(PRIMARY).unwrap())
        .data_loss_report(false)
        .build()
        .unwrap()
        .layer(yielding_service::<ReplayBody<Full<Bytes>>>());
    let ledgers: Vec<_> = LEDGER_SIZES
        .iter()
        .map(|&size| {
            let service = FailoverLayer::builder(Endpoints::dynamics(PRIMARY).unwrap())
                .ledger_capacity(size)
                .build()
                .unwrap()
                .layer(yielding_service::<ReplayBody<Full<Bytes>>>());
            // Fill the ledger to its capacity first: from then on every write evicts the oldest.
            run(rt, &service, 64, size as u64 + 1_000, post);
            (size, service)
        })
        .collect();

    // (group, id, baseline id, runner)
    let mut benches: Vec<(&str, String, String, Runner<'_>)> = Vec::new();
    for &n in &CONCURRENCY {
        let (bare, failover) = (&bare, &failover);
        benches.push((
            "scale_concurrency",
            format!("bare/{n}"),
            format!("bare/{n}"),
            Box::new(move |i| run(rt, bare, n, i, get)),
        ));
        benches.push((
            "scale_concurrency",
            format!("failover/{n}"),
            format!("bare/{n}"),
            Box::new(move |i| run(rt, failover, n, i, get)),
        ));
    }
    // The ledger: "seq" is one call after another on a current-thread runtime, so the
    // difference is the ledger's own work, free of cross-thread scheduling; "64" is 64 writes
    // in flight on the 2-worker runtime, contending for the ledger's lock.
    for n in ["seq", "64"] {
        let ledger_off = &ledger_off;
        benches.push((
            "scale_ledger",
            format!("ledger_off/{n}"),
            format!("ledger_off/{n}"),
            Box::new(move |i| match n {
                "seq" => run_seq(current, ledger_off, i, post),
                _ => run(rt, ledger_off, 64, i, post),
            }),
        ));
        for (size, service) in &ledgers {
            if n == "64" && *size != 10_000 {
                continue;
            }
            benches.push((
                "scale_ledger",
                format!("ledger_{size}/{n}"),
                format!("ledger_off/{n}"),
                Box::new(move |i| match n {
                    "seq" => run_seq(current, service, i, post),
                    _ => run(rt, service, 64, i, post),
                }),
            ));
        }
    }

    // `BENCH_ONLY=<id>` (e.g. `failover/1`): run one variant for 5 seconds, for a profiler.
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let (_, _, _, f) = benches.iter_mut().find(|b| b.1 == only).expect("no such variant");
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            f(10_000);
        }
        return;
    }

    let mut c = criterion();
    for group_name in ["scale_concurrency", "scale_ledger"]
        .into_iter()
        .filter(|_| !quick())
    {
        let mut group = c.benchmark_group(group_name);
        for (g, id, _, f) in benches.iter_mut().filter(|b| b.0 == group_name) {
            let (function, parameter) = id.split_once('/').unwrap();
            let (g, id): (&str, &str) = (g, id);
            group.bench_function(BenchmarkId::new(function, parameter), |b| {
                ran(g, id);
                b.iter_custom(&mut *f)
            });
        }
        group.finish();
    }
    for group_name in ["scale_concurrency", "scale_ledger"] {
        let pairs: Vec<(&str, &str)> = benches
            .iter()
            .filter(|b| b.0 == group_name && b.1 != b.2)
            .map(|b| (b.1.as_str(), b.2.as_str()))
            .collect();
        print_criterion_ratios(group_name, &pairs);
        if group_name == "scale_concurrency" {
            for (variant, baseline) in &pairs {
                if let (Some(v), Some(b)) = (
                    criterion_median(group_name, variant),
                    criterion_median(group_name, baseline),
                ) {
                    println!("  {variant:<20} overhead per call {:+.1} ns", v - b);
                }
            }
        }
    }

    for group_name in ["scale_concurrency", "scale_ledger"] {
        let mut variants: Vec<(&str, &str, Runner<'_>)> = benches
            .iter_mut()
            .filter(|b| b.0 == group_name)
            .map(|(_, id, baseline, f)| (id.as_str(), baseline.as_str(), Box::new(&mut **f) as Runner<'_>))
            .collect();
        let rows = interleaved(&mut variants, 15, 5_000);
        print_interleaved(group_name, &rows);
    }
    c.final_summary();
}
