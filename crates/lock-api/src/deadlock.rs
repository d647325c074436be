//! The wait-for graph: who waits for a lock held by whom, and the cycle a waiter closes.
//!
//! Nodes are owners (an open manager of a table backend, a handle of etcd), told apart by
//! [`Holder::owner`]. Owner A has an edge to owner B for lock L when A waits for L and B holds it.
//! A backend's blocked `lock()` that has waited past its deadlock timeout takes the backend's
//! detection lock (so checks are serialised across processes), reads a snapshot, and calls
//! [`find_cycle`] with its own owner key. If a cycle comes back, that waiter is the victim: it
//! withdraws its waiter record before it releases the detection lock, so the next detector sees
//! no cycle, and returns [`Error::Deadlock`](crate::Error::Deadlock).
//!
//! A holder known dead is no edge: its lock is about to be taken over (`OwnerDied`), so it cannot
//! be part of a deadlock. An owner waiting for a lock it holds itself is no edge either: with
//! ownership per manager, another thread of that owner may release it.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::{Holder, LockId, LockState};

/// One member of a deadlock cycle: an owner, the lock it holds that the previous member waits
/// for, and the lock it waits for, held by the next member.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WaitEdge {
    /// The owner's process id, where known.
    pub pid: Option<u32>,
    /// The owner's host, for backends that span hosts.
    pub host: Option<String>,
    /// The owner key (see [`Holder::owner`]).
    pub owner: String,
    /// The lock this owner holds that the previous member of the cycle waits for.
    pub holds: LockId,
    /// The lock this owner waits for, held by the next member of the cycle.
    pub waits_for: LockId,
}

impl fmt::Display for WaitEdge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid}")?,
            None => write!(f, "owner {}", self.owner)?,
        }
        if let Some(host) = &self.host {
            write!(f, " on {host}")?;
        }
        write!(f, " holds {} and waits for {}", self.holds, self.waits_for)
    }
}

/// A deadlock cycle, shown as `pid 1 holds 5 and waits for 7; pid 2 holds 7 and waits for 5`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle(pub Vec<WaitEdge>);

impl fmt::Display for Cycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, edge) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{edge}")?;
        }
        Ok(())
    }
}

fn key(h: &Holder) -> Option<&str> {
    h.owner.as_deref()
}

/// The cycle of the wait-for graph in `locks` that passes through owner `me`, starting at `me`,
/// or `None`. Every member of the returned cycle is live and waiting.
///
/// Linear in the size of `locks` and iterative: a snapshot comes from the store, which other
/// processes write (for etcd, other hosts), so a chain of waiters as long as the store holds
/// must neither exhaust the caller's stack nor take time in its square.
pub fn find_cycle(locks: &[LockState], me: &str) -> Option<Cycle> {
    // Edges out of each owner, in lock order: (lock it waits for, the live holder of that lock,
    // the holder's key).
    let mut edges: HashMap<&str, Vec<(LockId, &Holder, &str)>> = HashMap::new();
    for l in locks {
        let Some(holder) = l.holder.as_ref().filter(|h| !h.dead) else {
            continue;
        };
        let Some(hk) = key(holder) else { continue };
        for waiter in l.waiters.iter().filter_map(key).filter(|w| *w != hk) {
            let out = edges.entry(waiter).or_default();
            // One edge per lock, however many of the owner's threads wait for it.
            if out.last().is_none_or(|(id, _, _)| *id != l.id) {
                out.push((l.id, holder, hk));
            }
        }
    }
    // Depth-first search for a path back to `me`. `path[i]` = (owner_i, the lock owner_i waits
    // for, owner_{i+1} as holder), owner 0 being `me`; `stack[i]` = (owner_i, its next edge).
    let mut path: Vec<(&str, LockId, &Holder)> = Vec::new();
    let mut stack: Vec<(&str, usize)> = vec![(me, 0)];
    let mut visited: HashSet<&str> = HashSet::from([me]);
    let mut found = false;
    while let Some(top) = stack.last_mut() {
        let (at, next_edge) = *top;
        let Some(&(lock, holder, next)) = edges.get(at).and_then(|out| out.get(next_edge)) else {
            // Every edge out of `at` tried: back to the owner before it.
            stack.pop();
            path.pop();
            continue;
        };
        top.1 += 1;
        if next == me {
            path.push((at, lock, holder));
            found = true;
            break;
        }
        if visited.insert(next) {
            path.push((at, lock, holder));
            stack.push((next, 0));
        }
    }
    if !found {
        return None;
    }
    let n = path.len();
    let me_holder = locks
        .iter()
        .flat_map(|l| l.waiters.iter())
        .find(|w| key(w) == Some(me))
        .cloned()
        .unwrap_or_default();
    let mut cycle = Vec::with_capacity(n);
    for i in 0..n {
        let (owner, waits_for, _) = path[i];
        let holds = path[(i + n - 1) % n].1;
        let who = if i == 0 { &me_holder } else { path[i - 1].2 };
        cycle.push(WaitEdge {
            pid: who.pid,
            host: who.host.clone(),
            owner: owner.to_owned(),
            holds,
            waits_for,
        });
    }
    Some(Cycle(cycle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(owner: &str, pid: u32) -> Holder {
        Holder::with_pid(pid).owner(owner)
    }

    fn lock(id: u32, holder: Option<Holder>, waiters: Vec<Holder>) -> LockState {
        LockState::new(LockId(id), holder, waiters)
    }

    #[test]
    fn two_cycle_from_either_side() {
        let locks = [
            lock(5, Some(who("a", 1)), vec![who("b", 2)]),
            lock(7, Some(who("b", 2)), vec![who("a", 1)]),
        ];
        let cycle = find_cycle(&locks, "a").unwrap();
        assert_eq!(
            cycle.to_string(),
            "pid 1 holds 5 and waits for 7; pid 2 holds 7 and waits for 5"
        );
        let cycle = find_cycle(&locks, "b").unwrap();
        assert_eq!(
            cycle.to_string(),
            "pid 2 holds 7 and waits for 5; pid 1 holds 5 and waits for 7"
        );
    }

    #[test]
    fn three_cycle() {
        let locks = [
            lock(1, Some(who("a", 1)), vec![who("c", 3)]),
            lock(2, Some(who("b", 2)), vec![who("a", 1)]),
            lock(3, Some(who("c", 3)), vec![who("b", 2)]),
        ];
        let cycle = find_cycle(&locks, "a").unwrap();
        assert_eq!(cycle.0.len(), 3);
        assert_eq!(
            cycle.to_string(),
            "pid 1 holds 1 and waits for 2; pid 2 holds 2 and waits for 3; pid 3 holds 3 and waits for 1"
        );
    }

    #[test]
    fn a_chain_is_no_cycle() {
        let locks = [
            lock(1, Some(who("a", 1)), vec![who("b", 2)]),
            lock(2, Some(who("b", 2)), vec![who("c", 3)]),
        ];
        for me in ["a", "b", "c"] {
            assert_eq!(find_cycle(&locks, me), None, "{me}");
        }
    }

    #[test]
    fn a_cycle_elsewhere_is_not_mine() {
        let locks = [
            lock(1, Some(who("a", 1)), vec![who("b", 2)]),
            lock(2, Some(who("b", 2)), vec![who("a", 1), who("c", 3)]),
        ];
        assert_eq!(find_cycle(&locks, "c"), None);
        assert!(find_cycle(&locks, "a").is_some());
    }

    #[test]
    fn a_dead_holder_breaks_the_cycle() {
        let locks = [
            lock(5, Some(who("a", 1)), vec![who("b", 2)]),
            lock(7, Some(who("b", 2).dead(true)), vec![who("a", 1)]),
        ];
        assert_eq!(find_cycle(&locks, "a"), None);
    }

    #[test]
    fn waiting_for_ones_own_lock_is_no_cycle() {
        let locks = [lock(5, Some(who("a", 1)), vec![who("a", 1)])];
        assert_eq!(find_cycle(&locks, "a"), None);
    }

    /// A cycle through 20,000 owners, each waiting for the next one's lock, on a thread with a
    /// 256 KiB stack: the recursive search overflowed it (and scanned every lock at every
    /// step); a chain as long, with its last link missing, is no cycle.
    #[test]
    fn a_long_chain_is_searched_without_recursion() {
        const N: u32 = 20_000;
        let owner = |i: u32| format!("o{i}");
        let chain = |closed: bool| -> Vec<LockState> {
            (0..N)
                .map(|i| {
                    let next = (i + 1) % N;
                    let waiters = if closed || next != 0 {
                        vec![who(&owner(i), i)]
                    } else {
                        vec![]
                    };
                    // Lock i+1 is held by owner i+1 and waited for by owner i.
                    lock(next, Some(who(&owner(next), next)), waiters)
                })
                .collect()
        };
        let (closed, open) = (chain(true), chain(false));
        let searched = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let cycle = find_cycle(&closed, "o0").map(|c| c.0.len());
                (cycle, find_cycle(&open, "o0"))
            })
            .expect("thread")
            .join()
            .expect("the search");
        assert_eq!(searched, (Some(N as usize), None));
    }

    #[test]
    fn a_withdrawn_waiter_breaks_the_cycle() {
        let locks = [
            lock(5, Some(who("a", 1)), vec![]),
            lock(7, Some(who("b", 2)), vec![who("a", 1)]),
        ];
        assert_eq!(find_cycle(&locks, "a"), None);
    }
}
