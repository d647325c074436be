//! `EtcdTable`: the lockyard `Manager` contract as a table of numbered locks under a key prefix.
//!
//! Keys under the table's root `<prefix>/table/<store>`:
//!
//! | key | value | meaning |
//! |---|---|---|
//! | `meta` | `lockyard-etcd-table 1\ncapacity=N\n` | the table exists, with N locks |
//! | `alloc/<id, 10 digits>` | empty | the id is allocated (created under `create_revision == 0`) |
//! | `lock/<id>/<lease hex>` | owner record | lock `id`'s queue (see the mutex recipe) |
//! | `lock/<id>` | `lockyard-etcd-held <lease hex>` | held marker: claimed and not released cleanly |
//!
//! Allocation state lives in etcd, so every process sees the same table. Ids are zero-padded so
//! that key order is id order.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use lock_api::{Error, HeldLock, Holder, LockId, Manager, Result};

use crate::client::{Ctx, Shared};
use crate::handle::EtcdLock;
use crate::record::Record;

const META_MAGIC: &str = "lockyard-etcd-table";
const META_VERSION: &str = "1";

/// A table of `capacity` numbered locks stored in etcd, under the root `<prefix>/table/<store>`:
///
/// | key | value | meaning |
/// |---|---|---|
/// | `meta` | `lockyard-etcd-table 1\ncapacity=N\n` | the table exists, with N locks |
/// | `alloc/<id, 10 digits>` | empty | the id is allocated |
/// | `lock/<id>/<lease hex>` | owner record | lock `id`'s queue (the mutex recipe) |
/// | `lock/<id>` | `lockyard-etcd-held <lease hex>` | held marker: claimed, not released cleanly |
///
/// Ownership is per handle (per [`EtcdLock`]), not per table: two handles on one id exclude each
/// other even in one process.
pub struct EtcdTable {
    shared: Arc<Shared>,
    root: String,
    capacity: u32,
}

impl fmt::Debug for EtcdTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdTable")
            .field("root", &self.root)
            .field("capacity", &self.capacity)
            .finish()
    }
}

fn meta_value(capacity: u32) -> String {
    format!("{META_MAGIC} {META_VERSION}\ncapacity={capacity}\n")
}

/// Parses the `meta` value; returns the capacity.
fn parse_meta(key: &str, value: &[u8]) -> Result<u32> {
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
    capacity.parse::<u32>().map_err(|_| {
        Error::corrupt(format!(
            "etcd table header {key}: bad capacity {capacity:?}"
        ))
    })
}

impl EtcdTable {
    fn meta_key(root: &str) -> String {
        format!("{root}/meta")
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

    /// Opens the table at `root`, creating it when missing and `create` says so.
    ///
    /// Returns the table and whether this call created it.
    pub(crate) fn open_at(
        shared: Arc<Shared>,
        root: String,
        capacity: u32,
        create: bool,
        must_create: bool,
    ) -> Result<(EtcdTable, bool)> {
        if capacity == 0 && create {
            return Err(Error::invalid(
                "an etcd lock table needs a capacity above zero",
            ));
        }
        let ctx = shared.ctx.clone();
        let meta = Self::meta_key(&root);
        let (created, existing) = shared.block_on(async move {
            let value = meta_value(capacity);
            let answer = ctx
                .call(|mut c| {
                    let mut txn = Txn::new();
                    if create {
                        txn = txn
                            .when([Compare::create_revision(meta.as_str(), CompareOp::Equal, 0)])
                            .and_then([TxnOp::put(meta.as_str(), value.clone(), None)])
                            .or_else([TxnOp::get(meta.as_str(), None)]);
                    } else {
                        txn = txn.and_then([TxnOp::get(meta.as_str(), None)]);
                    }
                    async move { c.txn(txn).await }
                })
                .await?;
            let raw = answer.0;
            let created = create && raw.succeeded;
            let existing = if created {
                None
            } else {
                raw.responses
                    .into_iter()
                    .next()
                    .and_then(|r| match r.response {
                        Some(etcd_client::proto::PbTxnOpResponse::ResponseRange(range)) => {
                            range.kvs.into_iter().next().map(|kv| kv.value)
                        }
                        _ => None,
                    })
            };
            Ok((created, existing))
        })?;
        let meta = Self::meta_key(&root);
        if !created {
            if must_create {
                return Err(Error::AlreadyExists {
                    what: format!("etcd lock table {root}"),
                });
            }
            let value = existing.ok_or_else(|| Error::NotFound {
                what: format!("etcd lock table {root}"),
            })?;
            let found = parse_meta(&meta, &value)?;
            if found != capacity {
                return Err(Error::incompatible(
                    format!("etcd lock table {root} capacity"),
                    capacity,
                    found,
                ));
            }
        }
        Ok((
            EtcdTable {
                shared,
                root,
                capacity,
            },
            created,
        ))
    }

    /// Deletes every key of the table at `root`. Locks still held there are lost.
    pub(crate) fn remove_at(shared: &Shared, root: &str) -> Result<()> {
        delete_prefix(shared, format!("{root}/"))
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

    fn handle(&self, id: LockId) -> EtcdLock {
        EtcdLock::new(
            Arc::clone(&self.shared),
            id,
            format!("{}/lock/{}/", self.root, id.get()),
            Some(self.alloc_key(id)),
        )
    }

    /// The allocated ids, in order.
    async fn allocated(ctx: &Ctx, prefix: &str) -> Result<Vec<u32>> {
        let answer = ctx
            .call(|mut c| async move {
                c.get(
                    prefix,
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                )
                .await
            })
            .await?;
        let mut ids = Vec::with_capacity(answer.kvs().len());
        for kv in answer.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let id = key
                .strip_prefix(prefix)
                .and_then(|s| s.parse::<u32>().ok())
                .ok_or_else(|| Error::corrupt(format!("etcd allocation key {key}")))?;
            ids.push(id);
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Marks `id` allocated; `false` when it already was.
    async fn mark(ctx: &Ctx, key: &str) -> Result<bool> {
        let answer = ctx
            .call(|mut c| {
                let txn = Txn::new()
                    .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key, "", None::<PutOptions>)]);
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(answer.succeeded())
    }
}

impl Manager for EtcdTable {
    type Locker = EtcdLock;

    /// Allocates the lowest free id: reads the allocation keys, then creates the first missing one
    /// under a `create_revision == 0` compare, and starts over if another process was faster.
    fn allocate(&self) -> Result<EtcdLock> {
        let ctx = self.shared.ctx.clone();
        let prefix = self.alloc_prefix();
        let root = self.root.clone();
        let capacity = self.capacity;
        let id = self.shared.block_on(async move {
            loop {
                let ids = Self::allocated(&ctx, &prefix).await?;
                let mut free = 0u32;
                for id in ids {
                    if id == free {
                        free += 1;
                    } else if id > free {
                        break;
                    }
                }
                if free >= capacity {
                    return Err(Error::Exhausted { capacity });
                }
                let key = format!("{root}/alloc/{free:010}");
                if Self::mark(&ctx, &key).await? {
                    return Ok(free);
                }
            }
        })?;
        Ok(self.handle(LockId(id)))
    }

    fn retrieve(&self, id: LockId) -> Result<EtcdLock> {
        self.check(id)?;
        Ok(self.handle(id))
    }

    fn allocate_and_retrieve(&self, id: LockId) -> Result<EtcdLock> {
        self.check(id)?;
        let ctx = self.shared.ctx.clone();
        let key = self.alloc_key(id);
        let marked = self
            .shared
            .block_on(async move { Self::mark(&ctx, &key).await })?;
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

    fn available(&self) -> Result<Option<u32>> {
        let ctx = self.shared.ctx.clone();
        let prefix = self.alloc_prefix();
        let count = self.shared.block_on(async move {
            let answer = ctx
                .call(|mut c| {
                    let prefix = prefix.clone();
                    async move {
                        c.get(
                            prefix,
                            Some(GetOptions::new().with_prefix().with_count_only()),
                        )
                        .await
                    }
                })
                .await?;
            Ok(answer.count())
        })?;
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        Ok(Some(self.capacity.saturating_sub(count)))
    }

    /// Every lock whose queue is not empty; the holder is the queue's first key.
    fn held(&self) -> Result<Vec<HeldLock>> {
        let ctx = self.shared.ctx.clone();
        let prefix = self.lock_prefix();
        let kvs = self.shared.block_on(async move {
            let mut answer = ctx
                .call(|mut c| {
                    let prefix = prefix.clone();
                    async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
                })
                .await?;
            Ok(answer.take_kvs())
        })?;
        let prefix = self.lock_prefix();
        let mut first: BTreeMap<u32, etcd_client::KeyValue> = BTreeMap::new();
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
            // `lock/<id>` alone is the lock's held marker, not a queue entry.
            let Some((id, _)) = rest.split_once('/') else {
                continue;
            };
            let id = id
                .parse::<u32>()
                .map_err(|_| Error::corrupt(format!("etcd lock key {key}")))?;
            let earlier = first
                .get(&id)
                .is_some_and(|kept| kept.create_revision() <= kv.create_revision());
            if !earlier {
                first.insert(id, kv);
            }
        }
        let mut held = Vec::with_capacity(first.len());
        for (id, kv) in first {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let holder = Record::decode(&key, kv.value()).ok().map(|record| {
                let mut holder = Holder::default();
                holder.pid = Some(record.pid);
                holder.host = Some(record.host);
                holder.owner = Some(format!("lease {:016x}", kv.lease()));
                holder.since = Some(record.since);
                holder
            });
            held.push(HeldLock::new(LockId(id), holder));
        }
        Ok(held)
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
