//! The per-request CPU budget, enforced through Luau's interrupt.
//!
//! Only one coroutine runs at a time on a state, so the meter knows which request is running:
//! every resume of a request's coroutine opens a slice. The interrupt fails the request once its
//! slices add up to more than the budget, and yields it (so other requests on the worker get
//! their turn) when one slice runs long.
//!
//! A request past its budget is ended from outside: the interrupt yields its coroutine, and the
//! driver drops a coroutine that yields with its budget spent, so no `pcall` in the script gets
//! to catch anything (a script at the very top of the call stack has no room to run the `pcall`
//! wrappers that raise a caught budget error again). Where Lua cannot yield (inside a C function
//! such as the pattern matcher) the interrupt raises the budget error instead, and tries the
//! yield again at the next check. Host functions that can run long
//! (JSON, `core.trim`, `core.split`) ask [`Meter::check`] as they go.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mlua::{Lua, VmState};

use super::pending::Pending;

/// A slice longer than this yields the request's coroutine at the next safe point.
const SLICE: Duration = Duration::from_millis(5);
/// Check the clock once per this many interrupts (they come at every loop edge and call).
const CHECK_EVERY: u32 = 64;

#[derive(Clone, Copy)]
struct Slice {
    /// The request's own coroutine: only it is yielded (a script's inner coroutine is not ours
    /// to suspend).
    thread: *const std::ffi::c_void,
    yield_at: Instant,
    fail_at: Instant,
    /// The budget, for the error message.
    budget_ms: u64,
}

#[derive(Default)]
pub(crate) struct Meter {
    current: Cell<Option<Slice>>,
    ticks: Cell<u32>,
    /// The last over-budget check asked for a yield: if the request is still running, it was at
    /// a point that cannot yield, and this check raises the error instead.
    yield_tried: Cell<bool>,
    /// What the prelude reads to know the running request is spent (budgeted states only).
    spent: std::cell::OnceCell<SpentFlag>,
    /// What each request (and project load) may use; `None` meters nothing (scripts).
    budget: Option<Duration>,
    /// Published at each slice's start and end, for a watchdog on another thread.
    pulse: Option<Arc<Pulse>>,
}

/// One byte the prelude's `pcall` wrappers read to know that the running request's budget is
/// spent (a Luau buffer: the meter writes it from the interrupt without a Lua call, and reading
/// it allocates nothing). A script at the top of its call stack leaves no room even for the read;
/// the read then fails, which raises an error all the same, for the next `pcall` down.
struct SpentFlag {
    byte: mlua::Buffer,
    set: Cell<bool>,
}

/// When the state's running slice started, readable from any thread: a slice longer than its
/// budget is stuck where the meter cannot reach (a C function it does not know).
#[derive(Debug, Default)]
pub struct Pulse {
    /// Milliseconds since [`EPOCH`] plus one; 0 while no slice runs.
    busy_since: AtomicU64,
}

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

impl Pulse {
    pub(crate) fn enter(&self, at: Instant) {
        let ms = at.saturating_duration_since(*EPOCH).as_millis() as u64;
        self.busy_since.store(ms + 1, Ordering::Relaxed);
    }

    pub(crate) fn leave(&self) {
        self.busy_since.store(0, Ordering::Relaxed);
    }

    /// How long the running slice has run; `None` when none runs.
    pub fn busy_for(&self) -> Option<Duration> {
        match self.busy_since.load(Ordering::Relaxed) {
            0 => None,
            since => {
                let now = Instant::now().saturating_duration_since(*EPOCH).as_millis() as u64;
                Some(Duration::from_millis(now.saturating_sub(since - 1)))
            }
        }
    }
}

impl Meter {
    pub fn new(budget: Option<Duration>, pulse: Option<Arc<Pulse>>) -> Self {
        Meter {
            budget,
            pulse,
            ..Meter::default()
        }
    }

    /// Whether this state's requests run under a CPU budget.
    pub fn is_budgeted(&self) -> bool {
        self.budget.is_some()
    }

    /// What the prelude reads to know the running request is spent (see [`SpentFlag`]): the
    /// flag and the budget error's message; nil when nothing is metered. Made once per state.
    pub fn spent_flag(&self, lua: &Lua) -> mlua::Result<Option<mlua::Table>> {
        let Some(budget) = self.budget else {
            return Ok(None);
        };
        let byte = lua.create_buffer([0u8])?;
        let flag = lua.create_table()?;
        flag.raw_set("flag", &byte)?;
        let message = OverBudget {
            budget_ms: budget.as_millis() as u64,
        };
        flag.raw_set("message", message.to_string())?;
        let _ = self.spent.set(SpentFlag {
            byte,
            set: Cell::new(false),
        });
        Ok(Some(flag))
    }

    /// The running request is past its budget: raises the prelude's flag.
    fn mark_spent(&self, budget_ms: u64) -> OverBudget {
        if let Some(flag) = self.spent.get()
            && !flag.set.replace(true)
        {
            flag.byte.write_bytes(0, &[1]);
        }
        OverBudget { budget_ms }
    }

    fn clear_spent(&self) {
        if let Some(flag) = self.spent.get()
            && flag.set.replace(false)
        {
            flag.byte.write_bytes(0, &[0]);
        }
    }

    /// A fresh account for `thread` (a request's coroutine, or a project's loading one), when
    /// there is a budget.
    pub fn budget_for(self: &Rc<Self>, thread: &mlua::Thread) -> Option<Budget> {
        self.budget
            .map(|budget| Budget::new(self.clone(), thread, budget))
    }

    /// Installs the interrupt on `lua`. It never yields while `pending` holds an operation not
    /// yet handed to the driver (see [`super::pending`]).
    pub fn install(self: &Rc<Self>, lua: &Lua, pending: Rc<Pending>) {
        let meter = self.clone();
        lua.set_interrupt(move |lua| {
            let Some(slice) = meter.current.get() else {
                return Ok(VmState::Continue);
            };
            let ticks = meter.ticks.get().wrapping_add(1);
            meter.ticks.set(ticks);
            if !ticks.is_multiple_of(CHECK_EVERY) {
                return Ok(VmState::Continue);
            }
            let now = Instant::now();
            if now >= slice.fail_at {
                let over = meter.mark_spent(slice.budget_ms);
                // A script's own coroutine is yielded too: its resumer, in the request's
                // coroutine, then meets the next check with the call stack that coroutine had.
                if !pending.is_full() && !meter.yield_tried.replace(true) {
                    return Ok(VmState::Yield);
                }
                meter.yield_tried.set(false);
                return Err(mlua::Error::runtime(over));
            }
            if now >= slice.yield_at
                && !pending.is_full()
                && lua.current_thread().to_pointer() == slice.thread
            {
                // mlua ignores the yield where Lua cannot yield (inside a C function such as the
                // pattern matcher), so the slice stays armed: closing it here would leave the
                // rest of that call unmetered. The resume's end closes it.
                return Ok(VmState::Yield);
            }
            Ok(VmState::Continue)
        });
    }

    /// Fails when the running request has used up its budget: for host functions whose work a
    /// script sizes, called every so often as they go.
    pub fn check(&self) -> Result<(), OverBudget> {
        match self.current.get() {
            Some(slice) if Instant::now() >= slice.fail_at => Err(self.mark_spent(slice.budget_ms)),
            _ => Ok(()),
        }
    }
}

/// Host work a script sizes (a JSON walk, a split), counted step by step: every
/// [`STEPS_PER_CHECK`] steps it looks at the running request's budget. Without a meter it only
/// counts.
pub(crate) struct Paced<'a> {
    meter: Option<&'a Meter>,
    steps: Cell<u32>,
}

/// Steps between two looks at the clock: cheap next to a step, frequent next to a budget.
const STEPS_PER_CHECK: u32 = 1024;

impl<'a> Paced<'a> {
    pub fn new(meter: Option<&'a Meter>) -> Self {
        Paced {
            meter,
            steps: Cell::new(0),
        }
    }

    /// One step; fails once the budget is spent.
    pub fn step(&self) -> Result<(), OverBudget> {
        let Some(meter) = self.meter else {
            return Ok(());
        };
        let steps = self.steps.get().wrapping_add(1);
        self.steps.set(steps);
        if steps.is_multiple_of(STEPS_PER_CHECK) {
            meter.check()?;
        }
        Ok(())
    }
}

/// The running request used more than its CPU budget.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request used more than its CPU budget of {budget_ms} ms")]
pub struct OverBudget {
    budget_ms: u64,
}

/// A request's CPU account: each resume of its coroutine runs as one slice under the meter.
pub(crate) struct Budget {
    meter: Rc<Meter>,
    thread: *const std::ffi::c_void,
    budget: Duration,
    used: Duration,
}

impl Budget {
    fn new(meter: Rc<Meter>, thread: &mlua::Thread, budget: Duration) -> Self {
        Budget {
            meter,
            thread: thread.to_pointer(),
            budget,
            used: Duration::ZERO,
        }
    }

    /// Runs `resume` (one resume of the request's coroutine) as a slice.
    pub fn run<R>(&mut self, resume: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        if let Some(pulse) = &self.meter.pulse {
            pulse.enter(start);
        }
        let remaining = self.budget.saturating_sub(self.used);
        self.meter.yield_tried.set(false);
        if self.used == Duration::ZERO {
            // A new request (or load) starts unspent.
            self.meter.clear_spent();
        }
        self.meter.current.set(Some(Slice {
            thread: self.thread,
            yield_at: start + SLICE,
            fail_at: start + remaining,
            budget_ms: self.budget.as_millis() as u64,
        }));
        let out = resume();
        self.meter.current.set(None);
        if let Some(pulse) = &self.meter.pulse {
            pulse.leave();
        }
        self.used += start.elapsed();
        out
    }

    /// The budget error, once the account is spent: a coroutine that yields now was yielded by
    /// the meter to end it.
    pub fn spent(&self) -> Option<OverBudget> {
        (self.used >= self.budget).then_some(OverBudget {
            budget_ms: self.budget.as_millis() as u64,
        })
    }
}
