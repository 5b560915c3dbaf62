//! The balance statement reconciled in aggregate. The 8B partner statement lists debits and
//! credits of the account's balance with no payout reference, so it cannot be matched row by row:
//! over a period, the net debits (OUT less IN) must equal what we paid (our payouts in the period
//! that are `paid`) plus the provider's commissions on them (the registry's `comiss`). A declined
//! payout is debited and refunded, so it nets out. The difference is reported, never acted on:
//! it says "look", not which payout.
//!
//! Periods are judged by when our submit started (`submitted_at`); the provider debits a moment
//! later, so a payout sent in the last second of a period can be debited in the next one and show
//! as a difference in both. Reconcile periods with quiet edges (e.g. whole days), or read the
//! difference next to the neighbouring period's.

use payoutd_core::PayoutState;
use payoutd_providers::eightb_partner::registry::{RegistryRow, RegistryStatus};
use payoutd_providers::eightb_partner::statement::{Movement, StatementRow};
use payoutd_store::reconciliation::OurPayout;
use rust_decimal::Decimal;
use serde::Serialize;

/// The aggregate comparison of one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementAggregate {
    pub movements: usize,
    pub debits: Decimal,
    pub credits: Decimal,
    /// Debits less credits.
    pub net_debits: Decimal,
    pub paid_payouts: usize,
    pub paid_total: Decimal,
    /// Commissions the registry shows on those paid payouts.
    pub commissions: Decimal,
    /// `paid_total + commissions`.
    pub expected: Decimal,
    /// `net_debits - expected`: zero when the books agree.
    pub difference: Decimal,
    /// The currency of our paid payouts (the statement has none).
    pub currency: Option<String>,
    /// Set when the comparison cannot be made (payouts in several currencies).
    pub not_comparable: Option<String>,
}

/// Compares the statement of a period with our payouts submitted in it (`ours`), taking
/// commissions from the registry rows of those payouts (`registry`).
pub fn aggregate(
    statement: &[StatementRow],
    ours: &[OurPayout],
    registry: &[RegistryRow],
) -> StatementAggregate {
    let sum = |movement: Movement| -> Decimal {
        statement.iter().filter(|r| r.movement == movement).map(|r| r.amount).sum()
    };
    let (debits, credits) = (sum(Movement::Debit), sum(Movement::Credit));
    let paid: Vec<&OurPayout> = ours.iter().filter(|p| p.state.0 == PayoutState::Paid).collect();
    let paid_total: Decimal = paid.iter().map(|p| p.amount).sum();
    let commissions: Decimal = paid
        .iter()
        .filter_map(|p| {
            registry
                .iter()
                .find(|r| r.id == p.reference && r.status == RegistryStatus::Paid)
                .and_then(|r| r.commission)
        })
        .sum();
    let mut currencies: Vec<&str> = paid.iter().map(|p| p.currency.as_str()).collect();
    currencies.sort_unstable();
    currencies.dedup();
    let not_comparable = (currencies.len() > 1).then(|| {
        format!(
            "paid payouts in several currencies ({}): the statement, in the account's one currency, \
             cannot be compared with their sum",
            currencies.join(", ")
        )
    });
    let net_debits = debits - credits;
    let expected = paid_total + commissions;
    StatementAggregate {
        movements: statement.len(),
        debits,
        credits,
        net_debits,
        paid_payouts: paid.len(),
        paid_total,
        commissions,
        expected,
        difference: net_debits - expected,
        currency: (currencies.len() == 1).then(|| currencies[0].to_owned()),
        not_comparable,
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use payoutd_store::reconciliation::StateText;
    use uuid::Uuid;

    use super::*;

    fn ours(reference: &str, state: PayoutState, amount: i64, currency: &str) -> OurPayout {
        OurPayout {
            id: Uuid::now_v7(),
            reference: reference.into(),
            state: StateText(state),
            amount: Decimal::from(amount),
            currency: currency.into(),
            submitted_at: None,
        }
    }

    fn moved(movement: Movement, amount: i64) -> StatementRow {
        StatementRow {
            id: "1".into(),
            dt: Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).single().expect("time"),
            movement,
            amount: Decimal::from(amount),
            comment: None,
        }
    }

    fn registry(reference: &str, commission: i64) -> RegistryRow {
        RegistryRow {
            id: reference.into(),
            pid: None,
            destination: None,
            client: None,
            status: RegistryStatus::Paid,
            partner_status: None,
            created: Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).single().expect("time"),
            changed: None,
            amount: Decimal::ZERO,
            commission: Some(Decimal::from(commission)),
            currency: "IDR".into(),
            partner_notified: None,
        }
    }

    #[test]
    fn debits_equal_paid_plus_commission_and_declines_net_out() {
        let statement = [
            moved(Movement::Debit, 1000),
            moved(Movement::Debit, 10),
            moved(Movement::Debit, 500),
            moved(Movement::Credit, 500),
            moved(Movement::Debit, 2000),
            moved(Movement::Debit, 20),
        ];
        let ours = [
            ours("PO1", PayoutState::Paid, 1000, "IDR"),
            ours("PO2", PayoutState::Failed, 500, "IDR"),
            ours("PO3", PayoutState::Paid, 2000, "IDR"),
        ];
        let a = aggregate(&statement, &ours, &[registry("PO1", 10), registry("PO3", 20)]);
        assert_eq!((a.debits, a.credits, a.net_debits), (3530.into(), 500.into(), 3030.into()));
        assert_eq!((a.paid_payouts, a.paid_total, a.commissions), (2, 3000.into(), 30.into()));
        assert_eq!(a.difference, Decimal::ZERO);
        assert_eq!((a.currency.as_deref(), a.not_comparable), (Some("IDR"), None));
    }

    #[test]
    fn a_debit_we_never_made_is_the_difference() {
        let statement = [moved(Movement::Debit, 1000), moved(Movement::Debit, 777)];
        let a = aggregate(&statement, &[ours("PO1", PayoutState::Paid, 1000, "IDR")], &[]);
        assert_eq!(a.difference, Decimal::from(777));
        let several = aggregate(
            &statement,
            &[ours("PO1", PayoutState::Paid, 1000, "IDR"), ours("PO2", PayoutState::Paid, 1, "USD")],
            &[],
        );
        assert!(several.not_comparable.is_some_and(|w| w.contains("IDR, USD")));
    }
}
