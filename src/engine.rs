//! The decisions of one call, independent of how the call is driven: where it goes, which
//! policy applies, whether its body is kept for a re-send, what a failed or throttled attempt
//! means, whether the call may be sent again, what the ledger records, and the error the
//! caller gets. The tower future drives these; any other adapter drives the same functions
//! rather than re-deciding.

use std::time::{Duration, Instant};

use http::request::Parts;
use http::uri::PathAndQuery;
use http::StatusCode;

use crate::classify::DownKind;
use crate::counters::Counter;
use crate::endpoint::{rewrite_host_header, rewrite_uri, uri_at, Side};
use crate::error::{AttemptError, FailoverError, FailoverErrorKind, NotResent};
use crate::ledger::{WriteId, WriteOutcome};
use crate::policy::{Refusal, RetryPolicy};
use crate::state::{Active, Shared, SwitchCause, SwitchOutcome};
use crate::throttle::backoff;

/// The first wait of the throttling backoff when the server names none.
const THROTTLE_BASE_BACKOFF: Duration = Duration::from_millis(500);

/// How the first attempt's body is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyPlan {
    /// Keep a recording of up to this many bytes: a re-send is possible and the body may fit.
    Record(usize),
    /// The body is empty: a re-send sends an empty body, nothing to keep.
    Empty,
    /// Pass the body through unkept; a re-send is refused for this reason.
    Unkept(NotResent),
}

/// What the engine decided for a routed call before its first attempt, and what it has
/// learned since.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallPlan {
    /// The generation and side the first attempt goes to.
    pub(crate) active: Active,
    /// The policy's throttling limits: retries, and the longest wait.
    throttle_retries: u32,
    throttle_max_delay: Duration,
    /// Why a re-send would be refused after a failure that may have reached the server, and
    /// after one that provably did not (`None`: allowed).
    refusal_if_received: Option<Refusal>,
    refusal_if_unsent: Option<Refusal>,
    /// Whether a re-send can happen at all (automatic switching on, an alternate present).
    pub(crate) resend_possible: bool,
    /// The call's place in the data-loss ledger, when it is a recorded write.
    write: Option<WriteId>,
    /// The write failed after it may have been received, then was re-sent.
    resent_after_received: bool,
    /// An attempt that may have been received was followed by another (a retry after a
    /// throttling *error*): whatever the last attempt shows, the call may have been applied.
    earlier_maybe_received: bool,
    /// By side: an attempt there may have been received. A write re-sent to a side and
    /// provably not applied there is no longer listed off it, unless this says otherwise.
    maybe_received_on: [bool; 2],
    settled: bool,
    /// When the whole call must be over.
    pub(crate) deadline: Option<Instant>,
}

impl CallPlan {
    /// By the clock, not a timer: a timer fires only once the runtime's timer driver has seen
    /// the deadline pass, and a busy runtime can run the call after the deadline before then.
    fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|at| Instant::now() >= at)
    }
}

/// Which kind of re-send a call made last: what to give back if it never goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pending {
    Failover,
    Throttle,
}

/// How a call ended, for the ledger and the counters.
pub(crate) enum CallEnd<'a> {
    Response(StatusCode),
    Error(&'a FailoverError),
}

impl Shared {
    /// Routes a request: `None` when its URI names neither endpoint (it passes through
    /// untouched); otherwise the plan and how to handle its body (`body_is_empty`: the body
    /// is known to be empty), with the URI and `Host` already pointed at the active endpoint.
    pub(crate) fn plan(&self, parts: &mut Parts, body_is_empty: bool) -> Option<(CallPlan, BodyPlan)> {
        let (side, exact) = self.endpoints.locate(&parts.uri)?;
        self.calls.add();
        // The path is the same before and after the URI is pointed at an endpoint.
        let policy = self.routes.choose(
            &self.default_policy,
            &parts.method,
            parts.uri.path(),
            &parts.extensions,
        );
        // A write reads the active side under the ledger's lock (see `Ledger::begin`).
        let (active, write) = match &self.ledger {
            Some(ledger) if policy.is_write(&parts.method) => {
                let (id, active) = ledger.begin(
                    &parts.method,
                    parts.uri.path_and_query(),
                    &parts.headers,
                    &parts.extensions,
                    || self.active(),
                );
                (active, Some(id))
            }
            _ => (self.active(), None),
        };
        // Most calls already name the active endpoint as configured: their URI stays as it is.
        if !(exact && side == active.side && parts.uri.path_and_query().is_some()) {
            parts.uri = rewrite_uri(std::mem::take(&mut parts.uri), self.endpoint(active.side));
        }
        rewrite_host_header(&mut parts.headers, &self.endpoints, self.endpoint(active.side));
        let (throttle_retries, throttle_max_delay) = policy.throttle_limits();
        let plan = CallPlan {
            active,
            throttle_retries,
            throttle_max_delay,
            refusal_if_received: policy.refusal(&parts.method, &parts.headers, true),
            refusal_if_unsent: policy.refusal(&parts.method, &parts.headers, false),
            resend_possible: self.auto_switch_enabled(),
            write,
            resent_after_received: false,
            earlier_maybe_received: false,
            maybe_received_on: [false; 2],
            settled: false,
            // A limit too far away to be an instant (`Duration::MAX`, say) is no limit.
            deadline: policy
                .deadline_limit()
                .and_then(|limit| Instant::now().checked_add(limit)),
        };
        let body = self.body_plan(&plan, &policy, body_is_empty);
        Some((plan, body))
    }

    /// Points a re-send's head at one side: its URI (scheme, authority, then this path and
    /// query) and its `Host`.
    pub(crate) fn point_at(&self, side: Side, parts: &mut Parts, path_and_query: Option<PathAndQuery>) {
        let target = self.endpoint(side);
        parts.uri = uri_at(target, path_and_query);
        rewrite_host_header(&mut parts.headers, &self.endpoints, target);
    }

    /// Decides up front whether to record the body: only when some re-send is possible (a
    /// failover, or a throttling retry). A body declared larger than the cap is wrapped too:
    /// the cap bounds the bytes *read* before a failure, so one refused at connect, or cut off
    /// early, can still be re-sent.
    fn body_plan(&self, plan: &CallPlan, policy: &RetryPolicy, is_end_stream: bool) -> BodyPlan {
        // A policy's cap obeys the same ceiling as the layer's: it is memory per call in flight.
        let cap = policy
            .replay_cap_or(self.replay_cap)
            .min(crate::layer::MAX_REPLAY_CAP);
        let failover = plan.resend_possible && plan.refusal_if_unsent.is_none();
        let throttling = plan.throttle_retries > 0;
        if !failover && !throttling {
            BodyPlan::Unkept(
                plan.refusal_if_unsent
                    .map_or(NotResent::AutoSwitchOff, NotResent::from),
            )
        } else if is_end_stream {
            BodyPlan::Empty
        } else {
            BodyPlan::Record(cap)
        }
    }

    /// A routed attempt found its endpoint down. Records the write's fate, switches (once per
    /// failure wave), and says where a re-send goes, or why there is none.
    pub(crate) fn after_down(&self, plan: &mut CallPlan, kind: &DownKind) -> Result<Side, NotResent> {
        // This attempt, or an earlier one (retried after a throttling error), may have reached
        // the server.
        let sent = kind.request_may_have_been_sent();
        let received = sent || plan.earlier_maybe_received;
        plan.maybe_received_on[plan.active.side.index()] |= sent;
        if let (Some(ledger), Some(id)) = (&self.ledger, plan.write) {
            // Settle before switching, so the switch's report counts this write as unknown.
            if received {
                if !sent {
                    // Only an earlier attempt may have been received: if that was on the other
                    // side, this one's side does not hold it.
                    self.not_applied_on(plan, plan.active.side);
                }
                ledger.settle(id, WriteOutcome::Unknown);
            } else {
                // It provably never reached this side: take it off this side before the switch
                // makes its report, or the report would list it as in flight here. Where it
                // goes next is set by `commit_resend`; if it is not re-sent, the call fails as
                // not applied and the write is forgotten.
                ledger.moved(id, plan.active.side.other());
            }
        }
        let outcome = self.switch_from(plan.active, SwitchCause::EndpointDown(kind.clone()), true);
        let to = match outcome {
            SwitchOutcome::Switched { to } | SwitchOutcome::AlreadySwitched { to } => to,
            SwitchOutcome::Refused => return Err(NotResent::AutoSwitchOff),
        };
        let refusal = if received {
            plan.refusal_if_received
        } else {
            plan.refusal_if_unsent
        };
        if let Some(reason) = refusal {
            return Err(reason.into());
        }
        if plan.past_deadline() {
            return Err(NotResent::DeadlineTooClose);
        }
        Ok(to)
    }

    /// The re-send `after_down` allowed was built: takes it from the budget, and records it.
    /// Only once it is built, so that a re-send refused for its body spends nothing and is not
    /// counted as made.
    pub(crate) fn commit_resend(
        &self,
        plan: &mut CallPlan,
        kind: &DownKind,
        to: Side,
    ) -> Result<(), NotResent> {
        let received = kind.request_may_have_been_sent() || plan.earlier_maybe_received;
        if !self.failover_budget.withdraw(self.calls.get()) {
            self.counters.add(Counter::RefusedByBudget);
            tracing::warn!(
                budget = "failover",
                "failover: re-send refused, retry budget spent"
            );
            return Err(NotResent::BudgetExhausted);
        }
        if let (Some(ledger), Some(id)) = (&self.ledger, plan.write) {
            if received {
                // It may be held by both sides now: reports off either list it. Unless calls
                // have left `to` again since the switch (another call failed there, say): the
                // switch off it has made its report without this write.
                if !ledger.resend_to(id, to, || self.active()) {
                    self.failover_budget.give_back();
                    return Err(NotResent::SwitchedAgain);
                }
                plan.resent_after_received = true;
            } else {
                ledger.moved(id, to);
            }
        }
        Ok(())
    }

    /// A re-send that was built and taken from its budget could not go out (the inner
    /// service did not get ready): gives its budget back. (It was never counted: re-sends are
    /// counted as they go out, so the counters only ever rise.)
    pub(crate) fn give_back(&self, pending: Pending) {
        match pending {
            Pending::Failover => self.failover_budget.give_back(),
            Pending::Throttle => self.throttle_budget.give_back(),
        }
    }

    /// A routed attempt was throttled. Says how long to wait before retrying on the same
    /// endpoint, or why not to (the caller then gets the throttling answer as it is).
    pub(crate) fn after_throttle(
        &self,
        plan: &CallPlan,
        retries_so_far: u32,
        retry_after: Option<Duration>,
    ) -> Result<Duration, NotResent> {
        self.counters.add(Counter::Throttled);
        let (max_retries, max_delay) = (plan.throttle_retries, plan.throttle_max_delay);
        if retries_so_far >= max_retries {
            return Err(NotResent::PolicyForbids);
        }
        let wait = match retry_after {
            Some(wait) if wait > max_delay => return Err(NotResent::DeadlineTooClose),
            Some(wait) => wait,
            None => backoff(retries_so_far, THROTTLE_BASE_BACKOFF, max_delay),
        };
        // A wait too long to add to now (a huge `Retry-After` with no maximum) passes any deadline.
        if plan
            .deadline
            .is_some_and(|d| Instant::now().checked_add(wait).is_none_or(|end| end >= d))
        {
            return Err(NotResent::DeadlineTooClose);
        }
        Ok(wait)
    }

    /// The throttling retry `after_throttle` allowed was built: takes it from the budget, and
    /// counts it (only then, as `commit_resend`).
    pub(crate) fn commit_throttle_retry(&self) -> Result<(), NotResent> {
        if !self.throttle_budget.withdraw(self.calls.get()) {
            self.counters.add(Counter::RefusedByBudget);
            tracing::warn!(
                budget = "throttle",
                "failover: throttling retry refused, retry budget spent"
            );
            return Err(NotResent::BudgetExhausted);
        }
        Ok(())
    }

    /// The call is over: settle its write in the ledger and count what needs counting.
    pub(crate) fn finish(&self, plan: &mut CallPlan, end: CallEnd<'_>) {
        if plan.settled {
            return;
        }
        plan.settled = true;
        let possibly_applied = match end {
            CallEnd::Error(error) => {
                if matches!(error.kind(), FailoverErrorKind::DeadlineExceeded) {
                    self.counters.add(Counter::DeadlineExceeded);
                }
                error.possibly_applied()
            }
            CallEnd::Response(_) => false,
        };
        // Sent more than once, and an earlier attempt may have been received: neither a refusal
        // nor an error of the last attempt proves the call was not applied.
        let earlier_maybe = plan.resent_after_received || plan.earlier_maybe_received;
        if possibly_applied {
            self.counters.add(Counter::PossiblyApplied);
        }
        let (Some(ledger), Some(id)) = (&self.ledger, plan.write) else {
            return;
        };
        match end {
            CallEnd::Response(status) if status.as_u16() < 400 => ledger.settle(
                id,
                if plan.resent_after_received {
                    WriteOutcome::ResentOnAlternate
                } else {
                    WriteOutcome::Acknowledged
                },
            ),
            // Refused by the server: not applied.
            CallEnd::Response(status) if status.is_client_error() && !earlier_maybe => ledger.forget(id),
            CallEnd::Error(_) if !possibly_applied && !earlier_maybe => ledger.forget(id),
            _ => ledger.settle(id, WriteOutcome::Unknown),
        }
    }

    /// An attempt on `side` provably did not apply the write (refused at connect, or with a
    /// 4xx, or it never went out): unless an earlier attempt there may have been received,
    /// reports off `side` stop listing it, if it is listed off `side` only as sent there again
    /// (see `Ledger::not_applied_on`).
    pub(crate) fn not_applied_on(&self, plan: &CallPlan, side: Side) {
        if plan.maybe_received_on[side.index()] {
            return;
        }
        if let (Some(ledger), Some(id)) = (&self.ledger, plan.write) {
            ledger.not_applied_on(id, side);
        }
    }

    /// The call was dropped before it ended: its write's outcome is unknown, unless nothing was
    /// in flight (`between_attempts`: a throttling wait, a re-send waiting for the inner
    /// service) and no attempt that went out may have been received (`maybe_received_on`):
    /// then it was not applied, as when the call's deadline ends it there.
    pub(crate) fn abandon(&self, plan: &mut CallPlan, between_attempts: bool) {
        if plan.settled {
            return;
        }
        plan.settled = true;
        // Every attempt that may have been received marked its side (`after_down` for a
        // failover's first attempt, `on_throttled` for a retried throttling error), and a
        // re-send after one is only made once that is marked.
        let maybe_received = plan.maybe_received_on.contains(&true);
        if let (Some(ledger), Some(id)) = (&self.ledger, plan.write) {
            if between_attempts && !maybe_received {
                ledger.forget(id);
            } else {
                ledger.settle(id, WriteOutcome::Unknown);
            }
        }
    }
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
    let second_sent = second_kind.is_none_or(DownKind::request_may_have_been_sent);
    FailoverError::new(
        kind,
        first_kind.request_may_have_been_sent() || second_sent,
        second,
    )
    .with_first(first)
}

/// The error for an inner failure that is not an outage (no switch, no re-send).
pub(crate) fn inner_error(cause: AttemptError) -> FailoverError {
    FailoverError::new(FailoverErrorKind::Inner, true, cause)
}

/// The error for a call whose deadline passed. An attempt was in flight, so the request may
/// have been applied.
pub(crate) fn deadline_error(cause: AttemptError, first: Option<AttemptError>) -> FailoverError {
    let error = FailoverError::new(FailoverErrorKind::DeadlineExceeded, true, cause);
    match first {
        Some(first) => error.with_first(first),
        None => error,
    }
}

/// What a driver does after an attempt, as the engine decided it.
pub(crate) enum Step<R> {
    /// Hand the answer to the caller as it is (the call is settled).
    Answer,
    /// Fail the call with this error (the call is settled).
    Fail(FailoverError),
    /// Send this request now (to the other endpoint).
    Resend(R),
    /// Wait, then send this request (to the same endpoint: throttling).
    Wait(Duration, R),
}

/// One routed call's progress: its plan, the side its attempt in flight went to, and what
/// its attempts have shown so far. Every driver (the tower future, the reqwest middleware)
/// holds one and asks it what to do after each attempt.
pub(crate) struct CallState {
    pub(crate) plan: CallPlan,
    // One span per routed call, with OpenTelemetry HTTP field names; the call's events are its
    // children. Disabled spans cost a callsite check.
    // `None` while no subscriber would see it (no dispatcher set, or this level filtered
    // out): boxed otherwise, since the span is 40 bytes every call's future would carry.
    span: Option<Box<tracing::Span>>,
    pub(crate) side: Side,
    throttle_retries: u32,
    // What the last re-send decided on was, and whether it has yet to go out (its budget is
    // given back if the call ends first).
    pending: Pending,
    outstanding: bool,
    // Set once the call has been re-sent on the other endpoint: how the first attempt failed.
    // Boxed: it is set only after a failure, and inline it would add about 170 bytes to every
    // routed call's future.
    first: Option<Box<(DownKind, AttemptError)>>,
}

impl CallState {
    pub(crate) fn new(shared: &Shared, plan: CallPlan, method: &http::Method) -> Self {
        // Until a subscriber is installed no span can be seen, and a disabled span still formats
        // its fields for the `log` bridge when made: on the success path, that was most of the
        // cost of tracing.
        let span = if tracing::dispatcher::has_been_set() {
            let endpoint = shared.endpoint(plan.active.side);
            let span = tracing::debug_span!(
                "failover.call",
                server.address = endpoint.host(),
                server.port = endpoint.port(),
                http.request.method = %method,
                http.response.status_code = tracing::field::Empty,
                error.type = tracing::field::Empty,
            );
            (!span.is_disabled()).then(|| Box::new(span))
        } else {
            None
        };
        tracing::debug!(parent: span.as_ref().and_then(|s| s.id()), attempt = 1, "failover: sending");
        CallState {
            span,
            side: plan.active.side,
            plan,
            throttle_retries: 0,
            pending: Pending::Failover,
            outstanding: false,
            first: None,
        }
    }

    /// The call's span, if a subscriber wants it: the drivers enter it while they work on the
    /// call, so that what happens meanwhile (a switch the call causes, the inner client's own
    /// events) is nested under it.
    pub(crate) fn span(&self) -> Option<&tracing::Span> {
        self.span.as_deref()
    }

    /// The attempts go to `side` from now on: the span says so.
    fn span_at(&self, shared: &Shared, side: Side) {
        if let Some(span) = &self.span {
            let endpoint = shared.endpoint(side);
            span.record("server.address", endpoint.host());
            span.record("server.port", endpoint.port());
        }
    }

    /// The call's span, as the parent of its events.
    fn parent(&self) -> Option<tracing::Id> {
        self.span.as_ref().and_then(|span| span.id())
    }

    fn attempt(&self) -> u8 {
        if self.first.is_some() {
            2
        } else {
            1
        }
    }

    /// An attempt's failure with an error.
    pub(crate) fn error_cause(&self, shared: &Shared, error: crate::error::BoxError) -> AttemptError {
        AttemptError::from_error(Some(shared.endpoint(self.side).clone()), error)
    }

    /// An attempt's failure with a status.
    fn status_cause(&self, shared: &Shared, status: StatusCode, kind: &DownKind) -> AttemptError {
        AttemptError::from_response(
            Some(shared.endpoint(self.side).clone()),
            status,
            Some(kind.clone()),
        )
    }

    /// What to do after an attempt that got a response, judged `verdict`. `build` makes the
    /// request for a re-send to a side.
    pub(crate) fn after_response<R>(
        &mut self,
        shared: &Shared,
        status: StatusCode,
        verdict: crate::classify::Verdict,
        build: impl FnOnce(Side) -> Result<R, NotResent>,
    ) -> Step<R> {
        use crate::classify::Verdict;
        match verdict {
            Verdict::EndpointDown(kind) => {
                let cause = self.status_cause(shared, status, &kind);
                match self.on_down(shared, kind, cause, build) {
                    Ok(resend) => Step::Resend(resend),
                    Err(error) => Step::Fail(error),
                }
            }
            Verdict::Throttled { retry_after } => {
                match self.on_throttled(shared, retry_after, false, build) {
                    Some((wait, retry)) => Step::Wait(wait, retry),
                    None => {
                        self.respond(shared, status);
                        Step::Answer
                    }
                }
            }
            _ => {
                self.respond(shared, status);
                Step::Answer
            }
        }
    }

    /// What to do after an attempt that failed with `error`, judged `verdict`.
    pub(crate) fn after_error<R>(
        &mut self,
        shared: &Shared,
        error: crate::error::BoxError,
        verdict: crate::classify::Verdict,
        build: impl FnOnce(Side) -> Result<R, NotResent>,
    ) -> Step<R> {
        use crate::classify::Verdict;
        let cause = self.error_cause(shared, error);
        match verdict {
            Verdict::EndpointDown(kind) => match self.on_down(shared, kind, cause, build) {
                Ok(resend) => Step::Resend(resend),
                Err(error) => Step::Fail(error),
            },
            Verdict::Throttled { retry_after } => match self.on_throttled_error(shared, retry_after, build) {
                Some((wait, retry)) => Step::Wait(wait, retry),
                None => Step::Fail(self.on_inner_error(shared, cause)),
            },
            _ => Step::Fail(self.on_inner_error(shared, cause)),
        }
    }

    /// The attempt in flight found its endpoint down. Either `build` makes the re-send for the
    /// side the call moves to, or the caller gets the error (the call is then settled).
    fn on_down<R>(
        &mut self,
        shared: &Shared,
        kind: DownKind,
        cause: AttemptError,
        build: impl FnOnce(Side) -> Result<R, NotResent>,
    ) -> Result<R, FailoverError> {
        tracing::debug!(
            parent: self.parent(),
            server.address = shared.endpoint(self.side).host(),
            attempt = self.attempt(),
            error.type = FailoverErrorKind::from_down(&kind).name(),
            "failover: endpoint down"
        );
        if let Some((first_kind, first)) = self.first.take().map(|first| *first) {
            if !kind.request_may_have_been_sent() {
                // The re-send was refused at connect, say.
                shared.not_applied_on(&self.plan, self.side);
            }
            return Err(self.fail(
                shared,
                second_failure_error(&first_kind, first, Some(&kind), cause),
            ));
        }
        let resend = shared.after_down(&mut self.plan, &kind).and_then(|side| {
            let resend = build(side)?;
            shared.commit_resend(&mut self.plan, &kind, side)?;
            Ok((side, resend))
        });
        match resend {
            Ok((side, resend)) => {
                tracing::debug!(
                    parent: self.parent(),
                    server.address = shared.endpoint(side).host(),
                    attempt = 2,
                    "failover: re-sending on the other endpoint"
                );
                self.side = side;
                self.span_at(shared, side);
                self.first = Some(Box::new((kind, cause)));
                self.pending = Pending::Failover;
                self.outstanding = true;
                Ok(resend)
            }
            Err(reason) => Err(self.fail(shared, not_resent_error(&kind, reason, cause))),
        }
    }

    /// The attempt was throttled: the wait and the retry `build` makes for the same side, or
    /// `None` to hand the throttling answer back as it is.
    /// A classifier judged an *error* as throttling. Unlike a 429, an error does not prove
    /// the server turned the request away, so it is retried only if the request may be sent
    /// again after it may have been received.
    fn on_throttled_error<R>(
        &mut self,
        shared: &Shared,
        retry_after: Option<Duration>,
        build: impl FnOnce(Side) -> Result<R, NotResent>,
    ) -> Option<(Duration, R)> {
        if self.plan.refusal_if_received.is_some() {
            // Not retried, but a throttled attempt seen all the same (`after_throttle` counts
            // the others).
            shared.counters.add(Counter::Throttled);
            return None;
        }
        self.on_throttled(shared, retry_after, true, build)
    }

    /// The re-send or throttling retry the engine decided on is going out now: counted here,
    /// not when it was decided, since it may never go out (`on_not_ready`). Unless the call's
    /// deadline has passed meanwhile (a wait or a readiness check that ended late): nothing
    /// goes out after it, and the call ends with the error this gives.
    pub(crate) fn resend_going_out(&mut self, shared: &Shared) -> Result<(), FailoverError> {
        if self.plan.past_deadline() {
            return Err(self.on_deadline(shared, false));
        }
        self.outstanding = false;
        shared.counters.add(match self.pending {
            Pending::Failover => Counter::FailoverResends,
            Pending::Throttle => Counter::ThrottleRetries,
        });
        Ok(())
    }

    /// After a throttling wait, before the retry goes out: if calls have moved to the other
    /// endpoint during the wait, `repoint` points the retry (built before the wait, and
    /// holding the body) at the endpoint they go to now. The endpoint the call was throttled
    /// on may be the one calls left because it went down, and the throttled attempt was turned
    /// away (a 429), or may be sent again anyway (a throttling error is retried only then).
    ///
    /// It stays where it was throttled when its policy keeps it off the other endpoint
    /// (`never`, `reads_only` for a write), and after a failover: a re-sent call never goes
    /// back to the endpoint it failed on.
    pub(crate) fn after_wait(&mut self, shared: &Shared, repoint: impl FnOnce(Side)) {
        if self.first.is_some() || self.plan.refusal_if_unsent.is_some() {
            return;
        }
        let from = self.side;
        // A write follows under the ledger's lock, as `Ledger::begin` reads its side: a switch
        // off the side it moves to then either lists it or is seen here.
        let now = match (&shared.ledger, self.plan.write) {
            (Some(ledger), Some(id)) => {
                let from_unapplied = !self.plan.maybe_received_on[from.index()];
                ledger.follow(id, from, self.plan.earlier_maybe_received, from_unapplied, || {
                    shared.active()
                })
            }
            _ => shared.active(),
        };
        if now.side == from {
            return;
        }
        if self.plan.earlier_maybe_received {
            self.plan.resent_after_received = true;
        }
        tracing::debug!(
            parent: self.parent(),
            server.address = shared.endpoint(now.side).host(),
            "failover: calls moved during the throttling wait, retrying where they go now"
        );
        repoint(now.side);
        self.side = now.side;
        self.span_at(shared, now.side);
        // A failure of the retry is a failure of the endpoint calls use now.
        self.plan.active = now;
    }

    fn on_throttled<R>(
        &mut self,
        shared: &Shared,
        retry_after: Option<Duration>,
        by_error: bool,
        build: impl FnOnce(Side) -> Result<R, NotResent>,
    ) -> Option<(Duration, R)> {
        let retry = shared
            .after_throttle(&self.plan, self.throttle_retries, retry_after)
            .and_then(|wait| {
                let retry = build(self.side)?;
                shared.commit_throttle_retry()?;
                Ok((wait, retry))
            });
        match retry {
            Ok((wait, retry)) => {
                self.plan.earlier_maybe_received |= by_error;
                self.plan.maybe_received_on[self.side.index()] |= by_error;
                self.pending = Pending::Throttle;
                self.outstanding = true;
                tracing::debug!(
                    parent: self.parent(),
                    server.address = shared.endpoint(self.side).host(),
                    wait_ms = wait.as_millis() as u64,
                    retry = self.throttle_retries + 1,
                    "failover: throttled, retrying on the same endpoint"
                );
                self.throttle_retries += 1;
                Some((wait, retry))
            }
            Err(reason) => {
                tracing::debug!(parent: self.parent(), reason = %reason, "failover: throttled, handing the answer back");
                None
            }
        }
    }

    /// The inner service could not get ready for the re-send: the re-send was never sent.
    pub(crate) fn on_not_ready(&mut self, shared: &Shared, cause: AttemptError) -> FailoverError {
        let error = self.between_attempts(
            shared,
            FailoverErrorKind::Inner,
            cause,
            NotResent::ServiceNotReady,
        );
        self.fail(shared, error)
    }

    /// The error for a call that ended between attempts, with a re-send or retry decided on
    /// that never went out (`reason`): its budget is given back, and the error says which
    /// attempts did go out. The call may have been applied only if an earlier attempt may
    /// have been (`fail` adds a throttling error's).
    fn between_attempts(
        &mut self,
        shared: &Shared,
        kind: FailoverErrorKind,
        cause: AttemptError,
        reason: NotResent,
    ) -> FailoverError {
        self.withdraw_outstanding(shared);
        match (self.first.take().map(|first| *first), self.pending) {
            // The failover re-send itself never went out.
            (Some((first_kind, first)), Pending::Failover) => {
                FailoverError::new(kind, first_kind.request_may_have_been_sent(), cause)
                    .with_unsent_first(first)
                    .not_resent(reason)
            }
            // The failover re-send went out (and was throttled); only its retry did not.
            (Some((first_kind, first)), Pending::Throttle) => {
                FailoverError::new(kind, first_kind.request_may_have_been_sent(), cause).with_first(first)
            }
            // No outage: only a throttling retry did not go out.
            (None, _) => FailoverError::new(kind, false, cause),
        }
    }

    /// The attempt failed in a way that is not an outage.
    fn on_inner_error(&mut self, shared: &Shared, cause: AttemptError) -> FailoverError {
        let error = match self.first.take().map(|first| *first) {
            Some((first_kind, first)) => second_failure_error(&first_kind, first, None, cause),
            None => inner_error(cause),
        };
        self.fail(shared, error)
    }

    /// The call's deadline passed, with an attempt in flight or between two.
    pub(crate) fn on_deadline(&mut self, shared: &Shared, in_flight: bool) -> FailoverError {
        // The call ends here: a later poll of its future must not find the deadline again.
        self.plan.deadline = None;
        let cause = self.error_cause(shared, Box::new(crate::error::DeadlineElapsed));
        if in_flight {
            let first = self.first.take().map(|first| first.1);
            return self.fail(shared, deadline_error(cause, first));
        }
        // Between attempts (a throttling wait, a re-send waiting for the inner service).
        let error = self.between_attempts(
            shared,
            FailoverErrorKind::DeadlineExceeded,
            cause,
            NotResent::DeadlineTooClose,
        );
        self.fail(shared, error)
    }

    /// A re-send or retry decided on that has not gone out, if there is one (the call ended
    /// before it could: dropped, deadline, inner service not ready): its budget is given back,
    /// and the side it was for did not get it. Says whether there was one.
    fn withdraw_outstanding(&mut self, shared: &Shared) -> bool {
        let outstanding = std::mem::take(&mut self.outstanding);
        if outstanding {
            shared.not_applied_on(&self.plan, self.side);
            shared.give_back(self.pending);
        }
        outstanding
    }

    /// The call ends with a response.
    pub(crate) fn respond(&mut self, shared: &Shared, status: StatusCode) {
        if status.is_client_error() {
            // Refused where it went: not applied there.
            shared.not_applied_on(&self.plan, self.side);
        }
        // A disabled span still walks its fields on `record` (for the `log` bridge): skip it.
        if let Some(span) = &self.span {
            span.record("http.response.status_code", status.as_u16());
        }
        tracing::debug!(parent: self.parent(), http.response.status_code = status.as_u16(), "failover: answered");
        shared.finish(&mut self.plan, CallEnd::Response(status));
    }

    fn fail(&mut self, shared: &Shared, error: FailoverError) -> FailoverError {
        let error = if self.plan.earlier_maybe_received {
            error.possibly_applied_anyway()
        } else {
            error
        };
        if let Some(span) = &self.span {
            span.record("error.type", error.kind().name());
        }
        tracing::debug!(
            parent: self.parent(),
            error.type = error.kind().name(),
            possibly_applied = error.possibly_applied(),
            "failover: failed"
        );
        shared.finish(&mut self.plan, CallEnd::Error(&error));
        error
    }

    /// The call was dropped before it ended.
    pub(crate) fn abandon(&mut self, shared: &Shared) {
        // With a re-send or retry decided on that has not gone out, nothing is in flight; the
        // attempts that did go out and may have been received are marked in `plan`.
        let between_attempts = self.withdraw_outstanding(shared);
        shared.abandon(&mut self.plan, between_attempts);
    }
}
