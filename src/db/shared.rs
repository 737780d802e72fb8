//! Connections shared by concurrent requests.
//!
//! Every users operation is one statement (its own implicit transaction), so a request needs no
//! exclusive connection. Requests that run at the same time on one connection are pipelined by
//! tokio-postgres: their statements go out in one write and the answers come back in order, which
//! saves a wakeup and a system call per statement on both sides. A few connections are kept (not
//! one) so that one slow statement holds up only the requests queued behind it on its own
//! connection. A closed connection is replaced from the pool on next use.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use deadpool_postgres::{Object, Pool, PoolError};

pub struct SharedConnections {
    pool: Pool,
    slots: Box<[Mutex<Option<Arc<Object>>>]>,
    next: AtomicUsize,
}

impl SharedConnections {
    /// Shares up to `count` connections of `pool`, always leaving at least one to be taken
    /// exclusively (writes) when the pool has two or more.
    pub fn new(pool: Pool, count: usize) -> Self {
        let count = count.clamp(1, pool.status().max_size.saturating_sub(1).max(1));
        SharedConnections {
            pool,
            slots: (0..count).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A connection to run one statement on, taken in turn.
    pub async fn get(&self) -> Result<Arc<Object>, PoolError> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        if let Some(client) = live(&lock(slot)) {
            return Ok(client);
        }
        let fresh = Arc::new(self.pool.get().await?);
        let mut held = lock(slot);
        // Another request may have filled the slot while this one waited; keep the first.
        if let Some(client) = live(&held) {
            return Ok(client);
        }
        *held = Some(fresh.clone());
        Ok(fresh)
    }
}

fn lock(slot: &Mutex<Option<Arc<Object>>>) -> MutexGuard<'_, Option<Arc<Object>>> {
    // The guarded value is a plain handle: a panic elsewhere cannot leave it half-written.
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn live(slot: &Option<Arc<Object>>) -> Option<Arc<Object>> {
    slot.as_ref().filter(|client| !client.is_closed()).cloned()
}
