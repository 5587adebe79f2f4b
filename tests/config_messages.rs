//! Every `ConfigError` from `Endpoints::*` says what to fix, not only what is wrong.

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
