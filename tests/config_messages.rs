//! What the public API says of bad input: every `ConfigError` from `Endpoints::*` says what to
//! fix, not only what is wrong; `fault_code` returns only 32-bit codes, as it says.

use tower_failover::{Endpoint, Endpoints};

#[test]
fn an_empty_host_or_first_label_is_refused_saying_what_to_give() {
    for (uri, wrong) in [
        ("https://.", "has an empty host"),
        ("https://:443", "has an empty host"),
        ("https://.example.com", "has an empty first DNS label"),
    ] {
        let message = match Endpoint::parse(uri) {
            Err(error) => error.to_string(),
            Ok(_) => Endpoints::dynamics(uri).unwrap_err().to_string(),
        };
        assert!(message.contains(wrong), "{uri}: {message}");
        assert!(
            message.contains("such as `"),
            "{uri}: says what to give instead: {message}"
        );
    }
}

/// `fault_code` returns "the code as a signed 32-bit value": a JSON number outside 32 bits is
/// no Dynamics code, as `parse_code` says for the same value written as text.
#[test]
fn a_fault_code_number_outside_32_bits_is_no_code() {
    use tower_failover::{fault_code, parse_code, FAILOVER_FAULT_CODE};

    for text in ["5000000000", "-9223372036854775808", "-2147483649", "4294967296"] {
        assert_eq!(parse_code(text), None, "{text}");
        let body = format!(r#"{{"error":{{"code":{text}}}}}"#);
        assert_eq!(fault_code(body.as_bytes()), None, "{body}");
    }
    // In range, either form, signed or unsigned: the same code.
    for text in ["-2147176347", "2147790949"] {
        assert_eq!(parse_code(text), Some(FAILOVER_FAULT_CODE));
        let body = format!(r#"{{"error":{{"code":{text}}}}}"#);
        assert_eq!(fault_code(body.as_bytes()), Some(FAILOVER_FAULT_CODE), "{body}");
    }
}
