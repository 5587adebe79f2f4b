//! Shared by the benches: a counting global allocator, the collect-and-clone retry policy the
//! benches compare against, an interleaved A/B timer that is robust to a noisy machine, and
//! the ratio table printed at the end of each bench from criterion's own medians.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::Body;
use http_body_util::{BodyExt, Full};

// ---------------------------------------------------------------------------------------------
// Counting allocator
// ---------------------------------------------------------------------------------------------

/// Wraps the system allocator. While counting is on it counts allocation calls (`alloc`,
/// `alloc_zeroed`, `realloc`) and tracks live bytes and their high-water mark. While off, the
/// only cost is one relaxed load per call, so timed runs are not skewed by the counters.
pub struct Counting;

static ENABLED: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicI64 = AtomicI64::new(0);
static PEAK: AtomicI64 = AtomicI64::new(0);

#[global_allocator]
static GLOBAL: Counting = Counting;

fn grew(bytes: usize) {
    let now = LIVE.fetch_add(bytes as i64, Ordering::Relaxed) + bytes as i64;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() && ENABLED.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc_zeroed(layout);
        if !ptr.is_null() && ENABLED.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        if ENABLED.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = System.realloc(ptr, layout, new_size);
        if !new.is_null() && ENABLED.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub((layout.size() - new_size) as i64, Ordering::Relaxed);
            }
        }
        new
    }
}

/// Runs `f` with counting on; returns its result and the number of allocation calls made
/// (by every thread) while it ran.
pub fn count_allocs<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = ALLOCS.load(Ordering::SeqCst);
    ENABLED.store(true, Ordering::SeqCst);
    let result = f();
    ENABLED.store(false, Ordering::SeqCst);
    (result, ALLOCS.load(Ordering::SeqCst) - before)
}

/// Runs `f` with counting on; returns its result and the high-water mark of live heap bytes
/// (of the whole process) above the level at the start. Frees of memory allocated before the
/// start lower the level, so this is "the most extra memory held at once while `f` ran".
pub fn peak_bytes<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let start = LIVE.load(Ordering::SeqCst);
    PEAK.store(start, Ordering::SeqCst);
    ENABLED.store(true, Ordering::SeqCst);
    let result = f();
    ENABLED.store(false, Ordering::SeqCst);
    let peak = PEAK.load(Ordering::SeqCst);
    (result, (peak - start).max(0) as u64)
}

// ---------------------------------------------------------------------------------------------
// The baseline users write today: collect the body, then let tower's `Retry` clone the request
// ---------------------------------------------------------------------------------------------

/// A tower retry policy that re-sends a failed call once, by cloning the request. The body
/// must already be collected into `Full<Bytes>` (see [`collect_request`]) to be cloneable.
#[derive(Clone, Copy)]
pub struct CollectAndClone {
    pub attempts_left: usize,
}

impl CollectAndClone {
    pub fn once() -> Self {
        CollectAndClone { attempts_left: 1 }
    }
}

impl<Res, E> tower::retry::Policy<Request<Full<Bytes>>, Res, E> for CollectAndClone {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _request: &mut Request<Full<Bytes>>,
        result: &mut Result<Res, E>,
    ) -> Option<Self::Future> {
        match result {
            Err(_) if self.attempts_left > 0 => {
                self.attempts_left -= 1;
                Some(std::future::ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, request: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
        let mut clone = Request::new(request.body().clone());
        *clone.method_mut() = request.method().clone();
        *clone.uri_mut() = request.uri().clone();
        *clone.version_mut() = request.version();
        *clone.headers_mut() = request.headers().clone();
        *clone.extensions_mut() = request.extensions().clone();
        Some(clone)
    }
}

/// The first half of collect-and-clone: reads the whole body into one `Bytes`.
pub async fn collect_request<B>(request: Request<B>) -> Request<Full<Bytes>>
where
    B: Body,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    Request::from_parts(parts, Full::new(bytes))
}

/// Reads a body to its end, dropping every frame, as a client sending it would.
pub async fn drain<B: Body + Unpin>(mut body: B) {
    while let Some(Ok(_frame)) = body.frame().await {}
}

// ---------------------------------------------------------------------------------------------
// Interleaved A/B timing
// ---------------------------------------------------------------------------------------------

/// A measured variant: runs `iters` calls and returns how long they took.
pub type Runner<'a> = Box<dyn FnMut(u64) -> Duration + 'a>;

/// Runs each variant under criterion in `group` (set up by the caller: sample size,
/// throughput), recording that it ran so its median can be read back.
pub fn bench_variants(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    group_name: &str,
    variants: &mut [(&str, &str, Runner<'_>)],
) {
    for (name, _, f) in variants.iter_mut() {
        let name: &str = name;
        group.bench_function(name, |b| {
            ran(group_name, name);
            b.iter_custom(&mut *f)
        });
    }
}

/// Times every variant `rounds` times, interleaved (the order rotates each round), so slow
/// spells caused by other work on the machine hit every variant alike. For each variant:
/// the median time per call, and the median over rounds of its ratio to the variant named
/// `baseline` in the same round.
pub struct Paired {
    pub name: String,
    pub median_ns: f64,
    pub baseline: String,
    pub ratio: f64,
}

#[allow(clippy::needless_range_loop)] // indexes two tables by (variant, round)
pub fn interleaved(variants: &mut [(&str, &str, Runner<'_>)], rounds: usize, iters: u64) -> Vec<Paired> {
    let n = variants.len();
    // per_round[variant][round]: ns per call.
    let mut per_round = vec![vec![0f64; rounds]; n];
    for round in 0..rounds {
        for k in 0..n {
            let i = (round + k) % n;
            let elapsed = (variants[i].2)(iters);
            per_round[i][round] = elapsed.as_nanos() as f64 / iters as f64;
        }
    }
    let index_of = |name: &str| variants.iter().position(|v| v.0 == name);
    (0..n)
        .map(|i| {
            let baseline = variants[i].1;
            let b = index_of(baseline).expect("baseline is one of the variants");
            let ratios: Vec<f64> = (0..rounds).map(|r| per_round[i][r] / per_round[b][r]).collect();
            Paired {
                name: variants[i].0.to_string(),
                median_ns: median(per_round[i].clone()),
                baseline: baseline.to_string(),
                ratio: median(ratios),
            }
        })
        .collect()
}

pub fn print_interleaved(title: &str, rows: &[Paired]) {
    println!("\n== {title}: interleaved A/B (median of per-round values)");
    println!(
        "{:<34} {:>14} {:>26} {:>8}",
        "variant", "median/call", "baseline", "ratio"
    );
    for row in rows {
        println!(
            "{:<34} {:>14} {:>26} {:>7.3}x",
            row.name,
            fmt_ns(row.median_ns),
            row.baseline,
            row.ratio
        );
    }
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The value at quantile `q` (0..=1), nearest rank.
pub fn quantile(mut values: Vec<f64>, q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

pub fn fmt_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.3} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.3} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

pub fn fmt_bytes(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.2} MiB ({bytes} B)", bytes as f64 / (1u64 << 20) as f64)
    } else if bytes >= 1 << 10 {
        format!("{:.2} KiB ({bytes} B)", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

// ---------------------------------------------------------------------------------------------
// Ratios from criterion's medians
// ---------------------------------------------------------------------------------------------

static RAN: Mutex<BTreeMap<String, ()>> = Mutex::new(BTreeMap::new());

/// Marks `group/id` as run in this process (call it from the bench closure), so the ratio
/// table never mixes in a stale result from an earlier run.
pub fn ran(group: &str, id: &str) {
    RAN.lock().unwrap().insert(format!("{group}/{id}"), ());
}

fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("criterion")
}

/// Criterion's median estimate (ns per iteration) for `group/id`, if it ran in this process.
pub fn criterion_median(group: &str, id: &str) -> Option<f64> {
    let key = format!("{group}/{id}");
    if !RAN.lock().unwrap().contains_key(&key) {
        return None;
    }
    let path = criterion_dir().join(&key).join("new").join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"].as_f64()
}

/// Prints `variant / baseline` from criterion's medians, for the pairs that ran.
pub fn print_criterion_ratios(group: &str, pairs: &[(&str, &str)]) {
    println!("\n== {group}: criterion medians and ratios");
    println!(
        "{:<34} {:>14} {:>26} {:>14} {:>8}",
        "variant", "median", "baseline", "its median", "ratio"
    );
    for (variant, baseline) in pairs {
        let (Some(v), Some(b)) = (
            criterion_median(group, variant),
            criterion_median(group, baseline),
        ) else {
            continue;
        };
        println!(
            "{:<34} {:>14} {:>26} {:>14} {:>7.3}x",
            variant,
            fmt_ns(v),
            baseline,
            fmt_ns(b),
            v / b
        );
    }
}

/// `BENCH_QUICK=1` skips the criterion runs and prints only the interleaved A/B tables (for a
/// quick check while working on the code).
pub fn quick() -> bool {
    std::env::var_os("BENCH_QUICK").is_some()
}

/// The criterion configuration of the benches: short by default, overridable on the command
/// line (`-- --warm-up-time 1 --measurement-time 3`).
pub fn criterion() -> criterion::Criterion {
    criterion::Criterion::default()
        .without_plots()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args()
}
