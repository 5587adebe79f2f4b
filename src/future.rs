//! [`ResponseFuture`]: drives one call through its attempts. It holds no policy of its own:
//! every decision (switch, re-send, throttling wait, ledger, error) comes from the engine.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use http::uri::PathAndQuery;
use http::{Extensions, HeaderMap, Method, Request, Response, Version};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use crate::body::{Peeked, ResponseBody};
use crate::classify::{Classifier, Outcome, Verdict};
use crate::endpoint::Side;
use crate::engine::{inner_error, CallState, Step};
use crate::error::{AttemptError, BoxError, FailoverError, NotResent};
use crate::packed_headers::PackedHeaders;
use crate::replay::{ReplayBody, ReplayHandle};
use crate::service::Core;
use crate::state::Shared;

/// The body a re-send will carry.
pub(crate) enum ResendBody<B> {
    Empty,
    Recorded(ReplayHandle<B>),
    // The body was whole in memory: each re-send clones it.
    Whole(bytes::Bytes),
}

/// A request head kept for re-sends. Each re-send clones it and points it at a side; both
/// drivers (the tower future and the reqwest middleware) build their requests from it.
pub(crate) struct HeadTemplate {
    method: Method,
    // Only the path and query: a re-send takes its scheme and authority from the side it goes
    // to. (One reference count to bump instead of two, and 48 bytes less in every future.)
    path_and_query: Option<PathAndQuery>,
    version: Version,
    // Copied into one buffer, not cloned: see `PackedHeaders`.
    headers: PackedHeaders,
    extensions: Extensions,
}

impl HeadTemplate {
    pub(crate) fn of(parts: &http::request::Parts) -> Self {
        HeadTemplate {
            method: parts.method.clone(),
            path_and_query: parts.uri.path_and_query().cloned(),
            version: parts.version,
            headers: PackedHeaders::of(&parts.headers),
            extensions: parts.extensions.clone(),
        }
    }

    #[cfg_attr(not(feature = "reqwest"), allow(dead_code))]
    pub(crate) fn method(&self) -> &Method {
        &self.method
    }

    /// A copy of the head, pointed at `side`.
    pub(crate) fn parts_for(&self, shared: &Shared, side: Side) -> http::request::Parts {
        let mut head = Request::new(());
        *head.method_mut() = self.method.clone();
        *head.version_mut() = self.version;
        *head.headers_mut() = self.headers.unpack();
        *head.extensions_mut() = self.extensions.clone();
        let (mut parts, ()) = head.into_parts();
        shared.point_at(side, &mut parts, self.path_and_query.clone());
        parts
    }
}

/// What a re-send needs, kept from the original request. Each re-send clones the head and
/// takes a service from the [`Core`]; the body comes from the replay recording, never copied.
pub(crate) struct ResendTemplate<B> {
    pub(crate) head: HeadTemplate,
    pub(crate) body: ResendBody<B>,
}

impl<B> ResendTemplate<B> {
    fn build<S: Clone, C>(
        &self,
        core: &Core<S, C>,
        side: Side,
    ) -> Result<(S, Request<ReplayBody<B>>), NotResent> {
        // Taken at the first call, before any call's future exists.
        let service = core.resend_service().ok_or(NotResent::AutoSwitchOff)?;
        let body = match &self.body {
            ResendBody::Empty => ReplayBody::empty(),
            ResendBody::Recorded(handle) => handle.replay()?,
            ResendBody::Whole(bytes) => ReplayBody::whole(bytes.clone()),
        };
        let parts = self.head.parts_for(&core.shared, side);
        Ok((service, Request::from_parts(parts, body)))
    }
}

mod sealed {
    /// Lets the future name the body type of `S::Response` without another type parameter.
    pub trait HttpResponse {
        type Body;
    }

    impl<B> HttpResponse for http::Response<B> {
        type Body = B;
    }
}
use sealed::HttpResponse;

type InnerBody<S, B> = <<S as Service<Request<ReplayBody<B>>>>::Response as HttpResponse>::Body;

pin_project! {
    /// The future of a call through [`Failover`](crate::Failover).
    ///
    /// Dropping it before it completes abandons the call: no re-send is made, and a write it
    /// carried is reported with an unknown outcome at the next switch (unless it provably was
    /// not applied: dropped between attempts, every one of which was turned away unprocessed,
    /// such as during the wait after a 429).
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use std::time::Duration;
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use tower_failover::{DefaultClassifier, Endpoints, FailoverLayer, ReplayBody, ResponseFuture, WriteOutcome};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let handle = layer.handle();
    /// // A primary that takes its time.
    /// let client = tower::service_fn(|_request: http::Request<ReplayBody<Full<Bytes>>>| async {
    ///     tokio::time::sleep(Duration::from_secs(60)).await;
    ///     Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
    /// });
    /// let mut service = ServiceBuilder::new().layer(layer).service(client);
    ///
    /// let request = http::Request::post("https://contoso.api.crm.dynamics.com/api/data/v9.2/accounts")
    ///     .body(Full::new(Bytes::from_static(br#"{"name":"Contoso"}"#)))
    ///     .unwrap();
    /// let future: ResponseFuture<_, Full<Bytes>, DefaultClassifier> =
    ///     service.ready().await.unwrap().call(request);
    /// // The caller gives up after 10 ms, dropping the future mid-call.
    /// assert!(tokio::time::timeout(Duration::from_millis(10), future).await.is_err());
    ///
    /// // The primary may have applied that POST: the next switch's report says so.
    /// handle.switch_endpoint();
    /// let report = handle.last_report().unwrap();
    /// assert_eq!(report.unknown.len(), 1);
    /// assert_eq!(report.unknown[0].outcome, WriteOutcome::Unknown);
    /// # }
    /// ```
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
    // Only `Waiting` is on the success path. The other states come after an error answer, a
    // failure or throttling, so their payloads are boxed: inline, the re-send request alone
    // (over 400 bytes) would set the size of every call's future, which is moved by value
    // several times per call.
    #[project = StateProj]
    #[project_ref = StateProjRef]
    enum State<F, S, R, P> {
        // An attempt is in flight.
        Waiting { #[pin] future: F },
        // Reading a small error body so the classifier can look for a fault code.
        Peeking { peek: Box<Peek<P>> },
        // Waiting out a throttling delay before re-sending to the same endpoint.
        Sleeping { sleep: Pin<Box<Sleep>>, resend: Option<Box<Resend<S, R>>> },
        // Waiting for the inner service to be ready for the re-send.
        Readying { resend: Box<Resend<S, R>> },
        Done,
    }
}

/// A response head and its body being read for the classifier.
struct Peek<P> {
    head: Option<http::response::Parts>,
    peeking: Option<P>,
}

/// A re-send built and waiting to go out.
struct Resend<S, R> {
    service: S,
    // `Some` until sent.
    request: Option<R>,
}

struct Routed<S, B, C> {
    core: Arc<Core<S, C>>,
    call: CallState,
    resend: Result<ResendTemplate<B>, NotResent>,
    // The timer for the call's deadline, armed at the first poll (`call` may run outside the
    // runtime whose timer drives the future) and only for a policy that sets one. Boxed: a
    // `Sleep` is over 100 bytes, and every call's future is moved by value several times.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S, B, C> Drop for Routed<S, B, C> {
    fn drop(&mut self) {
        // A call dropped before it ended (the caller gave up): its write's outcome is unknown.
        self.call.abandon(&self.core.shared);
    }
}

/// What to do after an attempt.
enum Next<S, R, Res> {
    Return(Result<Res, FailoverError>),
    Resend(Box<Resend<S, R>>),
    Wait(Duration, Box<Resend<S, R>>),
}

impl<S, R> Resend<S, R> {
    fn boxed(service: S, request: R) -> Box<Self> {
        Box::new(Resend {
            service,
            request: Some(request),
        })
    }
}

impl<S, B, C> ResponseFuture<S, B, C>
where
    S: Service<Request<ReplayBody<B>>>,
    S::Response: HttpResponse,
    InnerBody<S, B>: Body,
{
    #[inline(always)]
    pub(crate) fn passthrough(future: S::Future) -> Self {
        ResponseFuture {
            state: State::Waiting { future },
            routed: None,
        }
    }

    /// `send` makes the first attempt's future. It is called inside the struct expression,
    /// after everything else the future holds was made, so the inner future can be built
    /// where it will stay instead of on the stack and then copied in.
    #[inline(always)]
    pub(crate) fn routed(
        core: Arc<Core<S, C>>,
        call: CallState,
        resend: Result<ResendTemplate<B>, NotResent>,
        send: impl FnOnce() -> S::Future,
    ) -> Self {
        // `routed` is made first: if `send` panics (an inner service called without
        // `poll_ready` may), dropping it settles the call, whose write would otherwise stay in
        // the ledger as in flight for ever.
        ResponseFuture {
            routed: Some(Routed {
                core,
                call,
                resend,
                deadline: None,
            }),
            state: State::Waiting { future: send() },
        }
    }
}

impl<S: Clone, B, C> Routed<S, B, C> {
    /// Carries out the engine's step; `answer` makes the caller's response when the step is
    /// to hand it back.
    fn follow<Res>(
        &mut self,
        decide: impl FnOnce(
            &mut CallState,
            &Shared,
            &dyn Fn(Side) -> Result<(S, Request<ReplayBody<B>>), NotResent>,
        ) -> Step<(S, Request<ReplayBody<B>>)>,
        answer: impl FnOnce() -> Res,
    ) -> Next<S, Request<ReplayBody<B>>, Res> {
        let Routed {
            core, call, resend, ..
        } = self;
        let build = |side| match &*resend {
            Ok(template) => template.build(core, side),
            Err(reason) => Err(*reason),
        };
        match decide(call, &core.shared, &build) {
            Step::Answer => Next::Return(Ok(answer())),
            Step::Fail(error) => Next::Return(Err(error)),
            Step::Resend((service, request)) => Next::Resend(Resend::boxed(service, request)),
            Step::Wait(wait, (service, request)) => Next::Wait(wait, Resend::boxed(service, request)),
        }
    }

    /// Judges a response and says what comes next.
    fn on_response<RB: Body>(
        &mut self,
        head: http::response::Parts,
        body: ResponseBody<RB>,
        verdict: Verdict,
    ) -> Next<S, Request<ReplayBody<B>>, Response<ResponseBody<RB>>> {
        let status = head.status;
        self.follow(
            |call, shared, build| call.after_response(shared, status, verdict, build),
            || Response::from_parts(head, body),
        )
    }

    /// Judges an error and says what comes next.
    fn on_error<Res>(&mut self, error: BoxError, verdict: Verdict) -> Next<S, Request<ReplayBody<B>>, Res> {
        self.follow(
            |call, shared, build| call.after_error(shared, error, verdict, build),
            || unreachable!("an error is never handed back as an answer"),
        )
    }
}

/// Reads up to `limit` bytes of a response body for the classifier, keeping the rest unread.
/// For drivers that are `async fn`s (the reqwest middleware); the tower future polls
/// [`Peeking`] itself.
#[cfg_attr(not(feature = "reqwest"), allow(dead_code))]
pub(crate) async fn peek_body<RB: Body>(body: RB, limit: usize, timeout: Duration) -> Peeked<RB> {
    let mut peeking = Peeking::new(body, limit, timeout);
    std::future::poll_fn(|cx| peeking.poll_read(cx)).await;
    peeking.finish()
}

/// Reads a small response body into memory for the classifier.
pub(crate) struct Peeking<RB: Body> {
    body: Pin<Box<RB>>,
    // A server that sends an error head and then stalls its body must not hold the call: past
    // this, the response is judged by its head and handed back with the rest unread.
    timer: Pin<Box<Sleep>>,
    data: BytesMut,
    limit: usize,
    trailers: Option<HeaderMap>,
    error: Option<RB::Error>,
    ended: bool,
}

impl<RB: Body> Peeking<RB> {
    fn new(body: RB, limit: usize, timeout: Duration) -> Self {
        Peeking {
            body: Box::pin(body),
            timer: Box::pin(tokio::time::sleep(timeout)),
            data: BytesMut::new(),
            limit,
            trailers: None,
            error: None,
            ended: false,
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        // Frames that are always ready and empty never end the loop below by the limit: after
        // this many in one poll, hand back to the runtime so the timer can fire.
        let mut frames_left = 64u32;
        loop {
            if frames_left == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            frames_left -= 1;
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
    S: Service<Request<ReplayBody<B>>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    ResB: Body,
    C: Classifier,
{
    type Output = Result<Response<ResponseBody<ResB>>, FailoverError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The call's span is entered while it is worked on (see `CallState::span`). A clone,
        // so the state can still be changed under it; there is one only when a subscriber
        // wants it, so the success path without tracing pays one check.
        let span = this
            .routed
            .as_ref()
            .and_then(|routed| routed.call.span().cloned());
        let _entered = span.as_ref().map(tracing::Span::enter);
        if let Some(routed) = this.routed.as_mut() {
            if let Some(at) = routed.call.plan.deadline {
                let timer = routed
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at.into())));
                if timer.as_mut().poll(cx).is_ready() {
                    // Between attempts (a throttling wait, a re-send waiting for the inner
                    // service) nothing is in flight: the error must not say there was.
                    let in_flight = matches!(
                        this.state.as_ref().project_ref(),
                        StateProjRef::Waiting { .. } | StateProjRef::Peeking { .. }
                    );
                    let error = routed.call.on_deadline(&routed.core.shared, in_flight);
                    routed.deadline = None;
                    this.state.set(State::Done);
                    return Poll::Ready(Err(error));
                }
            }
        }
        loop {
            let next = match this.state.as_mut().project() {
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
                            let limit = routed
                                .core
                                .classifier
                                .peek_limit(response.status(), response.headers());
                            if limit == 0 {
                                let verdict = routed.core.classifier.classify(Outcome::Response {
                                    status: response.status(),
                                    headers: response.headers(),
                                    body: None,
                                });
                                // The success path: the answer goes back as it is, without
                                // taking the response apart.
                                if matches!(verdict, Verdict::Success | Verdict::Fail) {
                                    routed.call.respond(&routed.core.shared, response.status());
                                    this.state.set(State::Done);
                                    return Poll::Ready(Ok(response.map(ResponseBody::streaming)));
                                }
                                let (head, body) = response.into_parts();
                                routed.on_response(head, ResponseBody::streaming(body), verdict)
                            } else {
                                let (head, body) = response.into_parts();
                                this.state.set(State::Peeking {
                                    peek: Box::new(Peek {
                                        head: Some(head),
                                        peeking: Some(Peeking::new(
                                            body,
                                            limit,
                                            routed.core.classifier.peek_timeout(),
                                        )),
                                    }),
                                });
                                continue;
                            }
                        }
                        Err(error) => {
                            let error: BoxError = error.into();
                            let verdict = routed.core.classifier.classify(Outcome::Error(&*error));
                            routed.on_error(error, verdict)
                        }
                    }
                }
                StateProj::Peeking { peek } => {
                    let routed = this.routed.as_mut().expect("only routed calls peek");
                    let Peek { head, peeking } = &mut **peek;
                    ready!(peeking
                        .as_mut()
                        .expect("present until the peek ends")
                        .poll_read(cx));
                    let head = head.take().expect("present until the peek ends");
                    let peeked = peeking.take().expect("present until the peek ends").finish();
                    let verdict = routed.core.classifier.classify(Outcome::Response {
                        status: head.status,
                        headers: &head.headers,
                        body: peeked.complete_body(),
                    });
                    routed.on_response(head, ResponseBody::peeked(peeked), verdict)
                }
                StateProj::Sleeping { sleep, resend } => {
                    ready!(sleep.as_mut().poll(cx));
                    let mut resend = resend.take().expect("present until the wait ends");
                    let routed = this.routed.as_mut().expect("only routed calls wait");
                    let shared = &routed.core.shared;
                    // Calls may have moved during the wait: the retry, body and all, is pointed
                    // where they go now.
                    routed.call.after_wait(shared, |side| {
                        if let Some(request) = resend.request.take() {
                            let (mut parts, body) = request.into_parts();
                            let path_and_query = parts.uri.path_and_query().cloned();
                            shared.point_at(side, &mut parts, path_and_query);
                            resend.request = Some(Request::from_parts(parts, body));
                        }
                    });
                    Next::Resend(resend)
                }
                StateProj::Readying { resend } => {
                    let routed = this.routed.as_mut().expect("only routed calls are re-sent");
                    let Resend { service, request } = &mut **resend;
                    match ready!(service.poll_ready(cx)) {
                        Ok(()) => match routed.call.resend_going_out(&routed.core.shared) {
                            Ok(()) => {
                                let request = request.take().expect("present until sent");
                                let future = service.call(request);
                                this.state.set(State::Waiting { future });
                                continue;
                            }
                            // Ready only after the deadline: the call ends there.
                            Err(error) => Next::Return(Err(error)),
                        },
                        Err(error) => {
                            let cause = routed.call.error_cause(&routed.core.shared, error.into());
                            Next::Return(Err(routed.call.on_not_ready(&routed.core.shared, cause)))
                        }
                    }
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            };
            match next {
                Next::Return(result) => {
                    this.state.set(State::Done);
                    return Poll::Ready(result);
                }
                Next::Resend(resend) => this.state.set(State::Readying { resend }),
                Next::Wait(wait, resend) => this.state.set(State::Sleeping {
                    sleep: Box::pin(tokio::time::sleep(wait)),
                    resend: Some(resend),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = http_body_util::Full<bytes::Bytes>;

    /// An inner service whose future is small, as a hyper-util client's (a boxed future) is.
    #[derive(Clone)]
    struct Small;

    impl Service<Request<ReplayBody<B>>> for Small {
        type Response = Response<B>;
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response<B>, Self::Error>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<ReplayBody<B>>) -> Self::Future {
            Box::pin(async { Ok(Response::new(B::default())) })
        }
    }

    /// A body whose frames are always ready and empty: it never ends and never fills the peek.
    /// It counts the frames read since the peek last returned to the runtime.
    struct EndlessEmptyFrames {
        since_yield: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Body for EndlessEmptyFrames {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            let read = self
                .since_yield
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            // Without a return to the runtime the peek's timer can never fire: the call hangs.
            assert!(read < 100_000, "the peek read {read} frames without yielding");
            Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::new()))))
        }
    }

    #[test]
    fn a_peek_at_endless_empty_frames_gives_up_at_its_timeout() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let since_yield = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let body = EndlessEmptyFrames {
                since_yield: since_yield.clone(),
            };
            let mut peek = std::pin::pin!(peek_body(body, 16, Duration::from_millis(50)));
            let peeked = std::future::poll_fn(|cx| {
                since_yield.store(0, std::sync::atomic::Ordering::Relaxed);
                peek.as_mut().poll(cx)
            });
            let peeked = tokio::time::timeout(Duration::from_secs(5), peeked)
                .await
                .expect("the peek ends at its timeout");
            assert!(!peeked.ended && peeked.error.is_none() && peeked.data.is_empty());
            assert!(peeked.complete_body().is_none());
        });
    }

    /// Every call's future is moved by value several times before its first poll, so only the
    /// success path may take room inline: the states after a failure or throttling, the
    /// deadline and the first attempt's failure are boxed.
    #[test]
    fn only_the_success_path_is_inline() {
        type F = <Small as Service<Request<ReplayBody<B>>>>::Future;
        type St = State<F, Small, Request<ReplayBody<B>>, Peeking<B>>;
        let word = std::mem::size_of::<usize>();
        eprintln!(
            "ResponseFuture {} B, State {} B, Routed {} B, CallState {} B, ReplayBody<Full<Bytes>> {} B",
            std::mem::size_of::<ResponseFuture<Small, B, crate::DefaultClassifier>>(),
            std::mem::size_of::<St>(),
            std::mem::size_of::<Routed<Small, B, crate::DefaultClassifier>>(),
            std::mem::size_of::<CallState>(),
            std::mem::size_of::<ReplayBody<B>>(),
        );
        // The largest rare state is two boxes, plus the discriminant.
        assert!(std::mem::size_of::<St>() <= 3 * word);
        // Beside its state and routed part the future holds only the boxed deadline, its
        // instant and a pin-project discriminant: a `Sleep` (over 100 bytes) held inline again
        // would fail this.
        let routed = std::mem::size_of::<Routed<Small, B, crate::DefaultClassifier>>();
        let future = std::mem::size_of::<ResponseFuture<Small, B, crate::DefaultClassifier>>();
        assert!(
            future <= std::mem::size_of::<St>() + routed + 6 * word,
            "{future} B"
        );
        // No request (over 300 bytes) is held inline by the routed part (400 B when measured).
        assert!(routed <= 480, "{routed} B");
    }
}
