//! [`FailoverLayer`] and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::Method;

use tower_layer::Layer;

use crate::budget::{Bucket, RetryBudget};
use crate::classify::DefaultClassifier;
use crate::endpoint::Endpoints;
use crate::error::ConfigError;
use crate::failback::Failback;
use crate::ledger::{Ledger, LedgerConfig};
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
            ledger: Some(LedgerConfig::default()),
            failover_budget: RetryBudget::new(1.0),
            throttle_budget: RetryBudget::new(0.2),
            failback: None,
        }
    }

    /// A layer with every default: the default classifier, a 64 KiB replay cap, automatic
    /// switching on.
    pub fn new(endpoints: Endpoints) -> Self {
        Self::builder(endpoints)
            .build()
            .expect("the defaults are a valid configuration")
    }
}

impl<C> FailoverLayer<C> {
    /// The application's handle on the shared switch state.
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
    ledger: Option<LedgerConfig>,
    failover_budget: RetryBudget,
    throttle_budget: RetryBudget,
    failback: Option<Failback>,
}

impl<C> FailoverLayerBuilder<C> {
    /// The classifier that decides when an endpoint is down (default: [`DefaultClassifier`]).
    /// A closure `Fn(Outcome<'_>) -> Verdict` works.
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
            failover_budget: self.failover_budget,
            throttle_budget: self.throttle_budget,
            failback: self.failback,
        }
    }

    /// The most request-body bytes kept per call for a re-send (default 64 KiB). The cap bounds
    /// what an attempt has *read* when it fails: a larger body refused at connect is re-sent
    /// whole; once more than the cap has been read the body streams on, keeps nothing, and a
    /// re-send is refused with [`NotResent::BodyOverCap`](crate::NotResent::BodyOverCap).
    pub fn replay_cap(mut self, bytes: usize) -> Self {
        self.replay_cap = bytes;
        self
    }

    /// Whether a call that finds the active endpoint down switches and re-sends (default
    /// true). Off, the layer raises `SwitchRequired`, does not switch, and returns the error;
    /// the application may switch with [`FailoverHandle::switch_endpoint`].
    pub fn auto_switch(mut self, enabled: bool) -> Self {
        self.auto_switch = enabled;
        self
    }

    /// A callback for every `SwitchRequired` event, run synchronously before the switch.
    /// Keep it quick: switches wait for it.
    pub fn on_switch_required(mut self, callback: impl Fn(&SwitchEvent) + Send + Sync + 'static) -> Self {
        self.callbacks.on_switch_required.push(Arc::new(callback));
        self
    }

    /// A callback for every `Switched` event, run synchronously right after the switch.
    pub fn on_switched(mut self, callback: impl Fn(&SwitchEvent) + Send + Sync + 'static) -> Self {
        self.callbacks.on_switched.push(Arc::new(callback));
        self
    }

    /// The policy for requests that carry none in their extensions and match no route
    /// (default [`RetryPolicy::by_method`]).
    pub fn default_policy(mut self, policy: RetryPolicy) -> Self {
        self.default_policy = policy;
        self
    }

    /// The policy for requests with this method whose path is `pattern` (exact) or starts with
    /// it (a pattern ending in `*`). Routes are tried in the order added; a policy in the
    /// request's extensions comes first. A bad pattern is reported by [`build`](Self::build).
    pub fn route(mut self, method: Method, pattern: &str, policy: RetryPolicy) -> Self {
        if let Err(error) = self.routes.add(Some(method), pattern, policy) {
            self.route_errors.push(error);
        }
        self
    }

    /// Like [`route`](Self::route), for every method.
    pub fn route_any_method(mut self, pattern: &str, policy: RetryPolicy) -> Self {
        if let Err(error) = self.routes.add(None, pattern, policy) {
            self.route_errors.push(error);
        }
        self
    }

    /// Turns the data-loss report on (the default) or off. Off, writes are not recorded and
    /// `Switched` events carry no report.
    pub fn data_loss_report(mut self, enabled: bool) -> Self {
        self.ledger = enabled.then(|| self.ledger.take().unwrap_or_default());
        self
    }

    /// How far back acknowledged writes count as at risk after a switch (default 5 minutes):
    /// the time the alternate may lag behind the primary.
    pub fn replication_window(mut self, window: Duration) -> Self {
        if let Some(ledger) = &mut self.ledger {
            ledger.window = window;
        }
        self
    }

    /// How many writes the ledger keeps (default 10,000); beyond it the oldest are dropped and
    /// counted in the next report.
    pub fn ledger_capacity(mut self, writes: usize) -> Self {
        if let Some(ledger) = &mut self.ledger {
            ledger.capacity = writes;
        }
        self
    }

    /// The header that names a write in the report (default `Idempotency-Key`; e.g.
    /// `x-ms-client-request-id`). A [`WriteKey`](crate::WriteKey) in the request's extensions
    /// is used when the header is absent.
    pub fn write_key_header(mut self, name: HeaderName) -> Self {
        if let Some(ledger) = &mut self.ledger {
            ledger.key_header = Some(name);
        }
        self
    }

    /// Keep query strings in the report's paths (default off: queries may carry secrets).
    pub fn record_query(mut self, enabled: bool) -> Self {
        if let Some(ledger) = &mut self.ledger {
            ledger.record_query = enabled;
        }
        self
    }

    /// The budget for failover re-sends (default: ratio 1.0, every call may be re-sent once,
    /// plus 10 per second).
    pub fn failover_budget(mut self, budget: RetryBudget) -> Self {
        self.failover_budget = budget;
        self
    }

    /// The budget for throttling retries (default: 20 % of recent calls plus 10 per second).
    pub fn throttle_budget(mut self, budget: RetryBudget) -> Self {
        self.throttle_budget = budget;
        self
    }

    /// Come back to the primary automatically once probes find it healthy (default: off; the
    /// application fails back with [`FailoverHandle::fail_back`]).
    pub fn failback(mut self, failback: Failback) -> Self {
        self.failback = Some(failback);
        self
    }

    /// Checks the configuration and makes the layer.
    pub fn build(self) -> Result<FailoverLayer<C>, ConfigError> {
        if let Some(failback) = &self.failback {
            failback.validate()?;
        }
        if let Some(error) = self.route_errors.into_iter().next() {
            return Err(error);
        }
        self.failover_budget
            .validate()
            .map_err(|e| e.context("failover_budget"))?;
        self.throttle_budget
            .validate()
            .map_err(|e| e.context("throttle_budget"))?;
        if let Some(ledger) = &self.ledger {
            if ledger.capacity == 0 {
                return Err(ConfigError::new(
                    "ledger_capacity(0) keeps no writes; turn the report off with data_loss_report(false) instead",
                ));
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
                ledger: self.ledger.map(Ledger::new),
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
