//! Streaming a large body: a 64 MiB POST in 64 KiB chunks to a loopback hyper server that
//! reads and discards it, through a failover layer with a 64 KiB replay cap, against the bare
//! client and against collect-and-clone, in the same run. Then the memory each holds.
//!
//! Each chunk is a fresh 64 KiB allocation, as when reading a file or a socket, so what a body
//! keeps alive shows in the allocator's live bytes.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use criterion::{SamplingMode, Throughput};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::{Resolver, ALTERNATE_HOST, PRIMARY_HOST, PRIMARY_URL};
use tokio::runtime::Runtime;
use tower::retry::RetryLayer;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_failover::{Endpoints, FailoverLayer, ReplayBody};

const GROUP: &str = "streaming";
const TOTAL: usize = 64 << 20;
const CHUNK: usize = 64 << 10;
const CAP: usize = 64 << 10;

/// `TOTAL` bytes in `CHUNK`-sized frames, each freshly allocated.
struct Chunks {
    left: usize,
}

impl Chunks {
    fn new() -> Self {
        Chunks { left: TOTAL }
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let n = this.left.min(CHUNK);
        this.left -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![0x5a; n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left as u64)
    }
}

fn post<B>(body: B) -> Request<B> {
    Request::post(format!("{PRIMARY_URL}/api/data/v9.2/annotations"))
        .body(body)
        .unwrap()
}

/// A loopback HTTP/1.1 server that reads every request body to its end, keeps nothing, and
/// answers 200 with the byte count.
async fn discard_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                let mut body = request.into_body();
                let mut n = 0usize;
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data() {
                        n += data.len();
                    }
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(n.to_string()))))
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Sends `iters` streamed uploads through `service`, one after another; the time they took.
async fn time_uploads<S, ResB>(service: &mut S, iters: u64) -> Duration
where
    S: Service<Request<Chunks>, Response = Response<ResB>>,
    S::Error: std::fmt::Debug,
    ResB: Body<Error: std::fmt::Debug>,
{
    let start = Instant::now();
    for _ in 0..iters {
        let response = service
            .ready()
            .await
            .unwrap()
            .call(post(Chunks::new()))
            .await
            .unwrap();
        check(response).await;
    }
    start.elapsed()
}

async fn check(response: Response<impl Body<Error: std::fmt::Debug>>) {
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        TOTAL.to_string().as_bytes(),
        "the server read the whole body"
    );
}

type Client<B> =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector<Resolver>, B>;

fn client<B>(resolver: &Resolver) -> Client<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(resolver.connector())
}

fn main() {
    let rt: Runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = rt.block_on(discard_server());
    let resolver = Resolver::new();
    resolver.map(PRIMARY_HOST, addr);
    resolver.map(ALTERNATE_HOST, addr);

    let mut bare = client::<Chunks>(&resolver);
    let layer = FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL).unwrap())
        .replay_cap(CAP)
        .build()
        .unwrap();
    let mut failover = ServiceBuilder::new()
        .layer(layer)
        .service(client::<ReplayBody<Chunks>>(&resolver));
    let mut collect_clone = RetryLayer::new(CollectAndClone::once()).layer(client::<Full<Bytes>>(&resolver));

    let mut run_bare = |iters: u64| rt.block_on(time_uploads(&mut bare, iters));
    let mut run_failover = |iters: u64| rt.block_on(time_uploads(&mut failover, iters));
    let mut run_collect_clone = |iters: u64| {
        rt.block_on(async {
            let start = Instant::now();
            for _ in 0..iters {
                let request = collect_request(post(Chunks::new())).await;
                let response = collect_clone.ready().await.unwrap().call(request).await.unwrap();
                check(response).await;
            }
            start.elapsed()
        })
    };

    // ---- memory: the live-heap high-water mark above the level before the call, whole process
    // (client, server, buffers), three calls each after a warm-up call ----
    let mut peaks = Vec::new();
    for (name, f) in [
        ("bare_client", &mut run_bare as &mut dyn FnMut(u64) -> Duration),
        ("failover_cap_64k", &mut run_failover),
        ("collect_clone", &mut run_collect_clone),
    ] {
        f(1);
        let mut runs: Vec<u64> = (0..3).map(|_| peak_bytes(|| f(1)).1).collect();
        runs.sort_unstable();
        peaks.push((name, runs));
    }

    // ---- memory: the replay buffer alone, single-threaded. A body is read frame by frame and
    // each frame dropped at once (as a client does after writing it), so the live bytes above
    // one chunk in hand are what the body itself keeps. ----
    let drive = |body: &mut (dyn Body<Data = Bytes, Error = Infallible> + Unpin)| {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut n = 0;
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut *body).poll_frame(&mut cx) {
            n += frame.into_data().map(|d| d.len()).unwrap_or(0);
        }
        assert_eq!(n, TOTAL);
    };
    let (_, plain_peak) = peak_bytes(|| drive(&mut ReplayBody::plain(Chunks::new())));
    let (handle, replay_peak) = peak_bytes(|| {
        let (mut body, handle) = ReplayBody::recorded(Chunks::new(), CAP);
        drive(&mut body);
        handle
    });
    assert!(handle.check().is_err(), "64 MiB is over the cap: nothing kept");
    let (_, small_peak) = peak_bytes(|| {
        // A body that fits: 64 KiB in one chunk, kept whole for a replay.
        let (mut body, handle) = ReplayBody::recorded(Full::new(Bytes::from(vec![0x5a; CAP])), CAP);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        while let Poll::Ready(Some(Ok(_))) = Pin::new(&mut body).poll_frame(&mut cx) {}
        drop(body);
        assert!(handle.check().is_ok());
        handle
    });
    let (_, collect_peak) = peak_bytes(|| {
        rt.block_on(async {
            let request = collect_request(post(Chunks::new())).await;
            assert_eq!(request.body().size_hint().exact(), Some(TOTAL as u64));
            request
        })
    });

    // ---- timing ----
    let mut variants: Vec<(&str, &str, Runner<'_>)> = vec![
        ("bare_client", "bare_client", Box::new(run_bare)),
        ("failover_cap_64k", "bare_client", Box::new(run_failover)),
        ("collect_clone", "bare_client", Box::new(run_collect_clone)),
    ];
    let mut c = criterion();
    if !quick() {
        let mut group = c.benchmark_group(GROUP);
        group
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .throughput(Throughput::Bytes(TOTAL as u64));
        bench_variants(&mut group, GROUP, &mut variants);
        group.finish();
    }
    print_criterion_ratios(
        GROUP,
        &[
            ("failover_cap_64k", "bare_client"),
            ("collect_clone", "bare_client"),
            ("failover_cap_64k", "collect_clone"),
        ],
    );
    let rows = interleaved(&mut variants, 11, 1);
    print_interleaved(GROUP, &rows);

    println!("\n== {GROUP}: memory (64 MiB body, 64 KiB chunks, replay cap {CAP} B)");
    println!("peak live heap above the start during one loopback call (whole process: client,");
    println!("server, socket buffers; 3 calls each, lowest and highest):");
    for (name, runs) in &peaks {
        println!(
            "  {name:<20} {} .. {}",
            fmt_bytes(runs[0]),
            fmt_bytes(runs[runs.len() - 1])
        );
    }
    println!("a body read frame by frame, each frame dropped at once:");
    println!(
        "  plain (not kept)                  peak {}",
        fmt_bytes(plain_peak)
    );
    println!(
        "  recorded, 64 MiB, cap 64 KiB      peak {}  -> held by the replay buffer: {}",
        fmt_bytes(replay_peak),
        fmt_bytes(replay_peak.saturating_sub(plain_peak))
    );
    println!(
        "  recorded, 64 KiB body that fits   peak {}  (kept whole for a replay)",
        fmt_bytes(small_peak)
    );
    println!(
        "  collect into Bytes (collect-and-clone) peak {}, and it holds {} for the whole call",
        fmt_bytes(collect_peak),
        fmt_bytes(TOTAL as u64)
    );
    c.final_summary();
}
