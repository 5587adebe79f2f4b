//! [`ResponseFuture`]: drives one call through its attempts. It holds no policy of its own:
//! every decision (switch, re-send, which error) comes from the engine.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{BufMut, BytesMut};
use http::{Extensions, HeaderMap, Method, Request, Response, Uri, Version};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::body::{Peeked, ResponseBody};
use crate::classify::{Classifier, DownKind, Outcome, Verdict};
use crate::endpoint::Side;
use crate::engine::{attempt_endpoint, inner_error, not_resent_error, second_failure_error, CallPlan};
use crate::error::{AttemptError, BoxError, FailoverError, NotResent};
use crate::replay::{ReplayBody, ReplayHandle};
use crate::state::Shared;

/// The body a re-send will carry.
pub(crate) enum ResendBody<B> {
    Empty,
    Recorded(ReplayHandle<B>),
}

/// What a re-send needs, kept from the original request. The body is the only part that is
/// not a plain clone: it comes from the replay recording.
pub(crate) struct ResendRequest<S, B> {
    pub(crate) service: S,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) extensions: Extensions,
    pub(crate) body: ResendBody<B>,
}

mod sealed {
    /// Lets the future name the body type of `S::Response` without another type parameter.
    pub trait HttpResponse {
        type Body;
        fn into_parts(self) -> (http::response::Parts, Self::Body);
    }

    impl<B> HttpResponse for http::Response<B> {
        type Body = B;
        fn into_parts(self) -> (http::response::Parts, B) {
            self.into_parts()
        }
    }
}
use sealed::HttpResponse;

type InnerBody<S, B> = <<S as Service<Request<ReplayBody<B>>>>::Response as HttpResponse>::Body;

pin_project! {
    /// The future of a call through [`Failover`](crate::Failover).
    pub struct ResponseFuture<S, B, C>
    where
        S: Service<Request<ReplayBody<B>>>,
        S::Response: HttpResponse,
        InnerBody<S, B>: Body,
    {
        #[pin]
        state: State<S::Future, S, Request<ReplayBody<B>>, Peeking<InnerBody<S, B>>>,
        // `None` for a request that names neither endpoint: it passes straight through.
        routed: Option<Routed<S, B, C>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, R, P> {
        // An attempt is in flight.
        Waiting { #[pin] future: F },
        // Reading a small error body so the classifier can look for a fault code.
        Peeking { head: Option<http::response::Parts>, peek: Option<P> },
        // Waiting for the inner service to be ready for the re-send.
        Readying { service: S, request: Option<R> },
        Done,
    }
}

struct Routed<S, B, C> {
    shared: Arc<Shared>,
    classifier: C,
    plan: CallPlan,
    // The side the attempt in flight went to.
    side: Side,
    resend: Option<Result<ResendRequest<S, B>, NotResent>>,
    // Set once the call has been re-sent: how the first attempt failed.
    first: Option<(DownKind, AttemptError)>,
}

impl<S, B, C> ResponseFuture<S, B, C>
where
    S: Service<Request<ReplayBody<B>>>,
    S::Response: HttpResponse,
    InnerBody<S, B>: Body,
{
    pub(crate) fn passthrough(future: S::Future) -> Self {
        ResponseFuture {
            state: State::Waiting { future },
            routed: None,
        }
    }

    pub(crate) fn routed(
        future: S::Future,
        shared: Arc<Shared>,
        classifier: C,
        plan: CallPlan,
        resend: Result<ResendRequest<S, B>, NotResent>,
    ) -> Self {
        ResponseFuture {
            state: State::Waiting { future },
            routed: Some(Routed {
                shared,
                classifier,
                side: plan.active.side,
                plan,
                resend: Some(resend),
                first: None,
            }),
        }
    }
}

impl<S, B, C> Routed<S, B, C> {
    fn attempt_number(&self) -> u8 {
        if self.first.is_some() {
            2
        } else {
            1
        }
    }

    /// The attempt in flight found its endpoint down: either the re-send to make, or the
    /// caller's error.
    fn on_down(
        &mut self,
        kind: DownKind,
        cause: AttemptError,
    ) -> Result<(S, Request<ReplayBody<B>>), FailoverError> {
        tracing::debug!(
            server.address = %self.shared.endpoint(self.side),
            attempt = self.attempt_number(),
            cause = %kind,
            "failover: endpoint down"
        );
        if let Some((first_kind, first)) = self.first.take() {
            return Err(second_failure_error(&first_kind, first, Some(&kind), cause));
        }
        let side = match self.shared.after_down(&self.plan, &kind) {
            Ok(side) => side,
            Err(reason) => return Err(not_resent_error(&kind, reason, cause)),
        };
        let resend = match self.resend.take() {
            Some(Ok(resend)) => resend,
            Some(Err(reason)) => return Err(not_resent_error(&kind, reason, cause)),
            None => return Err(not_resent_error(&kind, NotResent::AutoSwitchOff, cause)),
        };
        let body = match &resend.body {
            ResendBody::Empty => ReplayBody::empty(),
            ResendBody::Recorded(handle) => match handle.replay() {
                Ok(body) => body,
                Err(reason) => return Err(not_resent_error(&kind, reason, cause)),
            },
        };
        let mut request = Request::new(body);
        *request.method_mut() = resend.method;
        *request.version_mut() = resend.version;
        *request.extensions_mut() = resend.extensions;
        let mut uri = resend.uri;
        let mut headers = resend.headers;
        self.shared.point_at(side, &mut uri, &mut headers);
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        tracing::debug!(
            server.address = %self.shared.endpoint(side),
            http.request.method = %request.method(),
            attempt = 2,
            "failover: re-sending"
        );
        self.side = side;
        self.first = Some((kind, cause));
        Ok((resend.service, request))
    }

    /// The attempt in flight failed in a way that is not an outage.
    fn on_inner_error(&mut self, cause: AttemptError) -> FailoverError {
        match self.first.take() {
            Some((first_kind, first)) => second_failure_error(&first_kind, first, None, cause),
            None => inner_error(cause),
        }
    }

    fn endpoint(&self) -> Option<crate::Endpoint> {
        Some(attempt_endpoint(&self.shared, self.side))
    }
}

/// Reads a small response body into memory for the classifier.
pub(crate) struct Peeking<RB: Body> {
    body: Pin<Box<RB>>,
    data: BytesMut,
    limit: usize,
    trailers: Option<HeaderMap>,
    error: Option<RB::Error>,
    ended: bool,
}

impl<RB: Body> Peeking<RB> {
    fn new(body: RB, limit: usize) -> Self {
        Peeking {
            body: Box::pin(body),
            data: BytesMut::new(),
            limit,
            trailers: None,
            error: None,
            ended: false,
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.body.is_end_stream() {
                self.ended = true;
                return Poll::Ready(());
            }
            // The declared length was small but the body is not: stop, and hand the rest back
            // unread rather than buffer an unbounded body.
            if self.data.len() > self.limit {
                return Poll::Ready(());
            }
            match ready!(self.body.as_mut().poll_frame(cx)) {
                None => {
                    self.ended = true;
                    return Poll::Ready(());
                }
                Some(Err(error)) => {
                    self.error = Some(error);
                    return Poll::Ready(());
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.data.put(data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.trailers = Some(trailers);
                            self.ended = true;
                            return Poll::Ready(());
                        }
                    }
                },
            }
        }
    }

    fn finish(self) -> Peeked<RB> {
        Peeked {
            data: self.data.freeze(),
            trailers: self.trailers,
            error: self.error,
            ended: self.ended,
            rest: self.body,
        }
    }
}

impl<S, B, C, ResB> Future for ResponseFuture<S, B, C>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body,
    C: Classifier,
{
    type Output = Result<Response<ResponseBody<ResB>>, FailoverError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let resend = match this.state.as_mut().project() {
                StateProj::Waiting { future } => {
                    let result = ready!(future.poll(cx));
                    let Some(routed) = this.routed.as_mut() else {
                        this.state.set(State::Done);
                        return Poll::Ready(match result {
                            Ok(response) => Ok(response.map(ResponseBody::streaming)),
                            Err(error) => Err(inner_error(AttemptError::from_error(None, error.into()))),
                        });
                    };
                    match result {
                        Ok(response) => {
                            let (head, body) = response.into_parts();
                            let limit = routed.classifier.peek_limit(head.status, &head.headers);
                            if limit > 0 {
                                this.state.set(State::Peeking {
                                    head: Some(head),
                                    peek: Some(Peeking::new(body, limit)),
                                });
                                continue;
                            }
                            let verdict = routed.classifier.classify(Outcome::Response {
                                status: head.status,
                                headers: &head.headers,
                                body: None,
                            });
                            match verdict {
                                Verdict::EndpointDown(kind) => {
                                    let cause = AttemptError::from_response(routed.endpoint(), head.status, Some(kind.clone()));
                                    routed.on_down(kind, cause)
                                }
                                _ => {
                                    this.state.set(State::Done);
                                    return Poll::Ready(Ok(Response::from_parts(head, ResponseBody::streaming(body))));
                                }
                            }
                        }
                        Err(error) => {
                            let error: BoxError = error.into();
                            let verdict = routed.classifier.classify(Outcome::Error(&*error));
                            let cause = AttemptError::from_error(routed.endpoint(), error);
                            match verdict {
                                Verdict::EndpointDown(kind) => routed.on_down(kind, cause),
                                _ => Err(routed.on_inner_error(cause)),
                            }
                        }
                    }
                }
                StateProj::Peeking { head, peek } => {
                    let routed = this.routed.as_mut().expect("only routed calls peek");
                    ready!(peek.as_mut().expect("present until the peek ends").poll_read(cx));
                    let head = head.take().expect("present until the peek ends");
                    let peeked = peek.take().expect("present until the peek ends").finish();
                    let verdict = routed.classifier.classify(Outcome::Response {
                        status: head.status,
                        headers: &head.headers,
                        body: peeked.complete_body(),
                    });
                    match verdict {
                        Verdict::EndpointDown(kind) => {
                            let cause = AttemptError::from_response(routed.endpoint(), head.status, Some(kind.clone()));
                            routed.on_down(kind, cause)
                        }
                        _ => {
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(Response::from_parts(head, ResponseBody::peeked(peeked))));
                        }
                    }
                }
                StateProj::Readying { service, request } => {
                    let routed = this.routed.as_mut().expect("only routed calls are re-sent");
                    if let Err(error) = ready!(service.poll_ready(cx)) {
                        let cause = AttemptError::from_error(routed.endpoint(), error.into());
                        this.state.set(State::Done);
                        return Poll::Ready(Err(routed.on_inner_error(cause)));
                    }
                    let request = request.take().expect("present until sent");
                    let future = service.call(request);
                    this.state.set(State::Waiting { future });
                    continue;
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            };
            match resend {
                Ok((service, request)) => this.state.set(State::Readying {
                    service,
                    request: Some(request),
                }),
                Err(error) => {
                    this.state.set(State::Done);
                    return Poll::Ready(Err(error));
                }
            }
        }
    }
}
