//! Store specs: the one string form that names any lockyard store, and its parser.
//!
//! The grammar is documented in `docs/store-specs.md`; this module is its only implementation.
//! Parsing does no I/O: a spec that parses may still name a store that does not exist.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::{Error, Result};

/// The longest shm or mem name accepted (`NAME_MAX` on Linux).
pub const MAX_NAME_LEN: usize = 255;

/// A parsed store spec: which backend, and which store of it.
///
/// ```
/// use lock_api::StoreSpec;
///
/// let spec: StoreSpec = "shm:podman-locks".parse()?;
/// assert_eq!(spec, StoreSpec::Shm("podman-locks".into()));
/// assert_eq!(spec.to_string(), "shm:podman-locks");
/// # Ok::<(), lock_api::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreSpec {
    /// `shm:NAME`: the lock-shm segment `/dev/shm/NAME`.
    Shm(String),
    /// `file:PATH`: the lock-file store directory `PATH` (absolute or relative).
    File(PathBuf),
    /// `mem:NAME`: the in-process lock-mem table registered as `NAME`.
    Mem(String),
    /// `dir:PATH`: the dirlock table at `PATH` (a plain directory is a table of one lock, id 0).
    Dir(PathBuf),
    /// `etcd://HOST:PORT[,HOST:PORT...]/PREFIX/TABLE[?ttl=D]`: a lock-etcd table.
    Etcd(EtcdSpec),
}

/// The parts of an `etcd://` spec.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdSpec {
    /// The cluster's client endpoints, `HOST:PORT` each, in the order given.
    pub endpoints: Vec<String>,
    /// The key prefix every table of this deployment lives under (may contain `/`).
    pub prefix: String,
    /// The table's name under the prefix.
    pub table: String,
    /// The lease TTL, when the spec sets one (`?ttl=10s`).
    pub ttl: Option<Duration>,
}

impl StoreSpec {
    /// The scheme of this spec: `shm`, `file`, `mem`, `dir` or `etcd`.
    pub fn scheme(&self) -> &'static str {
        match self {
            StoreSpec::Shm(_) => "shm",
            StoreSpec::File(_) => "file",
            StoreSpec::Mem(_) => "mem",
            StoreSpec::Dir(_) => "dir",
            StoreSpec::Etcd(_) => "etcd",
        }
    }

    /// Parses a spec. The same as `spec.parse::<StoreSpec>()`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming what is wrong: a missing or unknown scheme, an empty
    /// name, a NUL byte or another control character, a name, path or key segment that starts
    /// or ends with whitespace, a `..` component, a `/` in a shm name, a relative etcd path, a
    /// bad host or port, an unknown option or a bad TTL.
    pub fn parse(spec: &str) -> Result<StoreSpec> {
        let bad = |why: &str| Error::invalid(format!("store spec {spec:?}: {why}"));
        if spec.contains('\0') {
            return Err(bad("contains a NUL byte"));
        }
        // Tabs, newlines and escapes come from a badly quoted configuration line, never from a
        // name someone meant: no backend's names need them, and they hide in messages and
        // listings.
        if let Some((at, c)) = spec.char_indices().find(|(_, c)| c.is_control()) {
            return Err(bad(&format!(
                "contains the control character {c:?} (U+{:04X}) at byte {at}",
                u32::from(c)
            )));
        }
        if let Some(rest) = spec.strip_prefix("etcd://") {
            return parse_etcd(rest)
                .map(StoreSpec::Etcd)
                .map_err(|why| bad(&why));
        }
        let Some((scheme, rest)) = spec.split_once(':') else {
            return Err(bad(
                "no scheme (write shm:NAME, file:PATH, mem:NAME, dir:PATH or etcd://...)",
            ));
        };
        match scheme {
            "shm" => parse_name("shm", rest, true)
                .map(StoreSpec::Shm)
                .map_err(|why| bad(&why)),
            "mem" => parse_name("mem", rest, false)
                .map(StoreSpec::Mem)
                .map_err(|why| bad(&why)),
            "file" => parse_path(rest)
                .map(StoreSpec::File)
                .map_err(|why| bad(&why)),
            "dir" => parse_path(rest)
                .map(StoreSpec::Dir)
                .map_err(|why| bad(&why)),
            "etcd" => Err(bad(
                "an etcd spec starts with etcd:// (etcd://HOST:PORT/PREFIX/TABLE)",
            )),
            "" => Err(bad("empty scheme")),
            other => Err(bad(&format!(
                "unknown scheme {other:?} (known: shm, file, mem, dir, etcd)"
            ))),
        }
    }
}

impl FromStr for StoreSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<StoreSpec> {
        StoreSpec::parse(s)
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Shm(name) => write!(f, "shm:{name}"),
            StoreSpec::Mem(name) => write!(f, "mem:{name}"),
            StoreSpec::File(path) => write!(f, "file:{}", path.display()),
            StoreSpec::Dir(path) => write!(f, "dir:{}", path.display()),
            StoreSpec::Etcd(etcd) => {
                write!(
                    f,
                    "etcd://{}/{}/{}",
                    etcd.endpoints.join(","),
                    etcd.prefix,
                    etcd.table
                )?;
                if let Some(ttl) = etcd.ttl {
                    write!(f, "?ttl={}", format_duration(ttl))?;
                }
                Ok(())
            }
        }
    }
}

/// Refuses `text`, the `what` of a spec, when it starts or ends with whitespace: `shm: x` is a
/// typo for `shm:x`, not a segment named " x", and such names are all but invisible in
/// listings.
fn check_ends(what: &str, text: &str) -> std::result::Result<(), String> {
    if text.starts_with(char::is_whitespace) {
        return Err(format!("{what} {text:?} starts with whitespace"));
    }
    if text.ends_with(char::is_whitespace) {
        return Err(format!("{what} {text:?} ends with whitespace"));
    }
    Ok(())
}

/// A shm or mem name: non-empty, at most [`MAX_NAME_LEN`] bytes, not `.` or `..`, not starting
/// or ending with whitespace, and (for shm, a file name in /dev/shm) without `/`. Control
/// characters were refused with the whole spec.
fn parse_name(scheme: &str, name: &str, file_name: bool) -> std::result::Result<String, String> {
    if name.is_empty() {
        return Err(format!("empty {scheme} name"));
    }
    check_ends(&format!("{scheme} name"), name)?;
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{scheme} name is {} bytes, longer than {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{scheme} name {name:?} is not a name"));
    }
    if file_name && name.contains('/') {
        return Err(format!("{scheme} name contains '/'"));
    }
    Ok(name.to_owned())
}

/// A file or dir path: non-empty, not starting or ending with whitespace (spaces inside stay
/// legal), and without a `..` component (a spec never climbs out of the directory it names, so
/// a spec taken from configuration cannot be aimed elsewhere by `..`).
fn parse_path(path: &str) -> std::result::Result<PathBuf, String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    check_ends("path", path)?;
    let path = Path::new(path);
    if path.components().any(|c| c == Component::ParentDir) {
        return Err("path contains a '..' component".into());
    }
    Ok(path.to_path_buf())
}

fn parse_etcd(rest: &str) -> std::result::Result<EtcdSpec, String> {
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let Some((hosts, path)) = rest.split_once('/') else {
        return Err("no key path: write etcd://HOST:PORT/PREFIX/TABLE".into());
    };
    if hosts.is_empty() {
        return Err("no endpoint before the path".into());
    }
    let endpoints = hosts
        .split(',')
        .map(parse_endpoint)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let segments: Vec<&str> = path.split('/').collect();
    if segments.len() < 2 {
        return Err(format!(
            "key path /{path} needs a prefix and a table: /PREFIX/TABLE"
        ));
    }
    if let Some(empty) = segments.iter().position(|s| s.is_empty()) {
        return Err(if empty == 0 {
            "relative etcd path: the key path must be /PREFIX/TABLE, with no empty segment".into()
        } else {
            format!("key path /{path} has an empty segment")
        });
    }
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return Err(format!("key path /{path} has a '.' or '..' segment"));
    }
    for segment in &segments {
        check_ends("key segment", segment)?;
    }
    let (table, prefix) = segments.split_last().ok_or("empty key path")?;
    let mut spec = EtcdSpec {
        endpoints,
        prefix: prefix.join("/"),
        table: (*table).to_owned(),
        ttl: None,
    };
    for option in query.into_iter().flat_map(|q| q.split('&')) {
        match option.split_once('=') {
            Some(("ttl", value)) => {
                let ttl = parse_duration(value).map_err(|e| format!("bad ttl: {e}"))?;
                if ttl.is_zero() {
                    return Err("bad ttl: zero".into());
                }
                // Given twice, one of the two is a mistake, and which one wins would be a guess.
                if spec.ttl.replace(ttl).is_some() {
                    return Err("option ttl given twice".into());
                }
            }
            _ => return Err(format!("unknown option {option:?} (known: ttl)")),
        }
    }
    Ok(spec)
}

/// One `HOST:PORT` endpoint, kept as written once [`check_host`] accepts its host.
fn parse_endpoint(endpoint: &str) -> std::result::Result<String, String> {
    // A bracketed IPv6 address has colons of its own: the port follows the `]`.
    let split = match endpoint.find(']') {
        Some(end) if endpoint.starts_with('[') => endpoint[end + 1..]
            .strip_prefix(':')
            .map(|port| (&endpoint[..=end], port)),
        _ => endpoint.rsplit_once(':'),
    };
    let Some((host, port)) = split else {
        return Err(format!("endpoint {endpoint:?} has no port (HOST:PORT)"));
    };
    if host.is_empty() {
        return Err(format!("endpoint {endpoint:?} has an empty host"));
    }
    check_host(host).map_err(|why| {
        format!(
            "endpoint {endpoint:?} has a bad host: {why} (a host is a DNS name of letters, \
             digits, '-', '_' and '.', an IPv4 address, or an IPv6 address in brackets)"
        )
    })?;
    // Digits only: `u16::from_str` also takes a leading `+`, which no URL port has.
    let number = port
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| port.parse::<u16>().ok())
        .flatten();
    match number {
        Some(1..) => Ok(endpoint.to_owned()),
        _ => Err(format!(
            "endpoint {endpoint:?}: bad port {port:?} (1-65535)"
        )),
    }
}

/// The longest DNS name, in bytes, without its final dot (RFC 1035).
const MAX_HOST_LEN: usize = 253;
/// The longest label of a DNS name (RFC 1035).
const MAX_LABEL_LEN: usize = 63;

/// Checks an etcd host at parse time, so a typo is `InvalidArgument` at once rather than a
/// failed DNS lookup seconds later: a DNS name (labels of ASCII letters, digits, `-` and `_`,
/// separated by `.`, no label empty or starting or ending with `-`; one final `.` allowed),
/// an IPv4 address, or an IPv6 address in brackets (without a zone).
///
/// `_` is not in RFC 1123's host names, but resolvers accept it and container tools name
/// hosts with it (`project_etcd_1`), and the old parser let such hosts through to a working
/// connection. A host of digits and dots only must be an IPv4 address: `1.2.3` or `010.0.0.1`
/// would otherwise reach `inet_aton`'s guessing.
fn check_host(host: &str) -> std::result::Result<(), String> {
    if let Some(inner) = host.strip_prefix('[') {
        let Some(address) = inner.strip_suffix(']') else {
            return Err(format!("{host:?} opens a '[' it does not close"));
        };
        return match address.parse::<Ipv6Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!("{address:?} is not an IPv6 address")),
        };
    }
    if host.contains(':') {
        return Err(format!(
            "{host:?}: an IPv6 address must be in brackets, as in [::1]:2379"
        ));
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return match host.parse::<Ipv4Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!(
                "{host:?} is not an IPv4 address (four numbers 0-255, no leading zeros)"
            )),
        };
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > MAX_HOST_LEN {
        return Err(format!(
            "{} bytes, longer than the {MAX_HOST_LEN} a DNS name may have",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!("{host:?} has an empty label"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("{host:?} contains {c:?}"));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "{host:?} has a label longer than {MAX_LABEL_LEN} bytes"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("{host:?} has a label that starts or ends with '-'"));
        }
    }
    Ok(())
}

/// Parses a duration written as a whole number and a unit: `500ms`, `30s`, `2m`, `1h`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(lock_api::parse_duration("500ms")?, Duration::from_millis(500));
/// assert_eq!(lock_api::parse_duration("2m")?, Duration::from_secs(120));
/// # Ok::<(), lock_api::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::InvalidArgument`] for anything else (no unit, an unknown unit, a fraction, an
/// overflow).
pub fn parse_duration(text: &str) -> Result<Duration> {
    let bad = |why: &str| Error::invalid(format!("duration {text:?}: {why}"));
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err(bad("no number (write 500ms, 30s or 2m)"));
    }
    let number: u64 = number.parse().map_err(|_| bad("number too large"))?;
    let millis = match unit {
        "ms" => Some(number),
        "s" => number.checked_mul(1_000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        "" => return Err(bad("no unit (ms, s, m or h)")),
        _ if unit.starts_with(['.', ',']) => {
            return Err(bad(
                "a whole number is needed: write a smaller unit (1500ms, not 1.5s)",
            ));
        }
        _ => return Err(bad("unknown unit (ms, s, m or h)")),
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| bad("too large"))
}

/// Writes a duration in the unit [`parse_duration`] reads back exactly.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) && ms > 0 {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(spec: &str) -> String {
        match StoreSpec::parse(spec) {
            Err(Error::InvalidArgument { what }) => what,
            other => panic!("{spec:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn every_scheme_parses_and_prints_back() {
        for text in [
            "shm:podman",
            "mem:tests",
            "file:/var/lib/locks",
            "file:relative/dir",
            "dir:/run/app.lock",
            "etcd://127.0.0.1:2379/lockyard/podman",
            "etcd://a:1,b:2,c:3/deep/prefix/table?ttl=10s",
            "etcd://[::1]:2379,etcd-1.local:2379/lockyard/podman",
            "dir:/run/my app/locks",
        ] {
            let spec = StoreSpec::parse(text).unwrap();
            assert_eq!(spec.to_string(), text);
        }
    }

    #[test]
    fn etcd_parts() {
        let spec = StoreSpec::parse("etcd://h1:2379,h2:2380/a/b/t?ttl=1500ms").unwrap();
        let StoreSpec::Etcd(e) = spec else { panic!() };
        assert_eq!(e.endpoints, ["h1:2379", "h2:2380"]);
        assert_eq!(e.prefix, "a/b");
        assert_eq!(e.table, "t");
        assert_eq!(e.ttl, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn bad_specs_name_the_problem() {
        assert!(why("shm:").contains("empty shm name"));
        assert!(why("mem:").contains("empty mem name"));
        assert!(why("file:").contains("empty path"));
        assert!(why("dir:").contains("empty path"));
        assert!(why("shm:a/b").contains("'/'"));
        assert!(why("shm:..").contains("not a name"));
        assert!(why(&format!("shm:{}", "x".repeat(256))).contains("longer than 255"));
        assert!(why("file:/a/../b").contains("'..'"));
        assert!(why("dir:../b").contains("'..'"));
        assert!(why("shm:a\0b").contains("NUL"));
        assert!(why("file:/a\0").contains("NUL"));
        assert!(why("nfs:/x").contains("unknown scheme"));
        assert!(why("podman").contains("no scheme"));
        assert!(why(":x").contains("empty scheme"));
        assert!(why("etcd:h:1/a/b").contains("etcd://"));
        assert!(why("etcd://h:1//a/b").contains("relative etcd path"));
        assert!(why("etcd://h:1").contains("no key path"));
        assert!(why("etcd://h:1/table").contains("prefix and a table"));
        assert!(why("etcd://h:1/a//b").contains("empty segment"));
        assert!(why("etcd:///a/b").contains("no endpoint"));
        assert!(why("etcd://h/a/b").contains("no port"));
        assert!(why("etcd://h:0/a/b").contains("bad port"));
        assert!(why("etcd://h:70000/a/b").contains("bad port"));
        assert!(why("etcd://h:x/a/b").contains("bad port"));
        assert!(why("etcd://h:+1/a/b").contains("bad port"));
        assert!(why("etcd://:1/a/b").contains("empty host"));
        assert!(why("etcd://h#x:1/a/b").contains("bad host"));
        assert!(why("shm: x").contains("starts with whitespace"));
        assert!(why("mem:x\t").contains("control character"));
        assert!(why("etcd://h:1/a/b?ttl=ten").contains("bad ttl"));
        assert!(why("etcd://h:1/a/b?ttl=0s").contains("bad ttl: zero"));
        assert!(why("etcd://h:1/a/b?ttl=5").contains("bad ttl"));
        assert!(why("etcd://h:1/a/b?colour=red").contains("unknown option"));
        assert!(why("etcd://h:1/a/b?ttl=2s&ttl=3s").contains("given twice"));
    }

    /// A shm or mem name, a path or an etcd key segment that starts or ends with whitespace,
    /// and a spec with any control character, are `InvalidArgument` naming the problem.
    #[test]
    fn edge_whitespace_and_control_characters_are_invalid() {
        for spec in [
            "shm: x",
            "shm:x ",
            "mem: ",
            "mem:x\u{a0}",
            "file: /var/locks",
            "dir:/run/app ",
            "etcd://h:1/ a/b",
            "etcd://h:1/a/b ",
        ] {
            let why = why(spec);
            assert!(why.contains("with whitespace"), "{spec:?}: {why}");
        }
        for spec in [
            "shm:a\tb",
            "shm:x\n",
            "mem:\tx",
            "mem:a\u{7f}",
            "mem:a\u{85}b",
            "file:/a\nb",
            "dir:/run/\u{1b}[0m",
            "etcd://h:1/a/b\r",
            "\tshm:x",
        ] {
            let why = why(spec);
            assert!(why.contains("control character"), "{spec:?}: {why}");
        }
        for (spec, want) in [
            ("shm:a b", StoreSpec::Shm("a b".into())),
            ("mem:a b", StoreSpec::Mem("a b".into())),
            ("dir:/my locks/a b", StoreSpec::Dir("/my locks/a b".into())),
            ("file:my locks", StoreSpec::File("my locks".into())),
        ] {
            assert_eq!(
                StoreSpec::parse(spec).unwrap(),
                want,
                "inner spaces stay legal"
            );
        }
    }

    /// etcd hosts are DNS names, IPv4 addresses or bracketed IPv6 addresses, checked when the
    /// spec is parsed: anything else is `InvalidArgument` naming the host, with no lookup.
    #[test]
    fn etcd_hosts_are_checked_at_parse_time() {
        for host in [
            "h#x",
            "h x",
            "h!",
            "-h",
            "h-",
            "a..b",
            ".h",
            "h..",
            "bücher.example",
            "256.1.1.1",
            "1.2.3",
            "010.0.0.1",
            "1234",
            "[::1",
            "[zz::1]",
            "[fe80::1%eth0]",
            "[1.2.3.4]",
            "fe80::1",
            &"a".repeat(64),
            &["abc"; 64].join("."),
        ] {
            let spec = format!("etcd://{host}:2379/a/b");
            let why = why(&spec);
            assert!(why.contains("bad host"), "{spec:?}: {why}");
        }
        for host in [
            "localhost",
            "H",
            "h.",
            "etcd-0.etcd.svc.cluster.local",
            "project_etcd_1",
            "123.example",
            "10.0.0.1",
            "0.0.0.0",
            "[::1]",
            "[2001:db8::1]",
            "[::ffff:10.0.0.1]",
            &"a".repeat(63),
            &["abc"; 63].join("."),
        ] {
            let text = format!("etcd://{host}:2379,other:2380/a/b");
            let spec = StoreSpec::parse(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            let StoreSpec::Etcd(etcd) = &spec else {
                panic!("{spec:?}")
            };
            assert_eq!(
                etcd.endpoints,
                [format!("{host}:2379"), "other:2380".into()]
            );
            assert_eq!(spec.to_string(), text);
        }
        assert!(why("etcd://[::1]/a/b").contains("no port"));
        assert!(why("etcd://[::1]:0/a/b").contains("bad port"));
    }

    /// Every spec that parses prints as a spec that parses back to the same value.
    #[test]
    fn display_parses_back_to_the_same_spec() {
        for text in [
            "shm:a b",
            "mem:x:y",
            "file:./locks/",
            "dir:/my locks/a b",
            "etcd://[::1]:2379/p/t",
            "etcd://h.:1,10.0.0.1:2/p/q/t?ttl=1000ms",
            "etcd://h:1/p/t?ttl=90s",
        ] {
            let spec = StoreSpec::parse(text).unwrap();
            assert_eq!(StoreSpec::parse(&spec.to_string()).unwrap(), spec, "{text}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0ms").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in [
            "",
            "s",
            "10",
            "1.5s",
            "10 s",
            "-1s",
            "5d",
            "99999999999999999999s",
        ] {
            assert!(
                matches!(parse_duration(bad), Err(Error::InvalidArgument { .. })),
                "{bad:?}"
            );
        }
        for d in [
            Duration::from_millis(1500),
            Duration::from_secs(10),
            Duration::from_secs(120),
            Duration::ZERO,
        ] {
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        // A fraction is refused for what it is, not as an unknown unit ("1.5s" has the unit s).
        for fraction in ["1.5s", "0,5m", "2.s"] {
            let why = match parse_duration(fraction) {
                Err(Error::InvalidArgument { what }) => what,
                other => panic!("{fraction:?}: {other:?}"),
            };
            assert!(why.contains("whole number"), "{fraction:?}: {why}");
            assert!(!why.contains("unknown unit"), "{fraction:?}: {why}");
        }
    }
}
