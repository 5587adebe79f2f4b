//! Which requests may be sent a second time, per request: [`RetryPolicy`], its presets, and
//! the route table that picks one by method and path.

use std::time::Duration;

use http::header::HeaderName;
use http::{Extensions, HeaderMap, Method};

use crate::error::{ConfigError, NotResent};

/// The `Idempotency-Key` header: a request carrying it declares that the server applies it at
/// most once, so re-sending it is safe whatever its method.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// True when sending the request twice has the same effect as sending it once: the
/// idempotent methods of RFC 9110 (GET, HEAD, OPTIONS, TRACE, PUT, DELETE), or any request
/// with an `Idempotency-Key` header.
///
/// ```
/// use http::{HeaderMap, Method};
/// use tower_failover::policy::is_idempotent;
///
/// assert!(is_idempotent(&Method::PUT, &HeaderMap::new()));
/// assert!(!is_idempotent(&Method::POST, &HeaderMap::new()));
///
/// let mut headers = HeaderMap::new();
/// headers.insert("idempotency-key", "order-42".parse().unwrap());
/// assert!(is_idempotent(&Method::POST, &headers));
/// ```
pub fn is_idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || headers.contains_key(IDEMPOTENCY_KEY)
}

/// True for the methods that change data: POST, PUT, PATCH, DELETE. These are the writes the
/// data-loss report records, unless a [`RetryPolicy::write`] says otherwise.
///
/// ```
/// use http::Method;
/// use tower_failover::policy::is_write_method;
///
/// assert!(is_write_method(&Method::PATCH));
/// assert!(!is_write_method(&Method::GET));
/// ```
pub fn is_write_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

fn is_read_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// When a request may be re-sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// The core rule: always when it never left the client, otherwise when idempotent.
    ByMethod,
    /// Never, whatever the failure.
    Never,
    /// Only GET, HEAD, OPTIONS and TRACE; writes never.
    ReadsOnly,
    /// Always: the route is safe to send twice (an upsert by key, say).
    Always,
}

/// Per-request re-send rules: whether a call may be sent again after which failure, whether it
/// counts as a write for the data-loss report, how much of its body to keep, and how often a
/// throttled call is retried.
///
/// A policy is chosen per request, first match wins:
/// 1. a `RetryPolicy` in the request's extensions (set it with tower-http's `AddExtension`,
///    or by hand with `request.extensions_mut().insert(..)`);
/// 2. the builder's route table ([`FailoverLayerBuilder::route`](crate::FailoverLayerBuilder::route));
/// 3. the builder's default ([`FailoverLayerBuilder::default_policy`](crate::FailoverLayerBuilder::default_policy)),
///    which starts as [`RetryPolicy::by_method`].
///
/// ```
/// use std::time::Duration;
/// use http::Method;
/// use tower_failover::{Endpoints, FailoverLayer, RetryPolicy};
///
/// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
///     // An upsert by alternate key applies once however often it is sent.
///     .route(Method::PATCH, "/api/data/v9.2/accounts*", RetryPolicy::idempotent())
///     // Payments are never sent twice, not even after a 429.
///     .route(Method::POST, "/api/payments", RetryPolicy::never())
///     .default_policy(RetryPolicy::by_method().throttle_retries(5).max_throttle_delay(Duration::from_secs(30)))
///     .build()
///     .unwrap();
/// # let _ = layer;
///
/// // Or per request:
/// let mut request = http::Request::post("https://contoso.api.crm.dynamics.com/api/data/v9.2/tasks")
///     .body(())
///     .unwrap();
/// request.extensions_mut().insert(RetryPolicy::reads_only());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    resend: Resend,
    write: Option<bool>,
    replay_cap: Option<usize>,
    throttle_retries: u32,
    max_throttle_delay: Duration,
    deadline: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::by_method()
    }
}

impl RetryPolicy {
    /// The default: a call that provably was not processed (it never left the client, or an
    /// HTTP/2 server refused it unprocessed) is always re-sent; one that may have been
    /// received is re-sent only when idempotent (by method or `Idempotency-Key`).
    /// Throttled calls are retried up to 3 times, waiting at most 60 s each.
    ///
    /// ```
    /// use http::{HeaderMap, Method};
    /// use tower_failover::RetryPolicy;
    ///
    /// let policy = RetryPolicy::by_method();
    /// assert_eq!(policy, RetryPolicy::default());
    /// let no_headers = HeaderMap::new();
    /// // Refused at connect: nothing was sent, so even a POST goes to the other endpoint.
    /// assert!(policy.may_resend(&Method::POST, &no_headers, false));
    /// // Maybe received: only what is safe to apply twice.
    /// assert!(!policy.may_resend(&Method::POST, &no_headers, true));
    /// assert!(policy.may_resend(&Method::PUT, &no_headers, true));
    ///
    /// let mut keyed = HeaderMap::new();
    /// keyed.insert("idempotency-key", "order-42".parse().unwrap());
    /// assert!(policy.may_resend(&Method::POST, &keyed, true));
    /// ```
    pub const fn by_method() -> Self {
        RetryPolicy {
            resend: Resend::ByMethod,
            write: None,
            replay_cap: None,
            throttle_retries: 3,
            max_throttle_delay: Duration::from_secs(60),
            deadline: None,
        }
    }

    /// Never re-send: no failover re-send and no throttling retry. The endpoint still switches
    /// for later calls.
    ///
    /// ```
    /// use http::{HeaderMap, Method};
    /// use tower_failover::RetryPolicy;
    ///
    /// let policy = RetryPolicy::never();
    /// assert!(!policy.may_resend(&Method::GET, &HeaderMap::new(), false));
    /// // Still a write for the data-loss report.
    /// assert!(policy.is_write(&Method::POST));
    ///
    /// // A payment is sent once, whatever happens to it.
    /// let mut request = http::Request::post("https://api.example.com/payments").body(()).unwrap();
    /// request.extensions_mut().insert(RetryPolicy::never());
    /// ```
    pub const fn never() -> Self {
        RetryPolicy {
            resend: Resend::Never,
            throttle_retries: 0,
            ..Self::by_method()
        }
    }

    /// Re-send reads (GET, HEAD, OPTIONS, TRACE) on the other endpoint after any failure;
    /// never re-send a write there. Throttled calls, reads or writes, are still retried on the
    /// same endpoint as with [`by_method`](Self::by_method); add `.throttle_retries(0)` to stop
    /// that too.
    ///
    /// ```
    /// use http::{HeaderMap, Method};
    /// use tower_failover::RetryPolicy;
    ///
    /// let policy = RetryPolicy::reads_only();
    /// let no_headers = HeaderMap::new();
    /// assert!(policy.may_resend(&Method::GET, &no_headers, true));
    /// // Not even a PUT, and not even when it provably never left the client.
    /// assert!(!policy.may_resend(&Method::PUT, &no_headers, false));
    /// ```
    pub const fn reads_only() -> Self {
        RetryPolicy {
            resend: Resend::ReadsOnly,
            ..Self::by_method()
        }
    }

    /// Treat the route as safe to send twice whatever its method, e.g. a PATCH upsert by
    /// alternate key.
    ///
    /// ```
    /// use http::{HeaderMap, Method};
    /// use tower_failover::RetryPolicy;
    ///
    /// let policy = RetryPolicy::idempotent();
    /// assert!(policy.may_resend(&Method::PATCH, &HeaderMap::new(), true));
    /// assert!(policy.may_resend(&Method::POST, &HeaderMap::new(), true));
    /// ```
    pub const fn idempotent() -> Self {
        RetryPolicy {
            resend: Resend::Always,
            ..Self::by_method()
        }
    }

    /// Counts the request as a write (or not) for the data-loss report, whatever its method.
    ///
    /// ```
    /// use http::Method;
    /// use tower_failover::RetryPolicy;
    ///
    /// // A POST that only queries (an OData `$batch` of GETs, say) is no write at risk.
    /// let query = RetryPolicy::by_method().write(false);
    /// assert!(!query.is_write(&Method::POST));
    /// // A GET that triggers an action is one.
    /// assert!(RetryPolicy::by_method().write(true).is_write(&Method::GET));
    /// ```
    pub const fn write(mut self, is_write: bool) -> Self {
        self.write = Some(is_write);
        self
    }

    /// The replay cap for these requests, in place of the layer's. At most
    /// [`MAX_REPLAY_CAP`](crate::MAX_REPLAY_CAP), as the layer's: a larger one makes `build()`
    /// fail for a policy given to the builder, and is lowered to the limit for a policy put in
    /// a request's extensions (there is no `build()` to refuse it).
    ///
    /// ```
    /// use http::Method;
    /// use tower_failover::{Endpoints, FailoverLayer, RetryPolicy};
    ///
    /// // Attachments are large but must survive a failover; everything else keeps 64 KiB.
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .route(Method::PUT, "/api/data/v9.2/annotations*", RetryPolicy::by_method().replay_cap(8 * 1024 * 1024))
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub const fn replay_cap(mut self, bytes: usize) -> Self {
        self.replay_cap = Some(bytes);
        self
    }

    /// How many times a throttled call (429, 503 with `Retry-After`, or a service-protection
    /// code) is retried on the same endpoint (default 3). `0` hands the throttling response
    /// straight back. Without a `Retry-After` the wait is a jittered exponential backoff from
    /// 500 ms, capped at [`max_throttle_delay`](Self::max_throttle_delay).
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// use tower_failover::{Endpoints, FailoverLayer, ReplayBody, RetryPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .default_policy(RetryPolicy::by_method().throttle_retries(5))
    ///     .build()
    ///     .unwrap();
    /// let handle = layer.handle();
    /// // The first two attempts are throttled ("come back in 0 s").
    /// let attempts = Arc::new(AtomicUsize::new(0));
    /// let seen = attempts.clone();
    /// let client = tower::service_fn(move |_request: http::Request<ReplayBody<Full<Bytes>>>| {
    ///     let response = match seen.fetch_add(1, Ordering::SeqCst) {
    ///         0 | 1 => http::Response::builder().status(429).header("retry-after", "0"),
    ///         _ => http::Response::builder().status(200),
    ///     };
    ///     async move { Ok::<_, Infallible>(response.body(Full::new(Bytes::new())).unwrap()) }
    /// });
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
    ///     .body(Full::new(Bytes::new()))
    ///     .unwrap();
    /// let response = service.ready().await.unwrap().call(request).await.unwrap();
    /// assert_eq!(response.status(), 200);
    /// assert_eq!(handle.counters().throttle_retries, 2);
    /// # }
    /// ```
    pub const fn throttle_retries(mut self, retries: u32) -> Self {
        self.throttle_retries = retries;
        self
    }

    /// The longest wait before a throttling retry (default 60 s). A server asking for longer
    /// gets its response handed back instead.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use std::time::Duration;
    /// use tower_failover::{Endpoints, FailoverLayer, ReplayBody, RetryPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .default_policy(RetryPolicy::by_method().max_throttle_delay(Duration::from_secs(30)))
    ///     .build()
    ///     .unwrap();
    /// // Asks for two minutes.
    /// let client = tower::service_fn(|_request: http::Request<ReplayBody<Full<Bytes>>>| async {
    ///     let response = http::Response::builder().status(429).header("retry-after", "120");
    ///     Ok::<_, Infallible>(response.body(Full::new(Bytes::new())).unwrap())
    /// });
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
    ///     .body(Full::new(Bytes::new()))
    ///     .unwrap();
    /// let response = service.ready().await.unwrap().call(request).await.unwrap();
    /// // Longer than this caller will wait: the 429 comes back at once, for the caller to decide.
    /// assert_eq!(response.status(), 429);
    /// assert_eq!(response.headers()["retry-after"], "120");
    /// # }
    /// ```
    pub const fn max_throttle_delay(mut self, delay: Duration) -> Self {
        self.max_throttle_delay = delay;
        self
    }

    /// An overall time limit for the call, across attempts and throttling waits. A wait that
    /// would pass it is not started; an attempt still running when it passes is dropped and
    /// the call fails with [`FailoverErrorKind::DeadlineExceeded`](crate::FailoverErrorKind::DeadlineExceeded).
    /// Needs a tokio runtime with its timer enabled.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use std::time::Duration;
    /// use tower_failover::{Endpoints, FailoverErrorKind, FailoverLayer, ReplayBody, RetryPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// // An endpoint that answers after ten seconds.
    /// let client = tower::service_fn(|_request: http::Request<ReplayBody<Full<Bytes>>>| async {
    ///     tokio::time::sleep(Duration::from_secs(10)).await;
    ///     Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
    /// });
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// let mut request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
    ///     .body(Full::new(Bytes::new()))
    ///     .unwrap();
    /// request.extensions_mut().insert(RetryPolicy::by_method().deadline(Duration::from_millis(50)));
    /// let err = service.ready().await.unwrap().call(request).await.unwrap_err();
    /// assert_eq!(err.kind(), &FailoverErrorKind::DeadlineExceeded);
    /// assert!(err.possibly_applied());
    /// # }
    /// ```
    pub const fn deadline(mut self, limit: Duration) -> Self {
        self.deadline = Some(limit);
        self
    }

    pub(crate) fn deadline_limit(&self) -> Option<Duration> {
        self.deadline
    }

    /// Why a request may not be sent again, or `None` when it may. `maybe_received` is false
    /// only when the failure proves the request never left the client.
    pub(crate) fn refusal(
        &self,
        method: &Method,
        headers: &HeaderMap,
        maybe_received: bool,
    ) -> Option<Refusal> {
        if self.may_resend(method, headers, maybe_received) {
            None
        } else if self.resend == Resend::ByMethod {
            Some(Refusal::NotIdempotent)
        } else {
            Some(Refusal::PolicyForbids)
        }
    }

    /// Whether a request may be sent again. `maybe_received` is false only when the failure
    /// proves the request was not processed (see
    /// [`DownKind::request_may_have_been_sent`](crate::DownKind::request_may_have_been_sent)).
    ///
    /// ```
    /// use http::{HeaderMap, Method};
    /// use tower_failover::RetryPolicy;
    ///
    /// // A DELETE is idempotent: safe to send again even if the first one arrived.
    /// assert!(RetryPolicy::by_method().may_resend(&Method::DELETE, &HeaderMap::new(), true));
    /// ```
    pub fn may_resend(&self, method: &Method, headers: &HeaderMap, maybe_received: bool) -> bool {
        match self.resend {
            Resend::Never => false,
            Resend::Always => true,
            Resend::ReadsOnly => is_read_method(method),
            Resend::ByMethod => !maybe_received || is_idempotent(method, headers),
        }
    }

    /// Whether the request counts as a write for the data-loss report.
    ///
    /// ```
    /// use http::Method;
    /// use tower_failover::RetryPolicy;
    ///
    /// assert!(RetryPolicy::by_method().is_write(&Method::DELETE));
    /// assert!(!RetryPolicy::by_method().is_write(&Method::GET));
    /// ```
    pub fn is_write(&self, method: &Method) -> bool {
        self.write.unwrap_or_else(|| is_write_method(method))
    }

    /// Refuses what the layer's own settings would refuse: a policy given to the builder
    /// fails `build()` with the same message as the layer's setting.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match self.replay_cap {
            Some(cap) if cap > crate::layer::MAX_REPLAY_CAP => Err(ConfigError::new(format!(
                "replay_cap({cap}) is above the limit of {} bytes; a cap is memory held for every call in flight, keep it near your largest re-sendable request",
                crate::layer::MAX_REPLAY_CAP
            ))),
            _ => Ok(()),
        }
    }

    pub(crate) fn replay_cap_or(&self, layer_cap: usize) -> usize {
        self.replay_cap.unwrap_or(layer_cap)
    }

    pub(crate) fn throttle_limits(&self) -> (u32, Duration) {
        (self.throttle_retries, self.max_throttle_delay)
    }
}

/// Why a policy refuses a re-send: the [`NotResent`] reasons a policy gives, in one byte
/// (every routed call keeps two of these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotIdempotent,
    PolicyForbids,
}

impl From<Refusal> for NotResent {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NotIdempotent => NotResent::NotIdempotent,
            Refusal::PolicyForbids => NotResent::PolicyForbids,
        }
    }
}

/// How a route's path is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PathPattern {
    Exact(String),
    Prefix(String),
}

#[derive(Debug, Clone)]
struct Route {
    method: Option<Method>,
    pattern: PathPattern,
    policy: RetryPolicy,
}

/// The builder's route table: `(method, path pattern) -> policy`, first match wins.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Adds a route. `pattern` is an exact path (`/api/data/v9.2/WhoAmI`) or a prefix ending in
    /// `*` (`/api/data/v9.2/accounts*`).
    pub(crate) fn add(
        &mut self,
        method: Option<Method>,
        pattern: &str,
        policy: RetryPolicy,
    ) -> Result<(), ConfigError> {
        if !pattern.starts_with('/') {
            return Err(ConfigError::new(format!(
                "route pattern `{pattern}` must start with `/` (it matches the request path)"
            )));
        }
        // The table is matched against the path alone: a query or a fragment in the pattern
        // would make a route no request can match.
        if let Some(i) = pattern.find(['?', '#']) {
            return Err(ConfigError::new(format!(
                "route pattern `{pattern}` has a {} (`{}`); a route matches the request path only, without query or fragment: use `{}` or `{}*`",
                if &pattern[i..=i] == "?" { "query" } else { "fragment" },
                &pattern[i..=i],
                &pattern[..i],
                &pattern[..i],
            )));
        }
        policy
            .validate()
            .map_err(|e| e.context(&format!("route `{pattern}`")))?;
        let star = pattern.find('*');
        let pattern = match star {
            None => PathPattern::Exact(pattern.to_string()),
            Some(i) if i == pattern.len() - 1 => PathPattern::Prefix(pattern[..i].to_string()),
            Some(_) => {
                return Err(ConfigError::new(format!(
                    "route pattern `{pattern}` has `*` before its end; only a trailing `*` (prefix match) is supported"
                )))
            }
        };
        self.routes.push(Route {
            method,
            pattern,
            policy,
        });
        Ok(())
    }

    fn find(&self, method: &Method, path: &str) -> Option<&RetryPolicy> {
        self.routes
            .iter()
            .find(|route| {
                route.method.as_ref().is_none_or(|m| m == method)
                    && match &route.pattern {
                        PathPattern::Exact(p) => p == path,
                        PathPattern::Prefix(p) => path.starts_with(p.as_str()),
                    }
            })
            .map(|route| &route.policy)
    }

    /// The policy for one request: its extensions, then the table, then the default.
    pub(crate) fn choose(
        &self,
        default: &RetryPolicy,
        method: &Method,
        path: &str,
        extensions: &Extensions,
    ) -> RetryPolicy {
        if let Some(policy) = extensions.get::<RetryPolicy>() {
            return *policy;
        }
        if self.routes.is_empty() {
            return *default;
        }
        *self.find(method, path).unwrap_or(default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets() {
        let h = HeaderMap::new();
        assert!(RetryPolicy::by_method().may_resend(&Method::POST, &h, false));
        assert!(!RetryPolicy::by_method().may_resend(&Method::POST, &h, true));
        assert!(RetryPolicy::by_method().may_resend(&Method::PUT, &h, true));
        assert!(!RetryPolicy::never().may_resend(&Method::GET, &h, false));
        assert!(RetryPolicy::reads_only().may_resend(&Method::GET, &h, true));
        assert!(!RetryPolicy::reads_only().may_resend(&Method::PUT, &h, false));
        assert!(RetryPolicy::idempotent().may_resend(&Method::PATCH, &h, true));
        assert!(RetryPolicy::never().write(true).is_write(&Method::GET));
        assert!(RetryPolicy::by_method().is_write(&Method::PATCH));
    }

    #[test]
    fn extensions_beat_routes_beat_default() {
        let mut table = RouteTable::default();
        table
            .add(Some(Method::POST), "/api/accounts*", RetryPolicy::never())
            .unwrap();
        table.add(None, "/api/exact", RetryPolicy::reads_only()).unwrap();
        let default = RetryPolicy::by_method();
        let none = Extensions::new();
        assert_eq!(
            table.choose(&default, &Method::POST, "/api/accounts(1)", &none),
            RetryPolicy::never()
        );
        assert_eq!(
            table.choose(&default, &Method::GET, "/api/accounts", &none),
            default
        );
        assert_eq!(
            table.choose(&default, &Method::GET, "/api/exact", &none),
            RetryPolicy::reads_only()
        );
        assert_eq!(
            table.choose(&default, &Method::GET, "/api/exact/more", &none),
            default
        );
        let mut ext = Extensions::new();
        ext.insert(RetryPolicy::idempotent());
        assert_eq!(
            table.choose(&default, &Method::POST, "/api/accounts", &ext),
            RetryPolicy::idempotent()
        );
    }

    #[test]
    fn bad_patterns_are_refused() {
        let mut table = RouteTable::default();
        assert!(table
            .add(None, "api", RetryPolicy::never())
            .unwrap_err()
            .to_string()
            .contains("start with `/`"));
        assert!(table
            .add(None, "/a*b", RetryPolicy::never())
            .unwrap_err()
            .to_string()
            .contains("trailing `*`"));
    }
}
