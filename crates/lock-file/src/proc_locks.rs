//! Who holds `flock(2)` locks on a file, as `/proc/locks` lists them: how
//! [`remove_unused`](crate::FileManager::remove_unused) names the processes that keep a store
//! in use (every open manager holds a shared `flock` on the marker, and a remover an exclusive
//! one).
//!
//! A line of `/proc/locks` reads `ID: [-> ]FLOCK  ADVISORY  READ|WRITE PID MAJ:MIN:INODE START
//! END`, with the device numbers in hex and the inode in decimal; `->` marks a request that is
//! waiting, not a lock held. The kernel gives the pid of the process that took the lock, as
//! the pid namespace of this `/proc` sees it: 0 (or -1) when it cannot be seen there (a process
//! of an outer namespace, or one that exited while a child it forked keeps the description
//! open). This is only ever used to word an error: when `/proc/locks` cannot be read, the error
//! says less, and nothing else changes.

use std::fs::File;

/// The `flock` locks held on one file, by the pid of the process that took each (`None` when
/// it cannot be seen from here).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct FlockHolders {
    /// Shared locks: one per open manager.
    pub(crate) shared: Vec<Option<u32>>,
    /// Exclusive locks: a remover's.
    pub(crate) exclusive: Vec<Option<u32>>,
}

/// How many times [`flock_holders`] reads `/proc/locks` at most to get two reads that agree.
const READS: usize = 6;

/// The `flock` locks held on `file` now, or `None` when `/proc/locks` or the file's identity
/// cannot be read, or no two consecutive reads of it agree.
///
/// `/proc/locks` is no snapshot: a read returns at most a page of lines, and the next read
/// finds its place again by counting lines, so locks taken or dropped anywhere on the system
/// between two reads make a line appear twice or not at all (seen under parallel tests: three
/// shared locks listed for two managers). So the file is read whole until two reads in a row
/// list the same locks on this file.
pub(crate) fn flock_holders(file: &File) -> Option<FlockHolders> {
    let st = rustix::fs::fstat(file).ok()?;
    let dev = (
        rustix::fs::major(st.st_dev),
        rustix::fs::minor(st.st_dev),
        st.st_ino,
    );
    let read = || {
        std::fs::read_to_string("/proc/locks")
            .ok()
            .map(|text| parse(&text, dev))
    };
    let mut last = read()?;
    for _ in 1..READS {
        let now = read()?;
        if now == last {
            return Some(now);
        }
        last = now;
    }
    None
}

/// The `flock` locks in `text` (the contents of `/proc/locks`) held on the file whose device
/// numbers and inode are `file`; lines that are not such locks, or that do not parse, are
/// skipped.
fn parse(text: &str, file: (u32, u32, u64)) -> FlockHolders {
    let mut out = FlockHolders::default();
    for line in text.lines() {
        let mut words = line.split_whitespace().skip(1).peekable();
        if words.peek() == Some(&"->") {
            continue;
        }
        let fields: Vec<&str> = words.take(5).collect();
        let [kind, _advisory, access, pid, place] = fields[..] else {
            continue;
        };
        if kind != "FLOCK" || parse_place(place) != Some(file) {
            continue;
        }
        let pid = pid.parse::<u32>().ok().filter(|&p| p != 0);
        match access {
            "READ" => out.shared.push(pid),
            "WRITE" => out.exclusive.push(pid),
            _ => {}
        }
    }
    out
}

/// `MAJ:MIN:INODE` (hex, hex, decimal) as numbers.
fn parse_place(place: &str) -> Option<(u32, u32, u64)> {
    let mut parts = place.split(':');
    let major = u32::from_str_radix(parts.next()?, 16).ok()?;
    let minor = u32::from_str_radix(parts.next()?, 16).ok()?;
    let inode = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((major, minor, inode))
}

/// The pids of `holders` for a message: `pid 12, 34`, with `N whose pid cannot be seen from
/// here` after them; empty for none.
pub(crate) fn describe(holders: &[Option<u32>]) -> String {
    let mut pids: Vec<u32> = holders.iter().flatten().copied().collect();
    pids.sort_unstable();
    pids.dedup();
    let unseen = holders.iter().filter(|p| p.is_none()).count();
    let mut parts = Vec::new();
    if !pids.is_empty() {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        parts.push(format!("pid {}", pids.join(", ")));
    }
    if unseen > 0 {
        parts.push(format!("{unseen} whose pid cannot be seen from here"));
    }
    parts.join(" and ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
1: FLOCK  ADVISORY  READ 5007 fe:00:10010629 0 EOF
1: -> FLOCK  ADVISORY  WRITE 5100 fe:00:10010629 0 EOF
2: FLOCK  ADVISORY  READ 12 fe:00:10010629 0 EOF
3: OFDLCK ADVISORY  WRITE -1 fe:00:10010629 112 112
4: POSIX  ADVISORY  READ 77 fe:00:10010629 0 EOF
5: FLOCK  ADVISORY  READ 88 fe:01:10010629 0 EOF
6: FLOCK  ADVISORY  READ 99 fe:00:10010630 0 EOF
7: FLOCK  ADVISORY  WRITE 0 fe:00:10010629 0 EOF
8: FLOCK  ADVISORY  READ 4000 103:1a:10010629 0 EOF
garbage
9: FLOCK ADVISORY
";

    #[test]
    fn only_flock_locks_held_on_the_file_count() {
        let holders = parse(SAMPLE, (0xfe, 0, 10_010_629));
        assert_eq!(
            holders,
            FlockHolders {
                shared: vec![Some(5007), Some(12)],
                exclusive: vec![None],
            }
        );
        let other_device = parse(SAMPLE, (0x103, 0x1a, 10_010_629));
        assert_eq!(other_device.shared, vec![Some(4000)]);
        assert_eq!(parse("", (0xfe, 0, 1)), FlockHolders::default());
    }

    #[test]
    fn holders_are_described_by_pid() {
        assert_eq!(describe(&[]), "");
        assert_eq!(describe(&[Some(34), Some(12), Some(34)]), "pid 12, 34");
        assert_eq!(
            describe(&[None, Some(3), None]),
            "pid 3 and 2 whose pid cannot be seen from here"
        );
        assert_eq!(describe(&[None]), "1 whose pid cannot be seen from here");
    }

    #[test]
    fn this_process_s_own_flock_is_listed() {
        let file = tempfile::tempfile().expect("temp file");
        let before = flock_holders(&file).expect("/proc/locks");
        assert_eq!(before, FlockHolders::default());
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockShared).expect("flock");
        let after = flock_holders(&file).expect("/proc/locks");
        assert_eq!(after.shared, vec![Some(std::process::id())]);
        assert!(after.exclusive.is_empty());
    }
}
