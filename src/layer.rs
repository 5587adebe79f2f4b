//! [`FailoverLayer`] and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
use http::Method;

use tower_layer::Layer;

use crate::budget::{Bucket, RetryBudget};
use crate::classify::DefaultClassifier;
use crate::endpoint::Endpoints;
use crate::error::ConfigError;
use crate::failback::Failback;
use crate::ledger::{Ledger, LedgerConfig, MAX_LEDGER_CAPACITY};
use crate::policy::{RetryPolicy, RouteTable};
use crate::replay::DEFAULT_REPLAY_CAP;
use crate::service::Failover;
use crate::state::{Callbacks, Config, FailoverHandle, Shared, SwitchEvent};

/// The largest replay cap accepted: a cap is memory held per call in flight.
pub const MAX_REPLAY_CAP: usize = 64 * 1024 * 1024;

/// Wraps an HTTP service with disaster-recovery failover.
///
/// Every service the layer makes, and every clone of them, shares one switch state; get the
/// application's view of it with [`FailoverLayer::handle`].
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_failover::{Endpoints, FailoverLayer};
///
/// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
///     .replay_cap(256 * 1024)
///     .on_switched(|event| eprintln!("{event}"))
///     .build()
///     .unwrap();
/// let handle = layer.handle();
/// let service = ServiceBuilder::new()
///     .layer(layer)
///     .service(tower::service_fn(|_req: http::Request<tower_failover::ReplayBody<String>>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     }));
/// # let _ = (service, handle);
/// ```
#[derive(Clone)]
pub struct FailoverLayer<C = DefaultClassifier> {
    shared: Arc<Shared>,
    classifier: C,
}

impl FailoverLayer {
    /// Starts a builder for the pair.
    pub fn builder(endpoints: Endpoints) -> FailoverLayerBuilder {
        FailoverLayerBuilder {
            endpoints,
            classifier: DefaultClassifier::new(),
            replay_cap: DEFAULT_REPLAY_CAP,
            auto_switch: true,
            callbacks: Callbacks::default(),
            routes: RouteTable::default(),
            route_errors: Vec::new(),
            default_policy: RetryPolicy::by_method(),
            ledger: LedgerConfig::default(),
            data_loss_report: true,
            failover_budget: RetryBudget::new(1.0),
            throttle_budget: RetryBudget::new(0.2),
            failback: None,
        }
    }

    /// A layer with every default: the default classifier, a 64 KiB replay cap, automatic
    /// switching on.
    ///
    /// ```
    /// use tower_failover::{Endpoints, FailoverLayer, Side};
    ///
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let handle = layer.handle();
    /// assert!(handle.auto_switch_enabled());
    /// assert_eq!(handle.active(), Side::Primary);
    /// ```
    pub fn new(endpoints: Endpoints) -> Self {
        Self::builder(endpoints)
            .build()
            .expect("the defaults are a valid configuration")
    }
}

impl<C> FailoverLayer<C> {
    /// The application's handle on the shared switch state.
    ///
    /// ```
    /// use tower_failover::{Endpoints, FailoverLayer, Side};
    ///
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let (control, observer) = (layer.handle(), layer.handle());
    /// control.switch_endpoint();
    /// // One switch state behind every handle and every service the layer makes.
    /// assert_eq!(observer.active(), Side::Alternate);
    /// ```
    pub fn handle(&self) -> FailoverHandle {
        FailoverHandle::new(self.shared.clone())
    }

    /// The classifier every service (and middleware) made from this layer uses.
    pub fn classifier(&self) -> &C {
        &self.classifier
    }
}

impl<S, C: Clone> Layer<S> for FailoverLayer<C> {
    type Service = Failover<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Failover::new(inner, self.shared.clone(), self.classifier.clone())
    }
}

impl<C> fmt::Debug for FailoverLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailoverLayer")
            .field("endpoints", &self.shared.endpoints)
            .field("replay_cap", &self.shared.replay_cap)
            .finish_non_exhaustive()
    }
}

/// Configures a [`FailoverLayer`]; made by [`FailoverLayer::builder`].
///
/// Every setting has a default; [`build`](Self::build) checks them all and reports the first
/// mistake as a [`ConfigError`].
///
/// ```
/// use std::time::Duration;
/// use http::Method;
/// use tower_failover::{Endpoints, Failback, FailoverLayer, FailoverLayerBuilder, RetryPolicy};
///
/// // The team's settings in one place; each application adds its own routes.
/// fn team_defaults(organization: &str) -> FailoverLayerBuilder {
///     FailoverLayer::builder(Endpoints::dynamics(organization).unwrap())
///         .replay_cap(256 * 1024)
///         .replication_window(Duration::from_secs(120))
///         .failback(Failback::dynamics())
/// }
///
/// let layer = team_defaults("https://contoso.api.crm.dynamics.com")
///     .route(Method::PATCH, "/api/data/v9.2/accounts*", RetryPolicy::idempotent())
///     .build()
///     .unwrap();
/// assert_eq!(layer.handle().endpoints().alternate().unwrap().host(), "contoso--s.api.crm.dynamics.com");
/// ```
pub struct FailoverLayerBuilder<C = DefaultClassifier> {
    endpoints: Endpoints,
    classifier: C,
    replay_cap: usize,
    auto_switch: bool,
    callbacks: Callbacks,
    routes: RouteTable,
    // Route mistakes are kept until `build`, which reports them, so the builder chains.
    route_errors: Vec<ConfigError>,
    default_policy: RetryPolicy,
    ledger: LedgerConfig,
    data_loss_report: bool,
    failover_budget: RetryBudget,
    throttle_budget: RetryBudget,
    failback: Option<Failback>,
}

impl<C> FailoverLayerBuilder<C> {
    /// The classifier that decides when an endpoint is down (default: [`DefaultClassifier`]).
    /// A closure `Fn(Outcome<'_>) -> Verdict` works.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_failover::{
    ///     Classifier, DefaultClassifier, DownKind, Endpoints, FailoverLayer, Outcome, ReplayBody, Side, Verdict,
    /// };
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     // A gateway that answers 500 when the organization behind it is gone: an outage too.
    ///     .classifier(|outcome: Outcome<'_>| match outcome {
    ///         Outcome::Response { status, .. } if status == 500 => {
    ///             Verdict::EndpointDown(DownKind::Unavailable { status })
    ///         }
    ///         other => DefaultClassifier::new().classify(other),
    ///     })
    ///     .build()
    ///     .unwrap();
    /// let handle = layer.handle();
    /// // The primary answers 500, the alternate 200.
    /// let client = tower::service_fn(|request: http::Request<ReplayBody<Full<Bytes>>>| async move {
    ///     let status = if request.uri().host() == Some("contoso.api.crm.dynamics.com") { 500 } else { 200 };
    ///     Ok::<_, Infallible>(http::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap())
    /// });
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
    ///     .body(Full::new(Bytes::new()))
    ///     .unwrap();
    /// let response = service.ready().await.unwrap().call(request).await.unwrap();
    /// assert_eq!(response.status(), 200);
    /// assert_eq!(handle.active(), Side::Alternate);
    /// # }
    /// ```
    pub fn classifier<C2>(self, classifier: C2) -> FailoverLayerBuilder<C2> {
        FailoverLayerBuilder {
            endpoints: self.endpoints,
            classifier,
            replay_cap: self.replay_cap,
            auto_switch: self.auto_switch,
            callbacks: self.callbacks,
            routes: self.routes,
            route_errors: self.route_errors,
            default_policy: self.default_policy,
            ledger: self.ledger,
            data_loss_report: self.data_loss_report,
            failover_budget: self.failover_budget,
            throttle_budget: self.throttle_budget,
            failback: self.failback,
        }
    }

    /// The most request-body bytes kept per call for a re-send (default 64 KiB). The cap bounds
    /// what an attempt has *read* when it fails: a larger body refused at connect is re-sent
    /// whole; once more than the cap has been read the body streams on, keeps nothing, and a
    /// re-send is refused with [`NotResent::BodyOverCap`](crate::NotResent::BodyOverCap).
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_failover::{Endpoints, FailoverErrorKind, FailoverLayer, NotResent, ReplayBody};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .replay_cap(1024)
    ///     .build()
    ///     .unwrap();
    /// // The primary reads the whole body, then answers 503.
    /// let client = tower::service_fn(|request: http::Request<ReplayBody<Full<Bytes>>>| async move {
    ///     let primary = request.uri().host() == Some("contoso.api.crm.dynamics.com");
    ///     request.into_body().collect().await.unwrap();
    ///     let status = if primary { 503 } else { 200 };
    ///     Ok::<_, Infallible>(http::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap())
    /// });
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// // A PUT may be sent twice, but 2 KiB were read and only 1 KiB kept.
    /// let request = http::Request::put("https://contoso.api.crm.dynamics.com/api/data/v9.2/annotations(7)")
    ///     .body(Full::new(Bytes::from(vec![b'x'; 2048])))
    ///     .unwrap();
    /// let err = service.ready().await.unwrap().call(request).await.unwrap_err();
    /// assert_eq!(err.kind(), &FailoverErrorKind::NotReplayable { reason: NotResent::BodyOverCap { cap: 1024 } });
    /// # }
    /// ```
    pub fn replay_cap(mut self, bytes: usize) -> Self {
        self.replay_cap = bytes;
        self
    }

    /// Whether a call that finds the active endpoint down switches and re-sends (default
    /// true). Off, the layer raises `SwitchRequired` (once until the next switch), does not
    /// switch, and returns the error; the application may switch with
    /// [`FailoverHandle::switch_endpoint`].
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
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .auto_switch(false)
    ///     .build()
    ///     .unwrap();
    /// let handle = layer.handle();
    /// let mut events = handle.events();
    /// // The primary answers 503, the alternate 200.
    /// let client = tower::service_fn(|request: http::Request<ReplayBody<Full<Bytes>>>| async move {
    ///     let status = if request.uri().host() == Some("contoso.api.crm.dynamics.com") { 503 } else { 200 };
    ///     Ok::<_, Infallible>(http::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap())
    /// });
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    ///
    /// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
    ///     .body(Full::new(Bytes::new()))
    ///     .unwrap();
    /// let err = service.ready().await.unwrap().call(request).await.unwrap_err();
    /// assert_eq!(err.not_resent_because(), Some(NotResent::AutoSwitchOff));
    /// assert_eq!(handle.active(), Side::Primary);
    /// assert_eq!(events.try_recv().unwrap().name(), "SwitchRequired");
    ///
    /// // The application decides to switch; later calls go to the alternate.
    /// handle.switch_endpoint();
    /// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
    ///     .body(Full::new(Bytes::new()))
    ///     .unwrap();
    /// let response = service.ready().await.unwrap().call(request).await.unwrap();
    /// assert_eq!(response.status(), 200);
    /// # }
    /// ```
    pub fn auto_switch(mut self, enabled: bool) -> Self {
        self.auto_switch = enabled;
        self
    }

    /// A callback for every `SwitchRequired` event, run synchronously before the switch (or
    /// alone, with automatic switching off). Keep it quick: switches wait for it.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use tower_failover::{Endpoints, FailoverLayer};
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = seen.clone();
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .on_switch_required(move |event| log.lock().unwrap().push(event.to_string()))
    ///     .build()
    ///     .unwrap();
    ///
    /// layer.handle().switch_endpoint();
    /// assert_eq!(
    ///     *seen.lock().unwrap(),
    ///     ["SwitchRequired https://contoso.api.crm.dynamics.com \
    ///       -> https://contoso--s.api.crm.dynamics.com (manual)"]
    /// );
    /// ```
    pub fn on_switch_required(mut self, callback: impl Fn(&SwitchEvent) + Send + Sync + 'static) -> Self {
        self.callbacks.on_switch_required.push(Arc::new(callback));
        self
    }

    /// A callback for every `Switched` event, run synchronously right after the switch. The
    /// handle's state and last report already show the switch it is called for.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use tower_failover::{Endpoints, FailoverLayer, Side};
    ///
    /// let now_on = Arc::new(Mutex::new(None));
    /// let log = now_on.clone();
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .on_switched(move |event| *log.lock().unwrap() = Some(event.new_endpoint().host().to_string()))
    ///     .build()
    ///     .unwrap();
    ///
    /// layer.handle().switch_to(Side::Alternate);
    /// assert_eq!(now_on.lock().unwrap().as_deref(), Some("contoso--s.api.crm.dynamics.com"));
    /// ```
    pub fn on_switched(mut self, callback: impl Fn(&SwitchEvent) + Send + Sync + 'static) -> Self {
        self.callbacks.on_switched.push(Arc::new(callback));
        self
    }

    /// The policy for requests that carry none in their extensions and match no route
    /// (default [`RetryPolicy::by_method`]).
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_failover::{Endpoints, FailoverLayer, NotResent, ReplayBody, RetryPolicy, Side};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     // Nothing is ever sent twice unless a route or the request says so.
    ///     .default_policy(RetryPolicy::never())
    ///     .build()
    ///     .unwrap();
    /// let handle = layer.handle();
    /// // The primary answers 503, the alternate 200.
    /// let client = tower::service_fn(|request: http::Request<ReplayBody<Full<Bytes>>>| async move {
    ///     let status = if request.uri().host() == Some("contoso.api.crm.dynamics.com") { 503 } else { 200 };
    ///     Ok::<_, Infallible>(http::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap())
    /// });
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
    ///     .body(Full::new(Bytes::new()))
    ///     .unwrap();
    /// let err = service.ready().await.unwrap().call(request).await.unwrap_err();
    /// assert_eq!(err.not_resent_because(), Some(NotResent::PolicyForbids));
    /// // The endpoint still switched for later calls.
    /// assert_eq!(handle.active(), Side::Alternate);
    /// # }
    /// ```
    pub fn default_policy(mut self, policy: RetryPolicy) -> Self {
        self.default_policy = policy;
        self
    }

    /// The policy for requests with this method whose path is `pattern` (exact) or starts with
    /// it (a pattern ending in `*`). Routes are tried in the order added; a policy in the
    /// request's extensions comes first. A bad pattern is reported by [`build`](Self::build).
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use http::Method;
    /// use tower_failover::{Endpoints, FailoverLayer, ReplayBody, RetryPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     // An upsert by alternate key applies once however often it is sent.
    ///     .route(Method::PATCH, "/api/data/v9.2/accounts*", RetryPolicy::idempotent())
    ///     .build()
    ///     .unwrap();
    /// // The primary answers 503, the alternate 200.
    /// let client = tower::service_fn(|request: http::Request<ReplayBody<Full<Bytes>>>| async move {
    ///     let status = if request.uri().host() == Some("contoso.api.crm.dynamics.com") { 503 } else { 200 };
    ///     Ok::<_, Infallible>(http::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap())
    /// });
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// // A PATCH that reached the failing primary: by method it would not be sent again.
    /// let upsert = http::Request::patch("https://contoso.api.crm.dynamics.com/api/data/v9.2/accounts(42)")
    ///     .body(Full::new(Bytes::from_static(br#"{"name":"Contoso"}"#)))
    ///     .unwrap();
    /// let response = service.ready().await.unwrap().call(upsert).await.unwrap();
    /// assert_eq!(response.status(), 200); // re-sent on the alternate
    /// # }
    /// ```
    pub fn route(mut self, method: Method, pattern: &str, policy: RetryPolicy) -> Self {
        if let Err(error) = self.routes.add(Some(method), pattern, policy) {
            self.route_errors.push(error);
        }
        self
    }

    /// Like [`route`](Self::route), for every method.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_failover::{Endpoints, FailoverLayer, NotResent, ReplayBody, RetryPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .route_any_method("/api/payments*", RetryPolicy::never())
    ///     .build()
    ///     .unwrap();
    /// // The primary answers 503, the alternate 200.
    /// let client = tower::service_fn(|request: http::Request<ReplayBody<Full<Bytes>>>| async move {
    ///     let status = if request.uri().host() == Some("contoso.api.crm.dynamics.com") { 503 } else { 200 };
    ///     Ok::<_, Infallible>(http::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap())
    /// });
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/payments/17")
    ///     .body(Full::new(Bytes::new()))
    ///     .unwrap();
    /// let err = service.ready().await.unwrap().call(request).await.unwrap_err();
    /// assert_eq!(err.not_resent_because(), Some(NotResent::PolicyForbids));
    ///
    /// let err = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .route_any_method("/api/*/payments", RetryPolicy::never())
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("only a trailing `*`"));
    /// # }
    /// ```
    pub fn route_any_method(mut self, pattern: &str, policy: RetryPolicy) -> Self {
        if let Err(error) = self.routes.add(None, pattern, policy) {
            self.route_errors.push(error);
        }
        self
    }

    /// Turns the data-loss report on (the default) or off. Off, writes are not recorded and
    /// `Switched` events carry no report; the ledger settings are kept, in any order, for when
    /// it is on.
    ///
    /// ```
    /// use tower_failover::{Endpoints, FailoverLayer};
    ///
    /// let endpoints = Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap();
    /// let with_report = FailoverLayer::new(endpoints.clone()).handle();
    /// let without = FailoverLayer::builder(endpoints).data_loss_report(false).build().unwrap().handle();
    ///
    /// with_report.switch_endpoint();
    /// without.switch_endpoint();
    /// assert!(with_report.last_report().unwrap().is_empty()); // a report, with nothing at risk
    /// assert!(without.last_report().is_none());
    /// ```
    pub fn data_loss_report(mut self, enabled: bool) -> Self {
        self.data_loss_report = enabled;
        self
    }

    /// How far back acknowledged writes count as at risk after a switch (default 5 minutes):
    /// the time the alternate may lag behind the primary.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use std::time::Duration;
    /// use tower_failover::{Endpoints, FailoverLayer, ReplayBody};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .replication_window(Duration::from_secs(120))
    ///     .build()
    ///     .unwrap();
    /// let handle = layer.handle();
    /// // Both endpoints answer 200.
    /// let client = tower::service_fn(|_request: http::Request<ReplayBody<Full<Bytes>>>| async {
    ///     Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
    /// });
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// let request = http::Request::post("https://contoso.api.crm.dynamics.com/api/data/v9.2/accounts")
    ///     .body(Full::new(Bytes::from_static(br#"{"name":"Contoso"}"#)))
    ///     .unwrap();
    /// let response = service.ready().await.unwrap().call(request).await.unwrap();
    ///
    /// handle.switch_endpoint();
    /// let report = handle.last_report().unwrap();
    /// assert_eq!(report.window, Duration::from_secs(120));
    /// // Acknowledged by the primary within the last two minutes: the alternate may lack it.
    /// assert_eq!(report.acknowledged.len(), 1);
    /// # }
    /// ```
    pub fn replication_window(mut self, window: Duration) -> Self {
        self.ledger.window = window;
        self
    }

    /// How many writes the ledger keeps (default 10,000, at most [`MAX_LEDGER_CAPACITY`]);
    /// beyond it the oldest are dropped and counted in the next report. Writes the server
    /// refused (a 4xx) or that provably never left the client are not reported and do not
    /// count (the ledger has room for a quarter of the capacity again in such writes waiting
    /// to leave). Above the limit, [`build`](Self::build) fails.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_failover::{Endpoints, FailoverLayer, ReplayBody, MAX_LEDGER_CAPACITY};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .ledger_capacity(2)
    ///     .build()
    ///     .unwrap();
    /// // Above the limit, the builder says so, and what to do instead.
    /// let err = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .ledger_capacity(MAX_LEDGER_CAPACITY + 1)
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("ledger_capacity(2097153) is above the limit of 2097152 writes"));
    /// let handle = layer.handle();
    /// // Both endpoints answer 200.
    /// let client = tower::service_fn(|_request: http::Request<ReplayBody<Full<Bytes>>>| async {
    ///     Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
    /// });
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// for _ in 0..3 {
    ///     let request = http::Request::post("https://contoso.api.crm.dynamics.com/api/data/v9.2/tasks")
    ///         .body(Full::new(Bytes::new()))
    ///         .unwrap();
    ///     service.ready().await.unwrap().call(request).await.unwrap();
    /// }
    ///
    /// handle.switch_endpoint();
    /// let report = handle.last_report().unwrap();
    /// assert_eq!(report.acknowledged.len(), 2);
    /// assert_eq!(report.dropped, 1); // the lists may be incomplete: check more widely
    /// # }
    /// ```
    pub fn ledger_capacity(mut self, writes: usize) -> Self {
        self.ledger.capacity = writes;
        self
    }

    /// The header that names a write in the report (default `Idempotency-Key`; e.g.
    /// `x-ms-client-request-id`). A [`WriteKey`](crate::WriteKey) in the request's extensions
    /// is used when the header is absent, or its value is marked sensitive
    /// ([`HeaderValue::set_sensitive`](http::HeaderValue::set_sensitive)): reports are logged
    /// and published, so a sensitive value is never put in one. For the same reason
    /// [`build`](Self::build) refuses a header that carries credentials (`Authorization`,
    /// `Proxy-Authorization`, `Cookie`).
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use http::header::HeaderName;
    /// use tower_failover::{Endpoints, FailoverLayer, ReplayBody};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .write_key_header(HeaderName::from_static("x-ms-client-request-id"))
    ///     .build()
    ///     .unwrap();
    /// let handle = layer.handle();
    /// // Both endpoints answer 200.
    /// let client = tower::service_fn(|_request: http::Request<ReplayBody<Full<Bytes>>>| async {
    ///     Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
    /// });
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// let request = http::Request::post("https://contoso.api.crm.dynamics.com/api/data/v9.2/accounts")
    ///     .header("x-ms-client-request-id", "6f1c2a9e-0c4d-4b7a-9f4e-1d2c3b4a5f60")
    ///     .body(Full::new(Bytes::from_static(br#"{"name":"Contoso"}"#)))
    ///     .unwrap();
    /// let response = service.ready().await.unwrap().call(request).await.unwrap();
    ///
    /// handle.switch_endpoint();
    /// let report = handle.last_report().unwrap();
    /// assert_eq!(report.acknowledged[0].key.as_deref(), Some("6f1c2a9e-0c4d-4b7a-9f4e-1d2c3b4a5f60"));
    /// # }
    /// ```
    pub fn write_key_header(mut self, name: HeaderName) -> Self {
        self.ledger.key_header = Some(name);
        self
    }

    /// Keep query strings in the report's paths (default off: queries may carry secrets).
    /// Off, the query is also taken out of the URL a reqwest error carries through
    /// `FailoverMiddleware` (its `Display`, `Debug` and `url()`).
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_failover::{Endpoints, FailoverLayer, ReplayBody};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .record_query(true)
    ///     .build()
    ///     .unwrap();
    /// let handle = layer.handle();
    /// // Both endpoints answer 200.
    /// let client = tower::service_fn(|_request: http::Request<ReplayBody<Full<Bytes>>>| async {
    ///     Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
    /// });
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// let request = http::Request::post("https://contoso.api.crm.dynamics.com/api/data/v9.2/accounts?tag=vip")
    ///     .body(Full::new(Bytes::from_static(br#"{"name":"Contoso"}"#)))
    ///     .unwrap();
    /// let response = service.ready().await.unwrap().call(request).await.unwrap();
    ///
    /// handle.switch_endpoint();
    /// let report = handle.last_report().unwrap();
    /// assert_eq!(report.acknowledged[0].path, "/api/data/v9.2/accounts?tag=vip");
    /// # }
    /// ```
    pub fn record_query(mut self, enabled: bool) -> Self {
        self.ledger.record_query = enabled;
        self
    }

    /// The budget for failover re-sends (default: ratio 1.0, every call may be re-sent once,
    /// plus 10 per second).
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_failover::{Endpoints, FailoverLayer, NotResent, ReplayBody, RetryBudget};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     // No re-sends at all: every call that meets the outage fails.
    ///     .failover_budget(RetryBudget::new(0.0).floor_per_second(0))
    ///     .build()
    ///     .unwrap();
    /// let handle = layer.handle();
    /// // The primary answers 503, the alternate 200.
    /// let client = tower::service_fn(|request: http::Request<ReplayBody<Full<Bytes>>>| async move {
    ///     let status = if request.uri().host() == Some("contoso.api.crm.dynamics.com") { 503 } else { 200 };
    ///     Ok::<_, Infallible>(http::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap())
    /// });
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
    ///     .body(Full::new(Bytes::new()))
    ///     .unwrap();
    /// let err = service.ready().await.unwrap().call(request).await.unwrap_err();
    /// assert_eq!(err.not_resent_because(), Some(NotResent::BudgetExhausted));
    /// assert_eq!(handle.counters().refused_by_budget, 1);
    /// # }
    /// ```
    pub fn failover_budget(mut self, budget: RetryBudget) -> Self {
        self.failover_budget = budget;
        self
    }

    /// The budget for throttling retries (default: 20 % of recent calls plus 10 per second).
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_failover::{Endpoints, FailoverLayer, ReplayBody, RetryBudget};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .throttle_budget(RetryBudget::new(0.0).floor_per_second(0))
    ///     .build()
    ///     .unwrap();
    /// let handle = layer.handle();
    /// // Both endpoints say "slow down".
    /// let client = tower::service_fn(|_request: http::Request<ReplayBody<Full<Bytes>>>| async {
    ///     Ok::<_, Infallible>(http::Response::builder().status(429).body(Full::new(Bytes::new())).unwrap())
    /// });
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
    ///     .body(Full::new(Bytes::new()))
    ///     .unwrap();
    /// let response = service.ready().await.unwrap().call(request).await.unwrap();
    /// // No budget for a retry: the 429 comes straight back.
    /// assert_eq!(response.status(), 429);
    /// let counters = handle.counters();
    /// assert_eq!((counters.throttled, counters.throttle_retries, counters.refused_by_budget), (1, 0, 1));
    /// # }
    /// ```
    pub fn throttle_budget(mut self, budget: RetryBudget) -> Self {
        self.throttle_budget = budget;
        self
    }

    /// Come back to the primary automatically once probes find it healthy (default: off; the
    /// application fails back with [`FailoverHandle::fail_back`]).
    ///
    /// See [`Failback`] for a failback run through.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_failover::{Endpoints, Failback, FailoverLayer, ReplayBody, Side};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .failback(Failback::dynamics())
    ///     .build()
    ///     .unwrap();
    /// let handle = layer.handle();
    /// // The primary answers 503, the alternate 200.
    /// let client = tower::service_fn(|request: http::Request<ReplayBody<Full<Bytes>>>| async move {
    ///     let status = if request.uri().host() == Some("contoso.api.crm.dynamics.com") { 503 } else { 200 };
    ///     Ok::<_, Infallible>(http::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap())
    /// });
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
    ///     .body(Full::new(Bytes::new()))
    ///     .unwrap();
    /// let response = service.ready().await.unwrap().call(request).await.unwrap();
    /// assert_eq!(handle.active(), Side::Alternate);
    /// // While calls go to the alternate, the primary's WhoAmI is probed every 5 s or so.
    /// assert!(handle.probing());
    /// # }
    /// ```
    pub fn failback(mut self, failback: Failback) -> Self {
        self.failback = Some(failback);
        self
    }

    /// Checks the configuration and makes the layer.
    ///
    /// ```
    /// use tower_failover::{Endpoints, FailoverLayer, MAX_REPLAY_CAP};
    ///
    /// let err = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .replay_cap(MAX_REPLAY_CAP + 1)
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("above the limit"));
    /// ```
    pub fn build(self) -> Result<FailoverLayer<C>, ConfigError> {
        if let Some(failback) = &self.failback {
            failback.validate()?;
        }
        if let Some(error) = self.route_errors.into_iter().next() {
            return Err(error);
        }
        self.default_policy
            .validate()
            .map_err(|e| e.context("default_policy"))?;
        self.failover_budget
            .validate()
            .map_err(|e| e.context("failover_budget"))?;
        self.throttle_budget
            .validate()
            .map_err(|e| e.context("throttle_budget"))?;
        if self.data_loss_report && self.ledger.capacity == 0 {
            return Err(ConfigError::new(
                "ledger_capacity(0) keeps no writes; turn the report off with data_loss_report(false) instead",
            ));
        }
        if self.data_loss_report && self.ledger.capacity > MAX_LEDGER_CAPACITY {
            return Err(ConfigError::new(format!(
                "ledger_capacity({}) is above the limit of {MAX_LEDGER_CAPACITY} writes; the ledger sets its bookkeeping aside up front (32 MiB at the limit), keep it near the writes you send in one replication window",
                self.ledger.capacity
            )));
        }
        if let Some(name) = self.ledger.key_header.as_ref().filter(|_| self.data_loss_report) {
            if [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE].contains(name) {
                return Err(ConfigError::new(format!(
                    "write_key_header({name}) would copy credentials into every data-loss report; name a header that identifies the write, such as idempotency-key or x-ms-client-request-id"
                )));
            }
        }
        if self.replay_cap > MAX_REPLAY_CAP {
            return Err(ConfigError::new(format!(
                "replay_cap({}) is above the limit of {MAX_REPLAY_CAP} bytes; a cap is memory held for every call in flight, keep it near your largest re-sendable request",
                self.replay_cap
            )));
        }
        Ok(FailoverLayer {
            shared: Shared::new(Config {
                endpoints: self.endpoints,
                auto_switch: self.auto_switch,
                replay_cap: self.replay_cap,
                callbacks: self.callbacks,
                routes: self.routes,
                default_policy: self.default_policy,
                record_query: self.ledger.record_query,
                ledger: self.data_loss_report.then(|| Ledger::new(self.ledger)),
                failover_budget: Bucket::new(self.failover_budget),
                throttle_budget: Bucket::new(self.throttle_budget),
                failback: self.failback,
            }),
            classifier: self.classifier,
        })
    }
}

impl<C> fmt::Debug for FailoverLayerBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailoverLayerBuilder")
            .field("endpoints", &self.endpoints)
            .field("replay_cap", &self.replay_cap)
            .field("auto_switch", &self.auto_switch)
            .finish_non_exhaustive()
    }
}
