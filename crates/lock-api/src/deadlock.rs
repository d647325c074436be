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
pub fn find_cycle(locks: &[LockState], me: &str) -> Option<Cycle> {
    // Edges out of an owner: (lock it waits for, the live holder of that lock).
    let edges = |owner: &str| -> Vec<(LockId, &Holder)> {
        locks
            .iter()
            .filter(|l| l.waiters.iter().any(|w| key(w) == Some(owner)))
            .filter_map(|l| {
                let holder = l.holder.as_ref()?;
                let hk = key(holder)?;
                (!holder.dead && hk != owner).then_some((l.id, holder))
            })
            .collect()
    };
    // Depth-first search for a path back to `me`; the graph is small (one node per waiting
    // owner), so a plain recursive search with a visited set is enough.
    let mut path: Vec<(String, LockId, Holder)> = Vec::new();
    let mut visited: Vec<String> = Vec::new();
    if !dfs(me, me, &edges, &mut path, &mut visited) {
        return None;
    }
    // path[i] = (owner_i, the lock owner_i waits for, owner_{i+1} as holder). Owner 0 is `me`.
    let n = path.len();
    let me_holder = locks
        .iter()
        .flat_map(|l| l.waiters.iter())
        .find(|w| key(w) == Some(me))
        .cloned()
        .unwrap_or_default();
    let mut cycle = Vec::with_capacity(n);
    for i in 0..n {
        let (owner, waits_for, _) = &path[i];
        let holds = path[(i + n - 1) % n].1;
        let who = if i == 0 { &me_holder } else { &path[i - 1].2 };
        cycle.push(WaitEdge {
            pid: who.pid,
            host: who.host.clone(),
            owner: owner.clone(),
            holds,
            waits_for: *waits_for,
        });
    }
    Some(Cycle(cycle))
}

fn dfs<'a, F>(
    me: &str,
    at: &str,
    edges: &F,
    path: &mut Vec<(String, LockId, Holder)>,
    visited: &mut Vec<String>,
) -> bool
where
    F: Fn(&str) -> Vec<(LockId, &'a Holder)>,
{
    visited.push(at.to_owned());
    for (lock, holder) in edges(at) {
        let Some(next) = key(holder) else { continue };
        path.push((at.to_owned(), lock, holder.clone()));
        if next == me {
            return true;
        }
        if !visited.iter().any(|v| v == next) && dfs(me, next, edges, path, visited) {
            return true;
        }
        path.pop();
    }
    false
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

    #[test]
    fn a_withdrawn_waiter_breaks_the_cycle() {
        let locks = [
            lock(5, Some(who("a", 1)), vec![]),
            lock(7, Some(who("b", 2)), vec![who("a", 1)]),
        ];
        assert_eq!(find_cycle(&locks, "a"), None);
    }
}
