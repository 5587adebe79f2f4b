//! Loopback throughput: hyper-util's client (HTTP/1.1, keep-alive) to a hyper server on
//! 127.0.0.1, 32 calls in flight, with the failover layer and without it, in the same run.
//!
//! The server answers 200 at once (`Behavior::EarlyAnswer`: nothing recorded). Each call is a
//! bodiless GET to the primary's name, and reads the response body to its end.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use criterion::Throughput;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use support::{Behavior, Pair, PRIMARY_URL};
use tokio::runtime::Runtime;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_failover::{Endpoints, FailoverLayer, ReplayBody};

const GROUP: &str = "loopback";
const IN_FLIGHT: u64 = 32;

fn get() -> Request<Full<Bytes>> {
    Request::get(format!("{PRIMARY_URL}/api/data/v9.2/WhoAmI"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Makes `iters` calls, `IN_FLIGHT` at a time (one task per slot, each with its own clone of
/// the service), and returns the wall time.
fn run<S, RB>(rt: &Runtime, service: &S, iters: u64) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..IN_FLIGHT)
            .map(|slot| {
                let calls = iters / IN_FLIGHT + u64::from(slot < iters % IN_FLIGHT);
                let mut service = service.clone();
                tokio::spawn(async move {
                    for _ in 0..calls {
                        let response = service.ready().await.unwrap().call(get()).await.unwrap();
                        assert_eq!(response.status(), 200);
                        response.into_body().collect().await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        start.elapsed()
    })
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pair = rt.block_on(Pair::start());
    pair.primary.set(Behavior::EarlyAnswer);

    let bare = pair.client::<Full<Bytes>>();
    let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
    let handle = layer.handle();
    let failover = ServiceBuilder::new()
        .layer(layer)
        .service(pair.client::<ReplayBody<Full<Bytes>>>());

    // Open the 32 connections of each client before measuring.
    run(&rt, &bare, 4 * IN_FLIGHT);
    run(&rt, &failover, 4 * IN_FLIGHT);

    let mut variants: Vec<(&str, &str, Runner<'_>)> = vec![
        ("bare_client", "bare_client", Box::new(|i| run(&rt, &bare, i))),
        ("failover", "bare_client", Box::new(|i| run(&rt, &failover, i))),
    ];

    // `BENCH_ONLY=<variant>`: run one variant for 5 seconds, for a profiler.
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let (_, _, f) = variants
            .iter_mut()
            .find(|v| v.0 == only)
            .expect("no such variant");
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            f(10_000);
        }
        return;
    }

    let mut c = criterion();
    if !quick() {
        let mut group = c.benchmark_group(GROUP);
        group.throughput(Throughput::Elements(1));
        bench_variants(&mut group, GROUP, &mut variants);
        group.finish();
    }

    println!("\n== {GROUP}: calls per second, {IN_FLIGHT} in flight (criterion medians)");
    if let (Some(bare), Some(failover)) = (
        criterion_median(GROUP, "bare_client"),
        criterion_median(GROUP, "failover"),
    ) {
        println!(
            "bare client {:>10.0} calls/s   failover {:>10.0} calls/s   throughput ratio {:.3}x (target >= 0.97x)",
            1e9 / bare,
            1e9 / failover,
            bare / failover
        );
    }

    let rows = interleaved(&mut variants, 15, 3_000);
    print_interleaved(GROUP, &rows);
    if let [bare, failover] = &rows[..] {
        println!(
            "interleaved: bare {:.0} calls/s, failover {:.0} calls/s, throughput ratio {:.3}x",
            1e9 / bare.median_ns,
            1e9 / failover.median_ns,
            1.0 / failover.ratio
        );
    }
    let counters = handle.counters();
    assert_eq!(counters.switches, 0, "no switch during the loopback bench");
    println!("routed calls through the layer: {}", counters.calls);
    c.final_summary();
}
