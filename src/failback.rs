//! Coming back: probe-driven failback with hysteresis and flap damping, the start-up check,
//! and planned maintenance windows.
//!
//! Probes go through the same inner service as calls (so TLS, proxies and auth layers below
//! apply) and are judged by the same classifier. One probe task at most runs per switch state;
//! it holds only a weak reference, so it ends when the last service and handle are dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use http::uri::PathAndQuery;
use http::{Method, Request, Uri};
use tokio::sync::watch;

use crate::classify::{Classifier, Outcome, Verdict};
use crate::endpoint::Side;
use crate::error::{BoxError, ConfigError};
use crate::replay::ReplayBody;
use crate::state::{EndpointState, Shared, SwitchCause};

/// How the client comes back to the primary after a switch.
///
/// Opt-in: while calls go to the alternate, the primary is probed every `interval` (with
/// jitter). The client fails back only after `min_time_on_alternate` *and* `healthy_probes`
/// healthy probes in a row; a failed probe resets the count. Flap damping: at most one
/// failback per `hold` (60 s by default), and the hold doubles (up to `max_hold`) each time
/// the primary fails again within the hold after a failback; a return that lasts a whole hold
/// brings it back to `hold`.
///
/// Probes go through the inner service of a [`Failover`](crate::Failover), lent by its first
/// call (or by [`Failover::check_startup`](crate::Failover::check_startup)), and run as a tokio
/// task. A layer used only through the reqwest middleware has no service to probe with, so it
/// does not fail back by itself.
///
/// ```
/// use std::convert::Infallible;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_failover::{Endpoints, Failback, FailoverLayer, ReplayBody, Side, SwitchCause};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
///     .failback(
///         Failback::dynamics()
///             .interval(Duration::from_millis(20)) // seconds in production
///             .min_time_on_alternate(Duration::ZERO)
///             .healthy_probes(2),
///     )
///     .build()
///     .unwrap();
/// let handle = layer.handle();
///
/// // The primary answers 503 until it is back up.
/// let primary_up = Arc::new(AtomicBool::new(false));
/// let up = primary_up.clone();
/// let client = tower::service_fn(move |request: http::Request<ReplayBody<Full<Bytes>>>| {
///     let primary = request.uri().host() == Some("contoso.api.crm.dynamics.com");
///     let status = if primary && !up.load(Ordering::SeqCst) { 503 } else { 200 };
///     let response = http::Response::builder().status(status).body(Full::new(Bytes::new()));
///     async move { Ok::<_, Infallible>(response.unwrap()) }
/// });
/// let mut service = ServiceBuilder::new().layer(layer).service(client);
/// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
///     .body(Full::new(Bytes::new()))
///     .unwrap();
/// service.ready().await.unwrap().call(request).await.unwrap();
/// assert_eq!(handle.active(), Side::Alternate);
/// assert!(handle.probing());
///
/// // The primary recovers: after two healthy probes in a row, calls go back to it.
/// primary_up.store(true, Ordering::SeqCst);
/// let mut state = handle.subscribe();
/// tokio::time::timeout(Duration::from_secs(5), state.wait_for(|s| s.active == Side::Primary))
///     .await
///     .expect("failed back")
///     .unwrap();
/// assert_eq!(handle.state().cause, Some(SwitchCause::Failback));
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failback {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) interval: Duration,
    pub(crate) jitter_percent: u8,
    pub(crate) min_time_on_alternate: Duration,
    pub(crate) healthy_probes: u32,
    pub(crate) probe_timeout: Duration,
    pub(crate) hold: Duration,
    pub(crate) max_hold: Duration,
}

impl Default for Failback {
    fn default() -> Self {
        Failback {
            method: Method::GET,
            path: "/".to_string(),
            interval: Duration::from_secs(5),
            jitter_percent: 20,
            min_time_on_alternate: Duration::from_secs(30),
            healthy_probes: 3,
            probe_timeout: Duration::from_secs(5),
            hold: Duration::from_secs(60),
            max_hold: Duration::from_secs(3600),
        }
    }
}

impl Failback {
    /// Probe `GET /` every 5 s; fail back after 30 s on the alternate and 3 healthy probes.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_failover::Failback;
    ///
    /// assert_eq!(Failback::new(), Failback::default());
    /// // The same as the defaults, spelled out.
    /// let spelled_out = Failback::new()
    ///     .probe(http::Method::GET, "/")
    ///     .interval(Duration::from_secs(5))
    ///     .jitter_percent(20)
    ///     .min_time_on_alternate(Duration::from_secs(30))
    ///     .healthy_probes(3)
    ///     .probe_timeout(Duration::from_secs(5))
    ///     .hold(Duration::from_secs(60), Duration::from_secs(3600));
    /// assert_eq!(spelled_out, Failback::new());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// As [`Failback::new`], probing the Dynamics 365 Web API's `WhoAmI`.
    ///
    /// ```
    /// use tower_failover::Failback;
    ///
    /// assert_eq!(Failback::dynamics(), Failback::new().probe(http::Method::GET, "/api/data/v9.2/WhoAmI"));
    /// ```
    pub fn dynamics() -> Self {
        Self::default().probe(Method::GET, "/api/data/v9.2/WhoAmI")
    }

    /// The probe request: a method and a path (with query) on the primary.
    ///
    /// ```
    /// use tower_failover::{Endpoints, Failback, FailoverLayer};
    ///
    /// let endpoints = Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap();
    /// let layer_with = |failback| FailoverLayer::builder(endpoints.clone()).failback(failback).build();
    /// // A cheap read that needs the database, not just the web front end.
    /// assert!(layer_with(Failback::new().probe(http::Method::GET, "/api/health?deep=true")).is_ok());
    ///
    /// // The path is relative to the primary, so it must start with `/`.
    /// let err = layer_with(Failback::new().probe(http::Method::GET, "api/health")).unwrap_err();
    /// assert!(err.to_string().contains("must start with `/`"));
    /// ```
    pub fn probe(mut self, method: Method, path: &str) -> Self {
        self.method = method;
        self.path = path.to_string();
        self
    }

    /// Time between probes (default 5 s), spread by ±`jitter_percent` %.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_failover::{Endpoints, Failback, FailoverLayer};
    ///
    /// let endpoints = Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap();
    /// let layer_with = |failback| FailoverLayer::builder(endpoints.clone()).failback(failback).build();
    /// assert!(layer_with(Failback::dynamics().interval(Duration::from_secs(10))).is_ok());
    ///
    /// let err = layer_with(Failback::dynamics().interval(Duration::ZERO)).unwrap_err();
    /// assert_eq!(err.to_string(), "failback: interval must be above zero");
    /// ```
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// How much each interval varies, in percent (default 20), so clients do not probe in step.
    ///
    /// ```
    /// use tower_failover::{Endpoints, Failback, FailoverLayer};
    ///
    /// let endpoints = Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap();
    /// let layer_with = |failback| FailoverLayer::builder(endpoints.clone()).failback(failback).build();
    /// // Many clients behind one primary: spread their probes wider.
    /// assert!(layer_with(Failback::dynamics().jitter_percent(50)).is_ok());
    /// assert!(layer_with(Failback::dynamics().jitter_percent(150)).is_err());
    /// ```
    pub fn jitter_percent(mut self, percent: u8) -> Self {
        self.jitter_percent = percent;
        self
    }

    /// The least time on the alternate before failing back (default 30 s).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_failover::{Endpoints, Failback, FailoverLayer};
    ///
    /// // Stay on the alternate at least 10 minutes, however healthy the primary looks: a region
    /// // that just came back often goes down again.
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .failback(Failback::dynamics().min_time_on_alternate(Duration::from_secs(600)))
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn min_time_on_alternate(mut self, time: Duration) -> Self {
        self.min_time_on_alternate = time;
        self
    }

    /// Healthy probes in a row needed to fail back (default 3).
    ///
    /// ```
    /// use tower_failover::{Endpoints, Failback, FailoverLayer};
    ///
    /// let endpoints = Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap();
    /// let layer_with = |failback| FailoverLayer::builder(endpoints.clone()).failback(failback).build();
    /// assert!(layer_with(Failback::dynamics().healthy_probes(5)).is_ok());
    ///
    /// let err = layer_with(Failback::dynamics().healthy_probes(0)).unwrap_err();
    /// assert!(err.to_string().contains("would fail back blind"));
    /// ```
    pub fn healthy_probes(mut self, count: u32) -> Self {
        self.healthy_probes = count;
        self
    }

    /// How long one probe may take before it counts as failed (default 5 s).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_failover::{Endpoints, Failback, FailoverLayer};
    ///
    /// // A primary that answers slowly is not healthy yet.
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .failback(Failback::dynamics().probe_timeout(Duration::from_secs(2)))
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = timeout;
        self
    }

    /// The least time between two automatic failbacks (default 60 s), and the most it can
    /// grow to after repeated failed returns (default 1 h).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_failover::{Endpoints, Failback, FailoverLayer};
    ///
    /// let endpoints = Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap();
    /// let layer_with = |failback| FailoverLayer::builder(endpoints.clone()).failback(failback).build();
    /// let (five_minutes, four_hours) = (Duration::from_secs(300), Duration::from_secs(4 * 3600));
    /// assert!(layer_with(Failback::dynamics().hold(five_minutes, four_hours)).is_ok());
    ///
    /// let err = layer_with(Failback::dynamics().hold(five_minutes, Duration::from_secs(60))).unwrap_err();
    /// assert_eq!(err.to_string(), "failback: max_hold must be at least hold");
    /// ```
    pub fn hold(mut self, hold: Duration, max_hold: Duration) -> Self {
        self.hold = hold;
        self.max_hold = max_hold;
        self
    }

    pub(crate) fn validate(&self) -> Result<PathAndQuery, ConfigError> {
        if self.healthy_probes == 0 {
            return Err(ConfigError::new(
                "failback: healthy_probes(0) would fail back blind; use 1 or more",
            ));
        }
        if self.interval.is_zero() {
            return Err(ConfigError::new("failback: interval must be above zero"));
        }
        if self.jitter_percent > 100 {
            return Err(ConfigError::new("failback: jitter_percent must be 0..=100"));
        }
        if self.max_hold < self.hold {
            return Err(ConfigError::new("failback: max_hold must be at least hold"));
        }
        if !self.path.starts_with('/') {
            return Err(ConfigError::new(format!(
                "failback: probe path `{}` must start with `/`",
                self.path
            )));
        }
        self.path.parse().map_err(|e| {
            ConfigError::new(format!(
                "failback: probe path `{}` is not a valid path ({e})",
                self.path
            ))
        })
    }

    fn next_interval(&self) -> Duration {
        // In u128 so that no interval, however long, overflows (`Duration::MAX` included).
        let base = self.interval.as_millis();
        let spread = base * self.jitter_percent as u128 / 100;
        let millis = if spread == 0 {
            base
        } else {
            base - spread + fastrand::u128(0..=2 * spread)
        };
        Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX).max(1))
    }
}

/// Sends one probe to a side and says whether it is healthy.
pub(crate) type Prober = Arc<dyn Fn(Request<()>) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// Makes a prober over a clone of the inner service and the classifier.
pub(crate) fn prober<S, B, C, ResB>(service: S, classifier: C) -> Prober
where
    S: tower_service::Service<Request<ReplayBody<B>>, Response = http::Response<ResB>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Send + 'static,
    ResB: Send + 'static,
    C: Classifier + Clone + Send + Sync + 'static,
{
    // A mutex only so the prober is `Sync` for services that are merely `Send`; it is held
    // just long enough to clone the service.
    let service = std::sync::Mutex::new(service);
    Arc::new(move |request: Request<()>| {
        let mut service = service
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let classifier = classifier.clone();
        Box::pin(async move {
            let request = request.map(|()| ReplayBody::<B>::empty());
            if std::future::poll_fn(|cx| service.poll_ready(cx)).await.is_err() {
                return false;
            }
            match service.call(request).await {
                Ok(response) => {
                    let verdict = classifier.classify(Outcome::Response {
                        status: response.status(),
                        headers: response.headers(),
                        body: None,
                    });
                    verdict == Verdict::Success
                }
                Err(_) => false,
            }
        })
    })
}

/// The flap damping state.
#[derive(Debug)]
pub(crate) struct Damping {
    hold: Duration,
    last_failback: Option<Instant>,
}

impl Damping {
    pub(crate) fn new(config: Option<&Failback>) -> Self {
        Damping {
            hold: config.map_or(Duration::ZERO, |c| c.hold),
            last_failback: None,
        }
    }
}

impl Shared {
    /// Starts on the alternate when the primary is down and the alternate healthy.
    pub(crate) async fn startup_check(&self) -> Side {
        let now = self.active();
        if now.side == Side::Primary
            && self.endpoints.alternate().is_some()
            && !self.probe(Side::Primary).await
            && self.probe(Side::Alternate).await
        {
            return self.switch_to(Side::Alternate, SwitchCause::StartupCheck);
        }
        self.active().side
    }

    /// Keeps the first prober offered; later ones are the same service, cloned.
    pub(crate) fn offer_prober(&self, make: impl FnOnce() -> Prober) {
        if self.prober.get().is_none() && self.prober.set(make()).is_ok() {
            // Calls may have moved to the alternate (by hand, or by a maintenance window)
            // before any call could hand over a prober: start probing now. Pairs with the
            // fence in `start_probe_task`: a switch stores the active side, then looks for a
            // prober; this stores the prober, then looks at the active side. Without a full
            // fence on both sides each could see the other's old value, and no task would
            // probe.
            fence(Ordering::SeqCst);
            if self.active().side == Side::Alternate {
                self.start_probe_task();
            }
        }
    }

    /// Probes one side once.
    pub(crate) async fn probe(&self, side: Side) -> bool {
        let Some(prober) = self.prober.get().cloned() else {
            return false;
        };
        let endpoint = self.endpoint(side);
        let (method, path, timeout) = match &self.failback {
            Some(f) => (f.method.clone(), f.path.as_str(), f.probe_timeout),
            None => (Method::GET, "/", Duration::from_secs(5)),
        };
        let uri = Uri::builder()
            .scheme(endpoint.scheme().clone())
            .authority(endpoint.authority().clone())
            .path_and_query(path)
            .build();
        let Ok(uri) = uri else { return false };
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        let healthy = tokio::time::timeout(timeout, prober(request))
            .await
            .unwrap_or(false);
        tracing::debug!(server.address = %endpoint, healthy, "failover: probe");
        healthy
    }

    /// Switches to `side` unless it is already active. Bounded: a storm of concurrent switches
    /// cannot keep it looping.
    pub(crate) fn switch_to(&self, side: Side, cause: SwitchCause) -> Side {
        for _ in 0..8 {
            let now = self.active();
            if now.side == side {
                return side;
            }
            match self.switch_from(now, cause.clone(), false) {
                crate::state::SwitchOutcome::Switched { to } if to == side => return side,
                crate::state::SwitchOutcome::Refused => return now.side,
                _ => continue,
            }
        }
        self.active().side
    }

    /// A switch moved calls off `from` because it failed: if that was soon after a failback,
    /// the return failed, so the next failback waits longer.
    pub(crate) fn note_departure(&self, from: Side) {
        let Some(config) = &self.failback else { return };
        if from != Side::Primary {
            return;
        }
        let mut damping = self
            .damping
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(at) = damping.last_failback {
            if at.elapsed() >= damping.hold {
                // The primary held for a whole hold after the last return: that return
                // worked, so the next one waits only the configured hold again.
                damping.hold = config.hold;
            } else {
                damping.hold = damping.hold.saturating_mul(2).min(config.max_hold);
                tracing::warn!(
                    hold_ms = damping.hold.as_millis() as u64,
                    "failover: failback failed, holding longer"
                );
            }
        }
    }

    fn failback_allowed(&self) -> bool {
        let damping = self
            .damping
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        damping
            .last_failback
            .is_none_or(|at| at.elapsed() >= damping.hold)
    }

    /// Notes a failback about to be made; returns the previous one, for `undo_failback`.
    fn note_failback(&self) -> Option<Instant> {
        let mut damping = self
            .damping
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        damping.last_failback.replace(Instant::now())
    }

    /// The failback noted was not made (its stay had ended): the hold runs from the one before.
    fn undo_failback(&self, previous: Option<Instant>) {
        let mut damping = self
            .damping
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        damping.last_failback = previous;
    }

    /// From the planned switch until the maintenance task has brought calls back: the return
    /// after the window is that task's (cause `Planned`), not the probe loop's. The task clears
    /// the mark once the primary is active again, however it got there.
    fn in_maintenance(&self) -> bool {
        self.maintenance_windows.load(Ordering::Acquire) > 0
    }

    /// Starts the probe task, if failback is on, a prober is known, a runtime is running, and
    /// no probe task runs yet.
    pub(crate) fn start_probe_task(&self) {
        if self.failback.is_none() {
            return;
        }
        // The caller has just stored the active side (a switch to the alternate). Pairs with
        // the fence in `offer_prober` (which stores the prober, then looks at the active side)
        // and with the one in `RunningGuard::drop` (an ending task clears the flag, then looks
        // at the active side). Without a full fence on both sides of each pair, each could see
        // the other's old value (no prober yet, or the task still running; the pair still on
        // the primary), and no task would probe.
        fence(Ordering::SeqCst);
        if self.prober.get().is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("failover: no tokio runtime here, failback probing not started");
            return;
        };
        if self
            .probe_running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        runtime.spawn(probe_loop(self.me.clone(), self.watch_state()));
    }
}

/// Sleeps for `duration`; false, as soon as it happens, if the state comes to `stop` or is
/// dropped (every service and handle gone) meanwhile: a task must not outlive its purpose
/// by a long sleep (an hour-long interval, a window tonight).
async fn sleep_unless(
    state: &mut watch::Receiver<EndpointState>,
    duration: Duration,
    stop: impl FnMut(&EndpointState) -> bool,
) -> bool {
    // `wait_for` ends at once if the state is already there, and with an error once the
    // sender is gone: either way the sleep is cut short.
    tokio::time::timeout(duration, state.wait_for(stop))
        .await
        .is_err()
}

/// Clears the "probe running" flag however the task ends.
struct RunningGuard(Weak<Shared>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            shared.probe_running.store(false, Ordering::Release);
            // See `start_probe_task`.
            fence(Ordering::SeqCst);
            shared.set_healthy_probes(shared.active().generation, 0);
            // A switch to the alternate made while this task was ending found it still
            // running and did not start another: start it now.
            if shared.active().side == Side::Alternate {
                shared.start_probe_task();
            }
        }
    }
}

async fn probe_loop(weak: Weak<Shared>, mut state: watch::Receiver<EndpointState>) {
    let _guard = RunningGuard(weak.clone());
    let mut healthy = 0u32;
    // The stay on the alternate the count belongs to: calls may have come back and failed
    // over again while the task slept (or a probe was out), and "N healthy probes in a row"
    // are counted within one stay.
    let mut stay: Option<u64> = None;
    loop {
        // Hold no strong reference while sleeping: dropping every service and handle ends us.
        let interval = match weak.upgrade() {
            Some(shared) => match &shared.failback {
                Some(config) => config.next_interval(),
                None => return,
            },
            None => return,
        };
        // Calls back on the primary (a failback by hand, say): nothing to wait for.
        if !sleep_unless(&mut state, interval, |s| s.active != Side::Alternate).await {
            return;
        }
        let Some(shared) = weak.upgrade() else { return };
        let Some(config) = shared.failback.clone() else {
            return;
        };
        let now = shared.active();
        if now.side != Side::Alternate {
            return;
        }
        if stay != Some(now.generation) {
            stay = Some(now.generation);
            healthy = 0;
        }
        if shared.in_maintenance() {
            healthy = 0;
            shared.set_healthy_probes(now.generation, 0);
            continue;
        }
        let probed = shared.probe(Side::Primary).await;
        if shared.active() != now {
            // Calls moved while the probe was out: it says nothing about this stay (the next
            // turn ends the task, or starts counting the new stay).
            continue;
        }
        if probed {
            healthy += 1;
        } else {
            healthy = 0;
        }
        shared.set_healthy_probes(now.generation, healthy);
        // A window may have begun while the probe was out.
        if shared.in_maintenance() {
            healthy = 0;
            shared.set_healthy_probes(now.generation, 0);
            continue;
        }
        // Timed from this stay's own start: a stay whose switch is still being published has
        // not lasted long enough yet.
        let long_enough = shared.stay_since(now.generation).is_some_and(|since| {
            since
                .elapsed()
                .is_ok_and(|on_alternate| on_alternate >= config.min_time_on_alternate)
        });
        if healthy >= config.healthy_probes && long_enough && shared.failback_allowed() {
            // Only off the stay the probes were counted in: a failback on them after calls
            // moved would be made on no probe of that stay.
            if shared.active() == now {
                // Noted before the switch, so that a call failing on the primary right after it
                // finds it (see `note_departure`).
                let previous = shared.note_failback();
                let outcome = shared.switch_from(now, SwitchCause::Failback, false);
                if outcome != (crate::state::SwitchOutcome::Switched { to: Side::Primary }) {
                    shared.undo_failback(previous);
                }
            }
            return;
        }
    }
}

impl Shared {
    /// Starts a maintenance window: switch to the alternate `lead` before `start`, come back
    /// after `end` once the primary probes healthy.
    pub(crate) fn schedule_maintenance(
        &self,
        start: SystemTime,
        end: SystemTime,
        lead: Duration,
    ) -> Result<(), ConfigError> {
        if end <= start {
            return Err(ConfigError::new("maintenance: the end must be after the start"));
        }
        if self.endpoints.alternate().is_none() {
            return Err(ConfigError::new(
                "maintenance: there is no alternate endpoint to move to",
            ));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ConfigError::new("maintenance: schedule it from inside a tokio runtime (it runs as a task)")
        })?;
        runtime.spawn(maintenance(self.me.clone(), self.watch_state(), start, end, lead));
        Ok(())
    }
}

async fn maintenance(
    weak: Weak<Shared>,
    mut state: watch::Receiver<EndpointState>,
    start: SystemTime,
    end: SystemTime,
    lead: Duration,
) {
    // `start - lead` may be before anything the clock can name (`Duration::MAX`): that is
    // "move now", not "move at the start".
    let until_start = start.duration_since(SystemTime::now()).unwrap_or_default();
    if !sleep_unless(&mut state, until_start.saturating_sub(lead), |_| false).await {
        return;
    }
    if end <= SystemTime::now() {
        // Over already (scheduled late): there is nothing to move calls away from.
        return;
    }
    {
        let Some(shared) = weak.upgrade() else { return };
        // Windows may overlap: each counts itself in and out, and calls stay on the alternate
        // while any is open.
        shared.maintenance_windows.fetch_add(1, Ordering::AcqRel);
        // Calls in flight on the primary carry on: a switch only moves later calls.
        shared.switch_to(Side::Alternate, SwitchCause::Planned);
    }
    let until_end = end.duration_since(SystemTime::now()).unwrap_or_default();
    if !sleep_unless(&mut state, until_end, |_| false).await {
        return;
    }
    let mut healthy = 0u32;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let (needed, interval) = match &shared.failback {
            Some(config) => (config.healthy_probes, config.next_interval()),
            None => (1, Duration::from_secs(1)),
        };
        // Already back, or another window still open (its task brings calls back).
        if shared.active().side == Side::Primary || shared.maintenance_windows.load(Ordering::Acquire) > 1 {
            break;
        }
        if shared.prober.get().is_none() {
            // Nothing to probe with (no call has lent a client yet): come back at the end of
            // the window, not a count of unprobed intervals after it.
            healthy = needed;
        } else if shared.probe(Side::Primary).await {
            healthy += 1;
        } else {
            healthy = 0;
        }
        // Looked at again: a probe takes time, and another window may have opened during it
        // (calls must then stay where they are until that one ends). A window opening after
        // this check switches to the alternate after it counts itself in, so it ends there.
        let another_open = shared.maintenance_windows.load(Ordering::Acquire) > 1;
        if another_open || shared.active().side == Side::Primary {
            break;
        }
        if healthy >= needed {
            shared.switch_to(Side::Primary, SwitchCause::Planned);
            break;
        }
        drop(shared);
        if !sleep_unless(&mut state, interval, |_| false).await {
            return;
        }
    }
    if let Some(shared) = weak.upgrade() {
        shared.maintenance_windows.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_stay_within_the_jitter_and_never_overflow() {
        for _ in 0..1000 {
            let failback = Failback::new()
                .interval(Duration::from_millis(1000))
                .jitter_percent(20);
            let interval = failback.next_interval();
            assert!((800..=1200).contains(&interval.as_millis()), "{interval:?}");
        }
        // The longest intervals saturate rather than overflow.
        for jitter in [0, 20, 100] {
            let failback = Failback::new().interval(Duration::MAX).jitter_percent(jitter);
            assert!(failback.next_interval() >= Duration::from_millis(u64::MAX / 2));
        }
        let failback = Failback::new().interval(Duration::from_nanos(1));
        assert_eq!(failback.next_interval(), Duration::from_millis(1));
    }
}
