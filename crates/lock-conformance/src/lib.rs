//! The behaviour suite every lockyard backend passes, and the harness that runs it.
#![doc = include_str!("../README.md")]

mod backend;
pub mod behaviours;
pub mod child;
mod ctx;
pub mod fork;
mod outcome;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};

pub use backend::{Backend, Capabilities, Damage, LockerOf};
pub use ctx::Ctx;
pub use outcome::{Failed, Outcome};

/// When set, [`run`] writes one line per behaviour to this file: `name<TAB>status<TAB>detail`,
/// with status `pass`, `FAIL` or `n/a` (capability not claimed). `cargo xtask conformance`
/// reads it to print the matrix.
pub const REPORT_ENV: &str = "LOCKYARD_CONFORMANCE_REPORT";

/// One behaviour of the suite: a public function of [`behaviours`] and the capabilities it needs.
pub struct Behaviour<B: Backend> {
    /// `module::function`, the trial's name.
    pub name: &'static str,
    /// The capabilities a backend must claim for the behaviour to apply.
    pub needs: Capabilities,
    /// The behaviour itself.
    pub check: fn(&Ctx<'_, B>) -> Outcome,
}

impl<B: Backend> std::fmt::Debug for Behaviour<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Behaviour")
            .field("name", &self.name)
            .field("needs", &self.needs)
            .finish()
    }
}

/// Runs one behaviour on `backend` in a fresh context (used by the harness and by tests that
/// want a single behaviour).
///
/// # Errors
///
/// The behaviour's failure, or a panic inside it turned into a failure.
pub fn check<B: Backend>(backend: &B, behaviour: &Behaviour<B>) -> Outcome {
    let ctx = Ctx::new(backend)?;
    match catch_unwind(AssertUnwindSafe(|| (behaviour.check)(&ctx))) {
        Ok(outcome) => outcome,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".into());
            Err(Failed(format!("panicked: {message}")))
        }
    }
}

/// The message of a caught panic ("" when there was none, or when its payload is not a string):
/// what the model checks' planted-bug tests match on.
pub fn panic_message(caught: &std::thread::Result<()>) -> String {
    match caught {
        Ok(()) => String::new(),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default(),
    }
}

/// Asserts that each planted bug of a model check was caught: its run panicked with a message
/// that contains `expected`. `runs` pairs each bug's name with its run's outcome
/// (`catch_unwind`), so a model names every bug it plants in one place.
///
/// # Panics
///
/// When a run did not panic, or panicked for another reason.
pub fn assert_each_caught(
    expected: &str,
    runs: impl IntoIterator<Item = (&'static str, std::thread::Result<()>)>,
) {
    for (bug, caught) in runs {
        let message = panic_message(&caught);
        assert!(
            message.contains(expected),
            "planted bug {bug} was not caught (expected a failure saying {expected:?}): {message:?}"
        );
    }
}

/// The entry point of a backend's `harness = false` conformance test target.
///
/// In a child process (see [`child`]) it runs the child's role; otherwise it runs every
/// behaviour whose capabilities `backend` claims as a named libtest-mimic trial, and reports
/// the others as not applicable.
pub fn run<B: Backend>(backend: B) -> ExitCode {
    if let Ok(role) = std::env::var(child::ROLE_ENV) {
        return child::main(&backend, &role);
    }
    let args = libtest_mimic::Arguments::from_args();
    let backend = Arc::new(backend);
    let caps = backend.capabilities();
    let results: Arc<Mutex<BTreeMap<&'static str, (&'static str, String)>>> = Arc::default();
    let mut trials = Vec::new();
    for behaviour in behaviours::all::<B>() {
        let name = behaviour.name;
        if !caps.contains(behaviour.needs) {
            let missing = Capabilities::from_bits(behaviour.needs.bits() & !caps.bits());
            results
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    name,
                    ("n/a", format!("needs {}", missing.names().join(", "))),
                );
            continue;
        }
        let backend = Arc::clone(&backend);
        let results = Arc::clone(&results);
        trials.push(libtest_mimic::Trial::test(name, move || {
            let outcome = check(&*backend, &behaviour);
            let entry = match &outcome {
                Ok(()) => ("pass", String::new()),
                Err(failed) => ("FAIL", failed.0.replace(['\n', '\t'], " ")),
            };
            results
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(name, entry);
            outcome.map_err(|failed| failed.0.into())
        }));
    }
    let conclusion = libtest_mimic::run(&args, trials);
    if let Ok(path) = std::env::var(REPORT_ENV) {
        let results = results.lock().unwrap_or_else(PoisonError::into_inner);
        let mut text = format!(
            "# backend {} capabilities {}\n",
            backend.name(),
            caps.names().join(",")
        );
        for (name, (status, detail)) in results.iter() {
            text.push_str(&format!("{name}\t{status}\t{detail}\n"));
        }
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("lock-conformance: cannot write report {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    conclusion.exit_code()
}
