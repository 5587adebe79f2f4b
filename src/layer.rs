//! [`FailoverLayer`] and its builder.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use crate::classify::DefaultClassifier;
use crate::endpoint::Endpoints;
use crate::error::ConfigError;
use crate::replay::DEFAULT_REPLAY_CAP;
use crate::service::Failover;
use crate::state::{Callbacks, FailoverHandle, Shared, SwitchEvent};

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
        }
    }

    /// The most request-body bytes kept per call for a re-send (default 64 KiB). A body
    /// declared larger is not kept at all; one that grows past it streams on, and a re-send
    /// is refused with [`NotResent::BodyOverCap`](crate::NotResent::BodyOverCap).
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

    /// Checks the configuration and makes the layer.
    pub fn build(self) -> Result<FailoverLayer<C>, ConfigError> {
        if self.replay_cap > MAX_REPLAY_CAP {
            return Err(ConfigError::new(format!(
                "replay_cap({}) is above the limit of {MAX_REPLAY_CAP} bytes; a cap is memory held for every call in flight, keep it near your largest re-sendable request",
                self.replay_cap
            )));
        }
        Ok(FailoverLayer {
            shared: Arc::new(Shared::new(self.endpoints, self.auto_switch, self.replay_cap, self.callbacks)),
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
