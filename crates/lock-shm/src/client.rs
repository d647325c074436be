//! The client table: one slot per open manager, held by an OFD lock, named in owner tokens.
//!
//! A manager claims the lowest slot whose byte it can OFD-lock (`F_OFD_SETLK` on the first byte
//! of the slot's record), bumps the slot's generation and writes its pid. The kernel drops the
//! OFD lock when the last descriptor of that open file description closes, which happens when
//! the process dies however it dies, so "slot byte unlocked" means "owner gone". The owner token
//! in lock words is `generation << SLOT_BITS | slot`; a token whose generation is not the slot's
//! current one belongs to an earlier, dead, owner of the slot.
//!
//! Slot record (16 bytes): `u32` generation, `u32` pid, 8 reserved bytes.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use lock_api::{Error, Result};

use crate::layout::{CLIENT_SLOTS, Layout};
use crate::segment::Segment;

/// Bits of a token that name the slot.
pub(crate) const SLOT_BITS: u32 = 10;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;
/// The largest generation: tokens have 31 bits, the slot takes 10.
pub(crate) const GEN_MAX: u32 = (1 << (31 - SLOT_BITS)) - 1;
const _: () = assert!(CLIENT_SLOTS == 1 << SLOT_BITS);

/// Offset of the pid within a slot record.
const PID: usize = 4;

/// The owner token of `slot` at `generation`.
pub(crate) fn token(slot: u32, generation: u32) -> u32 {
    (generation << SLOT_BITS) | slot
}

/// The slot and generation of a token.
pub(crate) fn decode(token: u32) -> (u32, u32) {
    (token & SLOT_MASK, token >> SLOT_BITS)
}

/// The generation after `g`, in `1..=GEN_MAX` whatever `g` is.
fn next_generation(g: u32) -> u32 {
    (g % GEN_MAX) + 1
}

/// Claims the lowest free client slot for this open file description; returns slot and
/// generation.
///
/// # Errors
///
/// `Io` when every slot is in use or `fcntl(2)` fails.
pub(crate) fn claim(seg: &Segment, layout: &Layout) -> Result<(u32, u32)> {
    for slot in 0..CLIENT_SLOTS {
        let off = layout.slot_offset(slot);
        if seg.ofd_try_lock(off)? {
            let generation_word = seg.u32(off)?;
            let generation = next_generation(generation_word.load(Acquire));
            generation_word.store(generation, Release);
            seg.u32(off + PID)?.store(std::process::id(), Release);
            return Ok((slot, generation));
        }
    }
    Err(Error::io(
        "claim client slot",
        seg.path(),
        std::io::Error::other(format!(
            "all {CLIENT_SLOTS} client slots are held by open managers"
        )),
    ))
}

/// Whether the owner named by `owner` (a token other than this manager's) is gone.
///
/// The OFD lock is probed before the generation is read: a slot byte that is unlocked proves
/// the owner dead (a live owner holds it all its life), and a generation that moved on proves it
/// too, since only a slot's current holder changes it. A new owner caught between its lock and
/// its generation bump looks alive; the next probe sees the truth.
pub(crate) fn owner_dead(seg: &Segment, layout: &Layout, my_slot: u32, owner: u32) -> Result<bool> {
    let (slot, generation) = decode(owner);
    if generation == 0 {
        // No manager ever writes such a token: garbage in the word. Taking it over repairs it.
        return Ok(true);
    }
    let off = layout.slot_offset(slot);
    if slot == my_slot {
        // Our own description's lock is invisible to F_OFD_GETLK; the generation decides.
        return Ok(seg.u32(off)?.load(Acquire) != generation);
    }
    if !seg.ofd_is_locked(off)? {
        return Ok(true);
    }
    Ok(seg.u32(off)?.load(Acquire) != generation)
}

/// The pid recorded by the owner of `token`'s slot, when that slot still has that generation.
pub(crate) fn pid_of(seg: &Segment, layout: &Layout, token: u32) -> Result<Option<u32>> {
    let (slot, generation) = decode(token);
    let off = layout.slot_offset(slot);
    let current = seg.u32(off)?.load(Acquire);
    let pid = seg.u32(off + PID)?.load(Relaxed);
    Ok((current == generation && pid != 0).then_some(pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_never_zero() {
        for slot in [0, 1, CLIENT_SLOTS - 1] {
            for generation in [1, 2, GEN_MAX] {
                let t = token(slot, generation);
                assert_ne!(t, 0);
                assert_eq!(t & crate::lockword::WAITERS, 0);
                assert_eq!(decode(t), (slot, generation));
            }
        }
    }

    #[test]
    fn generations_cycle_through_nonzero_values() {
        assert_eq!(next_generation(0), 1);
        assert_eq!(next_generation(1), 2);
        assert_eq!(next_generation(GEN_MAX), 1);
        assert_eq!(next_generation(u32::MAX), (u32::MAX % GEN_MAX) + 1);
    }
}
