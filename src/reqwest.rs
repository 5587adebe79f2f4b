//! [`FailoverMiddleware`]: the same failover for reqwest, as a reqwest-middleware
//! [`Middleware`].
//!
//! It translates, it does not re-decide: a reqwest request's head becomes an `http` head for
//! the engine's routing and policy, the engine's [`CallState`] says what each attempt means,
//! and the body goes through the same [`ReplayBody`], so streaming `reqwest::Body`s are
//! re-sent too (what reqwest-retry refuses). A [`FailoverLayer`] and a middleware made from it
//! share one switch state, so a tower stack and a reqwest client switch together.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Extensions, Request as HttpRequest, Uri};
use http_body::Body as _;
use reqwest_middleware::{Middleware, Next};

use crate::body::ResponseBody;
use crate::classify::{Classifier, DefaultClassifier, Outcome, Verdict};
use crate::endpoint::Side;
use crate::engine::{BodyPlan, CallState, Step};
use crate::error::{BoxError, FailoverError, NotResent};
use crate::future::{peek_body, HeadTemplate, ResendBody};
use crate::layer::FailoverLayer;
use crate::replay::ReplayBody;
use crate::state::{FailoverHandle, Shared};

/// Failover for a [`reqwest_middleware::ClientWithMiddleware`].
///
/// Errors it produces are `reqwest_middleware::Error::Middleware` carrying a
/// [`FailoverError`]: `err.downcast_ref::<FailoverError>()` on the inner `anyhow::Error`.
/// Requests that name neither endpoint pass through untouched, errors included.
///
/// Failback probes go through a client lent to the layer: a tower [`Failover`](crate::Failover)
/// lends its inner service at its first call, and the middleware lends none of its own. With
/// reqwest alone, lend one with [`probe_with`](FailoverMiddleware::probe_with); without it,
/// calls come back to the primary only by hand ([`FailoverHandle::fail_back`]) or, unprobed,
/// at the end of a maintenance window. The start-up check
/// ([`Failover::check_startup`](crate::Failover::check_startup)) needs a tower `Failover`.
///
/// ```
/// use tower_failover::{Endpoints, FailoverLayer};
///
/// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(layer.middleware())
///     .build();
/// // `layer` can also wrap a tower stack: both share one switch state.
/// # let _ = client;
/// ```
#[derive(Clone)]
pub struct FailoverMiddleware<C = DefaultClassifier> {
    shared: Arc<Shared>,
    classifier: C,
}

impl<C: Clone> FailoverLayer<C> {
    /// A reqwest middleware sharing this layer's switch state, classifier and policies.
    ///
    /// ```
    /// use tower_failover::{Endpoints, FailoverLayer, Side};
    ///
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let middleware = layer.middleware();
    /// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
    ///     .with(middleware.clone())
    ///     .build();
    /// # let _ = client;
    ///
    /// // A switch made through the layer's handle moves the reqwest client too.
    /// layer.handle().switch_endpoint();
    /// assert_eq!(middleware.handle().active(), Side::Alternate);
    /// ```
    pub fn middleware(&self) -> FailoverMiddleware<C> {
        FailoverMiddleware {
            shared: self.handle().shared,
            classifier: self.classifier().clone(),
        }
    }
}

impl FailoverMiddleware {
    /// A middleware over an existing switch state, with the default classifier.
    ///
    /// ```
    /// use tower_failover::{Endpoints, FailoverLayer, FailoverMiddleware};
    ///
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// // Elsewhere in the application, with only the handle at hand:
    /// let handle = layer.handle();
    /// let middleware = FailoverMiddleware::from_handle(&handle);
    /// assert_eq!(middleware.handle().endpoints(), handle.endpoints());
    /// ```
    pub fn from_handle(handle: &FailoverHandle) -> Self {
        FailoverMiddleware {
            shared: handle.shared.clone(),
            classifier: DefaultClassifier::new(),
        }
    }
}

impl<C> FailoverMiddleware<C>
where
    C: Classifier + Clone + Send + Sync + 'static,
{
    /// Lends `client` for failback probes and maintenance checks, judged by this middleware's
    /// classifier. A tower [`Failover`](crate::Failover) lends its inner service on its first
    /// call; a layer used only through reqwest needs this for
    /// [`Failback`](crate::Failback) to probe (the first lender wins).
    ///
    /// ```
    /// use tower_failover::{Endpoints, Failback, FailoverLayer};
    ///
    /// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
    ///     .failback(Failback::dynamics())
    ///     .build()
    ///     .unwrap();
    /// let reqwest = reqwest::Client::new();
    /// let middleware = layer.middleware().probe_with(reqwest.clone());
    /// let client = reqwest_middleware::ClientBuilder::new(reqwest).with(middleware).build();
    /// # let _ = client;
    /// ```
    pub fn probe_with(self, client: reqwest::Client) -> Self {
        let classifier = self.classifier.clone();
        self.shared.offer_prober(|| {
            Arc::new(move |request: HttpRequest<()>| {
                let client = client.clone();
                let classifier = classifier.clone();
                Box::pin(async move {
                    let Ok(url) = reqwest::Url::parse(&request.uri().to_string()) else {
                        return false;
                    };
                    match client.request(request.method().clone(), url).send().await {
                        Ok(response) => {
                            classifier.classify(Outcome::Response {
                                status: response.status(),
                                headers: response.headers(),
                                body: None,
                            }) == Verdict::Success
                        }
                        Err(_) => false,
                    }
                })
            })
        });
        self
    }
}

impl<C> FailoverMiddleware<C> {
    /// The application's handle on the switch state.
    ///
    /// ```
    /// use tower_failover::{Endpoints, FailoverLayer};
    ///
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let middleware = layer.middleware();
    /// let handle = middleware.handle();
    /// assert_eq!(handle.active_endpoint().host(), "contoso.api.crm.dynamics.com");
    /// ```
    pub fn handle(&self) -> FailoverHandle {
        FailoverHandle::new(self.shared.clone())
    }
}

impl<C> std::fmt::Debug for FailoverMiddleware<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailoverMiddleware")
            .field("endpoints", &self.shared.endpoints)
            .finish_non_exhaustive()
    }
}

/// What a re-send needs from the original reqwest request.
struct Template {
    head: HeadTemplate,
    // Why there can be no re-send, if there cannot.
    resend: Result<Resendable, NotResent>,
}

/// What a request that may be sent again keeps besides its head.
struct Resendable {
    body: ResendBody<reqwest::Body>,
    // The original request without its body or headers, for what reqwest keeps on the request
    // and not in the head: its extensions (its own `.timeout(..)` among them), reachable only
    // through it.
    base: reqwest::Request,
}

impl Template {
    fn build(&self, shared: &Shared, side: Side) -> Result<reqwest::Request, NotResent> {
        let Resendable { body, base } = self.resend.as_ref().map_err(|reason| *reason)?;
        let body = match body {
            ResendBody::Empty => None,
            ResendBody::Recorded(handle) => Some(reqwest::Body::wrap(handle.replay()?)),
            ResendBody::Whole(bytes) => Some(reqwest::Body::from(bytes.clone())),
        };
        let parts = self.head.parts_for(shared, side);
        let url = reqwest::Url::parse(&parts.uri.to_string()).map_err(|_| NotResent::NotRouted)?;
        let mut request = base.try_clone().expect("a request without a body always clones");
        *request.method_mut() = parts.method;
        *request.url_mut() = url;
        *request.headers_mut() = parts.headers;
        *request.version_mut() = parts.version;
        *request.body_mut() = body;
        Ok(request)
    }

    /// Points a request built for one side at `side`: its URL and `Host`, the rest kept.
    fn point(&self, shared: &Shared, side: Side, request: &mut reqwest::Request) {
        let parts = self.head.parts_for(shared, side);
        // An endpoint's URL always parses; were it not to, the request stays as it was.
        if let Ok(url) = reqwest::Url::parse(&parts.uri.to_string()) {
            *request.url_mut() = url;
            *request.headers_mut() = parts.headers;
        }
    }
}

/// The bytes of a body reqwest holds whole in memory (made from bytes, a string, JSON or a
/// form: `as_bytes` is `Some`) of at most `cap` bytes, taken without a copy; `body` is left an
/// equal body over the same buffer. `None` leaves a streamed or larger body untouched.
fn take_whole(body: &mut reqwest::Body, cap: usize) -> Option<Bytes> {
    if body.as_bytes()?.len() > cap {
        return None;
    }
    // An in-memory body answers at once, so a waker that does nothing is enough.
    let mut cx = Context::from_waker(Waker::noop());
    let first = match Pin::new(&mut *body).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    };
    // reqwest hands an in-memory body out in one frame, leaving it empty (a unit test holds
    // it to that). Were it ever to split it, the rest is joined on, so nothing is lost.
    let whole = match body.as_bytes() {
        Some([]) | None => first,
        Some(rest) => Bytes::from([&first[..], rest].concat()),
    };
    *body = reqwest::Body::from(whole.clone());
    Some(whole)
}

/// Settles the call as abandoned if the caller drops the future mid-call.
struct CallGuard {
    shared: Arc<Shared>,
    call: CallState,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.call.abandon(&self.shared);
    }
}

fn failed(error: FailoverError) -> reqwest_middleware::Error {
    reqwest_middleware::Error::middleware(error)
}

#[async_trait::async_trait]
impl<C> Middleware for FailoverMiddleware<C>
where
    C: Classifier + Clone + Send + Sync + 'static,
{
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        // The engine routes on an `http` head: build one from the reqwest request, with the
        // middleware extensions (where a `RetryPolicy` or `WriteKey` may sit).
        let Ok(uri) = request.url().as_str().parse::<Uri>() else {
            return next.run(request, extensions).await;
        };
        let mut head = HttpRequest::new(());
        *head.method_mut() = request.method().clone();
        *head.uri_mut() = uri;
        *head.version_mut() = request.version();
        // Moved, not copied: the request gets them back, as the plan left them, before it goes
        // anywhere. Until then it has none, so the base for re-sends below copies none.
        *head.headers_mut() = std::mem::take(request.headers_mut());
        *head.extensions_mut() = std::mem::take(extensions);
        let (mut parts, ()) = head.into_parts();
        let is_empty = request
            .body()
            .is_none_or(|b| b.as_bytes().is_some_and(<[u8]>::is_empty));
        let plan = self.shared.plan(&mut parts, is_empty);
        *extensions = std::mem::take(&mut parts.extensions);
        let Some((plan, body_plan)) = plan else {
            // Not routed: `plan` leaves the headers as they were.
            *request.headers_mut() = parts.headers;
            return next.run(request, extensions).await;
        };
        match reqwest::Url::parse(&parts.uri.to_string()) {
            Ok(url) => *request.url_mut() = url,
            Err(_) => {
                *request.headers_mut() = parts.headers;
                return next.run(request, extensions).await;
            }
        }
        // The template keeps its own copy of the head; the request takes the headers as they
        // are (the `Host` pointed at the active endpoint).
        let head = HeadTemplate::of(&parts);
        // The base for re-sends, only when one can happen (it costs a copy of the URL): the
        // request without its body and headers (the template has those), so the clone copies
        // little more than the URL and the extensions.
        let body = request.body_mut().take();
        let base = match body_plan {
            BodyPlan::Unkept(reason) => Err(reason),
            _ => Ok(request
                .try_clone()
                .expect("a request without a body always clones")),
        };
        *request.headers_mut() = parts.headers;

        let resend_body = match body_plan {
            BodyPlan::Record(cap) => match body {
                Some(mut body) => match take_whole(&mut body, cap) {
                    // In memory already: the first attempt keeps it as reqwest made it (so
                    // reqwest can follow a 307 or 308 with it), a re-send clones the bytes.
                    Some(bytes) => {
                        *request.body_mut() = Some(body);
                        Ok(ResendBody::Whole(bytes))
                    }
                    None => {
                        let (first, handle) = ReplayBody::recorded(body, cap);
                        *request.body_mut() = Some(reqwest::Body::wrap(first));
                        Ok(ResendBody::Recorded(handle))
                    }
                },
                None => Ok(ResendBody::Empty),
            },
            BodyPlan::Empty => {
                *request.body_mut() = body;
                Ok(ResendBody::Empty)
            }
            BodyPlan::Unkept(reason) => {
                *request.body_mut() = body;
                Err(reason)
            }
        };
        let template = Template {
            head,
            resend: resend_body.and_then(|body| base.map(|base| Resendable { body, base })),
        };
        let mut guard = CallGuard {
            shared: self.shared.clone(),
            call: CallState::new(&self.shared, plan, template.head.method()),
        };
        let shared = &*self.shared;
        // The call's span is entered while it runs (see `CallState::span`).
        let span = guard.call.span().cloned().unwrap_or_else(tracing::Span::none);
        let guard = &mut guard;
        let run = async move {
            let mut attempt = request;
            loop {
                // The attempt and the read of a small error body for the classifier, both within
                // the call's deadline, as in the tower future.
                let attempt_judged = async {
                    match next.clone().run(attempt, extensions).await {
                        Ok(response) => Ok(self.judge(response).await),
                        Err(error) => Err(error),
                    }
                };
                let result = match guard.call.plan.deadline {
                    Some(deadline) => match tokio::time::timeout_at(deadline.into(), attempt_judged).await {
                        Ok(result) => result,
                        Err(_) => return Err(failed(guard.call.on_deadline(shared, true))),
                    },
                    None => attempt_judged.await,
                };
                let build = |side| template.build(shared, side);
                let step = match result {
                    Ok((response, verdict)) => {
                        match guard
                            .call
                            .after_response(shared, response.status(), verdict, build)
                        {
                            Step::Answer => return Ok(response),
                            // The response is dropped here, before any wait: its connection goes
                            // back to the pool.
                            step => step,
                        }
                    }
                    Err(error) => {
                        let mut error: BoxError = match error {
                            reqwest_middleware::Error::Reqwest(e) => Box::new(e),
                            // As the error a middleware below made, not an opaque box: the
                            // classifier and the caller can downcast it.
                            reqwest_middleware::Error::Middleware(e) => {
                                e.reallocate_into_boxed_dyn_error_without_backtrace()
                            }
                        };
                        // reqwest shows the URL in its errors, even one a middleware below
                        // handed on: without its query (it may carry secrets), as the
                        // data-loss report shows paths.
                        if !shared.record_query {
                            if let Some(url) = error
                                .downcast_mut::<reqwest::Error>()
                                .and_then(reqwest::Error::url_mut)
                            {
                                url.set_query(None);
                            }
                        }
                        let verdict = self.classifier.classify(Outcome::Error(&*error));
                        guard.call.after_error(shared, error, verdict, build)
                    }
                };
                let next_attempt = match step {
                    Step::Answer => unreachable!("handed back above"),
                    Step::Fail(error) => return Err(failed(error)),
                    Step::Resend(request) => request,
                    Step::Wait(wait, mut request) => {
                        tokio::time::sleep(wait).await;
                        // Calls may have moved during the wait: the retry, body and all, is
                        // pointed where they go now.
                        guard
                            .call
                            .after_wait(shared, |side| template.point(shared, side, &mut request));
                        request
                    }
                };
                // A wait may end late (a busy runtime): nothing goes out after the deadline.
                guard.call.resend_going_out(shared).map_err(failed)?;
                attempt = next_attempt;
            }
        };
        tracing::Instrument::instrument(run, span).await
    }
}

impl<C: Classifier> FailoverMiddleware<C> {
    /// Classifies a response, reading a small error body first when the classifier asks; the
    /// response handed back carries every byte, read or not.
    async fn judge(&self, response: reqwest::Response) -> (reqwest::Response, Verdict) {
        let limit = self.classifier.peek_limit(response.status(), response.headers());
        if limit == 0 {
            let verdict = self.classifier.classify(Outcome::Response {
                status: response.status(),
                headers: response.headers(),
                body: None,
            });
            return (response, verdict);
        }
        let url = response.url().clone();
        let (mut head, body) = http::Response::<reqwest::Body>::from(response).into_parts();
        let peeked = peek_body(body, limit, self.classifier.peek_timeout()).await;
        let verdict = self.classifier.classify(Outcome::Response {
            status: head.status,
            headers: &head.headers,
            body: peeked.complete_body(),
        });
        // reqwest keeps a response's URL in an extension only its builder can set.
        if let Ok(carrier) = reqwest::ResponseBuilderExt::url(http::Response::builder(), url).body(()) {
            head.extensions.extend(carrier.into_parts().0.extensions);
        }
        let body = reqwest::Body::wrap(ResponseBody::peeked(peeked));
        (
            reqwest::Response::from(http::Response::from_parts(head, body)),
            verdict,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_in_memory_is_taken_whole_and_left_equal() {
        let payload = Bytes::from(vec![7u8; 5000]);
        let mut body = reqwest::Body::from(payload.clone());
        let taken = take_whole(&mut body, 5000).expect("in memory, within the cap");
        assert_eq!(taken, payload);
        assert_eq!(taken.as_ptr(), payload.as_ptr(), "no copy");
        assert_eq!(body.as_bytes(), Some(&payload[..]), "left as it was");

        let mut empty = reqwest::Body::from(Vec::new());
        assert_eq!(take_whole(&mut empty, 10), Some(Bytes::new()));

        // Over the cap, or streamed: left alone, for the recorded path.
        let mut large = reqwest::Body::from(payload.clone());
        assert_eq!(take_whole(&mut large, 4999), None);
        assert_eq!(large.as_bytes(), Some(&payload[..]));
        let frames = futures_util::stream::iter([Ok::<_, std::io::Error>(http_body::Frame::data(payload))]);
        let mut streamed = reqwest::Body::wrap(http_body_util::StreamBody::new(frames));
        assert_eq!(take_whole(&mut streamed, usize::MAX), None);
        assert!(streamed.as_bytes().is_none());
    }
}
