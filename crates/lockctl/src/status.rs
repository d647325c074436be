//! `lockctl status`: what a store holds, who waits, and which waits form deadlocks.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockyard::{Cycle, DynManager, Holder, LockState, StoreSpec, find_cycle};
use serde::Serialize;
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use crate::escape::printable;

/// The widest line human output prints.
pub(crate) const WIDTH: usize = 100;

/// A holder or waiter as `status` reports it.
#[derive(Debug, Serialize)]
pub(crate) struct Party {
    pub(crate) pid: Option<u32>,
    pub(crate) host: Option<String>,
    pub(crate) owner: Option<String>,
    /// The command line from /proc, when the party is on this host and still there.
    pub(crate) cmdline: Option<String>,
    /// When it took the lock or started waiting, RFC 3339 UTC.
    pub(crate) since: Option<String>,
    /// Milliseconds since then, at the moment of the snapshot.
    pub(crate) for_ms: Option<u64>,
    pub(crate) dead: bool,
    /// The lock's record of its holder cannot be read: held by nobody known (`dir:`).
    pub(crate) damaged: bool,
}

/// One lock in the report.
#[derive(Debug, Serialize)]
pub(crate) struct LockReport {
    pub(crate) id: u32,
    pub(crate) holder: Option<Party>,
    /// `None` (JSON null) where the backend records no waiters (`dir:`): unknown, not "nobody".
    pub(crate) waiters: Option<Vec<Party>>,
}

/// One member of a deadlock cycle.
#[derive(Debug, Serialize)]
pub(crate) struct Member {
    pub(crate) pid: Option<u32>,
    pub(crate) owner: String,
    pub(crate) cmdline: Option<String>,
    pub(crate) holds: u32,
    pub(crate) waits_for: u32,
}

/// The whole report (`status --json` prints it as is).
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    pub(crate) spec: String,
    pub(crate) capacity: Option<u32>,
    pub(crate) allocated: Option<u32>,
    pub(crate) available: Option<u32>,
    pub(crate) locks: Vec<LockReport>,
    pub(crate) deadlocks: Vec<Vec<Member>>,
    /// Every other manager that has the store open, holding, waiting or idle, in pid order;
    /// `None` (JSON null) where the backend cannot tell (every backend but `shm:`).
    pub(crate) clients: Option<Vec<Party>>,
}

pub(crate) fn this_host() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// The command line of a local process, spaces between arguments, or `None`.
fn cmdline(pid: Option<u32>, host: Option<&str>, here: &str) -> Option<String> {
    let pid = pid?;
    if host.is_some_and(|h| h != here) {
        return None;
    }
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (!text.is_empty()).then(|| text.join(" "))
}

pub(crate) fn party(h: &Holder, now: SystemTime, here: &str) -> Party {
    Party {
        pid: h.pid,
        host: h.host.clone(),
        owner: h.owner.clone(),
        // A dead party's pid may be another process's by now: its command line is not that.
        cmdline: if h.dead {
            None
        } else {
            cmdline(h.pid, h.host.as_deref(), here)
        },
        since: h.since.map(rfc3339),
        for_ms: h
            .since
            .map(|s| now.duration_since(s).unwrap_or(Duration::ZERO).as_millis() as u64),
        dead: h.dead,
        damaged: h.damaged,
    }
}

/// Every distinct cycle in the snapshot, each once, starting at its smallest owner key.
fn cycles(locks: &[LockState]) -> Vec<Cycle> {
    let waiters: BTreeSet<&str> = locks
        .iter()
        .flat_map(|l| l.waiters.iter())
        .filter_map(|w| w.owner.as_deref())
        .collect();
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    for owner in waiters {
        if let Some(cycle) = find_cycle(locks, owner) {
            let mut members: Vec<String> = cycle.0.iter().map(|e| e.owner.clone()).collect();
            members.sort();
            if seen.insert(members) {
                found.push(cycle);
            }
        }
    }
    found
}

/// Reads the store and builds the report.
pub(crate) fn collect(spec: &str, manager: &DynManager) -> lockyard::Result<Status> {
    let capacity = manager.capacity();
    let available = manager.available()?;
    let snapshot = manager.snapshot()?;
    let now = SystemTime::now();
    let here = this_host();
    // DESIGN §8 asks waiters of shm, file, etcd and mem; dirlock records none.
    let records_waiters = !matches!(StoreSpec::parse(spec), Ok(StoreSpec::Dir(_)));
    let locks = snapshot
        .iter()
        .map(|l| LockReport {
            id: l.id.get(),
            holder: l.holder.as_ref().map(|h| party(h, now, &here)),
            waiters: records_waiters
                .then(|| l.waiters.iter().map(|w| party(w, now, &here)).collect()),
        })
        .collect();
    let deadlocks = cycles(&snapshot)
        .into_iter()
        .map(|cycle| {
            cycle
                .0
                .iter()
                .map(|e| Member {
                    pid: e.pid,
                    owner: e.owner.clone(),
                    cmdline: cmdline(e.pid, e.host.as_deref(), &here),
                    holds: e.holds.get(),
                    waits_for: e.waits_for.get(),
                })
                .collect()
        })
        .collect();
    let clients = match manager.clients() {
        Ok(mut clients) => {
            clients.sort_by_key(|c| c.pid);
            Some(clients.iter().map(|c| party(c, now, &here)).collect())
        }
        Err(lockyard::Error::Unsupported(_)) => None,
        Err(e) => return Err(e),
    };
    Ok(Status {
        spec: spec.to_owned(),
        capacity,
        allocated: capacity.zip(available).map(|(c, a)| c.saturating_sub(a)),
        available,
        locks,
        deadlocks,
        clients,
    })
}

/// How many processes `parties` are, and `pid 12 (podman ps), pid 34 (sleep 100)`: each
/// process once, by its program and first argument, at most `most` of them, then how many more.
/// A party without a pid counts as a process of its own.
pub(crate) fn processes(parties: &[&Party], most: usize) -> (usize, String) {
    let here = this_host();
    let mut seen = BTreeSet::new();
    let mut named = Vec::new();
    for p in parties {
        // Parties without a pid (another pid namespace) cannot be told to share a process.
        let unknown = p.pid.is_none().then_some(p.owner.as_deref());
        if !seen.insert((p.pid, p.host.as_deref(), unknown)) {
            continue;
        }
        let cmd = p.cmdline.as_deref().map(short_command);
        named.push(who(p.pid, p.host.as_deref(), cmd.as_deref(), p.dead, &here));
    }
    let count = named.len();
    named.truncate(most);
    let mut text = named.join(", ");
    if count > most {
        let _ = write!(text, " and {} more", count - most);
    }
    (count, text)
}

/// `2026-11-30T08:21:19.042Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Howard Hinnant's days-to-civil: the proleptic Gregorian date of a day count since 1970.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `3h02m`, `1m05s`, `4.2s`, `350ms`.
pub(crate) fn short_duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{}.{}s", ms / 1_000, ms % 1_000 / 100),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms / 1_000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// `text` cut to at most `width` terminal columns, ending in `...` when it was cut.
fn cut(text: &str, width: usize) -> String {
    if columns(text) <= width {
        return text.to_owned();
    }
    let room = width.saturating_sub(3);
    let mut s = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > room {
            break;
        }
        used += w;
        s.push(c);
    }
    s.push_str("...");
    s
}

/// The terminal columns `text` takes: a wide character (CJK, most emoji) takes two.
fn columns(text: &str) -> usize {
    text.width()
}

/// `pid 4711 (backup.sh)`; `pid 4102 (?)` for a dead party, whose command line is unknown.
fn who(
    pid: Option<u32>,
    host: Option<&str>,
    cmdline: Option<&str>,
    dead: bool,
    here: &str,
) -> String {
    let mut s = match pid {
        Some(pid) => format!("pid {pid}"),
        None => "pid ?".to_owned(),
    };
    if let Some(host) = host.filter(|h| *h != here) {
        let _ = write!(s, "@{}", printable(host));
    }
    if let Some(cmd) = cmdline {
        let _ = write!(s, " ({})", printable(cmd));
    } else if dead {
        s.push_str(" (?)");
    }
    s
}

fn clock(since: Option<&str>) -> String {
    // `08:21:19` of an RFC 3339 stamp: the date is noise for locks held minutes.
    since.and_then(|s| s.get(11..19)).unwrap_or("?").to_owned()
}

/// The human report, every line at most [`WIDTH`] columns.
pub(crate) fn render(status: &Status) -> String {
    let here = this_host();
    let mut out = String::new();
    let num = |n: Option<u32>| n.map_or("-".to_owned(), |n| n.to_string());
    let _ = writeln!(
        out,
        "{}",
        cut(
            &format!(
                "{}: capacity {}, allocated {}, available {}",
                printable(&status.spec),
                num(status.capacity),
                num(status.allocated),
                num(status.available)
            ),
            WIDTH
        )
    );
    // The managers that have the store open and neither hold nor wait (a holder or waiter is in
    // the table below): a service that keeps the store open between requests, say.
    let busy: BTreeSet<&str> = status
        .locks
        .iter()
        .flat_map(|l| l.holder.iter().chain(l.waiters.iter().flatten()))
        .filter_map(|p| p.owner.as_deref())
        .collect();
    let idle: Vec<&Party> = status
        .clients
        .iter()
        .flatten()
        .filter(|c| c.owner.as_deref().is_none_or(|o| !busy.contains(o)))
        .collect();
    if !idle.is_empty() {
        let line = format!("also open in {}", processes(&idle, 8).1);
        let _ = writeln!(out, "{}", cut(&line, WIDTH));
    }
    if status.locks.is_empty() {
        let _ = writeln!(out, "no lock is held or waited for");
    } else {
        let _ = writeln!(out, "LOCK     SINCE     FOR      STATE  WHO");
        for lock in &status.locks {
            let mut rows = Vec::new();
            match &lock.holder {
                Some(h) => {
                    rows.push((lock.id.to_string(), h, if h.dead { "dead" } else { "held" }))
                }
                None => {
                    let _ = writeln!(out, "{:<8} {:<9} {:<8} {:<6} -", lock.id, "", "", "free");
                }
            }
            for w in lock.waiters.iter().flatten() {
                rows.push((String::new(), w, "waits"));
            }
            for (id, p, state) in rows {
                let line = format!(
                    "{:<8} {:<9} {:<8} {:<6} {}",
                    id,
                    clock(p.since.as_deref()),
                    p.for_ms.map_or("?".to_owned(), short_duration),
                    state,
                    if p.damaged {
                        "? (its record is damaged; dirlock's break_lock frees it)".to_owned()
                    } else {
                        who(
                            p.pid,
                            p.host.as_deref(),
                            p.cmdline.as_deref(),
                            p.dead,
                            &here,
                        )
                    }
                );
                let _ = writeln!(out, "{}", cut(&line, WIDTH));
            }
        }
    }
    if !status.deadlocks.is_empty() {
        let _ = writeln!(
            out,
            "DEADLOCKS (each lasts until a member with detection on gives up, or one times out or ends)"
        );
    }
    for cycle in &status.deadlocks {
        let _ = writeln!(out, "{}", cut(&deadlock_line(cycle, &here), WIDTH));
    }
    out
}

/// A command line as a deadlock line names it: the program's file name and its first argument
/// (`/usr/bin/podman run --rm alpine` is `podman run`), so a whole cycle fits one line.
fn short_command(cmdline: &str) -> String {
    let mut words = cmdline.split(' ');
    let program = words.next().unwrap_or_default();
    let program = program.rsplit('/').next().unwrap_or(program);
    match words.next() {
        Some(arg) => format!("{program} {}", cut(arg, 16)),
        None => program.to_owned(),
    }
}

/// `pid 123 (podman run) holds 5 and waits for 7, held by pid 456 (podman rm), which
/// waits for 5`.
fn deadlock_line(cycle: &[Member], here: &str) -> String {
    let line = |program_only: bool| {
        let name = |m: &Member| {
            let cmd = m.cmdline.as_deref().map(|c| {
                let short = short_command(c);
                match short.split_once(' ') {
                    Some((program, _)) if program_only => program.to_owned(),
                    _ => short,
                }
            });
            who(m.pid, None, cmd.as_deref(), false, here)
        };
        let mut line = String::new();
        for (i, m) in cycle.iter().enumerate() {
            if i == 0 {
                let _ = write!(
                    line,
                    "{} holds {} and waits for {}",
                    name(m),
                    m.holds,
                    m.waits_for
                );
            } else {
                let _ = write!(
                    line,
                    ", held by {}, which waits for {}",
                    name(m),
                    m.waits_for
                );
            }
        }
        line
    };
    // The program and its first argument where the whole cycle fits, the program alone where
    // that does not; a cycle too long even then is cut at the width by the caller.
    let full = line(false);
    if columns(&full) <= WIDTH {
        full
    } else {
        line(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_796_026_879_042);
        assert_eq!(rfc3339(t), "2026-11-30T08:21:19.042Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&rfc3339(leap)[..10], "2000-02-29");
    }

    #[test]
    fn durations() {
        assert_eq!(short_duration(350), "350ms");
        assert_eq!(short_duration(4_200), "4.2s");
        assert_eq!(short_duration(65_000), "1m05s");
        assert_eq!(short_duration(3 * 3_600_000 + 120_000), "3h02m");
    }

    #[test]
    fn long_lines_are_cut_to_the_width() {
        let long = "x".repeat(300);
        assert_eq!(cut(&long, WIDTH).chars().count(), WIDTH);
        assert_eq!(cut("short", WIDTH), "short");
    }

    #[test]
    fn wide_characters_count_as_two_columns() {
        let wide = "\u{8a9e}".repeat(80);
        let line = cut(&wide, WIDTH);
        assert!(columns(&line) <= WIDTH, "{} columns", columns(&line));
        assert!(line.ends_with("..."));
        assert_eq!(cut(&"\u{8a9e}".repeat(50), WIDTH), "\u{8a9e}".repeat(50));
    }

    /// Each process once (two managers of pid 11 are one process), the first `most` named by
    /// program and first argument, the rest counted.
    #[test]
    fn processes_are_named_once_and_the_rest_counted() {
        let here = this_host();
        let parties: Vec<Party> = [11, 11, 12, 13, 14, 15]
            .into_iter()
            .map(|pid| {
                let mut p = party(
                    &Holder::with_pid(pid).host(here.clone()),
                    SystemTime::now(),
                    &here,
                );
                p.cmdline = Some(format!("/usr/bin/podman run --name c{pid}"));
                p
            })
            .collect();
        let refs: Vec<&Party> = parties.iter().collect();
        assert_eq!(
            processes(&refs, 3),
            (
                5,
                "pid 11 (podman run), pid 12 (podman run), pid 13 (podman run) and 2 more"
                    .to_owned()
            )
        );
        assert_eq!(processes(&refs[..1], 3).0, 1);
        let mut unknown: Vec<Party> = (0..2)
            .map(|i| {
                party(
                    &Holder::default().owner(format!("o{i}")),
                    SystemTime::now(),
                    &here,
                )
            })
            .collect();
        unknown[0].host = Some(here.clone());
        unknown[1].host = Some(here.clone());
        let refs: Vec<&Party> = unknown.iter().collect();
        assert_eq!(processes(&refs, 3), (2, "pid ?, pid ?".to_owned()));
    }

    #[test]
    fn a_deadlock_reads_as_one_sentence() {
        let cycle = [
            Member {
                pid: Some(123),
                owner: "a".into(),
                cmdline: Some("/usr/bin/podman run --rm alpine".into()),
                holds: 5,
                waits_for: 7,
            },
            Member {
                pid: Some(456),
                owner: "b".into(),
                cmdline: Some("podman rm".into()),
                holds: 7,
                waits_for: 5,
            },
        ];
        assert_eq!(
            deadlock_line(&cycle, "here"),
            "pid 123 (podman run) holds 5 and waits for 7, held by pid 456 (podman rm), which \
             waits for 5"
        );
    }
}
