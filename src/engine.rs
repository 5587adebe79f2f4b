//! The decisions of one call, independent of how the call is driven: where it goes, whether
//! its body is kept for a re-send, what a failed attempt means, whether the call may be sent
//! again, and the error the caller gets when it may not. The tower future drives these; any
//! other adapter drives the same functions rather than re-deciding.

use http::{HeaderMap, Method, Uri};
use http_body::SizeHint;

use crate::classify::DownKind;
use crate::endpoint::{rewrite_host_header, rewrite_uri, Endpoint, Side};
use crate::error::{AttemptError, FailoverError, FailoverErrorKind, NotResent};
use crate::policy::is_idempotent;
use crate::state::{Active, Shared, SwitchCause, SwitchOutcome};

/// How the first attempt's body is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyPlan {
    /// Keep a recording: a re-send is possible and the body may fit the cap.
    Record,
    /// The body is empty: a re-send sends an empty body, nothing to keep.
    Empty,
    /// Pass the body through unkept; a re-send is refused for this reason.
    Unkept(NotResent),
}

/// What the engine decided for a routed call before its first attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallPlan {
    /// The generation and side the first attempt goes to.
    pub(crate) active: Active,
    /// Whether the request may be sent again after it may have reached the server.
    pub(crate) idempotent: bool,
    /// Whether a re-send can happen at all (automatic switching on, an alternate present).
    pub(crate) resend_possible: bool,
}

impl Shared {
    /// Routes a request: `None` when its URI names neither endpoint (it passes through
    /// untouched); otherwise the plan, with the URI and `Host` already pointed at the active
    /// endpoint.
    pub(crate) fn plan(&self, method: &Method, uri: &mut Uri, headers: &mut HeaderMap) -> Option<CallPlan> {
        self.endpoints.side_of(uri)?;
        let active = self.active();
        self.point_at(active.side, uri, headers);
        Some(CallPlan {
            active,
            idempotent: is_idempotent(method, headers),
            resend_possible: self.auto_switch_enabled(),
        })
    }

    /// Points a routed request at one side.
    pub(crate) fn point_at(&self, side: Side, uri: &mut Uri, headers: &mut HeaderMap) {
        let target = self.endpoint(side);
        *uri = rewrite_uri(std::mem::take(uri), target);
        rewrite_host_header(headers, &self.endpoints, target);
    }

    /// Decides up front whether to record the body: only when a re-send is possible and the
    /// declared size does not already exceed the cap.
    pub(crate) fn body_plan(&self, plan: &CallPlan, hint: &SizeHint, is_end_stream: bool) -> BodyPlan {
        if !plan.resend_possible {
            BodyPlan::Unkept(NotResent::AutoSwitchOff)
        } else if is_end_stream {
            BodyPlan::Empty
        } else if hint.lower() > self.replay_cap as u64 {
            BodyPlan::Unkept(NotResent::BodyOverCap { cap: self.replay_cap })
        } else {
            BodyPlan::Record
        }
    }

    /// A routed attempt found its endpoint down. Switches (once per failure wave) and says
    /// where a re-send would go, or why there is none.
    pub(crate) fn after_down(&self, plan: &CallPlan, kind: &DownKind) -> Result<Side, NotResent> {
        let outcome = self.switch_from(plan.active, SwitchCause::EndpointDown(kind.clone()), true);
        let to = match outcome {
            SwitchOutcome::Switched { to } | SwitchOutcome::AlreadySwitched { to } => to,
            SwitchOutcome::Refused => return Err(NotResent::AutoSwitchOff),
        };
        // Only a failure before the request left the client proves it was not applied.
        if kind.request_may_have_been_sent() && !plan.idempotent {
            return Err(NotResent::NotIdempotent);
        }
        Ok(to)
    }
}

/// The endpoint an attempt went to, for errors and traces.
pub(crate) fn attempt_endpoint(shared: &Shared, side: Side) -> Endpoint {
    shared.endpoint(side).clone()
}

/// The error for a call whose endpoint was down and that was not re-sent.
pub(crate) fn not_resent_error(kind: &DownKind, reason: NotResent, cause: AttemptError) -> FailoverError {
    let error_kind = if reason.is_body() {
        FailoverErrorKind::NotReplayable { reason }
    } else {
        FailoverErrorKind::from_down(kind)
    };
    FailoverError::new(error_kind, kind.request_may_have_been_sent(), cause).not_resent(reason)
}

/// The error for a call that failed on the first endpoint and again when re-sent: the seed's
/// step 9, typed by the second failure.
pub(crate) fn second_failure_error(
    first_kind: &DownKind,
    first: AttemptError,
    second_kind: Option<&DownKind>,
    second: AttemptError,
) -> FailoverError {
    let kind = second_kind.map_or(FailoverErrorKind::Inner, FailoverErrorKind::from_down);
    // An error the classifier does not know says nothing about whether the server applied the
    // request, so it counts as "may have been".
    let second_sent = second_kind.map_or(true, DownKind::request_may_have_been_sent);
    FailoverError::new(kind, first_kind.request_may_have_been_sent() || second_sent, second).with_first(first)
}

/// The error for an inner failure that is not an outage (no switch, no re-send).
pub(crate) fn inner_error(cause: AttemptError) -> FailoverError {
    FailoverError::new(FailoverErrorKind::Inner, true, cause)
}
