//! A failover proxy, for programs in any language.
//!
//! The seed's SDK raises its switch events only to .NET applications; everything else "gets
//! no notification event". This proxy puts the failover client in front of them: a program
//! sends its plain HTTP calls to the proxy (`http://127.0.0.1:8080/api/data/v9.2/...`), the
//! proxy forwards each one to the active endpoint, and the program hears about switches over
//! Server-Sent Events, which every language can read.
//!
//! * every request except `/_failover/*` is forwarded, bodies streamed both ways;
//! * `GET /_failover/status`: the active endpoint, the generation, the counters, and the
//!   data-loss report of the latest switch, as JSON;
//! * `GET /_failover/events`: a `State` event on connecting, then one event per
//!   `SwitchRequired` / `Switched`, named so, with a JSON object as data;
//! * `X-Failover-Policy: never | reads-only | idempotent | by-method` on a request chooses
//!   whether it may be re-sent on the alternate (the proxy's stand-in for a Rust caller's
//!   `RetryPolicy` extension); it is not forwarded.
//!
//! ```text
//! cargo run --example failover_proxy -- --dynamics https://contoso.api.crm.dynamics.com --listen 127.0.0.1:8080
//! cargo run --example failover_proxy -- --primary https://api.example.com --alternate https://dr.example.net --ca-file corp-root.pem
//! cargo run --example failover_proxy -- --demo
//! ```
//!
//! `--demo` starts two loopback servers behind the Dynamics names, proxies to them, kills the
//! primary mid-way and prints the events it received over SSE.
//!
//! The binary reaches `https` and `http` endpoints alike ([`https_connector`]): it trusts the
//! public roots it carries (Mozilla's, through `webpki-roots`) and the certificates of
//! `--ca-file`, and checks each endpoint's certificate against the endpoint's own name, the
//! alternate's included. [`run_proxy`] takes any other connector.
//!
//! Connection upgrades (WebSocket) are not proxied: `Upgrade` is a per-hop header and is
//! dropped like the others.

// `main` and the demo are dead code when the test includes this file.
#![cfg_attr(test, allow(dead_code))]

// The demo shares the test servers rather than growing a second copy of them. `pub`, so the
// test that includes this file uses this copy instead of loading the file twice.
#[path = "../tests/support/mod.rs"]
pub mod support;

use std::convert::Infallible;
use std::error::Error;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{StatusCode, Uri, Version};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::stream::{self, Stream, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tower::timeout::Timeout;
use tower::ServiceExt;
use tower_failover::{
    ConfigError, CountersSnapshot, DataLossReport, DefaultClassifier, Endpoint, Endpoints, Failover,
    FailoverError, FailoverHandle, FailoverLayer, ReplayBody, RetryPolicy, Side, SwitchEvent, WriteOutcome,
    WriteRecord,
};

use support::{Pair, PRIMARY_URL};

type BoxError = Box<dyn Error + Send + Sync>;

/// The client sends axum's own request body type: the incoming body is handed on as it is,
/// so an upload streams through without being gathered first.
pub type ClientBody = ReplayBody<Body>;

/// The failover client the proxy forwards through, with a time limit on each attempt inside
/// the layer: an endpoint that accepts a request and then hangs is an outage the layer must
/// see to fail over (a limit outside it would only end the call).
pub type Upstream<C> = Failover<Timeout<Client<C, ClientBody>>, DefaultClassifier>;

/// How long one attempt may take by default before it counts as the endpoint being down.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// The request header that carries a per-request re-send policy.
pub const POLICY_HEADER: &str = "x-failover-policy";

/// Builds the failover client over `connector`, each attempt limited to `attempt_timeout`.
pub fn upstream<C>(
    connector: C,
    endpoints: Endpoints,
    attempt_timeout: Duration,
) -> Result<Upstream<C>, ConfigError>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let layer = FailoverLayer::builder(endpoints).build()?;
    let client = Client::builder(TokioExecutor::new()).build(connector);
    Ok(tower::Layer::layer(&layer, Timeout::new(client, attempt_timeout)))
}

/// A connector for `https` and `http` endpoints over `http`, the TCP connector (its resolver,
/// timeouts). It trusts the public roots compiled in (`webpki-roots`) and every certificate in
/// `ca_file` (PEM), for endpoints behind a private CA; each endpoint's certificate is checked
/// against its own name, so after a switch the alternate must present the alternate's.
pub fn https_connector<R>(
    mut http: HttpConnector<R>,
    ca_file: Option<&Path>,
) -> Result<HttpsConnector<HttpConnector<R>>, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let shown = path.display();
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| format!("--ca-file {shown}: {e}"))? {
            let cert = cert.map_err(|e| format!("--ca-file {shown}: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("--ca-file {shown}: a certificate it holds is not usable: {e}"))?;
            added += 1;
        }
        // An empty file (or one holding only a key) would leave the proxy trusting nothing
        // new, and every call to a private endpoint would fail over and fail again.
        if added == 0 {
            return Err(format!("--ca-file {shown}: no PEM certificate in it"));
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The TCP connector must accept `https` URIs and leave them to the TLS connector.
    http.enforce_http(false);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

/// Serves the proxy on `listener` until the server fails, with the default attempt timeout.
pub async fn run_proxy<C>(listener: TcpListener, endpoints: Endpoints, connector: C) -> Result<(), BoxError>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    run_proxy_with(listener, endpoints, connector, DEFAULT_ATTEMPT_TIMEOUT).await
}

/// Serves the proxy on `listener` until the server fails, each attempt limited to
/// `attempt_timeout`.
pub async fn run_proxy_with<C>(
    listener: TcpListener,
    endpoints: Endpoints,
    connector: C,
    attempt_timeout: Duration,
) -> Result<(), BoxError>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let app = router(upstream(connector, endpoints, attempt_timeout)?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// The proxy's routes: its two own endpoints, and everything else forwarded.
pub fn router<C>(upstream: Upstream<C>) -> Router
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let proxy = Proxy {
        handle: upstream.handle(),
        upstream,
    };
    Router::new()
        .route("/_failover/status", get(status::<C>))
        .route("/_failover/events", get(events::<C>))
        .fallback(forward::<C>)
        .with_state(proxy)
}

/// The handlers' state: the client (cloned per request; clones share the connection pool
/// and the switch state) and the handle on that state.
#[derive(Clone)]
struct Proxy<C> {
    upstream: Upstream<C>,
    handle: FailoverHandle,
}

// ----- forwarding --------------------------------------------------------------------------

/// Forwards one request to the active endpoint and streams the answer back.
async fn forward<C>(State(proxy): State<Proxy<C>>, request: Request) -> Response
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let (mut parts, body) = request.into_parts();
    let version = parts.version;
    // The upstream URI names the *primary* whatever is active: the layer routes any request
    // naming either endpoint to the one active when it is sent, so choosing stays in one
    // place and a switch between here and the send cannot send it to the wrong side.
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let uri: Uri = match format!("{}{path}", proxy.handle.endpoints().primary()).parse() {
        Ok(uri) => uri,
        Err(error) => return plain_error(StatusCode::BAD_REQUEST, &format!("bad request target: {error}")),
    };
    let policy = match parts
        .headers
        .remove(POLICY_HEADER)
        .map(|value| parse_policy(&value))
    {
        None => None,
        Some(Some(policy)) => Some(policy),
        Some(None) => {
            return plain_error(
                StatusCode::BAD_REQUEST,
                "x-failover-policy must be one of never, reads-only, idempotent, by-method",
            )
        }
    };
    strip_hop_by_hop(&mut parts.headers);
    // Without a Host the client writes the one of the endpoint it really calls; the client's
    // Host (the proxy's own address) would be wrong on either endpoint.
    parts.headers.remove(header::HOST);
    // The server side already answered any `100-continue` as it read the body.
    parts.headers.remove(header::EXPECT);

    let mut outgoing = http::Request::new(body);
    *outgoing.method_mut() = parts.method;
    *outgoing.uri_mut() = uri;
    // The client speaks HTTP/1.1 whatever the caller spoke to the proxy.
    *outgoing.version_mut() = Version::HTTP_11;
    *outgoing.headers_mut() = parts.headers;
    // The server's extensions (hyper's upgrade handle, axum's bookkeeping) stay behind; only
    // the policy travels, since that is what the layer reads.
    if let Some(policy) = policy {
        outgoing.extensions_mut().insert(policy);
    }

    match proxy.upstream.clone().oneshot(outgoing).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            // The version is per hop too: answer in the caller's, not the endpoint's (an
            // HTTP/1.0 endpoint would otherwise turn the caller's keep-alive off).
            parts.version = version;
            // `Body::new` wraps the upstream body: frames go to the caller as they arrive.
            Response::from_parts(parts, Body::new(body))
        }
        Err(error) => failure(&error, &proxy.handle),
    }
}

fn parse_policy(value: &HeaderValue) -> Option<RetryPolicy> {
    match value.to_str().ok()?.trim().to_ascii_lowercase().as_str() {
        "never" => Some(RetryPolicy::never()),
        "reads-only" => Some(RetryPolicy::reads_only()),
        "idempotent" => Some(RetryPolicy::idempotent()),
        "by-method" => Some(RetryPolicy::by_method()),
        _ => None,
    }
}

/// Removes the headers that describe one connection rather than the message (RFC 9110
/// 7.6.1): the ones every proxy drops, and any the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// A failed call, as JSON the caller's program can act on. 502 when the endpoint may have
/// applied the request (look before sending it again), 503 when it provably did not.
fn failure(error: &FailoverError, handle: &FailoverHandle) -> Response {
    let possibly_applied = error.possibly_applied();
    let status = if possibly_applied {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "error": "failover proxy: upstream call failed",
        "kind": error.kind().name(),
        "possibly_applied": possibly_applied,
        "resent": error.was_resent(),
        "not_resent_because": error.not_resent_because().map(|reason| reason.to_string()),
        "active": side_name(handle.active()),
        "detail": error.to_string(),
    });
    let mut response = (status, Json(body)).into_response();
    // Also as a header, for callers that do not parse error bodies.
    response.headers_mut().insert(
        "x-failover-possibly-applied",
        HeaderValue::from_static(if possibly_applied { "true" } else { "false" }),
    );
    response
}

fn plain_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

// ----- status and events -------------------------------------------------------------------

/// `GET /_failover/status`.
async fn status<C>(State(proxy): State<Proxy<C>>) -> Json<Value> {
    Json(status_json(&proxy.handle))
}

fn status_json(handle: &FailoverHandle) -> Value {
    // One snapshot, so side, endpoint, generation and report agree with each other.
    let state = handle.state();
    let endpoints = handle.endpoints();
    json!({
        "active": side_name(state.active),
        "endpoint": state.endpoint.to_string(),
        "primary": endpoints.primary().to_string(),
        "alternate": endpoints.alternate().map(ToString::to_string),
        "generation": state.generation,
        "since_ms": unix_ms(state.since),
        "cause": state.cause.as_ref().map(ToString::to_string),
        "auto_switch": handle.auto_switch_enabled(),
        "counters": counters_json(&handle.counters()),
        "last_report": state.last_report.as_deref().map(report_json),
    })
}

fn counters_json(counters: &CountersSnapshot) -> Value {
    json!({
        "calls": counters.calls,
        "failover_resends": counters.failover_resends,
        "throttle_retries": counters.throttle_retries,
        "switches": counters.switches,
        "throttled": counters.throttled,
        "refused_by_budget": counters.refused_by_budget,
        "possibly_applied": counters.possibly_applied,
        "deadline_exceeded": counters.deadline_exceeded,
    })
}

fn report_json(report: &DataLossReport) -> Value {
    json!({
        "from": report.from.to_string(),
        "to": report.to.to_string(),
        "at_ms": unix_ms(report.at),
        "window_ms": u64::try_from(report.window.as_millis()).unwrap_or(u64::MAX),
        "acknowledged_count": report.acknowledged.len(),
        "unknown_count": report.unknown.len(),
        "dropped": report.dropped,
        "acknowledged": report.acknowledged.iter().map(record_json).collect::<Vec<_>>(),
        "unknown": report.unknown.iter().map(record_json).collect::<Vec<_>>(),
    })
}

fn record_json(record: &WriteRecord) -> Value {
    json!({
        "method": record.method.as_str(),
        "path": record.path,
        "key": record.key,
        "side": side_name(record.side),
        "sent_at_ms": unix_ms(record.sent_at),
        "acknowledged_at_ms": record.acknowledged_at.map(unix_ms),
        "outcome": match record.outcome {
            WriteOutcome::InFlight => "in_flight",
            WriteOutcome::Acknowledged => "acknowledged",
            WriteOutcome::Unknown => "unknown",
            WriteOutcome::ResentOnAlternate => "resent_on_alternate",
        },
    })
}

/// `GET /_failover/events`: Server-Sent Events.
///
/// The receiver is taken before the `State` snapshot is made, so no switch falls between
/// them; a client that has read `State` knows it will see every later event.
async fn events<C>(State(proxy): State<Proxy<C>>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = proxy.handle.events();
    let hello = Event::default()
        .event("State")
        .data(status_json(&proxy.handle).to_string());
    let endpoints = proxy.handle.endpoints().clone();
    let switches = stream::unfold((receiver, endpoints), |(mut receiver, endpoints)| async move {
        let event = match receiver.recv().await {
            Ok(event) => sse_event(&event, &endpoints),
            // A reader too slow for 64 events: say how many it missed rather than end.
            Err(broadcast::error::RecvError::Lagged(missed)) => Event::default()
                .event("Lagged")
                .data(json!({ "missed": missed }).to_string()),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), (receiver, endpoints)))
    });
    // Keep-alive comments stop idle-timeouts in between from closing a quiet stream.
    Sse::new(stream::once(async { Ok(hello) }).chain(switches)).keep_alive(KeepAlive::default())
}

fn sse_event(event: &SwitchEvent, endpoints: &Endpoints) -> Event {
    let side_of = |endpoint: &Endpoint| {
        if endpoint == endpoints.primary() {
            "primary"
        } else {
            "alternate"
        }
    };
    let mut data = json!({
        "previous": event.previous().to_string(),
        "new": event.new_endpoint().to_string(),
        "new_side": side_of(event.new_endpoint()),
        "cause": event.cause().to_string(),
    });
    if let SwitchEvent::Switched { report, .. } = event {
        data["report"] = report.as_deref().map_or(Value::Null, report_json);
    }
    // Non-exhaustive: an event added later is still passed on, by name.
    Event::default().event(event.name()).data(data.to_string())
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Primary => "primary",
        Side::Alternate => "alternate",
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// ----- the binary --------------------------------------------------------------------------

const USAGE: &str = "\
usage:
  failover_proxy --dynamics URL [--listen ADDR] [--attempt-timeout SECS] [--ca-file PEM]
  failover_proxy --primary URL --alternate URL [--listen ADDR] [--attempt-timeout SECS] [--ca-file PEM]
  failover_proxy --demo

  --dynamics URL    a Dynamics 365 organization URL; the alternate is derived by the --s rule
  --primary URL     the primary endpoint (scheme and host only)
  --alternate URL   the alternate endpoint
  --listen ADDR     where to listen (default 127.0.0.1:8080)
  --attempt-timeout SECS
                    how long one attempt may take before the endpoint counts as down and
                    the call fails over (default 30)
  --ca-file PEM     also trust the certificates in this PEM file (a private CA); the
                    public roots are always trusted
  --demo            run a scripted outage against two loopback servers and exit

Send requests to the proxy with relative paths (http://ADDR/api/...). Read the proxy's state
at /_failover/status and its switch events (Server-Sent Events) at /_failover/events.";

// Made once per run: its size does not matter, and boxing would only add noise.
#[allow(clippy::large_enum_variant)]
enum Command {
    Serve {
        endpoints: Endpoints,
        listen: SocketAddr,
        attempt_timeout: Duration,
        ca_file: Option<PathBuf>,
    },
    Demo,
    Help,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    if args.is_empty() {
        return Err("no arguments".into());
    }
    let (mut dynamics, mut primary, mut alternate) = (None, None, None);
    let mut listen: SocketAddr = ([127, 0, 0, 1], 8080).into();
    let mut demo = false;
    let mut attempt_timeout = DEFAULT_ATTEMPT_TIMEOUT;
    let mut ca_file = None;
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--dynamics" => dynamics = Some(value()?),
            "--primary" => primary = Some(value()?),
            "--alternate" => alternate = Some(value()?),
            "--listen" => {
                let text = value()?;
                listen = text
                    .parse()
                    .map_err(|e| format!("--listen {text}: {e} (give an address such as 127.0.0.1:8080)"))?;
            }
            "--attempt-timeout" => {
                let text = value()?;
                attempt_timeout = text
                    .parse::<f64>()
                    .ok()
                    .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        format!("--attempt-timeout {text}: give a number of seconds above 0, such as 30")
                    })?;
            }
            "--ca-file" => ca_file = Some(PathBuf::from(value()?)),
            "--demo" => demo = true,
            "-h" | "--help" => return Ok(Command::Help),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let endpoints = match (demo, dynamics, primary, alternate) {
        (true, None, None, None) => return Ok(Command::Demo),
        (true, ..) => return Err("--demo runs its own servers; give no endpoints with it".into()),
        (false, Some(url), None, None) => Endpoints::dynamics(&url),
        (false, None, Some(primary), Some(alternate)) => Endpoints::new(&primary, &alternate),
        (false, None, None, None) => return Err("no endpoints given".into()),
        _ => return Err("give either --dynamics, or both --primary and --alternate".into()),
    }
    .map_err(|e| e.to_string())?;
    // Read here rather than at the first call: a file that cannot be read must stop the
    // proxy before it listens, not fail every call to a private endpoint.
    if let Some(path) = &ca_file {
        https_connector(HttpConnector::new(), Some(path))?;
    }
    Ok(Command::Serve {
        endpoints,
        listen,
        attempt_timeout,
        ca_file,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse_args(&args) {
        Ok(Command::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Demo) => match tokio::time::timeout(DEMO_DEADLINE, demo()).await {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(error)) => {
                eprintln!("demo failed: {error}");
                ExitCode::FAILURE
            }
            Err(_) => {
                eprintln!("demo did not finish within {DEMO_DEADLINE:?}");
                ExitCode::FAILURE
            }
        },
        Ok(Command::Serve {
            endpoints,
            listen,
            attempt_timeout,
            ca_file,
        }) => match serve(endpoints, listen, attempt_timeout, ca_file.as_deref()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("failover_proxy: {error}");
                ExitCode::FAILURE
            }
        },
        Err(message) => {
            eprintln!("failover_proxy: {message}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

async fn serve(
    endpoints: Endpoints,
    listen: SocketAddr,
    attempt_timeout: Duration,
    ca_file: Option<&Path>,
) -> Result<(), BoxError> {
    // The library logs its switches and the writes at risk through `tracing`.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let listener = TcpListener::bind(listen).await?;
    eprintln!(
        "failover proxy on http://{} -> primary {}, alternate {}",
        listener.local_addr()?,
        endpoints.primary(),
        endpoints
            .alternate()
            .map_or("(none)".to_string(), ToString::to_string)
    );
    let mut connector = HttpConnector::new();
    // A primary that drops packets must fail within seconds to be failed over; the default
    // is to wait for the operating system's connect timeout (minutes).
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_nodelay(true);
    let connector = https_connector(connector, ca_file)?;
    run_proxy_with(listener, endpoints, connector, attempt_timeout).await
}

// ----- the demonstration -------------------------------------------------------------------

const DEMO_DEADLINE: Duration = Duration::from_secs(9);

/// The program on the other side of the proxy: a plain client, no failover of its own.
type PlainClient = Client<HttpConnector, Full<Bytes>>;

async fn demo() -> Result<(), BoxError> {
    let pair = Pair::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let endpoints = Endpoints::dynamics(PRIMARY_URL)?;
    tokio::spawn(run_proxy(listener, endpoints, pair.resolver.connector()));
    println!(
        "proxy on {base}; primary on {}, alternate on {}",
        pair.primary.addr, pair.alternate.addr
    );

    let client: PlainClient = Client::builder(TokioExecutor::new()).build_http();
    let mut events = SseReader::open(&client, &format!("{base}/_failover/events")).await?;
    // The first event is the state at connection: from here on, no switch goes unseen.
    let (name, data) = events.next(Duration::from_secs(2)).await?;
    println!("SSE  event: {name}  (active: {})", data["active"]);

    let whoami = format!("{base}/api/data/v9.2/WhoAmI");
    show(&client, "GET", &whoami, None).await?;
    // A write the primary acknowledges: the Switched event's report lists it as at risk.
    let account = r#"{"name":"Fourth Coffee"}"#;
    show(
        &client,
        "POST",
        &format!("{base}/api/data/v9.2/accounts"),
        Some(account),
    )
    .await?;
    println!("-- killing the primary");
    pair.primary.kill().await;
    show(&client, "GET", &whoami, None).await?;

    for _ in 0..2 {
        let (name, data) = events.next(Duration::from_secs(2)).await?;
        println!("SSE  event: {name}\n     data: {data}");
    }
    let status = client.get(format!("{base}/_failover/status").parse()?).await?;
    let status: Value = serde_json::from_slice(&status.into_body().collect().await?.to_bytes())?;
    println!(
        "GET /_failover/status\n{}",
        serde_json::to_string_pretty(&status)?
    );
    Ok(())
}

async fn show(
    client: &PlainClient,
    method: &str,
    uri: &str,
    body: Option<&'static str>,
) -> Result<(), BoxError> {
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(body.unwrap_or("").as_bytes())))?;
    let response = client.request(request).await?;
    let status = response.status();
    let text = response.into_body().collect().await?.to_bytes();
    println!("{method} {uri} -> {status} {}", String::from_utf8_lossy(&text));
    Ok(())
}

/// Reads Server-Sent Events off a response body as they arrive.
struct SseReader {
    body: Incoming,
    // Bytes, not text: a frame may end in the middle of a UTF-8 character.
    buffer: Vec<u8>,
}

impl SseReader {
    async fn open(client: &PlainClient, uri: &str) -> Result<Self, BoxError> {
        let response = client.get(uri.parse()?).await?;
        if response.status() != StatusCode::OK {
            return Err(format!("{uri} answered {}", response.status()).into());
        }
        Ok(SseReader {
            body: response.into_body(),
            buffer: Vec::new(),
        })
    }

    /// The next event's name and JSON data; keep-alive comments are skipped.
    async fn next(&mut self, wait: Duration) -> Result<(String, Value), BoxError> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let block = String::from_utf8_lossy(&block);
                let field = |prefix: &str| {
                    block
                        .lines()
                        .find_map(|line| line.strip_prefix(prefix))
                        .map(|rest| rest.trim_start().to_string())
                };
                if let (Some(name), Some(data)) = (field("event:"), field("data:")) {
                    return Ok((name, serde_json::from_str(&data)?));
                }
                continue;
            }
            let frame = tokio::time::timeout(wait, self.body.frame())
                .await
                .map_err(|_| "no event within the wait")?
                .ok_or("the event stream ended")??;
            if let Ok(data) = frame.into_data() {
                self.buffer.extend_from_slice(&data);
            }
        }
    }
}
