//! Lock data: what a holder stores in its own key's value, next to its owner record.
//!
//! The blocking [`EtcdLock`](crate::EtcdLock) and the async [`AsyncGuard`](crate::AsyncGuard)
//! both check the size first, then rewrite the key while it is still theirs; each fires its
//! own lost signal when the key turns out not to be.

use std::future::Future;

use lock_api::{Error, Result};

use crate::mutex::{self, Held};
use crate::options::MAX_DATA_LEN;

/// Refuses `data` over [`MAX_DATA_LEN`] bytes, before anything is asked of the acquisition.
///
/// # Errors
///
/// [`Error::InvalidArgument`] naming the size and the limit.
pub(crate) fn check(data: &[u8]) -> Result<()> {
    if data.len() > MAX_DATA_LEN {
        return Err(Error::invalid(format!(
            "lock data of {} bytes is over the limit of {MAX_DATA_LEN}",
            data.len()
        )));
    }
    Ok(())
}

/// Stores `data` in `held`'s own key, with its owner record, if the key's CreateRevision is
/// still the acquisition's. The future owns what it needs, so the blocking API can run it on
/// its runtime thread.
///
/// The future fails with [`Error::Lost`] when the key is no longer ours, or
/// [`Error::Unavailable`].
pub(crate) fn write(held: &Held, data: &[u8]) -> impl Future<Output = Result<()>> + Send + use<> {
    let ctx = held.session.ctx.clone();
    let key = held.key.clone();
    let (revision, lease) = (held.revision, held.lease());
    let mut record = held.record.clone();
    record.data = data.to_vec();
    async move { mutex::rewrite(&ctx, &key, revision, lease, record.encode()).await }
}
