//! Request trailers survive a re-send over HTTP/1: a streamed body of unknown length goes out
//! chunked with its trailers, and its replay must go out the same way. A replay that declares
//! an exact length is sent with `Content-Length`, and hyper drops trailers from such a body.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_failover::{Endpoints, FailoverLayer, ReplayBody};

type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

/// What a server read of one request: its body, its trailers, and whether it came chunked.
type Read = (Bytes, Option<HeaderMap>, bool);

/// A hyper HTTP/1 server that reads each request whole, trailers included, and records it.
/// With `drop_after_reading` it then fails the call, and hyper closes the connection without
/// an answer: to the client, a connection lost after the request was sent.
async fn recording_server(drop_after_reading: bool) -> (SocketAddr, Arc<Mutex<Vec<Read>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Read>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let record = record.clone();
                    async move {
                        let chunked = request.headers().contains_key(http::header::TRANSFER_ENCODING);
                        let collected = request
                            .into_body()
                            .collect()
                            .await
                            .map_err(std::io::Error::other)?;
                        let trailers = collected.trailers().cloned();
                        record
                            .lock()
                            .unwrap()
                            .push((collected.to_bytes(), trailers, chunked));
                        if drop_after_reading {
                            return Err(std::io::Error::other("the primary goes down before it answers"));
                        }
                        Ok(Response::new(Full::new(Bytes::from_static(b"stored"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_streamed_body_re_sent_after_it_was_read_whole_keeps_its_trailers() {
    within(10, async {
        let (primary, on_primary) = recording_server(true).await;
        let (alternate, on_alternate) = recording_server(false).await;
        let resolver = Resolver::pair(primary, alternate);
        let client: Client<_, ReplayBody<StreamBody<Frames>>> =
            Client::builder(TokioExecutor::new()).build(resolver.connector());
        let service = ServiceBuilder::new()
            .layer(FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap()))
            .service(client);

        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"hello "))),
            Ok(Frame::data(Bytes::from_static(b"world"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        // A PUT is idempotent: re-sent after a connection lost mid-call.
        let request = Request::put(format!("{PRIMARY_URL}/api/data/v9.2/annotations(1)/documentbody"))
            .header(http::header::TRAILER, "x-checksum")
            .body(StreamBody::new(futures_util::stream::iter(frames)))
            .unwrap();
        let response = service.oneshot(request).await.expect("re-sent on the alternate");
        assert_eq!(response.status(), 200);

        // The first attempt went out chunked, with its trailers: read whole by the primary.
        let first = on_primary.lock().unwrap().clone();
        assert_eq!(first.len(), 1);
        assert_eq!(
            first[0],
            (Bytes::from_static(b"hello world"), Some(trailers.clone()), true)
        );
        // The re-send carries the same body and the same trailers.
        let resent = on_alternate.lock().unwrap().clone();
        assert_eq!(resent.len(), 1);
        assert_eq!(resent[0].0, "hello world");
        assert_eq!(
            resent[0].1,
            Some(trailers),
            "the re-send lost the trailers (chunked: {})",
            resent[0].2
        );
    })
    .await
}
