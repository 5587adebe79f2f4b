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
//! Reads cost nothing here. A write costs one small record (its method, path, key, times and
//! outcome: no body), one short lock to add it and one to settle it.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use http::header::HeaderName;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method};

use crate::coarse_clock::{Tick, SLACK};
use crate::endpoint::{Endpoint, Side};

/// The default replication window: acknowledged writes younger than this are reported.
pub const DEFAULT_REPLICATION_WINDOW: Duration = Duration::from_secs(5 * 60);
/// The default number of writes the ledger keeps.
pub const DEFAULT_LEDGER_CAPACITY: usize = 10_000;

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
    /// The request's key: the configured header, or a [`WriteKey`] from its extensions.
    pub key: Option<String>,
    /// The side that may hold it: where it was sent first, unless that attempt provably was not
    /// processed (refused at connect, say) and the write was re-sent on the other side.
    pub side: Side,
    /// When it was sent (to the ledger clock's step of 1–10 ms: see the crate's README).
    pub sent_at: SystemTime,
    /// When it was acknowledged, if it was (to the same step).
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
    /// Writes `from` acknowledged within the window: `to` may not have them yet.
    pub acknowledged: Vec<WriteRecord>,
    /// Writes sent to `from` whose outcome is unknown (in flight, or failed after sending,
    /// including those then re-sent on `to`): `from` may or may not have applied them.
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

struct Entry {
    id: u64,
    method: Method,
    // The query is cut off only when a report is made.
    path: KeptPath,
    key: Option<Key>,
    side: Side,
    // Coarse readings (see `coarse_clock`): two per write, so they must be cheap.
    sent: Tick,
    acknowledged: Option<Tick>,
    outcome: WriteOutcome,
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
    next_id: u64,
    dropped: u64,
}

impl Book {
    /// Where the write `id` is, if the ledger still holds it. Ids are handed out in order and
    /// entries mostly leave from the front, so a write usually sits exactly `id - front` from
    /// the front: one probe, rather than a bisection that touches cold entries all over a
    /// large ledger. Only `forget` leaves gaps; then the entry is found by bisection (ids grow
    /// with position).
    fn position(&self, id: WriteId) -> Option<usize> {
        let front = self.entries.front()?.id;
        let guess = usize::try_from(id.0.checked_sub(front)?).ok()?;
        if self.entries.get(guess).is_some_and(|e| e.id == id.0) {
            return Some(guess);
        }
        self.entries.binary_search_by_key(&id.0, |e| e.id).ok()
    }
}

pub(crate) struct Ledger {
    // One clock reading pair; wall-clock times in reports are derived from it.
    anchor: (Tick, SystemTime),
    config: LedgerConfig,
    book: Mutex<Book>,
}

/// A write's place in the ledger, held by the call until it settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriteId(u64);

impl Ledger {
    pub(crate) fn new(config: LedgerConfig) -> Self {
        Ledger {
            anchor: (Tick::now(), SystemTime::now()),
            config,
            book: Mutex::new(Book {
                entries: VecDeque::new(),
                next_id: 0,
                dropped: 0,
            }),
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
        now.saturating_since(at) <= self.config.window.saturating_add(SLACK)
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a write as it is sent.
    pub(crate) fn begin(
        &self,
        method: &Method,
        path: Option<&PathAndQuery>,
        headers: &HeaderMap,
        extensions: &http::Extensions,
        side: Side,
    ) -> WriteId {
        let key = self
            .config
            .key_header
            .as_ref()
            .and_then(|name| headers.get(name))
            .map(|v| Key::Header(v.clone()))
            .or_else(|| extensions.get::<WriteKey>().map(|k| Key::App(k.0.clone())));
        let now = Tick::now();
        let mut book = self.book();
        self.prune(&mut book, now);
        // Make room for this one: the oldest goes first, counted. It is dropped after the lock
        // is released: dropping it may free the old request's buffers, cold in the cache, and
        // other calls wait on this lock.
        let mut evicted = None;
        while book.entries.len() >= self.config.capacity.max(1) {
            evicted = book.entries.pop_front();
            book.dropped += 1;
        }
        let id = book.next_id;
        book.next_id += 1;
        book.entries.push_back(Entry {
            id,
            method: method.clone(),
            path: KeptPath::of(path),
            key,
            side,
            sent: now,
            acknowledged: None,
            outcome: WriteOutcome::InFlight,
        });
        drop(book);
        drop(evicted);
        WriteId(id)
    }

    /// Settles a write. `side` is where it was last sent.
    pub(crate) fn settle(&self, id: WriteId, outcome: WriteOutcome) {
        let mut book = self.book();
        if let Some(i) = book.position(id) {
            let entry = &mut book.entries[i];
            entry.outcome = outcome;
            if outcome == WriteOutcome::Acknowledged || outcome == WriteOutcome::ResentOnAlternate {
                entry.acknowledged = Some(Tick::now());
            }
        }
    }

    /// Notes that a write that provably never reached `side`'s predecessor is now sent to `side`.
    pub(crate) fn moved(&self, id: WriteId, side: Side) {
        let mut book = self.book();
        if let Some(i) = book.position(id) {
            book.entries[i].side = side;
        }
    }

    /// Forgets a write that provably never left the client (it cannot be at risk).
    pub(crate) fn forget(&self, id: WriteId) {
        let mut book = self.book();
        if let Some(i) = book.position(id) {
            book.entries.remove(i);
        }
    }

    /// Drops settled entries older than the window.
    fn prune(&self, book: &mut Book, now: Tick) {
        while let Some(front) = book.entries.front() {
            let expired = front.outcome != WriteOutcome::InFlight
                && !self.within_window(now, front.acknowledged.unwrap_or(front.sent));
            if expired {
                book.entries.pop_front();
            } else {
                break;
            }
        }
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
        for entry in book.entries.iter().filter(|e| e.side == from) {
            match entry.outcome {
                WriteOutcome::Acknowledged => {
                    let within = entry.acknowledged.is_some_and(|at| self.within_window(now, at));
                    if within {
                        acknowledged.push(self.record(entry));
                    }
                }
                WriteOutcome::InFlight | WriteOutcome::Unknown | WriteOutcome::ResentOnAlternate => {
                    unknown.push(self.record(entry))
                }
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

    fn record(&self, entry: &Entry) -> WriteRecord {
        let path_and_query = entry.path.as_str();
        let path = if self.config.record_query {
            path_and_query
        } else {
            path_and_query.split('?').next().unwrap_or(path_and_query)
        };
        let path = if path.is_empty() { "/" } else { path }.to_string();
        WriteRecord {
            method: entry.method.clone(),
            path,
            key: entry.key.as_ref().map(|k| match k {
                Key::Header(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
                Key::App(s) => s.clone(),
            }),
            side: entry.side,
            sent_at: self.wall_clock(entry.sent),
            acknowledged_at: entry.acknowledged.map(|at| self.wall_clock(at)),
            outcome: entry.outcome,
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

    #[test]
    fn report_lists_acknowledged_and_unknown_on_the_failed_side_only() {
        let ledger = Ledger::new(LedgerConfig::default());
        let h = HeaderMap::new();
        let x = http::Extensions::new();
        let pq: PathAndQuery = "/accounts?secret=1".parse().unwrap();
        let a = ledger.begin(&Method::POST, Some(&pq), &h, &x, Side::Primary);
        let b = ledger.begin(&Method::PATCH, Some(&pq), &h, &x, Side::Primary);
        let c = ledger.begin(&Method::POST, Some(&pq), &h, &x, Side::Alternate);
        let d = ledger.begin(&Method::DELETE, Some(&pq), &h, &x, Side::Primary);
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
    fn writes_are_found_after_evictions_and_gaps() {
        let ledger = Ledger::new(LedgerConfig {
            capacity: 8,
            ..LedgerConfig::default()
        });
        let h = HeaderMap::new();
        let x = http::Extensions::new();
        let ids: Vec<_> = (0..12)
            .map(|_| ledger.begin(&Method::POST, None, &h, &x, Side::Primary))
            .collect();
        // The first four were evicted; forgetting two more leaves gaps.
        ledger.forget(ids[5]);
        ledger.forget(ids[7]);
        {
            let book = ledger.book();
            for (k, id) in ids.iter().enumerate() {
                let found = book.position(*id).map(|i| book.entries[i].id);
                let expected = (k >= 4 && k != 5 && k != 7).then_some(id.0);
                assert_eq!(found, expected, "write {k}");
            }
        }
        for &id in &ids {
            ledger.settle(id, WriteOutcome::Acknowledged);
        }
        let report = ledger.report(Side::Primary, ep("http://a.example"), ep("http://b.example"));
        assert_eq!(report.acknowledged.len(), 6);
        assert!(report.unknown.is_empty());
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
                let id = ledger.begin(&Method::POST, Some(&pq), &h, &x, Side::Primary);
                ledger.settle(id, WriteOutcome::Acknowledged);
            }
            let id = ledger.begin(&Method::POST, None, &h, &x, Side::Primary);
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
    fn capacity_and_window_bound_the_ledger() {
        let ledger = Ledger::new(LedgerConfig {
            capacity: 5,
            window: Duration::from_millis(50),
            ..LedgerConfig::default()
        });
        let h = HeaderMap::new();
        let x = http::Extensions::new();
        for _ in 0..12 {
            let id = ledger.begin(&Method::POST, None, &h, &x, Side::Primary);
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
