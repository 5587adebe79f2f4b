//! The success path, in process: what the layer adds to a call that succeeds at once.
//!
//! The inner service is a `tower::service_fn` that reads the request body to its end (as a
//! client sending it would) and answers at once with an empty body. Compared, in the same run:
//!
//! * `bare_*`: that service alone (the baselines);
//! * `passthrough_get`: through a `FailoverLayer` whose pair does not include the request's
//!   host, so the call is not routed (the "unwrapped" call);
//! * `routed_get*`: a bodiless GET to the primary (routed: URI rewritten, head kept for a
//!   possible re-send, nothing recorded);
//! * `failover_post_4k*`: a 4 KiB `Full<Bytes>` POST, wrapped for replay;
//! * `collect_clone_post_4k`: what users do today: collect the body into `Bytes`, then tower's
//!   `Retry` with a policy that clones the request.
//! * `floor_get`: the same GET through `floor::Floor`, a hand-written layer that does only
//!   what any layer able to fail that GET over must do when it succeeds. It is not a failover
//!   layer; it measures how close to bare one can get at all.
//!
//! Then the heap allocations per call, counted with a counting global allocator.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response, Uri};
use http_body::Body;
use http_body_util::Full;
use tokio::runtime::Runtime;
use tower::retry::RetryLayer;
use tower::{Layer, Service, ServiceExt};
use tower_failover::{Endpoints, FailoverLayer, ReplayBody};

const GROUP: &str = "success_path";
const PRIMARY: &str = "https://contoso.api.crm.dynamics.com";
const GET_URL: &str = "https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI";
const POST_URL: &str = "https://contoso.api.crm.dynamics.com/api/data/v9.2/accounts";
const PAYLOAD: usize = 4096;

type Answer = Response<Full<Bytes>>;

/// The least a layer that can send a GET again on the other endpoint must do on the success
/// path, and nothing more:
///
/// * tell whether the request names the primary (one string comparison) and read which side
///   is active (one atomic load);
/// * keep what a re-send needs, since the request itself goes to the inner service: method,
///   path and query (one reference count), version, headers (boxed, and only when there are
///   some) and extensions (empty here: nothing to allocate);
/// * hold the shared switch state in the call's future (one reference count, `Arc`): a
///   layer must own what its calls' futures outlive, and the switch is decided when the
///   answer comes;
/// * look at the answer's status.
///
/// No policies, no retry budget, no counters, no deadline, no ledger, no tracing. The switch
/// and re-send that would follow a 503 are left out: they are not on the success path.
mod floor {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::task::{ready, Context, Poll};

    use http::uri::PathAndQuery;
    use http::{Extensions, HeaderMap, Method, Request, Response, Version};
    use pin_project_lite::pin_project;
    use tower::Service;

    pub struct Switch {
        primary: String,
        on_alternate: AtomicBool,
    }

    /// What a re-send needs. Never read here: the re-send is not on the success path.
    #[allow(dead_code)]
    pub struct Kept {
        switch: Arc<Switch>,
        on_alternate: bool,
        method: Method,
        // Shared with the request (a reference count). Copying a short path into the future
        // instead was tried: memset, copy and a larger future cost more than the count
        // (2,416 instructions a call against 2,396, +51 to +56 ns against +39 to +41).
        path_and_query: Option<PathAndQuery>,
        version: Version,
        // `None` when there are none: an empty map is not worth a clone, and a boxed one
        // keeps the future small.
        headers: Option<Box<HeaderMap>>,
        extensions: Extensions,
    }

    #[derive(Clone)]
    pub struct Floor<S> {
        inner: S,
        switch: Arc<Switch>,
    }

    impl<S> Floor<S> {
        pub fn new(inner: S, primary_authority: &str) -> Self {
            Floor {
                inner,
                switch: Arc::new(Switch {
                    primary: primary_authority.to_owned(),
                    on_alternate: AtomicBool::new(false),
                }),
            }
        }
    }

    impl<S, B, RB> Service<Request<B>> for Floor<S>
    where
        S: Service<Request<B>, Response = Response<RB>>,
    {
        type Response = S::Response;
        type Error = S::Error;
        type Future = FloorFuture<S::Future>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, request: Request<B>) -> Self::Future {
            let routed = request
                .uri()
                .authority()
                .is_some_and(|a| a.as_str() == self.switch.primary);
            let kept = routed.then(|| Kept {
                switch: self.switch.clone(),
                on_alternate: self.switch.on_alternate.load(Ordering::Acquire),
                method: request.method().clone(),
                path_and_query: request.uri().path_and_query().cloned(),
                version: request.version(),
                headers: (!request.headers().is_empty()).then(|| Box::new(request.headers().clone())),
                extensions: request.extensions().clone(),
            });
            FloorFuture {
                inner: self.inner.call(request),
                kept,
            }
        }
    }

    pin_project! {
        pub struct FloorFuture<F> {
            #[pin]
            inner: F,
            kept: Option<Kept>,
        }
    }

    impl<F, RB, E> Future for FloorFuture<F>
    where
        F: Future<Output = Result<Response<RB>, E>>,
    {
        type Output = F::Output;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.project();
            let response = ready!(this.inner.poll(cx))?;
            // A failover layer would switch here on a 503 and re-send from `kept`; the
            // compiler must not drop the kept state for being unread.
            std::hint::black_box(&this.kept);
            if this.kept.is_some() && response.status() == http::StatusCode::SERVICE_UNAVAILABLE {
                std::hint::black_box(response.status());
            }
            Poll::Ready(Ok(response))
        }
    }
}

/// The ready inner service: reads the body, answers 200 with an empty body.
fn ready_service<B>() -> impl Service<
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
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    })
}

/// How the request's buffers are made.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Buffers {
    /// As applications usually do: the URI parsed from a string, header values from strings,
    /// the body from a freshly serialized `Vec<u8>`. Each buffer is uniquely owned, so the
    /// first clone of one (by anyone) allocates its shared reference count.
    Fresh,
    /// `Uri::from_static`, `HeaderValue::from_static`, `Bytes::from_static`: cloning them never
    /// allocates. Isolates what the layer itself allocates.
    Static,
}

fn get(buffers: Buffers, headers: bool) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(Bytes::new()));
    *request.uri_mut() = match buffers {
        Buffers::Fresh => GET_URL.parse().unwrap(),
        Buffers::Static => Uri::from_static(GET_URL),
    };
    if headers {
        let h = request.headers_mut();
        for (name, value) in [
            ("accept", "application/json"),
            (
                "authorization",
                "Bearer eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl",
            ),
            ("odata-version", "4.0"),
            ("odata-maxversion", "4.0"),
        ] {
            match buffers {
                // As `Request::builder().header(name, value)` does: both copied.
                Buffers::Fresh => h.insert(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(value).unwrap(),
                ),
                Buffers::Static => h.insert(
                    http::HeaderName::from_static(name),
                    http::HeaderValue::from_static(value),
                ),
            };
        }
    }
    request
}

static PAYLOAD_BYTES: [u8; PAYLOAD] = [b'x'; PAYLOAD];

fn post(buffers: Buffers) -> Request<Full<Bytes>> {
    let (uri, body) = match buffers {
        Buffers::Fresh => (POST_URL.parse().unwrap(), Bytes::from(PAYLOAD_BYTES.to_vec())),
        Buffers::Static => (Uri::from_static(POST_URL), Bytes::from_static(&PAYLOAD_BYTES)),
    };
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri;
    request
}

/// Sends `iters` requests made by `make` through `service`, one after the other.
fn run<S, B>(rt: &Runtime, service: &mut S, iters: u64, make: &dyn Fn() -> Request<B>) -> Duration
where
    S: Service<Request<B>>,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let request = make();
            let response = service.ready().await.unwrap().call(request).await.unwrap();
            black_box(response);
        }
        start.elapsed()
    })
}

/// Collect-and-clone: collect the body, then send through `Retry`.
fn run_collect<S>(
    rt: &Runtime,
    service: &mut S,
    iters: u64,
    make: &dyn Fn() -> Request<Full<Bytes>>,
) -> Duration
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let request = collect_request(make()).await;
            let response = service.ready().await.unwrap().call(request).await.unwrap();
            black_box(response);
        }
        start.elapsed()
    })
}

fn layer() -> FailoverLayer {
    FailoverLayer::new(Endpoints::dynamics(PRIMARY).unwrap())
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // The services. Each failover service gets its own layer (its own shared state).
    let mut bare = ready_service::<Full<Bytes>>();
    let mut passthrough =
        FailoverLayer::new(Endpoints::dynamics("https://fabrikam.api.crm.dynamics.com").unwrap())
            .layer(ready_service::<ReplayBody<Full<Bytes>>>());
    let mut routed = layer().layer(ready_service::<ReplayBody<Full<Bytes>>>());
    let mut routed_h = layer().layer(ready_service::<ReplayBody<Full<Bytes>>>());
    let mut wrapped = layer().layer(ready_service::<ReplayBody<Full<Bytes>>>());
    let mut wrapped_nl = FailoverLayer::builder(Endpoints::dynamics(PRIMARY).unwrap())
        .data_loss_report(false)
        .build()
        .unwrap()
        .layer(ready_service::<ReplayBody<Full<Bytes>>>());
    let mut retry = RetryLayer::new(CollectAndClone::once()).layer(ready_service::<Full<Bytes>>());
    let mut floor = floor::Floor::new(ready_service::<Full<Bytes>>(), "contoso.api.crm.dynamics.com");
    let mut bare2 = bare.clone();
    let mut bare3 = bare.clone();

    let fresh_get = || get(Buffers::Fresh, false);
    let fresh_get_h = || get(Buffers::Fresh, true);
    let fresh_post = || post(Buffers::Fresh);

    let profiling = std::env::var_os("BENCH_ONLY").is_some();

    // ---- sizes of what every call moves by value ----
    if !profiling {
        let inner_call = {
            let mut inner = ready_service::<ReplayBody<Full<Bytes>>>();
            std::mem::size_of_val(&inner.call(Request::new(ReplayBody::plain(Full::new(Bytes::new())))))
        };
        rt.block_on(passthrough.ready()).unwrap();
        let future = passthrough.call(fresh_get());
        println!("\n== {GROUP}: sizes in bytes");
        println!(
            "{:<52} {:>6}",
            "ResponseFuture (what Failover::call returns)",
            std::mem::size_of_val(&future)
        );
        println!(
            "{:<52} {:>6}",
            "inner service's future (request with a ReplayBody)", inner_call
        );
        println!(
            "{:<52} {:>6}",
            "Request<Full<Bytes>>",
            std::mem::size_of::<Request<Full<Bytes>>>()
        );
        println!(
            "{:<52} {:>6}",
            "Request<ReplayBody<Full<Bytes>>>",
            std::mem::size_of::<Request<ReplayBody<Full<Bytes>>>>()
        );
        println!(
            "{:<52} {:>6}",
            "Response<Full<Bytes>> (what the bare service answers)",
            std::mem::size_of::<http::Response<Full<Bytes>>>()
        );
        println!(
            "{:<52} {:>6}",
            "Response<ResponseBody<Full<Bytes>>> (the layer's)",
            std::mem::size_of::<http::Response<tower_failover::ResponseBody<Full<Bytes>>>>()
        );
        drop(future);
    }

    // ---- allocation counts (before the timed runs; counting is off while timing) ----
    const N: u64 = 10_000;
    let per_call = |f: &mut dyn FnMut(u64) -> Duration| -> f64 {
        f(2 * N); // warm: the first call hands the prober over, the ledger reaches steady state
        let (_, allocs) = count_allocs(|| f(N));
        allocs as f64 / N as f64
    };
    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    for buffers in [Buffers::Fresh, Buffers::Static]
        .into_iter()
        .filter(|_| !profiling)
    {
        let tag = if buffers == Buffers::Fresh {
            "fresh"
        } else {
            "static"
        };
        let g = move || get(buffers, false);
        let gh = move || get(buffers, true);
        let p = move || post(buffers);
        let base_get = per_call(&mut |i| run(&rt, &mut bare, i, &g));
        let base_get_h = per_call(&mut |i| run(&rt, &mut bare, i, &gh));
        let base_post = per_call(&mut |i| run(&rt, &mut bare, i, &p));
        let mut add =
            |name: &str, value: f64, base: f64| rows.push((format!("{name} [{tag}]"), value, value - base));
        add("bare_get", base_get, base_get);
        add(
            "passthrough_get",
            per_call(&mut |i| run(&rt, &mut passthrough, i, &g)),
            base_get,
        );
        add(
            "routed_get",
            per_call(&mut |i| run(&rt, &mut routed, i, &g)),
            base_get,
        );
        add(
            "floor_get",
            per_call(&mut |i| run(&rt, &mut floor, i, &g)),
            base_get,
        );
        add("bare_get_headers", base_get_h, base_get_h);
        add(
            "routed_get_headers",
            per_call(&mut |i| run(&rt, &mut routed_h, i, &gh)),
            base_get_h,
        );
        add("bare_post_4k", base_post, base_post);
        add(
            "failover_post_4k",
            per_call(&mut |i| run(&rt, &mut wrapped, i, &p)),
            base_post,
        );
        add(
            "failover_post_4k_no_ledger",
            per_call(&mut |i| run(&rt, &mut wrapped_nl, i, &p)),
            base_post,
        );
        add(
            "collect_clone_post_4k",
            per_call(&mut |i| run_collect(&rt, &mut retry, i, &p)),
            base_post,
        );
    }
    println!("\n== {GROUP}: heap allocations per call (counting allocator, {N} calls each)");
    println!(
        "{:<42} {:>12} {:>22}",
        "variant [buffers]", "allocs/call", "added vs its bare"
    );
    for (name, value, added) in &rows {
        println!("{name:<42} {value:>12.2} {added:>22.2}");
    }

    // ---- timing: criterion, then an interleaved A/B check ----
    let mut variants: Vec<(&str, &str, Runner<'_>)> = vec![
        (
            "bare_get",
            "bare_get",
            Box::new(|i| run(&rt, &mut bare, i, &fresh_get)),
        ),
        (
            "passthrough_get",
            "bare_get",
            Box::new(|i| run(&rt, &mut passthrough, i, &fresh_get)),
        ),
        (
            "routed_get",
            "bare_get",
            Box::new(|i| run(&rt, &mut routed, i, &fresh_get)),
        ),
        (
            "floor_get",
            "bare_get",
            Box::new(|i| run(&rt, &mut floor, i, &fresh_get)),
        ),
        (
            "bare_get_headers",
            "bare_get_headers",
            Box::new(|i| run(&rt, &mut bare2, i, &fresh_get_h)),
        ),
        (
            "routed_get_headers",
            "bare_get_headers",
            Box::new(|i| run(&rt, &mut routed_h, i, &fresh_get_h)),
        ),
        (
            "bare_post_4k",
            "bare_post_4k",
            Box::new(|i| run(&rt, &mut bare3, i, &fresh_post)),
        ),
        (
            "failover_post_4k",
            "bare_post_4k",
            Box::new(|i| run(&rt, &mut wrapped, i, &fresh_post)),
        ),
        (
            "failover_post_4k_no_ledger",
            "bare_post_4k",
            Box::new(|i| run(&rt, &mut wrapped_nl, i, &fresh_post)),
        ),
        (
            "collect_clone_post_4k",
            "bare_post_4k",
            Box::new(|i| run_collect(&rt, &mut retry, i, &fresh_post)),
        ),
    ];

    // `BENCH_ONLY=<variant>`: run one variant and exit, for a profiler: for 5 seconds, or for
    // exactly `BENCH_CALLS` calls (e.g. under `valgrind --tool=callgrind`, to count
    // instructions per call, which the noise of a busy machine does not touch).
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let (_, _, f) = variants
            .iter_mut()
            .find(|v| v.0 == only)
            .expect("no such variant");
        if let Some(calls) = std::env::var("BENCH_CALLS").ok().and_then(|n| n.parse().ok()) {
            f(calls);
            return;
        }
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            f(100_000);
        }
        return;
    }

    let mut c = criterion();
    if !quick() {
        let mut group = c.benchmark_group(GROUP);
        bench_variants(&mut group, GROUP, &mut variants);
        group.finish();
    }
    let pairs: Vec<(&str, &str)> = variants
        .iter()
        .filter(|(n, b, _)| n != b)
        .map(|(n, b, _)| (*n, *b))
        .chain([("failover_post_4k", "collect_clone_post_4k")])
        .collect();
    print_criterion_ratios(GROUP, &pairs);

    let rows = interleaved(&mut variants, 21, 20_000);
    print_interleaved(GROUP, &rows);
    let find = |n: &str| {
        rows.iter()
            .find(|r| r.name == n)
            .map(|r| r.median_ns)
            .unwrap_or(f64::NAN)
    };
    println!(
        "{:<34} {:>14} {:>26} {:>7.3}x",
        "failover_post_4k",
        fmt_ns(find("failover_post_4k")),
        "collect_clone_post_4k",
        find("failover_post_4k") / find("collect_clone_post_4k")
    );
    println!(
        "passthrough_get - bare_get = {:+.1} ns; routed_get - bare_get = {:+.1} ns; floor_get - bare_get = {:+.1} ns",
        find("passthrough_get") - find("bare_get"),
        find("routed_get") - find("bare_get"),
        find("floor_get") - find("bare_get")
    );
    c.final_summary();
}
