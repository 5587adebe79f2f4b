//! Real hyper servers on loopback for the tests, the demo and the benches: a primary and an
//! alternate behind the Dynamics names, a resolver that maps the names to their ports, and a
//! way to kill a server (listener and open connections) to make a real outage.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

pub mod tls;

pub const PRIMARY_HOST: &str = "contoso.api.crm.dynamics.com";
pub const ALTERNATE_HOST: &str = "contoso--s.api.crm.dynamics.com";
pub const PRIMARY_URL: &str = "http://contoso.api.crm.dynamics.com";
pub const ALTERNATE_URL: &str = "http://contoso--s.api.crm.dynamics.com";

/// What a server saw of one request, after reading its whole body.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: http::Method,
    pub path: String,
    pub host: Option<String>,
    pub body_len: usize,
    pub body_sha256: [u8; 32],
    pub idempotency_key: Option<String>,
}

/// A request as handed to a [`Handler`]: the head, and the whole body.
pub struct Received {
    pub head: http::request::Parts,
    pub body: Bytes,
}

pub type Reply = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;
pub type Handler = Arc<dyn Fn(Received) -> Reply + Send + Sync>;

/// How a server answers, settable while it runs.
#[derive(Clone)]
pub enum Behavior {
    /// 200 with a small JSON body naming the server.
    Ok,
    /// The given status with the given body.
    Status(u16, &'static str),
    /// Sleep, then 200.
    Delay(Duration),
    /// Answer 200 at once, without reading the request body.
    EarlyAnswer,
    /// A custom handler.
    Custom(Handler),
}

pub struct Server {
    pub name: &'static str,
    pub addr: SocketAddr,
    behavior: Arc<Mutex<Behavior>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

pub fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Server {
    /// Starts a server for `name` on a fresh loopback port.
    pub async fn start(name: &'static str) -> Server {
        Self::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a server on a given address (to bring a killed server back on its port).
    pub async fn start_on(name: &'static str, addr: SocketAddr) -> Server {
        Self::start_with(name, addr, Behavior::Ok).await
    }

    /// Starts a server on a given address that answers with `behavior` from its first request
    /// (a restarted server set after it starts would answer its first requests with `Ok`).
    pub async fn start_with(name: &'static str, addr: SocketAddr, behavior: Behavior) -> Server {
        let listener = bind_with_retry(addr).await;
        let addr = listener.local_addr().unwrap();
        let server = Server {
            name,
            addr,
            behavior: Arc::new(Mutex::new(behavior)),
            seen: Arc::new(Mutex::new(Vec::new())),
            tasks: Arc::new(Mutex::new(Vec::new())),
        };
        let behavior = server.behavior.clone();
        let seen = server.seen.clone();
        let tasks = server.tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let behavior = behavior.clone();
                let seen = seen.clone();
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let behavior = behavior.lock().unwrap().clone();
                    let seen = seen.clone();
                    async move { Ok::<_, Infallible>(answer(name, behavior, seen, request).await) }
                });
                let connection = tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                tasks.lock().unwrap().push(connection.abort_handle());
            }
        });
        server.tasks.lock().unwrap().push(accept.abort_handle());
        server
    }

    pub fn set(&self, behavior: Behavior) {
        *self.behavior.lock().unwrap() = behavior;
    }

    /// Everything this server has received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The method and path of every request seen, in order.
    pub fn requests(&self) -> Vec<(http::Method, String)> {
        self.seen().into_iter().map(|s| (s.method, s.path)).collect()
    }

    /// How many requests with `method` this server has seen.
    pub fn count_of(&self, method: &http::Method) -> usize {
        self.seen().iter().filter(|s| s.method == *method).count()
    }

    /// Makes a real outage: closes the listener (new connections are refused) and drops every
    /// open connection (requests in flight are cut off).
    pub async fn kill(&self) {
        let tasks: Vec<AbortHandle> = std::mem::take(&mut *self.tasks.lock().unwrap());
        for task in &tasks {
            task.abort();
        }
        // Let the aborted tasks run their drops so the sockets are really closed; a server
        // that is only partly dead would make a test prove nothing.
        for _ in 0..500 {
            if tasks.iter().all(|t| t.is_finished()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("the server's tasks did not stop within a second of being aborted");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

async fn bind_with_retry(addr: SocketAddr) -> TcpListener {
    let mut last = None;
    for _ in 0..100 {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("could not bind {addr}: {last:?}");
}

async fn answer(
    name: &'static str,
    behavior: Behavior,
    seen: Arc<Mutex<Vec<Seen>>>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (head, body) = request.into_parts();
    if let Behavior::EarlyAnswer = behavior {
        // Answer without reading the body; the body is dropped with the request.
        return json(StatusCode::OK, format!(r#"{{"server":"{name}","early":true}}"#));
    }
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    seen.lock().unwrap().push(Seen {
        method: head.method.clone(),
        path: head.uri.path().to_string(),
        host: head
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string),
        body_len: body.len(),
        body_sha256: digest(&body),
        idempotency_key: head
            .headers
            .get("idempotency-key")
            .and_then(|h| h.to_str().ok())
            .map(str::to_string),
    });
    match behavior {
        Behavior::Ok | Behavior::EarlyAnswer => json(StatusCode::OK, format!(r#"{{"server":"{name}"}}"#)),
        Behavior::Status(status, body) => json(StatusCode::from_u16(status).unwrap(), body.to_string()),
        Behavior::Delay(delay) => {
            tokio::time::sleep(delay).await;
            json(StatusCode::OK, format!(r#"{{"server":"{name}"}}"#))
        }
        Behavior::Custom(handler) => handler(Received { head, body }).await,
    }
}

pub fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// Maps host names to loopback addresses, as DNS would.
#[derive(Clone, Default)]
pub struct Resolver {
    names: Arc<Mutex<HashMap<String, SocketAddr>>>,
}

impl Resolver {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn map(&self, name: &str, addr: SocketAddr) {
        self.names.lock().unwrap().insert(name.to_string(), addr);
    }

    /// The primary's and the alternate's names resolved to these addresses.
    pub fn pair(primary: SocketAddr, alternate: SocketAddr) -> Self {
        let resolver = Self::new();
        resolver.map(PRIMARY_HOST, primary);
        resolver.map(ALTERNATE_HOST, alternate);
        resolver
    }

    pub fn connector(&self) -> HttpConnector<Resolver> {
        let mut connector = HttpConnector::new_with_resolver(self.clone());
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector
    }
}

impl tower::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let found = self.names.lock().unwrap().get(name.as_str()).copied();
        std::future::ready(match found {
            Some(addr) => Ok(vec![addr].into_iter()),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no such host: {}", name.as_str()),
            )),
        })
    }
}

/// A primary and an alternate server behind the Dynamics names, and a resolver for both.
pub struct Pair {
    pub primary: Server,
    pub alternate: Server,
    pub resolver: Resolver,
}

impl Pair {
    pub async fn start() -> Pair {
        let primary = Server::start(PRIMARY_HOST).await;
        let alternate = Server::start(ALTERNATE_HOST).await;
        let resolver = Resolver::pair(primary.addr, alternate.addr);
        Pair {
            primary,
            alternate,
            resolver,
        }
    }

    /// A hyper-util client (HTTP/1.1, keep-alive) that reaches both servers by name.
    pub fn client<B>(&self) -> Client<HttpConnector<Resolver>, B>
    where
        B: http_body::Body + Send + 'static + Unpin,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        Client::builder(TokioExecutor::new()).build(self.resolver.connector())
    }

    /// The failover layer straight over this pair's client, the stack most tests drive.
    pub fn through<C: Clone>(&self, layer: tower_failover::FailoverLayer<C>) -> Through<Full<Bytes>, C> {
        tower::Layer::layer(&layer, self.client())
    }

    /// Brings a killed primary back on its port.
    pub async fn restart_primary(&mut self) {
        let addr = self.primary.addr;
        self.primary = Server::start_on(PRIMARY_HOST, addr).await;
    }
}

/// Runs a test body with a deadline, so a hang fails instead of stalling CI.
pub async fn within<F: Future>(seconds: u64, future: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(seconds), future).await {
        Ok(output) => output,
        Err(_) => panic!("test did not finish within {seconds} s"),
    }
}

// Helpers for the data-loss, policy and throttling tests.

/// The body type the failover layer hands to the inner client in these tests.
pub type TestBody = tower_failover::ReplayBody<Full<Bytes>>;

/// The failover layer over a client of the pair's names (`Pair::through`), for request bodies
/// `B`.
pub type Through<B = Full<Bytes>, C = tower_failover::DefaultClassifier> =
    tower_failover::Failover<Client<HttpConnector<Resolver>, tower_failover::ReplayBody<B>>, C>;

/// A layer builder for the pair's endpoints, as most tests configure it.
pub fn layer_builder() -> tower_failover::FailoverLayerBuilder {
    tower_failover::FailoverLayer::builder(tower_failover::Endpoints::dynamics(PRIMARY_URL).unwrap())
}

/// A request to the primary's name with a small JSON body (empty for GET and DELETE).
pub fn request(method: http::Method, path_and_query: &str) -> Request<Full<Bytes>> {
    let body = if method == http::Method::GET || method == http::Method::DELETE {
        Bytes::new()
    } else {
        Bytes::from_static(br#"{"name":"x"}"#)
    };
    Request::builder()
        .method(method)
        .uri(format!("{PRIMARY_URL}{path_and_query}"))
        .body(Full::new(body))
        .unwrap()
}

/// A [`Behavior::Custom`] from an async closure.
pub fn custom<F, Fut>(handler: F) -> Behavior
where
    F: Fn(Received) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    Behavior::Custom(Arc::new(move |received| Box::pin(handler(received)) as Reply))
}

/// A response with a status, extra headers and a body.
pub fn reply(status: u16, headers: &[(&str, &str)], body: &str) -> Response<Full<Bytes>> {
    let mut builder = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

/// A behavior that answers with `first()` for the first `n` requests and 200 after; the
/// counter says how many requests it has answered.
pub fn first_n_then_ok<F>(n: usize, first: F) -> (Behavior, Arc<std::sync::atomic::AtomicUsize>)
where
    F: Fn() -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let answered = counter.clone();
    let first = Arc::new(first);
    let behavior = custom(move |_| {
        let index = answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let response = if index < n {
            first()
        } else {
            reply(200, &[], r#"{"ok":true}"#)
        };
        async move { response }
    });
    (behavior, counter)
}

/// 429 with the `Retry-After` named by the query's `wait` (`?wait=5`), the first time each
/// query is seen; 200 after.
pub fn throttled_once_per_query() -> Behavior {
    let seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
    custom(move |received| {
        let query = received.head.uri.query().unwrap_or("").to_string();
        let first = seen.lock().unwrap().insert(query.clone());
        let wait = query.trim_start_matches("wait=").to_string();
        async move {
            if first {
                reply(429, &[("retry-after", &wait)], "")
            } else {
                reply(200, &[], r#"{"ok":true}"#)
            }
        }
    })
}

/// Collects the switch events a layer raises through its callbacks.
#[derive(Clone, Default)]
pub struct EventLog(Arc<Mutex<Vec<tower_failover::SwitchEvent>>>);

impl EventLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// A callback for `on_switch_required` / `on_switched`.
    pub fn recorder(&self) -> impl Fn(&tower_failover::SwitchEvent) + Send + Sync + 'static {
        let log = self.0.clone();
        move |event| log.lock().unwrap().push(event.clone())
    }

    pub fn all(&self) -> Vec<tower_failover::SwitchEvent> {
        self.0.lock().unwrap().clone()
    }

    /// The reports of every `Switched` event, in order.
    pub fn reports(&self) -> Vec<Option<Arc<tower_failover::DataLossReport>>> {
        self.all()
            .into_iter()
            .filter_map(|event| match event {
                tower_failover::SwitchEvent::Switched { report, .. } => Some(report),
                _ => None,
            })
            .collect()
    }
}

/// Polls `condition` every few milliseconds until it holds; panics after `seconds`.
pub async fn wait_until(seconds: u64, what: &str, condition: impl Fn() -> bool) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while !condition() {
        if tokio::time::Instant::now() > give_up {
            panic!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads a whole response body as text.
pub async fn text<B>(response: Response<B>) -> String
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// What a failover service answers in these tests.
pub type FailoverResult =
    Result<Response<tower_failover::ResponseBody<Incoming>>, tower_failover::FailoverError>;

/// Sends one request through a (clone of a) failover service.
pub async fn send<S>(service: &S, request: Request<Full<Bytes>>) -> FailoverResult
where
    S: tower::Service<
            Request<Full<Bytes>>,
            Response = Response<tower_failover::ResponseBody<Incoming>>,
            Error = tower_failover::FailoverError,
        > + Clone,
{
    use tower::ServiceExt;
    service.clone().oneshot(request).await
}

/// Sends one request, expects a 200, and returns the body as text.
pub async fn send_ok<S>(service: &S, request: Request<Full<Bytes>>) -> String
where
    S: tower::Service<
            Request<Full<Bytes>>,
            Response = Response<tower_failover::ResponseBody<Incoming>>,
            Error = tower_failover::FailoverError,
        > + Clone,
{
    let what = format!("{} {}", request.method(), request.uri());
    match send(service, request).await {
        Ok(response) => {
            let status = response.status();
            let body = text(response).await;
            assert_eq!(status, 200, "{what} answered {status}: {body}");
            body
        }
        Err(error) => panic!("{what} failed: {error}"),
    }
}

/// A behavior that answers 503 and 200 in turn, starting with 503: a primary that is only
/// half back, so two healthy answers in a row never happen.
pub fn alternating_unavailable() -> Behavior {
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    Behavior::Custom(Arc::new(move |_request: Received| {
        let n = answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            if n % 2 == 0 {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"error":"warming up"}"#.to_string(),
                )
            } else {
                json(StatusCode::OK, r#"{"server":"half-back"}"#.to_string())
            }
        })
    }))
}

/// A reqwest client through `layer`'s middleware that reaches the pair's names at `primary`
/// and `alternate`, with a 5 s limit on each attempt. reqwest's resolver overrides ignore
/// ports, so the two servers share one port on two loopback addresses.
#[cfg(feature = "reqwest")]
pub fn reqwest_through(
    layer: &tower_failover::FailoverLayer,
    primary: SocketAddr,
    alternate: SocketAddr,
) -> reqwest_middleware::ClientWithMiddleware {
    let reqwest = reqwest::Client::builder()
        .resolve(PRIMARY_HOST, primary)
        .resolve(ALTERNATE_HOST, alternate)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    reqwest_middleware::ClientBuilder::new(reqwest)
        .with(layer.middleware())
        .build()
}

/// The `FailoverError` a call through the failover middleware failed with; panics on any
/// other error.
#[cfg(feature = "reqwest")]
pub fn failover_error(error: &reqwest_middleware::Error) -> &tower_failover::FailoverError {
    match error {
        reqwest_middleware::Error::Middleware(e) => e
            .downcast_ref::<tower_failover::FailoverError>()
            .expect("a FailoverError"),
        other => panic!("expected a FailoverError, got {other:?}"),
    }
}

/// Below the failover middleware: hands reqwest's own errors on as middleware errors, as a
/// middleware that reports through `anyhow` does.
#[cfg(feature = "reqwest")]
#[derive(Clone)]
pub struct AsMiddlewareError;

#[cfg(feature = "reqwest")]
#[async_trait::async_trait]
impl reqwest_middleware::Middleware for AsMiddlewareError {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        next.run(request, extensions).await.map_err(|error| match error {
            reqwest_middleware::Error::Reqwest(e) => reqwest_middleware::Error::middleware(e),
            other => other,
        })
    }
}
