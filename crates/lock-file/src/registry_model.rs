//! Model check of the registration protocol (`registry.rs`) with loom: the same generic code
//! that production runs, over a modelled kernel: one marker's `flock` state (shared holders,
//! an exclusive holder) and its link count, under one mutex, as the kernel grants one file's
//! locks in one order.
//!
//! Run it with `cargo test -p lock-file --lib model`. A remover of an unused store races an
//! opener, with another manager registered or not. Checked: no opener goes on with a store the
//! remover deleted, and a store another manager has open is not deleted. Three planted bugs
//! must each be caught: the opener looks at the marker's name before it registers, the remover
//! lets go before it deletes, and the opener does not register.

use std::panic::catch_unwind;

use loom::sync::{Arc, Mutex};
use loom::thread;

use lock_api::Result;

use crate::registry::{RegistrySys, claim, register};

/// Preemptions explored per execution.
const PREEMPTIONS: usize = 3;

/// One marker as the kernel keeps it.
#[derive(Default)]
struct Marker {
    shared: usize,
    exclusive: bool,
    linked: bool,
}

/// One description of the marker (what it holds), over the shared kernel state, with the
/// planted bug `BUG` (0: none; 1, 2, 3: bugs (a), (b), (c) of [`RegistrySys`]).
struct Description<const BUG: u8> {
    marker: Arc<Mutex<Marker>>,
    holds: Mutex<Option<bool>>,
}

impl<const BUG: u8> Description<BUG> {
    fn new(marker: &Arc<Mutex<Marker>>) -> Self {
        Description {
            marker: Arc::clone(marker),
            holds: Mutex::new(None),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Marker, &mut Option<bool>) -> T) -> T {
        let mut marker = self.marker.lock().unwrap_or_else(|e| e.into_inner());
        let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut marker, &mut holds)
    }
}

impl<const BUG: u8> RegistrySys for Description<BUG> {
    const NAME_FIRST: bool = BUG == 1;
    const RELEASE_FIRST: bool = BUG == 2;
    const NO_REGISTRATION: bool = BUG == 3;

    fn try_shared(&self) -> Result<bool> {
        Ok(self.with(|m, holds| {
            if m.exclusive {
                return false;
            }
            m.shared += 1;
            *holds = Some(false);
            true
        }))
    }

    fn try_exclusive(&self) -> Result<bool> {
        Ok(self.with(|m, holds| {
            if m.exclusive || m.shared > 0 {
                return false;
            }
            m.exclusive = true;
            *holds = Some(true);
            true
        }))
    }

    fn release(&self) -> Result<()> {
        self.with(|m, holds| match holds.take() {
            Some(true) => m.exclusive = false,
            Some(false) => m.shared -= 1,
            None => {}
        });
        Ok(())
    }

    fn linked(&self) -> Result<bool> {
        Ok(self.with(|m, _| m.linked))
    }

    fn pause(&self) -> Result<()> {
        thread::yield_now();
        Ok(())
    }
}

/// A remover races an opener; `other_open`: another manager is registered throughout.
fn removal_races_an_opener<const BUG: u8>(other_open: bool) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(PREEMPTIONS);
    builder.check(move || {
        let marker = Arc::new(Mutex::new(Marker {
            shared: usize::from(other_open),
            linked: true,
            ..Marker::default()
        }));
        let remover = {
            let marker = Arc::clone(&marker);
            thread::spawn(move || {
                let sys = Description::<BUG>::new(&marker);
                let deleting = Arc::clone(&marker);
                claim(&sys, "s", move || {
                    deleting.lock().unwrap_or_else(|e| e.into_inner()).linked = false;
                    Ok(())
                })
            })
        };
        let opener = {
            let marker = Arc::clone(&marker);
            thread::spawn(move || {
                let sys = Description::<BUG>::new(&marker);
                register(&sys, "s").is_ok()
            })
        };
        let removed = remover
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        let went_on = opener
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        let linked = marker.lock().unwrap_or_else(|e| e.into_inner()).linked;
        assert!(
            !went_on || linked,
            "an opener went on with a store the remover deleted (remover: {removed:?})"
        );
        if other_open {
            assert!(
                linked,
                "the remover deleted a store another manager had open"
            );
        }
    });
}

/// The registration protocol of registry.rs: no opener goes on with a store `claim` deleted,
/// and a store a manager has open is never deleted by it.
#[test]
fn model_registration_never_cuts_off_an_opener() {
    removal_races_an_opener::<0>(false);
    removal_races_an_opener::<0>(true);
}

/// Planted bugs (a) the opener looks at the name before it registers, (b) the remover lets go
/// before it deletes, (c) the opener does not register: each leaves an opener going on with a
/// deleted store, and the model must say so.
#[test]
fn model_catches_each_planted_registration_bug() {
    lock_conformance::assert_each_caught(
        "an opener went on with a store the remover deleted",
        [
            ("(a)", catch_unwind(|| removal_races_an_opener::<1>(false))),
            ("(b)", catch_unwind(|| removal_races_an_opener::<2>(false))),
            ("(c)", catch_unwind(|| removal_races_an_opener::<3>(false))),
        ],
    );
}
