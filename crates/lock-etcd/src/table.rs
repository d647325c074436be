//! `EtcdTable`: the lockyard `Manager` contract as a table of numbered locks under a key prefix.
//!
//! Keys under the table's root `<prefix>/table/<store>`:
//!
//! | key | value | meaning |
//! |---|---|---|
//! | `meta` | `lockyard-etcd-table 1\ncapacity=N\n` | the table exists, with N locks |
//! | `alloc/<id, 10 digits>` | empty | the id is allocated (created under `create_revision == 0`) |
//! | `lock/<id>/<lease hex>` | owner record | lock `id`'s queue (see the mutex recipe) |
//! | `lock/<id>` | held marker (`lockyard-etcd-held 1`, the claimer's key and record) | claimed and not released cleanly |
//! | `deadlock` | the detector's own key | the detection lock (attached to the detector's lease) |
//! | `clients/<nonce>` | client record (`record.rs`) | a table open somewhere (`clients.rs`) |
//!
//! Allocation state lives in etcd, so every process sees the same table. Ids are zero-padded so
//! that key order is id order.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::proto::PbKeyValue;
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use lock_api::{
    Error, EtcdSpec, HeldLock, Holder, LockId, LockState, Manager, Result, Store, StoreSpec,
    wrong_scheme,
};

use crate::client::{Ctx, Shared, prefix_end, range_all, txn_first_kv, txn_range};
use crate::clients::Registration;
use crate::deadlock::{DEFAULT_DEADLOCK_TIMEOUT, Detector, timeout_ms};
use crate::handle::EtcdLock;
use crate::mutex::Target;
use crate::snapshot::lock_states;

const META_MAGIC: &str = "lockyard-etcd-table";
const META_VERSION: &str = "1";

/// A table of `capacity` numbered locks stored in etcd, under the root `<prefix>/table/<store>`:
///
/// | key | value | meaning |
/// |---|---|---|
/// | `meta` | `lockyard-etcd-table 1\ncapacity=N\n` | the table exists, with N locks |
/// | `alloc/<id, 10 digits>` | empty | the id is allocated |
/// | `lock/<id>/<lease hex>` | owner record | lock `id`'s queue (the mutex recipe) |
/// | `lock/<id>` | held marker: the claimer's key and owner record | claimed, not released cleanly |
/// | `deadlock` | the detector's own key | the table's deadlock detection lock |
/// | `clients/<nonce>` | client record: pid, host, owner, since | a table open somewhere |
///
/// Ownership of a lock is per handle (per [`EtcdLock`]), not per table: two handles on one id
/// exclude each other even in one process. For deadlock detection the table is the owner: every
/// handle retrieved from one `EtcdTable` writes the same owner key, so a thread that holds one
/// lock and waits for another through two handles is one node of the wait-for graph.
pub struct EtcdTable {
    shared: Arc<Shared>,
    root: Arc<str>,
    capacity: u32,
    /// The header's CreateRevision: allocation writes are guarded by it, so a handle of a
    /// table that was removed (and perhaps created again) writes nothing into its place.
    meta_rev: i64,
    owner: Arc<str>,
    /// The deadlock timeout in milliseconds, shared with every handle; 0 is off.
    deadlock_ms: Arc<AtomicU64>,
    /// This table's client key (`clients.rs`), deleted on drop.
    client_key: String,
}

impl Drop for EtcdTable {
    /// Deletes the table's client key (bounded by the request timeout; in an outage it goes with
    /// the lease, when the connection closes or the lease expires).
    fn drop(&mut self) {
        if self.shared.ctx.usable().is_err() {
            // A forked child: the connection is its parent's.
            return;
        }
        let shared = Arc::clone(&self.shared);
        let key = std::mem::take(&mut self.client_key);
        let _ = self
            .shared
            .block_on(async move { shared.unregister(&key).await });
    }
}

impl fmt::Debug for EtcdTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdTable")
            .field("root", &self.root)
            .field("capacity", &self.capacity)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

fn meta_value(capacity: u32) -> String {
    format!("{META_MAGIC} {META_VERSION}\ncapacity={capacity}\n")
}

/// Parses the `meta` value; returns the capacity.
pub(crate) fn parse_meta(key: &str, value: &[u8]) -> Result<u32> {
    let text = std::str::from_utf8(value)
        .map_err(|_| Error::corrupt(format!("etcd table header {key}: not UTF-8")))?;
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("");
    let Some(version) = first.strip_prefix(META_MAGIC).map(str::trim) else {
        return Err(Error::incompatible(
            format!("etcd table header {key}"),
            format!("{META_MAGIC} {META_VERSION}"),
            first,
        ));
    };
    if version != META_VERSION {
        return Err(Error::incompatible(
            format!("etcd table header {key} version"),
            META_VERSION,
            version,
        ));
    }
    let capacity = lines
        .find_map(|l| l.strip_prefix("capacity="))
        .ok_or_else(|| Error::corrupt(format!("etcd table header {key}: no capacity")))?;
    match parse_decimal(capacity) {
        // `create` never writes 0: a table of no locks is a damaged header.
        Some(0) | None => Err(Error::corrupt(format!(
            "etcd table header {key}: bad capacity {capacity:?}"
        ))),
        Some(capacity) => Ok(capacity),
    }
}

/// A number in the form lock-etcd writes it (`format!("{n}")`): decimal digits, no sign, no
/// leading zero but in `0` itself. `u32::from_str` also takes `+3` and `03`, which would make two
/// keys (`lock/3` and `lock/03`) one lock.
pub(crate) fn parse_decimal(text: &str) -> Option<u32> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

/// An allocation key's id in the form lock-etcd writes it: exactly ten decimal digits.
/// Tables of at most this many ids have their allocation keys read whole; larger ones are
/// counted in pieces down to a range of at most this many ids, whose keys are read.
const READ_BELOW: u32 = 512;
/// Pieces counted per round trip (one count each, in one Txn; etcd's default
/// `--max-txn-ops` is 128, and the first Txn has two counts more).
const PIECES: u32 = 64;

/// What a search for the lowest free id found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Free {
    /// This id has no allocation key.
    Id(u32),
    /// Every id has one: the table is full.
    None,
    /// The ids counted as free were taken by the time they were read: look again.
    Taken,
}

/// The lowest id of `[from, to)` missing from `ids` (sorted, all in that range).
fn first_gap(from: u32, to: u32, ids: &[u32]) -> Free {
    let mut free = from;
    for &id in ids {
        if id == free {
            free += 1;
        } else if id > free {
            break;
        }
    }
    if free < to {
        Free::Id(free)
    } else {
        Free::None
    }
}

/// The ids the allocation keys `kvs` (under `prefix`) name, sorted.
///
/// # Errors
///
/// [`Error::Corrupt`] for a key that lock-etcd would not write: not ten digits, or an id at or
/// beyond the capacity.
fn alloc_ids(kvs: &[PbKeyValue], prefix: &str, capacity: u32) -> Result<Vec<u32>> {
    let mut ids = Vec::with_capacity(kvs.len());
    for kv in kvs {
        let key = String::from_utf8_lossy(&kv.key);
        let id = key
            .strip_prefix(prefix)
            .and_then(parse_alloc_id)
            .filter(|id| *id < capacity)
            .ok_or_else(|| {
                Error::corrupt(format!(
                    "etcd allocation key {key:?} (ids are 10 digits below the capacity \
                     {capacity})"
                ))
            })?;
        ids.push(id);
    }
    ids.sort_unstable();
    Ok(ids)
}

fn parse_alloc_id(text: &str) -> Option<u32> {
    let canonical = text.len() == 10 && text.bytes().all(|b| b.is_ascii_digit());
    canonical.then(|| text.parse().ok()).flatten()
}

impl EtcdTable {
    pub(crate) fn meta_key(root: &str) -> String {
        format!("{root}/meta")
    }

    /// Where a create writes a token of its own, to know its table on a retry.
    fn creator_key(root: &str) -> String {
        format!("{root}/creator")
    }

    fn alloc_prefix(&self) -> String {
        format!("{}/alloc/", self.root)
    }

    fn alloc_key(&self, id: LockId) -> String {
        format!("{}/alloc/{:010}", self.root, id.get())
    }

    fn lock_prefix(&self) -> String {
        format!("{}/lock/", self.root)
    }

    /// Opens the table at `root` as `mode` says. Returns the table and whether this call
    /// created it.
    pub(crate) fn open_at(
        shared: Arc<Shared>,
        root: String,
        mode: OpenMode,
    ) -> Result<(EtcdTable, bool)> {
        let create = match mode {
            OpenMode::Create(capacity) | OpenMode::OpenOrCreate(capacity) => Some(capacity),
            OpenMode::Open => None,
        };
        if create == Some(0) {
            return Err(Error::invalid(
                "an etcd lock table needs a capacity above zero",
            ));
        }
        let ctx = shared.ctx.clone();
        let meta = Self::meta_key(&root);
        let creator = Self::creator_key(&root);
        // A token of this call, which a create writes to the creator key in the same Txn as the
        // header: a retry whose first attempt was applied but not answered finds its own token
        // there, and a table another process made has that process's (or none, from a version
        // before the key).
        let token = shared.ctx.identity.new_owner();
        let (created, existing) = shared.block_on(async move {
            let answer = ctx
                .call(|mut c| {
                    let mut txn = Txn::new();
                    if let Some(capacity) = create {
                        txn = txn
                            .when([Compare::create_revision(meta.as_str(), CompareOp::Equal, 0)])
                            .and_then([
                                TxnOp::put(meta.as_str(), meta_value(capacity), None),
                                TxnOp::put(creator.as_str(), &*token, None),
                            ])
                            .or_else([
                                TxnOp::get(meta.as_str(), None),
                                TxnOp::get(creator.as_str(), None),
                            ]);
                    } else {
                        txn = txn.and_then([TxnOp::get(meta.as_str(), None)]);
                    }
                    async move { c.txn(txn).await }
                })
                .await?;
            let raw = answer.0;
            let created = create.is_some() && raw.succeeded;
            // A created header's CreateRevision is the Txn's revision.
            let revision = raw.header.as_ref().map_or(0, |h| h.revision);
            if created {
                return Ok((Some(revision), None));
            }
            let Some(kv) = txn_first_kv(&raw, 0) else {
                return Ok((None, None));
            };
            // Made by this call's own first attempt: the creator key holds this call's token and
            // was written with the header.
            let own = create.is_some()
                && txn_first_kv(&raw, 1).is_some_and(|c| {
                    c.value == token.as_bytes() && c.create_revision == kv.create_revision
                });
            if own {
                return Ok((Some(kv.create_revision), None));
            }
            Ok((None, Some((kv.value.clone(), kv.create_revision))))
        })?;
        let meta = Self::meta_key(&root);
        let (capacity, meta_rev) = if let Some(revision) = created {
            (create.unwrap_or_default(), revision)
        } else {
            if matches!(mode, OpenMode::Create(_)) {
                return Err(Error::AlreadyExists {
                    what: format!("etcd lock table {root}"),
                });
            }
            let (value, revision) = existing.ok_or_else(|| Error::NotFound {
                what: format!("etcd lock table {root}"),
            })?;
            let found = parse_meta(&meta, &value)?;
            if let Some(wanted) = create
                && found != wanted
            {
                return Err(Error::incompatible(
                    format!("etcd lock table {root} capacity"),
                    wanted,
                    found,
                ));
            }
            (found, revision)
        };
        let owner = shared.ctx.identity.new_owner();
        let registration = Registration::new(&shared.ctx, &root, meta, meta_rev, &owner);
        let client_key = registration.key.clone();
        let registering = Arc::clone(&shared);
        let registered =
            shared.block_on(async move { registering.register(registration).await })?;
        if !registered {
            return Err(Error::NotFound {
                what: format!("etcd lock table {root} (removed while it was being opened)"),
            });
        }
        Ok((
            EtcdTable {
                shared,
                root: root.into(),
                capacity,
                meta_rev,
                owner,
                deadlock_ms: Arc::new(AtomicU64::new(timeout_ms(DEFAULT_DEADLOCK_TIMEOUT))),
                client_key,
            },
            created.is_some(),
        ))
    }

    /// Deletes every key of the table at `root`. Locks still held there are lost.
    ///
    /// Reads the header first: a missing table is `NotFound`, and a header that is not a
    /// lockyard table's is `Incompatible` or `Corrupt` with nothing deleted. The delete is
    /// guarded by the header's ModRevision, so a table re-created meanwhile is not touched.
    pub(crate) fn remove_at(shared: &Shared, root: &str) -> Result<()> {
        let ctx = shared.ctx.clone();
        let root = root.to_owned();
        shared.block_on(async move {
            let meta = Self::meta_key(&root);
            let meta = meta.as_str();
            let answer = ctx
                .call(|mut c| async move { c.get(meta, None).await })
                .await?;
            let Some(kv) = answer.kvs().first() else {
                return Err(Error::NotFound {
                    what: format!("etcd lock table {root}"),
                });
            };
            parse_meta(meta, kv.value())?;
            let revision = kv.mod_revision();
            let prefix = format!("{root}/");
            let prefix = prefix.as_str();
            let mut attempts = 0u32;
            let deleted = ctx
                .call(|mut c| {
                    attempts += 1;
                    let txn = Txn::new()
                        .when([Compare::mod_revision(meta, CompareOp::Equal, revision)])
                        .and_then([TxnOp::delete(
                            prefix,
                            Some(etcd_client::DeleteOptions::new().with_prefix()),
                        )]);
                    async move { c.txn(txn).await }
                })
                .await?;
            if deleted.succeeded() || attempts > 1 {
                Ok(())
            } else {
                // Changed between the read and the delete: removed or re-created by someone else.
                Err(Error::unavailable(format!(
                    "etcd lock table {root} changed while it was being removed; try again"
                )))
            }
        })
    }

    /// The table's root key (`<prefix>/table/<store>`).
    pub fn root(&self) -> &str {
        &self.root
    }

    fn check(&self, id: LockId) -> Result<()> {
        if id.get() >= self.capacity {
            return Err(Error::OutOfRange {
                id,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    /// The owner key every handle of this table writes: [`Holder::owner`] of its holds and
    /// waits, and its node in the wait-for graph.
    ///
    /// [`Holder::owner`]: lock_api::Holder::owner
    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn handle(&self, id: LockId) -> EtcdLock {
        EtcdLock::new(
            Arc::clone(&self.shared),
            None,
            id,
            Target {
                queue: format!("{}/lock/{}/", self.root, id.get()),
                owner: Arc::clone(&self.owner),
                detector: Some(Detector {
                    root: Arc::clone(&self.root),
                    capacity: self.capacity,
                    owner: Arc::clone(&self.owner),
                    timeout_ms: Arc::clone(&self.deadlock_ms),
                }),
                table: Some((Self::meta_key(&self.root), self.meta_rev)),
            },
            Some(self.alloc_key(id)),
        )
    }

    /// Every lock that is held or waited for, from one read at one revision (in pages:
    /// [`range_all`]).
    fn states(&self) -> Result<Vec<LockState>> {
        let ctx = self.shared.ctx.clone();
        let prefix = self.lock_prefix();
        let capacity = self.capacity;
        self.shared.block_on(async move {
            let (_, kvs) = range_all(&ctx, &prefix, false).await?;
            lock_states(&prefix, capacity, &kvs, &ctx.identity)
        })
    }

    /// The allocated ids, in order, read in pages ([`range_all`]: one Range of every key
    /// failed past ~94,000 allocations, tonic's 4 MiB answer limit).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] for a key under `alloc/` that lock-etcd would not write: not ten
    /// digits (`alloc/0`, `alloc/+000000001`, which `free` would never find), or an id at or
    /// beyond the capacity.
    async fn allocated(ctx: &Ctx, prefix: &str, capacity: u32) -> Result<Vec<u32>> {
        let (_, kvs) = range_all(ctx, prefix, true).await?;
        alloc_ids(&kvs, prefix, capacity)
    }

    /// The lowest id without an allocation key, as the server says at one moment.
    ///
    /// A table of at most [`READ_BELOW`] ids has its allocation keys read (as [`allocated`]
    /// reads them). A larger one is narrowed down by counting: one Txn counts the keys in up to
    /// [`PIECES`] consecutive pieces of the ids still in question, and the first piece with fewer
    /// keys than ids holds the lowest free one; once at most [`READ_BELOW`] ids are left, their
    /// keys are read. So an allocation costs a few round trips whatever the table holds (four
    /// at 2^20 ids), where reading every key cost one page of 10,000 keys per 10,000 allocated
    /// ids, all of them sent. The first Txn also counts the keys under `alloc/` that sort
    /// before the first id's key or after the last one's (`alloc/0`, an id beyond the
    /// capacity): any is `Corrupt`, as a key read that is no id is; so is a piece with more keys
    /// than ids (`alloc/0000000001x`).
    ///
    /// [`Free::Taken`] when the piece found had no free id by the time its keys were read:
    /// another process allocated meanwhile, and the caller looks again.
    async fn lowest_free(ctx: &Ctx, root: &str, prefix: &str, capacity: u32) -> Result<Free> {
        if capacity <= READ_BELOW {
            let ids = Self::allocated(ctx, prefix, capacity).await?;
            return Ok(first_gap(0, capacity, &ids));
        }
        let key = |id: u32| format!("{root}/alloc/{id:010}");
        let (mut lo, mut hi) = (0u32, capacity);
        let mut first = true;
        while hi - lo > READ_BELOW {
            let width = (hi - lo).div_ceil(PIECES);
            let bounds: Vec<(u32, u32)> = (lo..hi)
                .step_by(width as usize)
                .map(|from| (from, from.saturating_add(width).min(hi)))
                .collect();
            let mut ops: Vec<TxnOp> = bounds
                .iter()
                .map(|&(from, to)| {
                    let options = GetOptions::new()
                        .with_range(key(to).as_str())
                        .with_count_only();
                    TxnOp::get(key(from).as_str(), Some(options))
                })
                .collect();
            if first {
                // The keys under `alloc/` before the first id's and after the last one's: none
                // in a sound table, so counting them costs the server nothing.
                ops.push(TxnOp::get(
                    prefix,
                    Some(
                        GetOptions::new()
                            .with_range(key(0).as_str())
                            .with_count_only(),
                    ),
                ));
                ops.push(TxnOp::get(
                    key(capacity).as_str(),
                    Some(
                        GetOptions::new()
                            .with_range(prefix_end(prefix.as_bytes()))
                            .with_count_only(),
                    ),
                ));
            }
            let answer = ctx
                .call(|mut c| {
                    let txn = Txn::new().and_then(ops.clone());
                    async move { c.txn(txn).await }
                })
                .await?;
            let count = |index: usize| {
                txn_range(&answer.0, index)
                    .map(|range| range.count)
                    .ok_or_else(|| {
                        Error::corrupt("etcd answered a count of allocation keys without the count")
                    })
            };
            if first {
                let outside = count(bounds.len())? + count(bounds.len() + 1)?;
                if outside != 0 {
                    return Err(Error::corrupt(format!(
                        "{outside} etcd allocation key(s) under {prefix:?} are not ids below \
                         the capacity {capacity} (ids are 10 digits)"
                    )));
                }
                first = false;
            }
            let mut gap = None;
            for (index, &(from, to)) in bounds.iter().enumerate() {
                let keys = count(index)?;
                if keys > i64::from(to - from) {
                    return Err(Error::corrupt(format!(
                        "{keys} etcd allocation keys under {prefix:?} between ids {from} and \
                         {to}: keys that are not ids (ids are 10 digits)"
                    )));
                }
                if keys < i64::from(to - from) {
                    gap = Some((from, to));
                    break;
                }
            }
            let Some((from, to)) = gap else {
                return Ok(Free::None);
            };
            (lo, hi) = (from, to);
        }
        let ids = Self::allocated_between(ctx, prefix, &key(lo), &key(hi), capacity).await?;
        Ok(match first_gap(lo, hi, &ids) {
            Free::None => Free::Taken,
            found => found,
        })
    }

    /// The ids whose allocation keys lie in `[from, to)` (keys under `prefix`), sorted; at most
    /// [`READ_BELOW`] of them, read in one request.
    async fn allocated_between(
        ctx: &Ctx,
        prefix: &str,
        from: &str,
        to: &str,
        capacity: u32,
    ) -> Result<Vec<u32>> {
        let answer = ctx
            .call(|mut c| {
                let options = GetOptions::new()
                    .with_range(to)
                    .with_keys_only()
                    .with_limit(i64::from(READ_BELOW) + 1);
                let txn = Txn::new().and_then([TxnOp::get(from, Some(options))]);
                async move { c.txn(txn).await }
            })
            .await?;
        let kvs = txn_range(&answer.0, 0).map_or(&[][..], |range| &range.kvs[..]);
        alloc_ids(kvs, prefix, capacity)
    }

    /// Marks `id` allocated; `false` when it already was.
    ///
    /// The key's value is a token of this call (a fresh owner key: process, host, 64 random
    /// bits). A request is retried when an attempt fails in transit, and an attempt whose answer
    /// was lost may have been applied: the retry then finds the key taken, and without the token
    /// could not tell its own write from another process's (allocate leaked the id and took the
    /// next; allocate_and_retrieve said `AlreadyAllocated` for the id it had just allocated).
    ///
    /// The write is also guarded by the header's CreateRevision (`meta_rev`): a table removed
    /// since this handle opened it, or removed and created again, is [`Error::NotFound`], and
    /// gets no allocation key.
    async fn mark(ctx: &Ctx, root: &str, meta_rev: i64, key: &str) -> Result<bool> {
        let token = ctx.identity.new_owner();
        let meta = Self::meta_key(root);
        let meta = meta.as_str();
        let answer = ctx
            .call(|mut c| {
                let txn = Txn::new()
                    .when([
                        Compare::create_revision(key, CompareOp::Equal, 0),
                        Compare::create_revision(meta, CompareOp::Equal, meta_rev),
                    ])
                    .and_then([TxnOp::put(key, &*token, None::<PutOptions>)])
                    .or_else([TxnOp::get(key, None), TxnOp::get(meta, None)]);
                async move { c.txn(txn).await }
            })
            .await?;
        let raw = answer.0;
        if raw.succeeded {
            return Ok(true);
        }
        if txn_first_kv(&raw, 1).is_none_or(|header| header.create_revision != meta_rev) {
            return Err(Error::NotFound {
                what: format!("etcd lock table {root} (removed since this handle opened it)"),
            });
        }
        Ok(txn_first_kv(&raw, 0).is_some_and(|kv| kv.value == token.as_bytes()))
    }
}

impl Manager for EtcdTable {
    type Locker = EtcdLock;

    /// Allocates the lowest free id: reads the allocation keys, then creates the first missing one
    /// under a `create_revision == 0` compare, and starts over if another process was faster.
    fn allocate(&self) -> Result<EtcdLock> {
        let ctx = self.shared.ctx.clone();
        let prefix = self.alloc_prefix();
        let root = Arc::clone(&self.root);
        let capacity = self.capacity;
        let meta_rev = self.meta_rev;
        let id = self.shared.block_on(async move {
            loop {
                let free = match Self::lowest_free(&ctx, &root, &prefix, capacity).await? {
                    Free::Id(id) => id,
                    Free::None => return Err(Error::Exhausted { capacity }),
                    Free::Taken => continue,
                };
                let key = format!("{root}/alloc/{free:010}");
                if Self::mark(&ctx, &root, meta_rev, &key).await? {
                    return Ok(free);
                }
            }
        })?;
        Ok(self.handle(LockId(id)))
    }

    fn retrieve(&self, id: LockId) -> Result<EtcdLock> {
        self.shared.ctx.usable()?;
        self.check(id)?;
        Ok(self.handle(id))
    }

    fn allocate_and_retrieve(&self, id: LockId) -> Result<EtcdLock> {
        self.shared.ctx.usable()?;
        self.check(id)?;
        let ctx = self.shared.ctx.clone();
        let key = self.alloc_key(id);
        let (root, meta_rev) = (Arc::clone(&self.root), self.meta_rev);
        let marked = self
            .shared
            .block_on(async move { Self::mark(&ctx, &root, meta_rev, &key).await })?;
        if !marked {
            return Err(Error::AlreadyAllocated(id));
        }
        Ok(self.handle(id))
    }

    /// Deletes every allocation key; lock queues are untouched, so held locks stay held.
    fn free_all(&self) -> Result<()> {
        delete_prefix(&self.shared, self.alloc_prefix())
    }

    fn capacity(&self) -> Option<u32> {
        Some(self.capacity)
    }

    /// The capacity less the allocation keys, counted by the server at one revision: every key
    /// under `alloc/`, and those in the range of the ids lock-etcd writes (`alloc/0000000000` up
    /// to the capacity's).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] when the two counts differ: a key under `alloc/` outside that range
    /// (`alloc/0`, `alloc/+000000001`, an id at or beyond the capacity), which [`allocate`]
    /// refuses as well. (A key inside the range with a suffix, `alloc/0000000001x`, is counted;
    /// `allocate`, which reads the keys, finds it.)
    ///
    /// [`allocate`]: Manager::allocate
    fn available(&self) -> Result<Option<u32>> {
        let ctx = self.shared.ctx.clone();
        let prefix = self.alloc_prefix();
        let (first, end) = (
            self.alloc_key(LockId(0)),
            self.alloc_key(LockId(self.capacity)),
        );
        let (all, ids) = self.shared.block_on(async move {
            let answer = ctx
                .call(|mut c| {
                    let count = |from: &str, options: GetOptions| {
                        TxnOp::get(from, Some(options.with_count_only()))
                    };
                    let txn = Txn::new().and_then([
                        count(&prefix, GetOptions::new().with_prefix()),
                        count(&first, GetOptions::new().with_range(end.as_str())),
                    ]);
                    async move { c.txn(txn).await }
                })
                .await?;
            let count = |index| txn_range(&answer.0, index).map(|range| range.count);
            count(0).zip(count(1)).ok_or_else(|| {
                Error::corrupt("etcd answered a count of the allocation keys without the counts")
            })
        })?;
        if all != ids {
            return Err(Error::corrupt(format!(
                "{} etcd allocation key(s) under {:?} are not ids below the capacity {} \
                 (ids are 10 digits)",
                all - ids,
                self.alloc_prefix(),
                self.capacity
            )));
        }
        let count = u32::try_from(ids).unwrap_or(u32::MAX);
        Ok(Some(self.capacity.saturating_sub(count)))
    }

    /// Every lock whose held marker exists, from one Range: the holder the marker names, flagged
    /// dead when its key is gone (see [`snapshot`](Manager::snapshot)).
    fn held(&self) -> Result<Vec<HeldLock>> {
        Ok(self
            .states()?
            .into_iter()
            .filter_map(|l| l.holder.map(|h| HeldLock::new(l.id, Some(h))))
            .collect())
    }

    /// Every lock that is held or waited for, from one Range over the table's lock keys at one
    /// revision: the holder named by the lock's held marker (flagged dead when its key is gone
    /// without a clean release) and each waiting key's owner, in queue order, with `since` =
    /// when it started waiting.
    fn snapshot(&self) -> Result<Vec<LockState>> {
        self.states()
    }

    /// The other managers that have this table open, from their client keys (`clients.rs`):
    /// those of processes of this host that have ended are left out at once, those of other
    /// hosts once their lease expires.
    fn clients(&self) -> Result<Vec<Holder>> {
        let ctx = self.shared.ctx.clone();
        let root = Arc::clone(&self.root);
        let own = self.client_key.clone();
        self.shared
            .block_on(async move { crate::clients::list(&ctx, &root, &own).await })
    }

    fn deadlock_timeout(&self) -> Option<Duration> {
        match self.deadlock_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Sets how long a blocked `lock` or `try_lock_for` of this table's handles waits before it
    /// checks for a deadlock (default 1 s); zero turns detection off. Applies to waits already
    /// under way from their next check.
    fn set_deadlock_timeout(&self, timeout: Duration) -> Result<()> {
        self.shared.ctx.usable()?;
        self.deadlock_ms
            .store(timeout_ms(timeout), Ordering::Relaxed);
        Ok(())
    }
}

/// How [`EtcdTable::open_at`] treats a missing or existing table.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OpenMode {
    /// Create it with this capacity; `AlreadyExists` when it exists.
    Create(u32),
    /// Open it, reading its capacity; `NotFound` when it is missing.
    Open,
    /// Open it, or create it with this capacity; `Incompatible` on another capacity.
    OpenOrCreate(u32),
}

impl Store for EtcdTable {
    type Address = EtcdSpec;

    fn address(spec: &StoreSpec) -> Result<EtcdSpec> {
        match spec {
            StoreSpec::Etcd(etcd) => Ok(etcd.clone()),
            other => Err(wrong_scheme("etcd", other)),
        }
    }

    /// Connects to the spec's endpoints (a connection shared with every other store of the same
    /// endpoints, prefix and TTL in this process) and creates the table.
    fn create(spec: &EtcdSpec, capacity: u32) -> Result<EtcdTable> {
        crate::EtcdLocks::for_spec(spec)?.create_table(&spec.table, capacity)
    }

    fn open(spec: &EtcdSpec) -> Result<EtcdTable> {
        crate::EtcdLocks::for_spec(spec)?.open_table(&spec.table)
    }

    fn open_or_create(spec: &EtcdSpec, capacity: u32) -> Result<(EtcdTable, bool)> {
        crate::EtcdLocks::for_spec(spec)?.open_or_create_table(&spec.table, capacity)
    }

    fn remove(spec: &EtcdSpec) -> Result<()> {
        crate::EtcdLocks::for_spec(spec)?.remove_table(&spec.table)
    }

    fn remove_unused(spec: &EtcdSpec) -> Result<()> {
        crate::EtcdLocks::for_spec(spec)?.remove_unused_table(&spec.table)
    }
}

/// Deletes every key under `prefix`.
fn delete_prefix(shared: &Shared, prefix: String) -> Result<()> {
    let ctx = shared.ctx.clone();
    shared.block_on(async move {
        ctx.call(|mut c| {
            let prefix = prefix.clone();
            async move {
                c.delete(
                    prefix,
                    Some(etcd_client::DeleteOptions::new().with_prefix()),
                )
                .await
            }
        })
        .await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_gap_is_the_lowest_missing_id_of_the_range() {
        assert_eq!(first_gap(0, 4, &[]), Free::Id(0));
        assert_eq!(first_gap(0, 4, &[0, 1, 3]), Free::Id(2));
        assert_eq!(first_gap(0, 4, &[0, 1, 2, 3]), Free::None);
        assert_eq!(first_gap(64, 96, &[64, 65]), Free::Id(66));
        assert_eq!(first_gap(64, 96, &[65]), Free::Id(64));
        assert_eq!(first_gap(64, 66, &[64, 65]), Free::None);
    }

    /// Only the forms lock-etcd writes are ids.
    #[test]
    fn ids_are_canonical() {
        assert_eq!(parse_decimal("0"), Some(0));
        assert_eq!(parse_decimal("4294967295"), Some(u32::MAX));
        for bad in ["", "+3", "03", "00", "-1", " 3", "3 ", "4294967296", "x"] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
        assert_eq!(parse_alloc_id("0000000007"), Some(7));
        for bad in [
            "0",
            "7",
            "+000000001",
            "00000000007",
            "4294967296",
            "000000000x",
        ] {
            assert_eq!(parse_alloc_id(bad), None, "{bad:?}");
        }
    }

    /// A header that `create` writes is read back; one it never writes is `Corrupt` (a
    /// capacity of 0 was accepted, giving a table where every id is out of range).
    #[test]
    fn only_headers_create_could_write_are_read() {
        assert_eq!(parse_meta("m", meta_value(8).as_bytes()).ok(), Some(8));
        assert_eq!(
            parse_meta("m", meta_value(u32::MAX).as_bytes()).ok(),
            Some(u32::MAX)
        );
        for bad in [
            "lockyard-etcd-table 1\ncapacity=0\n",
            "lockyard-etcd-table 1\ncapacity=-1\n",
            "lockyard-etcd-table 1\ncapacity=4294967296\n",
            "lockyard-etcd-table 1\n",
            "lockyard-etcd-table 1\ncapacity=+4\n",
            "lockyard-etcd-table 1\ncapacity=04\n",
        ] {
            assert!(
                matches!(parse_meta("m", bad.as_bytes()), Err(Error::Corrupt { .. })),
                "{bad:?}"
            );
        }
    }
}
