//! Unsigned provider notifications that named a provider id no payout carried (8B REST), and
//! how an in-doubt payout uses them: it asks the provider about each id (an authenticated
//! call) and adopts the one whose answer carries its own reference, amount and currency.

use sqlx::PgPool;

use crate::StoreError;

/// Provider ids not yet matched to a payout, oldest first, that no payout has looked up since
/// `recheck_after_secs` ago (so that a busy account does not ask about the same id in a loop).
pub async fn unmatched(
    pool: &PgPool,
    provider: &str,
    recheck_after_secs: f64,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT provider_payout_id FROM unmatched_provider_notifications
          WHERE provider = $1
            AND (checked_at IS NULL OR checked_at < now() - make_interval(secs => $2))
          ORDER BY checked_at NULLS FIRST, received_at LIMIT $3",
    )
    .bind(provider)
    .bind(recheck_after_secs)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// What the provider said about an id that was not the asking payout's: `owner_reference` is
/// the reference its answer carries (`None`: the provider does not know the id, perhaps not
/// yet). An id whose reference is one of our payouts' is recorded on that payout when it has
/// none yet (making its next step due) and forgotten; so is an id whose reference is none of
/// ours (our references exist before any submit, so it never will be). An id the provider does
/// not know yet is kept and asked about again later.
pub async fn settle(
    pool: &PgPool,
    provider: &str,
    provider_payout_id: &str,
    owner_reference: Option<&str>,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    let adopted = match owner_reference {
        Some(reference) => {
            sqlx::query(
                "UPDATE payouts SET provider_payout_id = $3, next_run_at = LEAST(next_run_at, now()),
                        updated_at = now()
                  WHERE provider = $1 AND provider_reference = $2 AND provider_payout_id IS NULL",
            )
            .bind(provider)
            .bind(reference)
            .bind(provider_payout_id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0
        }
        None => false,
    };
    if owner_reference.is_some() {
        forget_in(&mut tx, provider, provider_payout_id).await?;
    } else {
        sqlx::query(
            "UPDATE unmatched_provider_notifications SET checked_at = now()
              WHERE provider = $1 AND provider_payout_id = $2",
        )
        .bind(provider)
        .bind(provider_payout_id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(adopted)
}

/// Forgets a notification whose payout was found (the payout's own transition records the id).
pub async fn forget(pool: &PgPool, provider: &str, provider_payout_id: &str) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    forget_in(&mut tx, provider, provider_payout_id).await?;
    tx.commit().await?;
    Ok(())
}

async fn forget_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    provider: &str,
    provider_payout_id: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "DELETE FROM unmatched_provider_notifications WHERE provider = $1 AND provider_payout_id = $2",
    )
    .bind(provider)
    .bind(provider_payout_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
