//! Acting on one payout from the console: a confirmation page that says what the action will
//! do and asks for a reason, then a POST (CSRF-checked, scope `operator.act`) that calls the
//! same store function as the operator API, with the same actor (`operator:<client>/<label>`),
//! so the event log records it the same way. A refusal shows the server's reason.

use std::fmt::Write as _;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use payoutd_core::PayoutState;
use payoutd_store::operator::{self, ActionError, Reason, ResolveTo, Retried};
use payoutd_store::operator_filter;
use serde::Deserialize;
use uuid::Uuid;

use super::html::{self, Nav, PageOptions, esc, jv};
use super::session::Signed;
use super::{ConsoleError, html_response};
use crate::AppState;
use crate::auth::SCOPE_OPERATOR_ACT;
use crate::operator_api::{interval_of, operator_json};

/// What an operator can do to one payout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    ResolvePaid,
    ResolveFailed,
    Retry,
    Cancel,
    StatusQuery,
}

impl Action {
    pub fn parse(text: &str) -> Option<Action> {
        match text {
            "resolve_paid" => Some(Self::ResolvePaid),
            "resolve_failed" => Some(Self::ResolveFailed),
            "retry" => Some(Self::Retry),
            "cancel" => Some(Self::Cancel),
            "status_query" => Some(Self::StatusQuery),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ResolvePaid => "resolve_paid",
            Self::ResolveFailed => "resolve_failed",
            Self::Retry => "retry",
            Self::Cancel => "cancel",
            Self::StatusQuery => "status_query",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::ResolvePaid => "Resolve as paid",
            Self::ResolveFailed => "Resolve as failed",
            Self::Retry => "Retry",
            Self::Cancel => "Cancel",
            Self::StatusQuery => "Force a status query",
        }
    }

    /// What the action will do to a payout in `state`, in the operator docs' words.
    fn explain(self, state: PayoutState) -> &'static str {
        match (self, state) {
            (Self::ResolvePaid, _) => {
                "The payout becomes final: paid. The client is told (payout.resolved, payout.paid). \
                 Only for a needs_review payout you have checked with the provider or the bank. It cannot be undone."
            }
            (Self::ResolveFailed, _) => {
                "The payout becomes final: failed. The client is told (payout.resolved, payout.failed). \
                 Only when the money certainly did not move. It cannot be undone."
            }
            (Self::Retry, PayoutState::Failed) => {
                "A failed payout is never reopened: a NEW payout is created with the same client, account, \
                 amount and destination and a new reference, linked to this one."
            }
            (Self::Retry, _) => {
                "The payout runs again. If its intent was recorded it goes to in_doubt, so the provider is \
                 asked by our reference before anything could be sent again; parked before its intent it starts \
                 again from pending."
            }
            (Self::Cancel, _) => {
                "The payout becomes final: cancelled. Only possible before its intent is recorded \
                 (pending or checked): nothing can have been sent."
            }
            (Self::StatusQuery, _) => {
                "The provider is asked for this payout's status at the earliest moment the status interval \
                 allows, never sooner."
            }
        }
    }
}

/// Actions whose state rule a payout in `state` meets (the server checks again, under a lock).
pub fn allowed(state: PayoutState) -> Vec<Action> {
    match state {
        PayoutState::NeedsReview => vec![Action::ResolvePaid, Action::ResolveFailed, Action::Retry],
        PayoutState::Failed => vec![Action::Retry],
        PayoutState::Pending | PayoutState::Checked => vec![Action::Cancel],
        PayoutState::InDoubt | PayoutState::Submitted => vec![Action::StatusQuery],
        PayoutState::IntentRecorded | PayoutState::Paid | PayoutState::Cancelled => Vec::new(),
    }
}

/// The message after a redirect with `?done=`; only these fixed texts are ever shown.
pub fn done_message(done: &str) -> Option<&'static str> {
    match done {
        "resolve_paid" => Some("Resolved as paid; the event is in the timeline."),
        "resolve_failed" => Some("Resolved as failed; the event is in the timeline."),
        "retry" => Some("Retried: the payout runs again."),
        "retry_new" => Some("Retried: this is the new payout created for the failed one."),
        "cancel" => Some("Cancelled."),
        "status_query" => Some("A status query is scheduled."),
        _ => None,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConfirmParams {
    action: String,
}

async fn confirm_page(
    state: &AppState,
    signed: &Signed,
    id: Uuid,
    action: Action,
    status: StatusCode,
    problem: Option<&str>,
    reason: &str,
) -> Result<Response, ConsoleError> {
    let p = operator_filter::get(&state.pool, id).await?.ok_or(ConsoleError::NotFound)?;
    let v = operator_json(&p);
    let mut body = String::new();
    if let Some(problem) = problem {
        body.push_str(&html::notice("error", problem));
    }
    if !allowed(p.row.state).contains(&action) {
        body.push_str(&html::notice(
            "info",
            &format!("This payout is {}: the server will most likely refuse this action.", p.row.state),
        ));
    }
    let _ = write!(
        body,
        r#"<dl class="facts"><dt>payout</dt><dd><a href="/console/payouts/{id}">{ext}</a></dd><dt>state</dt><dd>{state}</dd><dt>amount</dt><dd>{amount} {currency}</dd><dt>account</dt><dd>{account}</dd><dt>destination</dt><dd>{dest}</dd></dl>
<p class="explain" id="explain">{explain}</p>
<form method="post" action="/console/payouts/{id}/act" class="confirm">
{csrf}<input type="hidden" name="action" value="{action}">
<label>Reason (required, written to the payout's timeline with your identity)
<textarea name="reason" id="reason" required maxlength="500" rows="3">{reason}</textarea></label>
<button type="submit" id="confirm" class="danger">{label}</button> <a href="/console/payouts/{id}">Back</a>
</form>"#,
        id = esc(&id.to_string()),
        ext = jv(&v["external_id"]),
        state = html::state_badge(p.row.state.as_str()),
        amount = jv(&v["amount"]),
        currency = jv(&v["currency"]),
        account = jv(&v["provider"]),
        dest = jv(&v["destination"]["client"]),
        explain = esc(action.explain(p.row.state)),
        csrf = html::csrf_field(signed),
        action = action.as_str(),
        reason = esc(reason),
        label = action.label(),
    );
    let title = format!("{}?", action.label());
    Ok(html_response(status, html::page(&title, Some(signed), Nav::Payouts, PageOptions::default(), &body)))
}

/// `GET /console/payouts/{id}/confirm?action=`: what the action will do, and the reason field.
pub async fn confirm(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    Query(params): Query<ConfirmParams>,
) -> Result<Response, ConsoleError> {
    signed.require(SCOPE_OPERATOR_ACT)?;
    let id = Uuid::parse_str(&id).map_err(|_| ConsoleError::NotFound)?;
    let action =
        Action::parse(&params.action).ok_or_else(|| ConsoleError::BadRequest("unknown action".into()))?;
    confirm_page(&state, &signed, id, action, StatusCode::OK, None, "").await
}

/// The form of every confirmed action (payouts and batches): CSRF token, action, reason.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ActForm {
    pub(crate) csrf: Option<String>,
    pub(crate) action: String,
    pub(crate) reason: String,
}

/// `POST /console/payouts/{id}/act`: the action itself.
pub async fn act(
    State(state): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ActForm>,
) -> Result<Response, ConsoleError> {
    signed.check_post(&headers, form.csrf.as_deref())?;
    signed.require(SCOPE_OPERATOR_ACT)?;
    let id = Uuid::parse_str(&id).map_err(|_| ConsoleError::NotFound)?;
    let action =
        Action::parse(&form.action).ok_or_else(|| ConsoleError::BadRequest("unknown action".into()))?;
    let reason = match Reason::parse(&form.reason) {
        Ok(r) => r,
        Err(why) => {
            let problem = format!("reason: {why}");
            return confirm_page(
                &state,
                &signed,
                id,
                action,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(&problem),
                &form.reason,
            )
            .await;
        }
    };
    let caller = &signed.session.caller;
    let actor = operator::actor_for_token(&state.pool, caller.token_id, &caller.client_id).await?;
    let outcome: Result<(Uuid, &str), ActionError> = match action {
        Action::ResolvePaid => operator::resolve(&state.pool, id, ResolveTo::Paid, &actor, &reason)
            .await
            .map(|_| (id, "resolve_paid")),
        Action::ResolveFailed => operator::resolve(&state.pool, id, ResolveTo::Failed, &actor, &reason)
            .await
            .map(|_| (id, "resolve_failed")),
        Action::Retry => operator::retry(&state.pool, id, &actor, &reason).await.map(|r| match r {
            Retried::Requeued(_) => (id, "retry"),
            Retried::NewPayout(new) => (new, "retry_new"),
        }),
        Action::Cancel => operator::cancel(&state.pool, id, &actor, &reason).await.map(|()| (id, "cancel")),
        Action::StatusQuery => {
            operator::force_status_query(&state.pool, id, &interval_of(&state.connectors), &actor, &reason)
                .await
                .map(|_| (id, "status_query"))
        }
    };
    match outcome {
        Ok((target, done)) => {
            tracing::info!(payout = %id, action = action.as_str(), %actor, "console action");
            Ok(Redirect::to(&format!("/console/payouts/{target}?done={done}")).into_response())
        }
        Err(ActionError::NotFound(_)) => Err(ConsoleError::NotFound),
        Err(ActionError::Refused(why)) => {
            let problem = format!("Refused by the server: {why}");
            confirm_page(&state, &signed, id, action, StatusCode::CONFLICT, Some(&problem), reason.as_str())
                .await
        }
        Err(ActionError::Store(e)) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_round_trip_and_follow_the_state_rules() {
        for a in
            [Action::ResolvePaid, Action::ResolveFailed, Action::Retry, Action::Cancel, Action::StatusQuery]
        {
            assert_eq!(Action::parse(a.as_str()), Some(a));
            assert!(done_message(a.as_str()).is_some());
        }
        assert!(allowed(PayoutState::Paid).is_empty());
        assert!(allowed(PayoutState::IntentRecorded).is_empty(), "a submit may be in flight");
        assert_eq!(allowed(PayoutState::Checked), vec![Action::Cancel]);
        assert!(done_message("<script>").is_none());
    }
}
