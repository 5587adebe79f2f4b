//! The data-loss ledger: a bounded record of recent writes, and the [`DataLossReport`] made
//! from it at every switch.
//!
//! The seed leaves one problem to the application: "data change operations ... may not
//! complete successfully", so "check for potential data loss after endpoint switch events".
//! Two kinds of write are at risk when calls move to the alternate:
//!
//! * writes the old endpoint acknowledged shortly before the switch: replication to the
//!   alternate is asynchronous, so the alternate may not have them yet;
//! * writes whose outcome is unknown: in flight at the switch, or failed after they were sent.
//!
//! Reads cost nothing here. A write costs one small record (its method, path, key and send
//! time: no body) added under a short lock, and one atomic word for its fate (outcome, side,
//! acknowledgement time), settled without the lock.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use http::header::HeaderName;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method};

use crate::coarse_clock::{Tick, SLACK};
use crate::endpoint::{Endpoint, Side};
use crate::state::Active;

/// The default replication window: acknowledged writes younger than this are reported.
pub const DEFAULT_REPLICATION_WINDOW: Duration = Duration::from_secs(5 * 60);
/// The default number of writes the ledger keeps.
pub const DEFAULT_LEDGER_CAPACITY: usize = 10_000;
/// The most writes the ledger can be asked to keep. The ledger sets aside one 8-byte word per
/// place up front (a write's fate, changed without a lock), with a quarter more places than its
/// capacity, rounded up to a power of two: 128 KiB at the default capacity, 32 MiB at this
/// limit.
pub const MAX_LEDGER_CAPACITY: usize = 1 << 21;

/// A key the application attaches to a request (in its extensions) to name a write in the
/// data-loss report, when no header carries one.
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_failover::{Endpoints, FailoverLayer, ReplayBody, WriteKey};
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
///
/// let mut request = http::Request::post("https://contoso.api.crm.dynamics.com/api/data/v9.2/accounts")
///     .body(Full::new(Bytes::from_static(br#"{"accountnumber":"42"}"#)))
///     .unwrap();
/// request.extensions_mut().insert(WriteKey::new("account:42"));
/// service.ready().await.unwrap().call(request).await.unwrap();
///
/// handle.switch_endpoint();
/// assert_eq!(handle.last_report().unwrap().acknowledged[0].key.as_deref(), Some("account:42"));
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WriteKey(pub String);

impl WriteKey {
    /// A key.
    pub fn new(key: impl Into<String>) -> Self {
        WriteKey(key.into())
    }
}

/// What became of a recorded write.
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_failover::{Endpoints, FailoverLayer, ReplayBody, WriteOutcome};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
/// let handle = layer.handle();
/// let client = tower::service_fn(|request: http::Request<ReplayBody<Full<Bytes>>>| async move {
///     let status = match request.uri().path() {
///         "/api/data/v9.2/slow" => std::future::pending::<u16>().await, // never answers
///         "/api/data/v9.2/broken" => 500,
///         _ => 201,
///     };
///     Ok::<_, Infallible>(http::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap())
/// });
/// let mut service = ServiceBuilder::new().layer(layer).service(client);
/// let post = |path: &str| {
///     http::Request::post(format!("https://contoso.api.crm.dynamics.com/api/data/v9.2/{path}"))
///         .body(Full::new(Bytes::new()))
///         .unwrap()
/// };
///
/// service.ready().await.unwrap().call(post("accounts")).await.unwrap();
/// // A 500 is not an outage, and says nothing of whether the write was applied.
/// service.ready().await.unwrap().call(post("broken")).await.unwrap();
/// let in_flight = service.ready().await.unwrap().call(post("slow"));
///
/// handle.switch_endpoint();
/// let report = handle.last_report().unwrap();
/// let outcomes: Vec<_> = report.at_risk().map(|write| (write.path.as_str(), write.outcome)).collect();
/// assert_eq!(
///     outcomes,
///     [
///         ("/api/data/v9.2/accounts", WriteOutcome::Acknowledged),
///         ("/api/data/v9.2/broken", WriteOutcome::Unknown),
///         ("/api/data/v9.2/slow", WriteOutcome::InFlight),
///     ]
/// );
/// # drop(in_flight);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteOutcome {
    /// Still in flight.
    InFlight,
    /// The endpoint answered with a status below 400.
    Acknowledged,
    /// Failed after it may have been sent, or was cut off: it may or may not have been applied.
    Unknown,
    /// Failed on one endpoint after it may have been sent, then succeeded on the other: applied
    /// on the second, perhaps on the first too.
    ResentOnAlternate,
}

/// One write, as the report shows it.
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_failover::{Endpoints, FailoverLayer, ReplayBody, Side, WriteOutcome};
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
/// let request = http::Request::post("https://contoso.api.crm.dynamics.com/api/data/v9.2/accounts?$select=name")
///     .header("idempotency-key", "create-contoso")
///     .body(Full::new(Bytes::from_static(br#"{"name":"Contoso"}"#)))
///     .unwrap();
/// let response = service.ready().await.unwrap().call(request).await.unwrap();
///
/// handle.switch_endpoint();
/// let report = handle.last_report().unwrap();
/// let write = &report.acknowledged[0];
/// assert_eq!(write.method, http::Method::POST);
/// assert_eq!(write.path, "/api/data/v9.2/accounts"); // no query: it may carry secrets
/// assert_eq!(write.key.as_deref(), Some("create-contoso"));
/// assert_eq!(write.side, Side::Primary);
/// assert_eq!(write.outcome, WriteOutcome::Acknowledged);
/// assert!(write.acknowledged_at.unwrap() >= write.sent_at);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRecord {
    /// The method.
    pub method: Method,
    /// The path; with the query only when the layer was told to record queries.
    pub path: String,
    /// The request's key: the configured header (unless its value is marked sensitive), or a
    /// [`WriteKey`] from its extensions.
    pub key: Option<String>,
    /// The side that may hold it, the side of the report's `from`. A write is listed off the
    /// side it was sent to first, unless that attempt provably was not processed (refused at
    /// connect, say) and it moved; one re-sent after it may have been received is listed off
    /// both sides: as unknown off the first, and as the re-send's outcome off the second.
    pub side: Side,
    /// When it was sent (to the ledger clock's step of 1–10 ms: see the crate's README).
    pub sent_at: SystemTime,
    /// When it was acknowledged, if it was: rounded up to a step of about 8 ms, so it may read
    /// up to 8 ms after the acknowledgement (and after the report's `at`).
    pub acknowledged_at: Option<SystemTime>,
    /// What became of it.
    pub outcome: WriteOutcome,
}

/// The writes at risk when calls moved off an endpoint. Carried by every
/// [`SwitchEvent::Switched`](crate::SwitchEvent) and kept in
/// [`FailoverHandle::last_report`](crate::FailoverHandle::last_report) until the next switch.
///
/// A write stays in the ledger until it leaves the replication window, so a later switch off
/// the same endpoint within the window lists it again: reconciling by key (read back, upsert
/// if missing) makes that harmless.
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tokio::sync::broadcast;
/// use tower_failover::{Endpoints, FailoverLayer, ReplayBody, SwitchEvent};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
/// let handle = layer.handle();
/// let mut events = handle.events();
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
/// let report = loop {
///     match events.recv().await {
///         Ok(SwitchEvent::Switched { report: Some(report), .. }) => break report,
///         Ok(_) => continue,
///         // Fell behind: the latest report is still on the handle.
///         Err(broadcast::error::RecvError::Lagged(_)) => break handle.last_report().unwrap(),
///         Err(broadcast::error::RecvError::Closed) => unreachable!("the handle keeps the sender"),
///     }
/// };
/// assert_eq!(report.from.host(), "contoso.api.crm.dynamics.com");
/// assert_eq!(report.to.host(), "contoso--s.api.crm.dynamics.com");
/// assert!(!report.is_empty());
/// assert_eq!(
///     report.to_string(),
///     "1 acknowledged by https://contoso.api.crm.dynamics.com within 300s \
///      (may be missing on https://contoso--s.api.crm.dynamics.com), 0 with unknown outcome"
/// );
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataLossReport {
    /// The endpoint calls moved off.
    pub from: Endpoint,
    /// The endpoint calls moved to.
    pub to: Endpoint,
    /// When the switch was made.
    pub at: SystemTime,
    /// The replication window the acknowledged writes were taken from.
    pub window: Duration,
    /// Writes `from` acknowledged within the window, including writes re-sent to `from` after
    /// they failed on `to` (outcome [`WriteOutcome::ResentOnAlternate`]): `to` may not have
    /// them yet.
    pub acknowledged: Vec<WriteRecord>,
    /// Writes sent to `from` whose outcome is unknown: still in flight, however old, or failed
    /// within the window after they may have reached `from` (including those then re-sent on
    /// `to`: a later report off `to` lists them again, with the re-send's outcome). `from` may or may not have applied them.
    pub unknown: Vec<WriteRecord>,
    /// Writes the ledger dropped, oldest first, to stay within its capacity since the
    /// previous report. Non-zero means the lists above may be incomplete.
    pub dropped: u64,
}

impl DataLossReport {
    /// Every write at risk: acknowledged, then unknown.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_failover::{Endpoints, FailoverLayer, ReplayBody, WriteOutcome};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let handle = layer.handle();
    /// // The primary applies accounts, and answers 500 for tasks.
    /// let client = tower::service_fn(|request: http::Request<ReplayBody<Full<Bytes>>>| async move {
    ///     let status = if request.uri().path().ends_with("/tasks") { 500 } else { 204 };
    ///     Ok::<_, Infallible>(http::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap())
    /// });
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    /// for (path, key) in [("accounts", "account-1"), ("tasks", "task-1")] {
    ///     let request = http::Request::post(format!("https://contoso.api.crm.dynamics.com/api/data/v9.2/{path}"))
    ///         .header("idempotency-key", key)
    ///         .body(Full::new(Bytes::new()))
    ///         .unwrap();
    ///     service.ready().await.unwrap().call(request).await.unwrap();
    /// }
    ///
    /// handle.switch_endpoint();
    /// let report = handle.last_report().unwrap();
    /// let mut to_check = Vec::new();
    /// for write in report.at_risk() {
    ///     let key = write.key.as_deref().unwrap();
    ///     match write.outcome {
    ///         // Applied on `from`: read it back on `to`, apply it again (same key) if missing.
    ///         WriteOutcome::Acknowledged => to_check.push(format!("{key}: re-apply if missing")),
    ///         // Maybe applied: once the call has ended, read it back before sending it again.
    ///         _ => to_check.push(format!("{key}: read back")),
    ///     }
    /// }
    /// assert_eq!(to_check, ["account-1: re-apply if missing", "task-1: read back"]);
    /// # }
    /// ```
    pub fn at_risk(&self) -> impl Iterator<Item = &WriteRecord> {
        self.acknowledged.iter().chain(self.unknown.iter())
    }

    /// True when no write is at risk and none was dropped.
    pub fn is_empty(&self) -> bool {
        self.acknowledged.is_empty() && self.unknown.is_empty() && self.dropped == 0
    }
}

impl fmt::Display for DataLossReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} acknowledged by {} within {:?} (may be missing on {}), {} with unknown outcome",
            self.acknowledged.len(),
            self.from,
            self.window,
            self.to,
            self.unknown.len()
        )?;
        if self.dropped > 0 {
            write!(f, ", {} dropped from the ledger", self.dropped)?;
        }
        Ok(())
    }
}

/// How the ledger is set up.
#[derive(Debug, Clone)]
pub(crate) struct LedgerConfig {
    pub(crate) window: Duration,
    pub(crate) capacity: usize,
    pub(crate) record_query: bool,
    pub(crate) key_header: Option<HeaderName>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            window: DEFAULT_REPLICATION_WINDOW,
            capacity: DEFAULT_LEDGER_CAPACITY,
            record_query: false,
            key_header: Some(crate::policy::IDEMPOTENCY_KEY),
        }
    }
}

/// What the ledger holds of a write that never changes after it is sent. Its fate (outcome,
/// side, acknowledgement) is kept apart, in [`Fate`] words. An entry's write id is its place
/// in the book: ids are handed out in order and entries leave only from the front.
struct Entry {
    method: Method,
    // The query is cut off only when a report is made.
    path: KeptPath,
    key: Option<Key>,
    // A coarse reading (see `coarse_clock`): read for every write, so it must be cheap.
    sent: Tick,
}

/// A write's path and query as the ledger keeps it. A short one (most are) is copied into the
/// entry: holding a clone of the request's URI instead would keep the request's whole URI
/// buffer alive until the entry leaves the ledger, and free it then, cold, on some later
/// call's path.
enum KeptPath {
    Inline { len: u8, bytes: [u8; KeptPath::INLINE] },
    Shared(PathAndQuery),
}

impl KeptPath {
    const INLINE: usize = 62;

    fn of(path: Option<&PathAndQuery>) -> Self {
        let Some(path) = path else {
            return KeptPath::Inline {
                len: 0,
                bytes: [0; Self::INLINE],
            };
        };
        let text = path.as_str().as_bytes();
        if text.len() > Self::INLINE {
            return KeptPath::Shared(path.clone());
        }
        let mut bytes = [0; Self::INLINE];
        bytes[..text.len()].copy_from_slice(text);
        KeptPath::Inline {
            // At most `INLINE`, which fits.
            len: text.len() as u8,
            bytes,
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Copied whole from a `&str`, so it is UTF-8 (a `PathAndQuery` is even ASCII).
            KeptPath::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or("/")
            }
            KeptPath::Shared(path) => path.as_str(),
        }
    }
}

enum Key {
    Header(HeaderValue),
    App(String),
}

struct Book {
    entries: VecDeque<Entry>,
    // The id the next write gets; see `front_id`.
    next_id: u64,
    dropped: u64,
    // Forgotten writes that have left the book. With `Ledger::forgotten` (forgotten writes
    // ever), it tells how many entries are forgotten ones waiting to reach the front, which
    // do not count against the capacity.
    forgotten_left: u64,
    // No entry can leave the window before this: the front's send time plus the window (and
    // the clock's slack). A write's window starts when it settles, never before it was sent,
    // and no entry was sent before the front. Until then `begin` skips pruning.
    prune_after: Tick,
}

impl Book {
    /// The id of the front entry (of the next write, when the book is empty).
    fn front_id(&self) -> u64 {
        self.next_id - self.entries.len() as u64
    }
}

/// What has become of a write, packed into one word so that a call can change it with one
/// atomic compare-and-swap, without the ledger's lock.
///
/// Every write is settled on its call's success path. Settling under the lock, as the ledger
/// first did, cost a second lock round trip per write (and serialised concurrent calls on
/// it); a write's id already names its slot, so no search is needed either.
///
/// From the low bits up:
///
/// * 3 bits: the outcome (`Fate::IN_FLIGHT` ...); `FORGOTTEN` for a write that proved not
///   applied: it is left out of reports and leaves at the front without being counted as
///   dropped; `LEFT` once the write has left the book. Both are final.
/// * 1 bit: the side that may hold the write (where it was first sent, unless that attempt
///   provably never arrived and it moved).
/// * 36 bits: when it settled (acknowledged, or failed with an unknown outcome), in steps of
///   2^23 ns (about 8.4 ms) after the ledger's anchor, rounded up, plus one; zero while in
///   flight. 36 bits of steps last 18 years. Rounding up can only keep a write in the window
///   longer.
/// * 1 bit: re-sent to the other side after it may have been received on its own: it may
///   then be held by both sides, and reports off either list it.
/// * 23 bits: the write's lap, `id >> shift`. Slot `id & mask` is reused by the write `slots`
///   later; a late settle for a write that was evicted finds another lap there and does
///   nothing. Laps repeat after 2^23 reuses of a slot (with the minimum of 1,024 slots, 8.6
///   billion writes) while that one call is still in flight: not a case that arises.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fate(u64);

impl Fate {
    const IN_FLIGHT: u64 = 0;
    const ACKNOWLEDGED: u64 = 1;
    const UNKNOWN: u64 = 2;
    const RESENT_ON_ALTERNATE: u64 = 3;
    const FORGOTTEN: u64 = 4;
    // The write has left the book (pruned or pushed out); its slot waits for a later write.
    const LEFT: u64 = 0b111;
    const OUTCOME_MASK: u64 = 0b111;
    const SIDE_BIT: u64 = 1 << 3;
    const SETTLED_SHIFT: u32 = 4;
    const SETTLED_BITS: u32 = 36;
    const SETTLED_MASK: u64 = ((1 << Self::SETTLED_BITS) - 1) << Self::SETTLED_SHIFT;
    const RESENT_BIT: u64 = 1 << 40;
    const LAP_SHIFT: u32 = 41;
    const LAP_MASK: u64 = (1 << 23) - 1;
    // One acknowledgement step, as a shift of nanoseconds.
    const STEP_SHIFT: u32 = 23;

    fn sent(lap: u32, side: Side) -> Fate {
        Fate((u64::from(lap) << Self::LAP_SHIFT) | Self::side_bit(side) | Self::IN_FLIGHT)
    }

    fn side_bit(side: Side) -> u64 {
        match side {
            Side::Primary => 0,
            Side::Alternate => Self::SIDE_BIT,
        }
    }

    fn lap(self) -> u32 {
        (self.0 >> Self::LAP_SHIFT) as u32
    }

    fn side(self) -> Side {
        if self.0 & Self::SIDE_BIT == 0 {
            Side::Primary
        } else {
            Side::Alternate
        }
    }

    fn code(self) -> u64 {
        self.0 & Self::OUTCOME_MASK
    }

    /// The outcome; `None` for a forgotten write, or one that has left the book.
    fn outcome(self) -> Option<WriteOutcome> {
        match self.code() {
            Self::IN_FLIGHT => Some(WriteOutcome::InFlight),
            Self::ACKNOWLEDGED => Some(WriteOutcome::Acknowledged),
            Self::UNKNOWN => Some(WriteOutcome::Unknown),
            Self::RESENT_ON_ALTERNATE => Some(WriteOutcome::ResentOnAlternate),
            _ => None,
        }
    }

    fn code_of(outcome: WriteOutcome) -> u64 {
        match outcome {
            WriteOutcome::InFlight => Self::IN_FLIGHT,
            WriteOutcome::Acknowledged => Self::ACKNOWLEDGED,
            WriteOutcome::Unknown => Self::UNKNOWN,
            WriteOutcome::ResentOnAlternate => Self::RESENT_ON_ALTERNATE,
        }
    }

    fn with_code(self, code: u64) -> Fate {
        Fate((self.0 & !Self::OUTCOME_MASK) | code)
    }

    fn with_side(self, side: Side) -> Fate {
        Fate((self.0 & !Self::SIDE_BIT) | Self::side_bit(side))
    }

    /// Sent again to the other side after it may have been received on its own: in flight
    /// again (unsettled), on both sides.
    fn with_resent(self) -> Fate {
        Fate(self.in_flight_again().0 | Self::RESENT_BIT)
    }

    /// Sent again, to its own side: in flight again (unsettled), on the sides it was on.
    fn in_flight_again(self) -> Fate {
        Fate((self.0 & !(Self::OUTCOME_MASK | Self::SETTLED_MASK)) | Self::IN_FLIGHT)
    }

    /// The re-send to the other side provably never reached it: only its own side may hold it.
    fn without_resent(self) -> Fate {
        Fate(self.0 & !Self::RESENT_BIT)
    }

    fn resent(self) -> bool {
        self.0 & Self::RESENT_BIT != 0
    }

    /// Settled at a reading taken `since_anchor` after the ledger's anchor.
    fn with_settled(self, since_anchor: u64) -> Fate {
        let steps = since_anchor.div_ceil(1 << Self::STEP_SHIFT).saturating_add(1);
        let stored = steps.min((1 << Self::SETTLED_BITS) - 1);
        Fate((self.0 & !Self::SETTLED_MASK) | (stored << Self::SETTLED_SHIFT))
    }

    /// When it was acknowledged, in nanoseconds after the ledger's anchor (rounded up).
    fn settled(self) -> Option<u64> {
        let stored = (self.0 & Self::SETTLED_MASK) >> Self::SETTLED_SHIFT;
        stored.checked_sub(1).map(|steps| steps << Self::STEP_SHIFT)
    }
}

/// Slots are a power of two, so a write's slot and lap are a mask and a shift; and no fewer
/// than this, so a slot is reused rarely even in a small ledger.
const MIN_SLOTS: usize = 1024;

/// How many slots a ledger of `capacity` writes gets: a quarter more than the capacity, so
/// forgotten writes waiting to reach the front leave room for the writes at risk, rounded up
/// to a power of two.
fn slots_for(capacity: usize) -> usize {
    capacity
        .saturating_add(capacity / 4)
        .next_power_of_two()
        .max(MIN_SLOTS)
}

pub(crate) struct Ledger {
    // One clock reading pair; wall-clock times in reports are derived from it.
    anchor: (Tick, SystemTime),
    config: LedgerConfig,
    // The replication window widened by the clock's slack, in nanoseconds.
    keep_for: u64,
    book: Mutex<Book>,
    // One `Fate` word per slot; write `id` is in slot `id & mask`. The book never holds more
    // entries than there are slots, so two writes in the book never share one.
    fates: Box<[AtomicU64]>,
    mask: u64,
    shift: u32,
    // Writes ever forgotten (see `Book::forgotten_left`). Counted by `forget`, which does not
    // take the lock.
    forgotten: AtomicU64,
}

/// A write's place in the ledger, held by the call until it settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriteId(u64);

impl Ledger {
    pub(crate) fn new(mut config: LedgerConfig) -> Self {
        // The builder refuses anything else; clamped here too so no path can ask for more.
        config.capacity = config.capacity.clamp(1, MAX_LEDGER_CAPACITY);
        let slots = slots_for(config.capacity);
        let keep_for = config.window.saturating_add(SLACK).as_nanos();
        Ledger {
            anchor: (Tick::now(), SystemTime::now()),
            keep_for: u64::try_from(keep_for).unwrap_or(u64::MAX),
            config,
            book: Mutex::new(Book {
                entries: VecDeque::new(),
                next_id: 0,
                dropped: 0,
                forgotten_left: 0,
                prune_after: Tick(0),
            }),
            fates: std::iter::repeat_with(AtomicU64::default).take(slots).collect(),
            mask: slots as u64 - 1,
            shift: slots.trailing_zeros(),
            forgotten: AtomicU64::new(0),
        }
    }

    /// The wall-clock time of `at`. A write reads only the coarse monotonic clock; the
    /// `SystemTime` a report shows is derived from one reading taken when the ledger was made.
    fn wall_clock(&self, at: Tick) -> SystemTime {
        self.anchor.1 + at.saturating_since(self.anchor.0)
    }

    /// Whether a write settled at `at` is still within the replication window at `now`. The
    /// coarse clock may trail by up to `SLACK`: the window is widened by as much, so a write
    /// is kept and reported longer, never shorter.
    fn within_window(&self, now: Tick, at: Tick) -> bool {
        now.0.saturating_sub(at.0) <= self.keep_for
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn slot(&self, id: u64) -> &AtomicU64 {
        // `mask` is below the number of slots, so the index is in bounds.
        &self.fates[(id & self.mask) as usize]
    }

    fn lap(&self, id: u64) -> u32 {
        ((id >> self.shift) & Fate::LAP_MASK) as u32
    }

    fn fate(&self, id: u64) -> Fate {
        Fate(self.slot(id).load(Ordering::Acquire))
    }

    /// When a write whose fate is `fate` was acknowledged.
    fn settled_at(&self, fate: Fate) -> Option<Tick> {
        fate.settled()
            .map(|since| Tick(self.anchor.0 .0.saturating_add(since)))
    }

    /// Records a write as it is sent, to a side read with `read_active` under the ledger's lock;
    /// returns what it read, which the write must be sent to.
    ///
    /// Read under the lock, not before: a switch stores the new active side and then takes
    /// the lock to make its report. A write whose side was read before the store but recorded
    /// after the report would be sent to the side calls left and listed in no report. Read
    /// under the lock, either the report finds the write (with the side it goes to), or the
    /// write finds the new side.
    pub(crate) fn begin(
        &self,
        method: &Method,
        path: Option<&PathAndQuery>,
        headers: &HeaderMap,
        extensions: &http::Extensions,
        read_active: impl FnOnce() -> Active,
    ) -> (WriteId, Active) {
        let key = self
            .config
            .key_header
            .as_ref()
            .and_then(|name| headers.get(name))
            // A value marked sensitive is not to be shown: reports are logged and published.
            .filter(|v| !v.is_sensitive())
            .map(|v| Key::Header(v.clone()))
            .or_else(|| extensions.get::<WriteKey>().map(|k| Key::App(k.0.clone())));
        let mut entry = Entry {
            method: method.clone(),
            path: KeptPath::of(path),
            key,
            sent: Tick::now(),
        };
        let mut book = self.book();
        let active = read_active();
        let side = active.side;
        // Send times rise from front to back (the clock was read before the lock, so another
        // call may have taken it first with a later reading): `prune_after` relies on it. A
        // reading moved later only keeps the write in the window longer.
        if let Some(back) = book.entries.back() {
            entry.sent = entry.sent.max(back.sent);
        }
        if entry.sent >= book.prune_after {
            self.prune(&mut book, entry.sent);
        }
        // Make room for this one: the oldest goes first, counted unless it was forgotten. It
        // is dropped after the lock is released: dropping it may free the old request's
        // buffers, cold in the cache, and other calls wait on this lock.
        let mut evicted = None;
        while book.entries.len() >= self.fates.len() || self.at_risk(&book) >= self.config.capacity {
            let front = book.front_id();
            if self.leave(front, &mut book).code() != Fate::FORGOTTEN {
                book.dropped += 1;
            }
            evicted = book.entries.pop_front();
        }
        let id = book.next_id;
        book.next_id += 1;
        // The slot's previous write left the book above (or long ago), so nothing else can
        // change this word now but a late settle for that write, which the new lap turns away.
        self.slot(id)
            .store(Fate::sent(self.lap(id), side).0, Ordering::Release);
        book.entries.push_back(entry);
        drop(book);
        drop(evicted);
        (WriteId(id), active)
    }

    /// How many entries of the book count against the capacity: all but the forgotten ones
    /// still waiting to reach the front. A `forget` that has changed its write's fate but not
    /// yet counted itself makes this too high for a moment: the ledger may then drop a write
    /// early for each such `forget`, and counts it.
    fn at_risk(&self, book: &Book) -> usize {
        let waiting = self
            .forgotten
            .load(Ordering::Acquire)
            .saturating_sub(book.forgotten_left);
        book.entries
            .len()
            .saturating_sub(usize::try_from(waiting).unwrap_or(usize::MAX))
    }

    /// Marks the front write `id` as gone, just before it leaves the book, and returns its
    /// fate as it was. One atomic step: a `forget` racing it either lands first (and is
    /// counted here as a forgotten write leaving) or finds the write gone (and counts
    /// nothing), so `forgotten` and `forgotten_left` stay in step.
    fn leave(&self, id: u64, book: &mut Book) -> Fate {
        let fate = Fate(self.slot(id).fetch_or(Fate::LEFT, Ordering::AcqRel));
        if fate.code() == Fate::FORGOTTEN {
            book.forgotten_left += 1;
        }
        fate
    }

    /// Changes a write's fate, unless it has left the ledger or was forgotten (which is
    /// final). Says whether it changed it.
    fn change(&self, id: WriteId, change: impl Fn(Fate) -> Fate) -> bool {
        let slot = self.slot(id.0);
        let lap = self.lap(id.0);
        let mut current = slot.load(Ordering::Acquire);
        // A retry only when another change to the same write raced this one.
        while Fate(current).lap() == lap && Fate(current).code() < Fate::FORGOTTEN {
            let new = change(Fate(current));
            // Already so (a first attempt's side told it was not applied there, say): no
            // write to the shared slot.
            if new.0 == current {
                return true;
            }
            match slot.compare_exchange_weak(current, new.0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
        false
    }

    /// Settles a write.
    pub(crate) fn settle(&self, id: WriteId, outcome: WriteOutcome) {
        // Every settled write is timed, not only acknowledged ones: a write's window starts
        // when it settles. Timed from when it was sent, a write that failed after a call longer
        // than the window would be pruned by the very switch its failure caused.
        let since = Tick::now().0.saturating_sub(self.anchor.0 .0);
        let _ = self.change(id, |fate| {
            let fate = fate.with_code(Fate::code_of(outcome));
            match outcome {
                WriteOutcome::InFlight => fate,
                _ => fate.with_settled(since),
            }
        });
    }

    /// A write that may have been received is about to be re-sent to `to`, the side a switch
    /// moved calls to: notes it there (see `sent_again`) under the ledger's lock, if calls
    /// still go to `to`, as `begin` reads its side. Returns false, noting nothing, when calls
    /// have left `to` since and `to` is not the write's own side: the switch off it has made
    /// its report without this write, so it must not be sent there.
    pub(crate) fn resend_to(&self, id: WriteId, to: Side, read_active: impl FnOnce() -> Active) -> bool {
        let _book = self.book();
        let fate = self.fate(id.0);
        let own_side = fate.lap() == self.lap(id.0) && fate.side() == to;
        if !own_side && read_active().side != to {
            return false;
        }
        self.sent_again(id, to);
        true
    }

    /// A write that may have been received is sent again, to `to`: in flight again, and listed
    /// off `to` too if that is not its own side (see `resent`). Back on its own side, it stays
    /// listed off the other only if it was (an attempt there may have been received).
    fn sent_again(&self, id: WriteId, to: Side) {
        let _ = self.change(id, |fate| {
            if fate.side() == to {
                fate.in_flight_again()
            } else {
                fate.with_resent()
            }
        });
    }

    /// An attempt of a write on `side`, not its own, provably did not apply it (refused at
    /// connect, or with a 4xx, or it never went out), and no earlier attempt there may have
    /// been received: reports off `side` no longer list it.
    pub(crate) fn not_applied_on(&self, id: WriteId, side: Side) {
        let _ = self.change(id, |fate| {
            if fate.side() == side {
                fate
            } else {
                fate.without_resent()
            }
        });
    }

    /// A throttled write retried after a wait: reads the side calls go to now under the
    /// ledger's lock (see `begin`) and, if it is not `from`, notes the write as sent there:
    /// moved when the throttling proved it unprocessed, sent again when it may have been
    /// received. `from_unapplied`: no attempt on `from` may have been received, so reports
    /// off `from` need not list it, unless it is the write's own side.
    pub(crate) fn follow(
        &self,
        id: WriteId,
        from: Side,
        maybe_received: bool,
        from_unapplied: bool,
        read_active: impl FnOnce() -> Active,
    ) -> Active {
        let _book = self.book();
        let active = read_active();
        if active.side != from {
            if maybe_received {
                if from_unapplied {
                    self.not_applied_on(id, from);
                }
                self.sent_again(id, active.side);
            } else {
                self.moved(id, active.side);
            }
        }
        active
    }

    /// Notes that a write that provably never reached `side`'s predecessor is now sent to `side`.
    pub(crate) fn moved(&self, id: WriteId, side: Side) {
        let _ = self.change(id, |fate| fate.with_side(side));
    }

    /// Forgets a write that provably was not applied (it cannot be at risk). Its entry stays
    /// until it reaches the front (removing it from the middle would shift the entries behind
    /// it, under the lock), but no longer counts against the capacity: it takes one of the
    /// spare slots, of which there are at least a quarter of the capacity.
    pub(crate) fn forget(&self, id: WriteId) {
        if self.change(id, |fate| fate.with_code(Fate::FORGOTTEN)) {
            self.forgotten.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Drops forgotten entries, and settled entries older than the window, from the front.
    fn prune(&self, book: &mut Book, now: Tick) {
        while let Some(front) = book.entries.front() {
            let fate = self.fate(book.front_id());
            let expired = match fate.code() {
                Fate::FORGOTTEN => true,
                Fate::IN_FLIGHT => false,
                _ => {
                    let settled = self.settled_at(fate).unwrap_or(front.sent);
                    !self.within_window(now, settled)
                }
            };
            if !expired {
                break;
            }
            self.leave(book.front_id(), book);
            book.entries.pop_front();
        }
        book.prune_after = match book.entries.front() {
            Some(front) => Tick(front.sent.0.saturating_add(self.keep_for)),
            None => Tick(0),
        };
    }

    /// The report for a switch off `from`.
    pub(crate) fn report(
        &self,
        from: Side,
        from_endpoint: Endpoint,
        to_endpoint: Endpoint,
    ) -> DataLossReport {
        let now = Tick::now();
        let mut book = self.book();
        self.prune(&mut book, now);
        let mut acknowledged = Vec::new();
        let mut unknown = Vec::new();
        for (id, entry) in (book.front_id()..).zip(book.entries.iter()) {
            let fate = self.fate(id);
            let Some(outcome) = fate.outcome() else {
                continue;
            };
            // Sent to `from` first, or re-sent there after it may have been received on the
            // other side (then both may hold it).
            let sent_first = fate.side() == from;
            let resent_here = fate.resent() && fate.side().other() == from;
            if !sent_first && !resent_here {
                continue;
            }
            // The same test `prune` applies at the front, applied to every entry: a settled
            // write behind one still in flight (which `prune` stops at) must not be listed
            // once it has left the window, or what a report lists would depend on the order
            // writes were sent in.
            let within = || {
                let settled = self.settled_at(fate).unwrap_or(entry.sent);
                self.within_window(now, settled)
            };
            let record = || self.record(entry, fate, from);
            match outcome {
                WriteOutcome::InFlight => unknown.push(record()),
                _ if !within() => {}
                WriteOutcome::Acknowledged => acknowledged.push(record()),
                // Acknowledged by the side it was re-sent to.
                WriteOutcome::ResentOnAlternate if resent_here => acknowledged.push(record()),
                _ => unknown.push(record()),
            }
        }
        let dropped = std::mem::take(&mut book.dropped);
        DataLossReport {
            from: from_endpoint,
            to: to_endpoint,
            at: SystemTime::now(),
            window: self.config.window,
            acknowledged,
            unknown,
            dropped,
        }
    }

    fn record(&self, entry: &Entry, fate: Fate, side: Side) -> WriteRecord {
        let path_and_query = entry.path.as_str();
        let path = if self.config.record_query {
            path_and_query
        } else {
            path_and_query.split('?').next().unwrap_or(path_and_query)
        };
        let path = if path.is_empty() { "/" } else { path }.to_string();
        let outcome = fate.outcome().unwrap_or(WriteOutcome::Unknown);
        let acknowledged = matches!(
            outcome,
            WriteOutcome::Acknowledged | WriteOutcome::ResentOnAlternate
        );
        WriteRecord {
            method: entry.method.clone(),
            path,
            key: entry.key.as_ref().map(|k| match k {
                Key::Header(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
                Key::App(s) => s.clone(),
            }),
            side,
            sent_at: self.wall_clock(entry.sent),
            acknowledged_at: self
                .settled_at(fate)
                .filter(|_| acknowledged)
                .map(|at| self.wall_clock(at)),
            outcome,
        }
    }

    /// How many writes the ledger holds now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.book().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        Endpoint::parse(s).unwrap()
    }

    /// A ledger that keeps `capacity` writes, otherwise as configured by default.
    impl Ledger {
        /// `begin`, with the side given.
        fn begin_to(
            &self,
            method: &Method,
            path: Option<&PathAndQuery>,
            headers: &HeaderMap,
            extensions: &http::Extensions,
            side: Side,
        ) -> WriteId {
            self.begin(method, path, headers, extensions, || Active {
                generation: 0,
                side,
            })
            .0
        }
    }

    fn holding(capacity: usize) -> Ledger {
        Ledger::new(LedgerConfig {
            capacity,
            ..LedgerConfig::default()
        })
    }

    #[test]
    fn report_lists_acknowledged_and_unknown_on_the_failed_side_only() {
        let ledger = Ledger::new(LedgerConfig::default());
        let h = HeaderMap::new();
        let x = http::Extensions::new();
        let pq: PathAndQuery = "/accounts?secret=1".parse().unwrap();
        let a = ledger.begin_to(&Method::POST, Some(&pq), &h, &x, Side::Primary);
        let b = ledger.begin_to(&Method::PATCH, Some(&pq), &h, &x, Side::Primary);
        let c = ledger.begin_to(&Method::POST, Some(&pq), &h, &x, Side::Alternate);
        let d = ledger.begin_to(&Method::DELETE, Some(&pq), &h, &x, Side::Primary);
        ledger.settle(a, WriteOutcome::Acknowledged);
        ledger.settle(c, WriteOutcome::Acknowledged);
        ledger.forget(d);
        let report = ledger.report(Side::Primary, ep("http://a.example"), ep("http://b.example"));
        assert_eq!(report.acknowledged.len(), 1);
        assert_eq!(report.acknowledged[0].method, Method::POST);
        assert_eq!(
            report.acknowledged[0].path, "/accounts",
            "query left out by default"
        );
        assert_eq!(report.unknown.len(), 1);
        assert_eq!(report.unknown[0].method, Method::PATCH);
        let _ = b;
    }

    #[test]
    fn a_late_settle_for_an_evicted_write_leaves_the_slots_next_write_alone() {
        let ledger = holding(2);
        let (h, x) = (HeaderMap::new(), http::Extensions::new());
        let slots = ledger.fates.len() as u64;
        assert_eq!(slots, MIN_SLOTS as u64);
        let first = ledger.begin_to(&Method::POST, None, &h, &x, Side::Primary);
        // Enough writes that the first one's slot is taken by a later one, still in flight.
        let mut last = first;
        for _ in 0..slots {
            last = ledger.begin_to(&Method::POST, None, &h, &x, Side::Primary);
        }
        assert_eq!(last.0 & ledger.mask, first.0 & ledger.mask, "same slot");
        ledger.settle(first, WriteOutcome::Acknowledged);
        ledger.moved(first, Side::Alternate);
        ledger.forget(first);
        let report = ledger.report(Side::Primary, ep("http://a.example"), ep("http://b.example"));
        assert_eq!(report.dropped, slots - 1, "all but the two kept");
        assert!(report.acknowledged.is_empty());
        assert_eq!(report.unknown.len(), 2, "both kept writes still in flight");
        assert!(report.unknown.iter().all(|w| w.outcome == WriteOutcome::InFlight));
    }

    /// What the concurrency tests do to write `n` of thread `t`: a side it moves to (or not)
    /// and an outcome, `None` for forgotten. Mixed so that neighbouring writes differ.
    fn planned(t: u64, n: u64) -> (Option<WriteOutcome>, Side) {
        let side = if (t + n) % 5 == 0 {
            Side::Alternate
        } else {
            Side::Primary
        };
        let outcome = match (t * 7 + n) % 3 {
            0 => Some(WriteOutcome::Acknowledged),
            1 => Some(WriteOutcome::Unknown),
            _ => None,
        };
        (outcome, side)
    }

    fn carry_out(ledger: &Ledger, id: WriteId, t: u64, n: u64) {
        let (outcome, side) = planned(t, n);
        if side == Side::Alternate {
            ledger.moved(id, side);
        }
        match outcome {
            Some(outcome) => ledger.settle(id, outcome),
            None => ledger.forget(id),
        }
    }

    fn keyed(t: u64, n: u64) -> http::Extensions {
        let mut x = http::Extensions::new();
        x.insert(WriteKey(format!("{t}-{n}")));
        x
    }

    /// Checks every reported write against what its call did; returns how many there were.
    fn check_reports(ledger: &Ledger) -> usize {
        let mut seen = 0;
        for side in [Side::Primary, Side::Alternate] {
            let report = ledger.report(side, ep("http://a.example"), ep("http://b.example"));
            for write in report.at_risk() {
                let key = write.key.as_deref().unwrap();
                let (t, n) = key.split_once('-').unwrap();
                let (outcome, planned_side) = planned(t.parse().unwrap(), n.parse().unwrap());
                assert_eq!(Some(write.outcome), outcome, "write {key}");
                assert_eq!(write.side, planned_side, "write {key}");
                seen += 1;
            }
        }
        seen
    }

    #[test]
    fn late_settles_racing_slot_reuse_never_change_another_write() {
        // Four threads each settle their writes 500 to 564 writes after sending them: about
        // as many writes as the ledger has slots (2,048 for 1,024 writes) have been sent by
        // then, so many late settles meet their slot just as a later write takes it. A settle
        // that landed on the later write, or a change that was not one atomic step, would
        // show up as a wrong outcome or side.
        for _round in 0..4 {
            let ledger = holding(1024);
            std::thread::scope(|scope| {
                for t in 0..4u64 {
                    let ledger = &ledger;
                    scope.spawn(move || {
                        let h = HeaderMap::new();
                        let mut held = VecDeque::new();
                        for n in 0..10_000u64 {
                            let id = ledger.begin_to(&Method::POST, None, &h, &keyed(t, n), Side::Primary);
                            held.push_back((id, n));
                            if held.len() > 500 + (n % 64) as usize {
                                let (id, n) = held.pop_front().unwrap();
                                carry_out(ledger, id, t, n);
                            }
                        }
                        for (id, n) in held {
                            carry_out(ledger, id, t, n);
                        }
                    });
                }
            });
            // And the capacity held throughout: late forgets for writes already pushed out
            // must not count as room.
            let seen = check_reports(&ledger);
            assert!(seen > 0 && seen <= 1024, "{seen} writes reported");
        }
    }

    #[test]
    fn a_write_sent_again_is_listed_off_the_sides_that_may_hold_it() {
        let ledger = holding(16);
        let (h, x) = (HeaderMap::new(), http::Extensions::new());
        let on = |side| move || Active { generation: 1, side };
        let listed = |ledger: &Ledger| {
            [Side::Primary, Side::Alternate].map(|side| {
                let report = ledger.report(side, ep("http://a.example"), ep("http://b.example"));
                report.at_risk().map(|w| w.outcome).collect::<Vec<_>>()
            })
        };
        let id = ledger.begin_to(&Method::POST, None, &h, &x, Side::Primary);
        ledger.settle(id, WriteOutcome::Unknown);
        // Calls left the alternate before the re-send was noted: not noted, not to be sent.
        assert!(!ledger.resend_to(id, Side::Alternate, on(Side::Primary)));
        // Its own side lists it whatever calls did meanwhile.
        assert!(ledger.resend_to(id, Side::Primary, on(Side::Alternate)));
        ledger.settle(id, WriteOutcome::Unknown);
        assert_eq!(listed(&ledger), [vec![WriteOutcome::Unknown], vec![]]);
        assert!(ledger.resend_to(id, Side::Alternate, on(Side::Alternate)));
        let in_flight = vec![WriteOutcome::InFlight];
        assert_eq!(listed(&ledger), [in_flight.clone(), in_flight.clone()]);
        // The alternate refused it; its own side is never cleared this way.
        ledger.not_applied_on(id, Side::Alternate);
        ledger.not_applied_on(id, Side::Primary);
        assert_eq!(listed(&ledger), [in_flight.clone(), vec![]]);
        // Sent again on its own side, it is not listed off the alternate again.
        assert!(ledger.resend_to(id, Side::Primary, on(Side::Primary)));
        ledger.settle(id, WriteOutcome::ResentOnAlternate);
        assert_eq!(listed(&ledger), [vec![WriteOutcome::ResentOnAlternate], vec![]]);
    }

    #[test]
    fn a_full_ledger_larger_than_the_minimum_slots_keeps_each_writes_fate() {
        let ledger = holding(3000);
        let h = HeaderMap::new();
        let ids: Vec<_> = (0..6000u64)
            .map(|n| ledger.begin_to(&Method::POST, None, &h, &keyed(0, n), Side::Primary))
            .collect();
        for n in 3000..6000u64 {
            carry_out(&ledger, ids[n as usize], 0, n);
        }
        let at_risk = (3000..6000u64).filter(|&n| planned(0, n).0.is_some()).count();
        assert_eq!(check_reports(&ledger), at_risk);
    }

    #[test]
    fn forgotten_writes_leave_room_for_writes_at_risk() {
        let ledger = holding(4);
        let (h, x) = (HeaderMap::new(), http::Extensions::new());
        let first = ledger.begin_to(&Method::POST, None, &h, &x, Side::Primary);
        ledger.settle(first, WriteOutcome::Acknowledged);
        for _ in 0..3 {
            // Refused (a 400, say): not at risk, and it takes no room.
            let id = ledger.begin_to(&Method::POST, None, &h, &x, Side::Primary);
            ledger.forget(id);
            // Forgotten is final: a later change does not bring it back.
            ledger.settle(id, WriteOutcome::Unknown);
        }
        let last = ledger.begin_to(&Method::POST, None, &h, &x, Side::Primary);
        ledger.settle(last, WriteOutcome::Acknowledged);
        let report = ledger.report(Side::Primary, ep("http://a.example"), ep("http://b.example"));
        assert_eq!(report.acknowledged.len(), 2);
        assert!(report.unknown.is_empty());
        assert_eq!(report.dropped, 0);
    }

    fn primary_report(ledger: &Ledger) -> DataLossReport {
        ledger.report(Side::Primary, ep("http://a.example"), ep("http://b.example"))
    }

    #[test]
    fn a_forget_for_a_write_already_pushed_out_gives_no_room() {
        let ledger = holding(4);
        let (h, x) = (HeaderMap::new(), http::Extensions::new());
        // An overload: a burst of writes, most pushed out while in flight, then refused.
        let burst: Vec<_> = (0..1000)
            .map(|_| ledger.begin_to(&Method::POST, None, &h, &x, Side::Primary))
            .collect();
        for id in burst {
            ledger.forget(id);
        }
        for _ in 0..100 {
            let id = ledger.begin_to(&Method::POST, None, &h, &x, Side::Primary);
            ledger.settle(id, WriteOutcome::Unknown);
        }
        assert_eq!(primary_report(&ledger).unknown.len(), 4);
        assert_eq!(ledger.len(), 4);
    }

    #[test]
    fn forgotten_writes_pushed_out_or_pruned_give_their_room_back_uncounted() {
        let (h, x) = (HeaderMap::new(), http::Extensions::new());
        let begin = |ledger: &Ledger| ledger.begin_to(&Method::POST, None, &h, &x, Side::Primary);
        // Pushed out from the front: a, then forgotten b (not counted), then c.
        let ledger = holding(2);
        begin(&ledger);
        let b = begin(&ledger);
        ledger.forget(b);
        for _ in 0..3 {
            begin(&ledger);
        }
        assert_eq!(primary_report(&ledger).dropped, 2);
        // Behind a write stuck in flight, forgotten writes wait in the spare slots; then they
        // are pushed out, uncounted, and never hold the book above its slots.
        let ledger = holding(4);
        begin(&ledger);
        for _ in 0..1100 {
            let id = begin(&ledger);
            ledger.forget(id);
        }
        assert!(ledger.len() <= ledger.fates.len());
        assert_eq!(primary_report(&ledger).dropped, 1);
        // With the stuck write at the front, ten forgotten writes wait behind it; the room
        // they take back lets four unknown ones stay. Without it, they are the front and leave
        // first.
        for stuck in [true, false] {
            let ledger = holding(4);
            if stuck {
                begin(&ledger);
            }
            for _ in 0..10 {
                let id = begin(&ledger);
                ledger.forget(id);
            }
            for _ in 0..10 {
                let id = begin(&ledger);
                ledger.settle(id, WriteOutcome::Unknown);
            }
            let report = primary_report(&ledger);
            assert_eq!(report.unknown.len(), 4);
            assert_eq!(report.dropped, if stuck { 7 } else { 6 });
        }
    }

    #[test]
    fn forgotten_writes_are_not_reported_nor_counted_as_dropped() {
        let ledger = holding(4);
        let (h, x) = (HeaderMap::new(), http::Extensions::new());
        let ids: Vec<_> = (0..4)
            .map(|_| ledger.begin_to(&Method::POST, None, &h, &x, Side::Primary))
            .collect();
        // Refused (say, a 400) in the middle: it keeps its place but is not at risk.
        ledger.forget(ids[1]);
        ledger.settle(ids[2], WriteOutcome::Acknowledged);
        ledger.settle(ids[3], WriteOutcome::Unknown);
        let report = ledger.report(Side::Primary, ep("http://a.example"), ep("http://b.example"));
        assert_eq!(report.acknowledged.len(), 1);
        assert_eq!(report.unknown.len(), 2, "in flight and unknown");
        // Two more writes: the first one is pushed out (counted); the forgotten one then leaves
        // from the front, uncounted.
        for _ in 0..2 {
            ledger.begin_to(&Method::POST, None, &h, &x, Side::Primary);
        }
        let report = ledger.report(Side::Primary, ep("http://a.example"), ep("http://b.example"));
        assert_eq!(report.dropped, 1);
        assert_eq!(ledger.len(), 4);
    }

    #[test]
    fn acknowledgement_times_round_up_and_moves_change_the_side() {
        let ledger = Ledger::new(LedgerConfig::default());
        let (h, x) = (HeaderMap::new(), http::Extensions::new());
        let id = ledger.begin_to(&Method::PUT, None, &h, &x, Side::Primary);
        ledger.moved(id, Side::Alternate);
        ledger.settle(id, WriteOutcome::Acknowledged);
        let report = ledger.report(Side::Alternate, ep("http://b.example"), ep("http://a.example"));
        let write = &report.acknowledged[0];
        assert_eq!(write.side, Side::Alternate);
        let (sent, acknowledged) = (write.sent_at, write.acknowledged_at.unwrap());
        assert!(acknowledged >= sent);
        assert!(acknowledged.duration_since(sent).unwrap() < Duration::from_millis(100));
        assert!(ledger
            .report(Side::Primary, ep("http://a.example"), ep("http://b.example"))
            .is_empty());
        // The packing itself: a step up, never down, and none for zero.
        let fate = Fate::sent(7, Side::Primary);
        assert_eq!(fate.settled(), None);
        assert_eq!(fate.with_settled(0).settled(), Some(0));
        assert_eq!(fate.with_settled(1).settled(), Some(1 << Fate::STEP_SHIFT));
        let late = fate.with_settled(u64::MAX);
        assert_eq!(late.lap(), 7, "a huge time does not spill into the lap");
        assert_eq!(late.code(), Fate::IN_FLIGHT);
    }

    #[test]
    fn short_and_long_paths_are_reported_as_sent() {
        let long = format!("/api/data/v9.2/accounts({})", "0".repeat(80));
        for record_query in [false, true] {
            let ledger = Ledger::new(LedgerConfig {
                record_query,
                ..LedgerConfig::default()
            });
            let (h, x) = (HeaderMap::new(), http::Extensions::new());
            for path in ["/accounts?$select=name", long.as_str(), "/"] {
                let pq: PathAndQuery = path.parse().unwrap();
                let id = ledger.begin_to(&Method::POST, Some(&pq), &h, &x, Side::Primary);
                ledger.settle(id, WriteOutcome::Acknowledged);
            }
            let id = ledger.begin_to(&Method::POST, None, &h, &x, Side::Primary);
            ledger.settle(id, WriteOutcome::Acknowledged);
            let report = ledger.report(Side::Primary, ep("http://a.example"), ep("http://b.example"));
            let paths: Vec<&str> = report.acknowledged.iter().map(|w| w.path.as_str()).collect();
            let first = if record_query {
                "/accounts?$select=name"
            } else {
                "/accounts"
            };
            assert_eq!(paths, [first, long.as_str(), "/", "/"]);
        }
    }

    #[test]
    fn a_write_prunes_what_left_the_window_only_once_something_can_have() {
        let ledger = Ledger::new(LedgerConfig {
            window: Duration::from_millis(30),
            ..LedgerConfig::default()
        });
        let (h, x) = (HeaderMap::new(), http::Extensions::new());
        for _ in 0..3 {
            let id = ledger.begin_to(&Method::POST, None, &h, &x, Side::Primary);
            ledger.settle(id, WriteOutcome::Acknowledged);
        }
        // Within the window nothing leaves, however many writes come.
        for _ in 0..5 {
            ledger.begin_to(&Method::POST, None, &h, &x, Side::Primary);
        }
        assert_eq!(ledger.len(), 8);
        std::thread::sleep(Duration::from_millis(30) + SLACK + Duration::from_millis(40));
        // The next write takes the three settled ones out; those in flight stay.
        ledger.begin_to(&Method::POST, None, &h, &x, Side::Primary);
        assert_eq!(ledger.len(), 6);
    }

    #[test]
    fn settled_writes_behind_one_in_flight_leave_the_report_with_the_window() {
        let ledger = Ledger::new(LedgerConfig {
            window: Duration::from_millis(30),
            ..LedgerConfig::default()
        });
        let (h, x) = (HeaderMap::new(), http::Extensions::new());
        let pq: PathAndQuery = "/slow".parse().unwrap();
        // Still in flight: it stays in the book, and every write behind it with it.
        let _slow = ledger.begin_to(&Method::POST, Some(&pq), &h, &x, Side::Primary);
        let failed = ledger.begin_to(&Method::PATCH, None, &h, &x, Side::Primary);
        ledger.settle(failed, WriteOutcome::Unknown);
        let applied = ledger.begin_to(&Method::PUT, None, &h, &x, Side::Primary);
        ledger.settle(applied, WriteOutcome::Acknowledged);
        let resent = ledger.begin_to(&Method::DELETE, None, &h, &x, Side::Primary);
        ledger.settle(resent, WriteOutcome::ResentOnAlternate);
        let report = ledger.report(Side::Primary, ep("http://a.example"), ep("http://b.example"));
        assert_eq!((report.acknowledged.len(), report.unknown.len()), (1, 3));
        std::thread::sleep(Duration::from_millis(30) + SLACK + Duration::from_millis(40));
        let report = ledger.report(Side::Primary, ep("http://a.example"), ep("http://b.example"));
        assert!(report.acknowledged.is_empty());
        assert_eq!(report.unknown.len(), 1, "{:?}", report.unknown);
        assert_eq!(report.unknown[0].path, "/slow");
        assert_eq!(report.unknown[0].outcome, WriteOutcome::InFlight);
        assert_eq!(ledger.len(), 4, "the book keeps them until the front leaves");
    }

    #[test]
    fn capacity_and_window_bound_the_ledger() {
        let ledger = Ledger::new(LedgerConfig {
            capacity: 5,
            window: Duration::from_millis(50),
            ..LedgerConfig::default()
        });
        let h = HeaderMap::new();
        let x = http::Extensions::new();
        for _ in 0..12 {
            let id = ledger.begin_to(&Method::POST, None, &h, &x, Side::Primary);
            ledger.settle(id, WriteOutcome::Acknowledged);
        }
        assert!(ledger.len() <= 5);
        let report = ledger.report(Side::Primary, ep("http://a.example"), ep("http://b.example"));
        assert_eq!(report.dropped, 7);
        assert_eq!(report.acknowledged.len(), 5);
        // The window, its slack for the coarse clock, and a tick of margin.
        std::thread::sleep(Duration::from_millis(50) + SLACK + Duration::from_millis(40));
        let report = ledger.report(Side::Primary, ep("http://a.example"), ep("http://b.example"));
        assert_eq!(report.acknowledged.len(), 0, "outside the window");
        assert_eq!(report.dropped, 0, "counted once");
        assert_eq!(ledger.len(), 0);
    }
}
