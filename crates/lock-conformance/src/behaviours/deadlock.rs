//! Deadlock behaviours: a cycle of waiters has exactly one victim, and nothing else is one.
//!
//! Members of a cycle are child processes where the backend spans processes, otherwise
//! threads of second owners; both run [`cycle_member`] and report the same lines.

use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use lock_api::{LockId, Locker, Manager};

use super::PROMPTLY;
use crate::child::{ChildProcess, Role, cycle_member};
use crate::{Backend, Capabilities, Ctx, Failed, Outcome, ensure};

/// The deadlock timeout the cycle behaviours set: short, so trials are quick, and far above
/// the time the members need to start waiting.
const DEADLOCK: Duration = Duration::from_millis(500);

/// One member of a would-be cycle.
enum Member {
    Child(ChildProcess),
    Thread {
        lines: Receiver<String>,
        go: Option<Sender<()>>,
    },
}

impl Member {
    /// Starts a member that holds `first`, then (after `go`) waits for `second`.
    fn start<B: Backend>(
        ctx: &Ctx<'_, B>,
        first: u32,
        second: u32,
        deadlock: Duration,
        wait: Option<Duration>,
    ) -> Result<Member, Failed> {
        let deadlock_ms = u32::try_from(deadlock.as_millis()).unwrap_or(u32::MAX);
        let wait_ms = wait.map_or(0, |w| u32::try_from(w.as_millis()).unwrap_or(u32::MAX));
        if ctx.has(Capabilities::MULTIPROCESS) {
            let mut params = ctx.params(4, first, second);
            params.deadlock_ms = deadlock_ms;
            params.wait_ms = wait_ms;
            return Ok(Member::Child(ctx.spawn(Role::Cycle, &params)?));
        }
        let manager = ctx.open()?;
        let (tx, lines) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let report_tx = tx.clone();
            let result = cycle_member(
                &manager,
                LockId(first),
                LockId(second),
                deadlock,
                wait,
                &mut |line| {
                    let _ = report_tx.send(line.to_owned());
                },
                &mut || go_rx.recv().is_ok(),
            );
            if let Err(failed) = result {
                let _ = tx.send(format!("error {failed}"));
            }
        });
        Ok(Member::Thread {
            lines,
            go: Some(go),
        })
    }

    fn next_line(&mut self) -> Result<String, Failed> {
        match self {
            Member::Child(child) => child.next_line(PROMPTLY),
            Member::Thread { lines, .. } => lines
                .recv_timeout(PROMPTLY)
                .map_err(|_| Failed(format!("no word from a member thread in {PROMPTLY:?}"))),
        }
    }

    fn expect(&mut self, want: &str) -> Result<(), Failed> {
        let line = self.next_line()?;
        ensure!(line == want, "member said {line:?}, want {want:?}");
        Ok(())
    }

    fn go(&mut self) -> Result<(), Failed> {
        match self {
            Member::Child(child) => child.send("go"),
            Member::Thread { go, .. } => go
                .take()
                .ok_or_else(|| Failed("go sent twice".into()))?
                .send(())
                .map_err(|_| Failed("member thread gone before go".into())),
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Member::Child(child) => child.pid(),
            Member::Thread { .. } => std::process::id(),
        }
    }

    /// The member's outcome line (`acquired`, `deadlock ...`, `timeout`), then `released`.
    fn outcome(&mut self) -> Result<String, Failed> {
        let outcome = self.next_line()?;
        if outcome.starts_with("error") {
            return Err(Failed(format!("member failed: {outcome}")));
        }
        self.expect("released")?;
        if let Member::Child(child) = self {
            child.finish(PROMPTLY)?;
        }
        Ok(outcome)
    }
}

/// Runs a cycle of members where member i holds lock i and waits for lock (i + 1) mod n, and
/// returns their outcomes in member order.
fn run_cycle<B: Backend>(ctx: &Ctx<'_, B>, n: u32) -> Result<Vec<(u32, String)>, Failed> {
    let _manager = ctx.create(4)?;
    let mut members = (0..n)
        .map(|i| Member::start(ctx, i, (i + 1) % n, DEADLOCK, None))
        .collect::<Result<Vec<_>, _>>()?;
    for member in &mut members {
        member.expect("holding")?;
    }
    for member in &mut members {
        member.go()?;
    }
    members
        .iter_mut()
        .map(|m| Ok((m.pid(), m.outcome()?)))
        .collect()
}

fn check_one_victim(outcomes: &[(u32, String)], n: usize) -> Outcome {
    let victims: Vec<_> = outcomes
        .iter()
        .filter(|(_, o)| o.starts_with("deadlock"))
        .collect();
    ensure!(
        victims.len() == 1,
        "{} victims of one {n}-cycle, want exactly 1: {outcomes:?}",
        victims.len()
    );
    let acquired = outcomes.iter().filter(|(_, o)| o == "acquired").count();
    ensure!(
        acquired == n - 1,
        "{acquired} of the other {} members acquired: {outcomes:?}",
        n - 1
    );
    let (_, report) = victims[0];
    ensure!(
        report.starts_with(&format!("deadlock {n} ")),
        "the victim's cycle does not have all {n} members: {report:?}"
    );
    for (pid, _) in outcomes {
        ensure!(
            report.contains(&format!("pid {pid} ")),
            "the victim's cycle does not name pid {pid}: {report:?}"
        );
    }
    Ok(())
}

/// Two owners that each hold the lock the other waits for: exactly one returns `Deadlock`
/// with the whole cycle, and the other acquires once the victim releases.
pub fn a_two_cycle_has_exactly_one_victim<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    check_one_victim(&run_cycle(ctx, 2)?, 2)
}

/// Three owners in a cycle of waits: exactly one returns `Deadlock` naming all three, and the
/// other two finish.
pub fn a_three_cycle_has_exactly_one_victim<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    check_one_victim(&run_cycle(ctx, 3)?, 3)
}

/// A wait far longer than the deadlock timeout that is not a cycle (the holder is just slow)
/// is never reported as a deadlock.
pub fn a_long_wait_that_is_no_cycle_is_never_a_deadlock<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let manager = ctx.create(4)?;
    // We hold lock 0 and wait for nothing; the member holds 1 and waits for 0.
    let lock = manager.retrieve(LockId(0))?;
    let _ = lock.lock()?;
    let short = Duration::from_millis(100);
    let mut member = Member::start(ctx, 1, 0, short, None)?;
    member.expect("holding")?;
    member.go()?;
    std::thread::sleep(short * 15);
    lock.unlock()?;
    let outcome = member.outcome()?;
    ensure!(
        outcome == "acquired",
        "a waiter behind a slow holder said {outcome:?}"
    );
    Ok(())
}

/// A cycle that one member breaks by timing out first (`try_lock_for` shorter than the deadlock
/// timeout) has no deadlock victim: that member times out and the other acquires.
pub fn a_cycle_broken_by_a_timeout_has_no_victim<B: Backend>(ctx: &Ctx<'_, B>) -> Outcome {
    let _manager = ctx.create(4)?;
    let patient = Duration::from_secs(3);
    let mut quitter = Member::start(ctx, 0, 1, patient, Some(Duration::from_millis(300)))?;
    let mut waiter = Member::start(ctx, 1, 0, patient, None)?;
    quitter.expect("holding")?;
    waiter.expect("holding")?;
    quitter.go()?;
    waiter.go()?;
    let quit = quitter.outcome()?;
    let waited = waiter.outcome()?;
    ensure!(
        quit == "timeout" && waited == "acquired",
        "the member that timed out said {quit:?}, the other {waited:?}"
    );
    Ok(())
}

/// A member of a cycle that dies (SIGKILL) before anyone checks is no deadlock: the member
/// waiting for its lock takes it over with `OwnerDied`, and nobody is told `Deadlock`.
pub fn a_dead_member_of_a_cycle_is_owner_died_not_deadlock<B: Backend>(
    ctx: &Ctx<'_, B>,
) -> Outcome {
    let _manager = ctx.create(4)?;
    // Long enough for any backend to learn of the death (a lease expiring) before it checks.
    let patient = Duration::from_secs(8);
    let mut survivor = Member::start(ctx, 0, 1, patient, None)?;
    let mut doomed = Member::start(ctx, 1, 0, patient, None)?;
    survivor.expect("holding")?;
    doomed.expect("holding")?;
    survivor.go()?;
    doomed.go()?;
    std::thread::sleep(Duration::from_millis(300));
    match &mut doomed {
        Member::Child(child) => {
            child.sigkill()?;
        }
        Member::Thread { .. } => return Err(Failed("needs child processes".into())),
    }
    let outcome = survivor.outcome()?;
    ensure!(
        outcome == "acquired owner-died",
        "the member whose cycle partner died said {outcome:?}, want acquired owner-died"
    );
    Ok(())
}
