//! [`ResponseBody`]: the response body handed back to the caller, either the inner service's
//! body untouched or, when the classifier peeked at it, the bytes read so far followed by
//! whatever was left.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::replay::into_bytes;

pin_project! {
    /// The body of a response from [`Failover`](crate::Failover).
    ///
    /// Nothing is lost by peeking: the bytes the classifier read, then the trailers, the error
    /// or the unread rest, come out exactly as the inner service produced them.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_failover::{Endpoints, FailoverLayer, ReplayBody, ResponseBody};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// const ERROR: &str = r#"{"error":{"code":"0x80040217","message":"account does not exist"}}"#;
    /// // A 500 with a small declared body: the default classifier reads it for a fault code.
    /// let client = tower::service_fn(|_request: http::Request<ReplayBody<Full<Bytes>>>| async {
    ///     let response = http::Response::builder()
    ///         .status(500)
    ///         .header("content-length", ERROR.len())
    ///         .body(Full::new(Bytes::from_static(ERROR.as_bytes())))
    ///         .unwrap();
    ///     Ok::<_, Infallible>(response)
    /// });
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    ///
    /// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/accounts(42)")
    ///     .body(Full::new(Bytes::new()))
    ///     .unwrap();
    /// let response: http::Response<ResponseBody<Full<Bytes>>> =
    ///     service.ready().await.unwrap().call(request).await.unwrap();
    /// // Not the failover code, so not an outage: the caller gets the answer, every byte of it.
    /// assert_eq!(response.status(), 500);
    /// let body = response.into_body().collect().await.unwrap().to_bytes();
    /// assert_eq!(body, ERROR.as_bytes());
    /// # }
    /// ```
    pub struct ResponseBody<B: Body> {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<B: Body> {
        Streaming { #[pin] body: B },
        // Only 5xx responses with a small declared length get here. Boxed: every response the
        // layer hands back is moved several times on its way to the caller, and inline this
        // variant (a `HeaderMap` of trailers among it) made it 150 bytes larger than the inner
        // service's body. The box costs nothing on the success path.
        Peeked { peeked: Box<PeekedRest<B>> },
        // Made by `Default`, for layers that answer on their own.
        Empty,
    }
}

/// What is left to hand out of a body the classifier peeked at, in order.
struct PeekedRest<B: Body> {
    prefix: Option<Bytes>,
    trailers: Option<HeaderMap>,
    error: Option<B::Error>,
    rest: Option<Pin<Box<B>>>,
}

impl<B: Body> ResponseBody<B> {
    pub(crate) fn streaming(body: B) -> Self {
        ResponseBody {
            inner: Inner::Streaming { body },
        }
    }

    pub(crate) fn peeked(peek: Peeked<B>) -> Self {
        // After an error the body is done: it must not be polled again.
        let done = peek.ended || peek.error.is_some();
        ResponseBody {
            inner: Inner::Peeked {
                peeked: Box::new(PeekedRest {
                    prefix: if peek.data.is_empty() {
                        None
                    } else {
                        Some(peek.data)
                    },
                    trailers: peek.trailers,
                    error: peek.error,
                    rest: if done { None } else { Some(peek.rest) },
                }),
            },
        }
    }
}

impl<B: Body> Default for ResponseBody<B> {
    /// An empty body, for layers that answer on their own (tower-http's `TimeoutLayer`, say).
    fn default() -> Self {
        ResponseBody { inner: Inner::Empty }
    }
}

/// What a peek read from a response body.
pub(crate) struct Peeked<B: Body> {
    pub(crate) data: Bytes,
    pub(crate) trailers: Option<HeaderMap>,
    pub(crate) error: Option<B::Error>,
    pub(crate) ended: bool,
    pub(crate) rest: Pin<Box<B>>,
}

impl<B: Body> Peeked<B> {
    /// The whole body, when the peek read all of it without error.
    pub(crate) fn complete_body(&self) -> Option<&Bytes> {
        (self.ended && self.error.is_none()).then_some(&self.data)
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().inner.project() {
            InnerProj::Streaming { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map(|frame| frame.map_data(into_bytes)))),
            InnerProj::Empty => Poll::Ready(None),
            InnerProj::Peeked { peeked } => {
                let PeekedRest {
                    prefix,
                    trailers,
                    error,
                    rest,
                } = &mut **peeked;
                if let Some(data) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                if let Some(error) = error.take() {
                    return Poll::Ready(Some(Err(error)));
                }
                if let Some(trailers) = trailers.take() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                match rest {
                    Some(body) => body
                        .as_mut()
                        .poll_frame(cx)
                        .map(|frame| frame.map(|result| result.map(|frame| frame.map_data(into_bytes)))),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Streaming { body } => body.is_end_stream(),
            Inner::Empty => true,
            Inner::Peeked { peeked } => {
                let PeekedRest {
                    prefix,
                    trailers,
                    error,
                    rest,
                } = &**peeked;
                prefix.is_none()
                    && trailers.is_none()
                    && error.is_none()
                    && rest.as_ref().is_none_or(|b| b.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Streaming { body } => body.size_hint(),
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Peeked { peeked } => {
                let PeekedRest { prefix, rest, .. } = &**peeked;
                let kept = prefix.as_ref().map_or(0, |p| p.len() as u64);
                match rest {
                    None => SizeHint::with_exact(kept),
                    Some(body) => {
                        let hint = body.size_hint();
                        let mut out = SizeHint::new();
                        out.set_lower(kept.saturating_add(hint.lower()));
                        if let Some(upper) = hint.upper() {
                            out.set_upper(kept.saturating_add(upper));
                        }
                        out
                    }
                }
            }
        }
    }
}

impl<B: Body> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.inner {
            Inner::Streaming { .. } => "streaming",
            Inner::Peeked { .. } => "peeked",
            Inner::Empty => "empty",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}
