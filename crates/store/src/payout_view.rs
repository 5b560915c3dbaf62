//! The client's view of a payout: what `GET /v1/payouts/{id}` answers and what webhook events
//! carry, built in one place so the two never differ. The destination account is masked.

use serde_json::{Value, json};

use crate::PayoutRow;

/// The payout as a client sees it, without its event timeline.
pub fn payout_json(row: &PayoutRow) -> Value {
    json!({
        "id": row.id,
        "external_id": row.external_id,
        "state": row.state.as_str(),
        "final": row.state.is_final(),
        "amount": row.money.amount().to_string(),
        "currency": row.money.currency().code(),
        "provider": row.provider,
        "account": row.account,
        "provider_reference": row.provider_reference,
        "destination": {
            "destination": row.destination.destination,
            "client": mask(&row.destination.client),
            "receiver_name": row.destination.receiver_name,
        },
        "attempts": row.total_attempts,
        "submit_attempts": row.submit_attempts,
        "next_run_at": row.next_run_at,
        "last_error": row.last_error,
        "traceparent": row.traceparent,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "finalized_at": row.finalized_at,
    })
}

/// All but the last four characters replaced by `*`.
pub fn mask(account: &str) -> String {
    let n = account.chars().count();
    let tail: String = account.chars().skip(n.saturating_sub(4)).collect();
    format!("{}{tail}", "*".repeat(n.saturating_sub(4)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_keeps_the_last_four() {
        assert_eq!(mask("1234567890"), "******7890");
        assert_eq!(mask("12"), "12");
    }
}
