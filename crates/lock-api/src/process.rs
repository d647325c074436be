//! Process-wide state that a forked child never finds locked: the backends' registries, and values
//! read once such as the host name.
#![allow(unsafe_code)] // reason: reading back a pointer from an `AtomicPtr`; see the invariant.
//!
//! A backend that keeps a process-wide table behind a `static Mutex` (watcher threads, a timer
//! thread, pooled descriptors) has a hazard in every program that calls `fork(2)` without
//! `exec`: the child gets a copy of the mutex as it was at the fork, and if another thread of the
//! parent held it at that moment, the copy stays locked for ever, since that thread does not
//! exist in the child. The child's first lock of it then hangs.
//!
//! [`PerProcess`] never hands a child its parent's mutex. It keeps the state behind a pointer
//! tagged with the process it belongs to; a caller from another process (the caller passes its
//! pid) gets a fresh, default state, and the parent's is left alone for good. A forked child
//! thus never locks a mutex it inherited, whatever state it was in.
//!
//! [`OnceValue`] is the same idea for a value made once and only read after (the host name): it
//! holds no lock while the value is made, so a child forked meanwhile makes its own rather than
//! wait for ever on a `LazyLock` that its parent's thread was initialising.
//!
//! # Invariants
//!
//! 1. Every pointer that `current` (of a [`PerProcess`] or a [`OnceValue`]) has ever held is null
//!    or came from `Box::into_raw` and was published by a compare-exchange, and is never freed (a
//!    child cannot know whether its parent's copy is locked, so it must not drop it): reading one
//!    back as `&'static` is sound.
//!
//! What this costs: one acquire load and a compare per use in the process that made the state,
//! and in each forked child that uses it, one leaked copy of its parent's state (what the child
//! inherited anyway).
//!
//! Not covered: a descendant whose pid equals that of the ancestor whose state it inherited
//! unchanged (the ancestor died and its pid was reused, with no use of the state in between).

use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// One process's state and the pid it belongs to.
#[derive(Debug)]
struct Tagged<T> {
    pid: u32,
    state: Mutex<T>,
}

/// Process-wide state behind a mutex that a forked child never inherits locked: the child gets a
/// fresh `T::default()` instead.
///
/// A plain `static Mutex` that one thread holds while another calls `fork(2)` stays locked in the
/// child for good (the holding thread does not exist there), so the child's first lock of it
/// hangs. `PerProcess` tags its state with the pid the caller passes and hands any other pid a
/// fresh state, leaking (never locking) the parent's. Each forked child that uses it leaks its
/// parent's copy once; the process that made the state pays one atomic load and a compare.
///
/// ```
/// use lock_api::PerProcess;
///
/// static WATCHERS: PerProcess<Vec<u32>> = PerProcess::new();
///
/// let pid = std::process::id();
/// WATCHERS.lock(pid).push(7);
/// assert_eq!(*WATCHERS.lock(pid), [7]);
/// // Another process (a forked child) starts from the default.
/// assert!(WATCHERS.lock(pid + 1).is_empty());
/// ```
#[derive(Debug)]
pub struct PerProcess<T: 'static> {
    current: AtomicPtr<Tagged<T>>,
}

impl<T: Default + Send + 'static> PerProcess<T> {
    /// No state yet: the first [`lock`](Self::lock) makes it.
    #[must_use]
    pub const fn new() -> PerProcess<T> {
        PerProcess {
            current: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Locks the state of process `pid` (the caller's own, which it passes because it usually
    /// knows it without a system call), making a fresh one if the state held is another
    /// process's. A panic while it was locked does not poison it: callers keep it consistent at
    /// every step.
    pub fn lock(&self, pid: u32) -> MutexGuard<'static, T> {
        self.tagged(pid)
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn tagged(&self, pid: u32) -> &'static Tagged<T> {
        let mut seen = self.current.load(Ordering::Acquire);
        loop {
            // SAFETY: by invariant 1, `seen` is null or a leaked, never freed box.
            if let Some(tagged) = unsafe { seen.as_ref() }
                && tagged.pid == pid
            {
                return tagged;
            }
            let fresh = Box::into_raw(Box::new(Tagged {
                pid,
                state: Mutex::new(T::default()),
            }));
            match self
                .current
                .compare_exchange(seen, fresh, Ordering::AcqRel, Ordering::Acquire)
            {
                // The state replaced (another process's) is leaked on purpose (invariant 1).
                // SAFETY: invariant 1: `fresh` is a leaked box, now published and never freed.
                Ok(_) => return unsafe { &*fresh },
                Err(now) => {
                    // Another thread of this process made one first.
                    // SAFETY: `fresh` came from `Box::into_raw` above and was never published, so no other
                    // reference to it exists (invariant 1 is about published pointers).
                    drop(unsafe { Box::from_raw(fresh) });
                    seen = now;
                }
            }
        }
    }
}

impl<T: Default + Send + 'static> Default for PerProcess<T> {
    fn default() -> Self {
        PerProcess::new()
    }
}

/// A value made once and then read for the rest of the program, that never blocks: not even
/// in a child forked while another thread was making it.
///
/// A `LazyLock` or `OnceLock` that one thread is initialising when another thread calls
/// `fork(2)` stays "being initialised" in the child for good, and the child's first read of it
/// waits for ever. `OnceValue` holds no lock while it makes the value: threads that find it
/// missing each make one, the first to publish wins and the others drop theirs. So it suits
/// values that are cheap to make twice and the same whoever makes them, such as the host name.
/// A forked child reads the value its parent had published, or makes its own.
///
/// ```
/// use lock_api::OnceValue;
///
/// static HOST: OnceValue<String> = OnceValue::new();
///
/// let host = HOST.get_or_make(|| "example".to_owned());
/// assert_eq!(host, "example");
/// // Made once: later calls return the first value.
/// assert_eq!(HOST.get_or_make(|| "other".to_owned()), "example");
/// ```
#[derive(Debug)]
pub struct OnceValue<T: 'static> {
    current: AtomicPtr<T>,
}

impl<T: Send + Sync + 'static> OnceValue<T> {
    /// No value yet: the first [`get_or_make`](Self::get_or_make) makes it.
    #[must_use]
    pub const fn new() -> OnceValue<T> {
        OnceValue {
            current: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// The value, made with `make` if there is none yet. Threads that get here together may
    /// each call their `make`; one value is kept (invariant 1: it is leaked, never freed) and
    /// the others are dropped.
    pub fn get_or_make(&self, make: impl FnOnce() -> T) -> &'static T {
        let seen = self.current.load(Ordering::Acquire);
        // SAFETY: by invariant 1, `seen` is null or a leaked, never freed box.
        if let Some(value) = unsafe { seen.as_ref() } {
            return value;
        }
        let fresh = Box::into_raw(Box::new(make()));
        match self.current.compare_exchange(
            ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            // SAFETY: invariant 1: `fresh` is a leaked box, now published and never freed.
            Ok(_) => unsafe { &*fresh },
            Err(first) => {
                // SAFETY: `fresh` came from `Box::into_raw` above and was never published, so no
                // other reference to it exists.
                drop(unsafe { Box::from_raw(fresh) });
                // SAFETY: by invariant 1, `first` (not null: the exchange from null failed) is
                // a leaked, never freed box.
                unsafe { &*first }
            }
        }
    }
}

impl<T: Send + Sync + 'static> Default for OnceValue<T> {
    fn default() -> Self {
        OnceValue::new()
    }
}

/// This host's name (`uname(2)`'s nodename), read once per process: what the backends of one
/// machine put in a [`Holder`](crate::Holder)'s `host`. A child forked while it is read makes
/// its own rather than wait (see [`OnceValue`]).
#[must_use]
pub fn host_name() -> &'static str {
    static HOST: OnceValue<String> = OnceValue::new();
    HOST.get_or_make(|| {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    })
}

/// The inode number of this process's pid namespace (`/proc/self/ns/pid`), or 0 (unknown) when
/// it cannot be read (no `/proc`) or does not fit 32 bits. Inode numbers of namespaces are unique
/// on a host while the namespace lives, which is at least as long as a live process in it. A
/// backend records it beside a pid so that a reader can tell whether that pid is one of its own
/// ([`pid_seen_here`]). One `stat(2)`: a backend reads it once, when a manager opens.
#[must_use]
pub fn pid_namespace() -> u32 {
    rustix::fs::stat("/proc/self/ns/pid")
        .ok()
        .and_then(|st| u32::try_from(st.st_ino).ok())
        .unwrap_or(0)
}

/// The pid `pid` (0: none recorded) that a process in pid namespace `theirs` recorded, as a reader
/// in pid namespace `here` may show it: `None` when the namespaces differ, for a pid of another
/// namespace names another process here, or none. A namespace that is unknown (0) on either side
/// is taken to be shared, as it was before namespaces were recorded.
#[must_use]
pub fn pid_seen_here(pid: u32, theirs: u32, here: u32) -> Option<u32> {
    let shared = theirs == 0 || here == 0 || theirs == here;
    (pid != 0 && shared).then_some(pid)
}

/// How a refusal names the managers that have a store open, each by its pid as
/// [`pid_seen_here`] gives it (`None`: in another pid namespace): `1 manager has it open: pid
/// 12`, `3 managers have it open: pid 3, 12 and 1 in another pid namespace`. Pids are listed
/// once each, in numeric order.
#[must_use]
pub fn managers_open(open: &[Option<u32>]) -> String {
    let mut pids: Vec<u32> = open.iter().flatten().copied().collect();
    pids.sort_unstable();
    pids.dedup();
    let mut parts = Vec::new();
    if !pids.is_empty() {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        parts.push(format!("pid {}", pids.join(", ")));
    }
    let elsewhere = open.iter().filter(|p| p.is_none()).count();
    if elsewhere > 0 {
        parts.push(format!("{elsewhere} in another pid namespace"));
    }
    let managers = if open.len() == 1 {
        "manager has"
    } else {
        "managers have"
    };
    format!("{} {managers} it open: {}", open.len(), parts.join(" and "))
}

/// Now, in milliseconds since the Unix epoch, from the coarse real-time clock: a few nanoseconds
/// through the vDSO, cheap enough for a lock path, and fine to the few milliseconds a
/// [`Holder`](crate::Holder)'s `since` needs. 0 for a clock set before 1970.
#[inline]
#[must_use]
pub fn coarse_now_ms() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.wrapping_mul(1_000).wrapping_add(nanos / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_managers_are_named_by_pid() {
        assert_eq!(managers_open(&[Some(12)]), "1 manager has it open: pid 12");
        assert_eq!(
            managers_open(&[Some(12), None, Some(3), Some(12)]),
            "4 managers have it open: pid 3, 12 and 1 in another pid namespace"
        );
        assert_eq!(
            managers_open(&[None, None]),
            "2 managers have it open: 2 in another pid namespace"
        );
    }
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn one_state_per_process_and_the_same_one_for_every_thread() {
        static STATE: PerProcess<Vec<u32>> = PerProcess::new();
        let pid = std::process::id();
        let threads: Vec<_> = (0..4)
            .map(|i| std::thread::spawn(move || STATE.lock(pid).push(i)))
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let mut seen = STATE.lock(pid).clone();
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2, 3]);
        // Another process's view starts empty, and the first one's is gone from this static.
        assert!(STATE.lock(pid ^ 1).is_empty());
        assert!(STATE.lock(pid).is_empty());
    }

    /// The hazard itself, in the child of a real `fork`: another thread holds the state's lock
    /// when the process forks; the child must still get a state to lock, and at once. With a
    /// plain `static Mutex` the child blocks for ever (the parent sees it time out).
    #[test]
    #[allow(
        unsafe_code,
        reason = "fork(2), waitpid(2) and _exit(2) have no safe wrappers"
    )]
    fn a_child_forked_while_another_thread_holds_the_lock_gets_its_own() {
        static STATE: PerProcess<u32> = PerProcess::new();
        let parent = std::process::id();
        *STATE.lock(parent) = 7;
        let held = Arc::new(AtomicUsize::new(0));
        let (release, wait_release) = std::sync::mpsc::channel::<()>();
        let holder = {
            let held = Arc::clone(&held);
            std::thread::spawn(move || {
                let guard = STATE.lock(parent);
                held.store(1, Ordering::SeqCst);
                let _ = wait_release.recv();
                drop(guard);
            })
        };
        while held.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        // SAFETY: the child only locks `STATE` (its own fresh copy after the fix), reads it and
        // calls `_exit`; it allocates once (`Box::new`), which glibc's fork handlers make safe.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
        if child == 0 {
            // SAFETY: `getpid` has no preconditions.
            let me = u32::try_from(unsafe { libc::getpid() }).unwrap_or(0);
            let fresh = *STATE.lock(me) == 0;
            // SAFETY: `_exit` ends the child without running the parent's destructors or
            // libtest's code.
            unsafe { libc::_exit(if fresh { 0 } else { 1 }) };
        }
        let status = wait_bounded(child, std::time::Duration::from_secs(10));
        release.send(()).expect("release");
        holder.join().expect("holder");
        assert_eq!(
            status,
            Some(0),
            "the child hung (None) or saw its parent's state (1)"
        );
        assert_eq!(*STATE.lock(parent), 7, "the parent keeps its own state");
    }

    #[test]
    fn the_host_name_is_the_nodename_read_once() {
        let uname = rustix::system::uname();
        let expected = uname.nodename().to_string_lossy();
        let first = host_name();
        assert_eq!(first, expected);
        assert!(std::ptr::eq(first, host_name()), "made once, then kept");
    }

    #[test]
    fn the_coarse_clock_reads_the_wall_clock_in_milliseconds() {
        let wall = |t: std::time::SystemTime| {
            let d = t.duration_since(std::time::UNIX_EPOCH).expect("after 1970");
            u64::try_from(d.as_millis()).expect("fits")
        };
        let before = wall(std::time::SystemTime::now());
        let now = coarse_now_ms();
        let after = wall(std::time::SystemTime::now());
        // The coarse clock lags the fine one by at most one tick (a few ms); a second is far
        // beyond any tick, and far below a unit error (seconds or microseconds).
        assert!(
            now + 1_000 >= before && now <= after + 1_000,
            "coarse {now} ms against {before}..{after} ms"
        );
    }

    #[test]
    fn a_value_is_made_once_and_kept() {
        static VALUE: OnceValue<String> = OnceValue::new();
        let threads: Vec<_> = (0..4)
            .map(|i| std::thread::spawn(move || VALUE.get_or_make(|| format!("made by {i}"))))
            .collect();
        let seen: Vec<&str> = threads
            .into_iter()
            .map(|t| t.join().expect("thread").as_str())
            .collect();
        assert!(
            seen.iter().all(|v| *v == seen[0]),
            "one value kept: {seen:?}"
        );
        assert_eq!(VALUE.get_or_make(|| "late".to_owned()), seen[0]);
    }

    /// The hazard of a lazily made value, in the child of a real `fork`: another thread is making
    /// it when the process forks; the child must still get a value, at once. With a `LazyLock` or
    /// a `OnceLock` (`get_or_init`) in place of `OnceValue` the child waits for ever on the
    /// initialisation its parent's thread had begun (the parent sees it time out).
    #[test]
    #[allow(
        unsafe_code,
        reason = "fork(2), getpid(2) and _exit(2) have no safe wrappers"
    )]
    fn a_child_forked_while_another_thread_makes_the_value_makes_its_own() {
        static VALUE: OnceValue<u32> = OnceValue::new();
        let (inside, is_inside) = std::sync::mpsc::channel::<()>();
        let (release, wait_release) = std::sync::mpsc::channel::<()>();
        let maker = std::thread::spawn(move || {
            *VALUE.get_or_make(|| {
                inside.send(()).expect("inside");
                let _ = wait_release.recv();
                1
            })
        });
        is_inside.recv().expect("the maker started");
        // SAFETY: the child only reads `VALUE` (making its own, one `Box::new`, which glibc's fork
        // handlers make safe) and calls `_exit`.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
        if child == 0 {
            let made = *VALUE.get_or_make(|| 2) == 2;
            // SAFETY: `_exit` ends the child without running the parent's destructors or
            // libtest's code.
            unsafe { libc::_exit(if made { 0 } else { 1 }) };
        }
        let status = wait_bounded(child, std::time::Duration::from_secs(10));
        release.send(()).expect("release");
        assert_eq!(
            maker.join().expect("maker"),
            1,
            "the parent keeps its value"
        );
        assert_eq!(*VALUE.get_or_make(|| 3), 1);
        assert_eq!(
            status,
            Some(0),
            "the child hung (None) or read no value of its own (1)"
        );
    }

    /// The child's exit code, or `None` if it had not exited after `limit` (it is killed then).
    #[allow(unsafe_code, reason = "waitpid(2) and kill(2) have no safe wrappers")]
    fn wait_bounded(child: libc::pid_t, limit: std::time::Duration) -> Option<i32> {
        let start = std::time::Instant::now();
        loop {
            let mut status = 0;
            // SAFETY: `child` is our child; `status` is a valid out-pointer.
            let got = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
            if got == child {
                return libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
            }
            if start.elapsed() > limit {
                // SAFETY: signalling and reaping our own child.
                unsafe {
                    libc::kill(child, libc::SIGKILL);
                    libc::waitpid(child, &mut status, 0);
                }
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
