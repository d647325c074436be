//! Proves the suite's own machinery: child processes, bounded waits, SIGKILL, and that the
//! behaviours catch broken backends.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed as TrialFailed, Trial};
use lock_api::{
    Acquired, LockId, LockState, Locker, Manager, Result, Store, StoreSpec, wrong_scheme,
};
use lock_conformance::child::{ChildProcess, Params, Role};
use lock_conformance::{Backend, Capabilities, Failed, behaviours, check};
use lock_mem::{MemLocker, MemManager};

/// How a mutant backend is broken.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Defect {
    None,
    UnlockAlwaysSucceeds,
    AllocateRepeatsIds,
    TryLockAlwaysSucceeds,
    FreeNeverFails,
    /// `snapshot` leaves waiters out (the default of `Manager::snapshot`).
    HidesWaiters,
    /// `set_deadlock_timeout` is ignored and detection is off.
    NeverDetectsDeadlocks,
    /// `held` reports no `since`.
    ForgetsSince,
}

impl Defect {
    const ALL: [Defect; 8] = [
        Defect::None,
        Defect::UnlockAlwaysSucceeds,
        Defect::AllocateRepeatsIds,
        Defect::TryLockAlwaysSucceeds,
        Defect::FreeNeverFails,
        Defect::HidesWaiters,
        Defect::NeverDetectsDeadlocks,
        Defect::ForgetsSince,
    ];

    /// The defect a mutant store name carries (`<defect>.<store>`), so the static `Store`
    /// lifecycle (and child processes) can tell which mutant to build.
    fn of(name: &str) -> (Defect, &str) {
        for defect in Defect::ALL {
            if let Some(rest) = name.strip_prefix(&format!("{defect:?}.")) {
                return (defect, rest);
            }
        }
        (Defect::None, name)
    }
}

/// lock-mem with one defect planted, to show the suite notices it.
struct Mutant(Defect);

#[derive(Debug)]
struct MutantManager(MemManager, Defect);

#[derive(Debug)]
struct MutantLocker(MemLocker, Defect);

impl Locker for MutantLocker {
    fn id(&self) -> LockId {
        self.0.id()
    }
    fn lock(&self) -> Result<Acquired> {
        self.0.lock()
    }
    fn try_lock(&self) -> Result<Option<Acquired>> {
        match self.1 {
            Defect::TryLockAlwaysSucceeds => {
                let _ = self.0.try_lock()?;
                Ok(Some(Acquired::Clean))
            }
            _ => self.0.try_lock(),
        }
    }
    fn try_lock_for(&self, timeout: Duration) -> Result<Acquired> {
        self.0.try_lock_for(timeout)
    }
    fn unlock(&self) -> Result<()> {
        match self.1 {
            Defect::UnlockAlwaysSucceeds => {
                let _ = self.0.unlock();
                Ok(())
            }
            _ => self.0.unlock(),
        }
    }
    fn free(&self) -> Result<()> {
        match self.1 {
            Defect::FreeNeverFails => {
                let _ = self.0.free();
                Ok(())
            }
            _ => self.0.free(),
        }
    }
}

impl Manager for MutantManager {
    type Locker = MutantLocker;
    fn allocate(&self) -> Result<MutantLocker> {
        let lock = self.0.allocate()?;
        if self.1 == Defect::AllocateRepeatsIds {
            return Ok(MutantLocker(self.0.retrieve(LockId(0))?, self.1));
        }
        Ok(MutantLocker(lock, self.1))
    }
    fn retrieve(&self, id: LockId) -> Result<MutantLocker> {
        Ok(MutantLocker(self.0.retrieve(id)?, self.1))
    }
    fn allocate_and_retrieve(&self, id: LockId) -> Result<MutantLocker> {
        Ok(MutantLocker(self.0.allocate_and_retrieve(id)?, self.1))
    }
    fn free_all(&self) -> Result<()> {
        self.0.free_all()
    }
    fn capacity(&self) -> Option<u32> {
        self.0.capacity()
    }
    fn available(&self) -> Result<Option<u32>> {
        self.0.available()
    }
    fn held(&self) -> Result<Vec<lock_api::HeldLock>> {
        let mut held = self.0.held()?;
        if self.1 == Defect::ForgetsSince {
            for h in &mut held {
                if let Some(holder) = &mut h.holder {
                    holder.since = None;
                }
            }
        }
        Ok(held)
    }
    fn snapshot(&self) -> Result<Vec<LockState>> {
        let mut snapshot = self.0.snapshot()?;
        if self.1 == Defect::HidesWaiters {
            for lock in &mut snapshot {
                lock.waiters.clear();
            }
            snapshot.retain(|l| l.holder.is_some());
        }
        Ok(snapshot)
    }
    fn deadlock_timeout(&self) -> Option<Duration> {
        self.0.deadlock_timeout()
    }
    fn set_deadlock_timeout(&self, timeout: Duration) -> Result<()> {
        match self.1 {
            Defect::NeverDetectsDeadlocks => self.0.set_deadlock_timeout(Duration::ZERO),
            _ => self.0.set_deadlock_timeout(timeout),
        }
    }
}

impl Store for MutantManager {
    type Address = str;

    fn address(spec: &StoreSpec) -> Result<String> {
        match spec {
            StoreSpec::Mem(name) => Ok(name.clone()),
            other => Err(wrong_scheme("mem", other)),
        }
    }
    fn create(name: &str, capacity: u32) -> Result<MutantManager> {
        let (defect, _) = Defect::of(name);
        Ok(MutantManager(MemManager::create(name, capacity)?, defect))
    }
    fn open(name: &str) -> Result<MutantManager> {
        let (defect, _) = Defect::of(name);
        Ok(MutantManager(MemManager::open(name)?, defect))
    }
    fn open_or_create(name: &str, capacity: u32) -> Result<(MutantManager, bool)> {
        let (defect, _) = Defect::of(name);
        let (manager, created) = MemManager::open_or_create(name, capacity)?;
        Ok((MutantManager(manager, defect), created))
    }
    fn remove(name: &str) -> Result<()> {
        MemManager::remove(name)
    }
}

impl Backend for Mutant {
    type Manager = MutantManager;
    fn name(&self) -> &'static str {
        "mutant"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::ALLOCATION
            | Capabilities::OWNER_PER_MANAGER
            | Capabilities::PERSISTENT
            | Capabilities::WAITERS
            | Capabilities::DEADLOCK
    }
    fn spec(&self, store: &str) -> String {
        format!("mem:{:?}.{store}", self.0)
    }
}

fn behaviour(name: &str) -> std::result::Result<lock_conformance::Behaviour<Mutant>, Failed> {
    behaviours::all::<Mutant>()
        .into_iter()
        .find(|b| b.name == name)
        .ok_or_else(|| Failed(format!("no behaviour named {name}")))
}

/// The named behaviour passes on the sound backend and fails on the one with `defect`.
fn catches(defect: Defect, name: &'static str) -> Trial {
    Trial::test(format!("suite_catches::{defect:?}::{name}"), move || {
        let b = behaviour(name)?;
        check(&Mutant(Defect::None), &b).map_err(|f| format!("sound backend failed: {f}"))?;
        match check(&Mutant(defect), &b) {
            Ok(()) => Err(format!("{name} passed a backend whose {defect:?}").into()),
            Err(_) => Ok(()),
        }
    })
}

fn params() -> Params {
    Params::default()
}

fn process_gone(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH)
}

fn machinery() -> Vec<Trial> {
    vec![
        Trial::test("child::echo_round_trip", || {
            let mut child = ChildProcess::spawn(Role::Echo, &params())?;
            child.send("hello")?;
            let reply = child.expect("echo", Duration::from_secs(30))?;
            if reply != "hello" {
                return Err(format!("echo child replied {reply:?}").into());
            }
            child.finish(Duration::from_secs(30))?;
            Ok(())
        }),
        Trial::test("child::waits_are_bounded", || {
            let mut child = ChildProcess::spawn(Role::Silent, &params())?;
            child.expect("ready", Duration::from_secs(30))?;
            let start = Instant::now();
            if child.next_line(Duration::from_millis(200)).is_ok() {
                return Err("a silent child printed a line".into());
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!("a 200 ms wait took {:?}", start.elapsed()).into());
            }
            if child.wait(Duration::from_millis(100)).is_ok() {
                return Err("a silent child exited on its own".into());
            }
            Ok(())
        }),
        Trial::test("child::sigkill_really_kills", || {
            let mut child = ChildProcess::spawn(Role::Silent, &params())?;
            child.expect("ready", Duration::from_secs(30))?;
            let pid = child.pid();
            let status = child.sigkill()?;
            if status.signal() != Some(9) {
                return Err(format!("child ended with {status}, not SIGKILL").into());
            }
            if !process_gone(pid) {
                return Err(format!("pid {pid} still exists after SIGKILL and reaping").into());
            }
            Ok(())
        }),
        Trial::test("child::drop_kills_and_reaps", || {
            let mut child = ChildProcess::spawn(Role::Silent, &params())?;
            child.expect("ready", Duration::from_secs(30))?;
            let pid = child.pid();
            drop(child);
            if !process_gone(pid) {
                return Err(format!("pid {pid} survived its handle").into());
            }
            Ok(())
        }),
        Trial::test("child::errors_are_reported_not_hung", || {
            // The mutant backend cannot open stores, so a holding child must report an error.
            let mut child = ChildProcess::spawn(
                Role::Hold,
                &Params {
                    store: "no-such-store".into(),
                    capacity: 4,
                    ..Params::default()
                },
            )?;
            let line = child.next_line(Duration::from_secs(30))?;
            if !line.starts_with("error") {
                return Err(format!("child said {line:?}, want an error").into());
            }
            let status = child.wait(Duration::from_secs(30))?;
            if status.success() {
                return Err("a failing child exited successfully".into());
            }
            Ok(())
        }),
        Trial::test("registry::names_are_unique_and_capabilities_known", || {
            let all = behaviours::all::<Mutant>();
            let mut names: Vec<_> = all.iter().map(|b| b.name).collect();
            names.sort_unstable();
            let before = names.len();
            names.dedup();
            if names.len() != before {
                return Err::<(), TrialFailed>("duplicate behaviour names".into());
            }
            Ok(())
        }),
    ]
}

fn main() -> ExitCode {
    if std::env::var(lock_conformance::child::ROLE_ENV).is_ok() {
        return lock_conformance::run(Mutant(Defect::None));
    }
    let mut trials = machinery();
    trials.extend([
        catches(
            Defect::UnlockAlwaysSucceeds,
            "locker::unlock_of_unlocked_lock_is_refused",
        ),
        catches(
            Defect::UnlockAlwaysSucceeds,
            "locker::unlock_by_another_owner_is_refused",
        ),
        catches(
            Defect::AllocateRepeatsIds,
            "manager::allocates_distinct_ids_until_exhausted",
        ),
        catches(
            Defect::AllocateRepeatsIds,
            "manager::concurrent_allocation_from_threads_never_duplicates",
        ),
        catches(
            Defect::TryLockAlwaysSucceeds,
            "locker::try_lock_fails_while_held",
        ),
        catches(
            Defect::TryLockAlwaysSucceeds,
            "locker::lock_unlock_lifecycle",
        ),
        catches(
            Defect::TryLockAlwaysSucceeds,
            "locker::relock_by_the_same_owner_is_not_reentrant",
        ),
        catches(Defect::FreeNeverFails, "manager::double_free_is_refused"),
        catches(
            Defect::HidesWaiters,
            "observe::snapshot_lists_the_holder_and_each_waiter",
        ),
        catches(
            Defect::ForgetsSince,
            "observe::held_names_pid_host_owner_and_since",
        ),
        catches(
            Defect::NeverDetectsDeadlocks,
            "deadlock::a_two_cycle_has_exactly_one_victim",
        ),
    ]);
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}
