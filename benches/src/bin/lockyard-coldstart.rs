//! The process of the cold-start benchmark: `lockyard-coldstart SPEC [-- CMD [ARGS...]]` opens the
//! store, takes lock 0, runs the command (as flock(1) does), releases the lock and exits with the
//! command's status: 0 without a command, 2 when the store or the lock fails.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(spec) = args.first() else {
        eprintln!("usage: lockyard-coldstart SPEC [-- CMD [ARGS...]]");
        return ExitCode::from(2);
    };
    let command = match args.get(1).map(String::as_str) {
        Some("--") => &args[2..],
        Some(other) => {
            eprintln!("lockyard-coldstart: expected `--` before the command, got {other:?}");
            return ExitCode::from(2);
        }
        None => &[],
    };
    let ran = lockyard_benches::with_lock_zero(spec, || match command.split_first() {
        None => Ok(0),
        Some((program, rest)) => Command::new(program)
            .args(rest)
            .status()
            .map(|s| s.code().unwrap_or(1)),
    });
    match ran {
        Ok(Ok(code)) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Ok(Err(e)) => {
            eprintln!("lockyard-coldstart: cannot run {command:?}: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("lockyard-coldstart: {spec}: {e}");
            ExitCode::from(2)
        }
    }
}
