use payoutd_core::PayoutState;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The fencing token no longer matches: another worker (or a callback) took the payout over.
    #[error("lease lost: payout {0} was taken over; this worker may not write it")]
    LeaseLost(uuid::Uuid),
    #[error("illegal transition {from} -> {to}")]
    IllegalTransition { from: PayoutState, to: PayoutState },
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A guarded write whose precondition the database refused (e.g. a resubmit before the
    /// provider reported the payout unknown often enough). Nothing was written.
    #[error("refused: {0}")]
    Refused(String),
    /// The database is marked restored (`restore::open_mark`): no submit goes out until the
    /// restore check has run. Nothing was written.
    #[error("held: {0}")]
    Held(String),
    /// A group commit this write was part of failed without saying whether it committed (a
    /// lost connection). The write is not repeated; its payout comes back when its lease
    /// expires.
    #[error("the group commit failed: {0}")]
    GroupCommitFailed(String),
}
