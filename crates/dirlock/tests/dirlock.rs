//! dirlock behaviour with real processes: the level state machine, staleness, bad input, kills.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dirlock::lock_api::{Acquired, Error, Inspect, Locker};
use dirlock::{DirLock, HeldBecause, StaleBecause, Verdict};
use lock_conformance::child::ChildProcess;

// ---------------------------------------------------------------------------------------------
// Child roles
// ---------------------------------------------------------------------------------------------

fn say(line: &str) {
    println!("{SAY}{line}");
}

fn word(acquired: Acquired) -> &'static str {
    match acquired {
        Acquired::Clean => "clean",
        Acquired::OwnerDied => "owner-died",
    }
}

fn error_word(e: &Error) -> String {
    match e {
        Error::Io { source, .. } => format!("io {:?}", source.kind()),
        Error::Corrupt { .. } => "corrupt".into(),
        Error::Incompatible { .. } => "incompatible".into(),
        Error::InvalidArgument { .. } => "invalid".into(),
        Error::NotFound { .. } => "not-found".into(),
        other => format!("other {other:?}"),
    }
}

/// Blocks until stdin reaches EOF (the parent closed it or died), at most a minute.
fn wait_for_eof() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            line.clear();
        }
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs(60));
}

fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + PATIENCE;
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The entry point of child processes; does nothing in a normal test run.
#[test]
fn child_role() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let dir = std::env::var_os(DIR_ENV).expect("dir");
    let dir = Path::new(&dir);
    let work = std::env::var_os(WORK_ENV).expect("work");
    let work = Path::new(&work);
    let count: u32 = std::env::var(COUNT_ENV)
        .expect("count")
        .parse()
        .expect("count");
    match role.as_str() {
        "sleep" => {
            say("ready");
            wait_for_eof();
        }
        "hold" => {
            let lock = DirLock::new(dir).expect("new");
            say(word(lock.lock().expect("lock")));
            wait_for_eof();
            lock.unlock().expect("unlock");
        }
        "try" => {
            let lock = DirLock::new(dir).expect("new");
            say("ready");
            wait_for_file(&work.join("go"));
            match lock.try_lock() {
                Ok(Some(acquired)) => say(word(acquired)),
                Ok(None) => say("busy"),
                Err(e) => say(&format!("error {}", error_word(&e))),
            }
            wait_for_eof();
        }
        "hammer" => hammer(dir, work, count),
        "judge" => match DirLock::new(dir) {
            Err(e) => say(&format!("new-error {}", error_word(&e))),
            Ok(lock) => {
                match lock.status() {
                    Ok(Some((_, verdict))) => say(&format!("verdict {verdict:?}")),
                    Ok(None) => say("verdict free"),
                    Err(e) => say(&format!("error {}", error_word(&e))),
                }
                match lock.try_lock() {
                    Ok(taken) => say(&format!("try {}", taken.is_some())),
                    Err(e) => say(&format!("error {}", error_word(&e))),
                }
            }
        },
        "leader-exits" => leader_exits(dir),
        "fork" => forks(dir, work),
        "exec-on-line" => {
            let lock = DirLock::new(dir).expect("new");
            say(word(lock.lock().expect("lock")));
            let _ = read_line();
            let err = std::os::unix::process::CommandExt::exec(
                std::process::Command::new("sleep").arg("30"),
            );
            say(&format!("error exec {err}"));
        }
        "linger" => linger(dir, count),
        "hold-many" => {
            let locks: Vec<DirLock> = (0..count)
                .map(|i| DirLock::new(dir.join(i.to_string())).expect("new"))
                .collect();
            for lock in &locks {
                assert_eq!(lock.lock().expect("lock"), Acquired::Clean);
            }
            say("held");
            wait_for_eof();
        }
        "try-many" => try_many(dir, count),
        "exec-sleep" => {
            let lock = DirLock::new(dir).expect("new");
            say(word(lock.lock().expect("lock")));
            // The lock is not released first: exec keeps the pid and the start time, and runs
            // no destructor.
            let err = std::os::unix::process::CommandExt::exec(
                std::process::Command::new("sleep").arg("30"),
            );
            say(&format!("error exec {err}"));
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

/// One line from stdin (without its newline); `None` at EOF.
fn read_line() -> Option<String> {
    let mut line = String::new();
    match std::io::stdin().read_line(&mut line) {
        Ok(n) if n > 0 => Some(line.trim_end().to_owned()),
        _ => None,
    }
}

/// The threads and open descriptors of this process.
fn threads_and_fds() -> (usize, usize) {
    let count = |dir: &str| fs::read_dir(dir).map(|d| d.count()).unwrap_or(usize::MAX);
    (count("/proc/self/task"), count("/proc/self/fd"))
}

/// Two rounds of: a handle on each of the `count` locks `dir/0`, `dir/1`, ... (all held by
/// another process), two `try_lock`s through each (`None`), then `fds <n>`: the descriptors this
/// process has open beyond those before the round, while it still keeps the handles.
fn try_many(dir: &Path, count: u32) {
    for _ in 0..2 {
        let (_, before) = threads_and_fds();
        let locks: Vec<DirLock> = (0..count)
            .map(|i| DirLock::new(dir.join(i.to_string())).expect("new"))
            .collect();
        for lock in locks.iter().chain(&locks) {
            assert_eq!(lock.try_lock().expect("try"), None, "a double hold");
        }
        let (_, after) = threads_and_fds();
        say(&format!("fds {}", after - before));
    }
}

/// `count` rounds of: read a line (the parent holds the lock), wait 200 ms for the lock
/// (`timeout` is expected), say how it ended, read a line (the parent has released the lock),
/// wait until the thread count is back where it was before the first wait, and say `after
/// <threads> <fds>` (thread and descriptor counts, relative to before the first wait).
fn linger(dir: &Path, count: u32) {
    let lock = DirLock::new(dir).expect("new");
    let (threads, fds) = threads_and_fds();
    for _ in 0..count {
        if read_line().is_none() {
            return;
        }
        match lock.try_lock_for(Duration::from_millis(200)) {
            Err(Error::Timeout) => say("timeout"),
            other => say(&format!("wait gave {other:?}")),
        }
        if read_line().is_none() {
            return;
        }
        let deadline = Instant::now() + PATIENCE;
        while threads_and_fds().0 > threads && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (t, f) = threads_and_fds();
        say(&format!(
            "after {} {}",
            t as i64 - threads as i64,
            f as i64 - fds as i64
        ));
    }
}

/// Takes the lock on a worker thread, then ends the main thread alone with `SYS_exit`: the
/// thread-group leader becomes a zombie while the worker lives on holding the lock, until stdin
/// closes (it then unlocks and exits) or the process is killed.
///
/// libtest runs the role on a thread of its own, which is the worker here; the main thread,
/// blocked in libtest, is made to exit by a signal directed at it whose handler calls `SYS_exit`.
#[allow(
    unsafe_code,
    reason = "a signal handler, tgkill and SYS_exit have no safe wrappers"
)]
fn leader_exits(dir: &Path) {
    let pid = rustix::process::getpid();
    if rustix::thread::gettid() == pid {
        // Should libtest ever run the role on the main thread: a worker takes the lock, and
        // this thread exits itself.
        let dir = dir.to_owned();
        let (taken, is_taken) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let lock = DirLock::new(&dir).expect("new");
            let acquired = lock.lock().expect("lock");
            let _ = taken.send(());
            hold_until_eof(&lock, acquired);
        });
        if is_taken.recv_timeout(PATIENCE).is_ok() {
            exit_this_thread(0);
        }
        say("error the worker did not take the lock");
        return;
    }
    let lock = DirLock::new(dir).expect("new");
    let acquired = lock.lock().expect("lock");
    let handler: extern "C" fn(libc::c_int) = exit_this_thread;
    // SAFETY: the handler only makes the async-signal-safe SYS_exit system call, and nothing
    // else in this child uses SIGUSR1.
    let previous = unsafe { libc::signal(libc::SIGUSR1, handler as libc::sighandler_t) };
    assert_ne!(previous, libc::SIG_ERR, "signal(SIGUSR1)");
    let raw = libc::pid_t::from(pid.as_raw_nonzero().get());
    // SAFETY: tgkill(2) with our own pid as thread group and thread id sends SIGUSR1 to the
    // main thread only; it reads no memory of ours.
    let sent = unsafe { libc::syscall(libc::SYS_tgkill, raw, raw, libc::SIGUSR1) };
    assert_eq!(sent, 0, "tgkill(main thread, SIGUSR1)");
    hold_until_eof(&lock, acquired);
}

/// Ends the calling thread alone (`SYS_exit`, not `exit_group`); used as a signal handler too.
#[allow(unsafe_code, reason = "SYS_exit has no safe wrapper")]
extern "C" fn exit_this_thread(_signal: libc::c_int) {
    // SAFETY: SYS_exit ends the calling thread only and never returns, so nothing on its stack
    // is used again; what the thread owns is leaked, never dropped, which is sound. The other
    // threads keep no reference into this thread's stack (the main thread's stack, the process
    // stack, stays mapped anyway while the process lives).
    unsafe {
        libc::syscall(libc::SYS_exit, 0);
    }
}

/// Takes the lock, then forks twice (through glibc's `fork`, and through a raw `clone` system
/// call that no library sees) and says how each child's checks went (`fork <how> exit <code>`,
/// 0 when all passed), then unlocks.
#[allow(
    unsafe_code,
    reason = "fork(2), a raw clone(2), waitpid(2) and _exit(2) have no safe wrappers"
)]
fn forks(dir: &Path, work: &Path) {
    let lock = DirLock::new(dir).expect("new");
    // Taking the lock caches this process's pid.
    assert_eq!(lock.try_lock().expect("try"), Some(Acquired::Clean));
    for how in ["fork", "clone"] {
        let other = work.join(how);
        fs::create_dir(&other).expect("mkdir");
        // SAFETY: the child runs only `forked_checks` and `_exit`; it touches no lock that
        // another thread of this process could hold at the fork (libtest's threads are idle),
        // and a raw clone with SIGCHLD and no stack is a plain fork at the system-call level.
        let pid = unsafe {
            match how {
                "fork" => libc::fork(),
                _ => libc::syscall(
                    libc::SYS_clone,
                    libc::c_long::from(libc::SIGCHLD),
                    0,
                    0,
                    0,
                    0,
                ) as libc::pid_t,
            }
        };
        assert!(pid >= 0, "{how} failed");
        if pid == 0 {
            let code = forked_checks(&lock, &other);
            // SAFETY: _exit ends the child without running the parent's destructors (which
            // would unlock through the inherited handle's state).
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a live local.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid, "waitpid");
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        };
        say(&format!("{how} exit {code}"));
    }
    lock.unlock().expect("the parent still holds the lock");
    say("unlocked");
}

/// What a forked child of the holder must find: it does not hold the lock (its unlock is
/// `NotHeld`), cannot take it while the parent lives, and writes its own pid into the records
/// of locks it takes. Returns 0, or the number of the first check that failed.
fn forked_checks(lock: &DirLock, other: &Path) -> i32 {
    if lock.is_held() {
        return 10;
    }
    if !matches!(lock.unlock(), Err(Error::NotHeld(_))) {
        return 11;
    }
    if !matches!(lock.try_lock(), Ok(None)) {
        return 12;
    }
    let Ok(fresh) = DirLock::new(other) else {
        return 13;
    };
    if !matches!(fresh.try_lock(), Ok(Some(Acquired::Clean))) {
        return 14;
    }
    match fresh.holder_record() {
        Ok(Some(record)) if record.pid == std::process::id() => {}
        _ => return 15,
    }
    if fresh.unlock().is_err() {
        return 16;
    }
    0
}

/// Says how the lock was taken, holds it until stdin closes, then unlocks and ends the process.
fn hold_until_eof(lock: &DirLock, acquired: Acquired) -> ! {
    say(word(acquired));
    wait_for_eof();
    lock.unlock().expect("unlock");
    std::process::exit(0);
}

/// Locks `count` times (forever when 0), checking exclusion with a marker file and updating a
/// counter non-atomically inside the critical section.
fn hammer(dir: &Path, work: &Path, count: u32) {
    let lock = DirLock::new(dir).expect("new");
    let marker = work.join("inside");
    let counter = work.join("counter");
    let started = Instant::now();
    let mut done = 0;
    while (count == 0 || done < count) && started.elapsed() < Duration::from_secs(60) {
        let acquired = lock.lock().expect("lock");
        if acquired == Acquired::OwnerDied {
            // The dead holder may have died inside: repairing its state is the new holder's job.
            let _ = fs::remove_file(&marker);
        }
        if fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
            .is_err()
        {
            let _ = fs::write(
                work.join("violation"),
                format!(
                    "{} found another holder inside ({acquired:?})",
                    std::process::id()
                ),
            );
            std::process::exit(3);
        }
        let value: u64 = fs::read_to_string(&counter)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        std::thread::yield_now();
        fs::write(&counter, (value + 1).to_string()).expect("write counter");
        fs::remove_file(&marker).expect("remove marker");
        lock.unlock().expect("unlock");
        done += 1;
        let mut progress = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(work.join("progress"))
            .expect("progress log");
        let mark: &[u8] = if acquired == Acquired::OwnerDied {
            b"D"
        } else {
            b"."
        };
        std::io::Write::write_all(&mut progress, mark).expect("progress");
    }
    say("done");
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn work_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("dirlock-work-")
        .tempdir()
        .expect("work dir")
}

fn level(n: usize) -> String {
    format!("lock{n}")
}

fn write_level(dir: &Path, n: usize, text: &str) {
    fs::write(dir.join(level(n)), text).expect("write record");
}

/// A live process (a sleeping child) and its record.
struct Live {
    kid: ChildProcess,
    record: String,
}

fn live(me: &Me, dir: &Path, work: &Path) -> Live {
    let mut kid = spawn("sleep", dir, work, 0, None);
    assert_eq!(kid.next_line(PATIENCE).expect("sleeper"), "ready");
    let pid = kid.pid();
    let record = record(me, pid, start_time(pid));
    Live { kid, record }
}

/// A pid that certainly belongs to no process now (a child that was killed and reaped).
fn dead_pid(dir: &Path, work: &Path) -> u32 {
    let mut kid = spawn("sleep", dir, work, 0, None);
    assert_eq!(kid.next_line(PATIENCE).expect("sleeper"), "ready");
    let pid = kid.pid();
    kid.sigkill().expect("kill and reap the sleeper");
    pid
}

/// Waits at most [`PATIENCE`] for `check` to hold; whether it did.
fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The state letter (field 3) of `/proc/<pid>/stat`, from the thread-group leader; `None` when
/// the process is gone.
fn leader_state(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().next().map(str::to_owned)
}

/// Voluntary context switches of every thread of process `pid` so far: how often it slept,
/// that is how often it woke up.
fn switches(pid: u32) -> u64 {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).expect("tasks of the waiter");
    tasks
        .filter_map(|task| fs::read_to_string(task.ok()?.path().join("status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .sum()
}

/// Whether process `pid` has a thread named `name`.
fn has_thread(pid: u32, name: &str) -> bool {
    fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
        tasks.filter_map(Result::ok).any(|task| {
            fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim_end() == name)
        })
    })
}

/// Waits (at most two seconds) until process `pid` runs a watcher thread, the sign that its
/// `lock` is asleep rather than starting; a wait that polls has none, and then this returns
/// after the two seconds.
fn settle_on_watcher(pid: u32) {
    let settle = Instant::now() + Duration::from_secs(2);
    while !has_thread(pid, "dirlock-watch") && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The command name of `pid` (`/proc/<pid>/comm`); `None` when the process is gone.
fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|name| name.trim_end().to_owned())
}

fn is_corrupt<T: std::fmt::Debug>(r: dirlock::lock_api::Result<T>) -> bool {
    matches!(r, Err(Error::Corrupt { .. }))
}

// ---------------------------------------------------------------------------------------------
// The level state machine
// ---------------------------------------------------------------------------------------------

/// What a level holds before the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Free,
    Held,
    Stale,
}

fn parse_states(s: &str) -> [St; 3] {
    let mut out = [St::Free; 3];
    for (slot, c) in out.iter_mut().zip(s.chars()) {
        *slot = match c {
            'F' => St::Free,
            'H' => St::Held,
            'S' => St::Stale,
            _ => panic!("state {c}"),
        };
    }
    out
}

/// The original's table, over three levels: the state of lock0, lock1, lock2 before a
/// `try_lock` by a fresh handle, its result, and the exact levels present afterwards.
/// `-` means busy (not acquired).
const TABLE: [(&str, &str, &str); 27] = [
    ("FFF", "clean", "0"),
    ("FFH", "clean", "0 2"),
    ("FFS", "clean", "0"),
    ("FHF", "clean", "0 1"),
    ("FHH", "clean", "0 1 2"),
    ("FHS", "clean", "0 1"),
    ("FSF", "clean", "0"),
    ("FSH", "clean", "0 1 2"),
    ("FSS", "clean", "0"),
    ("HFF", "-", "0"),
    ("HFH", "-", "0 2"),
    ("HFS", "-", "0 2"),
    ("HHF", "-", "0 1"),
    ("HHH", "-", "0 1 2"),
    ("HHS", "-", "0 1 2"),
    ("HSF", "-", "0 1"),
    ("HSH", "-", "0 1 2"),
    ("HSS", "-", "0 1 2"),
    ("SFF", "owner-died", "0"),
    ("SFH", "owner-died", "0 2"),
    ("SFS", "owner-died", "0"),
    ("SHF", "-", "0 1"),
    ("SHH", "-", "0 1 2"),
    ("SHS", "-", "0 1 2"),
    ("SSF", "owner-died", "0"),
    ("SSH", "-", "0 1 2"),
    ("SSS", "owner-died", "0"),
];

/// Every combination of free, held and stale over three levels gives the original's outcome,
/// leaves exactly the expected files, never touches a held record, and leaves no temporary file.
#[test]
fn level_state_machine() {
    let me = me();
    let work = work_dir();
    let scratch = lock_dir();
    let holder = live(&me, scratch.path(), work.path());
    let dead = dead_pid(scratch.path(), work.path());
    let own = std::process::id();
    // Three ways to be stale, one per level: a dead pid, a reused pid, an earlier boot.
    let stale = [
        record(&me, dead, 12345),
        record(&me, own, start_time(own) + 1),
        record_with(&me.host, "an-earlier-boot", me.pid_ns, holder.kid.pid(), 1),
    ];
    for (states, result, after) in TABLE {
        let dir = lock_dir();
        let levels = parse_states(states);
        for (n, state) in levels.iter().enumerate() {
            match state {
                St::Free => {}
                St::Held => write_level(dir.path(), n, &holder.record),
                St::Stale => write_level(dir.path(), n, &stale[n]),
            }
        }
        let lock = DirLock::new(dir.path()).expect("new");
        let got = match lock.try_lock().expect(states) {
            Some(acquired) => word(acquired),
            None => "-",
        };
        assert_eq!(got, result, "{states}: result");
        let want: Vec<String> = after.split(' ').map(|n| format!("lock{n}")).collect();
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        assert_entries(dir.path(), &want, states);
        for (n, state) in levels.iter().enumerate() {
            if *state == St::Held {
                assert_eq!(
                    fs::read_to_string(dir.path().join(level(n))).expect("held record"),
                    holder.record,
                    "{states}: a held record was changed"
                );
            }
        }
        if result != "-" {
            let (record, verdict) = lock.status().expect("status").expect("held");
            assert_eq!(record.pid, own, "{states}: lock0 is not ours");
            assert_eq!(verdict, Verdict::Held(HeldBecause::Alive));
            lock.unlock().expect("unlock");
            let rest: Vec<&str> = want.iter().copied().filter(|n| *n != "lock0").collect();
            assert_entries(dir.path(), &rest, &format!("{states} after unlock"));
        } else {
            assert!(matches!(lock.unlock(), Err(Error::NotHeld(_))));
            assert_entries(dir.path(), &want, &format!("{states} after refused unlock"));
        }
    }
}

/// A damaged record at any level the algorithm reads is an error, never "stale", and nothing
/// is removed; a damaged level the algorithm does not need to read does not matter.
#[test]
fn damaged_levels_are_errors_and_are_kept() {
    let me = me();
    let work = work_dir();
    let scratch = lock_dir();
    let holder = live(&me, scratch.path(), work.path());
    let own = std::process::id();
    let stale = record(&me, own, start_time(own) + 1);
    let future = stale.replacen("dirlock-record 1", "dirlock-record 7", 1);
    let garbage = "\u{1}\u{2}garbage";
    // (lock0, lock1, lock2) contents; None = free.
    type Case<'a> = ([Option<&'a str>; 3], &'a str);
    let cases: [Case<'_>; 6] = [
        ([Some(garbage), None, None], "corrupt"),
        ([Some(&future), None, None], "incompatible"),
        ([Some(&stale), Some(garbage), None], "corrupt"),
        ([Some(&stale), Some(&stale), Some(&future)], "incompatible"),
        ([Some(&holder.record), Some(garbage), None], "busy"),
        ([None, Some(garbage), None], "clean"),
    ];
    for (i, (levels, want)) in cases.iter().enumerate() {
        let dir = lock_dir();
        let mut present = Vec::new();
        for (n, text) in levels.iter().enumerate() {
            if let Some(text) = text {
                write_level(dir.path(), n, text);
                present.push(level(n));
            }
        }
        let lock = DirLock::new(dir.path()).expect("new");
        let got = match lock.try_lock() {
            Ok(Some(acquired)) => word(acquired).to_owned(),
            Ok(None) => "busy".to_owned(),
            Err(e) => error_word(&e),
        };
        assert_eq!(&got, want, "case {i}");
        if got == "clean" {
            present.push("lock0".into());
        }
        let present: Vec<&str> = present.iter().map(String::as_str).collect();
        assert_entries(dir.path(), &present, &format!("case {i}"));
        for (n, text) in levels.iter().enumerate() {
            if let Some(text) = text {
                assert_eq!(
                    fs::read_to_string(dir.path().join(level(n))).expect("kept"),
                    *text,
                    "case {i}: level {n} changed"
                );
            }
        }
    }
}

/// What a reclaimer that died between staging its record and renaming it leaves behind (a stale
/// upper level and a staging file) is cleared by the next holder of the master lock.
#[test]
fn dead_reclaimers_leftovers_are_cleared() {
    let me = me();
    let own = std::process::id();
    let stale = record(&me, own, start_time(own) + 1);
    for (master_stale, want) in [(true, Acquired::OwnerDied), (false, Acquired::Clean)] {
        let dir = lock_dir();
        if master_stale {
            write_level(dir.path(), 0, &stale);
        }
        write_level(dir.path(), 1, &stale);
        fs::write(dir.path().join("lock0.takeover"), &stale).expect("staging");
        write_level(dir.path(), 3, &stale);
        let lock = DirLock::new(dir.path()).expect("new");
        assert_eq!(lock.try_lock().expect("try"), Some(want));
        assert_entries(dir.path(), &["lock0"], "leftovers cleared");
        lock.unlock().expect("unlock");
        assert_entries(dir.path(), &[], "released");
    }
}

/// A handle looks for dead reclaimers' leftovers on its first acquisition and on the first
/// one after it found `lock0` taken, not on every uncontended acquisition: leftovers only come
/// from reclaims, which only happen while `lock0` exists.
#[test]
fn leftovers_are_cleared_by_a_new_handle_or_after_contention() {
    let me = me();
    let own = std::process::id();
    let stale = record(&me, own, start_time(own) + 1);
    let dir = lock_dir();
    let lock = DirLock::new(dir.path()).expect("new");
    write_level(dir.path(), 2, &stale);
    assert_eq!(lock.try_lock().expect("first"), Some(Acquired::Clean));
    assert_entries(dir.path(), &["lock0"], "first acquisition cleared lock2");
    lock.unlock().expect("unlock");
    // Uncontended from now on: no scan, so a leftover that appears stays for now.
    write_level(dir.path(), 1, &stale);
    assert_eq!(lock.try_lock().expect("again"), Some(Acquired::Clean));
    assert_entries(
        dir.path(),
        &["lock0", "lock1"],
        "uncontended: not looked for",
    );
    lock.unlock().expect("unlock");
    // Found busy once: the next acquisition looks again and clears it.
    let other = DirLock::new(dir.path()).expect("other");
    assert_eq!(other.try_lock().expect("other"), Some(Acquired::Clean));
    assert_eq!(lock.try_lock().expect("busy"), None);
    other.unlock().expect("unlock");
    assert_eq!(lock.try_lock().expect("after"), Some(Acquired::Clean));
    assert_entries(dir.path(), &["lock0"], "cleared after contention");
    lock.unlock().expect("unlock");
    assert_entries(dir.path(), &[], "released");
}

// ---------------------------------------------------------------------------------------------
// Staleness
// ---------------------------------------------------------------------------------------------

/// A live process whose start time differs from the record (its pid was reused) is stale.
#[test]
fn reused_pid_is_stale() {
    let me = me();
    let work = work_dir();
    let dir = lock_dir();
    let other = live(&me, dir.path(), work.path());
    let pid = other.kid.pid();
    write_level(dir.path(), 0, &record(&me, pid, start_time(pid) + 7));
    let lock = DirLock::new(dir.path()).expect("new");
    let (_, verdict) = lock.status().expect("status").expect("record");
    assert_eq!(verdict, Verdict::Stale(StaleBecause::PidReused));
    assert_eq!(lock.try_lock().expect("try"), Some(Acquired::OwnerDied));
    lock.unlock().expect("unlock");
    assert_entries(dir.path(), &[], "after unlock");
}

/// A record from an earlier boot of this host is stale, even if its pid is alive now.
#[test]
fn earlier_boot_is_stale() {
    let me = me();
    let work = work_dir();
    let dir = lock_dir();
    let other = live(&me, dir.path(), work.path());
    let pid = other.kid.pid();
    let earlier = record_with(&me.host, "0f0f0f0f-earlier-boot", 1, pid, start_time(pid));
    write_level(dir.path(), 0, &earlier);
    let lock = DirLock::new(dir.path()).expect("new");
    let (_, verdict) = lock.status().expect("status").expect("record");
    assert_eq!(verdict, Verdict::Stale(StaleBecause::EarlierBoot));
    assert_eq!(lock.try_lock().expect("try"), Some(Acquired::OwnerDied));
    lock.unlock().expect("unlock");
    assert_entries(dir.path(), &[], "after unlock");
}

/// A version-2 record that promises an OFD lock on its file is stale when nobody holds that
/// lock, although its pid lives with the recorded start time (its writer called `exec`); one
/// that makes no promise is judged by its pid alone, as a version-1 record is.
#[test]
fn version_2_records_are_judged_by_their_lock_promise() {
    let me = me();
    let work = work_dir();
    let scratch = lock_dir();
    let other = live(&me, scratch.path(), work.path());
    let pid = other.kid.pid();
    let cases = [
        (true, Verdict::Stale(StaleBecause::DescriptorClosed)),
        (false, Verdict::Held(HeldBecause::Alive)),
    ];
    for (promise, want) in cases {
        let dir = lock_dir();
        let text = record_v2(&me, pid, start_time(pid), promise);
        write_level(dir.path(), 0, &text);
        let lock = DirLock::new(dir.path()).expect("new");
        let (record, verdict) = lock.status().expect("status").expect("record");
        assert_eq!(record.ofd_lock, promise);
        assert_eq!(verdict, want, "ofd_lock {promise}");
        if promise {
            assert_eq!(lock.try_lock().expect("try"), Some(Acquired::OwnerDied));
            lock.unlock().expect("unlock");
            assert_entries(dir.path(), &[], "after unlock");
        } else {
            assert_eq!(lock.try_lock().expect("try"), None);
            assert_eq!(
                fs::read_to_string(dir.path().join("lock0")).expect("kept"),
                text
            );
        }
    }
}

/// A holder that runs another program keeps the lock: the program's `exec` closes only the
/// child's copies of the holder's descriptors.
#[test]
fn running_a_program_keeps_the_lock() {
    let dir = lock_dir();
    let lock = DirLock::new(dir.path()).expect("new");
    assert!(lock.try_lock().expect("try").is_some());
    let status = std::process::Command::new("true")
        .status()
        .expect("run true");
    assert!(status.success());
    let other = DirLock::new(dir.path()).expect("other");
    let (_, verdict) = other.status().expect("status").expect("held");
    assert_eq!(verdict, Verdict::Held(HeldBecause::Alive));
    assert!(other.try_lock().expect("try").is_none());
    lock.unlock().expect("unlock");
    assert_entries(dir.path(), &[], "released");
}

/// A record of another host, or of another pid namespace, is held whatever its pid says,
/// until an operator breaks the lock.
#[test]
fn foreign_host_and_namespace_are_held_until_broken() {
    let me = me();
    let work = work_dir();
    let dir = lock_dir();
    let dead = dead_pid(dir.path(), work.path());
    let cases = [
        (
            record_with("some-other-host", &me.boot_id, me.pid_ns, dead, 1),
            HeldBecause::ForeignHost,
        ),
        (
            record_with(&me.host, &me.boot_id, me.pid_ns + 1, dead, 1),
            HeldBecause::ForeignPidNamespace,
        ),
    ];
    for (text, why) in cases {
        write_level(dir.path(), 0, &text);
        let lock = DirLock::new(dir.path()).expect("new");
        let (_, verdict) = lock.status().expect("status").expect("record");
        assert_eq!(verdict, Verdict::Held(why));
        assert!(lock.try_lock().expect("try").is_none());
        assert!(matches!(
            lock.try_lock_for(Duration::from_millis(60)),
            Err(Error::Timeout)
        ));
        assert_eq!(
            fs::read_to_string(dir.path().join("lock0")).expect("kept"),
            text
        );
        assert!(lock.break_lock().expect("break"));
        assert_entries(dir.path(), &[], "after break_lock");
        assert_eq!(lock.try_lock().expect("try"), Some(Acquired::Clean));
        lock.unlock().expect("unlock");
    }
}

/// A holder that was SIGKILLed and not yet reaped (a zombie) is stale, and so is one reaped.
#[test]
fn killed_holder_is_reclaimed_with_owner_died() {
    let work = work_dir();
    let dir = lock_dir();
    for reap in [false, true] {
        let mut kid = spawn("hold", dir.path(), work.path(), 0, None);
        assert_eq!(kid.next_line(PATIENCE).expect("holder"), "clean");
        // SIGKILL without reaping: the child stays a zombie until waited for.
        kid.signal(rustix::process::Signal::KILL)
            .expect("kill the holder");
        if reap {
            kid.wait(PATIENCE).expect("reap the holder");
        }
        let lock = DirLock::new(dir.path()).expect("new");
        let acquired = lock.try_lock_for(PATIENCE).expect("take over");
        assert_eq!(acquired, Acquired::OwnerDied, "reaped: {reap}");
        lock.unlock().expect("unlock");
        assert_entries(dir.path(), &[], "after unlock");
        kid.wait(PATIENCE).expect("reap the holder");
    }
}

/// `kill(pid, 0)` failing with EPERM means alive: an unprivileged process sees a root-owned
/// holder as held. Unprivileged, an unwritable directory is a typed error at `new`.
#[test]
fn eperm_is_alive_and_unwritable_directory_is_refused() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("not root: cannot start a process as another user; the check runs as root in CI");
        return;
    }
    let me = me();
    let work = work_dir();
    let dir = lock_dir();
    let holder = live(&me, dir.path(), work.path());
    write_level(dir.path(), 0, &holder.record);
    let mut judge = spawn("judge", dir.path(), work.path(), 0, Some(65534));
    assert_eq!(
        judge.next_line(PATIENCE).expect("judge"),
        "verdict Held(Alive)"
    );
    assert_eq!(judge.next_line(PATIENCE).expect("judge"), "try false");
    // Its exit status is not part of the check; a judge still running is killed on drop.
    let _ = judge.wait(PATIENCE);
    assert_eq!(
        fs::read_to_string(dir.path().join("lock0")).expect("kept"),
        holder.record
    );
    // Unwritable for nobody: a root-owned directory with mode 0755.
    let locked = tempfile::Builder::new()
        .prefix("dirlock-ro-")
        .tempdir()
        .expect("dir");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(locked.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut judge = spawn("judge", locked.path(), work.path(), 0, Some(65534));
    assert_eq!(
        judge.next_line(PATIENCE).expect("judge"),
        "new-error io PermissionDenied"
    );
    let _ = judge.wait(PATIENCE);
    assert_entries(locked.path(), &[], "unwritable directory");
}

/// A holder whose main thread has exited while another of its threads holds the lock is alive:
/// `/proc/<pid>/stat` shows the leader as a zombie, but a process is dead only when none of its
/// threads lives. Once the whole process is killed, the lock is taken over with `OwnerDied`.
#[test]
fn holder_whose_main_thread_exited_is_alive() {
    let me = me();
    let work = work_dir();
    let dir = lock_dir();
    let mut kid = spawn("leader-exits", dir.path(), work.path(), 0, None);
    assert_eq!(kid.next_line(PATIENCE).expect("holder"), "clean");
    let pid = kid.pid();
    assert!(
        eventually(|| leader_state(pid).as_deref() == Some("Z")),
        "the holder's main thread did not exit: {:?}",
        leader_state(pid)
    );
    let lock = DirLock::new(dir.path()).expect("new");
    let (holder, verdict) = lock.status().expect("status").expect("held");
    assert_eq!(holder.pid, pid);
    assert_eq!(verdict, Verdict::Held(HeldBecause::Alive));
    assert_eq!(lock.try_lock().expect("try"), None, "a double hold");
    assert!(matches!(
        lock.try_lock_for(Duration::from_millis(100)),
        Err(Error::Timeout)
    ));
    // A version-1 record, which has only the pid and the start time to go by, says the same.
    let old = lock_dir();
    write_level(old.path(), 0, &record(&me, pid, start_time(pid)));
    let old_lock = DirLock::new(old.path()).expect("new");
    let (_, verdict) = old_lock.status().expect("status").expect("held");
    assert_eq!(verdict, Verdict::Held(HeldBecause::Alive));
    assert_eq!(old_lock.try_lock().expect("try"), None, "a double hold");
    // The whole process dies (not reaped yet: every task a zombie, then gone).
    kid.signal(rustix::process::Signal::KILL)
        .expect("kill the holder");
    assert_eq!(
        lock.try_lock_for(PATIENCE).expect("take over"),
        Acquired::OwnerDied
    );
    assert_eq!(
        old_lock.try_lock_for(PATIENCE).expect("take over"),
        Acquired::OwnerDied
    );
    kid.wait(PATIENCE).expect("reap the holder");
    lock.unlock().expect("unlock");
    old_lock.unlock().expect("unlock");
    assert_entries(dir.path(), &[], "after unlock");
    assert_entries(old.path(), &[], "after unlock");
}

/// A holder that calls `exec` gives the lock up, as lock-shm and lock-file holders do (their
/// descriptors are close-on-exec): another process takes it over with `OwnerDied` while the new
/// program, with the same pid and start time, still runs.
#[test]
fn exec_releases_the_lock() {
    let work = work_dir();
    let dir = lock_dir();
    let mut kid = spawn("exec-sleep", dir.path(), work.path(), 0, None);
    assert_eq!(kid.next_line(PATIENCE).expect("holder"), "clean");
    let pid = kid.pid();
    assert!(
        eventually(|| comm(pid).as_deref() == Some("sleep")),
        "the holder did not exec sleep: {:?}",
        comm(pid)
    );
    let lock = DirLock::new(dir.path()).expect("new");
    // The descriptors go a little after the new name is set: wait for the verdict to change.
    let verdict = || lock.status().expect("status").expect("held").1;
    assert!(
        eventually(|| verdict() != Verdict::Held(HeldBecause::Alive)),
        "the exec'd holder still counts as alive"
    );
    assert_eq!(verdict(), Verdict::Stale(StaleBecause::DescriptorClosed));
    assert_eq!(
        lock.try_lock_for(PATIENCE).expect("take over"),
        Acquired::OwnerDied
    );
    assert_eq!(
        comm(pid).as_deref(),
        Some("sleep"),
        "the exec'd program must still run"
    );
    lock.unlock().expect("unlock");
    kid.sigkill().expect("kill sleep");
    assert_entries(dir.path(), &[], "after unlock");
}

/// A handle whose `try_lock` found a live holder finds it still there with a few system calls
/// on its next tries (no record written), and still notices, as a full attempt does, the
/// holder's death (taken over), its `exec` (taken over while the new program runs), and a
/// release followed by another holder (busy, that holder named), then the lock free.
#[test]
fn repeated_try_locks_notice_a_holders_death_exec_and_successor() {
    let work = work_dir();
    let tries = |lock: &DirLock| {
        for _ in 0..3 {
            assert_eq!(lock.try_lock().expect("try"), None, "a double hold");
        }
        assert_entries(
            lock.path(),
            &["lock0"],
            "while held: nothing written by the tries",
        );
    };
    let taken_over = |lock: &DirLock| {
        let mut taken = None;
        assert!(
            eventually(|| {
                taken = lock.try_lock().expect("try");
                taken.is_some()
            }),
            "the holder's end was not noticed"
        );
        assert_eq!(taken, Some(Acquired::OwnerDied));
        lock.unlock().expect("unlock");
        assert_entries(lock.path(), &[], "after unlock");
    };

    // Killed (not reaped).
    let dir = lock_dir();
    let lock = DirLock::new(dir.path()).expect("new");
    let mut kid = spawn("hold", dir.path(), work.path(), 0, None);
    assert_eq!(kid.next_line(PATIENCE).expect("holder"), "clean");
    tries(&lock);
    kid.signal(rustix::process::Signal::KILL)
        .expect("kill the holder");
    taken_over(&lock);
    kid.wait(PATIENCE).expect("reap the holder");

    // exec: same pid and start time, the record's descriptor closed.
    let dir = lock_dir();
    let lock = DirLock::new(dir.path()).expect("new");
    let mut kid = spawn("exec-on-line", dir.path(), work.path(), 0, None);
    assert_eq!(kid.next_line(PATIENCE).expect("holder"), "clean");
    tries(&lock);
    kid.send("exec").expect("tell the holder to exec");
    taken_over(&lock);
    assert_eq!(
        comm(kid.pid()).as_deref(),
        Some("sleep"),
        "the exec'd program must still run"
    );
    kid.sigkill().expect("kill sleep");

    // Released, then taken by another process: busy, naming the new holder; then free.
    let dir = lock_dir();
    let lock = DirLock::new(dir.path()).expect("new");
    let mut first = spawn("hold", dir.path(), work.path(), 0, None);
    assert_eq!(first.next_line(PATIENCE).expect("holder"), "clean");
    tries(&lock);
    first.close_stdin();
    first
        .finish(PATIENCE)
        .expect("the first holder unlocks and exits");
    let mut second = spawn("hold", dir.path(), work.path(), 0, None);
    assert_eq!(second.next_line(PATIENCE).expect("holder"), "clean");
    tries(&lock);
    let holder = lock.holder_record().expect("read").expect("held");
    assert_eq!(holder.pid, second.pid());
    second.close_stdin();
    second
        .finish(PATIENCE)
        .expect("the second holder unlocks and exits");
    assert_eq!(lock.try_lock().expect("try"), Some(Acquired::Clean));
    lock.unlock().expect("unlock");
    assert_entries(dir.path(), &[], "after unlock");
}

/// Handles whose `try_lock` found a live holder keep that holder's record file and a pidfd open
/// (see the test above), but only up to a budget per process (64 handles), so a program that
/// keeps many handles on busy locks does not run out of descriptors; the budget is given back
/// with the handles.
#[test]
fn busy_handles_keep_a_bounded_number_of_descriptors() {
    const LOCKS: u32 = 200;
    const KEPT: usize = 64;
    let dir = work_dir();
    for i in 0..LOCKS {
        fs::create_dir(dir.path().join(i.to_string())).expect("lock dir");
    }
    let mut holder = spawn("hold-many", dir.path(), dir.path(), LOCKS, None);
    assert_eq!(holder.next_line(PATIENCE).expect("holder"), "held");
    let mut tries = spawn("try-many", dir.path(), dir.path(), LOCKS, None);
    // One descriptor per handle (its directory), two more for each handle that keeps a holder.
    let want = LOCKS as usize + 2 * KEPT;
    for round in ["first", "second"] {
        let line = tries.next_line(PATIENCE).expect("fds");
        assert_eq!(
            line,
            format!("fds {want}"),
            "{round} round: descriptors open for {LOCKS} handles on busy locks"
        );
    }
    tries.finish(PATIENCE).expect("the trying child exits");
    holder.close_stdin();
    holder.finish(PATIENCE).expect("the holder exits");
}

/// A child forked from a holder (by glibc's `fork` or a raw `clone`) does not hold the lock,
/// cannot unlock or take it while the parent lives, and records its own pid: the pid dirlock
/// caches is never the parent's in a child.
#[test]
fn a_forked_child_does_not_hold_or_take_its_parents_lock() {
    let dir = lock_dir();
    let work = work_dir();
    let mut kid = spawn("fork", dir.path(), work.path(), 0, None);
    assert_eq!(kid.next_line(PATIENCE).expect("fork"), "fork exit 0");
    assert_eq!(kid.next_line(PATIENCE).expect("clone"), "clone exit 0");
    assert_eq!(kid.next_line(PATIENCE).expect("parent"), "unlocked");
    assert!(kid.wait(PATIENCE).expect("exits").success());
    assert_entries(dir.path(), &[], "after the parent's unlock");
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

/// A path that is missing, a file, or a symlink to a directory is refused with a typed error.
#[test]
fn bad_paths_are_typed_errors() {
    let root = work_dir();
    let file = root.path().join("file");
    fs::write(&file, "x").expect("file");
    let real = root.path().join("real");
    fs::create_dir(&real).expect("dir");
    let link = root.path().join("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    assert!(matches!(
        DirLock::new(root.path().join("missing")),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        DirLock::new(&file),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        DirLock::new(&link),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(fs::read_to_string(&file).expect("file kept"), "x");
    assert_entries(&real, &[], "symlink target");
}

/// Lock files that are directories, symlinks, FIFOs, huge, truncated, empty, garbage or of an
/// unknown version are typed errors, and none of them is removed by locking or unlocking.
#[test]
fn bad_lock_files_are_typed_errors_and_kept() {
    let me = me();
    let own = std::process::id();
    let valid = record(&me, own, start_time(own) + 1);
    let outside = work_dir();
    let target = outside.path().join("target");
    fs::write(&target, &valid).expect("target");

    type Maker = Box<dyn Fn(&Path)>;
    let valid2 = valid.clone();
    let makers: Vec<(&str, Maker, bool)> = vec![
        (
            "directory",
            Box::new(|p: &Path| fs::create_dir(p).expect("mkdir")),
            false,
        ),
        (
            "symlink",
            Box::new(move |p: &Path| std::os::unix::fs::symlink(&target, p).expect("symlink")),
            false,
        ),
        (
            "fifo",
            Box::new(|p: &Path| {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    p,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o644),
                    0,
                )
                .expect("mkfifo")
            }),
            false,
        ),
        (
            "huge",
            Box::new(|p: &Path| fs::write(p, vec![b'x'; 1 << 20]).expect("huge")),
            true,
        ),
        (
            "just-too-big",
            Box::new(|p: &Path| fs::write(p, vec![b'x'; dirlock::MAX_RECORD_LEN + 1]).expect("w")),
            true,
        ),
        (
            "truncated",
            Box::new(move |p: &Path| fs::write(p, &valid2[..valid2.len() / 2]).expect("w")),
            true,
        ),
        (
            "empty",
            Box::new(|p: &Path| fs::write(p, "").expect("w")),
            true,
        ),
        (
            "garbage",
            Box::new(|p: &Path| fs::write(p, "\0\0\0 lock me").expect("w")),
            true,
        ),
    ];
    for (what, make, regular) in &makers {
        let dir = lock_dir();
        let path = dir.path().join("lock0");
        make(&path);
        let lock = DirLock::new(dir.path()).expect("new");
        assert!(is_corrupt(lock.try_lock()), "{what}: try_lock");
        assert!(
            is_corrupt(lock.try_lock_for(Duration::from_millis(50))),
            "{what}: lock"
        );
        assert!(is_corrupt(lock.status()), "{what}: status");
        assert!(is_corrupt(Inspect::holder(&lock)), "{what}: holder");
        assert!(
            matches!(lock.unlock(), Err(Error::NotHeld(_))),
            "{what}: unlock"
        );
        assert_entries(dir.path(), &["lock0"], what);
        assert!(fs::symlink_metadata(&path).is_ok(), "{what}: removed");
        if *regular {
            assert!(lock.break_lock().expect("break"), "{what}: break_lock");
            assert_entries(dir.path(), &[], &format!("{what} broken"));
        } else {
            assert!(is_corrupt(lock.break_lock()), "{what}: break_lock");
            assert_entries(dir.path(), &["lock0"], &format!("{what} not broken"));
        }
    }
    assert_eq!(
        fs::read_to_string(outside.path().join("target")).expect("symlink target kept"),
        valid
    );
    // An unknown version (this code reads 1 and 2) is Incompatible, not Corrupt.
    let dir = lock_dir();
    write_level(
        dir.path(),
        0,
        &valid.replacen("dirlock-record 1", "dirlock-record 3", 1),
    );
    let lock = DirLock::new(dir.path()).expect("new");
    assert!(matches!(lock.try_lock(), Err(Error::Incompatible { .. })));
    assert_entries(dir.path(), &["lock0"], "future version");
}

/// A wait ends with an error, not a hang, when the lock file turns to garbage or the
/// directory disappears while a `lock` is blocked.
#[test]
fn blocked_lock_ends_with_an_error_on_damage() {
    let dir = lock_dir();
    let holder = DirLock::new(dir.path()).expect("holder");
    let waiter = Arc::new(DirLock::new(dir.path()).expect("waiter"));
    assert!(holder.try_lock().expect("try").is_some());
    let blocked = {
        let waiter = Arc::clone(&waiter);
        std::thread::spawn(move || waiter.try_lock_for(PATIENCE))
    };
    std::thread::sleep(Duration::from_millis(30));
    // An operator's mistake: the record is replaced by garbage.
    fs::write(dir.path().join("lock0.new"), "garbage").expect("garbage");
    fs::rename(dir.path().join("lock0.new"), dir.path().join("lock0")).expect("rename");
    assert!(is_corrupt(blocked.join().expect("thread")));
    assert!(matches!(holder.unlock(), Err(Error::Lost)));
    assert_entries(dir.path(), &["lock0"], "garbage kept");
    // The directory itself goes away under a waiter.
    let gone = tempfile::Builder::new()
        .prefix("dirlock-gone-")
        .tempdir()
        .expect("dir");
    let holder = DirLock::new(gone.path()).expect("holder");
    let waiter = Arc::new(DirLock::new(gone.path()).expect("waiter"));
    assert!(holder.try_lock().expect("try").is_some());
    let blocked = {
        let waiter = Arc::clone(&waiter);
        std::thread::spawn(move || waiter.try_lock_for(PATIENCE))
    };
    std::thread::sleep(Duration::from_millis(30));
    // Deleting `lock0` wakes the waiter, which may link its own record in before the directory
    // goes (`ENOTEMPTY`), or remove a temporary entry under the deletion (`ENOENT`): delete
    // again. The waiter may then have held the lock for a moment, which is no defect; only a
    // removal that met no waiter on its way must end the wait with an error.
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut raced = false;
    while gone.path().exists() {
        match fs::remove_dir_all(gone.path()) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::DirectoryNotEmpty | std::io::ErrorKind::NotFound
                ) && std::time::Instant::now() < deadline =>
            {
                raced = true;
            }
            Err(e) => panic!("remove dir: {e:?}"),
        }
    }
    let result = blocked.join().expect("thread");
    assert!(
        matches!(result, Err(Error::Io { .. })) || (raced && result.is_ok()),
        "{result:?} (raced: {raced})"
    );
}

// ---------------------------------------------------------------------------------------------
// Ownership and the API
// ---------------------------------------------------------------------------------------------

/// Ownership is per handle; unlock removes only this handle's lock; re-locking is not re-entrant.
#[test]
fn ownership_is_per_handle() {
    let dir = lock_dir();
    let a = Arc::new(DirLock::new(dir.path()).expect("a"));
    let b = DirLock::new(dir.path()).expect("b");
    assert!(matches!(a.unlock(), Err(Error::NotHeld(_))));
    assert_eq!(a.try_lock().expect("a"), Some(Acquired::Clean));
    assert!(a.is_held());
    assert!(
        Locker::try_lock(&*a).expect("again").is_none(),
        "re-lock by the owner must fail"
    );
    assert!(matches!(
        a.try_lock_for(Duration::from_millis(50)),
        Err(Error::Timeout)
    ));
    assert!(b.try_lock().expect("b").is_none());
    assert!(matches!(b.unlock(), Err(Error::NotHeld(_))));
    assert_entries(dir.path(), &["lock0"], "held by a");
    let holder = Inspect::holder(&*a).expect("holder").expect("held");
    assert_eq!(holder.pid, Some(std::process::id()));
    // A blocked lock() on the same handle proceeds when another thread unlocks through it.
    let waiter = {
        let a = Arc::clone(&a);
        std::thread::spawn(move || a.try_lock_for(PATIENCE))
    };
    std::thread::sleep(Duration::from_millis(30));
    a.unlock().expect("unlock");
    assert_eq!(
        waiter.join().expect("thread").expect("relock"),
        Acquired::Clean
    );
    a.unlock().expect("unlock again");
    assert!(matches!(a.unlock(), Err(Error::NotHeld(_))));
    assert_entries(dir.path(), &[], "released");
    assert!(matches!(Locker::free(&*a), Err(Error::Unsupported(_))));
}

/// After an operator breaks the lock and someone else takes it, the old holder's unlock is
/// `Lost` and removes nothing.
#[test]
fn unlock_after_break_is_lost_and_removes_nothing() {
    let dir = lock_dir();
    let a = DirLock::new(dir.path()).expect("a");
    let operator = DirLock::new(dir.path()).expect("operator");
    let b = DirLock::new(dir.path()).expect("b");
    assert!(a.try_lock().expect("a").is_some());
    assert!(operator.break_lock().expect("break"));
    assert!(b.try_lock().expect("b").is_some());
    assert!(matches!(a.unlock(), Err(Error::Lost)));
    assert_entries(dir.path(), &["lock0"], "b's lock kept");
    assert!(a.try_lock().expect("a again").is_none());
    b.unlock().expect("b unlock");
    assert_entries(dir.path(), &[], "released");
}

/// Guards and dropped handles release the lock.
#[test]
fn guard_and_drop_release() {
    let dir = lock_dir();
    let lock = DirLock::new(dir.path()).expect("new");
    {
        let guard = lock.guard().expect("guard");
        assert_eq!(guard.acquired(), Acquired::Clean);
        assert!(
            DirLock::new(dir.path())
                .expect("other")
                .try_lock()
                .expect("try")
                .is_none()
        );
    }
    assert_entries(dir.path(), &[], "guard dropped");
    let other = DirLock::new(dir.path()).expect("other");
    assert!(other.try_lock().expect("try").is_some());
    drop(other);
    assert_entries(dir.path(), &[], "handle dropped");
    let guard = lock.guard().expect("guard");
    guard.unlock().expect("explicit unlock");
    assert_entries(dir.path(), &[], "guard unlocked");
}

// ---------------------------------------------------------------------------------------------
// Many processes
// ---------------------------------------------------------------------------------------------

/// Processes contending on one directory never hold it together: a counter updated
/// non-atomically inside the critical section comes out exact.
#[test]
fn contending_processes_exclude_each_other() {
    const KIDS: usize = 4;
    const EACH: u32 = 60;
    let dir = lock_dir();
    let work = work_dir();
    let mut kids: Vec<ChildProcess> = (0..KIDS)
        .map(|_| spawn("hammer", dir.path(), work.path(), EACH, None))
        .collect();
    for kid in &mut kids {
        assert_eq!(kid.next_line(PATIENCE).expect("hammer"), "done");
        assert!(kid.wait(PATIENCE).expect("hammer exits").success());
    }
    assert!(!work.path().join("violation").exists());
    let counter = fs::read_to_string(work.path().join("counter")).expect("counter");
    assert_eq!(counter, (KIDS as u32 * EACH).to_string());
    assert_entries(dir.path(), &[], "after contention");
}

/// Processes hammering one directory while random ones are SIGKILLed never hold it together,
/// and the lock is never lost for good: afterwards it is taken promptly and the directory is
/// left clean.
#[test]
fn kill_storm_never_gives_two_holders() {
    const KIDS: usize = 5;
    let dir = lock_dir();
    let work = work_dir();
    let mut kids: Vec<ChildProcess> = (0..KIDS)
        .map(|_| spawn("hammer", dir.path(), work.path(), 0, None))
        .collect();
    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(rand::random_range(5..60)));
        let victim = rand::random_range(0..KIDS);
        kids[victim].sigkill().expect("kill a hammer");
        kills += 1;
        kids[victim] = spawn("hammer", dir.path(), work.path(), 0, None);
        assert!(
            !work.path().join("violation").exists(),
            "{}",
            fs::read_to_string(work.path().join("violation")).unwrap_or_default()
        );
    }
    for kid in &mut kids {
        kid.sigkill().expect("kill a hammer");
    }
    assert!(kills > 10);
    assert!(
        !work.path().join("violation").exists(),
        "{}",
        fs::read_to_string(work.path().join("violation")).unwrap_or_default()
    );
    // The counter itself may be half-written by a killed holder; the progress log is appended.
    let progress = fs::read(work.path().join("progress")).unwrap_or_default();
    assert!(!progress.is_empty(), "no process ever got the lock");
    let takeovers = progress.iter().filter(|&&b| b == b'D').count();
    eprintln!(
        "kill storm: {kills} kills, {} critical sections, {takeovers} taken over from a dead holder",
        progress.len()
    );
    let lock = DirLock::new(dir.path()).expect("new");
    let _ = lock.try_lock_for(PATIENCE).expect("lock after the storm");
    lock.unlock().expect("unlock");
    assert_entries(dir.path(), &[], "after the storm");
}

/// A dead holder is reclaimed by exactly one of many processes trying at once; the others are
/// told the lock is busy, and nothing is left behind but the winner's lock.
#[test]
fn exactly_one_of_many_reclaimers_wins() {
    const RECLAIMERS: usize = 6;
    let dir = lock_dir();
    for round in 0..4 {
        let work = work_dir();
        let mut holder = spawn("hold", dir.path(), work.path(), 0, None);
        assert_eq!(holder.next_line(PATIENCE).expect("holder"), "clean");
        holder.sigkill().expect("kill the holder");
        let mut kids: Vec<ChildProcess> = (0..RECLAIMERS)
            .map(|_| spawn("try", dir.path(), work.path(), 0, None))
            .collect();
        for kid in &mut kids {
            assert_eq!(kid.next_line(PATIENCE).expect("reclaimer"), "ready");
        }
        fs::write(work.path().join("go"), "").expect("go");
        let results: Vec<String> = kids
            .iter_mut()
            .map(|kid| kid.next_line(PATIENCE).expect("reclaimer"))
            .collect();
        let winners = results.iter().filter(|r| *r == "owner-died").count();
        let busy = results.iter().filter(|r| *r == "busy").count();
        assert_eq!(
            (winners, busy),
            (1, RECLAIMERS - 1),
            "round {round}: {results:?}"
        );
        assert_entries(dir.path(), &["lock0"], &format!("round {round}"));
        for kid in &mut kids {
            kid.finish(PATIENCE).expect("reclaimer exits cleanly");
        }
        assert_entries(dir.path(), &[], &format!("round {round} released"));
    }
}

/// A process blocked in `lock` on a live holder sleeps: over two seconds it wakes up only a
/// few times (the wait has no short timer). When the holder is SIGKILLed, the waiter takes the
/// lock over with `OwnerDied`.
#[test]
fn an_idle_waiter_sleeps_until_its_holder_is_killed() {
    let dir = lock_dir();
    let work = work_dir();
    let mut holder = spawn("hold", dir.path(), work.path(), 0, None);
    assert_eq!(holder.next_line(PATIENCE).expect("holder"), "clean");
    let mut waiter = spawn("hold", dir.path(), work.path(), 0, None);
    let pid = waiter.pid();
    settle_on_watcher(pid);
    std::thread::sleep(Duration::from_millis(100));
    let before = switches(pid);
    std::thread::sleep(Duration::from_secs(2));
    let woke = switches(pid) - before;
    holder
        .signal(rustix::process::Signal::KILL)
        .expect("kill the holder");
    assert_eq!(waiter.next_line(PATIENCE).expect("waiter"), "owner-died");
    holder.wait(PATIENCE).expect("reap the holder");
    waiter.close_stdin();
    waiter.finish(PATIENCE).expect("waiter unlocks and exits");
    assert_entries(dir.path(), &[], "after the waiter's unlock");
    assert!(woke <= 10, "an idle waiter woke {woke} times in 2 s");
}

/// A process blocked in `lock` when its holder calls `exec` takes the lock over with
/// `OwnerDied`, while the new program runs with the holder's pid and start time.
#[test]
fn a_blocked_waiter_takes_over_from_a_holder_that_calls_exec() {
    let dir = lock_dir();
    let work = work_dir();
    let mut holder = spawn("exec-on-line", dir.path(), work.path(), 0, None);
    assert_eq!(holder.next_line(PATIENCE).expect("holder"), "clean");
    let mut waiter = spawn("hold", dir.path(), work.path(), 0, None);
    let pid = waiter.pid();
    // Not needed for the outcome; makes it likelier that the waiter is asleep, not starting.
    settle_on_watcher(pid);
    holder.send("exec").expect("tell the holder to exec");
    assert_eq!(waiter.next_line(PATIENCE).expect("waiter"), "owner-died");
    assert_eq!(
        comm(holder.pid()).as_deref(),
        Some("sleep"),
        "the exec'd program must still run"
    );
    waiter.close_stdin();
    waiter.finish(PATIENCE).expect("waiter unlocks and exits");
    holder.sigkill().expect("kill sleep");
    assert_entries(dir.path(), &[], "after the waiter's unlock");
}

/// A wait that times out on a live holder leaves nothing behind once that holder releases:
/// its watcher thread ends, and repeated waits keep no more descriptors than the first one
/// (the pooled inotify instance).
#[test]
fn a_timed_out_wait_leaves_no_thread_or_descriptor() {
    let dir = lock_dir();
    let work = work_dir();
    let lock = DirLock::new(dir.path()).expect("new");
    let mut kid = spawn("linger", dir.path(), work.path(), 2, None);
    let mut afters = Vec::new();
    for round in 0..2 {
        assert!(lock.try_lock().expect("try").is_some(), "round {round}");
        kid.send("held").expect("tell the child");
        assert_eq!(kid.next_line(PATIENCE).expect("linger"), "timeout");
        lock.unlock().expect("unlock");
        kid.send("released").expect("tell the child");
        afters.push(kid.next_line(PATIENCE).expect("linger"));
    }
    kid.finish(PATIENCE).expect("the child exits");
    // No thread left; at most the pooled inotify instance, and the same after both rounds.
    assert!(
        afters[0] == "after 0 0" || afters[0] == "after 0 1",
        "after the first wait: {afters:?}"
    );
    assert_eq!(
        afters[0], afters[1],
        "threads and descriptors after each wait"
    );
    assert_entries(dir.path(), &[], "after the rounds");
}

/// A process blocked in `lock` takes the lock soon after another process releases it.
#[test]
fn blocked_waiter_proceeds_after_release() {
    let dir = lock_dir();
    let work = work_dir();
    let lock = DirLock::new(dir.path()).expect("new");
    assert!(lock.try_lock().expect("try").is_some());
    let mut waiter = spawn("hold", dir.path(), work.path(), 0, None);
    std::thread::sleep(Duration::from_millis(50));
    lock.unlock().expect("unlock");
    assert_eq!(waiter.next_line(PATIENCE).expect("waiter"), "clean");
    waiter.finish(PATIENCE).expect("waiter exits cleanly");
    assert_entries(dir.path(), &[], "after release");
}
