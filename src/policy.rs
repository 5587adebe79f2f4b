//! Which requests may be sent a second time after the first attempt may have reached the
//! server.

use http::header::HeaderName;
use http::{HeaderMap, Method};

/// The `Idempotency-Key` header: a request carrying it declares that the server applies it at
/// most once, so re-sending it is safe whatever its method.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// True when sending the request twice has the same effect as sending it once: the
/// idempotent methods of RFC 9110 (GET, HEAD, OPTIONS, TRACE, PUT, DELETE), or any request
/// with an `Idempotency-Key` header.
///
/// ```
/// use http::{HeaderMap, Method};
/// use tower_failover::policy::is_idempotent;
///
/// assert!(is_idempotent(&Method::PUT, &HeaderMap::new()));
/// assert!(!is_idempotent(&Method::POST, &HeaderMap::new()));
///
/// let mut headers = HeaderMap::new();
/// headers.insert("idempotency-key", "order-42".parse().unwrap());
/// assert!(is_idempotent(&Method::POST, &headers));
/// ```
pub fn is_idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || headers.contains_key(IDEMPOTENCY_KEY)
}
