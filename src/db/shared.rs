//! Connections shared by concurrent requests (lent by [`super::DbHandle`]).
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
    slots: Box<[Slot]>,
    next: AtomicUsize,
}

#[derive(Default)]
struct Slot {
    client: Mutex<Option<Arc<Object>>>,
    /// Held while the slot is being filled, so only one request asks the pool for it. The sets
    /// sharing a pool have exactly as many slots as it has connections: a request waiting on the
    /// pool for a slot that another request filled meanwhile would wait for ever.
    filling: tokio::sync::Mutex<()>,
}

impl SharedConnections {
    /// Shares up to `count` connections of `pool` (never more than it holds: the slots of all the
    /// sets sharing one pool must fit in it).
    pub fn new(pool: Pool, count: usize) -> Self {
        let count = count.clamp(1, pool.status().max_size.max(1));
        SharedConnections {
            pool,
            slots: (0..count).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A connection to run one statement on, taken in turn.
    pub async fn get(&self) -> Result<Arc<Object>, PoolError> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        if let Some(client) = live(&lock(&slot.client)) {
            return Ok(client);
        }
        let _filling = slot.filling.lock().await;
        if let Some(client) = live(&lock(&slot.client)) {
            return Ok(client);
        }
        // Let go of a dead connection first: the pool gets it back (and replaces it) once the
        // requests still holding it have failed.
        lock(&slot.client).take();
        let fresh = Arc::new(self.pool.get().await?);
        *lock(&slot.client) = Some(fresh.clone());
        Ok(fresh)
    }

    /// Stops handing out `client` (it failed in a way that says its session is over); the next
    /// request on its slot gets a fresh connection.
    pub fn discard(&self, client: &Arc<Object>) {
        for slot in self.slots.iter() {
            let mut held = lock(&slot.client);
            if held.as_ref().is_some_and(|c| Arc::ptr_eq(c, client)) {
                held.take();
            }
        }
    }
}

fn lock(slot: &Mutex<Option<Arc<Object>>>) -> MutexGuard<'_, Option<Arc<Object>>> {
    // The guarded value is a plain handle: a panic elsewhere cannot leave it half-written.
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn live(slot: &Option<Arc<Object>>) -> Option<Arc<Object>> {
    slot.as_ref().filter(|client| !client.is_closed()).cloned()
}
