//! Connection options and the limits every name, TTL and payload is checked against.

use std::time::Duration;

use lock_api::{Error, Result};

/// The shortest lease TTL this crate accepts.
///
/// etcd itself raises any lease shorter than 1.5 × its election timeout to that minimum (2 s with
/// the default 1 s election timeout, rounded up to whole seconds); a lease of 1 s leaves a
/// keepalive every 333 ms no room for a single slow round trip. [`Leased::ttl`] reports the TTL the
/// server really granted.
///
/// [`Leased::ttl`]: lock_api::Leased::ttl
pub const MIN_TTL: Duration = Duration::from_secs(2);

/// The longest lease TTL etcd grants (its `MaxLeaseTTL`, about 285 years).
pub const MAX_TTL: Duration = Duration::from_secs(9_000_000_000);

/// The longest connect or request timeout this crate accepts: a year, longer than any request
/// should be let run, and short enough that every deadline it makes stays in the clock's range.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The longest lock or table name, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// The longest key prefix, in bytes.
pub const MAX_PREFIX_LEN: usize = 512;

/// Key segments a prefix may not contain: every key of a prefix `P` is `P/lock/...` or
/// `P/table/...`, so a prefix with one of them as a segment would lie inside another prefix's
/// lock or table ranges (prefix `P/table/t` inside table `t` of `P`).
pub const RESERVED_SEGMENTS: [&str; 2] = ["lock", "table"];

/// The largest payload [`LockData::write_data`](lock_api::LockData::write_data) accepts.
///
/// etcd refuses requests over 1.5 MiB by default; the owner record shares the value.
pub const MAX_DATA_LEN: usize = 1024 * 1024;

/// How to reach the cluster and how locks behave on it.
///
/// ```
/// use std::time::Duration;
/// use lock_etcd::EtcdOptions;
///
/// let options = EtcdOptions::new()
///     .prefix("myapp/locks")
///     .ttl(Duration::from_secs(5))
///     .request_timeout(Duration::from_secs(2));
/// assert_eq!(options.ttl_value(), Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    prefix: String,
    ttl: Duration,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            prefix: "lockyard".to_owned(),
            ttl: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl EtcdOptions {
    /// The defaults: prefix `lockyard`, TTL 10 s, connect and request timeouts 5 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// The key prefix every key of this connection lives under (a trailing `/` is ignored).
    /// No segment of it may be one of [`RESERVED_SEGMENTS`] (`lock`, `table`): such a prefix
    /// would lie inside another prefix's key ranges, and connecting with it is
    /// [`Error::InvalidArgument`].
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The lease TTL of every acquisition, rounded up to whole seconds; at least [`MIN_TTL`].
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long [`EtcdLocks::connect`](crate::EtcdLocks::connect) may take to reach the cluster;
    /// more than zero, at most [`MAX_TIMEOUT`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one request (with its retries on another member) may take before it fails with
    /// [`Error::Unavailable`]; more than zero, at most [`MAX_TIMEOUT`].
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The key prefix, without a trailing `/`.
    pub fn prefix_value(&self) -> &str {
        self.prefix.trim_end_matches('/')
    }

    /// The lease TTL as configured.
    pub fn ttl_value(&self) -> Duration {
        self.ttl
    }

    /// The connect timeout.
    pub fn connect_timeout_value(&self) -> Duration {
        self.connect_timeout
    }

    /// The request timeout.
    pub fn request_timeout_value(&self) -> Duration {
        self.request_timeout
    }

    /// Checks every field; returns the TTL in whole seconds.
    pub(crate) fn validate(&self) -> Result<i64> {
        let prefix = self.prefix_value();
        if prefix.is_empty() {
            return Err(Error::invalid("the etcd key prefix is empty"));
        }
        if prefix.len() > MAX_PREFIX_LEN {
            return Err(Error::invalid(format!(
                "the etcd key prefix is {} bytes long, more than {MAX_PREFIX_LEN}",
                prefix.len()
            )));
        }
        if prefix.contains('\0') {
            return Err(Error::invalid("the etcd key prefix contains a NUL byte"));
        }
        if let Some(word) = prefix
            .split('/')
            .find(|segment| RESERVED_SEGMENTS.contains(segment))
        {
            return Err(Error::invalid(format!(
                "the etcd key prefix {prefix:?} has a segment {word:?}: the segments \"lock\" \
                 and \"table\" are reserved, since a prefix with one would place its keys \
                 inside another prefix's lock or table ranges"
            )));
        }
        if self.ttl < MIN_TTL {
            return Err(Error::invalid(format!(
                "lease TTL {:?} is below the minimum of {MIN_TTL:?}",
                self.ttl
            )));
        }
        if self.ttl > MAX_TTL {
            return Err(Error::invalid(format!(
                "lease TTL {:?} is above etcd's maximum of {MAX_TTL:?}",
                self.ttl
            )));
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(Error::invalid("etcd timeouts must be longer than zero"));
        }
        if self.connect_timeout > MAX_TIMEOUT || self.request_timeout > MAX_TIMEOUT {
            return Err(Error::invalid(format!(
                "etcd timeouts must be at most {MAX_TIMEOUT:?}"
            )));
        }
        let whole = self.ttl.as_secs() + u64::from(self.ttl.subsec_nanos() > 0);
        i64::try_from(whole).map_err(|_| Error::invalid("lease TTL does not fit etcd's range"))
    }
}

/// Checks a lock or table name: not empty, at most [`MAX_NAME_LEN`] bytes, no `/` (it would
/// escape the lock's own key range) and no NUL or other control character.
///
/// # Errors
///
/// [`Error::InvalidArgument`] naming what is wrong.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("the lock name is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(format!(
            "the lock name is {} bytes long, more than {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if let Some(c) = name.chars().find(|&c| c == '/' || c.is_control()) {
        return Err(Error::invalid(format!(
            "the lock name {name:?} contains {c:?}, which is not allowed in a key segment"
        )));
    }
    if name == "." || name == ".." {
        return Err(Error::invalid(format!(
            "the lock name {name:?} is reserved"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_escape_the_prefix_are_refused() {
        for bad in ["", "a/b", "/", "a\0b", "a\nb", ".", ".."] {
            assert!(
                matches!(validate_name(bad), Err(Error::InvalidArgument { .. })),
                "{bad:?}"
            );
        }
        assert!(validate_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
        for good in ["a", "lock-1", "ünïcode", &"x".repeat(MAX_NAME_LEN)] {
            assert!(validate_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn ttl_is_checked_and_rounded_up() {
        let short = EtcdOptions::new().ttl(Duration::from_millis(1999));
        assert!(matches!(
            short.validate(),
            Err(Error::InvalidArgument { .. })
        ));
        let ok = EtcdOptions::new().ttl(Duration::from_millis(2500));
        assert_eq!(ok.validate().ok(), Some(3));
        let long = EtcdOptions::new().ttl(MAX_TTL + Duration::from_secs(1));
        assert!(long.validate().is_err());
    }

    /// A timeout past the bound is refused (`Duration::MAX` panicked in `connect`, adding it to
    /// the clock).
    #[test]
    fn timeouts_are_checked() {
        for bad in [
            Duration::ZERO,
            MAX_TIMEOUT + Duration::from_nanos(1),
            Duration::MAX,
        ] {
            for options in [
                EtcdOptions::new().connect_timeout(bad),
                EtcdOptions::new().request_timeout(bad),
            ] {
                assert!(
                    matches!(options.validate(), Err(Error::InvalidArgument { .. })),
                    "{bad:?}"
                );
            }
        }
        let longest = EtcdOptions::new()
            .connect_timeout(MAX_TIMEOUT)
            .request_timeout(MAX_TIMEOUT);
        assert!(longest.validate().is_ok());
    }

    /// A prefix with a segment `lock` or `table` lies in another prefix's ranges (prefix
    /// `ov2/table/t` in table `t` of prefix `ov2`) and is refused; one that merely contains the
    /// words is not.
    #[test]
    fn prefixes_inside_another_prefix_are_refused() {
        for bad in [
            "lock",
            "table",
            "a/lock",
            "a/lock/b",
            "a/table/t",
            "/table",
            "a//lock/",
        ] {
            assert!(
                matches!(
                    EtcdOptions::new().prefix(bad).validate(),
                    Err(Error::InvalidArgument { .. })
                ),
                "{bad:?}"
            );
        }
        for good in ["a", "a/locks", "tables/b", "a/deadlock", "lock-a", "a/Lock"] {
            assert!(
                EtcdOptions::new().prefix(good).validate().is_ok(),
                "{good:?}"
            );
        }
    }

    #[test]
    fn prefix_is_checked() {
        assert!(EtcdOptions::new().prefix("/").validate().is_err());
        assert!(EtcdOptions::new().prefix("a\0").validate().is_err());
        assert_eq!(EtcdOptions::new().prefix("a/b/").prefix_value(), "a/b");
    }
}
