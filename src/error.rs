//! The errors of the crate: [`ConfigError`] at build time, [`FailoverError`] per call.

use std::error::Error as StdError;
use std::fmt;

use http::StatusCode;

use crate::classify::DownKind;
use crate::endpoint::Endpoint;

/// A boxed error, as tower services use.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A configuration mistake, found when the layer is built. The message says what to fix.
///
/// ```
/// use http::Method;
/// use tower_failover::{Endpoints, FailoverLayer, RetryPolicy};
///
/// let err = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
///     .route(Method::GET, "api/data/*", RetryPolicy::reads_only())
///     .build()
///     .unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "route pattern `api/data/*` must start with `/` (it matches the request path)"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        ConfigError {
            message: message.into(),
        }
    }

    pub(crate) fn context(self, what: &str) -> Self {
        ConfigError {
            message: format!("{what}: {}", self.message),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for ConfigError {}

/// Why a call that failed on an endpoint was not re-sent, from
/// [`FailoverError::not_resent_because`].
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_failover::{Endpoints, FailoverLayer, NotResent, ReplayBody, Side};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
/// let handle = layer.handle();
/// // The primary answers 503, the alternate 200.
/// let client = tower::service_fn(|request: http::Request<ReplayBody<Full<Bytes>>>| async move {
///     let status = if request.uri().host() == Some("contoso.api.crm.dynamics.com") { 503 } else { 200 };
///     Ok::<_, Infallible>(http::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap())
/// });
/// let mut service = ServiceBuilder::new().layer(layer).service(client);
///
/// // A POST that reached a failing primary may have been applied there: not sent again.
/// let request = http::Request::post("https://contoso.api.crm.dynamics.com/api/data/v9.2/accounts")
///     .body(Full::new(Bytes::from_static(br#"{"name":"Contoso"}"#)))
///     .unwrap();
/// let err = service.ready().await.unwrap().call(request).await.unwrap_err();
/// assert_eq!(err.not_resent_because(), Some(NotResent::NotIdempotent));
/// assert!(!NotResent::NotIdempotent.is_body());
/// assert!(err.possibly_applied());
/// // Later calls go to the alternate all the same.
/// assert_eq!(handle.active(), Side::Alternate);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotResent {
    /// The request may have reached the server and is not idempotent (no idempotent method,
    /// no `Idempotency-Key` header): sending it again could apply it twice.
    NotIdempotent,
    /// Automatic switching is off (`auto_switch(false)`) or no alternate is configured.
    AutoSwitchOff,
    /// The body grew past the replay cap, so the part already sent is gone.
    BodyOverCap {
        /// The cap in bytes.
        cap: usize,
    },
    /// The first attempt still holds the body, so it cannot be replayed: the server answered
    /// before reading it all, or the attempt failed (timed out, say) while the client was
    /// still sending it.
    BodyInUse,
    /// Reading the body failed during the first attempt.
    BodyFailed,
    /// The request was not routed through failover (its authority is not one of the pair).
    NotRouted,
    /// The request's [`RetryPolicy`](crate::RetryPolicy) does not allow it (`never`, or
    /// `reads_only` for a write).
    PolicyForbids,
    /// The retry budget is spent: re-sends already reach the configured share of traffic.
    BudgetExhausted,
    /// The call's deadline leaves no time for another attempt.
    DeadlineTooClose,
    /// The inner service could not get ready for the re-send (its `poll_ready` failed), so the
    /// re-send never went out.
    ServiceNotReady,
    /// A write that may have been received was to be re-sent on the other endpoint, but calls
    /// moved off that endpoint again before it went out: the switch that moved them had already
    /// made its data-loss report, without this write, so it is not sent there.
    SwitchedAgain,
}

impl NotResent {
    /// True for the reasons that are about the body rather than the request's semantics; a
    /// call refused for one fails with [`FailoverErrorKind::NotReplayable`].
    ///
    /// ```
    /// use tower_failover::NotResent;
    ///
    /// assert!(NotResent::BodyOverCap { cap: 65536 }.is_body());
    /// assert!(!NotResent::BudgetExhausted.is_body());
    /// ```
    pub fn is_body(&self) -> bool {
        matches!(
            self,
            NotResent::BodyOverCap { .. } | NotResent::BodyInUse | NotResent::BodyFailed
        )
    }
}

impl fmt::Display for NotResent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotResent::NotIdempotent => f.write_str(
                "the request is not idempotent (method is not GET/HEAD/OPTIONS/TRACE/PUT/DELETE and there is no Idempotency-Key header)",
            ),
            NotResent::AutoSwitchOff => f.write_str("automatic switching is off or there is no alternate"),
            NotResent::BodyOverCap { cap } => {
                write!(f, "the request body is larger than the replay cap of {cap} bytes")
            }
            NotResent::BodyInUse => f.write_str(
                "the first attempt still holds the request body (the server answered before reading it all, or the attempt failed while the body was still being sent)",
            ),
            NotResent::BodyFailed => f.write_str("reading the request body failed"),
            NotResent::NotRouted => f.write_str("the request does not name a failover endpoint"),
            NotResent::PolicyForbids => f.write_str("its retry policy does not allow re-sending it"),
            NotResent::BudgetExhausted => f.write_str("the retry budget is spent"),
            NotResent::DeadlineTooClose => f.write_str("the call's deadline leaves no time for another attempt"),
            NotResent::ServiceNotReady => f.write_str("the inner service could not get ready for the re-send"),
            NotResent::SwitchedAgain => {
                f.write_str("calls moved off the endpoint it was to be re-sent on before the re-send went out")
            }
        }
    }
}

/// What went wrong with a call, in the terms of the Dynamics 365 SDK's three exceptions plus
/// the cases a replaying client adds.
///
/// After a re-send, the kind is the second attempt's failure.
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_failover::{Endpoints, FailoverErrorKind, FailoverLayer, ReplayBody};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // Both endpoints refuse the connection.
/// let client = tower::service_fn(|_request: http::Request<ReplayBody<Full<Bytes>>>| async {
///     Err::<http::Response<Full<Bytes>>, _>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
/// });
/// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
/// let mut service = ServiceBuilder::new().layer(layer).service(client);
/// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
///     .body(Full::new(Bytes::new()))
///     .unwrap();
/// let err = service.ready().await.unwrap().call(request).await.unwrap_err();
///
/// fn advice(kind: &FailoverErrorKind) -> &'static str {
///     match kind {
///         FailoverErrorKind::EndpointNotFound => "check DNS and the network",
///         FailoverErrorKind::Timeout | FailoverErrorKind::DeadlineExceeded => "try again later",
///         FailoverErrorKind::NotReplayable { .. } => "send it again yourself",
///         _ => "see the error's source",
///     }
/// }
/// assert_eq!(err.kind(), &FailoverErrorKind::EndpointNotFound);
/// assert_eq!(advice(err.kind()), "check DNS and the network");
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailoverErrorKind {
    /// The endpoint could not be reached (connect refused, DNS failure): the SDK's
    /// `EndpointNotFoundException`.
    EndpointNotFound,
    /// The connection was lost after the request may have been sent (reset, closed early).
    ConnectionLost,
    /// The endpoint refused the request before processing it (HTTP/2 `REFUSED_STREAM`, or a
    /// `GOAWAY` below its stream): not applied.
    Refused,
    /// The attempt timed out: the SDK's `TimeoutException`.
    Timeout,
    /// The service answered with the failover fault code (`0x8004B065` / `-2147176347`):
    /// the SDK's `FaultException<OrganizationServiceFault>`.
    ServiceFault {
        /// The fault code as a signed 32-bit value (`-2147176347`).
        code: i64,
    },
    /// The service (or a gateway before it) answered 502, 503 or 504; with a classifier of
    /// your own (or tower-http's, through `TowerHttpClassifier`), any status it judged down.
    Unavailable {
        /// The status it answered with.
        status: StatusCode,
    },
    /// The call found its endpoint down and could have gone to the other one, but its body
    /// could not be replayed.
    NotReplayable {
        /// Why not.
        reason: NotResent,
    },
    /// The call's overall deadline passed (across attempts and waits).
    DeadlineExceeded,
    /// The inner service failed in a way that is not an endpoint outage (its readiness
    /// included); see `source()`. A response, whatever its status, is never an error.
    Inner,
}

impl FailoverErrorKind {
    pub(crate) fn from_down(kind: &DownKind) -> Self {
        match kind {
            DownKind::NotFound => FailoverErrorKind::EndpointNotFound,
            DownKind::ConnectionLost => FailoverErrorKind::ConnectionLost,
            DownKind::Refused => FailoverErrorKind::Refused,
            DownKind::Timeout => FailoverErrorKind::Timeout,
            DownKind::ServiceFault { code } => FailoverErrorKind::ServiceFault { code: *code },
            DownKind::Unavailable { status } => FailoverErrorKind::Unavailable { status: *status },
        }
    }
}

impl FailoverErrorKind {
    /// A stable snake-case name for programs (logs, JSON, metrics labels); `Display` is for
    /// people.
    ///
    /// ```
    /// use tower_failover::FailoverErrorKind;
    ///
    /// assert_eq!(FailoverErrorKind::EndpointNotFound.name(), "endpoint_not_found");
    /// assert_eq!(FailoverErrorKind::Timeout.name(), "timeout");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            FailoverErrorKind::EndpointNotFound => "endpoint_not_found",
            FailoverErrorKind::ConnectionLost => "connection_lost",
            FailoverErrorKind::Refused => "refused",
            FailoverErrorKind::Timeout => "timeout",
            FailoverErrorKind::ServiceFault { .. } => "service_fault",
            FailoverErrorKind::Unavailable { .. } => "unavailable",
            FailoverErrorKind::NotReplayable { .. } => "not_replayable",
            FailoverErrorKind::DeadlineExceeded => "deadline_exceeded",
            FailoverErrorKind::Inner => "inner",
        }
    }
}

impl fmt::Display for FailoverErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailoverErrorKind::EndpointNotFound => f.write_str("endpoint not found"),
            FailoverErrorKind::ConnectionLost => f.write_str("connection lost"),
            FailoverErrorKind::Refused => f.write_str("refused before processing"),
            FailoverErrorKind::Timeout => f.write_str("timed out"),
            FailoverErrorKind::ServiceFault { code } => {
                write!(f, "service fault {code} (0x{:08X})", *code as u32)
            }
            FailoverErrorKind::Unavailable { status } => write!(f, "unavailable ({status})"),
            FailoverErrorKind::NotReplayable { .. } => f.write_str("not replayable"),
            FailoverErrorKind::DeadlineExceeded => f.write_str("deadline exceeded"),
            FailoverErrorKind::Inner => f.write_str("request failed"),
        }
    }
}

/// The cause recorded when a call's deadline passes: the error of its last attempt.
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use std::time::Duration;
/// use tower_failover::{DeadlineElapsed, Endpoints, FailoverErrorKind, FailoverLayer, ReplayBody, RetryPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // An endpoint that never answers.
/// let client = tower::service_fn(|_request: http::Request<ReplayBody<Full<Bytes>>>| async {
///     std::future::pending::<Result<http::Response<Full<Bytes>>, Infallible>>().await
/// });
/// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
///     .default_policy(RetryPolicy::by_method().deadline(Duration::from_millis(50)))
///     .build()
///     .unwrap();
/// let mut service = ServiceBuilder::new().layer(layer).service(client);
/// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
///     .body(Full::new(Bytes::new()))
///     .unwrap();
/// let err = service.ready().await.unwrap().call(request).await.unwrap_err();
/// assert_eq!(err.kind(), &FailoverErrorKind::DeadlineExceeded);
/// assert!(err.last_attempt().error().unwrap().is::<DeadlineElapsed>());
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlineElapsed;

impl fmt::Display for DeadlineElapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the call's deadline passed")
    }
}

impl StdError for DeadlineElapsed {}

/// How one attempt failed: the endpoint it went to and either the error or the response
/// status the classifier judged a failure. Reached through [`FailoverError::last_attempt`],
/// [`FailoverError::first_attempt`], and [`FailoverError`]'s `source()`.
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use std::io;
/// use http::StatusCode;
/// use tower_failover::{Endpoints, FailoverLayer, ReplayBody};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // The primary answers 503; the alternate's connection is reset.
/// let client = tower::service_fn(|request: http::Request<ReplayBody<Full<Bytes>>>| async move {
///     if request.uri().host() == Some("contoso.api.crm.dynamics.com") {
///         Ok(http::Response::builder().status(503).body(Full::new(Bytes::new())).unwrap())
///     } else {
///         Err(io::Error::from(io::ErrorKind::ConnectionReset))
///     }
/// });
/// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
/// let mut service = ServiceBuilder::new().layer(layer).service(client);
/// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
///     .body(Full::new(Bytes::new()))
///     .unwrap();
/// let err = service.ready().await.unwrap().call(request).await.unwrap_err();
///
/// let first = err.first_attempt().unwrap();
/// assert_eq!(first.endpoint().unwrap().host(), "contoso.api.crm.dynamics.com");
/// assert_eq!(first.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
/// assert!(first.error().is_none());
///
/// let last = err.last_attempt();
/// assert_eq!(last.endpoint().unwrap().host(), "contoso--s.api.crm.dynamics.com");
/// assert_eq!(last.status(), None);
/// assert!(last.error().unwrap().is::<io::Error>());
/// # }
/// ```
#[derive(Debug)]
pub struct AttemptError {
    endpoint: Option<Endpoint>,
    cause: AttemptCause,
}

#[derive(Debug)]
enum AttemptCause {
    Error(BoxError),
    Response {
        status: StatusCode,
        kind: Option<DownKind>,
    },
}

impl AttemptError {
    pub(crate) fn from_error(endpoint: Option<Endpoint>, error: BoxError) -> Self {
        AttemptError {
            endpoint,
            cause: AttemptCause::Error(error),
        }
    }

    pub(crate) fn from_response(
        endpoint: Option<Endpoint>,
        status: StatusCode,
        kind: Option<DownKind>,
    ) -> Self {
        AttemptError {
            endpoint,
            cause: AttemptCause::Response { status, kind },
        }
    }

    /// The endpoint the attempt went to (`None` for requests that were not routed).
    pub fn endpoint(&self) -> Option<&Endpoint> {
        self.endpoint.as_ref()
    }

    /// The response status, when the attempt failed with a response rather than an error.
    pub fn status(&self) -> Option<StatusCode> {
        match &self.cause {
            AttemptCause::Response { status, .. } => Some(*status),
            AttemptCause::Error(_) => None,
        }
    }

    /// The inner service's error, when the attempt failed with one.
    pub fn error(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        match &self.cause {
            AttemptCause::Error(e) => Some(&**e),
            AttemptCause::Response { .. } => None,
        }
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(endpoint) = &self.endpoint {
            write!(f, "{endpoint}: ")?;
        }
        match &self.cause {
            AttemptCause::Error(e) => {
                write!(f, "{e}")?;
                // Client errors often say only "client error (SendRequest)" at the top; the
                // innermost cause is what a person can act on.
                let mut root: &(dyn StdError + 'static) = &**e;
                while let Some(next) = root.source() {
                    root = next;
                }
                if !std::ptr::addr_eq(root, &**e) {
                    write!(f, " ({root})")?;
                }
                Ok(())
            }
            AttemptCause::Response {
                status,
                kind: Some(kind),
            } => write!(f, "answered {status} ({kind})"),
            AttemptCause::Response { status, kind: None } => write!(f, "answered {status}"),
        }
    }
}

impl StdError for AttemptError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.cause {
            AttemptCause::Error(e) => Some(&**e as &(dyn StdError + 'static)),
            AttemptCause::Response { .. } => None,
        }
    }
}

/// The error of a call through [`Failover`](crate::Failover).
///
/// `kind()` says what failed, `possibly_applied()` whether the server may have applied the
/// request anyway, `not_resent_because()` why it was not tried again, and `source()` leads to
/// the last attempt's cause; `first_attempt()` keeps the first attempt's cause when there were
/// two.
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_failover::{Endpoints, FailoverError, FailoverErrorKind, FailoverLayer, ReplayBody};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// fn explain(err: &FailoverError) -> String {
///     match err.kind() {
///         FailoverErrorKind::EndpointNotFound => "both endpoints unreachable".into(),
///         _ if err.possibly_applied() => format!("check before retrying: {err}"),
///         _ => err.to_string(),
///     }
/// }
///
/// // Both endpoints answer 503.
/// let client = tower::service_fn(|_request: http::Request<ReplayBody<Full<Bytes>>>| async {
///     Ok::<_, Infallible>(http::Response::builder().status(503).body(Full::new(Bytes::new())).unwrap())
/// });
/// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
/// let mut service = ServiceBuilder::new().layer(layer).service(client);
/// let request = http::Request::post("https://contoso.api.crm.dynamics.com/api/data/v9.2/accounts")
///     .body(Full::new(Bytes::from_static(br#"{"name":"Contoso"}"#)))
///     .unwrap();
/// let err = service.ready().await.unwrap().call(request).await.unwrap_err();
/// assert!(explain(&err).starts_with("check before retrying: unavailable (503 Service Unavailable)"));
/// # }
/// ```
#[derive(Debug)]
pub struct FailoverError {
    // Boxed so a `Result<Response, FailoverError>` stays as small as the response.
    inner: Box<ErrorInner>,
}

#[derive(Debug)]
struct ErrorInner {
    kind: FailoverErrorKind,
    possibly_applied: bool,
    not_resent: Option<NotResent>,
    last: AttemptError,
    first: Option<AttemptError>,
    // Whether the re-send after `first` went out; false when it could not be sent.
    resent: bool,
}

impl FailoverError {
    pub(crate) fn new(kind: FailoverErrorKind, possibly_applied: bool, last: AttemptError) -> Self {
        FailoverError {
            inner: Box::new(ErrorInner {
                kind,
                possibly_applied,
                not_resent: None,
                last,
                first: None,
                resent: false,
            }),
        }
    }

    /// Marks the call as possibly applied, whatever its last attempt showed: an earlier one
    /// may have been received.
    pub(crate) fn possibly_applied_anyway(mut self) -> Self {
        self.inner.possibly_applied = true;
        self
    }

    pub(crate) fn not_resent(mut self, reason: NotResent) -> Self {
        self.inner.not_resent = Some(reason);
        self
    }

    /// The call failed on its first endpoint with `first`, and was re-sent.
    pub(crate) fn with_first(mut self, first: AttemptError) -> Self {
        self.inner.first = Some(first);
        self.inner.resent = true;
        self
    }

    /// The call failed on its first endpoint with `first`, and its re-send could not go out.
    pub(crate) fn with_unsent_first(mut self, first: AttemptError) -> Self {
        self.inner.first = Some(first);
        self.inner.resent = false;
        self
    }

    /// What failed.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # use bytes::Bytes;
    /// # use http_body_util::Full;
    /// # use tower::{Service, ServiceBuilder, ServiceExt};
    /// # use tower_failover::{Endpoints, FailoverErrorKind, FailoverLayer, ReplayBody};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // Both endpoints answer 503.
    /// let client = tower::service_fn(|_request: http::Request<ReplayBody<Full<Bytes>>>| async {
    ///     Ok::<_, Infallible>(http::Response::builder().status(503).body(Full::new(Bytes::new())).unwrap())
    /// });
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
    ///     .body(Full::new(Bytes::new()))
    ///     .unwrap();
    /// let err = service.ready().await.unwrap().call(request).await.unwrap_err();
    /// // Re-sent on the alternate, which failed too.
    /// assert_eq!(err.kind(), &FailoverErrorKind::Unavailable { status: http::StatusCode::SERVICE_UNAVAILABLE });
    /// # }
    /// ```
    pub fn kind(&self) -> &FailoverErrorKind {
        &self.inner.kind
    }

    /// True when the request may have been applied by a server even though the call failed:
    /// it was sent (or partly sent) and the outcome is unknown. Only a failure before the
    /// request left the client (connect refused, DNS), or an HTTP/2 refusal that says the
    /// server did not process it, proves it was not applied.
    ///
    /// The caller should check (read back by key) before sending a write again.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # use bytes::Bytes;
    /// # use http_body_util::Full;
    /// # use tower::{Service, ServiceBuilder, ServiceExt};
    /// # use tower_failover::{Endpoints, FailoverLayer, ReplayBody};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // Both endpoints refuse the connection.
    /// let client = tower::service_fn(|_request: http::Request<ReplayBody<Full<Bytes>>>| async {
    ///     Err::<http::Response<Full<Bytes>>, _>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    /// });
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// let request = http::Request::post("https://contoso.api.crm.dynamics.com/api/data/v9.2/accounts")
    ///     .body(Full::new(Bytes::from_static(br#"{"name":"Contoso"}"#)))
    ///     .unwrap();
    /// let err = service.ready().await.unwrap().call(request).await.unwrap_err();
    /// // Refused at connect on both sides: the POST was re-sent, and never applied.
    /// assert!(err.was_resent());
    /// assert!(!err.possibly_applied());
    /// # }
    /// ```
    pub fn possibly_applied(&self) -> bool {
        self.inner.possibly_applied
    }

    /// Why the call was not re-sent on the other endpoint after its endpoint was found down.
    /// `None` when it was re-sent, or when the failure was not an outage.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # use bytes::Bytes;
    /// # use http_body_util::Full;
    /// # use tower::{Service, ServiceBuilder, ServiceExt};
    /// # use tower_failover::{Endpoints, FailoverLayer, NotResent, ReplayBody};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // The primary answers 503, the alternate 200.
    /// let client = tower::service_fn(|request: http::Request<ReplayBody<Full<Bytes>>>| async move {
    ///     let status = if request.uri().host() == Some("contoso.api.crm.dynamics.com") { 503 } else { 200 };
    ///     Ok::<_, Infallible>(http::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap())
    /// });
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .auto_switch(false)
    ///     .build()
    ///     .unwrap();
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
    ///     .body(Full::new(Bytes::new()))
    ///     .unwrap();
    /// let err = service.ready().await.unwrap().call(request).await.unwrap_err();
    /// assert_eq!(err.not_resent_because(), Some(NotResent::AutoSwitchOff));
    /// # }
    /// ```
    pub fn not_resent_because(&self) -> Option<NotResent> {
        self.inner.not_resent
    }

    /// The last attempt's failure.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # use bytes::Bytes;
    /// # use http_body_util::Full;
    /// # use tower::{Service, ServiceBuilder, ServiceExt};
    /// # use tower_failover::{Endpoints, FailoverLayer, ReplayBody};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // Both endpoints answer 503.
    /// let client = tower::service_fn(|_request: http::Request<ReplayBody<Full<Bytes>>>| async {
    ///     Ok::<_, Infallible>(http::Response::builder().status(503).body(Full::new(Bytes::new())).unwrap())
    /// });
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
    ///     .body(Full::new(Bytes::new()))
    ///     .unwrap();
    /// let err = service.ready().await.unwrap().call(request).await.unwrap_err();
    /// let last = err.last_attempt();
    /// assert_eq!(last.endpoint().unwrap().to_string(), "https://contoso--s.api.crm.dynamics.com");
    /// assert_eq!(last.status(), Some(http::StatusCode::SERVICE_UNAVAILABLE));
    /// # }
    /// ```
    pub fn last_attempt(&self) -> &AttemptError {
        &self.inner.last
    }

    /// The first attempt's failure, when the call failed on its first endpoint and was re-sent
    /// (or its re-send could not go out: then [`was_resent`](Self::was_resent) is false and
    /// [`not_resent_because`](Self::not_resent_because) says why).
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # use bytes::Bytes;
    /// # use http_body_util::Full;
    /// # use tower::{Service, ServiceBuilder, ServiceExt};
    /// # use tower_failover::{Endpoints, FailoverLayer, ReplayBody};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // Both endpoints answer 503.
    /// let client = tower::service_fn(|_request: http::Request<ReplayBody<Full<Bytes>>>| async {
    ///     Ok::<_, Infallible>(http::Response::builder().status(503).body(Full::new(Bytes::new())).unwrap())
    /// });
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
    ///     .body(Full::new(Bytes::new()))
    ///     .unwrap();
    /// let err = service.ready().await.unwrap().call(request).await.unwrap_err();
    /// let first = err.first_attempt().expect("re-sent on the alternate");
    /// assert_eq!(first.endpoint().unwrap().to_string(), "https://contoso.api.crm.dynamics.com");
    /// # }
    /// ```
    pub fn first_attempt(&self) -> Option<&AttemptError> {
        self.inner.first.as_ref()
    }

    /// True when the call was tried on both endpoints.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # use bytes::Bytes;
    /// # use http_body_util::Full;
    /// # use tower::{Service, ServiceBuilder, ServiceExt};
    /// # use tower_failover::{Endpoints, FailoverLayer, ReplayBody};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // Both endpoints answer 503.
    /// let client = tower::service_fn(|_request: http::Request<ReplayBody<Full<Bytes>>>| async {
    ///     Ok::<_, Infallible>(http::Response::builder().status(503).body(Full::new(Bytes::new())).unwrap())
    /// });
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// let read = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
    ///     .body(Full::new(Bytes::new()))
    ///     .unwrap();
    /// let write = http::Request::post("https://contoso.api.crm.dynamics.com/api/data/v9.2/accounts")
    ///     .body(Full::new(Bytes::new()))
    ///     .unwrap();
    /// let read_err = service.ready().await.unwrap().call(read).await.unwrap_err();
    /// let write_err = service.ready().await.unwrap().call(write).await.unwrap_err();
    /// // The GET is idempotent, so it was re-sent; the POST may have been applied, so it was not.
    /// assert!(read_err.was_resent());
    /// assert!(!write_err.was_resent());
    /// # }
    /// ```
    pub fn was_resent(&self) -> bool {
        self.inner.resent
    }
}

impl fmt::Display for FailoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.inner.kind, &self.inner.first) {
            (FailoverErrorKind::NotReplayable { reason }, _) => write!(
                f,
                "not re-sent on the other endpoint: {reason}; first attempt: {}",
                self.inner.last
            )?,
            (kind, Some(first)) if self.inner.resent => write!(
                f,
                "{kind} on both endpoints: first attempt {first}; re-sent attempt {}",
                self.inner.last
            )?,
            (kind, Some(first)) => {
                write!(f, "{kind}: {}", self.inner.last)?;
                if let Some(reason) = &self.inner.not_resent {
                    write!(f, "; not re-sent because {reason}")?;
                }
                write!(f, "; first attempt {first}")?;
            }
            (kind, None) => {
                write!(f, "{kind}: {}", self.inner.last)?;
                if let Some(reason) = &self.inner.not_resent {
                    write!(f, "; not re-sent because {reason}")?;
                }
            }
        }
        if self.inner.possibly_applied {
            f.write_str("; the request may have been applied, check before sending it again")?;
        }
        Ok(())
    }
}

impl StdError for FailoverError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.inner.last)
    }
}
