//! The switch state shared by every clone of a failover service: which endpoint is active,
//! the compare-and-switch that moves it, and the ways the application hears about it
//! ([`FailoverHandle::subscribe`], [`FailoverHandle::events`], callbacks).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError, Weak};
use std::time::SystemTime;

use tokio::sync::{broadcast, watch};

use crate::budget::{Bucket, CallCounter};
use crate::classify::DownKind;
use crate::counters::{Counter, Counters};
use crate::endpoint::{Endpoint, Endpoints, Side};
use crate::error::ConfigError;
use crate::failback::{Damping, Failback, Prober};
use crate::ledger::{DataLossReport, Ledger};
use crate::policy::{RetryPolicy, RouteTable};

/// Why a switch was asked for.
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use http::StatusCode;
/// use tower_failover::{DownKind, Endpoints, FailoverLayer, ReplayBody, SwitchCause};
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
/// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
///     .body(Full::new(Bytes::new()))
///     .unwrap();
/// let response = service.ready().await.unwrap().call(request).await.unwrap();
///
/// let outage = SwitchCause::EndpointDown(DownKind::Unavailable { status: StatusCode::SERVICE_UNAVAILABLE });
/// assert_eq!(handle.state().cause, Some(outage));
///
/// handle.fail_back();
/// assert_eq!(handle.state().cause, Some(SwitchCause::Manual));
/// assert_eq!(SwitchCause::Manual.to_string(), "manual");
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SwitchCause {
    /// A call found the active endpoint down.
    EndpointDown(DownKind),
    /// The application asked, through [`FailoverHandle`].
    Manual,
    /// Probes found the primary healthy again (see [`Failback`](crate::Failback)).
    Failback,
    /// A planned maintenance window began or ended.
    Planned,
    /// The start-up check found the primary down and the alternate healthy.
    StartupCheck,
}

impl fmt::Display for SwitchCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwitchCause::EndpointDown(kind) => write!(f, "{kind}"),
            SwitchCause::Manual => f.write_str("manual"),
            SwitchCause::Failback => f.write_str("failback: primary healthy again"),
            SwitchCause::Planned => f.write_str("planned maintenance"),
            SwitchCause::StartupCheck => f.write_str("start-up check: primary down"),
        }
    }
}

/// The Dynamics 365 SDK's two notifications, in the order they are raised.
///
/// ```
/// use tower_failover::{Endpoints, FailoverLayer, SwitchCause, SwitchEvent};
///
/// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
/// let handle = layer.handle();
/// let mut events = handle.events();
/// handle.switch_endpoint();
///
/// let required = events.try_recv().unwrap();
/// assert_eq!(required.name(), "SwitchRequired");
/// assert_eq!(required.cause(), &SwitchCause::Manual);
/// assert_eq!(required.previous().host(), "contoso.api.crm.dynamics.com");
/// assert_eq!(required.new_endpoint().host(), "contoso--s.api.crm.dynamics.com");
///
/// match events.try_recv().unwrap() {
///     SwitchEvent::Switched { new, report, .. } => {
///         assert_eq!(&new, handle.active_endpoint());
///         // Nothing was written, so nothing is at risk.
///         assert!(report.unwrap().is_empty());
///     }
///     other => panic!("expected Switched, got {other}"),
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SwitchEvent {
    /// The active endpoint is down (or a switch was asked for). Raised before the switch; with
    /// automatic switching off, or no alternate, it is raised alone (once until the next
    /// switch) and the application decides.
    SwitchRequired {
        /// The endpoint calls go to now: for an outage, the one that failed.
        previous: Endpoint,
        /// The endpoint a switch goes to (with no alternate configured, `previous` again).
        new: Endpoint,
        /// Why.
        cause: SwitchCause,
    },
    /// The switch is made: calls now go to `new`.
    Switched {
        /// The endpoint calls went to before.
        previous: Endpoint,
        /// The endpoint calls go to now.
        new: Endpoint,
        /// Why, as in the `SwitchRequired` just before.
        cause: SwitchCause,
        /// The writes at risk from this switch (`None` when the data-loss report is off).
        report: Option<Arc<DataLossReport>>,
    },
}

impl SwitchEvent {
    /// `"SwitchRequired"` or `"Switched"`.
    pub fn name(&self) -> &'static str {
        match self {
            SwitchEvent::SwitchRequired { .. } => "SwitchRequired",
            SwitchEvent::Switched { .. } => "Switched",
        }
    }

    /// The endpoint before.
    pub fn previous(&self) -> &Endpoint {
        match self {
            SwitchEvent::SwitchRequired { previous, .. } | SwitchEvent::Switched { previous, .. } => previous,
        }
    }

    /// Why the switch was asked for.
    pub fn cause(&self) -> &SwitchCause {
        match self {
            SwitchEvent::SwitchRequired { cause, .. } | SwitchEvent::Switched { cause, .. } => cause,
        }
    }

    /// The endpoint after.
    pub fn new_endpoint(&self) -> &Endpoint {
        match self {
            SwitchEvent::SwitchRequired { new, .. } | SwitchEvent::Switched { new, .. } => new,
        }
    }
}

impl fmt::Display for SwitchEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwitchEvent::SwitchRequired { previous, new, cause } => {
                write!(f, "SwitchRequired {previous} -> {new} ({cause})")
            }
            SwitchEvent::Switched {
                previous,
                new,
                cause,
                report,
            } => {
                write!(f, "Switched {previous} -> {new} ({cause})")?;
                if let Some(report) = report {
                    write!(f, "; at risk: {report}")?;
                }
                Ok(())
            }
        }
    }
}

/// A snapshot of the switch state, as published on [`FailoverHandle::subscribe`].
///
/// `watch` keeps only the latest value; `generation` tells a slow reader how many switches
/// it missed, and [`FailoverHandle::events`] or the callbacks give every event.
///
/// ```
/// use tower_failover::{Endpoints, FailoverLayer, Side, SwitchCause};
///
/// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
/// let handle = layer.handle();
/// let before = handle.state();
/// assert_eq!((before.active, before.generation, before.cause), (Side::Primary, 0, None));
/// assert!(before.last_event.is_none());
///
/// handle.switch_endpoint();
/// let after = handle.state();
/// assert_eq!(after.active, Side::Alternate);
/// assert_eq!(after.endpoint.host(), "contoso--s.api.crm.dynamics.com");
/// assert_eq!(after.generation, 1);
/// assert_eq!(after.cause, Some(SwitchCause::Manual));
/// assert!(after.since >= before.since);
/// assert_eq!(after.last_event.unwrap().name(), "Switched");
/// assert!(after.last_report.is_some());
/// ```
#[derive(Debug, Clone)]
pub struct EndpointState {
    /// The side calls go to now.
    pub active: Side,
    /// The endpoint calls go to now.
    pub endpoint: Endpoint,
    /// How many switches have been made; bumps by one on each.
    pub generation: u64,
    /// The most recent event, if any.
    pub last_event: Option<SwitchEvent>,
    /// When the active endpoint became active.
    pub since: SystemTime,
    /// The data-loss report of the latest switch (`None` before the first, or with the report
    /// off).
    pub last_report: Option<Arc<DataLossReport>>,
    /// Why the latest switch was made (`None` before the first).
    pub cause: Option<SwitchCause>,
    /// While waiting to fail back: healthy probes of the primary counted in a row.
    pub healthy_probes: u32,
}

type Callback = Arc<dyn Fn(&SwitchEvent) + Send + Sync>;

/// The callbacks registered on the builder.
#[derive(Clone, Default)]
pub(crate) struct Callbacks {
    pub(crate) on_switch_required: Vec<Callback>,
    pub(crate) on_switched: Vec<Callback>,
}

/// The result of asking for a switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SwitchOutcome {
    /// This call made the switch.
    Switched { to: Side },
    /// Another call (or the application) switched since the failed attempt began; calls go
    /// to `to` now.
    AlreadySwitched { to: Side },
    /// Automatic switching is off or there is no alternate: `SwitchRequired` was raised (once
    /// per generation) and nothing moved.
    Refused,
}

/// Everything the builder configured, fixed once the layer is built.
pub(crate) struct Config {
    pub(crate) endpoints: Endpoints,
    pub(crate) auto_switch: bool,
    pub(crate) replay_cap: usize,
    pub(crate) callbacks: Callbacks,
    pub(crate) routes: RouteTable,
    pub(crate) default_policy: RetryPolicy,
    pub(crate) ledger: Option<Ledger>,
    // `record_query(true)`: queries may be shown (report paths, reqwest errors' URLs).
    pub(crate) record_query: bool,
    pub(crate) failover_budget: Bucket,
    pub(crate) throttle_budget: Bucket,
    pub(crate) failback: Option<Failback>,
}

pub(crate) struct Shared {
    pub(crate) endpoints: Endpoints,
    auto_switch: bool,
    pub(crate) replay_cap: usize,
    pub(crate) routes: RouteTable,
    pub(crate) default_policy: RetryPolicy,
    pub(crate) ledger: Option<Ledger>,
    #[cfg_attr(not(feature = "reqwest"), allow(dead_code))]
    pub(crate) record_query: bool,
    pub(crate) failover_budget: Bucket,
    pub(crate) throttle_budget: Bucket,
    pub(crate) calls: CallCounter,
    pub(crate) counters: Counters,
    // generation << 1 | side. One atomic load routes a call; a switch is one store made under
    // `switching`, so readers never lock.
    active: AtomicU64,
    // Serializes switches so their events come out in order and one failure wave makes one
    // switch. Holds the generation for which `SwitchRequired` was raised without a switch.
    switching: Mutex<Option<u64>>,
    state: watch::Sender<EndpointState>,
    events: broadcast::Sender<SwitchEvent>,
    callbacks: Callbacks,
    // Switches asked for while `switching` was held: from inside a callback, or by a thread
    // that could not wait for it (see `switch_from`).
    deferred: Mutex<VecDeque<Queued>>,
    pub(crate) failback: Option<Failback>,
    // How probes reach the inner service; set by the first service that carries a call.
    pub(crate) prober: OnceLock<Prober>,
    pub(crate) probe_running: AtomicBool,
    pub(crate) damping: Mutex<Damping>,
    // Maintenance windows open now (from the planned switch until calls are back).
    pub(crate) maintenance_windows: std::sync::atomic::AtomicUsize,
    // Tasks hold this, never a strong reference, so dropping every service and handle ends them.
    pub(crate) me: Weak<Shared>,
}

thread_local! {
    /// The switch states (by address) whose callbacks this thread is running, each holding its
    /// `switching` lock: innermost last. Per state, not one flag, so that a callback of one
    /// layer can switch another layer at once (two organisations failed over together).
    static RAISING: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Marks this thread as raising `shared`'s events; unmarked on drop, even if a callback panics.
struct Raising;

impl Raising {
    fn enter(shared: &Shared) -> Raising {
        RAISING.with(|raising| raising.borrow_mut().push(shared.address()));
        Raising
    }

    /// Whether this thread is inside one of `shared`'s callbacks.
    fn within(shared: &Shared) -> bool {
        RAISING.with(|raising| raising.borrow().contains(&shared.address()))
    }

    /// Whether this thread is inside any layer's callbacks.
    fn any() -> bool {
        RAISING.with(|raising| !raising.borrow().is_empty())
    }
}

impl Drop for Raising {
    fn drop(&mut self) {
        RAISING.with(|raising| raising.borrow_mut().pop());
    }
}

/// A switch asked for while `switching` was held, made once it is let go.
struct Queued {
    /// The side calls are to move off.
    from: Side,
    cause: SwitchCause,
    /// Asked for by a failing call (obeys `auto_switch(false)`), not by the application.
    automatic: bool,
}

/// Events kept for a lagging [`FailoverHandle::events`] receiver.
const EVENT_BUFFER: usize = 64;

fn pack(generation: u64, side: Side) -> u64 {
    (generation << 1) | side.index() as u64
}

fn unpack(word: u64) -> (u64, Side) {
    let side = if word & 1 == 0 {
        Side::Primary
    } else {
        Side::Alternate
    };
    (word >> 1, side)
}

/// Where one call goes: the generation it saw and the endpoint of that generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Active {
    pub(crate) generation: u64,
    pub(crate) side: Side,
}

impl Shared {
    pub(crate) fn new(config: Config) -> Arc<Self> {
        let Config {
            endpoints,
            auto_switch,
            replay_cap,
            callbacks,
            routes,
            default_policy,
            ledger,
            record_query,
            failover_budget,
            throttle_budget,
            failback,
        } = config;
        let initial = EndpointState {
            active: Side::Primary,
            endpoint: endpoints.primary().clone(),
            generation: 0,
            last_event: None,
            since: SystemTime::now(),
            last_report: None,
            cause: None,
            healthy_probes: 0,
        };
        let (state, _) = watch::channel(initial);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Arc::new_cyclic(|me| Shared {
            damping: Mutex::new(Damping::new(failback.as_ref())),
            failback,
            prober: OnceLock::new(),
            probe_running: AtomicBool::new(false),
            maintenance_windows: std::sync::atomic::AtomicUsize::new(0),
            me: me.clone(),
            endpoints,
            auto_switch,
            replay_cap,
            routes,
            default_policy,
            ledger,
            record_query,
            failover_budget,
            throttle_budget,
            calls: CallCounter::default(),
            counters: Counters::default(),
            active: AtomicU64::new(pack(0, Side::Primary)),
            switching: Mutex::new(None),
            state,
            events,
            callbacks,
            deferred: Mutex::new(VecDeque::new()),
        })
    }

    /// A receiver of the state for a task: it sees the state closed once this is dropped.
    pub(crate) fn watch_state(&self) -> watch::Receiver<EndpointState> {
        self.state.subscribe()
    }

    /// When the stay `generation` began, once its state is published: a switch stores the
    /// active side before it publishes (the data-loss report is made in between), and until
    /// then the published `since` is the previous stay's.
    pub(crate) fn stay_since(&self, generation: u64) -> Option<SystemTime> {
        let state = self.state.borrow();
        (state.generation == generation).then_some(state.since)
    }

    /// Publishes the count of a stay on the alternate (`generation`); a switch since has
    /// started another count, and this one is dropped.
    pub(crate) fn set_healthy_probes(&self, generation: u64, count: u32) {
        self.state.send_if_modified(|state| {
            if state.generation != generation {
                return false;
            }
            let changed = state.healthy_probes != count;
            state.healthy_probes = count;
            changed
        });
    }

    #[inline]
    pub(crate) fn active(&self) -> Active {
        let (generation, side) = unpack(self.active.load(Ordering::Acquire));
        Active { generation, side }
    }

    pub(crate) fn endpoint(&self, side: Side) -> &Endpoint {
        // The alternate side is only ever active when an alternate exists.
        self.endpoints.get(side).unwrap_or(self.endpoints.primary())
    }

    pub(crate) fn auto_switch_enabled(&self) -> bool {
        self.auto_switch && self.endpoints.alternate().is_some()
    }

    /// Compare-and-switch: moves calls off `failed.side` only if calls still go there.
    /// `automatic` is false for a switch the application asked for, which ignores
    /// `auto_switch(false)`.
    ///
    /// A switch asked for from inside a callback (the application deciding in
    /// `on_switch_required`, say) cannot be made there: this thread holds `switching` while it
    /// raises the event. It is queued and made once the switch being raised is complete.
    ///
    /// Inside another layer's callbacks this thread holds that layer's lock. Waiting there for
    /// this layer's could deadlock with a thread that holds this one and waits for that one
    /// (two layers whose callbacks switch each other, failing at once). So this lock is then
    /// only taken if it is free; if not, the switch is queued for the thread holding it, which
    /// makes what is queued once it lets go (every holder does, below).
    pub(crate) fn switch_from(&self, failed: Active, cause: SwitchCause, automatic: bool) -> SwitchOutcome {
        let queued = Queued {
            from: failed.side,
            cause,
            automatic,
        };
        if Raising::within(self) {
            self.defer(queued);
            return SwitchOutcome::Refused;
        }
        let outcome = match self.switch_from_unqueued(failed, queued.cause.clone(), automatic) {
            Some(outcome) => outcome,
            None if self.defer_to_holder(queued) => SwitchOutcome::Refused,
            None => return SwitchOutcome::Refused,
        };
        self.make_deferred();
        outcome
    }

    fn queue(&self) -> MutexGuard<'_, VecDeque<Queued>> {
        self.deferred.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn defer(&self, queued: Queued) {
        self.queue().push_back(queued);
    }

    /// Queues a switch for the thread holding `switching`. Returns true when the lock turns
    /// out to be free once it is queued: its holder may have let go, and made what was queued,
    /// before this one was; the caller must then make the queue itself.
    fn defer_to_holder(&self, queued: Queued) -> bool {
        self.defer(queued);
        self.lock_is_free()
    }

    /// Whether `switching` is free at this instant (a holder that let go before something was
    /// queued will not look at the queue again).
    fn lock_is_free(&self) -> bool {
        !matches!(self.switching.try_lock(), Err(TryLockError::WouldBlock))
    }

    /// Makes the switches queued while `switching` was held (by callbacks, or by a thread
    /// that found it busy), in order.
    fn make_deferred(&self) {
        loop {
            let next = self.queue().pop_front();
            let Some(queued) = next else { break };
            // As asked: a switch off `from`, made only if calls still go there (a compare and
            // switch, like any), automatic or not (so `auto_switch(false)` still holds).
            let now = self.active();
            if now.side != queued.from {
                continue;
            }
            if self
                .switch_from_unqueued(now, queued.cause.clone(), queued.automatic)
                .is_some()
            {
                continue;
            }
            // Busy again: its holder makes it, unless it has let go already. Put back first,
            // so the queue keeps its order.
            self.queue().push_front(queued);
            if !self.lock_is_free() {
                break;
            }
        }
    }

    /// `switching`: waited for, unless this thread runs another layer's callbacks (see
    /// `switch_from`); `None` when it is busy then.
    fn lock_switching(&self) -> Option<MutexGuard<'_, Option<u64>>> {
        if !Raising::any() {
            return Some(self.switching.lock().unwrap_or_else(PoisonError::into_inner));
        }
        match self.switching.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// The switch itself; `None` when `switching` was busy and could not be waited for.
    fn switch_from_unqueued(
        &self,
        failed: Active,
        cause: SwitchCause,
        automatic: bool,
    ) -> Option<SwitchOutcome> {
        // Fast path for a failure wave: most callers see the switch already made without
        // taking the lock. As the seed's `CanSwitch(uri)`, the test is the endpoint the call
        // failed on, not the generation: calls may have moved off it and back while this one
        // was in flight (a failback), and a "re-send on the new endpoint" must never go back
        // to the endpoint that just failed.
        let now = self.active();
        if now.side != failed.side {
            return Some(SwitchOutcome::AlreadySwitched { to: now.side });
        }
        // As the seed's step 4: an organization not enabled for failover goes straight to the
        // error, with no `SwitchRequired` (there is no endpoint to switch to).
        if self.endpoints.alternate().is_none() {
            return Some(SwitchOutcome::Refused);
        }
        if automatic && !self.auto_switch {
            return self.raise_required_once(now, cause);
        }

        let asked = failed;
        let mut required_for = self.lock_switching()?;
        let failed = self.active();
        // A failback is made only off the stay on the alternate its probes were counted in.
        // The probe task checks that before it asks, but may then wait here for the lock while
        // calls leave the alternate and come back: the stay it would end has had no probe
        // counted, and may have lasted less than `min_time_on_alternate`.
        let stale_failback = cause == SwitchCause::Failback && failed.generation != asked.generation;
        if failed.side != now.side || stale_failback {
            return Some(SwitchOutcome::AlreadySwitched { to: failed.side });
        }
        let to = failed.side.other();
        let previous = self.endpoint(failed.side).clone();
        let new = self.endpoint(to).clone();
        if matches!(cause, SwitchCause::EndpointDown(_)) {
            self.note_departure(failed.side);
        }
        let switch_cause = cause.clone();
        tracing::warn!(
            previous = %previous,
            new = %new,
            cause = %cause,
            generation = failed.generation + 1,
            "failover: switching endpoint"
        );
        self.publish(
            SwitchEvent::SwitchRequired {
                previous: previous.clone(),
                new: new.clone(),
                cause,
            },
            |_| {},
        );
        let generation = failed.generation + 1;
        self.active.store(pack(generation, to), Ordering::Release);
        *required_for = None;
        self.counters.add(Counter::Switches);
        let report = self
            .ledger
            .as_ref()
            .map(|ledger| Arc::new(ledger.report(failed.side, previous.clone(), new.clone())));
        if let Some(report) = &report {
            if !report.is_empty() {
                tracing::warn!(
                    acknowledged = report.acknowledged.len(),
                    unknown = report.unknown.len(),
                    dropped = report.dropped,
                    "failover: writes at risk after the switch"
                );
            }
        }
        self.publish(
            SwitchEvent::Switched {
                previous,
                new: new.clone(),
                cause: switch_cause.clone(),
                report: report.clone(),
            },
            |state| {
                state.active = to;
                state.endpoint = new;
                state.generation = generation;
                state.since = SystemTime::now();
                state.last_report = report;
                state.cause = Some(switch_cause);
                state.healthy_probes = 0;
            },
        );
        if to == Side::Alternate {
            self.start_probe_task();
        }
        Some(SwitchOutcome::Switched { to })
    }

    /// Tells this switch state from others in the process (see `Raising`).
    fn address(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    fn raise_required_once(&self, failed: Active, cause: SwitchCause) -> Option<SwitchOutcome> {
        let mut required_for = self.lock_switching()?;
        if self.active().generation == failed.generation && *required_for != Some(failed.generation) {
            *required_for = Some(failed.generation);
            let previous = self.endpoint(failed.side).clone();
            let new = self
                .endpoints
                .get(failed.side.other())
                .unwrap_or(&previous)
                .clone();
            tracing::warn!(
                previous = %previous,
                cause = %cause,
                "failover: endpoint down, switch required but automatic switching is off"
            );
            self.publish(SwitchEvent::SwitchRequired { previous, new, cause }, |_| {});
        }
        Some(SwitchOutcome::Refused)
    }

    /// Raises one event everywhere: the `watch` state, then the callbacks (they see every
    /// event, synchronously), then the broadcast stream. Called only under `switching`, so
    /// every listener sees the events in the same order.
    fn publish(&self, event: SwitchEvent, update: impl FnOnce(&mut EndpointState)) {
        // The state first, so a callback reading `handle.state()` or `last_report()` sees the
        // event it is called for. `send_modify` stores the value even with no receiver, so a
        // late subscriber still sees the latest state.
        self.state.send_modify(|state| {
            update(state);
            state.last_event = Some(event.clone());
        });
        {
            let _raising = Raising::enter(self);
            self.run_callbacks(&event);
        }
        let _ = self.events.send(event);
    }

    fn run_callbacks(&self, event: &SwitchEvent) {
        let list = match event {
            SwitchEvent::SwitchRequired { .. } => &self.callbacks.on_switch_required,
            SwitchEvent::Switched { .. } => &self.callbacks.on_switched,
        };
        for callback in list {
            // A panicking callback must not leave the switch half made (the side stored, the
            // `Switched` event not sent, no probe task) nor fail the call that found the
            // endpoint down: the panic is reported (the panic hook has printed it) and the
            // switch goes on.
            let run = std::panic::AssertUnwindSafe(|| callback(event));
            if std::panic::catch_unwind(run).is_err() {
                tracing::error!(event = event.name(), "failover: a switch callback panicked");
            }
        }
    }
}

/// The application's view of a failover pair: the state, the events, and manual control.
///
/// Get it from [`FailoverLayer::handle`](crate::FailoverLayer::handle). Clones share the
/// same state as every service the layer made.
///
/// ```
/// use tower_failover::{Endpoints, FailoverLayer, Side};
///
/// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
///     .build()
///     .unwrap();
/// let handle = layer.handle();
/// assert!(handle.auto_switch_enabled());
/// let mut state = handle.subscribe();
///
/// handle.switch_endpoint();
/// assert_eq!(handle.active(), Side::Alternate);
/// assert!(state.has_changed().unwrap());
/// assert_eq!(state.borrow_and_update().generation, 1);
/// ```
#[derive(Clone)]
pub struct FailoverHandle {
    pub(crate) shared: Arc<Shared>,
}

impl FailoverHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        FailoverHandle { shared }
    }

    /// The Dynamics 365 SDK's `EndpointAutoSwitchEnabled`: true when an alternate is
    /// configured and automatic switching is on.
    ///
    /// ```
    /// use tower_failover::{Endpoints, FailoverLayer};
    ///
    /// let pair = Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap();
    /// assert!(FailoverLayer::new(pair.clone()).handle().auto_switch_enabled());
    /// assert!(!FailoverLayer::builder(pair).auto_switch(false).build().unwrap().handle().auto_switch_enabled());
    ///
    /// let alone = Endpoints::primary_only("https://contoso.api.crm.dynamics.com").unwrap();
    /// assert!(!FailoverLayer::new(alone).handle().auto_switch_enabled());
    /// ```
    pub fn auto_switch_enabled(&self) -> bool {
        self.shared.auto_switch_enabled()
    }

    /// The configured pair.
    ///
    /// ```
    /// use tower_failover::{Endpoints, FailoverLayer};
    ///
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let handle = layer.handle();
    /// assert_eq!(handle.endpoints().alternate().unwrap().host(), "contoso--s.api.crm.dynamics.com");
    /// ```
    pub fn endpoints(&self) -> &Endpoints {
        &self.shared.endpoints
    }

    /// The side calls go to now.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_failover::{Endpoints, FailoverLayer, ReplayBody, Side};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let handle = layer.handle();
    /// assert_eq!(handle.active(), Side::Primary);
    ///
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
    /// assert_eq!(response.status(), 200);
    /// assert_eq!(handle.active(), Side::Alternate);
    /// # }
    /// ```
    pub fn active(&self) -> Side {
        self.shared.active().side
    }

    /// The endpoint calls go to now.
    ///
    /// ```
    /// use tower_failover::{Endpoints, FailoverLayer, Side};
    ///
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let handle = layer.handle();
    /// handle.switch_to(Side::Alternate);
    /// assert_eq!(handle.active_endpoint().to_string(), "https://contoso--s.api.crm.dynamics.com");
    /// ```
    pub fn active_endpoint(&self) -> &Endpoint {
        self.shared.endpoint(self.shared.active().side)
    }

    /// The number of switches made so far.
    ///
    /// ```
    /// use tower_failover::{Endpoints, FailoverLayer};
    ///
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let handle = layer.handle();
    /// let seen = handle.generation();
    /// handle.switch_endpoint();
    /// handle.fail_back();
    /// // Two switches since: whatever was decided at `seen` is out of date.
    /// assert_eq!(handle.generation(), seen + 2);
    /// ```
    pub fn generation(&self) -> u64 {
        self.shared.active().generation
    }

    /// A copy of the current state.
    ///
    /// ```
    /// use tower_failover::{Endpoints, FailoverLayer};
    ///
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let handle = layer.handle();
    /// let state = handle.state();
    /// assert_eq!(&state.endpoint, handle.active_endpoint());
    /// assert_eq!(state.healthy_probes, 0);
    /// ```
    pub fn state(&self) -> EndpointState {
        self.shared.state.borrow().clone()
    }

    /// A `watch` receiver of the state: wakes on every change, keeps only the latest.
    ///
    /// ```
    /// use tower_failover::{Endpoints, FailoverLayer, Side};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let handle = layer.handle();
    /// let mut state = handle.subscribe();
    /// let watcher = tokio::spawn(async move {
    ///     let now = state.wait_for(|s| s.active == Side::Alternate).await.unwrap().clone();
    ///     (now.endpoint.to_string(), now.generation)
    /// });
    ///
    /// handle.switch_endpoint();
    /// assert_eq!(watcher.await.unwrap(), ("https://contoso--s.api.crm.dynamics.com".to_string(), 1));
    /// # }
    /// ```
    pub fn subscribe(&self) -> watch::Receiver<EndpointState> {
        self.shared.state.subscribe()
    }

    /// Every event from now on, in order (`SwitchRequired` then `Switched`). A receiver that
    /// falls more than 64 events behind gets `RecvError::Lagged` and the latest ones.
    ///
    /// ```
    /// use tower_failover::{Endpoints, FailoverLayer};
    ///
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let handle = layer.handle();
    /// let mut events = handle.events();
    /// handle.switch_endpoint();
    /// handle.fail_back();
    ///
    /// let names: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).map(|e| e.name()).collect();
    /// assert_eq!(names, ["SwitchRequired", "Switched", "SwitchRequired", "Switched"]);
    /// ```
    pub fn events(&self) -> broadcast::Receiver<SwitchEvent> {
        self.shared.events.subscribe()
    }

    /// The data-loss report of the latest switch, if any (and if the report is on).
    ///
    /// ```
    /// use tower_failover::{Endpoints, FailoverLayer};
    ///
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let handle = layer.handle();
    /// assert!(handle.last_report().is_none());
    /// handle.switch_endpoint();
    /// let report = handle.last_report().unwrap();
    /// assert_eq!(report.from.host(), "contoso.api.crm.dynamics.com");
    /// ```
    pub fn last_report(&self) -> Option<Arc<DataLossReport>> {
        self.shared.state.borrow().last_report.clone()
    }

    /// The layer's counters: calls, re-sends, switches, throttling, budget refusals.
    ///
    /// ```
    /// use tower_failover::{Endpoints, FailoverLayer};
    ///
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let handle = layer.handle();
    /// handle.switch_endpoint();
    /// let counters = handle.counters();
    /// assert_eq!((counters.calls, counters.switches), (0, 1));
    /// ```
    pub fn counters(&self) -> crate::counters::CountersSnapshot {
        self.shared.counters.snapshot(self.shared.calls.get())
    }

    /// Returns to the primary by hand (`SwitchRequired` then `Switched`, cause
    /// [`SwitchCause::Manual`]); nothing happens when it is already active. Returns the side
    /// now active.
    ///
    /// ```
    /// use tower_failover::{Endpoints, FailoverLayer, Side};
    ///
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let handle = layer.handle();
    /// handle.switch_endpoint();
    /// assert_eq!(handle.fail_back(), Side::Primary);
    /// // Already there: nothing moves.
    /// assert_eq!(handle.fail_back(), Side::Primary);
    /// assert_eq!(handle.generation(), 2);
    /// ```
    pub fn fail_back(&self) -> Side {
        self.shared.switch_to(Side::Primary, SwitchCause::Manual)
    }

    /// Makes `side` active by hand, if it is not already. Returns the side now active.
    ///
    /// ```
    /// use tower_failover::{Endpoints, FailoverLayer, Side};
    ///
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let handle = layer.handle();
    /// assert_eq!(handle.switch_to(Side::Alternate), Side::Alternate);
    /// assert_eq!(handle.switch_to(Side::Alternate), Side::Alternate);
    /// assert_eq!(handle.generation(), 1); // one switch: the second call found it done
    /// ```
    pub fn switch_to(&self, side: Side) -> Side {
        self.shared.switch_to(side, SwitchCause::Manual)
    }

    /// Plans a maintenance window on the primary: calls move to the alternate just before
    /// `start` (one second before; calls already in flight on the primary finish there) with
    /// cause [`SwitchCause::Planned`], and come back after `end` once the primary probes
    /// healthy (with failback configured, its probe and count; otherwise one healthy probe).
    /// With no probe to send (no call has gone through a [`Failover`](crate::Failover)
    /// service yet), calls come back at `end` unprobed. Must be called inside a tokio
    /// runtime.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use std::time::{Duration, SystemTime};
    /// use tower_failover::{Endpoints, FailoverLayer, ReplayBody, Side, SwitchCause};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let handle = layer.handle();
    /// // Both endpoints answer 200.
    /// let client = tower::service_fn(|_request: http::Request<ReplayBody<Full<Bytes>>>| async {
    ///     Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
    /// });
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
    ///     .body(Full::new(Bytes::new()))
    ///     .unwrap();
    /// let response = service.ready().await.unwrap().call(request).await.unwrap();
    ///
    /// // A window starting now, 100 ms long.
    /// let start = SystemTime::now();
    /// handle.schedule_maintenance(start, start + Duration::from_millis(100)).unwrap();
    /// let mut state = handle.subscribe();
    /// state.wait_for(|s| s.active == Side::Alternate).await.unwrap();
    /// assert_eq!(handle.state().cause, Some(SwitchCause::Planned));
    /// // After the window, once the primary probes healthy.
    /// state.wait_for(|s| s.active == Side::Primary).await.unwrap();
    /// assert_eq!(handle.state().cause, Some(SwitchCause::Planned));
    ///
    /// assert!(handle.schedule_maintenance(start, start).is_err()); // ends before it starts
    /// # }
    /// ```
    pub fn schedule_maintenance(&self, start: SystemTime, end: SystemTime) -> Result<(), ConfigError> {
        self.shared
            .schedule_maintenance(start, end, std::time::Duration::from_secs(1))
    }

    /// Like [`schedule_maintenance`](Self::schedule_maintenance), moving `lead` before `start`.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use tower_failover::{Endpoints, FailoverLayer, Side};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let handle = layer.handle();
    /// // Tonight's window, moving calls ten minutes ahead so long calls finish on the primary.
    /// let start = SystemTime::now() + Duration::from_secs(6 * 3600);
    /// let lead = Duration::from_secs(600);
    /// handle.schedule_maintenance_with_lead(start, start + Duration::from_secs(1800), lead).unwrap();
    /// assert_eq!(handle.active(), Side::Primary); // not yet
    ///
    /// let alone = FailoverLayer::new(Endpoints::primary_only("https://api.example.com").unwrap()).handle();
    /// let err = alone.schedule_maintenance_with_lead(start, start + Duration::from_secs(1800), lead).unwrap_err();
    /// assert!(err.to_string().contains("no alternate"));
    /// # }
    /// ```
    pub fn schedule_maintenance_with_lead(
        &self,
        start: SystemTime,
        end: SystemTime,
        lead: std::time::Duration,
    ) -> Result<(), ConfigError> {
        self.shared.schedule_maintenance(start, end, lead)
    }

    /// True while a failback probe task is running: failback is configured, calls go to the
    /// alternate, and a call has lent the inner service for probes.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_failover::{Endpoints, Failback, FailoverLayer, ReplayBody};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .failback(Failback::dynamics())
    ///     .build()
    ///     .unwrap();
    /// let handle = layer.handle();
    /// // Both endpoints answer 200.
    /// let client = tower::service_fn(|_request: http::Request<ReplayBody<Full<Bytes>>>| async {
    ///     Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
    /// });
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// assert!(!handle.probing());
    ///
    /// // The first call lends the service for probes; calls then move to the alternate.
    /// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
    ///     .body(Full::new(Bytes::new()))
    ///     .unwrap();
    /// let response = service.ready().await.unwrap().call(request).await.unwrap();
    /// handle.switch_endpoint();
    /// assert!(handle.probing());
    /// # }
    /// ```
    pub fn probing(&self) -> bool {
        self.shared.probe_running.load(Ordering::Acquire)
    }

    /// Switches to the other endpoint by hand, raising both events with cause
    /// [`SwitchCause::Manual`]. Works with automatic switching off. Returns the side now
    /// active; with no alternate configured nothing moves and no event is raised. Called from
    /// inside a switch callback, the switch is queued and made once the switch being raised is
    /// complete, if calls are still on the endpoint they were on at the call (a
    /// compare-and-switch); this returns the side active at the call.
    ///
    /// ```
    /// use tower_failover::{Endpoints, FailoverLayer, Side};
    ///
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .auto_switch(false) // the application decides
    ///     .build()
    ///     .unwrap();
    /// let handle = layer.handle();
    /// assert_eq!(handle.switch_endpoint(), Side::Alternate);
    /// assert_eq!(handle.switch_endpoint(), Side::Primary);
    /// ```
    pub fn switch_endpoint(&self) -> Side {
        let current = self.shared.active();
        match self.shared.switch_from(current, SwitchCause::Manual, false) {
            SwitchOutcome::Switched { to } | SwitchOutcome::AlreadySwitched { to } => to,
            SwitchOutcome::Refused => current.side,
        }
    }
}

impl fmt::Debug for FailoverHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailoverHandle")
            .field("endpoints", &self.shared.endpoints)
            .field("active", &self.active())
            .field("generation", &self.generation())
            .finish()
    }
}
