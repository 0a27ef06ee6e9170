//! Power-loss emulation without LazyFS or dm-log-writes (neither runs on these machines): a
//! process runs with the `synclog` LD_PRELOAD library (`loadtest/powerloss/synclog.c`), which
//! records after every successful `fsync`/`fdatasync` how many bytes of which file (by inode)
//! and which entries of which directory are durable. After the process is killed (-9),
//! [`apply`] turns its data directory into what a power loss at that instant may leave, in the
//! worst case POSIX allows: every file is cut to its last synced size (never synced: empty),
//! and every directory entry created since the directory's last sync is removed.
//!
//! Not modelled: resurrecting files deleted after the last directory sync (their contents are
//! gone by then; RocksDB ignores obsolete files anyway), and undoing a rename whose directory
//! was not synced yet (RocksDB syncs the directory right after each rename). Directories never
//! synced are left as they are.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = include_str!("../powerloss/synclog.c");

/// Builds the library into `dir` with the system C compiler (clang, which RocksDB's build
/// needs anyway); returns its path.
pub fn build_synclog(dir: &Path) -> anyhow::Result<PathBuf> {
    let src = dir.join("synclog.c");
    let lib = dir.join("libsynclog.so");
    std::fs::write(&src, SOURCE)?;
    let status = Command::new("clang")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .status()?;
    anyhow::ensure!(
        status.success(),
        "clang could not build the synclog library"
    );
    Ok(lib)
}

/// The environment that loads the library, logging to `log`.
pub fn env(lib: &Path, log: &Path) -> [(String, String); 2] {
    [
        ("LD_PRELOAD".into(), lib.display().to_string()),
        ("UPLINK_SYNCLOG".into(), log.display().to_string()),
    ]
}

/// Starts one of our binaries on `config`, serving `web`, with the library loaded through
/// `env` (see [`env`]); returns once it is ready.
pub fn spawn_logged(
    (name, bin): (&str, &Path),
    config: &Path,
    web: std::net::SocketAddr,
    log: &Path,
    env: &[(String, String)],
) -> anyhow::Result<crate::harness::Proc> {
    let proc = crate::harness::Proc::spawn(
        name,
        Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address={web}"))
            .envs(env.iter().map(|(k, v)| (k, v))),
        log,
    )?;
    crate::harness::wait_ready(web, std::time::Duration::from_secs(20))?;
    Ok(proc)
}

/// What [`apply`] took away.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Lost {
    /// Files cut short, and the bytes cut.
    pub truncated_files: u64,
    pub truncated_bytes: u64,
    /// Directory entries removed (created after their directory's last sync).
    pub removed_entries: u64,
}

/// The durable state the log describes.
#[derive(Default)]
struct Durable {
    /// inode → bytes synced.
    files: HashMap<u64, u64>,
    /// directory → (entry name → inode) at its last sync.
    dirs: HashMap<PathBuf, HashMap<String, u64>>,
}

fn parse(log: &str) -> Durable {
    let mut d = Durable::default();
    for line in log.lines() {
        let mut parts = line.split(' ');
        match parts.next() {
            Some("F") => {
                let (Some(ino), Some(size)) = (parts.next(), parts.next()) else {
                    continue;
                };
                if let (Ok(ino), Ok(size)) = (ino.parse(), size.parse()) {
                    d.files.insert(ino, size);
                }
            }
            Some("D") => {
                let Some(dir) = parts.next() else { continue };
                let entries = parts
                    .filter_map(|e| {
                        let (name, ino) = e.rsplit_once(':')?;
                        Some((name.to_owned(), ino.parse().ok()?))
                    })
                    .collect();
                d.dirs.insert(PathBuf::from(dir), entries);
            }
            _ => {}
        }
    }
    d
}

/// Emulates a power loss on `root` (recursively) from the library's `log`. The process that
/// wrote it must be dead.
pub fn apply(log: &Path, root: &Path) -> io::Result<Lost> {
    let durable = parse(&std::fs::read_to_string(log).unwrap_or_default());
    let mut lost = Lost::default();
    walk(&durable, &root.canonicalize()?, &mut lost)?;
    Ok(lost)
}

fn walk(durable: &Durable, dir: &Path, lost: &mut Lost) -> io::Result<()> {
    let synced = durable.dirs.get(dir);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if let Some(listing) = synced
            && !listing.contains_key(&name)
        {
            // Created after the directory's last sync: the entry is not durable.
            if meta.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
            lost.removed_entries += 1;
            continue;
        }
        if meta.is_dir() {
            walk(durable, &path, lost)?;
        } else if meta.is_file() {
            let keep = durable.files.get(&meta.ino()).copied().unwrap_or(0);
            if meta.len() > keep {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(keep)?;
                lost.truncated_files += 1;
                lost.truncated_bytes += meta.len() - keep;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_bytes_and_entries_are_taken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical");
        let a = root.join("a");
        let b = root.join("b");
        std::fs::write(&a, b"0123456789").expect("write");
        std::fs::write(&b, b"xyz").expect("write");
        let ino = |p: &Path| std::fs::metadata(p).expect("meta").ino();
        // `a` synced at 4 bytes; the directory synced while only `a` existed.
        let log = root.join("sync.log");
        std::fs::write(
            &log,
            format!("F {} 4\nD {} a:{}\n", ino(&a), root.display(), ino(&a)),
        )
        .expect("log");
        let lost = apply(&log, &root).expect("apply");
        assert_eq!(std::fs::read(&a).expect("a"), b"0123");
        assert!(!b.exists());
        // The log itself was created after the sync too.
        assert_eq!(
            lost,
            Lost {
                truncated_files: 1,
                truncated_bytes: 6,
                removed_entries: 2
            }
        );
    }
}
