//! [`TowerHttpClassifier`]: a tower-http [`ClassifyResponse`] used as this crate's
//! [`Classifier`], so a stack that already says what a failed response is (for `TraceLayer`,
//! say) says it once.

use http::{HeaderMap, Response, StatusCode};
use tower_http::classify::{ClassifiedResponse, ClassifyResponse};

use crate::classify::{classify_error, Classifier, DownKind, Outcome, Verdict};

/// Judges responses with a tower-http classifier: a response it calls a failure means the
/// endpoint is down. Errors are judged as the [`DefaultClassifier`](crate::DefaultClassifier)
/// judges them (connect failures, timeouts, lost connections), since tower-http's error
/// classes do not say whether a request left the client.
///
/// A classifier that needs the end of the stream (gRPC's trailers) cannot be consulted before
/// the response is handed on; such responses count as successes.
///
/// It knows nothing of throttling or fault codes: a response it does not call a failure (a 429,
/// say) is handed back with no retry, and a 503 with `Retry-After` is an outage like any other
/// failure. Keep the [`DefaultClassifier`](crate::DefaultClassifier) where those matter.
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use tower_failover::{Classifier, DownKind, Endpoints, FailoverLayer, Outcome, TowerHttpClassifier, Verdict};
/// use tower_http::classify::StatusInRangeAsFailures;
///
/// // The stack already calls 500..=599 a failure for its trace layer; failover says the same.
/// let classifier = TowerHttpClassifier::new(StatusInRangeAsFailures::new(500..=599));
/// let headers = HeaderMap::new();
/// let judge = |status| classifier.classify(Outcome::Response { status, headers: &headers, body: None });
/// assert_eq!(
///     judge(StatusCode::INTERNAL_SERVER_ERROR),
///     Verdict::EndpointDown(DownKind::Unavailable { status: StatusCode::INTERNAL_SERVER_ERROR })
/// );
/// assert_eq!(judge(StatusCode::TOO_MANY_REQUESTS), Verdict::Success);
///
/// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
///     .classifier(classifier)
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct TowerHttpClassifier<T> {
    inner: T,
}

impl<T> TowerHttpClassifier<T> {
    /// Wraps a tower-http response classifier.
    pub fn new(inner: T) -> Self {
        TowerHttpClassifier { inner }
    }
}

impl<T> Classifier for TowerHttpClassifier<T>
where
    T: ClassifyResponse + Clone,
{
    fn classify(&self, outcome: Outcome<'_>) -> Verdict {
        match outcome {
            Outcome::Response { status, headers, .. } => {
                match self.inner.clone().classify_response(&head_only(status, headers)) {
                    ClassifiedResponse::Ready(Err(_)) => {
                        Verdict::EndpointDown(DownKind::Unavailable { status })
                    }
                    ClassifiedResponse::Ready(Ok(())) | ClassifiedResponse::RequiresEos(_) => {
                        Verdict::Success
                    }
                }
            }
            Outcome::Error(error) => classify_error(error).map_or(Verdict::Fail, Verdict::EndpointDown),
        }
    }
}

fn head_only(status: StatusCode, headers: &HeaderMap) -> Response<()> {
    // tower-http classifies a whole `Response`; ours is split, so rebuild the head. Only
    // the status and headers matter to a response classifier.
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = headers.clone();
    response
}
