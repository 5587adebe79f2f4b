//! Bad input, each case with what must come of it: a clear error, or a correct pass-through;
//! never a panic, never a hang.
//!
//! * URIs the layer cannot route (relative, `*`, authority-form without a scheme): passed
//!   through untouched, so the inner client's own error comes back, typed `Inner`.
//! * Odd hosts in `Endpoints::new`/`dynamics` and in requests: IPv6 literals (any spelling),
//!   trailing dots, upper case, ports (default, explicit, out of range), punycode names.
//! * `Host` headers that disagree with the URI.
//! * Request bodies that fail mid-stream, over HTTP/1 and HTTP/2: the caller's failure, not an
//!   outage; typed error, no switch.
//! * Error bodies the classifier peeks at that are huge (declared small), truncated, not JSON,
//!   or compressed: the response comes back with its body intact.
//! * A classifier that says "down" (or "throttled") for everything: every call still ends.
//! * `Retry-After` values that are negative, enormous or garbage, and limits at `Duration::MAX`.
//! * Properties of the `--s` rule and of routing, with proptest.

mod support;

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, HOST, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use proptest::prelude::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{ServiceBuilder, ServiceExt};
use tower_failover::{
    DownKind, Endpoint, Endpoints, FailoverError, FailoverErrorKind, FailoverHandle, FailoverLayer, Outcome,
    ReplayBody, RetryPolicy, Side, Verdict,
};

// ---------------------------------------------------------------------------------------------
// An in-process inner service that records what reaches it
// ---------------------------------------------------------------------------------------------

type OutBody = BoxBody<Bytes, io::Error>;

/// What the inner service saw of one request.
#[derive(Debug, Clone)]
struct Reached {
    #[allow(dead_code)]
    method: Method,
    uri: Uri,
    host: Option<HeaderValue>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Reached>>>);

impl Recorder {
    fn all(&self) -> Vec<Reached> {
        self.0.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn last(&self) -> Reached {
        self.0
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request reached the inner service")
    }
}

fn full(body: impl Into<Bytes>) -> OutBody {
    Full::new(body.into()).map_err(|never| match never {}).boxed()
}

type Answer = Arc<dyn Fn(&Request<ReplayBody<Full<Bytes>>>) -> Response<OutBody> + Send + Sync>;

/// The failover layer over an in-process service that records each request and answers with
/// `answer`.
fn recorded<C>(
    layer: FailoverLayer<C>,
    recorder: &Recorder,
    answer: Answer,
) -> tower_failover::Failover<
    impl tower::Service<
            Request<ReplayBody<Full<Bytes>>>,
            Response = Response<OutBody>,
            Error = Infallible,
            Future = impl Send + 'static,
        > + Clone
        + Send
        + 'static,
    C,
>
where
    C: Clone,
{
    let recorder = recorder.clone();
    ServiceBuilder::new().layer(layer).service(tower::service_fn(
        move |request: Request<ReplayBody<Full<Bytes>>>| {
            recorder.0.lock().unwrap().push(Reached {
                method: request.method().clone(),
                uri: request.uri().clone(),
                host: request.headers().get(HOST).cloned(),
            });
            let response = answer(&request);
            async move { Ok::<_, Infallible>(response) }
        },
    ))
}

fn ok_answer() -> Answer {
    Arc::new(|_| Response::new(full("ok")))
}

fn req(method: Method, uri: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn expect_error<T>(result: Result<T, FailoverError>, what: &str) -> FailoverError {
    match result {
        Ok(_) => panic!("{what}: expected an error"),
        Err(error) => error,
    }
}

// ---------------------------------------------------------------------------------------------
// URIs the layer cannot route: passed through, the inner client's error comes back
// ---------------------------------------------------------------------------------------------

/// Relative, asterisk-form and authority-form (no scheme) URIs name no endpoint: they reach
/// hyper-util's client untouched, which refuses them, and the caller gets that error typed
/// `Inner`. No switch, nothing sent anywhere.
#[tokio::test]
async fn unroutable_uris_pass_through_to_the_inner_clients_error() {
    within(10, async {
        let pair = Pair::start().await;
        let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
        let handle = layer.handle();
        let service = pair.through(layer);
        for uri in [
            "/api/data/v9.2/WhoAmI",
            "*",
            "contoso.api.crm.dynamics.com",
            "contoso.api.crm.dynamics.com:80",
        ] {
            for method in [Method::GET, Method::POST, Method::OPTIONS] {
                let error = expect_error(send(&service, req(method.clone(), uri)).await, uri);
                assert_eq!(error.kind(), &FailoverErrorKind::Inner, "{method} {uri}: {error}");
                assert!(
                    error.to_string().contains("AbsoluteUri"),
                    "{method} {uri}: {error}"
                );
                assert!(error.last_attempt().endpoint().is_none(), "not routed: {uri}");
            }
        }
        assert_eq!(handle.counters().calls, 0, "none of them was routed");
        assert_eq!(handle.generation(), 0);
        assert_eq!(pair.primary.count() + pair.alternate.count(), 0);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Odd hosts
// ---------------------------------------------------------------------------------------------

/// Endpoints given in odd shapes: each is accepted with the endpoint it means, or refused with
/// a message that says what to fix.
#[test]
fn odd_endpoint_hosts_are_accepted_or_refused_clearly() {
    // (input, `--s` alternate or the error's words)
    let dynamics: &[(&str, Result<&str, &str>)] = &[
        (
            "https://CONTOSO.Api.CRM.dynamics.com",
            Ok("https://contoso--s.api.crm.dynamics.com"),
        ),
        (
            "https://contoso.api.crm.dynamics.com.",
            Ok("https://contoso--s.api.crm.dynamics.com."),
        ),
        (
            "https://contoso.api.crm.dynamics.com:443",
            Ok("https://contoso--s.api.crm.dynamics.com:443"),
        ),
        (
            "https://contoso.api.crm.dynamics.com:8443",
            Ok("https://contoso--s.api.crm.dynamics.com:8443"),
        ),
        (
            "https://contoso.api.crm.dynamics.com:08443",
            Ok("https://contoso--s.api.crm.dynamics.com:8443"),
        ),
        (
            "https://xn--bcher-kva.crm4.dynamics.com",
            Ok("https://xn--bcher-kva--s.crm4.dynamics.com"),
        ),
        ("http://localhost", Ok("http://localhost--s")),
        ("https://contoso.api.crm.dynamics.com:99999", Err("port")),
        ("https://contoso.api.crm.dynamics.com:0", Err("port")),
        (
            "https://contoso.api.crm.dynamics.com:http",
            Err("a port is a number"),
        ),
        ("https://[::1]", Err("IP address")),
        ("https://[0:0:0:0:0:0:0:1]:8443", Err("IP address")),
        ("https://127.0.0.1", Err("IP address")),
        ("https://bücher.crm4.dynamics.com", Err("not a valid URI")),
        (
            "https://contoso--s.api.crm.dynamics.com",
            Err("already an alternate"),
        ),
        ("https://.", Err("empty host")),
        ("https://..", Err("empty first DNS label")),
        ("https://.api.crm.dynamics.com", Err("empty first DNS label")),
        (
            // A first label of 61 letters: 64 with `--s`.
            "https://aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.dynamics.com",
            Err("longer than 63"),
        ),
        (
            "https://contoso.api.crm.dynamics.com/api",
            Err("scheme and a host only"),
        ),
        ("contoso.api.crm.dynamics.com", Err("absolute URI")),
        ("", Err("not a valid URI")),
    ];
    for (input, expected) in dynamics {
        let result = Endpoints::dynamics(input).map(|pair| pair.alternate().unwrap().to_string());
        match (expected, &result) {
            (Ok(alternate), Ok(got)) => assert_eq!(got, alternate, "{input}"),
            (Err(words), Err(error)) => {
                assert!(error.to_string().contains(words), "{input}: {error}")
            }
            _ => panic!("{input}: expected {expected:?}, got {result:?}"),
        }
    }

    // Named pairs: IPv6 literals in any spelling, and the same endpoint twice refused.
    let pair = Endpoints::new("http://[::1]:8080", "http://[0:0:0:0:0:0:0:1]:8081").unwrap();
    assert_eq!(pair.primary().host(), "[::1]");
    assert_eq!(
        pair.alternate().unwrap().host(),
        "[::1]",
        "one spelling for one address"
    );
    let error = Endpoints::new("http://[::1]:8080", "http://[0::1]:8080").unwrap_err();
    assert!(error.to_string().contains("same endpoint"), "{error}");
    let error = Endpoints::new("https://a.example.com", "https://A.EXAMPLE.COM.:443").unwrap_err();
    assert!(error.to_string().contains("same endpoint"), "{error}");
    let error = Endpoints::new("https://a.example.com:65536", "https://b.example.com").unwrap_err();
    assert!(error.to_string().contains("primary endpoint"), "{error}");
    assert!(error.to_string().contains("port"), "{error}");
}

/// Requests naming an endpoint in an odd spelling are routed; near misses pass through.
#[tokio::test]
async fn odd_hosts_in_requests_route_or_pass_through() {
    let recorder = Recorder::default();
    let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    let handle = layer.handle();
    let service = recorded(layer, &recorder, ok_answer());
    let routed = [
        "https://CONTOSO.API.CRM.DYNAMICS.COM/x",
        "https://contoso.api.crm.dynamics.com./x",
        "https://contoso.api.crm.dynamics.com:443/x",
        "https://contoso--S.api.crm.dynamics.com/x",
        "https://contoso.api.crm.dynamics.com",
    ];
    let passed = [
        "http://contoso.api.crm.dynamics.com/x",
        // The endpoint's port with the other scheme: not the endpoint (routing it would
        // change how the request is sent, in clear text or not).
        "http://contoso.api.crm.dynamics.com:443/x",
        "http://contoso--s.api.crm.dynamics.com:443/x",
        "https://contoso.api.crm.dynamics.com:8443/x",
        "https://contoso.api.crm.dynamics.com.evil.example/x",
        "https://xcontoso.api.crm.dynamics.com/x",
        "https://contoso.api.crm.dynamics.co/x",
        "https://contoso--s--s.api.crm.dynamics.com/x",
        "https://[::1]/x",
    ];
    for side in [Side::Primary, Side::Alternate] {
        handle.switch_to(side);
        let active = handle.active_endpoint().clone();
        for uri in routed {
            service.clone().oneshot(req(Method::GET, uri)).await.unwrap();
            let reached = recorder.last();
            assert_eq!(
                reached.uri.authority(),
                Some(active.authority()),
                "{uri} on {side}"
            );
            assert_eq!(reached.uri.scheme(), Some(active.scheme()), "{uri}");
            assert!(reached.uri.path() == "/x" || reached.uri.path() == "/", "{uri}");
        }
        for uri in passed {
            service.clone().oneshot(req(Method::GET, uri)).await.unwrap();
            assert_eq!(
                recorder.last().uri,
                uri.parse::<Uri>().unwrap(),
                "{uri}: untouched"
            );
        }
    }

    // An IPv6 pair: any spelling of the address routes.
    let recorder = Recorder::default();
    let layer = FailoverLayer::new(Endpoints::new("http://[::1]:8080", "http://[::1]:8081").unwrap());
    let service = recorded(layer, &recorder, ok_answer());
    for uri in [
        "http://[::1]:8080/x",
        "http://[0:0:0:0:0:0:0:1]:8080/x",
        "http://[0::1]:8080/x",
    ] {
        service.clone().oneshot(req(Method::GET, uri)).await.unwrap();
        assert_eq!(recorder.last().uri.to_string(), "http://[::1]:8080/x", "{uri}");
    }
    for uri in [
        "http://[::1]:9999/x",
        "https://[::1]:8080/x",
        "http://[::2]:8080/x",
        "http://127.0.0.1:8080/x",
    ] {
        service.clone().oneshot(req(Method::GET, uri)).await.unwrap();
        assert_eq!(recorder.last().uri.to_string(), uri, "{uri}: untouched");
    }
}

/// A primary given with a trailing dot (a fully qualified name, so the resolver does not try
/// its search domains first: with Kubernetes' `ndots:5`, `contoso--s.api.crm.dynamics.com`
/// would be looked up under every search domain before itself) gets an alternate spelled the
/// same way. The dot used to be dropped from the derived alternate: calls went out as
/// `contoso.api.crm.dynamics.com.` on the primary but as `contoso--s.api.crm.dynamics.com`
/// after a failover. Requests spelled with or without the dot route to either side, and go
/// out as the endpoint is configured, `Host` included.
#[tokio::test]
async fn a_trailing_dot_on_the_primary_carries_to_the_derived_alternate() {
    for (primary, alternate) in [
        (
            "https://contoso.api.crm.dynamics.com.",
            "https://contoso--s.api.crm.dynamics.com.",
        ),
        (
            "https://Contoso.crm4.dynamics.com.:8443",
            "https://contoso--s.crm4.dynamics.com.:8443",
        ),
        ("http://localhost.", "http://localhost--s."),
    ] {
        let pair = Endpoints::dynamics(primary).unwrap();
        assert_eq!(pair.alternate().unwrap().to_string(), alternate, "{primary}");
        // The host is still compared without the dot, and the alternate parses back to itself.
        assert!(!pair.alternate().unwrap().host().ends_with('.'), "{primary}");
        assert_eq!(&Endpoint::parse(alternate).unwrap(), pair.alternate().unwrap());
        // Given back as a primary, it is still refused as an alternate.
        let error = Endpoints::dynamics(alternate).unwrap_err().to_string();
        assert!(error.contains("already an alternate"), "{alternate}: {error}");
    }
    // Without the dot, none is added.
    let pair = Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap();
    assert_eq!(
        pair.alternate().unwrap().to_string(),
        "https://contoso--s.api.crm.dynamics.com"
    );

    let recorder = Recorder::default();
    let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com.").unwrap());
    let handle = layer.handle();
    let service = recorded(layer, &recorder, ok_answer());
    for (side, out) in [
        (Side::Primary, "contoso.api.crm.dynamics.com."),
        (Side::Alternate, "contoso--s.api.crm.dynamics.com."),
    ] {
        handle.switch_to(side);
        for host in [
            "contoso.api.crm.dynamics.com",
            "contoso.api.crm.dynamics.com.",
            "contoso--s.api.crm.dynamics.com",
            "contoso--s.api.crm.dynamics.com.",
        ] {
            let mut request = req(Method::GET, &format!("https://{host}/api/data/v9.2/WhoAmI"));
            request
                .headers_mut()
                .insert(HOST, HeaderValue::from_str(host).unwrap());
            service.clone().oneshot(request).await.unwrap();
            let reached = recorder.last();
            assert_eq!(
                reached.uri.to_string(),
                format!("https://{out}/api/data/v9.2/WhoAmI"),
                "{host} on {side}"
            );
            assert_eq!(reached.host.as_ref().unwrap(), out, "{host} on {side}");
        }
    }
}

/// The `--s` rule is textual: the alternate's first label is the primary's with `--s`
/// appended, and a first label that is some label plus `--s` is refused as an alternate. A
/// punycode label is no exception: `xn--s` is exactly what the rule derives from the first
/// label `xn`, so accepting it as a primary would make one host both an alternate and a
/// primary (`xn` -> `xn--s` -> `xn--s--s`). Nor is `xn--s` an IDNA label: `s` alone is an
/// incomplete Punycode string, so it decodes to nothing. Punycode labels that do not end in
/// `--s` derive their alternate like any other label.
#[test]
fn punycode_first_labels_follow_the_s_rule_like_any_other() {
    let pair = Endpoints::dynamics("https://xn.example.com").unwrap();
    assert_eq!(pair.alternate().unwrap().to_string(), "https://xn--s.example.com");
    for alternate in ["https://xn--s.example.com", "https://XN--S.example.com."] {
        let error = Endpoints::dynamics(alternate).unwrap_err().to_string();
        assert!(error.contains("already an alternate"), "{alternate}: {error}");
        assert!(
            error.contains("`https://xn.example.com"),
            "names the primary: {error}"
        );
    }
    let pair = Endpoints::dynamics("https://xn--bcher-kva.example.com").unwrap();
    assert_eq!(
        pair.alternate().unwrap().to_string(),
        "https://xn--bcher-kva--s.example.com"
    );
    let error = Endpoints::dynamics("https://xn--bcher-kva--s.example.com").unwrap_err();
    assert!(error.to_string().contains("already an alternate"), "{error}");
}

/// An endpoint with an empty port (`https://host:`, which `http` accepts and reads as no port)
/// means the scheme's default port, and is written without the `:`, as its derived alternate
/// is. It used to keep the bare `:`, so routed requests went out with the authority
/// `host:` (and a `Host` naming the endpoint was rewritten to it) on the primary but `host--s`
/// without it on the alternate.
#[tokio::test]
async fn an_empty_port_on_an_endpoint_is_the_default_port_written_without_a_colon() {
    let pair = Endpoints::dynamics("https://contoso.api.crm.dynamics.com:").unwrap();
    assert_eq!(pair.primary().to_string(), "https://contoso.api.crm.dynamics.com");
    assert_eq!(pair.primary().port(), 443);
    assert_eq!(
        pair.alternate().unwrap().to_string(),
        "https://contoso--s.api.crm.dynamics.com"
    );
    assert_eq!(
        Endpoint::parse("http://api.example.com.:").unwrap().to_string(),
        "http://api.example.com."
    );

    let recorder = Recorder::default();
    let service = recorded(FailoverLayer::new(pair), &recorder, ok_answer());
    let mut request = req(
        Method::GET,
        "https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI",
    );
    request
        .headers_mut()
        .insert(HOST, HeaderValue::from_static("CONTOSO.api.crm.dynamics.com"));
    service.clone().oneshot(request).await.unwrap();
    let reached = recorder.last();
    assert_eq!(
        reached.uri.to_string(),
        "https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI"
    );
    assert_eq!(reached.host.unwrap(), "contoso.api.crm.dynamics.com");
}

/// An alternate given as the primary is refused with the primary to give instead, spelled
/// as the alternate was: port and trailing dot included. The suggestion used to drop the port,
/// so following it pointed the layer at port 443 instead of the organization's own.
#[test]
fn an_alternate_given_as_primary_is_refused_naming_the_primary_with_its_port() {
    for (alternate, primary) in [
        (
            "https://contoso--s.api.crm.dynamics.com",
            "https://contoso.api.crm.dynamics.com",
        ),
        (
            "https://contoso--s.crm4.dynamics.com:8443",
            "https://contoso.crm4.dynamics.com:8443",
        ),
        (
            "https://CONTOSO--S.crm4.dynamics.com.:8443",
            "https://contoso.crm4.dynamics.com.:8443",
        ),
        ("http://localhost--s:8080", "http://localhost:8080"),
    ] {
        let error = Endpoints::dynamics(alternate).unwrap_err().to_string();
        assert!(error.contains("already an alternate"), "{alternate}: {error}");
        assert!(
            error.ends_with(&format!("e.g. `{primary}`")),
            "{alternate}: suggests {primary}: {error}"
        );
        // Following the advice works, and derives the alternate that was given.
        let pair = Endpoints::dynamics(primary).unwrap();
        assert_eq!(
            pair.alternate().unwrap(),
            &Endpoint::parse(alternate).unwrap(),
            "{alternate}"
        );
    }
    // Labels no primary derives: nothing to suggest, and no suggestion that is itself refused.
    for host in ["https://a--s--s.example.com", "https://--s.example.com"] {
        let error = Endpoints::dynamics(host).unwrap_err().to_string();
        assert!(error.contains("no primary host derives it"), "{host}: {error}");
        assert!(!error.contains("e.g."), "{host}: {error}");
    }
}

/// `Host` headers that disagree with the URI.
#[tokio::test]
async fn host_headers_that_disagree_with_the_uri() {
    let recorder = Recorder::default();
    let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
    let handle = layer.handle();
    let service = recorded(layer, &recorder, ok_answer());
    handle.switch_to(Side::Alternate);

    let with_host = |uri: &str, host: HeaderValue| {
        let mut request = req(Method::GET, uri);
        request.headers_mut().insert(HOST, host);
        request
    };
    let cases: Vec<(&str, HeaderValue, Option<HeaderValue>, &str)> = vec![
        // The URI names the pair, the Host a third party: routed, Host kept (set on purpose).
        (
            "http://contoso.api.crm.dynamics.com/x",
            HeaderValue::from_static("tenant.example.com"),
            Some(HeaderValue::from_static("tenant.example.com")),
            ALTERNATE_HOST,
        ),
        // The Host names the other side of the pair: follows the swap.
        (
            "http://contoso.api.crm.dynamics.com/x",
            HeaderValue::from_static("CONTOSO.api.crm.dynamics.com."),
            Some(HeaderValue::from_static(ALTERNATE_HOST)),
            ALTERNATE_HOST,
        ),
        // A Host that is no host at all: kept as it is.
        (
            "http://contoso.api.crm.dynamics.com/x",
            HeaderValue::from_bytes(b"not a host \xff").unwrap(),
            Some(HeaderValue::from_bytes(b"not a host \xff").unwrap()),
            ALTERNATE_HOST,
        ),
        // The URI names another host, the Host the primary: not routed, both untouched.
        (
            "http://elsewhere.example.com/x",
            HeaderValue::from_static(PRIMARY_HOST),
            Some(HeaderValue::from_static(PRIMARY_HOST)),
            "elsewhere.example.com",
        ),
    ];
    for (uri, host, expected_host, expected_uri_host) in cases {
        service
            .clone()
            .oneshot(with_host(uri, host.clone()))
            .await
            .unwrap();
        let reached = recorder.last();
        assert_eq!(reached.host, expected_host, "{uri} with Host {host:?}");
        assert_eq!(
            reached.uri.host(),
            Some(expected_uri_host),
            "{uri} with Host {host:?}"
        );
    }

    // Two Host headers naming the pair: one, the active endpoint's, goes out.
    let mut request = req(Method::GET, PRIMARY_URL);
    request
        .headers_mut()
        .append(HOST, HeaderValue::from_static(PRIMARY_HOST));
    request
        .headers_mut()
        .append(HOST, HeaderValue::from_static(ALTERNATE_HOST));
    service.clone().oneshot(request).await.unwrap();
    assert_eq!(
        recorder.last().host,
        Some(HeaderValue::from_static(ALTERNATE_HOST))
    );
}

/// A head with many values of one header (a `HeaderMap` bounds its names, not its values) is
/// re-sent whole after an outage, not a panic in the call's future.
#[tokio::test]
async fn a_head_with_thirty_thousand_values_of_one_header_is_re_sent_whole() {
    let recorder = Recorder::default();
    let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
    let values_on_the_alternate = Arc::new(Mutex::new(None));
    let seen = values_on_the_alternate.clone();
    let service = recorded(
        layer,
        &recorder,
        Arc::new(move |request| {
            if request.uri().host() == Some(PRIMARY_HOST) {
                return status_with(503, &[], full("down"));
            }
            *seen.lock().unwrap() = Some(request.headers().get_all("x-many").iter().count());
            Response::new(full("ok"))
        }),
    );
    let mut request = req(Method::GET, &format!("{PRIMARY_URL}/many"));
    for i in 0..30_000u32 {
        request.headers_mut().append("x-many", HeaderValue::from(i));
    }
    let call = tokio::spawn(service.oneshot(request));
    let response = call
        .await
        .expect("the call does not panic")
        .expect("re-sent on the alternate");
    assert_eq!(response.status(), 200);
    assert_eq!(*values_on_the_alternate.lock().unwrap(), Some(30_000));
    assert_eq!(recorder.count(), 2);
}

// ---------------------------------------------------------------------------------------------
// Request bodies that fail mid-stream
// ---------------------------------------------------------------------------------------------

type Frames = Pin<Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, io::Error>> + Send>>;
type Failing = StreamBody<Frames>;

/// Two chunks, then an error of `kind` (as a body read from a socket or a file would fail).
fn failing_body(kind: io::ErrorKind) -> Failing {
    let chunks = futures_util::stream::iter([
        Ok(Frame::data(Bytes::from_static(b"{\"part\":"))),
        Ok(Frame::data(Bytes::from_static(b"\"one\","))),
    ]);
    let fail =
        futures_util::stream::once(async move { Err(io::Error::new(kind, "the caller's source failed")) });
    StreamBody::new(Box::pin(chunks.chain(fail)) as Frames)
}

/// The caller's own body fails after two chunks, over hyper-util's HTTP/1 and HTTP/2 clients,
/// with an error kind that would mean "connection lost" had the server caused it. It is the
/// caller's failure, not an outage: a typed error, no switch, no re-send.
#[tokio::test]
async fn a_request_body_failing_mid_stream_is_the_callers_error_not_an_outage() {
    within(10, async {
        let pair = Pair::start().await;
        for http2 in [false, true] {
            for kind in [
                io::ErrorKind::ConnectionReset,
                io::ErrorKind::BrokenPipe,
                io::ErrorKind::Other,
            ] {
                let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
                let handle = layer.handle();
                let mut builder =
                    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
                builder.http2_only(http2);
                let client = builder.build::<_, ReplayBody<Failing>>(pair.resolver.connector());
                let service = ServiceBuilder::new().layer(layer).service(client);
                for (method, key) in [
                    (Method::POST, None),
                    (Method::PUT, None),
                    (Method::POST, Some("k-1")),
                ] {
                    let mut request = Request::builder()
                        .method(method.clone())
                        .uri(format!("{PRIMARY_URL}/api/data/v9.2/annotations"))
                        .body(failing_body(kind))
                        .unwrap();
                    if let Some(key) = key {
                        request
                            .headers_mut()
                            .insert("idempotency-key", key.parse().unwrap());
                    }
                    let what = format!("http2 {http2}, {kind:?}, {method} key {key:?}");
                    let error = expect_error(service.clone().oneshot(request).await, &what);
                    assert_eq!(error.kind(), &FailoverErrorKind::Inner, "{what}: {error}");
                    // HTTP/1 carries the body's own error; HTTP/2 the reset the client sent for it.
                    let text = error.to_string();
                    assert!(
                        text.contains("the caller's source failed")
                            || (http2 && text.contains("sent by user")),
                        "{what}: {error}"
                    );
                    assert!(!error.was_resent(), "{what}");
                    assert_eq!(handle.generation(), 0, "{what}: no switch");
                }
            }
        }
        assert_eq!(pair.alternate.count(), 0, "nothing went to the alternate");
        // The primary never got a whole request: whatever it saw ended in an error (recorded by
        // the support server as an empty body), so nothing was applied.
        assert!(pair.primary.seen().iter().all(|s| s.body_len == 0));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Error bodies the default classifier peeks at
// ---------------------------------------------------------------------------------------------

const FAILOVER_FAULT: &str = r#"{"error":{"code":"0x8004B065","message":"failing over"}}"#;

/// The layer over an in-process service answering every request with `make()`; returns the
/// service, its handle and the recorder.
fn answering(
    make: impl Fn() -> Response<OutBody> + Send + Sync + 'static,
) -> (
    impl tower::Service<
            Request<Full<Bytes>>,
            Response = Response<tower_failover::ResponseBody<OutBody>>,
            Error = FailoverError,
            Future = impl Send,
        > + Clone,
    FailoverHandle,
    Recorder,
) {
    let recorder = Recorder::default();
    let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
    let handle = layer.handle();
    let service = recorded(layer, &recorder, Arc::new(move |_| make()));
    (service, handle, recorder)
}

fn status_with(status: u16, headers: &[(http::HeaderName, &str)], body: OutBody) -> Response<OutBody> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    for (name, value) in headers {
        response
            .headers_mut()
            .insert(name.clone(), value.parse().unwrap());
    }
    response
}

/// Error bodies declaring a few bytes but streaming 4 MiB, or without end: the peek stops past
/// its limit and hands the response back (or fails over, for a 503); the 4 MiB come out whole.
#[tokio::test]
async fn a_huge_body_declared_small_is_not_buffered_and_comes_back_whole() {
    within(10, async {
        const CHUNK: usize = 64 * 1024;
        let (service, handle, _) = answering(|| {
            let chunks =
                futures_util::stream::iter((0..64u8).map(|i| Ok(Frame::data(Bytes::from(vec![i; CHUNK])))));
            let body = BodyExt::boxed(StreamBody::new(chunks));
            status_with(500, &[(CONTENT_LENGTH, "100")], body)
        });
        let response = service.oneshot(req(Method::GET, PRIMARY_URL)).await.unwrap();
        assert_eq!(response.status(), 500);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 64 * CHUNK);
        assert!(body
            .chunks(CHUNK)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == i as u8)));
        assert_eq!(handle.generation(), 0);

        let (service, _, _) = answering(|| {
            let endless =
                futures_util::stream::repeat_with(|| Ok(Frame::data(Bytes::from(vec![b'x'; CHUNK]))));
            status_with(
                503,
                &[(CONTENT_LENGTH, "10")],
                BodyExt::boxed(StreamBody::new(endless)),
            )
        });
        // A 503 is peeked (its body might carry a fault code): the peek stops past its limit,
        // the 503 switches, and the alternate answers the same: a typed error, promptly.
        let started = Instant::now();
        let error = expect_error(service.oneshot(req(Method::GET, PRIMARY_URL)).await, "503 twice");
        assert_eq!(
            error.kind(),
            &FailoverErrorKind::Unavailable {
                status: StatusCode::SERVICE_UNAVAILABLE
            }
        );
        assert!(error.was_resent());
        assert!(started.elapsed() < Duration::from_secs(5));

        let (service, handle, _) = answering(|| {
            let endless =
                futures_util::stream::repeat_with(|| Ok(Frame::data(Bytes::from(vec![b'x'; CHUNK]))));
            status_with(
                500,
                &[(CONTENT_LENGTH, "10")],
                BodyExt::boxed(StreamBody::new(endless)),
            )
        });
        let response = service.oneshot(req(Method::GET, PRIMARY_URL)).await.unwrap();
        assert_eq!(response.status(), 500, "not JSON, no code: handed back");
        assert_eq!(handle.generation(), 0);
    })
    .await
}

/// An error body declared small whose frames are always ready and always empty never fills
/// the peek: the peek gives up at its timeout and the response comes back, as with a stalled
/// body. (Run on a thread of its own: a peek that never returns to the runtime would hold any
/// runtime's timer, `within` included.)
#[test]
fn an_error_body_of_endless_empty_frames_is_handed_back_after_the_peek_timeout() {
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (service, handle, _) = answering(|| {
                let endless = futures_util::stream::repeat_with(|| Ok(Frame::data(Bytes::new())));
                status_with(
                    500,
                    &[(CONTENT_LENGTH, "10")],
                    BodyExt::boxed(StreamBody::new(endless)),
                )
            });
            let started = Instant::now();
            let response = service.oneshot(req(Method::GET, PRIMARY_URL)).await.unwrap();
            let _ = done.send((response.status(), started.elapsed(), handle.generation()));
        });
    });
    let (status, elapsed, generation) = outcome
        .recv_timeout(Duration::from_secs(10))
        .expect("the call came back within 10 s");
    assert_eq!(status, 500, "judged by its head: handed back");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(generation, 0);
}

/// Truncated, not JSON, compressed: none is read as a failover fault; each comes back as sent.
#[tokio::test]
async fn truncated_non_json_and_compressed_error_bodies_come_back_as_sent() {
    within(10, async {
        // Truncated in process: the fault code cut short, then the body fails.
        let (service, handle, _) = answering(|| {
            let frames = futures_util::stream::iter([
                Ok(Frame::data(Bytes::from_static(br#"{"error":{"code":"0x8004B0"#))),
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "cut off")),
            ]);
            status_with(
                500,
                &[(CONTENT_LENGTH, "56")],
                BodyExt::boxed(StreamBody::new(frames)),
            )
        });
        let response = service.oneshot(req(Method::GET, PRIMARY_URL)).await.unwrap();
        assert_eq!(response.status(), 500);
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, Bytes::from_static(br#"{"error":{"code":"0x8004B0"#));
        let error = body.frame().await.unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(handle.generation(), 0);

        // Not JSON.
        let html = "<html><body>500 Internal Server Error 0x8004B065</body></html>";
        let (service, handle, _) = answering(move || status_with(500, &[(CONTENT_LENGTH, "62")], full(html)));
        let response = service.oneshot(req(Method::GET, PRIMARY_URL)).await.unwrap();
        assert_eq!(response.status(), 500);
        assert_eq!(text(response).await, html);
        assert_eq!(handle.generation(), 0);

        // Compressed: the failover fault, gzipped. The layer does not decompress, so it does not
        // see the code (a documented limit); the bytes come back untouched.
        let gzipped = gzip_stored(FAILOVER_FAULT.as_bytes());
        let body = gzipped.clone();
        let (service, handle, _) = answering(move || {
            let len = body.len().to_string();
            status_with(
                500,
                &[(CONTENT_ENCODING, "gzip"), (CONTENT_LENGTH, &len)],
                full(body.clone()),
            )
        });
        let response = service.oneshot(req(Method::GET, PRIMARY_URL)).await.unwrap();
        assert_eq!(response.status(), 500);
        assert_eq!(response.headers()[CONTENT_ENCODING], "gzip");
        assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), gzipped);
        assert_eq!(handle.generation(), 0);

        // The same fault, plain, is seen (so the cases above are not a broken peek): it fails
        // over, and the alternate answering the same makes a typed error.
        let (service, handle, _) = answering(|| {
            status_with(
                500,
                &[(CONTENT_LENGTH, &FAILOVER_FAULT.len().to_string())],
                full(FAILOVER_FAULT),
            )
        });
        let error = expect_error(
            service.oneshot(req(Method::GET, PRIMARY_URL)).await,
            "plain fault",
        );
        assert_eq!(
            error.kind(),
            &FailoverErrorKind::ServiceFault { code: -2147176347 }
        );
        assert_eq!(handle.active(), Side::Alternate);
    })
    .await
}

/// Truncated on the wire: a real server declares 100 bytes, sends the start of a fault body and
/// closes. hyper reports the body cut short; the 500 comes back with what arrived, then the error.
#[tokio::test]
async fn a_body_truncated_on_the_wire_comes_back_with_its_error() {
    within(10, async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let head = "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n";
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(br#"{"error":{"code":"0x8004B0"#).await;
                let _ = stream.shutdown().await;
            }
        });
        let pair = Pair::start().await;
        pair.resolver.map(PRIMARY_HOST, addr);
        let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
        let handle = layer.handle();
        let service = pair.through(layer);
        let response = send(&service, request(Method::GET, "/api/data/v9.2/WhoAmI")).await.unwrap();
        assert_eq!(response.status(), 500);
        let mut body = response.into_body();
        let mut got = Vec::new();
        let error = loop {
            match body.frame().await {
                Some(Ok(frame)) => got.extend_from_slice(&frame.into_data().unwrap()),
                Some(Err(error)) => break error,
                None => panic!("a truncated body must end with an error"),
            }
        };
        assert_eq!(got, br#"{"error":{"code":"0x8004B0"#);
        eprintln!("the truncated body ended with: {error}");
        assert_eq!(handle.generation(), 0);
        server.abort();
    })
    .await
}

/// A gzip member holding `data` in one stored (uncompressed) deflate block.
fn gzip_stored(data: &[u8]) -> Bytes {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let len = data.len() as u16;
    out.push(1); // final block, stored
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    Bytes::from(out)
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

// ---------------------------------------------------------------------------------------------
// Classifiers that never say "up"
// ---------------------------------------------------------------------------------------------

/// A classifier that calls every attempt an outage: each call is tried at most once per side
/// and ends with a typed error; calls keep alternating sides but none loops.
#[tokio::test]
async fn a_classifier_that_says_down_for_everything_still_terminates() {
    within(10, async {
        for kind in [DownKind::ConnectionLost, DownKind::NotFound] {
            let recorder = Recorder::default();
            let down = kind.clone();
            let layer = FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL).unwrap())
                .classifier(move |_: Outcome<'_>| Verdict::EndpointDown(down.clone()))
                .build()
                .unwrap();
            let handle = layer.handle();
            let service = recorded(layer, &recorder, ok_answer());
            const CALLS: usize = 200;
            for i in 0..CALLS {
                let method = if i % 2 == 0 { Method::GET } else { Method::POST };
                let mut request = req(method.clone(), &format!("{PRIMARY_URL}/x"));
                *request.body_mut() = Full::new(Bytes::from_static(b"{}"));
                let error = expect_error(service.clone().oneshot(request).await, "always down");
                assert_eq!(
                    error.kind(),
                    &match kind {
                        DownKind::NotFound => FailoverErrorKind::EndpointNotFound,
                        _ => FailoverErrorKind::ConnectionLost,
                    },
                    "{kind:?} {method}: {error}"
                );
                if kind == DownKind::NotFound {
                    assert!(!error.possibly_applied(), "{error}");
                }
            }
            let reached = recorder.all();
            assert!(reached.len() <= 2 * CALLS, "{kind:?}: {} attempts", reached.len());
            assert!(reached.iter().all(|r| {
                let host = r.uri.host().unwrap();
                host == PRIMARY_HOST || host == ALTERNATE_HOST
            }));
            eprintln!(
                "{kind:?}: {CALLS} calls, {} attempts, {} switches",
                reached.len(),
                handle.counters().switches
            );
        }
    })
    .await
}

/// A classifier that calls everything throttling: each call retries at most as the policy
/// allows (bounded by the throttling budget) and then hands the answer back.
#[tokio::test]
async fn a_classifier_that_says_throttled_for_everything_still_terminates() {
    within(10, async {
        let recorder = Recorder::default();
        let layer = FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL).unwrap())
            .classifier(|_: Outcome<'_>| Verdict::Throttled {
                retry_after: Some(Duration::ZERO),
            })
            .build()
            .unwrap();
        let handle = layer.handle();
        let service = recorded(layer, &recorder, ok_answer());
        const CALLS: usize = 100;
        for _ in 0..CALLS {
            let response = service
                .clone()
                .oneshot(req(Method::GET, PRIMARY_URL))
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
        assert!(recorder.count() <= 4 * CALLS, "{} attempts", recorder.count());
        assert_eq!(handle.generation(), 0, "throttling never switches");
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Retry-After and limits at the edges
// ---------------------------------------------------------------------------------------------

/// 429 with odd `Retry-After` values, one throttling retry allowed, waits of at most 200 ms:
/// negative, garbage and empty mean "none given" (a short backoff, then one retry); enormous
/// values and far-future dates exceed the limit, so the 429 comes back at once; a past date
/// means "now".
#[tokio::test]
async fn odd_retry_after_values_neither_panic_nor_hang() {
    within(15, async {
        let cases: &[(&str, usize)] = &[
            ("-5", 2),
            ("soon", 2),
            ("", 2),
            ("1.5", 2),
            ("99999999999999999999999999", 1),
            ("18446744073709551615", 1),
            ("Fri, 31 Dec 9999 23:59:59 GMT", 1),
            ("Thu, 01 Jan 1970 00:00:00 GMT", 2),
            (" 3 ", 1),
        ];
        for &(value, attempts) in cases {
            let recorder = Recorder::default();
            let layer = FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL).unwrap())
                .default_policy(
                    RetryPolicy::by_method()
                        .throttle_retries(1)
                        .max_throttle_delay(Duration::from_millis(200)),
                )
                .build()
                .unwrap();
            let value_owned = value.to_string();
            let service = recorded(
                layer,
                &recorder,
                Arc::new(move |_| status_with(429, &[(RETRY_AFTER, &value_owned)], full(""))),
            );
            let started = Instant::now();
            let response = service.oneshot(req(Method::GET, PRIMARY_URL)).await.unwrap();
            assert_eq!(response.status(), 429, "Retry-After {value:?}");
            assert_eq!(recorder.count(), attempts, "Retry-After {value:?}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "Retry-After {value:?}"
            );
        }
    })
    .await
}

/// Limits set to `Duration::MAX`: an enormous `Retry-After` with no limit on the wait but a
/// deadline, and a deadline of `Duration::MAX` itself. No arithmetic overflow: the first hands
/// the 429 back (the wait would pass the deadline), the second is no deadline at all.
#[tokio::test]
async fn limits_at_duration_max_do_not_overflow() {
    within(10, async {
        let recorder = Recorder::default();
        let layer = FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL).unwrap())
            .default_policy(
                RetryPolicy::by_method()
                    .max_throttle_delay(Duration::MAX)
                    .deadline(Duration::from_secs(5)),
            )
            .build()
            .unwrap();
        let service = recorded(
            layer,
            &recorder,
            Arc::new(|_| status_with(429, &[(RETRY_AFTER, "99999999999999999999999999")], full(""))),
        );
        let response = service.oneshot(req(Method::GET, PRIMARY_URL)).await.unwrap();
        assert_eq!(response.status(), 429);
        assert_eq!(recorder.count(), 1);

        let recorder = Recorder::default();
        let layer = FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL).unwrap())
            .default_policy(RetryPolicy::by_method().deadline(Duration::MAX))
            .build()
            .unwrap();
        let service = recorded(layer, &recorder, ok_answer());
        let response = service.oneshot(req(Method::GET, PRIMARY_URL)).await.unwrap();
        assert_eq!(response.status(), 200);
    })
    .await
}

/// Failback knobs at `Duration::MAX`: the longest hold, doubled after a failed return, and the
/// longest probe interval. Nothing overflows: the hold saturates (no second failback), and the
/// probe task waits instead of panicking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_knobs_at_duration_max_do_not_overflow() {
    within(10, async {
        let primary_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let up = primary_up.clone();
        let answer: Answer = Arc::new(move |request| {
            let down =
                request.uri().host() == Some(PRIMARY_HOST) && !up.load(std::sync::atomic::Ordering::SeqCst);
            status_with(if down { 503 } else { 200 }, &[], full(""))
        });
        let layer = FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL).unwrap())
            .failback(
                tower_failover::Failback::new()
                    .interval(Duration::from_millis(10))
                    .min_time_on_alternate(Duration::ZERO)
                    .healthy_probes(1)
                    .hold(Duration::MAX, Duration::MAX),
            )
            .build()
            .unwrap();
        let handle = layer.handle();
        let recorder = Recorder::default();
        let service = recorded(layer, &recorder, answer.clone());
        let call = || {
            service
                .clone()
                .oneshot(req(Method::GET, &format!("{PRIMARY_URL}/x")))
        };

        assert_eq!(call().await.unwrap().status(), 200);
        assert_eq!(handle.active(), Side::Alternate);
        primary_up.store(true, std::sync::atomic::Ordering::SeqCst);
        wait_until(5, "the failback", || handle.active() == Side::Primary).await;
        // The return fails at once: the hold (already the longest) doubles, saturating.
        primary_up.store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(call().await.unwrap().status(), 200);
        assert_eq!(handle.active(), Side::Alternate);
        primary_up.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(handle.active(), Side::Alternate, "held: no second failback");

        // The longest probe interval: the probe task starts and waits.
        let layer = FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL).unwrap())
            .failback(tower_failover::Failback::new().interval(Duration::MAX))
            .build()
            .unwrap();
        let handle = layer.handle();
        primary_up.store(false, std::sync::atomic::Ordering::SeqCst);
        let service = recorded(layer, &recorder, answer);
        assert_eq!(
            service
                .oneshot(req(Method::GET, PRIMARY_URL))
                .await
                .unwrap()
                .status(),
            200
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(handle.probing(), "the probe task is waiting, not dead");
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Properties of the `--s` rule and of routing
// ---------------------------------------------------------------------------------------------

/// A DNS label that is not an alternate's (does not end in `--s`).
fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9]{0,20}",
        "[a-z][a-z0-9]{0,8}-[a-z0-9]{1,8}",
        "xn--[a-z0-9]{1,12}-[a-z0-9]{3}",
    ]
    .prop_filter("not an alternate", |l| !l.ends_with("--s"))
}

#[derive(Debug, Clone)]
struct Primary {
    scheme: &'static str,
    first: String,
    rest: Vec<String>,
    port: Option<u16>,
    upper: Vec<bool>,
    trailing_dot: bool,
}

impl Primary {
    fn host(&self) -> String {
        let mut host = self.first.clone();
        for label in &self.rest {
            host.push('.');
            host.push_str(label);
        }
        host
    }

    /// The URI as a person might type it: some letters upper case, maybe a trailing dot.
    fn url(&self) -> String {
        let host: String = self
            .host()
            .chars()
            .zip(self.upper.iter().cycle())
            .map(|(c, &up)| if up { c.to_ascii_uppercase() } else { c })
            .collect();
        let dot = if self.trailing_dot { "." } else { "" };
        match self.port {
            Some(port) => format!("{}://{host}{dot}:{port}", self.scheme),
            None => format!("{}://{host}{dot}", self.scheme),
        }
    }
}

fn primary() -> impl Strategy<Value = Primary> {
    (
        prop_oneof![Just("http"), Just("https")],
        label(),
        proptest::collection::vec(label(), 0..4),
        proptest::option::of(1u16..=65535),
        proptest::collection::vec(any::<bool>(), 1..8),
        any::<bool>(),
    )
        .prop_map(|(scheme, first, rest, port, upper, trailing_dot)| Primary {
            scheme,
            first,
            rest,
            port,
            upper,
            trailing_dot,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Round trip: the alternate is the primary's first label + `--s` + the rest, with the same
    /// scheme and port; both parse back to themselves.
    #[test]
    fn the_s_rule_round_trips(p in primary()) {
        let pair = Endpoints::dynamics(&p.url()).unwrap();
        let alternate = pair.alternate().unwrap();
        let mut expected = format!("{}--s", p.first);
        for label in &p.rest {
            expected.push('.');
            expected.push_str(label);
        }
        prop_assert_eq!(alternate.host(), expected.as_str());
        let primary_host = p.host();
        prop_assert_eq!(pair.primary().host(), primary_host.as_str());
        prop_assert_eq!(alternate.scheme(), pair.primary().scheme());
        prop_assert_eq!(alternate.port(), pair.primary().port());
        prop_assert_eq!(&Endpoint::parse(&alternate.to_string()).unwrap(), alternate);
        prop_assert_eq!(&Endpoint::parse(&pair.primary().to_string()).unwrap(), pair.primary());
    }

    /// Idempotence: the rule is never applied twice. An alternate given as a primary is
    /// refused, in any case.
    #[test]
    fn the_s_rule_is_never_applied_twice(p in primary()) {
        let pair = Endpoints::dynamics(&p.url()).unwrap();
        let alternate = pair.alternate().unwrap();
        let shouted = format!("{}://{}", alternate.scheme(), alternate.authority().as_str().to_ascii_uppercase());
        for input in [alternate.to_string(), shouted] {
            let error = Endpoints::dynamics(&input).unwrap_err().to_string();
            prop_assert!(error.contains("already an alternate"), "{}: {}", input, error);
        }
    }

    /// Routing through the layer: requests naming either endpoint (any case, trailing dot,
    /// explicit default port) reach the active endpoint and never a host outside the pair;
    /// requests naming anything else reach the inner service exactly as sent.
    #[test]
    fn routing_stays_within_the_pair_and_leaves_other_hosts_alone(
        p in primary(),
        requests in proptest::collection::vec((0u8..6, "[a-z0-9/]{0,12}", any::<bool>()), 1..12),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let pair = Endpoints::dynamics(&p.url()).unwrap();
        let primary_host = pair.primary().host().to_string();
        let alternate_host = pair.alternate().unwrap().host().to_string();
        let default_port = if p.scheme == "https" { 443 } else { 80 };
        let port = p.port.unwrap_or(default_port);
        let (other_scheme, other_default) = if p.scheme == "https" { ("http", 80) } else { ("https", 443) };
        let layer = FailoverLayer::new(pair.clone());
        let handle = layer.handle();
        let recorder = Recorder::default();
        let service = recorded(layer, &recorder, ok_answer());
        runtime.block_on(async {
            for (shape, path, switch) in requests {
                if switch {
                    handle.switch_endpoint();
                }
                let path = format!("/{path}");
                let (uri, routed) = match shape {
                    0 => (format!("{}://{}:{port}{path}", p.scheme, primary_host.to_ascii_uppercase()), true),
                    1 => (format!("{}://{}.:{port}{path}", p.scheme, alternate_host), true),
                    2 => (format!("{}://x{}:{port}{path}", p.scheme, primary_host), false),
                    3 => (format!("{}://{}.evil.example:{port}{path}", p.scheme, primary_host), false),
                    4 => (format!("{}://{}:{}{path}", p.scheme, primary_host, port.wrapping_add(1).max(1)), false),
                    // The primary's host with the other scheme and that scheme's default port:
                    // the same endpoint (host and port) only if that is the configured port.
                    _ => (format!("{other_scheme}://{primary_host}{path}"), other_default == port),
                };
                let sent: Uri = uri.parse().unwrap();
                let mut request = req(Method::GET, &uri);
                request.headers_mut().insert(HOST, HeaderValue::from_str(sent.authority().unwrap().as_str()).unwrap());
                service.clone().oneshot(request).await.unwrap();
                let reached = recorder.last();
                if routed {
                    let active = handle.active_endpoint();
                    // The configured authority, trailing dot and all, is what goes out.
                    let host = reached.uri.host().unwrap().trim_end_matches('.');
                    assert!(host == primary_host || host == alternate_host, "{uri} reached {}", reached.uri);
                    assert_eq!(reached.uri.authority(), Some(active.authority()), "{}", uri);
                    assert_eq!(reached.uri.path(), sent.path());
                    assert_eq!(reached.host.as_ref().map(|h| h.as_bytes()), Some(active.authority().as_str().as_bytes()));
                } else {
                    assert_eq!(&reached.uri, &sent, "{} must pass through untouched", uri);
                    assert_eq!(reached.host.as_ref().map(|h| h.as_bytes()), Some(sent.authority().unwrap().as_str().as_bytes()));
                }
            }
        });
    }
}
