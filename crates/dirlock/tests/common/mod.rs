//! Test helpers: child processes of the test binary, hand-written lock records, directory listings.
#![allow(
    dead_code,
    reason = "each test target uses a different subset of the helpers"
)]

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lock_conformance::child::ChildProcess;

/// Environment variable that turns the test binary into a child in a role.
pub(crate) const ROLE_ENV: &str = "DIRLOCK_TEST_ROLE";
/// The lock directory a child works on.
pub(crate) const DIR_ENV: &str = "DIRLOCK_TEST_DIR";
/// A scratch directory for counters and markers (never the lock directory).
pub(crate) const WORK_ENV: &str = "DIRLOCK_TEST_WORK";
/// How many iterations a hammer makes (0: until killed).
pub(crate) const COUNT_ENV: &str = "DIRLOCK_TEST_COUNT";
/// Prefix of the lines a child says to its parent (the harness prints its own lines too).
pub(crate) const SAY: &str = "@@ ";
/// The longest any single wait in these tests may take.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// Starts this test binary again as a child running `role` (the test named `child_role`),
/// as user and group `uid` when given; SIGKILLed and reaped when dropped.
pub(crate) fn spawn(
    role: &str,
    dir: &Path,
    work: &Path,
    count: u32,
    uid: Option<u32>,
) -> ChildProcess {
    let exe = std::env::current_exe().expect("test binary path");
    let mut command = Command::new(exe);
    command
        .args([
            "child_role",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(ROLE_ENV, role)
        .env(DIR_ENV, dir)
        .env(WORK_ENV, work)
        .env(COUNT_ENV, count.to_string());
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    ChildProcess::start(command, role, Some(SAY)).expect("spawn the test binary")
}

/// This host's identity as a record would state it.
#[derive(Debug, Clone)]
pub(crate) struct Me {
    pub(crate) boot_id: String,
    pub(crate) pid_ns: u64,
    pub(crate) host: String,
}

pub(crate) fn me() -> Me {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .expect("boot id")
        .trim()
        .to_owned();
    let pid_ns = std::fs::metadata("/proc/self/ns/pid")
        .expect("pid ns")
        .ino();
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    Me {
        boot_id,
        pid_ns,
        host,
    }
}

/// Field 22 of `/proc/<pid>/stat`, counted after the last `)`.
pub(crate) fn start_time(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let rest = &text[text.rfind(')').expect("comm") + 1..];
    rest.split_whitespace()
        .nth(19)
        .expect("field 22")
        .parse()
        .expect("number")
}

/// A version-1 record, written by hand from docs/lock-record.md.
pub(crate) fn record(me: &Me, pid: u32, start_time: u64) -> String {
    record_with(&me.host, &me.boot_id, me.pid_ns, pid, start_time)
}

pub(crate) fn record_with(
    host: &str,
    boot_id: &str,
    pid_ns: u64,
    pid: u32,
    start_time: u64,
) -> String {
    format!(
        "dirlock-record 1\nboot_id {boot_id}\npid_ns {pid_ns}\npid {pid}\nstart_time {start_time}\n\
         host {host}\nuid 0\ntime_ns 1700000000000000000\nnonce {:016x}\n",
        u64::from(pid) << 20 ^ start_time
    )
}

/// A version-2 record, written by hand from docs/lock-record.md: `ofd_lock` says whether the
/// writer promises an OFD lock on the file (a hand-written file never has one).
pub(crate) fn record_v2(me: &Me, pid: u32, start_time: u64, ofd_lock: bool) -> String {
    let v1 = record(me, pid, start_time);
    format!(
        "{}ofd_lock {}\n",
        v1.replacen("dirlock-record 1", "dirlock-record 2", 1),
        u8::from(ofd_lock)
    )
}

/// The names in `dir`, sorted.
pub(crate) fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read lock dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Asserts that `dir` holds exactly `want` (names), and so no temporary or staging file.
pub(crate) fn assert_entries(dir: &Path, want: &[&str], context: &str) {
    let got = entries(dir);
    let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(got, want, "{context}: files in the lock directory");
}

/// A lock directory in tmpfs-or-temp, open to every user (for the tests that drop privileges).
pub(crate) fn lock_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("dirlock-test-")
        .tempdir()
        .expect("temp dir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    dir
}
