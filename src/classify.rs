//! Deciding whether an attempt means "the endpoint is down": the [`Classifier`] trait, its
//! [`Verdict`], and the [`DefaultClassifier`] that knows the Dynamics 365 failover signals.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::header::RETRY_AFTER;
use http::{HeaderMap, StatusCode};

use crate::throttle::{is_service_protection_code, parse_retry_after};

/// The Dynamics 365 fault code that means "the organization is failing over":
/// `0x8004B065`, `-2147176347` as a signed 32-bit value.
pub const FAILOVER_FAULT_CODE: i64 = -2147176347;

/// How an endpoint was found to be down.
///
/// Only [`DownKind::NotFound`] (the request never left the client) and [`DownKind::Refused`]
/// (the server refused it unprocessed) prove it was not applied; every other kind means the
/// server may have applied it, and decides whether a write may be sent again.
///
/// ```
/// use std::io;
/// use tower_failover::{classify_error, DownKind};
///
/// let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
/// let kind = classify_error(&refused).unwrap();
/// assert_eq!(kind, DownKind::NotFound);
/// // Refused at connect: nothing was sent, so even a POST may go to the other endpoint.
/// assert!(!kind.request_may_have_been_sent());
///
/// let reset = io::Error::from(io::ErrorKind::ConnectionReset);
/// let kind = classify_error(&reset).unwrap();
/// assert_eq!(kind, DownKind::ConnectionLost);
/// assert!(kind.request_may_have_been_sent());
/// assert_eq!(kind.to_string(), "connection lost");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DownKind {
    /// The endpoint could not be reached: connect refused, DNS failure, no route, or a
    /// connection closed before the request was written (hyper hands it back unsent). The
    /// request never left the client.
    NotFound,
    /// The connection broke after the request may have been sent (reset, closed before the
    /// response, a response that is not HTTP).
    ConnectionLost,
    /// The endpoint refused the request before processing any of it: HTTP/2 `REFUSED_STREAM`,
    /// or a `GOAWAY` whose last stream id is below the request's stream. It reached the server
    /// but provably was not applied, so it may be sent again whatever its method.
    Refused,
    /// The attempt timed out.
    Timeout,
    /// The service answered with a failover fault code.
    ServiceFault {
        /// The code as a signed 32-bit value.
        code: i64,
    },
    /// The service or a gateway answered 502, 503 or 504.
    Unavailable {
        /// The status.
        status: StatusCode,
    },
}

impl DownKind {
    /// False only when the failure proves the request was not processed (it never left the
    /// client, or the server refused it unprocessed), so it cannot have been applied and may be
    /// sent again whatever its method.
    pub fn request_may_have_been_sent(&self) -> bool {
        !matches!(self, DownKind::NotFound | DownKind::Refused)
    }
}

impl fmt::Display for DownKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DownKind::NotFound => f.write_str("endpoint not found"),
            DownKind::ConnectionLost => f.write_str("connection lost"),
            DownKind::Refused => f.write_str("refused before processing"),
            DownKind::Timeout => f.write_str("timeout"),
            DownKind::ServiceFault { code } => write!(f, "service fault {code}"),
            DownKind::Unavailable { status } => write!(f, "unavailable {}", status.as_u16()),
        }
    }
}

/// A classifier's judgement of one attempt.
///
/// ```
/// use std::time::Duration;
/// use http::{HeaderMap, StatusCode};
/// use tower_failover::{Classifier, DefaultClassifier, DownKind, Outcome, Verdict};
///
/// let classifier = DefaultClassifier::new();
/// let judge = |status: StatusCode, headers: &HeaderMap| {
///     classifier.classify(Outcome::Response { status, headers, body: None })
/// };
/// let none = HeaderMap::new();
/// assert_eq!(judge(StatusCode::OK, &none), Verdict::Success);
/// // The caller's mistake, not an outage: handed back, no switch.
/// assert_eq!(judge(StatusCode::NOT_FOUND, &none), Verdict::Fail);
/// assert_eq!(
///     judge(StatusCode::BAD_GATEWAY, &none),
///     Verdict::EndpointDown(DownKind::Unavailable { status: StatusCode::BAD_GATEWAY })
/// );
///
/// // A 503 that says when to come back is throttling: retried on the same endpoint.
/// let mut slow_down = HeaderMap::new();
/// slow_down.insert("retry-after", "2".parse().unwrap());
/// assert_eq!(
///     judge(StatusCode::SERVICE_UNAVAILABLE, &slow_down),
///     Verdict::Throttled { retry_after: Some(Duration::from_secs(2)) }
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Hand the response (or error) to the caller as it is.
    Success,
    /// The endpoint is down: switch to the other one and re-send if allowed.
    EndpointDown(DownKind),
    /// A failure, but not an outage: hand it back as it is, no switch.
    Fail,
    /// The service is up but asks the client to slow down (429, or 503 with `Retry-After`,
    /// or a service-protection fault code): retry on the same endpoint after the delay, never
    /// switch.
    Throttled {
        /// The server's `Retry-After`, when it gave a usable one.
        retry_after: Option<Duration>,
    },
}

/// What a classifier looks at: a response head (with its body when the classifier asked to
/// peek at it), or the inner service's error.
///
/// ```
/// use std::io;
/// use tower_failover::{Classifier, DefaultClassifier, DownKind, Outcome, Verdict};
///
/// // Also fail over when the gateway in front of the endpoint says it is in maintenance;
/// // leave the rest to the default.
/// let classifier = |outcome: Outcome<'_>| match outcome {
///     Outcome::Response { status, headers, .. } if headers.contains_key("x-maintenance") => {
///         Verdict::EndpointDown(DownKind::Unavailable { status })
///     }
///     other => DefaultClassifier::new().classify(other),
/// };
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("x-maintenance", "until 02:30".parse().unwrap());
/// let verdict = classifier.classify(Outcome::Response {
///     status: http::StatusCode::OK,
///     headers: &headers,
///     body: None,
/// });
/// assert!(matches!(verdict, Verdict::EndpointDown(_)));
///
/// // An error comes with its whole `source()` chain.
/// let timed_out = io::Error::from(io::ErrorKind::TimedOut);
/// assert_eq!(classifier.classify(Outcome::Error(&timed_out)), Verdict::EndpointDown(DownKind::Timeout));
/// ```
#[derive(Clone, Copy)]
pub enum Outcome<'a> {
    /// The inner service answered.
    Response {
        /// The status.
        status: StatusCode,
        /// The headers.
        headers: &'a HeaderMap,
        /// The whole body, when [`Classifier::peek_limit`] asked for it and the body fitted.
        body: Option<&'a Bytes>,
    },
    /// The inner service failed. Walk `source()` for the whole chain.
    Error(&'a (dyn StdError + 'static)),
}

impl fmt::Debug for Outcome<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Response { status, body, .. } => f
                .debug_struct("Response")
                .field("status", status)
                .field("body_len", &body.map(|b| b.len()))
                .finish(),
            Outcome::Error(e) => f.debug_tuple("Error").field(&e.to_string()).finish(),
        }
    }
}

/// Judges attempts. Implement it, or pass a closure `Fn(Outcome<'_>) -> Verdict`.
///
/// ```
/// use tower_failover::{Classifier, DefaultClassifier, DownKind, Outcome, Verdict};
///
/// // Treat 500 as an outage too, and defer to the default for the rest.
/// let classifier = |outcome: Outcome<'_>| match outcome {
///     Outcome::Response { status, .. } if status == 500 => Verdict::EndpointDown(DownKind::Unavailable { status }),
///     other => DefaultClassifier::new().classify(other),
/// };
/// let headers = http::HeaderMap::new();
/// let verdict = classifier.classify(Outcome::Response { status: http::StatusCode::INTERNAL_SERVER_ERROR, headers: &headers, body: None });
/// assert!(matches!(verdict, Verdict::EndpointDown(_)));
/// ```
pub trait Classifier {
    /// Judges one attempt.
    fn classify(&self, outcome: Outcome<'_>) -> Verdict;

    /// How long a peek may wait for the body (default 2 s). A server that sends an error head
    /// and then stalls would otherwise hold the call; past this the response is judged by its
    /// head alone and handed back with every byte, read or not.
    fn peek_timeout(&self) -> Duration {
        Duration::from_secs(2)
    }

    /// How many bytes of this response's body to read before judging it; `0` (the default)
    /// judges on the head alone. Any other value makes the layer read the body until it ends
    /// or holds more than this; [`Outcome::Response`] carries it only when it was read whole.
    /// The caller gets every byte either way. Reading waits for the body, so ask only for
    /// small bodies that matter (the default classifier asks only when the declared
    /// `Content-Length` is within its limit).
    fn peek_limit(&self, status: StatusCode, headers: &HeaderMap) -> usize {
        let _ = (status, headers);
        0
    }
}

impl<F> Classifier for F
where
    F: Fn(Outcome<'_>) -> Verdict,
{
    fn classify(&self, outcome: Outcome<'_>) -> Verdict {
        self(outcome)
    }
}

/// The default classifier: the Dynamics 365 SDK's failover triggers, for any HTTP API.
///
/// * connect and DNS failures (hyper-util's `is_connect`, `ConnectionRefused` and friends),
///   and requests hyper cancelled unwritten (`is_canceled`: the connection closed first):
///   [`DownKind::NotFound`];
/// * `tower::timeout::error::Elapsed`, `io::ErrorKind::TimedOut`, hyper timeouts:
///   [`DownKind::Timeout`];
/// * resets, connections closed before the response, and malformed HTTP/1 responses (hyper's
///   `is_parse`): [`DownKind::ConnectionLost`];
/// * HTTP/2 (feature `h2`, on by default): `RST_STREAM(REFUSED_STREAM)`, or a `GOAWAY` whose
///   last stream id is below the request's stream, [`DownKind::Refused`] (not processed, so
///   re-sent whatever the method); any other stream reset: [`DownKind::ConnectionLost`];
/// * 502, 503, 504: [`DownKind::Unavailable`];
/// * any other 5xx (a 500, say) whose small JSON body is `{"error":{"code":"0x8004B065"}}`
///   (hex or decimal `-2147176347`), or whose SOAP fault has that `<ErrorCode>` (the
///   Organization service): [`DownKind::ServiceFault`]; other 5xx are
///   [`Verdict::Fail`];
/// * 429, 503 with `Retry-After`, and an error body with a service-protection code
///   (`0x80072322`, `0x80072321`, `0x80072326`, hex or decimal): [`Verdict::Throttled`],
///   retried on the same endpoint, never a switch;
/// * every other 4xx: [`Verdict::Fail`], never a switch.
///
/// Bodies are read only when their declared `Content-Length` is within the peek limit
/// (16 KiB by default), so a chunked error body is judged on its status alone.
///
/// ```
/// use tower_failover::{Classifier, DefaultClassifier, DownKind, Outcome, Verdict};
///
/// let headers = http::HeaderMap::new();
/// let body = bytes::Bytes::from_static(br#"{"error":{"code":"0x8004B065","message":"failing over"}}"#);
/// let verdict = DefaultClassifier::new().classify(Outcome::Response {
///     status: http::StatusCode::INTERNAL_SERVER_ERROR,
///     headers: &headers,
///     body: Some(&body),
/// });
/// assert_eq!(verdict, Verdict::EndpointDown(DownKind::ServiceFault { code: -2147176347 }));
/// ```
// `Copy`, and so free to hand to every call: a classifier with a list behind an `Arc` would
// put a shared reference count on every call's path.
#[derive(Debug, Clone, Copy)]
pub struct DefaultClassifier {
    peek_limit: usize,
}

impl Default for DefaultClassifier {
    fn default() -> Self {
        DefaultClassifier {
            peek_limit: 16 * 1024,
        }
    }
}

impl DefaultClassifier {
    /// The default classifier, peeking at error bodies of up to 16 KiB.
    pub fn new() -> Self {
        Self::default()
    }

    /// The largest declared error body to read for a fault code; `0` turns peeking off.
    pub fn peek_limit(mut self, bytes: usize) -> Self {
        self.peek_limit = bytes;
        self
    }

    fn classify_status(&self, status: StatusCode, headers: &HeaderMap, body: Option<&Bytes>) -> Verdict {
        let code = body.and_then(|b| fault_code(b));
        let throttled = || Verdict::Throttled {
            retry_after: parse_retry_after(headers, SystemTime::now()),
        };
        if status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::SERVICE_UNAVAILABLE && headers.contains_key(RETRY_AFTER))
            || (status.as_u16() >= 400 && code.is_some_and(is_service_protection_code))
        {
            return throttled();
        }
        match status.as_u16() {
            502..=504 => Verdict::EndpointDown(DownKind::Unavailable { status }),
            500..=599 => match code {
                Some(FAILOVER_FAULT_CODE) => Verdict::EndpointDown(DownKind::ServiceFault {
                    code: FAILOVER_FAULT_CODE,
                }),
                _ => Verdict::Fail,
            },
            // The other 4xx are the caller's mistakes: the endpoint is up.
            400..=499 => Verdict::Fail,
            _ => Verdict::Success,
        }
    }
}

impl Classifier for DefaultClassifier {
    fn classify(&self, outcome: Outcome<'_>) -> Verdict {
        match outcome {
            Outcome::Response {
                status,
                headers,
                body,
            } => self.classify_status(status, headers, body),
            Outcome::Error(error) => match classify_error(error) {
                Some(kind) => Verdict::EndpointDown(kind),
                None => Verdict::Fail,
            },
        }
    }

    fn peek_limit(&self, status: StatusCode, headers: &HeaderMap) -> usize {
        // Only these can be changed by a fault code in the body: a 5xx that is not an outage
        // by its status alone (500, 503 without Retry-After: failover or service-protection
        // code), and a 4xx other than 429 (service-protection code).
        let decided_by_head = status.as_u16() == 502
            || status.as_u16() == 504
            || status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::SERVICE_UNAVAILABLE && headers.contains_key(RETRY_AFTER));
        if status.as_u16() < 400 || decided_by_head {
            return 0;
        }
        match declared_length(headers) {
            Some(len) if len <= self.peek_limit as u64 => self.peek_limit,
            _ => 0,
        }
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Reads `{"error":{"code":...}}` (the Web API) or the first `<ErrorCode>` element of a SOAP
/// `OrganizationServiceFault` (the Organization service, any namespace prefix) and returns the
/// code as a signed 32-bit value. Codes come as `"0x8004B065"`, `"-2147176347"`, or a JSON
/// number.
///
/// ```
/// use tower_failover::{fault_code, FAILOVER_FAULT_CODE};
///
/// let body = br#"{"error":{"code":"0x8004B065","message":"The organization is failing over"}}"#;
/// assert_eq!(fault_code(body), Some(FAILOVER_FAULT_CODE));
/// assert_eq!(fault_code(br#"{"error":{"code":-2147176347}}"#), Some(FAILOVER_FAULT_CODE));
/// assert_eq!(fault_code(b"<html>Bad Gateway</html>"), None);
/// let soap = b"<s:Fault><detail><OrganizationServiceFault><ErrorCode>-2147176347</ErrorCode>\
///     </OrganizationServiceFault></detail></s:Fault>";
/// assert_eq!(fault_code(soap), Some(FAILOVER_FAULT_CODE));
/// ```
pub fn fault_code(body: &[u8]) -> Option<i64> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return soap_fault_code(body);
    };
    let code = value.get("error")?.get("code")?;
    match code {
        serde_json::Value::String(s) => parse_code(s),
        serde_json::Value::Number(n) => n.as_i64().and_then(to_signed32),
        _ => None,
    }
}

/// The first `ErrorCode` element of a SOAP fault, `<ErrorCode>` or `<prefix:ErrorCode>`: the
/// outer fault's, since an `OrganizationServiceFault` writes its `ErrorCode` before its
/// `InnerFault`.
fn soap_fault_code(body: &[u8]) -> Option<i64> {
    const NAME: &str = "ErrorCode>";
    let text = std::str::from_utf8(body).ok()?;
    let mut from = 0;
    while let Some(found) = text[from..].find(NAME) {
        let at = from + found;
        from = at + NAME.len();
        let Some(open) = text[..at].rfind('<') else {
            continue;
        };
        let prefix = &text[open + 1..at];
        let opening = prefix.is_empty()
            || prefix.strip_suffix(':').is_some_and(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            });
        if opening {
            let value = &text[from..];
            return parse_code(&value[..value.find('<')?]);
        }
    }
    None
}

/// Parses a Dynamics error code in hex (`0x8004B065`) or decimal (`-2147176347`,
/// `2147790949`) and returns it as a signed 32-bit value.
///
/// ```
/// use tower_failover::{parse_code, FAILOVER_FAULT_CODE};
///
/// assert_eq!(parse_code("0x8004B065"), Some(FAILOVER_FAULT_CODE));
/// assert_eq!(parse_code("2147790949"), Some(FAILOVER_FAULT_CODE)); // the same bits, unsigned
/// assert_eq!(parse_code("0x1_0000_0000"), None);
/// ```
pub fn parse_code(text: &str) -> Option<i64> {
    let text = text.trim();
    let value = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => i64::from_str_radix(hex, 16).ok()?,
        None => text.parse::<i64>().ok()?,
    };
    to_signed32(value)
}

/// A code as Dynamics writes it, signed (`-2147176347`) or unsigned (`2147790949`), as the
/// signed 32-bit value; none outside 32 bits, which is no Dynamics code.
fn to_signed32(value: i64) -> Option<i64> {
    (i32::MIN as i64..=u32::MAX as i64)
        .contains(&value)
        .then_some(value as u32 as i32 as i64)
}

/// Walks an error's `source()` chain and says which outage it shows, if any.
///
/// Failures that prove the request was not processed (connect-phase failures, HTTP/2
/// refusals) win over the others. A machine out of file descriptors, memory or local ports
/// anywhere in the chain is not an outage (the alternate would need them too): `None`.
///
/// ```
/// use std::io;
/// use tower_failover::{classify_error, DownKind};
///
/// assert_eq!(classify_error(&io::Error::from(io::ErrorKind::TimedOut)), Some(DownKind::Timeout));
/// assert_eq!(classify_error(&tower::timeout::error::Elapsed::new()), Some(DownKind::Timeout));
/// assert_eq!(classify_error(&io::Error::other("bad certificate")), None);
/// ```
pub fn classify_error(error: &(dyn StdError + 'static)) -> Option<DownKind> {
    let mut found: Option<DownKind> = None;
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    let mut chain = Some(error);
    while let Some(err) = chain {
        if err.downcast_ref::<io::Error>().is_some_and(is_local_exhaustion) {
            return None;
        }
        // hyper's "user" errors are this side's: the caller's request body failed, the request
        // was malformed, the runtime dropped the connection task. The errors below them (the
        // body's own `io::Error`, say) must not be read as the endpoint's.
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_user)
        {
            return None;
        }
        chain = err.source();
    }
    while let Some(err) = current {
        if let Some(kind) = classify_one(err) {
            if !kind.request_may_have_been_sent() {
                return Some(kind);
            }
            found.get_or_insert(kind);
        }
        current = err.source();
    }
    found
}

fn classify_one(err: &(dyn StdError + 'static)) -> Option<DownKind> {
    #[cfg(feature = "hyper-util")]
    if let Some(e) = err.downcast_ref::<hyper_util::client::legacy::Error>() {
        if e.is_connect() {
            return Some(DownKind::NotFound);
        }
    }
    #[cfg(feature = "reqwest")]
    if let Some(e) = err.downcast_ref::<reqwest::Error>() {
        if e.is_connect() {
            return Some(DownKind::NotFound);
        }
        if e.is_timeout() {
            return Some(DownKind::Timeout);
        }
    }
    if err.is::<tower::timeout::error::Elapsed>() {
        return Some(DownKind::Timeout);
    }
    if let Some(e) = err.downcast_ref::<hyper::Error>() {
        // hyper cancels a request only before writing any of it (the connection closed or was
        // not ready first) and hands it back unsent: it never left the client.
        if e.is_canceled() {
            return Some(DownKind::NotFound);
        }
        if e.is_timeout() {
            return Some(DownKind::Timeout);
        }
        // A response that is not HTTP/1 breaks the protocol, as an HTTP/2 protocol error does:
        // the server may have processed the request.
        if e.is_incomplete_message() || e.is_closed() || e.is_parse() {
            return Some(DownKind::ConnectionLost);
        }
    }
    #[cfg(feature = "h2")]
    if let Some(e) = err.downcast_ref::<h2::Error>() {
        return classify_h2(e);
    }
    if let Some(e) = err.downcast_ref::<io::Error>() {
        return classify_io(e);
    }
    None
}

/// An HTTP/2 stream or connection error (hyper keeps the `h2::Error` in its source chain; I/O
/// errors reach the classifier as `io::Error`).
///
/// * `RST_STREAM(REFUSED_STREAM)` from the server: "refused before any application processing"
///   (RFC 9113 §8.7), so [`DownKind::Refused`].
/// * A `GOAWAY` from the server that ends this stream: h2 ends that way only the streams above
///   the frame's last stream id, which the server did not process (RFC 9113 §6.8), so
///   [`DownKind::Refused`] too, whatever the GOAWAY's error code.
/// * Any other reset or GOAWAY from the server (`INTERNAL_ERROR`, `CANCEL`, ...), or one h2
///   raised on a protocol error from it: the stream broke after it may have been processed, as
///   a reset connection does over HTTP/1, so [`DownKind::ConnectionLost`].
/// * A reset this client made itself (its request body failed, say): not the endpoint's doing.
#[cfg(feature = "h2")]
fn classify_h2(error: &h2::Error) -> Option<DownKind> {
    if error.is_remote()
        && ((error.is_reset() && error.reason() == Some(h2::Reason::REFUSED_STREAM)) || error.is_go_away())
    {
        return Some(DownKind::Refused);
    }
    if (error.is_remote() || error.is_library()) && (error.is_reset() || error.is_go_away()) {
        return Some(DownKind::ConnectionLost);
    }
    None
}

/// Failures of this machine, not of the endpoint: out of file descriptors, memory, or local
/// ports. Switching would not help (the alternate needs them too), and a call already on the
/// alternate would switch the pair back to a primary that is down.
fn is_local_exhaustion(e: &io::Error) -> bool {
    // EMFILE, ENFILE (Linux and the BSDs), ENOBUFS (Linux 105, BSDs 55), ENOMEM.
    const LOCAL: [i32; 5] = [24, 23, 105, 55, 12];
    e.kind() == io::ErrorKind::AddrNotAvailable
        || e.kind() == io::ErrorKind::OutOfMemory
        || (cfg!(unix) && e.raw_os_error().is_some_and(|code| LOCAL.contains(&code)))
}

fn classify_io(error: &io::Error) -> Option<DownKind> {
    use io::ErrorKind::*;
    match error.kind() {
        ConnectionRefused | NotFound | HostUnreachable | NetworkUnreachable => Some(DownKind::NotFound),
        TimedOut => Some(DownKind::Timeout),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected => {
            Some(DownKind::ConnectionLost)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    /// An error whose source is `E`, as hyper and hyper-util put the cause under their own
    /// error.
    #[derive(Debug)]
    pub(super) struct Wrap<E>(pub(super) E);

    impl<E> fmt::Display for Wrap<E> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }

    impl<E: StdError + 'static> StdError for Wrap<E> {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    use super::*;

    #[test]
    fn codes_in_hex_and_decimal() {
        assert_eq!(parse_code("0x8004B065"), Some(FAILOVER_FAULT_CODE));
        assert_eq!(parse_code("0x8004b065"), Some(FAILOVER_FAULT_CODE));
        assert_eq!(parse_code("-2147176347"), Some(FAILOVER_FAULT_CODE));
        assert_eq!(parse_code("2147790949"), Some(FAILOVER_FAULT_CODE));
        assert_eq!(parse_code("banana"), None);
        assert_eq!(parse_code("0x1_0000_0000"), None);
        assert_eq!(
            fault_code(br#"{"error":{"code":-2147176347}}"#),
            Some(FAILOVER_FAULT_CODE)
        );
        assert_eq!(
            fault_code(br#"{"error":{"code":"0x8004B065"}}"#),
            Some(FAILOVER_FAULT_CODE)
        );
        assert_eq!(fault_code(b"not json"), None);
        assert_eq!(fault_code(br#"{"error":"x"}"#), None);
    }

    #[test]
    fn statuses() {
        let c = DefaultClassifier::new();
        let h = HeaderMap::new();
        let judge = |s: u16| {
            c.classify(Outcome::Response {
                status: StatusCode::from_u16(s).unwrap(),
                headers: &h,
                body: None,
            })
        };
        assert_eq!(judge(200), Verdict::Success);
        assert_eq!(judge(404), Verdict::Fail);
        assert_eq!(judge(429), Verdict::Throttled { retry_after: None });
        assert_eq!(judge(500), Verdict::Fail);
        assert!(matches!(
            judge(503),
            Verdict::EndpointDown(DownKind::Unavailable { .. })
        ));
    }

    #[test]
    fn error_chains() {
        let refused = Wrap(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(classify_error(&refused), Some(DownKind::NotFound));
        let reset = Wrap(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(classify_error(&reset), Some(DownKind::ConnectionLost));
        let elapsed = tower::timeout::error::Elapsed::new();
        assert_eq!(classify_error(&elapsed), Some(DownKind::Timeout));
        let other = io::Error::other("nope");
        assert_eq!(classify_error(&other), None);
        let emfile = Wrap(io::Error::from_raw_os_error(24));
        assert_eq!(
            classify_error(&emfile),
            None,
            "out of descriptors is not an outage"
        );
    }

    /// Real `h2` errors, from a client and a server talking over an in-memory pipe.
    #[cfg(feature = "h2")]
    mod h2_errors {
        use super::*;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        fn block_on<F: std::future::Future>(f: F) -> F::Output {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f)
        }

        /// The error a client request gets when the server answers its stream with
        /// RST_STREAM(`reason`).
        async fn reset_with(reason: h2::Reason) -> h2::Error {
            let (client_io, server_io) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let mut connection = h2::server::handshake(server_io).await.unwrap();
                while let Some(Ok((_request, mut respond))) = connection.accept().await {
                    respond.send_reset(reason);
                }
            });
            first_request_error(client_io).await
        }

        /// The error a client request gets when the server sends GOAWAY(NO_ERROR) with last
        /// stream id 0 after the request arrived (hand-written frames: the `h2` server counts a
        /// stream as processed as soon as it reads its headers).
        async fn go_away_below_the_stream() -> h2::Error {
            let (client_io, mut server_io) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                let mut seen = Vec::new();
                // SETTINGS, then wait for the request's HEADERS frame (type 1) after the preface.
                server_io.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
                loop {
                    let n = server_io.read(&mut buffer).await.unwrap();
                    seen.extend_from_slice(&buffer[..n]);
                    if has_headers_frame(&seen[24.min(seen.len())..]) {
                        break;
                    }
                }
                // GOAWAY: length 8, type 7, stream 0; last stream id 0, NO_ERROR.
                let go_away = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                server_io.write_all(&go_away).await.unwrap();
                let _ = server_io.read(&mut buffer).await;
            });
            first_request_error(client_io).await
        }

        /// Sends one request over `client_io` and returns the error it gets.
        async fn first_request_error(client_io: tokio::io::DuplexStream) -> h2::Error {
            let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
            tokio::spawn(async move {
                let _ = connection.await;
            });
            let request = http::Request::post("http://example.com/").body(()).unwrap();
            let (response, _body) = client.send_request(request, true).unwrap();
            response.await.unwrap_err()
        }

        fn has_headers_frame(mut frames: &[u8]) -> bool {
            while frames.len() >= 9 {
                let len = (frames[0] as usize) << 16 | (frames[1] as usize) << 8 | frames[2] as usize;
                if frames[3] == 1 {
                    return true;
                }
                frames = &frames[(9 + len).min(frames.len())..];
            }
            false
        }

        #[test]
        fn refused_stream_and_go_away_below_the_stream_were_not_processed() {
            block_on(async {
                let refused = reset_with(h2::Reason::REFUSED_STREAM).await;
                assert_eq!(classify_error(&Wrap(refused)), Some(DownKind::Refused));
                let go_away = go_away_below_the_stream().await;
                assert!(go_away.is_go_away() && go_away.is_remote(), "{go_away:?}");
                assert_eq!(classify_error(&Wrap(go_away)), Some(DownKind::Refused));
                assert!(!DownKind::Refused.request_may_have_been_sent());
            });
        }

        #[test]
        fn other_resets_may_have_been_processed() {
            block_on(async {
                for reason in [
                    h2::Reason::INTERNAL_ERROR,
                    h2::Reason::CANCEL,
                    h2::Reason::NO_ERROR,
                ] {
                    let error = reset_with(reason).await;
                    assert_eq!(
                        classify_error(&Wrap(error)),
                        Some(DownKind::ConnectionLost),
                        "{reason:?}"
                    );
                }
                // A bare reason (hyper makes these for its own failures) says nothing.
                let bare = h2::Error::from(h2::Reason::REFUSED_STREAM);
                assert_eq!(classify_error(&Wrap(bare)), None);
            });
        }
    }
}
