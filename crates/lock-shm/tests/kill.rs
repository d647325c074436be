//! Kill tests beyond the conformance suite: processes hammer locks and the allocator while a
//! driver SIGKILLs them at random, and every invariant must hold afterwards.
//!
//! The test binary re-executes itself (`common`): in a child it plays a worker role, otherwise
//! it runs the trials. Workers keep their shared data in a plain file under /dev/shm, written
//! with `pwrite(2)` inside the critical section under a roll-forward journal, so a worker killed
//! halfway through an increment leaves a record that the next holder (told `OwnerDied`)
//! completes. Children run under lock-conformance's `ChildProcess`, which SIGKILLs and reaps
//! them on drop; every wait is bounded.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use lock_conformance::child::ChildProcess;
use lock_shm::{Acquired, Error, LockId, Locker, Manager, ShmManager};
use rand::Rng;

mod common;

use common::{SEGMENT_ENV, Segment, env};

const DATA_ENV: &str = "LOCKYARD_KILL_DATA";
const INDEX_ENV: &str = "LOCKYARD_KILL_INDEX";
const DEADLINE_ENV: &str = "LOCKYARD_KILL_DEADLINE_MS";

/// Locks hammered by the workers.
const LOCKS: u32 = 4;
/// Concurrent workers.
const WORKERS: usize = 8;
/// How long the driver kills for.
const RUN_FOR: Duration = Duration::from_secs(4);
/// The most workers ever spawned in one run (tally columns in the data file).
const MAX_SPAWNED: u64 = 512;
/// Capacity of the allocator trial's table.
const ALLOC_CAPACITY: u32 = 4096;

/// Per-lock record in the data file (u64 fields).
mod rec {
    pub(super) const SIZE: u64 = 64;
    pub(super) const COUNTER: u64 = 0;
    pub(super) const PENDING: u64 = 8;
    pub(super) const J_COUNTER: u64 = 16;
    pub(super) const J_WORKER: u64 = 24;
    pub(super) const J_TALLY: u64 = 32;
    pub(super) const INSIDE: u64 = 40;
    pub(super) const OWNER_DIED: u64 = 48;
}

/// The shared data file of the hammer trial.
struct Data(File);

impl Data {
    fn tally_off(lock: u32, worker: u64) -> u64 {
        rec::SIZE * u64::from(LOCKS) + (u64::from(lock) * MAX_SPAWNED + worker) * 8
    }

    fn get(&self, off: u64) -> u64 {
        let mut b = [0u8; 8];
        self.0.read_exact_at(&mut b, off).expect("read data file");
        u64::from_le_bytes(b)
    }

    fn put(&self, off: u64, v: u64) {
        self.0
            .write_all_at(&v.to_le_bytes(), off)
            .expect("write data file");
    }

    fn field(lock: u32, f: u64) -> u64 {
        u64::from(lock) * rec::SIZE + f
    }

    /// Completes an increment its holder journaled but may not have finished.
    fn roll_forward(&self, lock: u32) {
        if self.get(Self::field(lock, rec::PENDING)) == 1 {
            let worker = self.get(Self::field(lock, rec::J_WORKER));
            assert!(worker < MAX_SPAWNED, "journal names worker {worker}");
            self.put(
                Self::field(lock, rec::COUNTER),
                self.get(Self::field(lock, rec::J_COUNTER)),
            );
            self.put(
                Self::tally_off(lock, worker),
                self.get(Self::field(lock, rec::J_TALLY)),
            );
            self.put(Self::field(lock, rec::PENDING), 0);
        }
    }
}

/// A worker process (SIGKILLed and reaped when dropped) and its index in the tally columns.
struct Worker {
    process: ChildProcess,
    index: u64,
}

/// Removes the hammer trial's data file when dropped.
struct DataFile(String);

impl Drop for DataFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn spawn(
    role: &str,
    segment: &Segment,
    data: &str,
    index: u64,
    deadline_ms: u64,
) -> Result<Worker, String> {
    let process = common::spawn(
        role,
        segment,
        &[
            (DATA_ENV, data),
            (INDEX_ENV, &index.to_string()),
            (DEADLINE_ENV, &deadline_ms.to_string()),
        ],
    )?;
    Ok(Worker { process, index })
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Worker role: increment random counters under their locks until the deadline.
fn hammer_worker() -> Result<(), String> {
    let manager = ShmManager::open(&env(SEGMENT_ENV)?).map_err(|e| e.to_string())?;
    let data = Data(
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(env(DATA_ENV)?)
            .map_err(|e| e.to_string())?,
    );
    let me: u64 = env(INDEX_ENV)?.parse().map_err(|_| "bad index")?;
    let deadline: u64 = env(DEADLINE_ENV)?.parse().map_err(|_| "bad deadline")?;
    let pid = u64::from(std::process::id());
    let lockers: Vec<_> = (0..LOCKS)
        .map(|i| manager.retrieve(LockId(i)))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let mut rng = rand::rng();
    while epoch_ms() < deadline {
        let lock = rng.random_range(0..LOCKS);
        let acquired = lockers[lock as usize]
            .try_lock_for(Duration::from_secs(5))
            .map_err(|e| format!("lock {lock}: {e}"))?;
        let inside = data.get(Data::field(lock, rec::INSIDE));
        let pending = data.get(Data::field(lock, rec::PENDING));
        match acquired {
            Acquired::Clean if inside != 0 || pending != 0 => {
                return Err(format!(
                    "lock {lock} acquired Clean but holder {inside} died inside (journal pending {pending})"
                ));
            }
            Acquired::Clean => {}
            Acquired::OwnerDied => {
                let died = data.get(Data::field(lock, rec::OWNER_DIED));
                data.put(Data::field(lock, rec::OWNER_DIED), died + 1);
                data.roll_forward(lock);
            }
        }
        data.put(Data::field(lock, rec::INSIDE), pid);
        let counter = data.get(Data::field(lock, rec::COUNTER));
        let tally = data.get(Data::tally_off(lock, me));
        data.put(Data::field(lock, rec::J_COUNTER), counter + 1);
        data.put(Data::field(lock, rec::J_WORKER), me);
        data.put(Data::field(lock, rec::J_TALLY), tally + 1);
        data.put(Data::field(lock, rec::PENDING), 1);
        // Widen the window in which a kill leaves a half-done increment.
        std::thread::yield_now();
        data.put(Data::field(lock, rec::COUNTER), counter + 1);
        data.put(Data::tally_off(lock, me), tally + 1);
        data.put(Data::field(lock, rec::PENDING), 0);
        data.put(Data::field(lock, rec::INSIDE), 0);
        lockers[lock as usize]
            .unlock()
            .map_err(|e| format!("unlock {lock}: {e}"))?;
    }
    Ok(())
}

/// Worker role: allocate and free at random until the deadline.
fn alloc_worker() -> Result<(), String> {
    let manager = ShmManager::open(&env(SEGMENT_ENV)?).map_err(|e| e.to_string())?;
    let deadline: u64 = env(DEADLINE_ENV)?.parse().map_err(|_| "bad deadline")?;
    let mut mine = Vec::new();
    let mut rng = rand::rng();
    while epoch_ms() < deadline {
        if mine.len() < 4 && rng.random_bool(0.5) {
            match manager.allocate() {
                Ok(l) => mine.push(l),
                Err(Error::Exhausted { .. }) => {}
                Err(e) => return Err(format!("allocate: {e}")),
            }
        } else if let Some(l) = mine.pop() {
            l.free().map_err(|e| format!("free {}: {e}", l.id()))?;
        }
    }
    for l in mine {
        l.free().map_err(|e| format!("free {}: {e}", l.id()))?;
    }
    Ok(())
}

/// Reaps workers that exited by themselves; a nonzero exit is a violation.
fn reap(workers: &mut Vec<Worker>) -> Result<(), String> {
    let mut failed = None;
    // A zero-timeout wait reaps a worker that has exited and leaves a running one alone.
    workers.retain_mut(|w| match w.process.wait(Duration::ZERO) {
        Ok(status) => {
            if !status.success() {
                failed = Some(format!("worker {} exited with {status}", w.index));
            }
            false
        }
        _ => true,
    });
    failed.map_or(Ok(()), Err)
}

/// Waits, `bound` in all, for every worker to exit by itself; a nonzero exit is a violation.
fn wait_all(workers: Vec<Worker>, bound: Duration) -> Result<(), String> {
    let until = Instant::now() + bound;
    for mut w in workers {
        let status = w
            .process
            .wait(until.saturating_duration_since(Instant::now()))
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("worker {} exited with {status}", w.index));
        }
    }
    Ok(())
}

/// Eight processes hammer four locks while random holders are SIGKILLed and replaced; the
/// counters come out exact, no lock is stuck, and every death inside a critical section is
/// reported to the next holder as OwnerDied.
fn hammer_with_kills() -> Result<(), String> {
    let segment = Segment::new("hammer");
    let data_path = format!("/dev/shm/lockyard-test-kill-data-{}", std::process::id());
    let _data_file = DataFile(data_path.clone());
    let manager = ShmManager::create(&segment.0, LOCKS).map_err(|e| e.to_string())?;
    let file = File::create(&data_path).map_err(|e| e.to_string())?;
    file.set_len(Data::tally_off(LOCKS, 0))
        .map_err(|e| e.to_string())?;
    let data = Data(
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&data_path)
            .map_err(|e| e.to_string())?,
    );
    let deadline = epoch_ms() + RUN_FOR.as_millis() as u64;
    let mut next_index = 0u64;
    let mut workers: Vec<Worker> = Vec::new();
    for _ in 0..WORKERS {
        workers.push(spawn("hammer", &segment, &data_path, next_index, deadline)?);
        next_index += 1;
    }
    let mut rng = rand::rng();
    let mut kills = 0;
    let started = Instant::now();
    while started.elapsed() < RUN_FOR - Duration::from_millis(300) && next_index < MAX_SPAWNED {
        std::thread::sleep(Duration::from_millis(rng.random_range(5..40)));
        reap(&mut workers)?;
        let lock = rng.random_range(0..LOCKS);
        let pid = data.get(Data::field(lock, rec::INSIDE));
        let by_pid: HashMap<u64, usize> = workers
            .iter()
            .enumerate()
            .map(|(i, w)| (u64::from(w.process.pid()), i))
            .collect();
        if let Some(&i) = by_pid.get(&pid) {
            let mut victim = workers.swap_remove(i);
            victim.process.sigkill().map_err(|e| e.to_string())?;
            kills += 1;
            workers.push(spawn("hammer", &segment, &data_path, next_index, deadline)?);
            next_index += 1;
        }
    }
    wait_all(workers, Duration::from_secs(30))?;
    // No lock is stuck: each one can be taken now, and a dead holder's journal is completed.
    let mut owner_died = 0;
    for lock in 0..LOCKS {
        let l = manager.retrieve(LockId(lock)).map_err(|e| e.to_string())?;
        match l.try_lock_for(Duration::from_secs(5)) {
            Ok(Acquired::OwnerDied) => data.roll_forward(lock),
            Ok(Acquired::Clean) => {
                if data.get(Data::field(lock, rec::PENDING)) != 0 {
                    return Err(format!(
                        "lock {lock}: Clean acquisition with a pending journal"
                    ));
                }
            }
            Err(e) => return Err(format!("lock {lock} is stuck: {e}")),
        }
        let counter = data.get(Data::field(lock, rec::COUNTER));
        let tallies: u64 = (0..next_index)
            .map(|w| data.get(Data::tally_off(lock, w)))
            .sum();
        if counter != tallies {
            return Err(format!(
                "lock {lock}: counter {counter} but the workers' tallies add up to {tallies}"
            ));
        }
        owner_died += data.get(Data::field(lock, rec::OWNER_DIED));
        l.unlock().map_err(|e| e.to_string())?;
        eprintln!("lock {lock}: {counter} increments");
    }
    eprintln!("{kills} holders killed, {owner_died} takeovers reported as OwnerDied");
    if kills > 0 && owner_died == 0 {
        return Err(format!("{kills} holders killed but no OwnerDied takeover"));
    }
    if owner_died > kills {
        return Err(format!("{owner_died} OwnerDied reports for {kills} kills"));
    }
    if !manager.held().map_err(|e| e.to_string())?.is_empty() {
        return Err("locks still held after the run".into());
    }
    Ok(())
}

/// Processes allocating and freeing are SIGKILLed at random, some inside the allocation lock;
/// afterwards the allocator still works, and `available()` matches the allocated bits.
fn allocator_survives_kills() -> Result<(), String> {
    let segment = Segment::new("alloc");
    let manager = ShmManager::create(&segment.0, ALLOC_CAPACITY).map_err(|e| e.to_string())?;
    let deadline = epoch_ms() + 2500;
    let mut workers: Vec<Worker> = (0..4)
        .map(|i| spawn("alloc", &segment, "", i, deadline))
        .collect::<Result<_, _>>()?;
    let mut next_index = 4;
    let mut rng = rand::rng();
    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < Duration::from_millis(2000) {
        std::thread::sleep(Duration::from_millis(rng.random_range(2..20)));
        reap(&mut workers)?;
        if workers.is_empty() {
            break;
        }
        let i = rng.random_range(0..workers.len());
        drop(workers.swap_remove(i));
        kills += 1;
        workers.push(spawn("alloc", &segment, "", next_index, deadline)?);
        next_index += 1;
    }
    wait_all(workers, Duration::from_secs(30))?;
    let available = manager
        .available()
        .map_err(|e| e.to_string())?
        .ok_or("no available count")?;
    // Count allocated ids by asking for each one: AlreadyAllocated means its bit is set.
    let mut allocated = 0;
    for id in 0..ALLOC_CAPACITY {
        match manager.allocate_and_retrieve(LockId(id)) {
            Ok(l) => l.free().map_err(|e| e.to_string())?,
            Err(Error::AlreadyAllocated(_)) => allocated += 1,
            Err(e) => return Err(format!("allocate_and_retrieve {id}: {e}")),
        }
    }
    eprintln!("{kills} allocators killed, {allocated} ids leaked by dead processes");
    if available + allocated != ALLOC_CAPACITY {
        return Err(format!(
            "available() says {available} but {allocated} of {ALLOC_CAPACITY} ids are allocated"
        ));
    }
    // The lowest free id is still handed out first.
    manager.free_all().map_err(|e| e.to_string())?;
    let first = manager.allocate().map_err(|e| e.to_string())?;
    if first.id() != LockId(0) {
        return Err(format!("after free_all the first id is {}", first.id()));
    }
    Ok(())
}

fn main() -> ExitCode {
    let trials: [common::Trial; 2] = [
        ("hammer_with_kills", hammer_with_kills),
        ("allocator_survives_kills", allocator_survives_kills),
    ];
    common::main(
        &[("hammer", hammer_worker), ("alloc", alloc_worker)],
        trials,
    )
}
