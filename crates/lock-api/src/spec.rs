//! Store specs: the one string form that names any lockyard store, and its parser.
//!
//! The grammar is documented in `docs/store-specs.md`; this module is its only implementation.
//! Parsing does no I/O: a spec that parses may still name a store that does not exist.

use std::fmt;
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
    /// name, a NUL byte, a `..` component, a `/` in a shm name, a relative etcd path, a bad host
    /// or port, an unknown option or a bad TTL.
    pub fn parse(spec: &str) -> Result<StoreSpec> {
        let bad = |why: &str| Error::invalid(format!("store spec {spec:?}: {why}"));
        if spec.contains('\0') {
            return Err(bad("contains a NUL byte"));
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

/// A shm or mem name: non-empty, at most [`MAX_NAME_LEN`] bytes, not `.` or `..`, and (for shm,
/// a file name in /dev/shm) without `/`.
fn parse_name(scheme: &str, name: &str, file_name: bool) -> std::result::Result<String, String> {
    if name.is_empty() {
        return Err(format!("empty {scheme} name"));
    }
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

/// A file or dir path: non-empty and without a `..` component (a spec never climbs out of the
/// directory it names, so a spec taken from configuration cannot be aimed elsewhere by `..`).
fn parse_path(path: &str) -> std::result::Result<PathBuf, String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
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
                spec.ttl = Some(ttl);
            }
            _ => return Err(format!("unknown option {option:?} (known: ttl)")),
        }
    }
    Ok(spec)
}

fn parse_endpoint(endpoint: &str) -> std::result::Result<String, String> {
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return Err(format!("endpoint {endpoint:?} has no port (HOST:PORT)"));
    };
    if host.is_empty() {
        return Err(format!("endpoint {endpoint:?} has an empty host"));
    }
    if host.contains(|c: char| c.is_whitespace() || c == '@' || c == '/') {
        return Err(format!("endpoint {endpoint:?} has a bad host"));
    }
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
        assert!(why("etcd://h:1/a/b?ttl=ten").contains("bad ttl"));
        assert!(why("etcd://h:1/a/b?ttl=0s").contains("bad ttl: zero"));
        assert!(why("etcd://h:1/a/b?ttl=5").contains("bad ttl"));
        assert!(why("etcd://h:1/a/b?colour=red").contains("unknown option"));
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
    }
}
