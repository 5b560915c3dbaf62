//! Our provider references, taken from the database in blocks (one sequence call per block,
//! see `transitions::allocate_reference_block`) and handed out from memory. A reference is
//! used once: numbers of a block a worker did not use before it stopped are simply never used.

use payoutd_store::{PgPool, StoreError, transitions};

#[derive(Debug, Default)]
pub struct References {
    /// The next number to hand out and the end of the block (exclusive).
    block: tokio::sync::Mutex<(i64, i64)>,
}

impl References {
    pub fn new() -> Self {
        Self::default()
    }

    /// A reference no payout has had or will have.
    pub async fn next(&self, pool: &PgPool) -> Result<String, StoreError> {
        let mut block = self.block.lock().await;
        if block.0 >= block.1 {
            let (first, count) = transitions::allocate_reference_block(pool).await?;
            *block = (first, first + count);
        }
        let n = block.0;
        block.0 += 1;
        Ok(transitions::reference(n))
    }
}
