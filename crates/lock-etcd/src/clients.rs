//! Who has a lock table open: one client key per open [`EtcdTable`](crate::EtcdTable), for
//! `Manager::clients` and `Store::remove_unused`.
//!
//! Every table, when it opens, puts `<root>/clients/<nonce>` on its connection's default
//! session lease (the nonce is that of the table's owner key). The value is a client record
//! (`record.rs`): pid, host, owner, when it opened, and the boot, pid namespace and start time
//! of its process. The put is guarded by the table header's CreateRevision, so a table removed
//! meanwhile gets no client key, and its open is `NotFound`.
//!
//! - **Closed.** Dropping the table deletes its key; a connection that closes revokes its lease,
//!   which deletes the keys of every table still open on it.
//! - **Killed.** The key stays until the lease expires (one TTL). A reader on the same host, in
//!   the same boot and pid namespace, sees at once that the process has ended (its pid and
//!   start time, `lock_api::process_state`) and leaves it out; a reader elsewhere lists it until
//!   the lease expires.
//! - **Session lost** (a partition or a stop longer than the TTL). The keys went with the lease.
//!   The connection's next default session, granted at its next acquisition, puts the key of
//!   every table still open on it again. Until then those tables are not listed.
//!
//! The connection serialises registering, unregistering and putting the keys again on a new
//! session under the default session's lock, so a key deleted on close is never put back.
//!
//! `remove_unused` reads the header and the client keys at one revision, refuses with `InUse`
//! when a client that has not ended is among them, and otherwise deletes the table in one Txn
//! guarded by the header's ModRevision and by no client key having changed since that revision:
//! a table opened meanwhile either was seen, or finds the table gone at its first request (every
//! table request is guarded by the header's CreateRevision), as `Store::remove_unused` promises.

use etcd_client::{Compare, CompareOp, DeleteOptions, PutOptions, Txn, TxnOp};
use lock_api::{Error, Holder, Result};

use crate::client::{Ctx, Identity, Shared, prefix_end, range_all, txn_first_kv, txn_kvs};
use crate::record::Client;
use crate::table::{EtcdTable, parse_meta};

/// The prefix of a table's client keys.
pub(crate) fn prefix(root: &str) -> String {
    format!("{root}/clients/")
}

/// An open table's client key, and what guards its put.
#[derive(Debug, Clone)]
pub(crate) struct Registration {
    pub(crate) key: String,
    value: Vec<u8>,
    /// The table header's key and CreateRevision.
    meta: String,
    meta_rev: i64,
}

impl Registration {
    /// The registration of a table at `root` (header `meta` created at `meta_rev`) whose owner
    /// key is `owner`, opened now.
    pub(crate) fn new(ctx: &Ctx, root: &str, meta: String, meta_rev: i64, owner: &str) -> Self {
        let nonce = owner.rsplit('/').next().unwrap_or(owner);
        let identity = &ctx.identity;
        let client = Client {
            record: crate::record::Record {
                pid: identity.pid,
                pid_ns: identity.pid_ns,
                host: identity.host.clone(),
                owner: Some(owner.to_owned()),
                since: std::time::SystemTime::now(),
                data: Vec::new(),
            },
            local: identity.local.clone(),
        };
        Registration {
            key: format!("{}{nonce}", prefix(root)),
            value: client.encode(),
            meta,
            meta_rev,
        }
    }

    /// Puts the key on `lease` if the table still exists; `Ok(false)` when it does not.
    ///
    /// # Errors
    ///
    /// [`Error::Lost`] when etcd no longer has the lease; as any request otherwise.
    pub(crate) async fn put(&self, ctx: &Ctx, lease: i64) -> Result<bool> {
        let answer = ctx
            .call(|mut c| {
                let txn = Txn::new()
                    .when([Compare::create_revision(
                        self.meta.as_str(),
                        CompareOp::Equal,
                        self.meta_rev,
                    )])
                    .and_then([TxnOp::put(
                        self.key.as_str(),
                        self.value.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    )]);
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(answer.succeeded())
    }

    /// Deletes the key.
    pub(crate) async fn delete(ctx: &Ctx, key: &str) -> Result<()> {
        ctx.call(|mut c| async move { c.delete(key, None).await })
            .await
            .map(drop)
    }
}

/// The client records `kvs` that have not ended as seen by `here`, with their keys, decoded.
fn running<'k>(
    kvs: &'k [etcd_client::proto::PbKeyValue],
    here: &Identity,
) -> Result<Vec<(&'k [u8], Client)>> {
    let mut out = Vec::new();
    for kv in kvs {
        let key = String::from_utf8_lossy(&kv.key);
        let client = Client::decode(&key, &kv.value)?;
        if !client.has_ended(here) {
            out.push((kv.key.as_slice(), client));
        }
    }
    Ok(out)
}

/// The other open managers of the table at `root`: every client key but `own`, less those whose
/// process has ended.
///
/// # Errors
///
/// [`Error::Corrupt`] for a client key whose value is not a client record; request errors.
pub(crate) async fn list(ctx: &Ctx, root: &str, own: &str) -> Result<Vec<Holder>> {
    let (_, kvs) = range_all(ctx, &prefix(root), false).await?;
    Ok(running(&kvs, &ctx.identity)?
        .into_iter()
        .filter(|(key, _)| *key != own.as_bytes())
        .map(|(_, client)| client.record.holder(&ctx.identity))
        .collect())
}

/// How many times `remove_unused` reads and tries again when a client key changed between its
/// read and its delete.
const REMOVE_TRIES: usize = 5;

/// Deletes the table at `root` only if no manager that has not ended has it open (module docs).
///
/// # Errors
///
/// [`Error::NotFound`] when there is no table; `Incompatible` or `Corrupt` for a header that is
/// not a lockyard table's, `Corrupt` for a client key that is not a client record, with nothing
/// deleted; [`Error::InUse`] naming the open managers; `Unavailable` when client keys kept
/// changing.
pub(crate) fn remove_unused_at(shared: &Shared, root: &str) -> Result<()> {
    let ctx = shared.ctx.clone();
    let root = root.to_owned();
    let meta = EtcdTable::meta_key(&root);
    shared.block_on(async move {
        let clients = prefix(&root);
        let end = prefix_end(clients.as_bytes());
        for _ in 0..REMOVE_TRIES {
            let (clients, end, meta) = (clients.as_str(), end.as_slice(), meta.as_str());
            let read = ctx
                .call(|mut c| {
                    let txn = Txn::new().and_then([
                        TxnOp::get(meta, None),
                        TxnOp::get(
                            clients,
                            Some(etcd_client::GetOptions::new().with_range(end)),
                        ),
                    ]);
                    async move { c.txn(txn).await }
                })
                .await?;
            let raw = &read.0;
            let Some(header) = txn_first_kv(raw, 0) else {
                return Err(Error::NotFound {
                    what: format!("etcd lock table {root}"),
                });
            };
            parse_meta(meta, &header.value)?;
            let revision = raw.header.as_ref().map_or(0, |h| h.revision);
            let open = running(txn_kvs(raw, 1), &ctx.identity)?;
            if !open.is_empty() {
                return Err(Error::InUse {
                    what: format!(
                        "etcd lock table {root} ({})",
                        managers_open(&open, &ctx.identity)
                    ),
                });
            }
            let table = format!("{root}/");
            let (table, header_rev) = (table.as_str(), header.mod_revision);
            let deleted = ctx
                .call(|mut c| {
                    let txn = Txn::new()
                        .when([
                            Compare::mod_revision(meta, CompareOp::Equal, header_rev),
                            Compare::mod_revision(clients, CompareOp::Less, revision + 1)
                                .with_range(end),
                        ])
                        .and_then([TxnOp::delete(
                            table,
                            Some(DeleteOptions::new().with_prefix()),
                        )]);
                    async move { c.txn(txn).await }
                })
                .await?;
            if deleted.succeeded() {
                return Ok(());
            }
            // A manager opened (or closed) meanwhile, or the table was replaced: read again.
        }
        Err(Error::unavailable(format!(
            "etcd lock table {root}: managers kept opening and closing it while it was being \
             removed; try again"
        )))
    })
}

/// How a refusal names the open managers: by pid, as `lock_api::managers_open` words it, and
/// by host for those of other hosts.
fn managers_open(open: &[(&[u8], Client)], here: &Identity) -> String {
    let local: Vec<Option<u32>> = open
        .iter()
        .filter(|(_, c)| c.record.host == here.host)
        .map(|(_, c)| c.record.pid_seen(here))
        .collect();
    let mut remote: Vec<String> = open
        .iter()
        .filter(|(_, c)| c.record.host != here.host)
        .map(|(_, c)| format!("pid {} on {}", c.record.pid, c.record.host))
        .collect();
    remote.sort();
    remote.dedup();
    let elsewhere = open.len() - local.len();
    let remote = match elsewhere {
        0 => return lock_api::managers_open(&local),
        1 => format!(
            "1 manager on another host has it open: {}",
            remote.join(", ")
        ),
        n => format!(
            "{n} managers on other hosts have it open: {}",
            remote.join(", ")
        ),
    };
    if local.is_empty() {
        remote
    } else {
        format!("{}; {remote}", lock_api::managers_open(&local))
    }
}
