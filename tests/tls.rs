//! hyper-util's client over TLS (hyper-rustls): after a switch the client must connect with
//! the alternate's name in SNI and verify the alternate's certificate. Each server holds only
//! its own name's certificate, made at test time under a test root, so a client that kept
//! the primary's name would fail the handshake.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::tls::{provider, TestPki, TlsServer};
use support::{send_ok, within, Resolver, ALTERNATE_HOST, PRIMARY_HOST};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_failover::{Endpoints, FailoverErrorKind, FailoverLayer, ReplayBody, Side};

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector<Resolver>>, ReplayBody<Full<Bytes>>>;

fn https_client(pki: &TestPki, resolver: &Resolver) -> HttpsClient {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.root.clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = resolver.connector();
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("https://{PRIMARY_HOST}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn after_the_switch_the_client_verifies_the_alternate_by_its_own_name() {
    within(15, async {
        let pki = TestPki::new();
        let primary = TlsServer::start(&pki, PRIMARY_HOST).await;
        let alternate = TlsServer::start(&pki, ALTERNATE_HOST).await;
        let resolver = Resolver::pair(primary.addr, alternate.addr);

        let layer = FailoverLayer::new(Endpoints::dynamics(&format!("https://{PRIMARY_HOST}")).unwrap());
        let handle = layer.handle();
        let service = ServiceBuilder::new()
            .layer(layer)
            .service(https_client(&pki, &resolver));

        let first = send_ok(&service, get("/api/data/v9.2/WhoAmI")).await;
        assert!(
            first.contains(&format!(r#""server":"{PRIMARY_HOST}""#)),
            "{first}"
        );
        assert!(first.contains(&format!(r#""sni":"{PRIMARY_HOST}""#)), "{first}");

        primary.kill();
        let second = send_ok(&service, get("/api/data/v9.2/WhoAmI")).await;
        // The alternate only has its own certificate: this answer proves the handshake used
        // its name and the client verified it against the test root.
        assert!(
            second.contains(&format!(r#""server":"{ALTERNATE_HOST}""#)),
            "{second}"
        );
        assert!(
            second.contains(&format!(r#""sni":"{ALTERNATE_HOST}""#)),
            "{second}"
        );
        assert!(
            second.contains(&format!(r#""host":"{ALTERNATE_HOST}""#)),
            "{second}"
        );
        assert_eq!(handle.active(), Side::Alternate);
    })
    .await
}

#[tokio::test]
async fn an_alternate_with_the_wrong_certificate_is_refused() {
    // The check above can fail: an alternate that presents the primary's certificate is not
    // trusted, so the re-send fails and the caller gets a typed error instead of a response.
    within(15, async {
        let pki = TestPki::new();
        let primary = TlsServer::start(&pki, PRIMARY_HOST).await;
        let impostor = TlsServer::start(&pki, PRIMARY_HOST).await;
        let resolver = Resolver::pair(primary.addr, impostor.addr);

        let layer = FailoverLayer::new(Endpoints::dynamics(&format!("https://{PRIMARY_HOST}")).unwrap());
        let mut service = ServiceBuilder::new()
            .layer(layer)
            .service(https_client(&pki, &resolver));
        primary.kill();
        let error = service
            .ready()
            .await
            .unwrap()
            .call(get("/api/data/v9.2/WhoAmI"))
            .await
            .unwrap_err();
        assert!(error.was_resent(), "{error}");
        let last = error.last_attempt();
        assert_eq!(last.endpoint().unwrap().host(), ALTERNATE_HOST);
        // A certificate mismatch is a connect-phase failure of the alternate.
        assert!(
            matches!(
                error.kind(),
                FailoverErrorKind::EndpointNotFound | FailoverErrorKind::Inner
            ),
            "{error}"
        );
        let text = format!("{error:?}");
        assert!(text.to_lowercase().contains("certificate"), "{text}");
    })
    .await
}
