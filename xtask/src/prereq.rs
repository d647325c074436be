//! System prerequisites (etcd, protoc, unshare, timeout): found, installed with apt-get as root,
//! or named.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

/// The Debian packages the tests need: for the etcd backend the server, protoc and the
/// well-known protobuf types to build `etcd-client`; for lock-shm's pid-namespace test
/// `unshare(1)`, from util-linux; to bound each test binary's time `timeout(1)`, from coreutils
/// (both essential on Debian, so normally there).
pub(crate) const PACKAGES: [&str; 5] = [
    "etcd-server",
    "protobuf-compiler",
    "libprotobuf-dev",
    "util-linux",
    "coreutils",
];

/// The command a user runs to install them.
pub(crate) fn install_hint() -> String {
    format!(
        "sudo apt-get update && sudo apt-get install -y {}",
        PACKAGES.join(" ")
    )
}

fn works(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What is missing for the etcd backend, or `None` when everything is there.
pub(crate) fn etcd_missing() -> Option<String> {
    let mut missing = Vec::new();
    if !works("etcd", "--version") {
        missing.push("etcd");
    }
    if !works("protoc", "--version") {
        missing.push("protoc");
    }
    if !Path::new("/usr/include/google/protobuf/descriptor.proto").exists() {
        missing.push("protobuf headers");
    }
    (!missing.is_empty()).then(|| format!("{} not installed", missing.join(", ")))
}

/// What is missing for the whole test suite: the etcd prerequisites, `unshare(1)` and
/// `timeout(1)`.
fn test_missing() -> Option<String> {
    let tools = ["unshare", "timeout"]
        .into_iter()
        .filter(|tool| !works(tool, "--version"))
        .map(|tool| format!("{tool} not installed"));
    let missing: Vec<String> = etcd_missing().into_iter().chain(tools).collect();
    (!missing.is_empty()).then(|| missing.join("; "))
}

fn is_root() -> bool {
    rustix_free_euid() == Some(0)
}

/// The effective uid from /proc (keeps xtask free of dependencies).
fn rustix_free_euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Makes sure the test suite's prerequisites exist: installs them with apt-get when running as
/// root, otherwise fails (when `required`) with the exact command to run.
pub(crate) fn ensure(required: bool) -> Result<(), String> {
    let Some(missing) = test_missing() else {
        return Ok(());
    };
    if is_root() && works("apt-get", "--version") {
        eprintln!(
            "xtask: {missing}; installing {} with apt-get",
            PACKAGES.join(" ")
        );
        crate::run(
            Command::new("apt-get")
                .args(["update", "-qq"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        crate::run(
            Command::new("apt-get")
                .args(["install", "-y", "-qq"])
                .args(PACKAGES)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        return match test_missing() {
            None => Ok(()),
            Some(still) if required => Err(format!("{still} after apt-get install")),
            Some(_) => Ok(()),
        };
    }
    if required {
        Err(format!(
            "{missing}; install them with:\n    {}",
            install_hint()
        ))
    } else {
        Ok(())
    }
}

/// The lockyard segments now in /dev/shm.
pub(crate) fn shm_segments() -> BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("lockyard") || n.starts_with("lyc-"))
                // Benchmarks (never run by `xtask test`) name theirs `lockyard-bench-*`; one
                // running on the same machine must not count as a test's leak.
                .filter(|n| !n.starts_with("lockyard-bench-"))
                .collect()
        })
        .unwrap_or_default()
}
