//! An axum application that calls its upstream API through a failover client.
//!
//! The application takes orders: `POST /orders` creates one upstream (a Dynamics-style
//! `POST /api/data/v9.2/salesorders`), `GET /orders/{id}` reads one back. The upstream is a
//! primary/alternate pair; every upstream call goes through one `Failover<hyper-util Client>`
//! kept in axum's `State`, so when the primary goes down the handlers carry on against the
//! alternate without knowing.
//!
//! What may be sent twice is decided per route, next to the route: `route_layer` puts a
//! [`RetryPolicy`] in the *incoming* request's extensions, and the handler copies it onto the
//! *outgoing* upstream request, where the failover layer looks for it. Creating an order is
//! never re-sent (a second POST could create a second order); reading one may be.
//!
//! ```text
//! cargo run --example axum_app
//! ```
//!
//! `main` runs the application against two loopback servers behind the Dynamics names, makes
//! a few requests with a plain hyper client and prints what the application answered. The
//! test `tests/axum_app.rs` includes this file and drives [`app`] the same way.

// `main` and its helpers are dead code when the test includes this file; the test drives the
// pub functions instead.
#![cfg_attr(test, allow(dead_code))]

// The demo shares the test servers rather than growing a second copy of them. `pub`, so the
// test that includes this file uses this copy instead of loading the file twice.
#[path = "../tests/support/mod.rs"]
pub mod support;

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tower::timeout::{Timeout, TimeoutLayer};
use tower::{ServiceBuilder, ServiceExt};
use tower_failover::{
    ConfigError, DefaultClassifier, Endpoints, Failover, FailoverError, FailoverHandle, FailoverLayer,
    ReplayBody, RetryPolicy, Side, SwitchEvent,
};

use support::{Behavior, Pair, ALTERNATE_HOST, PRIMARY_URL};

/// The body of upstream requests. The handlers already hold the whole incoming body (an
/// order is small JSON), so a `Full` is all the client needs.
pub type UpstreamBody = Full<Bytes>;

/// The upstream client: hyper-util's client, a time limit per attempt, and failover around
/// both. Generic over the connector so the test can resolve the Dynamics names to loopback
/// and a real deployment can pass an HTTPS connector.
pub type Upstream<C> = Failover<Timeout<Client<C, ReplayBody<UpstreamBody>>>, DefaultClassifier>;

/// Where the upstream keeps orders (Dynamics 365 Web API style).
const ORDERS: &str = "/api/data/v9.2/salesorders";

/// Builds the upstream client and returns the handle on its switch state.
///
/// The time limit sits *inside* the failover layer, so it bounds each attempt: a primary that
/// hangs fails its attempt with `tower::timeout::error::Elapsed`, which the layer counts as
/// the endpoint being down (switch, and re-send if the route allows). Outside the layer it
/// would bound the whole call, re-send included, and the layer would never see the outage.
pub fn upstream_client<C>(
    connector: C,
    endpoints: Endpoints,
    attempt_timeout: Duration,
) -> Result<(Upstream<C>, FailoverHandle), ConfigError>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let layer = FailoverLayer::builder(endpoints).build()?;
    let handle = layer.handle();
    let client = Client::builder(TokioExecutor::new()).build(connector);
    let upstream = ServiceBuilder::new()
        .layer(layer)
        .layer(TimeoutLayer::new(attempt_timeout))
        .service(client);
    Ok((upstream, handle))
}

/// What the handlers share: the upstream client (cloned per request; every clone shares one
/// switch state) and the handle, for the `/upstream` status route.
#[derive(Clone)]
pub struct AppState<C> {
    pub upstream: Upstream<C>,
    pub handle: FailoverHandle,
}

impl<C> AppState<C> {
    /// The handle is taken from the client itself, so the two cannot belong to different
    /// layers.
    pub fn new(upstream: Upstream<C>) -> Self {
        let handle = upstream.handle();
        AppState { upstream, handle }
    }

    /// An absolute upstream URI on the *primary*: the failover layer only routes requests
    /// that name one of its two endpoints, and sends them to whichever is active.
    fn upstream_uri(&self, path: &str) -> String {
        format!("{}{path}", self.handle.endpoints().primary())
    }
}

/// The application's routes, each with its re-send policy.
///
/// `route_layer(Extension(..))` applies only to requests that matched the route, so a policy
/// cannot leak onto a 404 or onto another route. It lands on the incoming request; the
/// handlers copy it to the upstream request (see [`call_upstream`]).
pub fn app<C>(state: AppState<C>) -> Router
where
    C: Connect + Clone + Send + Sync + 'static,
{
    Router::new()
        // Creating an order must never reach the upstream twice: not after a timeout, not
        // with an Idempotency-Key, not after a 429.
        .route(
            "/orders",
            post(create_order::<C>).route_layer(Extension(RetryPolicy::never())),
        )
        // Reading is safe to repeat, so a read that fails on the primary is re-sent on the
        // alternate; writes on this route (there are none today) would not be.
        .route(
            "/orders/{id}",
            get(read_order::<C>).route_layer(Extension(RetryPolicy::reads_only())),
        )
        .route("/upstream", get(upstream_status::<C>))
        .with_state(state)
}

/// `POST /orders`: forwards the order to the upstream.
///
/// `Extension<RetryPolicy>` is required, not optional: a route that calls the upstream
/// without stating its policy answers 500 ("missing request extension") at once, instead of
/// silently falling back to the layer's default.
async fn create_order<C>(
    State(state): State<AppState<C>>,
    Extension(policy): Extension<RetryPolicy>,
    headers: HeaderMap,
    order: Bytes,
) -> Result<Response, UpstreamFailure>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(state.upstream_uri(ORDERS))
        .header(http::header::CONTENT_TYPE, "application/json");
    // A caller's key names this write in the layer's data-loss report. It does not make the
    // POST re-sendable here: the route's `never` policy wins over the key.
    if let Some(key) = headers.get("idempotency-key") {
        request = request.header("idempotency-key", key);
    }
    let request = request.body(Full::new(order)).map_err(UpstreamFailure::request)?;
    let (status, upstream) = call_upstream(&state, policy, request).await?;
    let status = if status.is_success() {
        StatusCode::CREATED
    } else {
        status
    };
    Ok((
        status,
        Json(json!({ "created": status.is_success(), "upstream": upstream })),
    )
        .into_response())
}

/// `GET /orders/{id}`: reads one order from the upstream.
async fn read_order<C>(
    State(state): State<AppState<C>>,
    Extension(policy): Extension<RetryPolicy>,
    Path(id): Path<String>,
) -> Result<Response, UpstreamFailure>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    // The id goes into the upstream URI, so it is checked rather than trusted.
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Ok((StatusCode::BAD_REQUEST, Json(json!({ "error": "bad order id" }))).into_response());
    }
    let request = Request::get(state.upstream_uri(&format!("{ORDERS}({id})")))
        .body(Full::new(Bytes::new()))
        .map_err(UpstreamFailure::request)?;
    let (status, upstream) = call_upstream(&state, policy, request).await?;
    Ok((status, Json(json!({ "order_id": id, "upstream": upstream }))).into_response())
}

/// `GET /upstream`: which upstream endpoint the application is using.
async fn upstream_status<C>(State(state): State<AppState<C>>) -> Json<Value> {
    let handle = &state.handle;
    Json(json!({
        "side": side_name(handle.active()),
        "endpoint": handle.active_endpoint().to_string(),
        "generation": handle.generation(),
    }))
}

/// Sends one upstream request with the route's policy, and reads the answer as JSON.
///
/// The policy is copied onto the outgoing request because that is the request the layer
/// sees; extensions of the incoming server request never reach the client by themselves.
async fn call_upstream<C>(
    state: &AppState<C>,
    policy: RetryPolicy,
    mut request: Request<UpstreamBody>,
) -> Result<(StatusCode, Value), UpstreamFailure>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    request.extensions_mut().insert(policy);
    // A clone per request: `oneshot` needs the service by value, and clones are cheap (the
    // client's pool and the switch state are shared).
    let response = state
        .upstream
        .clone()
        .oneshot(request)
        .await
        .map_err(UpstreamFailure::Call)?;
    let status = response.status();
    // The upstream answered, so the request was applied (or refused) there; a body cut off
    // now leaves the outcome unknown to the caller.
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| UpstreamFailure::BodyCut(e.to_string()))?
        .to_bytes();
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    Ok((status, value))
}

/// Why an upstream call gave no usable answer; turned into a 502 or 503 with a JSON body.
#[derive(Debug)]
pub enum UpstreamFailure {
    /// The failover client gave up (both endpoints down, or a re-send was not allowed).
    Call(FailoverError),
    /// The upstream's answer was cut off mid-body.
    BodyCut(String),
    /// The handler built a bad request (a bug, not an outage).
    Request(String),
}

impl UpstreamFailure {
    fn request(error: http::Error) -> Self {
        UpstreamFailure::Request(error.to_string())
    }
}

impl IntoResponse for UpstreamFailure {
    fn into_response(self) -> Response {
        let (possibly_applied, kind, detail, resent, not_resent) = match &self {
            UpstreamFailure::Call(error) => (
                error.possibly_applied(),
                error.kind().name(),
                error.to_string(),
                error.was_resent(),
                error.not_resent_because().map(|reason| reason.to_string()),
            ),
            UpstreamFailure::BodyCut(detail) => (true, "body_cut_off", detail.clone(), false, None),
            UpstreamFailure::Request(detail) => {
                let body = json!({ "error": "bad upstream request", "detail": detail });
                return (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response();
            }
        };
        // 502 when the upstream may have acted on the request: the caller must look before
        // trying again. 503 when it provably did not: trying later is safe.
        let status = if possibly_applied {
            StatusCode::BAD_GATEWAY
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let advice = if possibly_applied {
            "the upstream may have applied the request; check before sending it again"
        } else {
            "the upstream did not apply the request; it is safe to send it again later"
        };
        let body = json!({
            "error": "upstream call failed",
            "kind": kind,
            "possibly_applied": possibly_applied,
            "resent": resent,
            "not_resent_because": not_resent,
            "advice": advice,
            "detail": detail,
        });
        (status, Json(body)).into_response()
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Primary => "primary",
        Side::Alternate => "alternate",
    }
}

// ----- the demonstration -------------------------------------------------------------------

/// Long enough for a loopback answer, short enough that the hung primary costs little.
const DEMO_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(300);
const DEMO_DEADLINE: Duration = Duration::from_secs(9);

type BoxError = Box<dyn Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    match tokio::time::timeout(DEMO_DEADLINE, demo()).await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => {
            eprintln!("demo failed: {error}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("demo did not finish within {DEMO_DEADLINE:?}");
            ExitCode::FAILURE
        }
    }
}

async fn demo() -> Result<(), BoxError> {
    let mut pair = Pair::start().await;
    let (upstream, handle) = upstream_client(
        pair.resolver.connector(),
        Endpoints::dynamics(PRIMARY_URL)?,
        DEMO_ATTEMPT_TIMEOUT,
    )?;
    let mut events = handle.events();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let router = app(AppState::new(upstream));
    tokio::spawn(async move { axum::serve(listener, router).await });
    println!("application listening on {base}");
    println!(
        "upstream primary {} / alternate {}\n",
        pair.primary.addr, pair.alternate.addr
    );

    // The application's own clients know nothing of failover: a plain hyper client.
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let order = r#"{"customer":"Fourth Coffee","lines":[{"product":"beans","quantity":12}]}"#;

    println!("-- both upstream endpoints healthy");
    show(&client, Method::GET, &format!("{base}/orders/42"), None).await?;
    show(&client, Method::POST, &format!("{base}/orders"), Some(order)).await?;
    print_events(&mut events);

    println!("\n-- the upstream primary is killed; a read is re-sent on the alternate");
    pair.primary.kill().await;
    show(&client, Method::GET, &format!("{base}/orders/42"), None).await?;
    print_events(&mut events);

    println!("\n-- back on the primary, which now hangs; a write times out and is NOT re-sent");
    pair.restart_primary().await;
    pair.primary.set(Behavior::Delay(Duration::from_secs(3)));
    handle.fail_back();
    print_events(&mut events);
    let posts_before = posts(&pair);
    show(&client, Method::POST, &format!("{base}/orders"), Some(order)).await?;
    print_events(&mut events);
    // Give a wrongly re-sent POST time to arrive before saying none did.
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!(
        "POSTs received by the alternate ({ALTERNATE_HOST}) during that call: {}",
        posts(&pair) - posts_before
    );
    show(&client, Method::GET, &format!("{base}/upstream"), None).await?;
    Ok(())
}

/// Sends one request to the application and prints the answer.
async fn show(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    uri: &str,
    body: Option<&'static str>,
) -> Result<(), BoxError> {
    let mut request = Request::builder().method(method.clone()).uri(uri);
    if body.is_some() {
        request = request.header(http::header::CONTENT_TYPE, "application/json");
    }
    let request = request.body(Full::new(Bytes::from_static(body.unwrap_or("").as_bytes())))?;
    let response = client.request(request).await?;
    let status = response.status();
    let text = response.into_body().collect().await?.to_bytes();
    println!(
        "{method} {uri}\n   -> {status} {}",
        String::from_utf8_lossy(&text)
    );
    Ok(())
}

/// Prints the switch events raised since the last look. Read between steps rather than from
/// a task, so they print in order with the requests that caused them.
fn print_events(events: &mut tokio::sync::broadcast::Receiver<SwitchEvent>) {
    while let Ok(event) = events.try_recv() {
        println!("   event: {event}");
    }
}

fn posts(pair: &Pair) -> usize {
    pair.alternate
        .seen()
        .iter()
        .filter(|seen| seen.method == Method::POST)
        .count()
}
