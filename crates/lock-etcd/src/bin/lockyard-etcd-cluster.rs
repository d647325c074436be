//! `lockyard-etcd-cluster up|down`: a 3-member etcd cluster on 127.0.0.1 for manual use.
//!
//! `up` starts the cluster detached (it outlives this command), writes its endpoints, member pids
//! and data directory to `<target>/etcd-cluster.json`, and prints the endpoints, comma-separated.
//! `down` kills the members listed there (only processes that still run etcd), removes the data
//! directory and the state file. `<target>` is `$CARGO_TARGET_DIR`, else the workspace `target/`.

use std::path::PathBuf;
use std::process::ExitCode;

use lock_etcd::testkit::EtcdCluster;
use rustix::process::{Pid, Signal, kill_process};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct State {
    endpoints: Vec<String>,
    pids: Vec<u32>,
    data_dir: PathBuf,
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
    }
}

fn state_file() -> PathBuf {
    target_dir().join("etcd-cluster.json")
}

fn up() -> Result<(), String> {
    let path = state_file();
    if path.exists() {
        return Err(format!(
            "{} exists: a cluster may be running; run `down` first",
            path.display()
        ));
    }
    let data_dir = target_dir().join(format!("etcd-cluster-data-{}", std::process::id()));
    let cluster = EtcdCluster::start_in(&data_dir, 3).map_err(|e| e.to_string())?;
    let (endpoints, pids, data_dir) = cluster.detach();
    let state = State {
        endpoints: endpoints.clone(),
        pids,
        data_dir,
    };
    let json = serde_json::to_string_pretty(&state).map_err(|e| e.to_string())?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::write(&path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("etcd cluster up; state in {}", path.display());
    println!("{}", endpoints.join(","));
    Ok(())
}

fn is_etcd(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmd| {
            let argv0 = cmd.split(|b| *b == 0).next().unwrap_or_default();
            argv0.ends_with(b"etcd")
        })
        .unwrap_or(false)
}

fn down() -> Result<(), String> {
    let path = state_file();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("no cluster state at {}: nothing to stop", path.display());
            return Ok(());
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let state: State =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for pid in &state.pids {
        // Only a process that still runs etcd: the pid may have been reused since `up`.
        if is_etcd(*pid)
            && let Some(p) = i32::try_from(*pid).ok().and_then(Pid::from_raw)
        {
            let _ = kill_process(p, Signal::KILL);
        }
    }
    // Wait (at most 5 s) until they are gone, so that the ports are free when this returns.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while state.pids.iter().any(|pid| is_etcd(*pid)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if state.data_dir.exists() {
        std::fs::remove_dir_all(&state.data_dir)
            .map_err(|e| format!("{}: {e}", state.data_dir.display()))?;
    }
    std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("etcd cluster down (pids {:?})", state.pids);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["up"] => up(),
        ["down"] => down(),
        _ => Err("usage: lockyard-etcd-cluster up|down".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockyard-etcd-cluster: {e}");
            ExitCode::FAILURE
        }
    }
}
