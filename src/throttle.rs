//! Throttling: reading `Retry-After`, recognising the Dynamics 365 service-protection codes,
//! and the backoff used when the server gives no delay.

use std::time::{Duration, SystemTime};

use http::header::RETRY_AFTER;
use http::HeaderMap;

/// The Dynamics 365 service-protection limit codes, as signed 32-bit values: too many
/// requests (`0x80072322`), execution time exceeded (`0x80072321`), concurrent requests
/// (`0x80072326`).
pub const SERVICE_PROTECTION_CODES: [i64; 3] = [-2147015902, -2147015903, -2147015898];

/// True when `code` (signed 32-bit form, see [`parse_code`](crate::parse_code)) is a
/// service-protection limit code.
///
/// ```
/// use tower_failover::{fault_code, is_service_protection_code, parse_code};
///
/// let body = br#"{"error":{"code":"0x80072322","message":"Number of requests exceeded the limit"}}"#;
/// assert!(fault_code(body).is_some_and(is_service_protection_code));
/// assert!(!is_service_protection_code(parse_code("0x8004B065").unwrap())); // failover, not throttling
/// ```
pub fn is_service_protection_code(code: i64) -> bool {
    SERVICE_PROTECTION_CODES.contains(&code)
}

/// Reads `Retry-After` as delay-seconds or an HTTP date. A date in the past gives
/// `Some(Duration::ZERO)` (no wait is needed); a negative number or garbage gives `None`.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_failover::parse_retry_after;
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("retry-after", "7".parse().unwrap());
/// assert_eq!(parse_retry_after(&headers, SystemTime::now()), Some(Duration::from_secs(7)));
/// headers.insert("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
/// assert_eq!(parse_retry_after(&headers, SystemTime::now()), Some(Duration::ZERO));
/// headers.insert("retry-after", "-1".parse().unwrap());
/// assert_eq!(parse_retry_after(&headers, SystemTime::now()), None);
/// ```
pub fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Longer than u64 seconds is "forever": saturate, the policy's maximum will refuse it.
        return Some(Duration::from_secs(text.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let date = httpdate::parse_http_date(text).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The wait before throttling retry number `attempt` (0-based) when the server named none:
/// exponential from `base`, capped at `max`, with full jitter (a uniform pick below the cap),
/// so clients throttled together do not come back together.
pub(crate) fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.min(20)).min(max);
    let millis = ceiling.as_millis().min(u64::MAX as u128) as u64;
    Duration::from_millis(fastrand::u64(0..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        let mut set = |v: &str| {
            h.insert(RETRY_AFTER, v.parse().unwrap());
            parse_retry_after(&h, now)
        };
        assert_eq!(set("0"), Some(Duration::ZERO));
        assert_eq!(set(" 12 "), Some(Duration::from_secs(12)));
        assert_eq!(
            set("99999999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(set("-3"), None);
        assert_eq!(set("soon"), None);
        assert_eq!(set("1.5"), None);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(set(&later), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(set(&earlier), Some(Duration::ZERO));
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        for attempt in 0..40 {
            let d = backoff(attempt, Duration::from_millis(100), Duration::from_secs(2));
            assert!(d <= Duration::from_secs(2));
        }
    }
}
