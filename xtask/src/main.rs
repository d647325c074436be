//! lockyard's task runner: `cargo xtask conformance | test | bench | etcd | lint | ci`.

mod bench;
mod conformance;
mod plot;
mod prereq;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: cargo xtask <command>

  conformance [--backend NAME]   run the conformance suite; print backend x behaviour matrix
  test                           install prerequisites if possible, then run every test
  bench [BACKEND..] [--quick] [--runs N] [--compare | --no-compare] [--etcd] [--save-plot]
                                 run criterion benchmarks; print `NAME: ours X, peer Y, ratio Z`;
                                 then the side-by-side comparison N times (default 3); a full run
                                 of every backend rewrites docs/benchmarks.md and its charts
  etcd up|down                   start or stop a local 3-member etcd cluster for manual use
  lint                           cargo fmt --check, clippy -D warnings, cargo doc --no-deps
  ci                             lint, then test

backends: mem, shm, file, dirlock, etcd";

/// A backend crate and how to reach its suite and benchmarks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BackendCrate {
    pub(crate) name: &'static str,
    pub(crate) package: &'static str,
    /// Extra cargo arguments its benchmarks need.
    pub(crate) bench_args: &'static [&'static str],
    /// Whether it needs etcd and protoc.
    pub(crate) needs_etcd: bool,
}

pub(crate) const BACKENDS: [BackendCrate; 5] = [
    BackendCrate {
        name: "mem",
        package: "lock-mem",
        bench_args: &[],
        needs_etcd: false,
    },
    BackendCrate {
        name: "shm",
        package: "lock-shm",
        bench_args: &[],
        needs_etcd: false,
    },
    BackendCrate {
        name: "file",
        package: "lock-file",
        bench_args: &[],
        needs_etcd: false,
    },
    BackendCrate {
        name: "dirlock",
        package: "dirlock",
        bench_args: &[],
        needs_etcd: false,
    },
    BackendCrate {
        name: "etcd",
        package: "lock-etcd",
        bench_args: &["--features", "testkit"],
        needs_etcd: true,
    },
];

pub(crate) fn backend(name: &str) -> Result<BackendCrate, String> {
    BACKENDS
        .iter()
        .find(|b| b.name == name || b.package == name)
        .copied()
        .ok_or_else(|| {
            let names: Vec<_> = BACKENDS.iter().map(|b| b.name).collect();
            format!("unknown backend {name:?}; known: {}", names.join(", "))
        })
}

/// The workspace root, found from this crate's manifest directory: the one `cargo run` names at
/// run time, else the one it was compiled in. The run-time one comes first because a build
/// reused from another checkout (a target directory shared between worktrees) carries that
/// checkout's compile-time path, and the tasks would then test and write the other checkout.
pub(crate) fn root() -> PathBuf {
    root_from(std::env::var_os("CARGO_MANIFEST_DIR"))
}

/// [`root`] given the run-time manifest directory, if any.
fn root_from(manifest_dir: Option<std::ffi::OsString>) -> PathBuf {
    manifest_dir
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cargo target directory in use: the one the benchmarks write to (see
/// [`lockyard_bench_support::target_dir`]).
pub(crate) fn target_dir() -> PathBuf {
    lockyard_bench_support::target_dir()
}

/// A `cargo` command run from the workspace root.
pub(crate) fn cargo() -> Command {
    let mut command = Command::new(env!("CARGO"));
    command.current_dir(root());
    command
}

/// Prints a command, runs it, and fails unless it succeeds.
pub(crate) fn run(command: &mut Command) -> Result<(), String> {
    eprintln!("$ {}", show(command));
    let status = command
        .status()
        .map_err(|e| format!("cannot run {}: {e}", show(command)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed: {status}", show(command)))
    }
}

pub(crate) fn show(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Backend crates that must stay lean, and the crates they must never pull in (a user who
/// depends on one backend alone gets no async runtime and no gRPC stack).
const LEAN: [&str; 4] = ["lock-shm", "lock-file", "lock-mem", "dirlock"];
const HEAVY: [&str; 3] = ["tokio", "etcd-client", "tonic"];

/// `cargo tree -p <backend> -e normal`: fails when a lean backend pulls in a heavy crate.
fn lean() -> Result<(), String> {
    for package in LEAN {
        let mut command = cargo();
        command.args([
            "tree",
            "--package",
            package,
            "--edges",
            "normal",
            "--prefix",
            "none",
        ]);
        eprintln!("xtask: {}", show(&command));
        let output = command.output().map_err(|e| format!("cargo tree: {e}"))?;
        if !output.status.success() {
            return Err(format!("cargo tree -p {package} failed"));
        }
        let tree = String::from_utf8_lossy(&output.stdout);
        let heavy: Vec<&str> = tree
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|name| HEAVY.contains(name))
            .collect();
        if !heavy.is_empty() {
            return Err(format!("{package} depends on {heavy:?}; it must stay lean"));
        }
    }
    eprintln!(
        "xtask: {} pull in none of {}",
        LEAN.join(", "),
        HEAVY.join(", ")
    );
    Ok(())
}

fn lint() -> Result<(), String> {
    prereq::ensure(true)?;
    lean()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo()
        .args(["doc", "--workspace", "--no-deps", "--all-features"])
        .env("RUSTDOCFLAGS", "-D warnings"))
}

/// How long one test binary (a crate's unit tests, one integration test file, the doctests)
/// may run under `cargo xtask test` before it is killed, in seconds, unless
/// `LOCKYARD_TEST_BINARY_TIMEOUT` says otherwise. The longest binary (lock-etcd's `faults`)
/// takes about 75 s on two cores; the bound is there so that a test that hangs (a lost
/// wake-up, a deadlock nobody detects) fails the run, naming its binary, instead of holding CI
/// until its own limit.
const TEST_BINARY_TIMEOUT_SECS: u64 = 900;

/// The per-binary bound in seconds: `LOCKYARD_TEST_BINARY_TIMEOUT` if set, else the default.
fn test_binary_timeout(setting: Option<&str>) -> Result<u64, String> {
    match setting {
        None => Ok(TEST_BINARY_TIMEOUT_SECS),
        Some(text) => match text.trim().parse::<u64>() {
            Ok(secs) if secs > 0 => Ok(secs),
            _ => Err(format!(
                "LOCKYARD_TEST_BINARY_TIMEOUT={text:?}: expected a whole number of seconds above 0"
            )),
        },
    }
}

/// The per-binary bound in force: [`test_binary_timeout`] of the environment's setting.
pub(crate) fn test_binary_bound() -> Result<u64, String> {
    let setting = std::env::var("LOCKYARD_TEST_BINARY_TIMEOUT").ok();
    test_binary_timeout(setting.as_deref())
}

/// The `--config` value that makes cargo start every test binary through coreutils' `timeout`:
/// the binary runs in its own process group, and past `secs` the whole group (the binary and
/// any child it started) gets SIGTERM, then SIGKILL ten seconds later, and the binary's exit
/// status is 124 (137 if it had to be killed).
pub(crate) fn bounded_runner(secs: u64) -> String {
    let quoted: Vec<String> = runner(secs).iter().map(|a| format!("'{a}'")).collect();
    format!("target.'cfg(all())'.runner = [{}]", quoted.join(", "))
}

/// The runner's program and arguments, in front of the test binary's.
fn runner(secs: u64) -> [String; 3] {
    ["timeout".into(), "--kill-after=10".into(), secs.to_string()]
}

fn test() -> Result<(), String> {
    prereq::ensure(true)?;
    let secs = test_binary_bound()?;
    let before = prereq::shm_segments();
    run(cargo()
        .args(["test", "--workspace", "--all-features", "--no-fail-fast"])
        .args(["--config", &bounded_runner(secs)]))
    .map_err(|e| {
        format!(
            "{e}\n(a test binary that exited with status 124 or 137 ran over the {secs} s bound \
             and was killed with its children; set LOCKYARD_TEST_BINARY_TIMEOUT to change it)"
        )
    })?;
    let leaked: Vec<_> = prereq::shm_segments()
        .difference(&before)
        .cloned()
        .collect();
    if leaked.is_empty() {
        eprintln!("xtask: no lockyard segments left in /dev/shm");
        Ok(())
    } else {
        Err(format!("the tests left segments in /dev/shm: {leaked:?}"))
    }
}

fn etcd(args: &[String]) -> Result<(), String> {
    let action = match args.first().map(String::as_str) {
        Some(a @ ("up" | "down")) => a,
        _ => return Err("usage: cargo xtask etcd up|down".into()),
    };
    prereq::ensure(true)?;
    run(cargo().args([
        "run",
        "--quiet",
        "-p",
        "lock-etcd",
        "--features",
        "testkit",
        "--bin",
        "lockyard-etcd-cluster",
        "--",
        action,
    ]))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("conformance") => conformance::main(&args[1..]),
        Some("test") => test(),
        Some("bench") => bench::main(&args[1..]),
        Some("etcd") => etcd(&args[1..]),
        Some("lint") => lint(),
        Some("ci") => lint().and_then(|()| test()),
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bound comes from the setting when it is a positive number of seconds, from the
    /// default when unset, and a bad setting is an error that names it.
    #[test]
    fn the_test_binary_bound_is_read_from_its_setting() {
        assert_eq!(test_binary_timeout(None), Ok(TEST_BINARY_TIMEOUT_SECS));
        assert_eq!(test_binary_timeout(Some(" 30 ")), Ok(30));
        for bad in ["0", "-5", "ten", "1.5", ""] {
            let e = test_binary_timeout(Some(bad)).expect_err(bad);
            assert!(e.contains("LOCKYARD_TEST_BINARY_TIMEOUT"), "{e}");
        }
    }

    /// Cargo runs every test binary through the runner: one that outlives the bound is killed
    /// with its process group and fails with `timeout`'s status, one that ends in time keeps
    /// its own status.
    #[test]
    fn the_bounded_runner_kills_a_binary_that_runs_over_and_its_children() {
        let config = bounded_runner(1);
        assert_eq!(
            config,
            "target.'cfg(all())'.runner = ['timeout', '--kill-after=10', '1']"
        );
        // The runner as cargo would start it, around a shell that leaves a child behind.
        let runner = runner(1);
        let dir = std::env::temp_dir().join(format!("xtask-runner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let pid_file = dir.join("child.pid");
        let started = std::time::Instant::now();
        let status = Command::new(&runner[0])
            .args(&runner[1..])
            .args(["sh", "-c", "sleep 60 & echo $! > \"$1\"; wait", "sh"])
            .arg(&pid_file)
            .status()
            .expect("timeout runs");
        assert_eq!(status.code(), Some(124), "over the bound: timeout's status");
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        let child = std::fs::read_to_string(&pid_file).expect("child pid");
        let child = child.trim();
        // The child got the group's SIGTERM: it is gone (or a zombie of a dead parent, reaped
        // by init) within a moment.
        let gone = (0..100).any(|_| {
            let state = std::fs::read_to_string(format!("/proc/{child}/stat"));
            let gone = state.map_or(true, |s| s.contains(") Z "));
            if !gone {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            gone
        });
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            gone,
            "the child {child} of a binary killed for running over still runs"
        );
        let status = Command::new(&runner[0])
            .args(&runner[1..])
            .args(["sh", "-c", "exit 3"])
            .status()
            .expect("timeout runs");
        assert_eq!(status.code(), Some(3), "in time: the binary's own status");
    }

    /// The run-time manifest directory wins over the compiled-in one: a build reused from
    /// another checkout must still work on the checkout `cargo` was run in.
    #[test]
    fn the_root_follows_the_manifest_directory_cargo_names_at_run_time() {
        let elsewhere = Path::new("/some/other/checkout/xtask");
        assert_eq!(
            root_from(Some(elsewhere.as_os_str().to_owned())),
            Path::new("/some/other/checkout")
        );
        let compiled = root_from(None);
        assert!(compiled.join("Cargo.toml").is_file(), "{compiled:?}");
        assert!(compiled.join("xtask").is_dir(), "{compiled:?}");
    }
}
