//! Model checks of the adoption protocol (`adopt.rs`) with loom: the same generic code that
//! production runs, over loom's atomic word.
//!
//! Run them with `cargo test -p lock-file --lib model`. Each explores every interleaving of two
//! waiters and the scan, up to [`PREEMPTIONS`] preemptions.
//!
//! The properties:
//! - A1, no wait left behind: a wait that stays blocked is adopted, whenever it registers
//!   relative to the runs of the scan (which the model starts when `register` says so, and runs
//!   again while a run says so, as the timer thread does).
//! - A2, no adoption after the end: every timer the scan arms is for a wait that is still
//!   registered, and its waiter gets the ticket back to disarm; so when both waiters are done,
//!   the only timer left armed is the one of the wait that never ended.
//! - The scan reads the thread and start the waiter wrote, never a cell's older contents.
//!
//! Planted bugs, set through [`AdoptSys`]'s constants, must be caught: (a) the scan clears
//! `SEEN` after reading the cells (a wait that registers meanwhile is lost: A1), and (b) a wait
//! that ends by a plain store (an adoption in progress arms a timer for a thread that left: A2).

use std::panic::{AssertUnwindSafe, catch_unwind};

use loom::sync::atomic::AtomicU64;
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

use crate::adopt::{AdoptSys, Blocked, Waits};
use lock_conformance::panic_message;

/// Preemptions explored per execution.
const PREEMPTIONS: usize = 3;

/// The protocol as production runs it.
const REAL: u8 = 0;
/// Planted bug (a): `SEEN` cleared after the cells are read.
const PLANT_SEEN_AFTER_SCAN: u8 = 1;
/// Planted bug (b): a wait that ends by a plain store.
const PLANT_PLAIN_END: u8 = 2;

crate::adopt::impl_word!(AtomicU64);

struct ModelSys<const P: u8>;

impl<const P: u8> AdoptSys for ModelSys<P> {
    type Word = AtomicU64;
    const SEEN_AFTER_SCAN: bool = P == PLANT_SEEN_AFTER_SCAN;
    const PLAIN_END: bool = P == PLANT_PLAIN_END;

    fn pause() {
        thread::yield_now();
    }
}

/// The timer thread as far as the scan is concerned: whether a scan was started and not yet
/// run, and how many waiters are done (the model's timer thread ends when both are).
#[derive(Default)]
struct Timer {
    started: bool,
    done: usize,
}

/// Everything the threads share.
struct World<const P: u8> {
    waits: Waits<ModelSys<P>>,
    timer: Mutex<Timer>,
    changed: Condvar,
    /// Timers the scan armed and nobody disarmed: (ticket, thread).
    armed: Mutex<Vec<(u64, u64)>>,
    next_ticket: Mutex<u64>,
}

impl<const P: u8> World<P> {
    fn new() -> World<P> {
        World {
            waits: Waits::new(2),
            timer: Mutex::new(Timer::default()),
            changed: Condvar::new(),
            armed: Mutex::new(Vec::new()),
            next_ticket: Mutex::new(0),
        }
    }

    /// A wait of `thread` in cell `index`; starts the scan when told to.
    fn register(&self, index: usize, thread: u64) {
        let wait = Blocked {
            thread,
            start: thread * 10,
        };
        if self.waits.register(index, wait) {
            self.timer.lock().unwrap().started = true;
            self.changed.notify_one();
        }
    }

    /// Ends the wait in cell `index` of `thread`, disarming what the scan armed for it.
    fn end(&self, index: usize, thread: u64) {
        if let Some(ticket) = self.waits.end(index) {
            let mut armed = self.armed.lock().unwrap();
            let at = armed
                .iter()
                .position(|&(t, _)| t == ticket)
                .expect("the ticket handed back is armed");
            assert_eq!(armed.swap_remove(at).1, thread, "another thread's timer");
        }
    }

    fn waiter_done(&self) {
        self.timer.lock().unwrap().done += 1;
        self.changed.notify_one();
    }

    /// The timer thread: runs the scan when started, again while a run asks, and ends when
    /// both waiters are done and no scan is started.
    fn run_timer(&self) {
        loop {
            {
                let mut timer = self.timer.lock().unwrap();
                while !timer.started && timer.done < 2 {
                    timer = self.changed.wait(timer).unwrap();
                }
                if !timer.started {
                    return;
                }
                timer.started = false;
            }
            while self.waits.scan(|wait| {
                assert_eq!(
                    wait.start,
                    wait.thread * 10,
                    "a cell read before it was filled"
                );
                let mut next = self.next_ticket.lock().unwrap();
                *next += 1;
                self.armed.lock().unwrap().push((*next, wait.thread));
                Some(*next)
            }) {}
        }
    }
}

/// Waiter 1 registers and stays blocked; waiter 2 waits twice in its cell and ends both; the
/// scan runs beside them. Afterwards exactly waiter 1's wait is armed (A1 and A2).
fn scenario<const P: u8>() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(PREEMPTIONS);
    builder.check(|| {
        let world = Arc::new(World::<P>::new());
        let timer = {
            let world = world.clone();
            thread::spawn(move || world.run_timer())
        };
        let second = {
            let world = world.clone();
            thread::spawn(move || {
                for _ in 0..2 {
                    world.register(1, 2);
                    world.end(1, 2);
                }
                world.waiter_done();
            })
        };
        world.register(0, 1);
        world.waiter_done();
        second.join().unwrap();
        timer.join().unwrap();
        let armed = world.armed.lock().unwrap().clone();
        let threads: Vec<u64> = armed.iter().map(|&(_, thread)| thread).collect();
        assert!(threads.contains(&1), "a blocked wait was never adopted");
        assert_eq!(threads, vec![1], "a timer left armed for a wait that ended");
    });
}

/// A1 and A2 on the protocol as production runs it.
#[test]
fn model_adopt_every_blocked_wait_and_none_that_ended() {
    scenario::<REAL>();
}

/// Planted bug (a): with `SEEN` cleared after the cells are read, a wait that registers while a
/// run reads them is neither adopted nor keeps the scan going; loom finds it.
#[test]
fn model_adopt_catches_seen_cleared_after_the_scan() {
    let caught = catch_unwind(AssertUnwindSafe(scenario::<PLANT_SEEN_AFTER_SCAN>));
    let message = panic_message(&caught);
    assert!(
        message.contains("never adopted"),
        "the lost wait was not caught as such: {message:?}"
    );
}

/// Planted bug (b): a wait that ends by a plain store leaves a timer armed for a thread that
/// left; loom finds it.
#[test]
fn model_adopt_catches_an_end_that_does_not_look() {
    let caught = catch_unwind(AssertUnwindSafe(scenario::<PLANT_PLAIN_END>));
    let message = panic_message(&caught);
    assert!(
        message.contains("left armed for a wait that ended"),
        "the timer after the end was not caught as such: {message:?}"
    );
}
