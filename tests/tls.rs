//! hyper-util's client over TLS (hyper-rustls): after a switch the client must connect with
//! the alternate's name in SNI and verify the alternate's certificate. Each server holds only
//! its own name's certificate, made at test time under a test root, so a client that kept
//! the primary's name would fail the handshake.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::{send_ok, within, Resolver, ALTERNATE_HOST, PRIMARY_HOST};
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_failover::{Endpoints, FailoverErrorKind, FailoverLayer, ReplayBody, Side};

/// A test root and a leaf certificate per name, signed by it.
struct TestPki {
    root: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestPki {
    fn new() -> TestPki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).unwrap().der().clone();
        TestPki {
            root,
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(&self, name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone()], key)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An HTTPS server answering with the name it serves; it holds only `name`'s certificate.
struct TlsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsServer {
    async fn start(pki: &TestPki, name: &'static str) -> TlsServer {
        let (chain, key) = pki.leaf(name);
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    // A client that asks for another name fails the handshake here.
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().map(str::to_string);
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let sni = sni.clone();
                        async move {
                            let host = request
                                .headers()
                                .get(http::header::HOST)
                                .and_then(|h| h.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let body = format!(
                                r#"{{"server":"{name}","sni":"{}","host":"{host}"}}"#,
                                sni.unwrap_or_default()
                            );
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsServer { addr, task }
    }

    /// Closes the listener and every connection: a real outage.
    fn kill(&self) {
        self.task.abort();
    }
}

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
        let resolver = Resolver::new();
        resolver.map(PRIMARY_HOST, primary.addr);
        resolver.map(ALTERNATE_HOST, alternate.addr);

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
        let resolver = Resolver::new();
        resolver.map(PRIMARY_HOST, primary.addr);
        resolver.map(ALTERNATE_HOST, impostor.addr);

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
