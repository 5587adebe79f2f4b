//! Secrets a request carries (credentials in an endpoint URL, a query, a header marked
//! sensitive, an `Authorization` or `Cookie` value) must not come out in what the layer shows:
//! its errors, its data-loss reports, the re-sent request's flags.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{HeaderName, AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_failover::{Endpoint, Endpoints, FailoverLayer, ReplayBody, WriteKey};

const SECRET: &str = "hunter2";

/// Every way to configure an endpoint, given `uri`: the error (as shown and as debugged).
fn config_errors(uri: &str) -> Vec<String> {
    let mut shown = Vec::new();
    let mut push = |result: Result<(), tower_failover::ConfigError>| {
        let error = result.expect_err(uri);
        shown.push(error.to_string());
        shown.push(format!("{error:?}"));
    };
    push(Endpoint::parse(uri).map(drop));
    push(Endpoints::dynamics(uri).map(drop));
    push(Endpoints::primary_only(uri).map(drop));
    push(Endpoints::new(uri, "https://dr.example.net").map(drop));
    push(Endpoints::new("https://api.example.com", uri).map(drop));
    shown
}

#[test]
fn a_refused_endpoint_is_not_echoed_with_its_password_or_query() {
    for uri in [
        // User information is refused: the message says so, without the password.
        "https://admin:hunter2@api.example.com",
        "https://hunter2@api.example.com",
        "https://admin:hunter2@api.example.com:8443/",
        // A query is refused (an endpoint is a scheme and a host): without its values.
        "https://api.example.com/?api-key=hunter2",
        "https://api.example.com?api-key=hunter2",
        "https://api.example.com/v1?code=hunter2",
        // Refused for another reason, the credentials still not shown.
        "ftp://admin:hunter2@files.example.com",
        "https://admin:hunter2@api.example.com:99999",
        "ftp://files.example.com/?token=hunter2",
    ] {
        for message in config_errors(uri) {
            assert!(!message.contains(SECRET), "{uri}: {message}");
            // Still says what is wrong.
            assert!(
                message.contains("api.example.com") || message.contains("files.example.com"),
                "{message}"
            );
        }
    }
    let message = Endpoint::parse("https://admin:hunter2@api.example.com")
        .unwrap_err()
        .to_string();
    assert!(message.contains("user information"), "{message}");
    let message = Endpoint::parse("https://api.example.com/?api-key=hunter2")
        .unwrap_err()
        .to_string();
    assert!(message.contains("https://api.example.com"), "{message}");
}

/// An inner service that answers 200 (or what `status` says for a host) and keeps every
/// request head it saw. A stand-in, not a server: what these tests look at is the
/// `HeaderValue`'s sensitive flag on the request the client is handed, which never reaches
/// the wire.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<http::request::Parts>>>);

impl Seen {
    fn service(
        &self,
        status: impl Fn(&str) -> u16 + Clone + Send + 'static,
    ) -> impl Service<
        Request<ReplayBody<Full<Bytes>>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
           + Send {
        let seen = self.0.clone();
        tower::service_fn(move |request: Request<ReplayBody<Full<Bytes>>>| {
            let (parts, _) = request.into_parts();
            let status = status(parts.uri.host().unwrap_or_default());
            seen.lock().unwrap().push(parts);
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
            }
        })
    }
}

fn post(headers: &[(HeaderName, HeaderValue)]) -> Request<Full<Bytes>> {
    let mut request = Request::post("https://contoso.api.crm.dynamics.com/api/data/v9.2/accounts")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    request
}

fn sensitive(text: &str) -> HeaderValue {
    let mut value = HeaderValue::from_str(text).unwrap();
    value.set_sensitive(true);
    value
}

#[tokio::test]
async fn a_key_header_marked_sensitive_is_not_in_the_report() {
    let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    let handle = layer.handle();
    let seen = Seen::default();
    let mut service = ServiceBuilder::new().layer(layer).service(seen.service(|_| 200));
    let key = HeaderName::from_static("idempotency-key");
    // A sensitive key, alone; then with a `WriteKey` the application gave for the report.
    let alone = post(&[(key.clone(), sensitive(SECRET))]);
    let mut with_app_key = post(&[(key.clone(), sensitive(SECRET))]);
    with_app_key.extensions_mut().insert(WriteKey::new("account:42"));
    // A key that is not sensitive is reported as it is.
    let plain = post(&[(key, HeaderValue::from_static("create-contoso"))]);
    for request in [alone, with_app_key, plain] {
        service.ready().await.unwrap().call(request).await.unwrap();
    }

    handle.switch_endpoint();
    let report = handle.last_report().unwrap();
    let keys: Vec<_> = report.acknowledged.iter().map(|w| w.key.as_deref()).collect();
    assert_eq!(keys, [None, Some("account:42"), Some("create-contoso")]);
    for shown in [
        format!("{report:?}"),
        format!("{:?}", handle.state()),
        report.to_string(),
    ] {
        assert!(!shown.contains(SECRET), "{shown}");
    }
    // The request itself still carried it, flagged sensitive.
    let sent = seen.0.lock().unwrap();
    assert_eq!(sent[0].headers["idempotency-key"], SECRET);
    assert!(sent[0].headers["idempotency-key"].is_sensitive());
}

#[test]
fn credential_headers_cannot_name_writes_in_the_report() {
    for name in [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE] {
        let err =
            FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
                .write_key_header(name.clone())
                .build()
                .unwrap_err();
        let message = err.to_string();
        assert!(message.contains(name.as_str()), "{message}");
        assert!(
            message.contains("idempotency-key"),
            "says what to use instead: {message}"
        );
    }
    // Turned off, the ledger records nothing: no reason to refuse.
    assert!(
        FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
            .write_key_header(AUTHORIZATION)
            .data_loss_report(false)
            .build()
            .is_ok()
    );
}

#[tokio::test]
async fn a_re_send_keeps_every_sensitive_flag() {
    let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    let seen = Seen::default();
    // The primary answers 503; the GET is re-sent on the alternate.
    let inner = seen.service(|host| {
        if host == "contoso.api.crm.dynamics.com" {
            503
        } else {
            200
        }
    });
    let mut service = ServiceBuilder::new().layer(layer).service(inner);
    let mut request =
        Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI?api-key=hunter2")
            .body(Full::new(Bytes::new()))
            .unwrap();
    request
        .headers_mut()
        .insert(AUTHORIZATION, sensitive("Bearer hunter2"));
    request.headers_mut().append(COOKIE, sensitive("session=hunter2"));
    request
        .headers_mut()
        .append(COOKIE, HeaderValue::from_static("theme=dark"));
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), 200);

    let sent = seen.0.lock().unwrap();
    assert_eq!(sent.len(), 2);
    let resent = &sent[1];
    assert_eq!(resent.uri.host(), Some("contoso--s.api.crm.dynamics.com"));
    assert!(resent.headers[AUTHORIZATION].is_sensitive());
    let cookies: Vec<_> = resent
        .headers
        .get_all(COOKIE)
        .iter()
        .map(|v| (v.to_str().unwrap(), v.is_sensitive()))
        .collect();
    assert_eq!(cookies, [("session=hunter2", true), ("theme=dark", false)]);
}

/// reqwest writes the request's URL into its errors. Through the middleware that URL loses
/// its query, as the report's paths do, unless the layer was told to record queries; also
/// when a middleware below handed reqwest's error on as its own.
#[cfg(feature = "reqwest")]
#[tokio::test]
async fn a_reqwest_error_shows_the_url_without_its_query() {
    use support::failover_error;

    // Two loopback ports nothing listens on: every attempt is refused at connect.
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (primary, alternate) = (
        format!("http://127.0.0.1:{}", free_port()),
        format!("http://127.0.0.1:{}", free_port()),
    );
    for (record_query, below) in [(false, false), (true, false), (false, true), (true, true)] {
        let layer = FailoverLayer::builder(Endpoints::new(&primary, &alternate).unwrap())
            .record_query(record_query)
            .build()
            .unwrap();
        let mut client =
            reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(layer.middleware());
        if below {
            client = client.with(support::AsMiddlewareError);
        }
        let client = client.build();
        let error = client
            .get(format!("{primary}/api/data?api-key=hunter2"))
            .send()
            .await
            .unwrap_err();
        let error = failover_error(&error);
        assert!(error.was_resent());
        for shown in [error.to_string(), format!("{error:?}")] {
            assert_eq!(shown.contains(SECRET), record_query, "{shown}");
            assert!(shown.contains("/api/data"), "{shown}");
        }
        let url = |attempt: &tower_failover::AttemptError| {
            attempt
                .error()
                .and_then(|e| e.downcast_ref::<reqwest::Error>())
                .and_then(|e| e.url())
                .map(|u| u.to_string())
        };
        let expected = |base: &str| {
            Some(format!(
                "{base}/api/data{}",
                if record_query { "?api-key=hunter2" } else { "" }
            ))
        };
        assert_eq!(url(error.first_attempt().unwrap()), expected(&primary));
        assert_eq!(url(error.last_attempt()), expected(&alternate));
    }
}

/// A password is often a generated string with `/`, `?` or `#` in it, written into the URL
/// unencoded: the user information then runs past where a URI parser ends the authority, but
/// it is still a credential and must not be echoed.
#[test]
fn a_password_with_a_slash_question_mark_or_hash_is_not_echoed() {
    for uri in [
        "https://admin:hunter2/x@api.example.com",
        "https://admin:hunter2?x@api.example.com",
        "https://admin:hunter2#x@api.example.com",
        "https://admin:x/hunter2@api.example.com/",
        "https://hunter2/@api.example.com",
    ] {
        for message in config_errors(uri) {
            assert!(!message.contains(SECRET), "{uri}: {message}");
        }
    }
}
