//! [`Failover`]: the service that routes each call to the active endpoint and prepares it for
//! a re-send.

use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::classify::Classifier;
use crate::endpoint::Side;
use crate::engine::{BodyPlan, CallState};
use crate::error::{AttemptError, BoxError, FailoverError, FailoverErrorKind};
use crate::failback::prober;
use crate::future::{HeadTemplate, ResendBody, ResendTemplate, ResponseFuture};
use crate::replay::{take_whole, ReplayBody};
use crate::state::{FailoverHandle, Shared};

/// An HTTP service with failover; made by [`FailoverLayer`](crate::FailoverLayer).
///
/// Requests whose URI names the primary or the alternate go to the active endpoint; all
/// others pass through untouched. The inner service receives [`ReplayBody`]s. Clones share
/// the switch state. A re-send goes through a clone of the inner service taken at the first
/// call (or at the first call after [`get_mut`](Failover::get_mut)), as failback probes do.
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use std::sync::{Arc, Mutex};
/// use tower_failover::{Endpoints, Failover, FailoverLayer, ReplayBody};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // Stands in for the HTTP client: answers 200 and notes where each request went.
/// let sent_to = Arc::new(Mutex::new(Vec::new()));
/// let log = sent_to.clone();
/// let client = tower::service_fn(move |request: http::Request<ReplayBody<Full<Bytes>>>| {
///     log.lock().unwrap().push(request.uri().to_string());
///     async { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new()))) }
/// });
/// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
/// let mut service: Failover<_, _> = ServiceBuilder::new().layer(layer).service(client);
/// service.handle().switch_endpoint();
///
/// for uri in [
///     "https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI",
///     "https://login.microsoftonline.com/common/oauth2/v2.0/token",
/// ] {
///     let request = http::Request::get(uri).body(Full::new(Bytes::new())).unwrap();
///     service.ready().await.unwrap().call(request).await.unwrap();
/// }
/// assert_eq!(
///     *sent_to.lock().unwrap(),
///     [
///         // Rewritten to the active endpoint, path and query kept.
///         "https://contoso--s.api.crm.dynamics.com/api/data/v9.2/WhoAmI",
///         // Not one of the pair: untouched.
///         "https://login.microsoftonline.com/common/oauth2/v2.0/token",
///     ]
/// );
/// # }
/// ```
#[derive(Clone)]
pub struct Failover<S, C> {
    inner: S,
    // The switch state is `core.shared`.
    core: Arc<Core<S, C>>,
}

/// What every call through one [`Failover`] (and its clones) shares, behind one reference
/// count: each routed call's future holds a clone of this `Arc`, not of the shared state, the
/// classifier and the inner service one by one. On a multi-threaded runtime every reference
/// count a call bumps is a cache line the cores pass back and forth; an inner client such as
/// hyper-util's holds several.
pub(crate) struct Core<S, C> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) classifier: C,
    // A clone of the inner service, taken at the first call, that re-sends are cloned from.
    // Behind a `Mutex` so the core is `Sync` for any `Send` service (tower's `BoxService` is
    // not `Sync`); it is locked only to make a re-send.
    spare: OnceLock<Mutex<S>>,
}

impl<S: Clone, C> Core<S, C> {
    /// A service for a re-send.
    pub(crate) fn resend_service(&self) -> Option<S> {
        let spare = self.spare.get()?;
        // A clone that panicked leaves the service as it was: the lock's poison is no reason
        // to refuse re-sends.
        Some(
            spare
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        )
    }
}

impl<S, C> Failover<S, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, classifier: C) -> Self {
        Failover {
            inner,
            core: Arc::new(Core {
                shared,
                classifier,
                spare: OnceLock::new(),
            }),
        }
    }

    /// The application's handle on the switch state this service shares.
    ///
    /// ```
    /// use tower::ServiceBuilder;
    /// use tower_failover::{Endpoints, FailoverLayer, ReplayBody};
    ///
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let layer_handle = layer.handle();
    /// let service = ServiceBuilder::new().layer(layer).service(tower::service_fn(
    ///     |_request: http::Request<ReplayBody<String>>| async {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    ///     },
    /// ));
    /// service.handle().switch_endpoint();
    /// assert_eq!(layer_handle.generation(), 1);
    /// ```
    pub fn handle(&self) -> FailoverHandle {
        FailoverHandle::new(self.core.shared.clone())
    }

    /// The start-up check: when the primary is down and the alternate healthy, start on the
    /// alternate (cause [`SwitchCause::StartupCheck`](crate::SwitchCause::StartupCheck)), as the
    /// Dynamics 365 SDK does when the service marks the primary disabled. Probes as failback
    /// does (its probe request, or `GET /`), through this service's inner service. Returns the
    /// side now active. Name the caller's request body type: `service.check_startup::<MyBody, _>()`.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_failover::{Endpoints, FailoverLayer, ReplayBody, Side, SwitchCause};
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
    /// let service = ServiceBuilder::new().layer(layer).service(client);
    ///
    /// let side = service.check_startup::<Full<Bytes>, _>().await;
    /// assert_eq!(side, Side::Alternate);
    /// assert_eq!(handle.state().cause, Some(SwitchCause::StartupCheck));
    /// # }
    /// ```
    pub fn check_startup<B, ResB>(&self) -> impl std::future::Future<Output = Side> + Send + 'static
    where
        S: Service<Request<ReplayBody<B>>, Response = Response<ResB>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Send + 'static,
        ResB: Send + 'static,
        C: Classifier + Clone + Send + Sync + 'static,
    {
        self.core
            .shared
            .offer_prober(|| prober(self.inner.clone(), self.core.classifier.clone()));
        let shared = self.core.shared.clone();
        async move { shared.startup_check().await }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably. Re-sends of later calls go through a clone of the service
    /// as it is at the next call (calls already in flight keep the one they had).
    pub fn get_mut(&mut self) -> &mut S
    where
        C: Clone,
    {
        // Re-sends clone a spare taken at the first call. This handle's next call must take a
        // new one from the service as changed through this reference, even if clones that
        // share the core (and have not changed) make calls first: so the core is this handle's
        // own from here, with no spare yet.
        match Arc::get_mut(&mut self.core) {
            Some(core) => core.spare = OnceLock::new(),
            None => {
                self.core = Arc::new(Core {
                    shared: self.core.shared.clone(),
                    classifier: self.core.classifier.clone(),
                    spare: OnceLock::new(),
                })
            }
        }
        &mut self.inner
    }
}

impl<S, C> std::fmt::Debug for Failover<S, C>
where
    S: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failover")
            .field("inner", &self.inner)
            .field("endpoints", &self.core.shared.endpoints)
            .finish_non_exhaustive()
    }
}

impl<S, C, B, ResB> Service<Request<B>> for Failover<S, C>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Unpin + Send + 'static,
    ResB: Body + Send + 'static,
    C: Classifier + Clone + Send + Sync + 'static,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = FailoverError;
    type Future = ResponseFuture<S, B, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Nothing has been sent when readiness fails, so nothing can have been applied.
        self.inner.poll_ready(cx).map_err(|e| {
            FailoverError::new(
                FailoverErrorKind::Inner,
                false,
                AttemptError::from_error(None, e.into()),
            )
        })
    }

    #[inline]
    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The first call hands clones of the inner service over: to the failback probes and
        // maintenance, and to re-sends. Afterwards this is one atomic load.
        if self.core.spare.get().is_none() {
            self.core
                .shared
                .offer_prober(|| prober(self.inner.clone(), self.core.classifier.clone()));
            let _ = self.core.spare.set(Mutex::new(self.inner.clone()));
        }
        let (mut parts, mut body) = request.into_parts();
        let Some((plan, body_plan)) = self.core.shared.plan(&mut parts, body.is_end_stream()) else {
            let future = self
                .inner
                .call(Request::from_parts(parts, ReplayBody::plain(body)));
            return ResponseFuture::passthrough(future);
        };
        let (body, resend_body) = match body_plan {
            BodyPlan::Record(cap) => match take_whole(&mut body, cap) {
                // Already whole in memory: keep a clone of it, nothing to record.
                Some(bytes) => (ReplayBody::whole(bytes.clone()), Ok(ResendBody::Whole(bytes))),
                None => {
                    let (body, handle) = ReplayBody::recorded(body, cap);
                    (body, Ok(ResendBody::Recorded(handle)))
                }
            },
            BodyPlan::Empty => (ReplayBody::plain(body), Ok(ResendBody::Empty)),
            BodyPlan::Unkept(reason) => (ReplayBody::plain(body), Err(reason)),
        };
        // Everything a re-send needs, kept only when a re-send can happen at all.
        let resend = resend_body.map(|body| ResendTemplate {
            head: HeadTemplate::of(&parts),
            body,
        });
        let call = CallState::new(&self.core.shared, plan, &parts.method);
        let inner = &mut self.inner;
        ResponseFuture::routed(self.core.clone(), call, resend, || {
            inner.call(Request::from_parts(parts, body))
        })
    }
}
