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
/// ```
/// use tower_failover::{Endpoints, FailoverLayer, TowerHttpClassifier};
/// use tower_http::classify::StatusInRangeAsFailures;
///
/// // 500..=599 counts as "the endpoint is down", as it does for the trace layer.
/// let classifier = TowerHttpClassifier::new(StatusInRangeAsFailures::new(500..=599));
/// # let _ = classifier;
/// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
///     .classifier(TowerHttpClassifier::new(tower_http::classify::ServerErrorsAsFailures::new()))
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
