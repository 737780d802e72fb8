//! How Lua waits for the host. A native that needs to wait (a database call, a sleep) leaves its
//! future in [`Pending`] and returns; the prelude then yields [`marker`] up to the coroutine the
//! host drives, and [`drive`] awaits the future and resumes the coroutine with `true, results...`
//! (or `false, message`, which the prelude raises as an error).
//!
//! One slot serves the whole state: between a native leaving its future and the yield that hands
//! it over, no other coroutine runs (the CPU meter does not yield while the slot is full, and a
//! failure ends the request, which empties it).

use std::cell::RefCell;
use std::ffi::c_void;
use std::pin::Pin;

use mlua::thread::ThreadStatus;
use mlua::{LightUserData, Lua, MultiValue, Thread, Value};

use super::budget::Budget;

/// What a host operation hands back to Lua.
pub(crate) type Reply = mlua::Result<MultiValue>;
type Op = Pin<Box<dyn Future<Output = Reply>>>;

#[derive(Default)]
pub(crate) struct Pending {
    op: RefCell<Option<Op>>,
}

impl Pending {
    /// Leaves `op` for the driver of the calling coroutine.
    pub fn start(&self, op: impl Future<Output = Reply> + 'static) {
        *self.op.borrow_mut() = Some(Box::pin(op));
    }

    /// Whether an operation has been started and not yet handed over.
    pub fn is_full(&self) -> bool {
        self.op.borrow().is_some()
    }

    fn take(&self) -> Option<Op> {
        self.op.borrow_mut().take()
    }
}

static MARKER: u8 = 0;

/// The value a coroutine yields to say "my operation is in the pending slot".
pub(crate) fn marker() -> LightUserData {
    LightUserData(&MARKER as *const u8 as *mut c_void)
}

fn is_marker(values: &MultiValue) -> bool {
    values.len() == 1 && matches!(values.front(), Some(Value::LightUserData(p)) if *p == marker())
}

/// Runs `thread` with `args` until it returns, awaiting each host operation it waits for, under
/// `budget` when given. Any other yield (the meter ending a slice, a script's own yield at the top
/// level) lets the worker's other tasks run and resumes with nothing, unless the budget is spent:
/// then the coroutine is dropped where it stands and the call fails with the budget error.
pub(crate) async fn drive(
    lua: &Lua,
    pending: &Pending,
    thread: &Thread,
    mut args: MultiValue,
    mut budget: Option<&mut Budget>,
) -> mlua::Result<MultiValue> {
    loop {
        let resumed = match budget.as_deref_mut() {
            Some(budget) => budget.run(|| thread.resume::<MultiValue>(args)),
            None => thread.resume::<MultiValue>(args),
        };
        // Whatever happened, the slot is this coroutine's to empty: a future left behind by a
        // failed yield (one across a metamethod) must not outlive this step.
        let op = pending.take();
        let out = resumed?;
        if thread.status() != ThreadStatus::Resumable {
            return Ok(out);
        }
        args = match op {
            Some(op) if is_marker(&out) => match op.await {
                Ok(mut results) => {
                    results.push_front(Value::Boolean(true));
                    results
                }
                Err(e) => MultiValue::from_iter([
                    Value::Boolean(false),
                    Value::String(lua.create_string(super::describe(&e))?),
                ]),
            },
            _ => {
                if let Some(over) = budget.as_deref().and_then(Budget::spent) {
                    return Err(mlua::Error::runtime(over));
                }
                tokio::task::yield_now().await;
                MultiValue::new()
            }
        };
    }
}
