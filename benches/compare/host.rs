//! What the first return after a system call costs on this host: a fact of the run, printed in
//! the report's header (meta `syscall-return`).
//!
//! How the flock peer is called decides its figure on some hosts. On the 2-vCPU KVM guests this
//! project runs on since kernel build `fc-v1252` (AMD EPYC, the kernel's "Safe RET" return-stack
//! mitigation), the first `ret` a process makes after a `flock` call costs about 125 ns, and
//! about 45 ns after a `getppid`: a `flock` pair with both calls inlined into the loop (no `ret`
//! between the system calls) took 535 ns, the same pair behind a call each 790 ns. A lock API is
//! a call that returns, so every subject calls an out-of-line function for each half
//! ([`Mutexish`](crate::subject::Mutexish)); with the calls inlined, the peer's loop paid none of
//! what every library's (and every C program's, through libc's `flock`) pays. lock-file met the
//! same effect on earlier hosts (about 100 ns a return; `crates/lock-file/src/flock.rs`) and
//! inlines its uncontended system calls into its own frames for it, but its `lock` and `unlock`
//! still return to their caller, as every lock function does.

use std::fs::File;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use rustix::fs::{FlockOperation, flock};

const ITERATIONS: u32 = 200_000;
const ROUNDS: usize = 5;

#[inline(always)]
fn inlined(file: &File, op: FlockOperation) {
    flock(file, op).expect("flock");
}

#[inline(never)]
fn called(file: &File, op: FlockOperation) {
    flock(file, op).expect("flock");
}

#[inline(always)]
fn getppid_inlined() {
    black_box(rustix::process::getppid());
}

#[inline(never)]
fn getppid_called() {
    black_box(rustix::process::getppid());
}

/// ns per iteration of `body`.
fn time(mut body: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..ITERATIONS {
        body();
    }
    start.elapsed().as_nanos() as f64 / f64::from(ITERATIONS)
}

/// Measures, on a file in `dir`, a `flock` pair and a `getppid` with the system calls inlined
/// into the loop and behind a call each (medians of five interleaved rounds, about a second in
/// all), and says what the first return after each system call cost.
pub(crate) fn syscall_return(dir: &Path) -> String {
    let path = dir.join("host-probe.flock");
    let file = File::create(&path).expect("probe file");
    let mut rows: [Vec<f64>; 4] = Default::default();
    // Interleaved rounds: a change in the machine's load falls on every row alike.
    for _ in 0..ROUNDS {
        rows[0].push(time(|| {
            inlined(&file, FlockOperation::LockExclusive);
            inlined(&file, FlockOperation::Unlock);
        }));
        rows[1].push(time(|| {
            called(&file, FlockOperation::LockExclusive);
            called(&file, FlockOperation::Unlock);
        }));
        rows[2].push(time(getppid_inlined));
        rows[3].push(time(getppid_called));
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    let [pair_inlined, pair_called, ppid_inlined, ppid_called] = rows.map(|mut v| {
        v.sort_by(f64::total_cmp);
        crate::takeover::median(&v)
    });
    format!(
        "{:.0} ns after a flock call, {:.0} ns after a getppid (a flock pair: {pair_inlined:.0} ns \
         inlined into the loop, {pair_called:.0} ns behind a call each; a getppid: \
         {ppid_inlined:.0} ns and {ppid_called:.0} ns)",
        (pair_called - pair_inlined) / 2.0,
        ppid_called - ppid_inlined,
    )
}
