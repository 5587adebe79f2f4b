//! Disaster-recovery failover for any tower HTTP client.
//!
//! `tower-failover` gives any `Service<http::Request<B>>` (hyper-util's client, a tower
//! stack, reqwest through its middleware) the failover of the Dynamics 365 online SDK, for
//! any API with a primary and an alternate endpoint: when a call finds the primary down it
//! switches every later call to the alternate, re-sends the failed call there through a
//! replayable body when that is safe, and tells the application with `SwitchRequired` and
//! `Switched` events.
//!
//! # Flow of one call
//!
//! ```text
//! request ──> does its authority name the primary or the alternate? ── no ──> inner service, untouched
//!               │ yes
//!               v
//!          rewrite URI authority (and Host) to the active endpoint
//!          decide whether a re-send is possible; only then keep the body for replay
//!               │
//!               v
//!          attempt 1 ──> classify (response, or error with its source chain)
//!               │ success / other failure ─────────────────────> returned as is
//!               │ throttled ──> wait (Retry-After or backoff), retry on the same endpoint
//!               │ endpoint down
//!               v
//!          compare-and-switch on the shared state (SwitchRequired, Switched)
//!          may it be re-sent? provably not processed: yes; else only if idempotent (per policy)
//!               │ no ──> FailoverError (kind, possibly_applied, cause)
//!               v
//!          attempt 2 on the new active endpoint (after poll_ready) ──> classify ──> returned
//! ```
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_failover::{Endpoints, FailoverLayer, ReplayBody, Side};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
//!     .on_switched(|event| println!("{event}"))
//!     .build()
//!     .unwrap();
//! let handle = layer.handle();
//!
//! // Stands in for hyper-util's client: the primary answers 503, the alternate 200.
//! let client = tower::service_fn(|request: http::Request<ReplayBody<Full<Bytes>>>| async move {
//!     let status = if request.uri().host() == Some("contoso.api.crm.dynamics.com") { 503 } else { 200 };
//!     Ok::<_, Infallible>(http::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap())
//! });
//! let mut service = ServiceBuilder::new().layer(layer).service(client);
//!
//! let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
//!     .body(Full::new(Bytes::new()))
//!     .unwrap();
//! let response = service.ready().await.unwrap().call(request).await.unwrap();
//! assert_eq!(response.status(), 200);
//! assert_eq!(handle.active(), Side::Alternate);
//! # }
//! ```
//!
//! # Three ways in
//!
//! * **A tower layer**, as above: [`FailoverLayer`] wraps any `Service<http::Request<B>>`
//!   whose body is [`ReplayBody<B>`] (hyper-util's legacy client, a tower stack, axum's
//!   outbound calls). Put tower's `TimeoutLayer` *inside* it for per-attempt timeouts that
//!   fail over, and any timeout *outside* it for an overall limit.
//! * **reqwest**, with the `reqwest` feature: `FailoverLayer::middleware` gives a
//!   `FailoverMiddleware` for `reqwest_middleware::ClientBuilder::with`, sharing the layer's
//!   switch state, policies and ledger, and replaying streaming `reqwest::Body`s.
//! * **Any language**, through the proxy example (`cargo run --example failover_proxy --
//!   --demo`; its binary reaches `https` and `http` endpoints, trusting the public roots it
//!   carries and a private CA given with `--ca-file`, and its `run_proxy` takes any other
//!   connector): programs point at the proxy, which forwards to the active
//!   endpoint and serves `GET /_failover/status` and Server-Sent Events of every switch on
//!   `GET /_failover/events`.
//!
//! # Features
//!
//! | feature | gives |
//! |---|---|
//! | `hyper-util` (default) | the default classifier recognises hyper-util's connect errors |
//! | `h2` (default) | the default classifier recognises HTTP/2 refusals and stream resets |
//! | `reqwest` | `FailoverMiddleware` for reqwest-middleware |
//! | `tower-http` | `TowerHttpClassifier`: a tower-http `ClassifyResponse` as the classifier |
//! | `metrics` | `FailoverHandle::publish_metrics` (and `publish_metrics_as`, for two layers with one primary) through the `metrics` facade |
//!
//! See the README for the events, what "possibly applied" means, the data-loss report,
//! failback, and how to run the demo.
#![deny(missing_docs, unsafe_code)]
#![warn(rust_2018_idioms)]

mod body;
mod budget;
mod classify;
mod coarse_clock;
mod counters;
mod endpoint;
mod engine;
mod error;
mod failback;
mod future;
mod layer;
mod ledger;
#[cfg(feature = "metrics")]
mod metrics_publishing;
mod packed_headers;
pub mod policy;
mod replay;
#[cfg(feature = "reqwest")]
mod reqwest;
mod service;
mod state;
mod throttle;
#[cfg(feature = "tower-http")]
mod tower_http;

pub use body::ResponseBody;
pub use budget::RetryBudget;
pub use classify::{
    classify_error, fault_code, parse_code, Classifier, DefaultClassifier, DownKind, Outcome, Verdict,
    FAILOVER_FAULT_CODE,
};
pub use counters::CountersSnapshot;
pub use endpoint::{Endpoint, Endpoints, Side};
pub use error::{
    AttemptError, BoxError, ConfigError, DeadlineElapsed, FailoverError, FailoverErrorKind, NotResent,
};
pub use failback::Failback;
pub use future::ResponseFuture;
pub use layer::{FailoverLayer, FailoverLayerBuilder, MAX_REPLAY_CAP};
pub use ledger::{
    DataLossReport, WriteKey, WriteOutcome, WriteRecord, DEFAULT_LEDGER_CAPACITY, DEFAULT_REPLICATION_WINDOW,
    MAX_LEDGER_CAPACITY,
};
pub use policy::RetryPolicy;
pub use replay::{ReplayBody, ReplayHandle, DEFAULT_REPLAY_CAP};
#[cfg(feature = "reqwest")]
pub use reqwest::FailoverMiddleware;
pub use service::Failover;
pub use state::{EndpointState, FailoverHandle, SwitchCause, SwitchEvent};
pub use throttle::{is_service_protection_code, parse_retry_after, SERVICE_PROTECTION_CODES};
#[cfg(feature = "tower-http")]
pub use tower_http::TowerHttpClassifier;

/// The README's code blocks, compiled and run as doc-tests so the README stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
