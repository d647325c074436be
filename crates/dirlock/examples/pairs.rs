//! Uncontended try_lock+unlock pairs in a loop, for counting system calls with `strace -c -f`.
//!
//! `cargo run --release -p dirlock --example pairs -- DIR [PAIRS] [pidfile]`: with `pidfile`,
//! the peer (an `O_CREAT|O_EXCL` pid file, written and unlinked) instead of dirlock.

use std::io::Write;

use dirlock::DirLock;
use dirlock::lock_api::Locker;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: pairs DIR [PAIRS] [pidfile]")?;
    let pairs: u32 = args.next().map_or(Ok(1000), |n| n.parse())?;
    if args.next().as_deref() == Some("pidfile") {
        let path = std::path::Path::new(&dir).join("pidfile");
        for _ in 0..pairs {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            file.write_all(std::process::id().to_string().as_bytes())?;
            drop(file);
            std::fs::remove_file(&path)?;
        }
        return Ok(());
    }
    let lock = DirLock::new(&dir)?;
    for _ in 0..pairs {
        if Locker::try_lock(&lock)?.is_none() {
            return Err("the lock is held".into());
        }
        Locker::unlock(&lock)?;
    }
    Ok(())
}
