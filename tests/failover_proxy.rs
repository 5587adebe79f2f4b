//! The failover proxy example, seen from a program that knows nothing of failover: a plain
//! hyper-util client (no failover layer) calls the proxy with relative paths, reads its
//! Server-Sent Events and its status, and pushes bodies through it both ways.

// The example brings the loopback servers (`tests/support`) with it.
#[path = "../examples/failover_proxy.rs"]
mod failover_proxy;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tower_failover::Endpoints;

use failover_proxy::support::*;

/// The caller: a plain client, as a program in any language would have.
type Plain = Client<HttpConnector, Full<Bytes>>;
/// The same, for uploads made of chunks with no declared length.
type Streaming = Client<HttpConnector, BoxBody<Bytes, Infallible>>;

struct Running {
    pair: Pair,
    base: String,
    plain: Plain,
    streaming: Streaming,
}

/// A fresh pair, and the proxy in front of it on a loopback port, reaching the pair's names
/// through the test resolver.
async fn start() -> Running {
    let pair = Pair::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let endpoints = Endpoints::dynamics(PRIMARY_URL).unwrap();
    let connector = pair.resolver.connector();
    tokio::spawn(async move {
        if let Err(error) = failover_proxy::run_proxy(listener, endpoints, connector).await {
            panic!("proxy stopped: {error}");
        }
    });
    Running {
        pair,
        base,
        plain: Client::builder(TokioExecutor::new()).build_http(),
        streaming: Client::builder(TokioExecutor::new()).build_http(),
    }
}

impl Running {
    async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Response<Incoming> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.plain
            .request(request.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap()
    }

    async fn json(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
        let response = self.send(method, path, headers).await;
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
        (status, value)
    }

    async fn events(&self) -> Events {
        let response = self.send(Method::GET, "/_failover/events", &[]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Events {
            body: response.into_body(),
            pending: Vec::new(),
        }
    }
}

/// An SSE stream read as it arrives, one event at a time.
struct Events {
    body: Incoming,
    pending: Vec<u8>,
}

impl Events {
    /// The next event's name and JSON data, waiting at most `seconds`.
    async fn next(&mut self, seconds: u64) -> (String, Value) {
        loop {
            if let Some(at) = self.pending.windows(2).position(|pair| pair == b"\n\n") {
                let block: Vec<u8> = self.pending.drain(..at + 2).collect();
                let block = String::from_utf8(block).expect("SSE is UTF-8");
                let mut name = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        name = Some(value.trim_start().to_string());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                // Comments (keep-alives) have neither.
                if let Some(name) = name {
                    let data = serde_json::from_str(&data)
                        .unwrap_or_else(|e| panic!("{name}: bad JSON {e}: {data}"));
                    return (name, data);
                }
                continue;
            }
            let frame = tokio::time::timeout(Duration::from_secs(seconds), self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("no SSE event within {seconds} s"))
                .expect("the event stream ended")
                .expect("the event stream failed");
            if let Ok(data) = frame.into_data() {
                self.pending.extend_from_slice(&data);
            }
        }
    }
}

/// Answers with the request's headers, so the test sees what the proxy forwarded.
fn echo_headers(name: &'static str) -> Behavior {
    custom(move |received: Received| async move {
        let headers: serde_json::Map<String, Value> = received
            .head
            .headers
            .iter()
            .map(|(key, value)| (key.as_str().to_string(), json!(value.to_str().unwrap_or("?"))))
            .collect();
        json(
            StatusCode::OK,
            json!({ "server": name, "headers": headers }).to_string(),
        )
    })
}

/// `len` bytes that are not all alike, so a lost or repeated chunk shows in the digest.
fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// `payload` as 16 KiB chunks with a pause between them and no declared length (so it goes
/// out chunked, as an upload of unknown size does).
fn chunked(payload: Bytes) -> BoxBody<Bytes, Infallible> {
    let chunks: Vec<Bytes> = payload.chunks(16 * 1024).map(|c| payload.slice_ref(c)).collect();
    let stream = futures_util::stream::unfold(chunks.into_iter(), |mut rest| async move {
        let chunk = rest.next()?;
        tokio::time::sleep(Duration::from_millis(1)).await;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), rest))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

#[tokio::test]
async fn a_switch_reaches_plain_clients_over_sse_and_status() {
    within(20, async {
        let proxy = start().await;
        let mut events = proxy.events().await;
        // The greeting says the subscription is in place: no later switch can be missed.
        let (name, state) = events.next(5).await;
        assert_eq!(name, "State");
        assert_eq!(state["active"], "primary");
        assert_eq!(state["generation"], 0);

        // Forwarded to the primary under its own name, without the caller's per-hop headers.
        proxy.pair.primary.set(echo_headers(PRIMARY_HOST));
        let (status, body) = proxy
            .json(
                Method::GET,
                "/api/data/v9.2/WhoAmI?$select=UserId",
                &[
                    ("connection", "keep-alive, x-per-hop"),
                    ("x-per-hop", "dropped"),
                    ("keep-alive", "timeout=5"),
                    ("x-end-to-end", "kept"),
                ],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["server"], PRIMARY_HOST);
        let forwarded = &body["headers"];
        assert_eq!(forwarded["host"], PRIMARY_HOST, "{forwarded}");
        assert_eq!(forwarded["x-end-to-end"], "kept", "{forwarded}");
        for dropped in ["x-per-hop", "keep-alive", "x-failover-policy"] {
            assert!(
                forwarded.get(dropped).is_none(),
                "{dropped} forwarded: {forwarded}"
            );
        }
        assert_eq!(proxy.pair.primary.seen()[0].path, "/api/data/v9.2/WhoAmI");

        proxy.pair.primary.kill().await;
        let (status, body) = proxy.json(Method::GET, "/api/data/v9.2/WhoAmI", &[]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["server"], ALTERNATE_HOST, "{body}");
        assert_eq!(
            proxy.pair.alternate.seen()[0].host.as_deref(),
            Some(ALTERNATE_HOST)
        );

        let (name, required) = events.next(5).await;
        assert_eq!(name, "SwitchRequired", "{required}");
        assert_eq!(required["previous"], PRIMARY_URL);
        assert_eq!(required["new"], ALTERNATE_URL);
        assert_eq!(required["new_side"], "alternate");
        assert!(
            required["cause"].as_str().is_some_and(|c| !c.is_empty()),
            "{required}"
        );
        let (name, switched) = events.next(5).await;
        assert_eq!(name, "Switched", "{switched}");
        assert_eq!(switched["previous"], PRIMARY_URL);
        assert_eq!(switched["new"], ALTERNATE_URL);
        assert_eq!(switched["cause"], required["cause"]);
        let report = &switched["report"];
        assert_eq!(report["from"], PRIMARY_URL, "{switched}");
        assert_eq!(report["to"], ALTERNATE_URL, "{switched}");
        assert_eq!(report["acknowledged_count"], 0, "{switched}");

        let (status, state) = proxy.json(Method::GET, "/_failover/status", &[]).await;
        assert_eq!(status, 200);
        assert_eq!(state["active"], "alternate", "{state}");
        assert_eq!(state["endpoint"], ALTERNATE_URL, "{state}");
        assert_eq!(state["generation"], 1, "{state}");
        assert_eq!(state["counters"]["switches"], 1, "{state}");
        assert_eq!(state["counters"]["failover_resends"], 1, "{state}");
        assert_eq!(state["last_report"]["from"], PRIMARY_URL, "{state}");
    })
    .await
}

#[tokio::test]
async fn bodies_stream_through_both_ways() {
    within(20, async {
        let proxy = start().await;

        // 256 KiB up, in chunks, four times the layer's replay cap.
        let upload = pattern(256 * 1024, 7);
        let request = Request::post(format!("{}/api/data/v9.2/annotations", proxy.base))
            .header("content-type", "application/octet-stream")
            .header("idempotency-key", "upload-1")
            .body(chunked(upload.clone()))
            .unwrap();
        let response = proxy.streaming.request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
        let seen = proxy.pair.primary.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].body_len, upload.len());
        assert_eq!(seen[0].body_sha256, digest(&upload));
        assert_eq!(seen[0].idempotency_key.as_deref(), Some("upload-1"));
        assert_eq!(seen[0].host.as_deref(), Some(PRIMARY_HOST));

        // 1 MiB down.
        let download = pattern(1024 * 1024, 3);
        let served = download.clone();
        proxy.pair.primary.set(custom(move |_| {
            let body = served.clone();
            async move {
                Response::builder()
                    .status(200)
                    .header("content-type", "application/octet-stream")
                    .body(Full::new(body))
                    .unwrap()
            }
        }));
        let response = proxy
            .send(Method::GET, "/api/data/v9.2/annotations(1)/documentbody", &[])
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-length"],
            download.len().to_string().as_str()
        );
        let received = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(received.len(), download.len());
        assert_eq!(digest(&received), digest(&download));
    })
    .await
}

#[tokio::test]
async fn an_upload_refused_at_connect_is_resent_whole_on_the_alternate() {
    within(20, async {
        let proxy = start().await;
        // Down before the first call: the connection is refused, so no byte of the body has
        // left and the layer may send the whole stream to the alternate, cap or no cap.
        proxy.pair.primary.kill().await;
        let upload = pattern(256 * 1024, 11);
        let request = Request::post(format!("{}/api/data/v9.2/annotations", proxy.base))
            .body(chunked(upload.clone()))
            .unwrap();
        let response = proxy.streaming.request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains(ALTERNATE_HOST));
        let seen = proxy.pair.alternate.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].body_len, upload.len());
        assert_eq!(seen[0].body_sha256, digest(&upload));
    })
    .await
}

#[tokio::test]
async fn the_policy_header_decides_what_is_resent() {
    within(20, async {
        let proxy = start().await;
        proxy.pair.primary.kill().await;

        // `never`: not even a refused connect is retried on the alternate.
        let response = proxy
            .send(
                Method::GET,
                "/api/data/v9.2/WhoAmI",
                &[("x-failover-policy", "never")],
            )
            .await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["x-failover-possibly-applied"], "false");
        let body: Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["kind"], "endpoint_not_found", "{body}");
        assert_eq!(body["possibly_applied"], false, "{body}");
        assert_eq!(body["active"], "alternate", "{body}");
        assert_eq!(proxy.pair.alternate.count(), 0);

        // The header is the proxy's, not the endpoint's: it is not forwarded.
        proxy.pair.alternate.set(echo_headers(ALTERNATE_HOST));
        let (status, body) = proxy
            .json(
                Method::GET,
                "/api/data/v9.2/WhoAmI",
                &[("x-failover-policy", "reads-only")],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(body["headers"].get("x-failover-policy").is_none(), "{body}");

        let (status, body) = proxy
            .json(
                Method::GET,
                "/api/data/v9.2/WhoAmI",
                &[("x-failover-policy", "sometimes")],
            )
            .await;
        assert_eq!(status, 400, "{body}");
    })
    .await
}

/// A primary that reads each request and then hangs (a stuck backend): the proxy's per-attempt
/// timeout, inside the layer, makes that an outage, so the call fails over and is answered by
/// the alternate. Without one the proxy would wait on the primary for ever.
#[tokio::test]
async fn a_hung_primary_is_failed_over_by_the_proxys_attempt_timeout() {
    within(10, async {
        let pair = Pair::start().await;
        pair.primary.set(Behavior::Delay(Duration::from_secs(30)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let endpoints = Endpoints::dynamics(PRIMARY_URL).unwrap();
        let connector = pair.resolver.connector();
        tokio::spawn(failover_proxy::run_proxy_with(
            listener,
            endpoints,
            connector,
            Duration::from_millis(300),
        ));
        let client: Plain = Client::builder(TokioExecutor::new()).build_http();
        let request = Request::get(format!("{base}/api/data/v9.2/WhoAmI"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(
            String::from_utf8_lossy(&body).contains(ALTERNATE_HOST),
            "{}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!((pair.primary.count(), pair.alternate.count()), (1, 1));
    })
    .await
}

/// The binary's own connector (`https_connector`) in front of two HTTPS endpoints behind a
/// private CA, given with `--ca-file`: calls reach the primary, and after it dies, the
/// alternate, each verified by its own name. Without the CA file the same endpoints are not
/// trusted, so the check above can fail; a CA file that is missing or holds no certificate is
/// refused before the proxy listens.
#[tokio::test]
async fn the_binarys_connector_reaches_https_endpoints_behind_a_private_ca() {
    use failover_proxy::support::tls::{TestPki, TlsServer};

    within(20, async {
        let pki = TestPki::new();
        let primary = TlsServer::start(&pki, PRIMARY_HOST).await;
        let alternate = TlsServer::start(&pki, ALTERNATE_HOST).await;
        let resolver = Resolver::pair(primary.addr, alternate.addr);
        let dir = std::env::temp_dir().join(format!("failover-proxy-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("root.pem");
        std::fs::write(&ca_file, &pki.root_pem).unwrap();

        // The proxy with the public roots and the CA file, and one with the public roots only.
        let mut bases = Vec::new();
        for ca in [Some(ca_file.as_path()), None] {
            let connector = failover_proxy::https_connector(resolver.connector(), ca).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            bases.push(format!("http://{}", listener.local_addr().unwrap()));
            let endpoints = Endpoints::dynamics(&format!("https://{PRIMARY_HOST}")).unwrap();
            tokio::spawn(failover_proxy::run_proxy(listener, endpoints, connector));
        }
        let plain: Plain = Client::builder(TokioExecutor::new()).build_http();
        let get = |base: &str| {
            let request = Request::get(format!("{base}/api/data/v9.2/WhoAmI"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let sent = plain.request(request);
            async move {
                let response = sent.await.unwrap();
                let status = response.status();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };

        let (status, body) = get(&bases[0]).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&format!(r#""sni":"{PRIMARY_HOST}""#)), "{body}");
        let (status, body) = get(&bases[1]).await;
        assert_ne!(
            status, 200,
            "a private CA's certificate trusted without --ca-file: {body}"
        );

        primary.kill();
        let (status, body) = get(&bases[0]).await;
        assert_eq!(status, 200, "{body}");
        // The alternate holds only its own certificate: the handshake used its name.
        assert!(body.contains(&format!(r#""sni":"{ALTERNATE_HOST}""#)), "{body}");
        assert!(body.contains(&format!(r#""host":"{ALTERNATE_HOST}""#)), "{body}");

        let missing = dir.join("missing.pem");
        let error = failover_proxy::https_connector(resolver.connector(), Some(&missing)).unwrap_err();
        assert!(
            error.contains("--ca-file") && error.contains("missing.pem"),
            "{error}"
        );
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let error = failover_proxy::https_connector(resolver.connector(), Some(&empty)).unwrap_err();
        assert!(error.contains("no PEM certificate"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await
}
