//! The durable on-disk queue, in RocksDB. The only module that touches `rocksdb`.
//!
//! # Layout
//! - `d` + seq (u64, big-endian): one record, the protobuf encoding of a remote-write
//!   `WriteRequest` holding one scrape's samples. Big-endian keys make iteration order equal
//!   to append order.
//! - `m:next_seq`: the next sequence number to assign (u64 BE). Written in the same atomic
//!   write batch as each record, so sequence numbers never repeat, even after the queue drains
//!   and the process restarts.
//! - `m:records`, `m:bytes`: how many records are stored and their bytes (u64 BE), written in
//!   the same atomic batch as every change to the records, so [`Queue::open`] reads them instead
//!   of iterating the backlog (start-up does not grow with it). A queue written by a version
//!   without them is counted once, on its first open.
//! - `s` + set id (u64 BE): the encoded series set (labels) that records refer to
//!   (`uplink_shared::codec`), written in the same write batch as the first record using it.
//! - `u` + set id: the sequence number of the newest record using the set. [`Queue::gc_sets`]
//!   deletes sets whose newest user was acknowledged.
//! - `m:queue_id`: a random u64 chosen when the queue is created. The agent sends it in its
//!   hello, so the gateway never confuses the sequence numbers of a wiped queue with the old
//!   ones.
//!
//! # Durability ([`SyncPolicy`])
//! - `Always`: [`Queue::append`] returns once the record is synced to disk. A process crash
//!   or a power loss loses nothing appended.
//! - `Interval(d)` (group commit): an append writes RocksDB's write-ahead log without syncing
//!   and returns; one background thread syncs the log every `d`. A process crash loses nothing
//!   (the log is in the OS page cache); a power loss loses at most the appends of the last `d`
//!   (plus the sync in progress).
//!
//! A failed sync or write is never trusted: the records written since the last successful sync
//! are counted as unverified ([`QueueStats::unverified_records`]) and kept in memory. The
//! retry re-verifies: it closes and reopens the database, has RocksDB write what it recovered
//! into synced table files, deletes whatever a failed write left beyond the last record handed
//! out, and writes again (under the same sequence numbers) each unverified record that does
//! not read back with the same bytes. Until that succeeds the queue is *degraded*.
//!
//! # Degraded mode (disk full, I/O errors)
//! While degraded, appends go to a memory buffer bounded by
//! [`QueueOptions::memory_buffer_bytes`] (records keep their series set definitions; when it is
//! full the oldest buffered records are dropped and counted in [`QueueStats::dropped_samples`]).
//! Buffered records have no sequence number yet: they are numbered, in order, when they reach
//! RocksDB, so sequence numbers stay gap-free and a dropped record leaves no hole. A retry
//! (every [`QueueOptions::retry_interval`], by the background thread, and by [`Queue::flush`])
//! reopens the database, writes the unverified records back, then drains the buffer. Buffered
//! records are lost if the process ends before the disk works again. Retention is not enforced
//! while degraded (it would need a working disk too).
//!
//! # Corruption
//! [`Queue::open`] never fails on a corrupt queue: when RocksDB reports corruption, or a
//! metadata value cannot be decoded, the directory is moved aside to
//! `<dir>.corrupt-<unix-seconds>` (logged with both paths, counted in
//! [`QueueStats::quarantined`]) and a fresh queue (new `queue_id`) is started. A lock held by
//! another process is not corruption: it stays an error.
//!
//! # Invariants
//! - A record is *collected* once [`Queue::append`] returned [`Appended::Stored`]: it is in
//!   RocksDB's write-ahead log, durable as the sync policy says. [`Appended::Buffered`] means
//!   it is in memory only, until the disk works again.
//! - Appends are serialized (one writer lock that also guards every other change), so records
//!   become visible in sequence order with no gaps below [`Queue::head`]; a reader that saw
//!   `head` never misses a record below it, and never sees one at or above it.
//! - A record is deleted only by [`Queue::delete`], which the shipper calls only for batches the
//!   gateway acknowledged, or by the retention budget ([`Queue::enforce_retention`]). A restart
//!   therefore resumes at the first unacknowledged record.
//! - [`Queue::usage`] equals what RocksDB holds after every open; while degraded it may count
//!   records a failed write left behind until the retry deletes them.
//! - Every RocksDB call runs on the blocking pool (`spawn_blocking`) or the queue's own
//!   thread, never on the async runtime's worker threads.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rocksdb::{DB, Direction, ErrorKind, IteratorMode, Options, WriteBatch, WriteOptions};
use tokio::sync::watch;
use tracing::{debug, error, info};

const NEXT_SEQ: &[u8] = b"m:next_seq";
const QUEUE_ID: &[u8] = b"m:queue_id";
const RECORDS: &[u8] = b"m:records";
const BYTES: &[u8] = b"m:bytes";
const DATA: u8 = b'd';
const SET: u8 = b's';
const SET_USE: u8 = b'u';

/// How long a write waits out a RocksDB write stall before it counts as failed.
const STALL_PATIENCE: Duration = Duration::from_secs(2);
/// Records written back from memory per write batch, at most.
const CHUNK_RECORDS: usize = 256;
/// Bytes written back from memory per write batch, at most (one record may exceed it).
const CHUNK_BYTES: usize = 1 << 20;

/// The series set a record refers to, with its definition when it may be new to the queue.
#[derive(Clone, Debug)]
pub struct SetUse {
    pub id: u64,
    pub def: Option<Bytes>,
}

fn set_key(prefix: u8, id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// RocksDB reported an error (disk full, corruption, lock held by another process).
    #[error("queue at {}: {source}", path.display())]
    Db {
        path: PathBuf,
        source: rocksdb::Error,
    },
    /// A stored metadata value had the wrong size.
    #[error("queue at {}: corrupt metadata key {key}", path.display())]
    Corrupt { path: PathBuf, key: &'static str },
    /// The database is closed: reopening it after a write error failed (retried).
    #[error("queue at {}: closed after a write error, reopening is retried", path.display())]
    Closed { path: PathBuf },
    /// The disk is failing and the record is larger than the whole memory buffer.
    #[error("queue at {}: disk failing and a record of {bytes} bytes exceeds the memory buffer", path.display())]
    BufferFull { path: PathBuf, bytes: u64 },
    /// The disk is still failing; this many records are only in memory.
    #[error("queue at {}: disk failing, {records} records only in memory", path.display())]
    Degraded { path: PathBuf, records: u64 },
    /// A corrupt queue could not be moved aside.
    #[error("queue at {}: moving the corrupt queue to {} failed: {source}", path.display(), to.display())]
    Quarantine {
        path: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
    /// The queue's background thread could not be started.
    #[error("starting the queue thread: {0}")]
    Thread(std::io::Error),
    /// A failure injected by a test.
    #[cfg(test)]
    #[error("injected failure")]
    Injected,
    /// The blocking task panicked or was cancelled.
    #[error("queue task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl QueueError {
    /// Whether the queue's files are damaged (as opposed to unreachable, locked or full).
    pub fn is_corruption(&self) -> bool {
        match self {
            QueueError::Db { source, .. } => source.kind() == ErrorKind::Corruption,
            QueueError::Corrupt { .. } => true,
            _ => false,
        }
    }
}

/// One stored record.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub seq: u64,
    pub data: Bytes,
}

/// What [`Queue::append`] did with a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Written to RocksDB under this sequence number, durable as the sync policy says.
    Stored(u64),
    /// The disk is failing: held in the memory buffer, numbered when it reaches RocksDB.
    Buffered,
}

impl Appended {
    /// The sequence number, once stored.
    pub fn seq(self) -> Option<u64> {
        match self {
            Appended::Stored(seq) => Some(seq),
            Appended::Buffered => None,
        }
    }
}

/// When appends reach the disk (module docs, "Durability").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Sync every append before it returns.
    Always,
    /// Write without syncing; a background thread syncs this often (group commit).
    Interval(Duration),
}

/// Returns a record's timestamp and sample count, `None` when it cannot be decoded.
pub type Inspect = fn(&[u8]) -> Option<(i64, u64)>;

/// How a queue is opened.
#[derive(Clone, Debug)]
pub struct QueueOptions {
    pub sync: SyncPolicy,
    /// Memory for appends while the disk fails (0: none, such appends fail).
    pub memory_buffer_bytes: u64,
    /// How often a degraded queue retries the disk.
    pub retry_interval: Duration,
    /// Run the background thread (interval syncs, retries). Tests turn it off and call
    /// [`Queue::flush`] instead.
    pub background: bool,
    /// Counts the samples of buffered records dropped when the buffer is full.
    pub inspect: Inspect,
}

/// Default memory buffer while the disk fails: 16 MiB.
pub const DEFAULT_MEMORY_BUFFER_BYTES: u64 = 16 << 20;
/// Group commit interval used by [`Queue::open`] with `fsync == false`.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(100);

impl QueueOptions {
    pub fn new(sync: SyncPolicy) -> Self {
        QueueOptions {
            sync,
            memory_buffer_bytes: DEFAULT_MEMORY_BUFFER_BYTES,
            retry_interval: Duration::from_secs(1),
            background: true,
            inspect: |_| None,
        }
    }
}

/// The queue's health, cumulative since open (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Writing to the disk failed; appends go to the memory buffer.
    pub degraded: bool,
    /// Records (and their bytes, set definitions included) held only in memory.
    pub buffered_records: u64,
    pub buffered_bytes: u64,
    /// Failed writes and syncs (retries included).
    pub write_errors: u64,
    /// Records written since the last successful sync when a write or sync failed: possibly
    /// lost by a power loss before a retry re-verifies them.
    pub unverified_records: u64,
    /// Buffered records dropped because the memory buffer was full, and their samples.
    pub dropped_records: u64,
    pub dropped_samples: u64,
    /// Corrupt queues moved aside at open (0 or 1).
    pub quarantined: u64,
}

/// A record not (or not verifiably) in RocksDB.
#[derive(Clone, Debug)]
struct Pending {
    data: Bytes,
    set: Option<SetUse>,
}

impl Pending {
    /// Memory it holds (data and set definition).
    fn size(&self) -> u64 {
        let def = self
            .set
            .as_ref()
            .and_then(|s| s.def.as_ref())
            .map_or(0, Bytes::len);
        (self.data.len() + def) as u64
    }
}

/// Everything the writer lock guards.
struct Writer {
    /// The next sequence number to assign.
    next: u64,
    degraded: bool,
    /// Interval policy: records written since the last successful sync, in order.
    unsynced: VecDeque<(u64, Pending)>,
    /// Bytes of `unsynced` records; kept within the memory budget by syncing early.
    unsynced_bytes: u64,
    /// Numbered records to write again after a failed write or sync, in order.
    rewrite: VecDeque<(u64, Pending)>,
    /// Records appended while degraded, in order, not numbered yet.
    buffer: VecDeque<Pending>,
    /// Definitions of sets whose buffered records were dropped, for the next record using them.
    orphans: HashMap<u64, Bytes>,
    /// Bytes held by `rewrite`, `buffer` and `orphans`.
    memory: u64,
    /// Bumped by every failure: a sync that began before one proves nothing about `unsynced`.
    epoch: u64,
    last_retry: Option<Instant>,
    /// Sets a producer keeps referring to without repeating the definition (a scrape target's
    /// current set), with their pin counts: never garbage-collected.
    pinned: HashMap<u64, usize>,
}

impl Writer {
    fn buffered_records(&self) -> u64 {
        (self.rewrite.len() + self.buffer.len()) as u64
    }

    fn push_unsynced(&mut self, seq: u64, p: Pending) {
        self.unsynced_bytes += p.size();
        self.unsynced.push_back((seq, p));
    }

    /// After a successful sync that began at (`mark`, `epoch`): those records are durable.
    fn synced(&mut self, mark: u64, epoch: u64) {
        if self.epoch != epoch {
            return;
        }
        while self.unsynced.front().is_some_and(|(seq, _)| *seq < mark) {
            if let Some((_, p)) = self.unsynced.pop_front() {
                self.unsynced_bytes -= p.size();
            }
        }
    }
}

/// Test-only fault injection: writes and syncs fail (`After`: the first write happens, then
/// fails, as a write whose sync failed; later ones fail before writing).
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Fault {
    #[default]
    None,
    Before,
    After,
}

/// State shared by every handle and the background thread.
struct Core {
    path: PathBuf,
    opts: QueueOptions,
    queue_id: u64,
    /// `None` while reopening failed.
    db: RwLock<Option<DB>>,
    writer: Mutex<Writer>,
    stats: Mutex<QueueStats>,
    /// Stored records and their bytes; changed only under the writer lock.
    records: AtomicU64,
    bytes: AtomicU64,
    head: watch::Sender<u64>,
    #[cfg(test)]
    fault: Mutex<Fault>,
}

/// Owns the background thread: dropping the last handle stops and joins it, so the database
/// is closed when the last [`Queue`] is dropped.
struct Inner {
    core: Arc<Core>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Handle to the queue; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
    quarantined: Option<Arc<PathBuf>>,
}

fn key(seq: u64) -> [u8; 9] {
    set_key(DATA, seq)
}

fn seq_of(k: &[u8]) -> Option<u64> {
    match k {
        [DATA, rest @ ..] => rest.try_into().ok().map(u64::from_be_bytes),
        _ => None,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means an operation panicked mid-way; the state it guards is only changed
    // after successful writes, so it is still correct.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn db_error(path: &Path) -> impl Fn(rocksdb::Error) -> QueueError + '_ {
    move |source| QueueError::Db {
        path: path.into(),
        source,
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Adds a record's keys to a batch.
fn put_record(wb: &mut WriteBatch, seq: u64, p: &Pending) {
    wb.put(key(seq), &p.data);
    if let Some(set) = &p.set {
        if let Some(def) = &set.def {
            wb.put(set_key(SET, set.id), def);
        }
        wb.put(set_key(SET_USE, set.id), seq.to_be_bytes());
    }
}

/// Adds the metadata every change to the records carries.
fn put_meta(wb: &mut WriteBatch, next: u64, records: u64, bytes: u64) {
    wb.put(NEXT_SEQ, next.to_be_bytes());
    wb.put(RECORDS, records.to_be_bytes());
    wb.put(BYTES, bytes.to_be_bytes());
}

/// How many of `items` go in one write-back batch (at least one).
fn chunk_len<'a>(items: impl Iterator<Item = &'a Pending>) -> usize {
    let mut size = 0;
    let mut n = 0;
    for p in items {
        if n > 0 && (n >= CHUNK_RECORDS || size + p.data.len() > CHUNK_BYTES) {
            break;
        }
        size += p.data.len();
        n += 1;
    }
    n
}

fn db_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    // Small footprint: this runs on modems.
    opts.set_max_background_jobs(1);
    opts.set_write_buffer_size(4 << 20);
    opts.set_max_write_buffer_number(2);
    opts.set_keep_log_file_num(2);
    opts.set_max_log_file_size(1 << 20);
    opts
}

fn read_u64(db: &DB, path: &Path, k: &[u8], name: &'static str) -> Result<Option<u64>, QueueError> {
    match db.get(k).map_err(db_error(path))? {
        None => Ok(None),
        Some(v) => v
            .as_slice()
            .try_into()
            .map(|b| Some(u64::from_be_bytes(b)))
            .map_err(|_| QueueError::Corrupt {
                path: path.into(),
                key: name,
            }),
    }
}

/// Records and bytes stored in `[from, end)`, by iterating them.
fn count_range(db: &DB, path: &Path, from: u64, end: u64) -> Result<(u64, u64), QueueError> {
    let (mut records, mut bytes) = (0u64, 0u64);
    for item in db.iterator(IteratorMode::From(&key(from), Direction::Forward)) {
        let (k, v) = item.map_err(db_error(path))?;
        match seq_of(&k) {
            Some(seq) if seq < end => {
                records += 1;
                bytes += v.len() as u64;
            }
            _ => break,
        }
    }
    Ok((records, bytes))
}

/// The newest stored record's sequence number (one seek).
fn last_seq(db: &DB, path: &Path) -> Result<Option<u64>, QueueError> {
    let mut it = db.iterator(IteratorMode::From(&key(u64::MAX), Direction::Reverse));
    match it.next() {
        Some(item) => Ok(seq_of(&item.map_err(db_error(path))?.0)),
        None => Ok(None),
    }
}

/// What [`load_meta`] finds.
struct Meta {
    queue_id: u64,
    next: u64,
    records: u64,
    bytes: u64,
}

/// Reads the metadata; `create` assigns a queue id when there is none (a new queue).
fn load_meta(db: &DB, path: &Path, create: bool) -> Result<Meta, QueueError> {
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    let existing = read_u64(db, path, QUEUE_ID, "queue_id")?;
    let fresh = existing.is_none();
    let queue_id = match existing {
        Some(id) => id,
        None if create => {
            let id = rand::random::<u64>();
            db.put_opt(QUEUE_ID, id.to_be_bytes(), &sync)
                .map_err(db_error(path))?;
            id
        }
        None => {
            return Err(QueueError::Corrupt {
                path: path.into(),
                key: "queue_id",
            });
        }
    };
    let stored = read_u64(db, path, NEXT_SEQ, "next_seq")?.unwrap_or(0);
    let next = stored.max(last_seq(db, path)?.map_or(0, |s| s + 1));
    let records = read_u64(db, path, RECORDS, "records")?;
    let bytes = read_u64(db, path, BYTES, "bytes")?;
    let (records, bytes) = match (records, bytes) {
        (Some(r), Some(b)) => (r, b),
        _ => {
            // A queue from a version without counters: count once and store them.
            let started = Instant::now();
            let (r, b) = count_range(db, path, 0, u64::MAX)?;
            let mut wb = WriteBatch::default();
            put_meta(&mut wb, next, r, b);
            db.write_opt(wb, &sync).map_err(db_error(path))?;
            if !fresh {
                info!(records = r, bytes = b, took = ?started.elapsed(), "Counted the queue once (written by an older version).");
            }
            (r, b)
        }
    };
    Ok(Meta {
        queue_id,
        next,
        records,
        bytes,
    })
}

fn open_and_load(dir: &Path) -> Result<(DB, Meta), QueueError> {
    let db = DB::open(&db_options(), dir).map_err(db_error(dir))?;
    let meta = load_meta(&db, dir, true)?;
    Ok((db, meta))
}

/// Moves a corrupt queue directory aside; returns where to.
fn quarantine(dir: &Path) -> Result<PathBuf, QueueError> {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".corrupt-{}", unix_seconds()));
    let mut to = dir.with_file_name(&name);
    let mut n = 1;
    while to.exists() {
        let mut numbered = name.clone();
        numbered.push(format!("-{n}"));
        to = dir.with_file_name(numbered);
        n += 1;
    }
    std::fs::rename(dir, &to).map_err(|source| QueueError::Quarantine {
        path: dir.into(),
        to: to.clone(),
        source,
    })?;
    Ok(to)
}

impl Core {
    fn closed(&self) -> QueueError {
        QueueError::Closed {
            path: self.path.clone(),
        }
    }

    /// Runs `f` on the open database.
    fn with_db<T>(&self, f: impl FnOnce(&DB) -> Result<T, QueueError>) -> Result<T, QueueError> {
        let slot = self.db.read().unwrap_or_else(PoisonError::into_inner);
        match slot.as_ref() {
            Some(db) => f(db),
            None => Err(self.closed()),
        }
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.records.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    fn set_counts(&self, (records, bytes): (u64, u64)) {
        self.records.store(records, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
    }

    fn sync_each(&self) -> bool {
        self.opts.sync == SyncPolicy::Always
    }

    /// Writes a batch (synced if asked). Callers hold the writer lock.
    fn write(&self, db: &DB, wb: WriteBatch, sync: bool) -> Result<(), QueueError> {
        #[cfg(test)]
        {
            let mut fault = lock(&self.fault);
            match *fault {
                Fault::None => {}
                Fault::Before => return Err(QueueError::Injected),
                Fault::After => {
                    *fault = Fault::Before;
                    let _ = db.write(wb);
                    return Err(QueueError::Injected);
                }
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        // RocksDB stalls writes while a flush cannot finish (a full disk): fail instead of
        // blocking, after waiting a bounded time for an ordinary stall to pass.
        wo.set_no_slowdown(true);
        let started = Instant::now();
        loop {
            match db.write_opt(WriteBatch::from_data(wb.data()), &wo) {
                Err(e)
                    if e.kind() == ErrorKind::Incomplete && started.elapsed() < STALL_PATIENCE =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                result => return result.map_err(db_error(&self.path)),
            }
        }
    }

    fn sync_wal(&self, db: &DB) -> Result<(), QueueError> {
        #[cfg(test)]
        if *lock(&self.fault) != Fault::None {
            return Err(QueueError::Injected);
        }
        db.flush_wal(true).map_err(db_error(&self.path))
    }

    /// Writes a batch; a failure degrades the queue.
    fn commit(&self, w: &mut Writer, wb: WriteBatch, sync: bool) -> Result<(), QueueError> {
        match self.with_db(|db| self.write(db, wb, sync)) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.degrade(w, &e);
                Err(e)
            }
        }
    }

    /// Enters (or stays in) degraded mode after a failed write or sync: the records written
    /// since the last successful sync are unverified, kept to be re-verified.
    fn degrade(&self, w: &mut Writer, error: &QueueError) {
        let unverified = w.unsynced.len() as u64;
        w.epoch += 1;
        while let Some((seq, p)) = w.unsynced.pop_back() {
            w.memory += p.size();
            w.rewrite.push_front((seq, p));
        }
        w.unsynced_bytes = 0;
        w.last_retry = Some(Instant::now());
        {
            let mut s = lock(&self.stats);
            s.write_errors += 1;
            s.unverified_records += unverified;
        }
        if w.degraded {
            debug!(path = %self.path.display(), %error, "Queue disk still failing.");
        } else {
            w.degraded = true;
            error!(
                path = %self.path.display(),
                %error,
                unverified,
                memory_buffer_bytes = self.opts.memory_buffer_bytes,
                retry = ?self.opts.retry_interval,
                "Queue write failed: buffering appends in memory and retrying the disk."
            );
        }
        self.publish(w);
    }

    /// Nothing is written while degraded: a failed write may have landed, so the counters in
    /// the database are only trusted again after a reopen (in [`Core::recover`]).
    fn check_writable(&self, w: &Writer) -> Result<(), QueueError> {
        if w.degraded {
            return Err(QueueError::Degraded {
                path: self.path.clone(),
                records: w.buffered_records(),
            });
        }
        Ok(())
    }

    /// Copies the writer's state into the stats.
    fn publish(&self, w: &Writer) {
        let mut s = lock(&self.stats);
        s.degraded = w.degraded;
        s.buffered_records = w.buffered_records();
        s.buffered_bytes = w.memory;
    }

    fn append(&self, p: Pending) -> Result<Appended, QueueError> {
        let mut w = lock(&self.writer);
        if w.degraded {
            self.buffer(&mut w, p)?;
            return Ok(Appended::Buffered);
        }
        let seq = w.next;
        let (records, bytes) = self.counts();
        let counts = (records + 1, bytes + p.data.len() as u64);
        let mut wb = WriteBatch::default();
        put_record(&mut wb, seq, &p);
        put_meta(&mut wb, seq + 1, counts.0, counts.1);
        if self.commit(&mut w, wb, self.sync_each()).is_err() {
            self.buffer(&mut w, p)?;
            return Ok(Appended::Buffered);
        }
        w.next = seq + 1;
        self.set_counts(counts);
        self.head.send_replace(seq + 1);
        if !self.sync_each() {
            w.push_unsynced(seq, p);
            if w.unsynced_bytes > self.opts.memory_buffer_bytes {
                // Bound what a failed sync would leave to write again: sync now.
                let _ = self.sync_locked(&mut w);
            }
        }
        Ok(Appended::Stored(seq))
    }

    /// Appends `batch` as one RocksDB write: all of its records (with their set definitions)
    /// or none. Unlike [`Core::append`], it never buffers in memory: while degraded or when the
    /// write fails it returns the error with nothing stored, so a sender that is told so can
    /// retry without losing or duplicating anything.
    fn append_many(&self, batch: Vec<Pending>) -> Result<Range<u64>, QueueError> {
        let mut w = lock(&self.writer);
        let first = w.next;
        if batch.is_empty() {
            return Ok(first..first);
        }
        self.check_writable(&w)?;
        let end = first + batch.len() as u64;
        let (records, bytes) = self.counts();
        let added: u64 = batch.iter().map(|p| p.data.len() as u64).sum();
        let counts = (records + batch.len() as u64, bytes + added);
        let mut wb = WriteBatch::default();
        for (seq, p) in (first..).zip(&batch) {
            put_record(&mut wb, seq, p);
        }
        put_meta(&mut wb, end, counts.0, counts.1);
        self.commit(&mut w, wb, self.sync_each())?;
        w.next = end;
        self.set_counts(counts);
        self.head.send_replace(end);
        if !self.sync_each() {
            for (seq, p) in (first..).zip(batch) {
                w.push_unsynced(seq, p);
            }
            if w.unsynced_bytes > self.opts.memory_buffer_bytes {
                let _ = self.sync_locked(&mut w);
            }
        }
        Ok(first..end)
    }

    /// Syncs the write-ahead log under the writer lock: everything written is then durable.
    fn sync_locked(&self, w: &mut Writer) -> Result<(), QueueError> {
        match self.with_db(|db| self.sync_wal(db)) {
            Ok(()) => {
                let (next, epoch) = (w.next, w.epoch);
                w.synced(next, epoch);
                Ok(())
            }
            Err(e) => {
                self.degrade(w, &e);
                Err(e)
            }
        }
    }

    /// Holds a record in memory while degraded, dropping the oldest buffered ones over budget.
    fn buffer(&self, w: &mut Writer, mut p: Pending) -> Result<(), QueueError> {
        let budget = self.opts.memory_buffer_bytes;
        if p.size() > budget {
            return Err(QueueError::BufferFull {
                path: self.path.clone(),
                bytes: p.size(),
            });
        }
        if let Some(set) = &mut p.set {
            match (&set.def, w.orphans.remove(&set.id)) {
                (None, Some(def)) => {
                    w.memory -= def.len() as u64;
                    set.def = Some(def);
                }
                (Some(_), Some(old)) => w.memory -= old.len() as u64,
                _ => {}
            }
        }
        w.memory += p.size();
        w.buffer.push_back(p);
        while w.memory > budget {
            let Some(oldest) = w.buffer.pop_front() else {
                break;
            };
            self.drop_buffered(w, oldest);
        }
        self.publish(w);
        Ok(())
    }

    /// Drops a buffered record (buffer full), keeping its set definition for later users.
    fn drop_buffered(&self, w: &mut Writer, p: Pending) {
        w.memory -= p.size();
        if let Some(SetUse { id, def: Some(def) }) = p.set {
            let heir = w
                .buffer
                .iter_mut()
                .filter_map(|q| q.set.as_mut())
                .find(|s| s.id == id);
            match heir {
                Some(s) if s.def.is_none() => {
                    w.memory += def.len() as u64;
                    s.def = Some(def);
                }
                Some(_) => {}
                None => {
                    w.memory += def.len() as u64;
                    w.orphans.insert(id, def);
                }
            }
        }
        let samples = (self.opts.inspect)(&p.data).map_or(0, |(_, n)| n);
        let mut s = lock(&self.stats);
        s.dropped_records += 1;
        s.dropped_samples += samples;
    }

    /// Interval policy: syncs the write-ahead log if anything was written since the last sync.
    fn sync(&self) -> Result<(), QueueError> {
        let (mark, epoch) = {
            let w = lock(&self.writer);
            if w.degraded || w.unsynced.is_empty() {
                return Ok(());
            }
            (w.next, w.epoch)
        };
        let result = self.with_db(|db| self.sync_wal(db));
        let mut w = lock(&self.writer);
        match result {
            Ok(()) => {
                w.synced(mark, epoch);
                Ok(())
            }
            Err(e) => {
                if !w.degraded {
                    self.degrade(&mut w, &e);
                }
                Err(e)
            }
        }
    }

    /// Retries the disk if degraded: reopen, delete what may be unverified, write the
    /// unverified records again, drain the buffer. Returns whether the queue is healthy.
    fn recover(&self) -> bool {
        let mut w = lock(&self.writer);
        if !w.degraded {
            return true;
        }
        w.last_retry = Some(Instant::now());
        let buffered = w.buffered_records();
        let result = match self.reopen() {
            // Interval policy: what was written back is synced before the queue is healthy.
            Ok(()) => self
                .write_back(&mut w)
                .and_then(|()| self.sync_locked(&mut w)),
            Err(e) => {
                // Failed writes are counted by `degrade`; a failed reopen here.
                lock(&self.stats).write_errors += 1;
                Err(e)
            }
        };
        match result {
            Ok(()) => {
                w.degraded = false;
                self.publish(&w);
                info!(
                    path = %self.path.display(),
                    records = buffered,
                    "Queue disk works again: wrote the records held in memory."
                );
                true
            }
            Err(error) => {
                debug!(path = %self.path.display(), %error, "Queue disk still failing.");
                self.publish(&w);
                false
            }
        }
    }

    /// Closes and reopens the database, writes what it recovered into synced table files, and
    /// reloads its counters. Callers hold the writer lock.
    fn reopen(&self) -> Result<(), QueueError> {
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        // Close first: RocksDB locks its directory.
        *slot = None;
        let db = DB::open(&db_options(), &self.path).map_err(db_error(&self.path))?;
        // After this, whatever reads back is on disk, not just in the page cache.
        db.flush().map_err(db_error(&self.path))?;
        let meta = load_meta(&db, &self.path, false)?;
        if meta.queue_id != self.queue_id {
            return Err(QueueError::Corrupt {
                path: self.path.clone(),
                key: "queue_id",
            });
        }
        self.set_counts((meta.records, meta.bytes));
        *slot = Some(db);
        Ok(())
    }

    /// After a reopen: deletes what a failed write may have left beyond the last record handed
    /// out, writes the unverified records again unless they read back intact (then they are
    /// on disk: see [`Core::reopen`]), and drains the buffer.
    fn write_back(&self, w: &mut Writer) -> Result<(), QueueError> {
        self.truncate(w, w.next)?;
        self.keep_unverified_only(w)?;
        while !w.rewrite.is_empty() {
            let n = chunk_len(w.rewrite.iter().map(|(_, p)| p));
            let batch: Vec<(u64, Pending)> = w.rewrite.iter().take(n).cloned().collect();
            self.write_chunk(w, &batch)?;
            for _ in 0..n {
                if let Some((seq, p)) = w.rewrite.pop_front() {
                    w.memory -= p.size();
                    self.keep_unsynced(w, seq, p);
                }
            }
        }
        while !w.buffer.is_empty() {
            let n = chunk_len(w.buffer.iter());
            let batch: Vec<(u64, Pending)> =
                (w.next..).zip(w.buffer.iter().take(n).cloned()).collect();
            self.write_chunk(w, &batch)?;
            for (seq, _) in &batch {
                if let Some(p) = w.buffer.pop_front() {
                    w.memory -= p.size();
                    self.keep_unsynced(w, *seq, p);
                }
            }
            w.next += n as u64;
            self.head.send_replace(w.next);
        }
        self.write_orphans(w)
    }

    /// Forgets the unverified records the reopened database holds with the same bytes, so a
    /// retry does not write (and fill the disk with) them again.
    fn keep_unverified_only(&self, w: &mut Writer) -> Result<(), QueueError> {
        if w.rewrite.is_empty() {
            return Ok(());
        }
        let keys: Vec<[u8; 9]> = w.rewrite.iter().map(|(seq, _)| key(*seq)).collect();
        let found = self.with_db(|db| {
            db.multi_get(keys)
                .into_iter()
                .map(|r| r.map_err(db_error(&self.path)))
                .collect::<Result<Vec<_>, _>>()
        })?;
        let rewrite = std::mem::take(&mut w.rewrite);
        for ((seq, p), got) in rewrite.into_iter().zip(found) {
            if got.as_deref() == Some(&p.data[..]) {
                w.memory -= p.size();
            } else {
                w.rewrite.push_back((seq, p));
            }
        }
        Ok(())
    }

    fn keep_unsynced(&self, w: &mut Writer, seq: u64, p: Pending) {
        if !self.sync_each() {
            w.push_unsynced(seq, p);
        }
    }

    /// Deletes every record from `from` on and stores the writer's `next`.
    fn truncate(&self, w: &mut Writer, from: u64) -> Result<(), QueueError> {
        let (n, b) = self.with_db(|db| count_range(db, &self.path, from, u64::MAX))?;
        let (records, bytes) = self.counts();
        let counts = (records.saturating_sub(n), bytes.saturating_sub(b));
        let mut wb = WriteBatch::default();
        if n > 0 {
            wb.delete_range(key(from), key(u64::MAX));
        }
        put_meta(&mut wb, w.next, counts.0, counts.1);
        self.commit(w, wb, self.sync_each())?;
        self.set_counts(counts);
        Ok(())
    }

    /// Writes numbered records in one batch (their numbers are below `w.next` or continue it).
    /// Records already stored under those numbers (unverified ones) are overwritten, not
    /// counted twice.
    fn write_chunk(&self, w: &mut Writer, batch: &[(u64, Pending)]) -> Result<(), QueueError> {
        let (Some((lo, _)), Some((hi, _))) = (batch.first(), batch.last()) else {
            return Ok(());
        };
        let existing = self.with_db(|db| count_range(db, &self.path, *lo, hi + 1))?;
        let (records, bytes) = self.counts();
        let mut records = records.saturating_sub(existing.0);
        let mut bytes = bytes.saturating_sub(existing.1);
        let mut wb = WriteBatch::default();
        let mut next = w.next;
        for (seq, p) in batch {
            put_record(&mut wb, *seq, p);
            records += 1;
            bytes += p.data.len() as u64;
            next = next.max(seq + 1);
        }
        put_meta(&mut wb, next, records, bytes);
        self.commit(w, wb, self.sync_each())?;
        self.set_counts((records, bytes));
        Ok(())
    }

    /// Stores the definitions whose buffered users were all dropped, as used by the newest
    /// record, so a later record that relies on them finds them.
    fn write_orphans(&self, w: &mut Writer) -> Result<(), QueueError> {
        if w.orphans.is_empty() {
            return Ok(());
        }
        let user = w.next.saturating_sub(1);
        let mut wb = WriteBatch::default();
        for (id, def) in &w.orphans {
            wb.put(set_key(SET, *id), def);
            wb.put(set_key(SET_USE, *id), user.to_be_bytes());
        }
        self.commit(w, wb, self.sync_each())?;
        for (_, def) in w.orphans.drain() {
            w.memory -= def.len() as u64;
        }
        Ok(())
    }

    /// Deletes stored records in `[first, end)`; returns the records and bytes freed.
    fn delete(&self, first: u64, end: u64) -> Result<(u64, u64), QueueError> {
        let mut w = lock(&self.writer);
        self.delete_locked(&mut w, first, end)
    }

    /// [`Core::delete`] for a caller holding the writer lock.
    fn delete_locked(
        &self,
        w: &mut Writer,
        first: u64,
        end: u64,
    ) -> Result<(u64, u64), QueueError> {
        self.check_writable(w)?;
        let freed = self.with_db(|db| count_range(db, &self.path, first, end))?;
        if freed.0 > 0 {
            let (records, bytes) = self.counts();
            let counts = (records - freed.0.min(records), bytes - freed.1.min(bytes));
            let mut wb = WriteBatch::default();
            wb.delete_range(key(first), key(end));
            put_meta(&mut wb, w.next, counts.0, counts.1);
            self.commit(w, wb, false)?;
            self.set_counts(counts);
        }
        // Acknowledged: no need to write them again.
        let acked = |seq: &u64| (first..end).contains(seq);
        let mut freed_unsynced = 0;
        w.unsynced.retain(|(seq, p)| {
            let keep = !acked(seq);
            if !keep {
                freed_unsynced += p.size();
            }
            keep
        });
        w.unsynced_bytes -= freed_unsynced;
        let mut freed_memory = 0;
        w.rewrite.retain(|(seq, p)| {
            let keep = !acked(seq);
            if !keep {
                freed_memory += p.size();
            }
            keep
        });
        w.memory -= freed_memory;
        self.publish(w);
        Ok(freed)
    }
}

/// The background thread: syncs (interval policy) and retries a degraded queue.
fn maintain(core: Arc<Core>, stop: mpsc::Receiver<()>) {
    let tick = match core.opts.sync {
        SyncPolicy::Interval(d) => d.min(core.opts.retry_interval),
        SyncPolicy::Always => core.opts.retry_interval,
    }
    .max(Duration::from_millis(1));
    loop {
        match stop.recv_timeout(tick) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let retry_due = {
            let w = lock(&core.writer);
            w.degraded
                .then_some(w.last_retry)
                .map(|last| last.is_none_or(|t| t.elapsed() >= core.opts.retry_interval))
        };
        match retry_due {
            Some(true) => {
                core.recover();
            }
            Some(false) => {}
            None if !core.sync_each() => {
                // Failures degrade the queue (logged there) and are retried.
                let _ = core.sync();
            }
            None => {}
        }
    }
}

impl Queue {
    /// Opens (creating if needed) the queue in `dir`, syncing every append (`fsync`) or every
    /// [`DEFAULT_SYNC_INTERVAL`]. Blocking: call from `spawn_blocking` or before the runtime
    /// starts.
    pub fn open(dir: &Path, fsync: bool) -> Result<Queue, QueueError> {
        let sync = if fsync {
            SyncPolicy::Always
        } else {
            SyncPolicy::Interval(DEFAULT_SYNC_INTERVAL)
        };
        Self::open_with(dir, QueueOptions::new(sync))
    }

    /// Opens (creating if needed) the queue in `dir`; a corrupt queue is moved aside and a
    /// fresh one started (module docs). Start-up reads a few keys, whatever the backlog.
    /// Blocking, like [`Queue::open`].
    pub fn open_with(dir: &Path, opts: QueueOptions) -> Result<Queue, QueueError> {
        let (db, meta, quarantined) = match open_and_load(dir) {
            Ok((db, meta)) => (db, meta, None),
            Err(e) if e.is_corruption() => {
                let to = quarantine(dir)?;
                error!(
                    path = %dir.display(),
                    moved_to = %to.display(),
                    error = %e,
                    "Queue is corrupt: moved it aside and started an empty queue."
                );
                let (db, meta) = open_and_load(dir)?;
                (db, meta, Some(Arc::new(to)))
            }
            Err(e) => return Err(e),
        };
        let (head, _) = watch::channel(meta.next);
        let core = Arc::new(Core {
            path: dir.into(),
            queue_id: meta.queue_id,
            db: RwLock::new(Some(db)),
            writer: Mutex::new(Writer {
                next: meta.next,
                degraded: false,
                unsynced: VecDeque::new(),
                unsynced_bytes: 0,
                rewrite: VecDeque::new(),
                buffer: VecDeque::new(),
                orphans: HashMap::new(),
                memory: 0,
                epoch: 0,
                last_retry: None,
                pinned: HashMap::new(),
            }),
            stats: Mutex::new(QueueStats {
                quarantined: u64::from(quarantined.is_some()),
                ..QueueStats::default()
            }),
            records: AtomicU64::new(meta.records),
            bytes: AtomicU64::new(meta.bytes),
            head,
            opts,
            #[cfg(test)]
            fault: Mutex::new(Fault::None),
        });
        let (stop, thread) = if core.opts.background {
            let (tx, rx) = mpsc::channel();
            let c = core.clone();
            let t = std::thread::Builder::new()
                .name("uplink-queue".into())
                .spawn(move || maintain(c, rx))
                .map_err(QueueError::Thread)?;
            (Some(tx), Some(t))
        } else {
            (None, None)
        };
        Ok(Queue {
            inner: Arc::new(Inner { core, stop, thread }),
            quarantined,
        })
    }

    fn core(&self) -> Arc<Core> {
        self.inner.core.clone()
    }

    /// Random identity of this queue's sequence space.
    pub fn queue_id(&self) -> u64 {
        self.inner.core.queue_id
    }

    /// Where a corrupt queue found at open was moved.
    pub fn quarantined(&self) -> Option<&Path> {
        self.quarantined.as_deref().map(PathBuf::as_path)
    }

    /// Health counters since open.
    pub fn stats(&self) -> QueueStats {
        *lock(&self.inner.core.stats)
    }

    /// Appends one record (see module docs for when it is durable). `set` names the series set
    /// the record uses; its definition, when given, is stored in the same atomic write.
    pub async fn append(&self, data: Bytes, set: Option<SetUse>) -> Result<Appended, QueueError> {
        let core = self.core();
        tokio::task::spawn_blocking(move || core.append(Pending { data, set })).await?
    }

    /// Appends several records as one atomic write (see [`Core::append_many`]): all or none,
    /// never buffered in memory. Returns their sequence numbers.
    pub async fn append_many(
        &self,
        batch: Vec<(Bytes, Option<SetUse>)>,
    ) -> Result<Range<u64>, QueueError> {
        let core = self.core();
        let batch = batch
            .into_iter()
            .map(|(data, set)| Pending { data, set })
            .collect();
        tokio::task::spawn_blocking(move || core.append_many(batch)).await?
    }

    /// Keeps set `id` from garbage collection until as many [`Queue::unpin_set`] calls: a
    /// producer that appends records referring to a set without its definition (a scrape
    /// target on its fast path) pins the set before the first such append.
    pub fn pin_set(&self, id: u64) {
        *lock(&self.inner.core.writer).pinned.entry(id).or_default() += 1;
    }

    /// Releases one [`Queue::pin_set`] of `id`.
    pub fn unpin_set(&self, id: u64) {
        let mut w = lock(&self.inner.core.writer);
        if let Some(n) = w.pinned.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                w.pinned.remove(&id);
            }
        }
    }

    /// One past the last appended sequence number.
    pub fn head(&self) -> u64 {
        *self.inner.core.head.borrow()
    }

    /// A receiver that changes whenever a record is appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.core.head.subscribe()
    }

    /// Reads records with `seq >= from` and below [`Queue::head`], in order, until
    /// `max_records` or `max_bytes` (at least one record is returned if any exists).
    pub async fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, QueueError> {
        let core = self.core();
        let head = self.head();
        tokio::task::spawn_blocking(move || {
            core.with_db(|db| {
                let mut out = Vec::new();
                let mut size = 0usize;
                for item in db.iterator(IteratorMode::From(&key(from), Direction::Forward)) {
                    let (k, v) = item.map_err(db_error(&core.path))?;
                    let Some(seq) = seq_of(&k).filter(|s| *s < head) else {
                        break;
                    };
                    if !out.is_empty() && (out.len() >= max_records || size + v.len() > max_bytes) {
                        break;
                    }
                    size += v.len();
                    out.push(Record {
                        seq,
                        data: Bytes::from(v.into_vec()),
                    });
                }
                Ok(out)
            })
        })
        .await?
    }

    /// Sequence number of the oldest stored record, or [`Queue::head`] when empty.
    pub async fn first(&self) -> Result<u64, QueueError> {
        let head = self.head();
        Ok(self.read(0, 1, 0).await?.first().map_or(head, |r| r.seq))
    }

    /// Deletes records `first..first + count` (acknowledged by the gateway). Not synced: if a
    /// crash loses the deletion, the records are sent again and the gateway drops them.
    /// Duplicate acks free nothing twice. Fails while degraded (the batch is sent again).
    pub async fn delete(&self, first: u64, count: u32) -> Result<(), QueueError> {
        let core = self.core();
        let end = first.saturating_add(count as u64);
        tokio::task::spawn_blocking(move || core.delete(first, end).map(|_| ())).await?
    }

    /// Definitions of the given series sets (those found).
    pub async fn sets(&self, ids: Vec<u64>) -> Result<HashMap<u64, Bytes>, QueueError> {
        let core = self.core();
        tokio::task::spawn_blocking(move || {
            core.with_db(|db| {
                let keys: Vec<[u8; 9]> = ids.iter().map(|id| set_key(SET, *id)).collect();
                let mut out = HashMap::new();
                for (id, got) in ids.iter().zip(db.multi_get(keys)) {
                    if let Some(v) = got.map_err(db_error(&core.path))? {
                        out.insert(*id, Bytes::from(v));
                    }
                }
                Ok(out)
            })
        })
        .await?
    }

    /// Deletes series sets no stored or buffered record uses any more; returns how many.
    /// Fails while degraded.
    pub async fn gc_sets(&self) -> Result<usize, QueueError> {
        let first = self.first().await?;
        let core = self.core();
        tokio::task::spawn_blocking(move || {
            // Under the writer lock, so no append starts using a set while it is deleted.
            let mut w = lock(&core.writer);
            core.check_writable(&w)?;
            let in_memory: HashSet<u64> = w
                .buffer
                .iter()
                .chain(w.rewrite.iter().map(|(_, p)| p))
                .filter_map(|p| p.set.as_ref().map(|s| s.id))
                .chain(w.orphans.keys().copied())
                .collect();
            let (wb, n) = core.with_db(|db| {
                let mut wb = WriteBatch::default();
                let mut n = 0;
                for item in db.iterator(IteratorMode::From(&[SET_USE], Direction::Forward)) {
                    let (k, v) = item.map_err(db_error(&core.path))?;
                    if k.first() != Some(&SET_USE) {
                        break;
                    }
                    let Ok(id) = <[u8; 8]>::try_from(&k[1..]).map(u64::from_be_bytes) else {
                        wb.delete(&k);
                        continue;
                    };
                    let last: Option<u64> = v.as_ref().try_into().ok().map(u64::from_be_bytes);
                    if last.is_none_or(|l| l < first)
                        && !in_memory.contains(&id)
                        && !w.pinned.contains_key(&id)
                    {
                        wb.delete(set_key(SET, id));
                        wb.delete(&k);
                        n += 1;
                    }
                }
                Ok((wb, n))
            })?;
            if n > 0 {
                core.commit(&mut w, wb, false)?;
            }
            Ok(n)
        })
        .await?
    }

    /// Applies the retention budget: deletes the oldest records while the queue holds more
    /// than `max_bytes` (0: no limit) or while the oldest record is older than `min_ts`.
    /// `inspect` returns a record's timestamp and sample count. Returns the records and
    /// samples dropped; the deletion is one atomic write. Does nothing while degraded.
    pub async fn enforce_retention(
        &self,
        max_bytes: u64,
        min_ts: Option<i64>,
        inspect: Inspect,
    ) -> Result<(u64, u64), QueueError> {
        let (_, bytes) = self.usage();
        if (max_bytes == 0 || bytes <= max_bytes) && min_ts.is_none() {
            return Ok((0, 0));
        }
        let core = self.core();
        tokio::task::spawn_blocking(move || {
            // Scan and delete under one lock, so what is counted is what this call deletes
            // (not records an ack deletes meanwhile).
            let mut w = lock(&core.writer);
            if w.degraded {
                return Ok((0, 0));
            }
            let (_, bytes) = core.counts();
            let head = w.next;
            let (mut freed, mut records, mut samples) = (0u64, 0u64, 0u64);
            let mut end: Option<u64> = None;
            core.with_db(|db| {
                for item in db.iterator(IteratorMode::From(&[DATA], Direction::Forward)) {
                    let (k, v) = item.map_err(db_error(&core.path))?;
                    let Some(seq) = seq_of(&k) else { break };
                    let (ts, n) = inspect(&v).unwrap_or((i64::MIN, 0));
                    let over_bytes = max_bytes > 0 && bytes - freed > max_bytes;
                    let too_old = min_ts.is_some_and(|m| ts < m);
                    // Never drop the newest record: it is what the budget protects.
                    if !(over_bytes || too_old) || seq + 1 >= head {
                        break;
                    }
                    freed += v.len() as u64;
                    records += 1;
                    samples += n;
                    end = Some(seq + 1);
                }
                Ok(())
            })?;
            if let Some(end) = end {
                core.delete_locked(&mut w, 0, end)?;
            }
            Ok((records, samples))
        })
        .await?
    }

    /// Stored (unacknowledged) records and their bytes, in RocksDB (buffered records are in
    /// [`Queue::stats`]).
    pub fn usage(&self) -> (u64, u64) {
        self.inner.core.counts()
    }

    /// Retries the disk if degraded, then syncs the write-ahead log; used on orderly shutdown
    /// and by tests. Fails with [`QueueError::Degraded`] while records are only in memory.
    pub async fn flush(&self) -> Result<(), QueueError> {
        let core = self.core();
        tokio::task::spawn_blocking(move || {
            if !core.recover() {
                let w = lock(&core.writer);
                return Err(QueueError::Degraded {
                    path: core.path.clone(),
                    records: w.buffered_records(),
                });
            }
            let (mark, epoch) = {
                let w = lock(&core.writer);
                (w.next, w.epoch)
            };
            let result = core.with_db(|db| core.sync_wal(db));
            let mut w = lock(&core.writer);
            match result {
                Ok(()) => {
                    w.synced(mark, epoch);
                    Ok(())
                }
                Err(e) => {
                    core.degrade(&mut w, &e);
                    Err(e)
                }
            }
        })
        .await?
    }

    #[cfg(test)]
    pub(crate) fn inject(&self, fault: Fault) {
        *lock(&self.inner.core.fault) = fault;
    }

    #[cfg(test)]
    pub(crate) fn fault(&self) -> Fault {
        *lock(&self.inner.core.fault)
    }
}

#[cfg(test)]
mod model;

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[tokio::test]
    async fn append_read_delete_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = Queue::open(dir.path(), false).expect("open");
        let id = q.queue_id();
        for i in 0..10 {
            assert_eq!(
                q.append(b(&format!("r{i}")), None).await.expect("append"),
                Appended::Stored(i)
            );
        }
        let got = q.read(3, 4, usize::MAX).await.expect("read");
        assert_eq!(
            got.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![3, 4, 5, 6]
        );
        assert_eq!(got[0].data, b("r3"));
        // Byte limit still returns one record.
        assert_eq!(q.read(0, 10, 1).await.expect("read").len(), 1);
        // Out-of-order acks.
        q.delete(4, 2).await.expect("delete");
        q.delete(0, 4).await.expect("delete");
        assert_eq!(q.first().await.expect("first"), 6);
        assert_eq!(q.usage().0, 4);
        drop(q);

        let q = Queue::open(dir.path(), false).expect("reopen");
        assert_eq!(q.queue_id(), id);
        assert_eq!(q.first().await.expect("first"), 6);
        assert_eq!(q.head(), 10);
        q.delete(6, 4).await.expect("delete all");
        drop(q);
        // Sequence numbers never repeat after the queue drains.
        let q = Queue::open(dir.path(), false).expect("reopen");
        assert_eq!(
            q.append(b("x"), None).await.expect("append"),
            Appended::Stored(10)
        );
        assert_eq!(q.usage(), (1, 1));
    }

    #[tokio::test]
    async fn set_definitions_live_while_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = Queue::open(dir.path(), false).expect("open");
        let def = |id| {
            Some(SetUse {
                id,
                def: Some(b(&format!("def{id}"))),
            })
        };
        q.append(b("a"), def(1)).await.expect("append");
        q.append(b("b"), def(2)).await.expect("append");
        q.append(b("c"), Some(SetUse { id: 1, def: None }))
            .await
            .expect("append");
        q.delete(0, 2).await.expect("ack a, b");
        assert_eq!(
            q.gc_sets().await.expect("gc"),
            1,
            "set 2 unused, set 1 still used by c"
        );
        let got = q.sets(vec![1, 2]).await.expect("sets");
        assert_eq!(got.get(&1), Some(&b("def1")));
        assert!(!got.contains_key(&2));
        q.delete(2, 1).await.expect("ack c");
        assert_eq!(q.gc_sets().await.expect("gc"), 1);
        assert!(q.sets(vec![1]).await.expect("sets").is_empty());
    }

    fn manual(sync: SyncPolicy, memory_buffer_bytes: u64) -> QueueOptions {
        QueueOptions {
            memory_buffer_bytes,
            background: false,
            inspect: |_| Some((0, 3)),
            ..QueueOptions::new(sync)
        }
    }

    fn uses(id: u64, def: bool) -> Option<SetUse> {
        Some(SetUse {
            id,
            def: def.then(|| b(&format!("def{id}"))),
        })
    }

    async fn all(q: &Queue) -> Vec<(u64, Bytes)> {
        let got = q.read(0, usize::MAX, usize::MAX).await.expect("read");
        got.into_iter().map(|r| (r.seq, r.data)).collect()
    }

    #[tokio::test]
    async fn full_buffer_drops_oldest_and_keeps_set_definitions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = Queue::open_with(dir.path(), manual(SyncPolicy::Always, 100)).expect("open");
        let rec = |c: char| b(&c.to_string().repeat(30));
        q.append(rec('a'), uses(1, true)).await.expect("append");
        q.inject(Fault::Before);
        // Each record is 30 bytes, each definition 4: the fourth append overflows 100 bytes.
        for (c, set) in [
            ('b', uses(2, true)),
            ('c', uses(2, false)),
            ('d', uses(3, true)),
        ] {
            assert_eq!(
                q.append(rec(c), set).await.expect("append"),
                Appended::Buffered
            );
        }
        q.append(rec('e'), None).await.expect("append");
        let s = q.stats();
        assert_eq!((s.dropped_records, s.dropped_samples), (1, 3), "{s:?}");
        // 'b' went; its definition of set 2 moved to 'c'. Now 'c' goes too: set 2 has no user
        // left in memory, its definition is kept for whoever relies on it next.
        q.append(rec('f'), uses(3, false)).await.expect("append");
        let s = q.stats();
        assert_eq!((s.dropped_records, s.buffered_records), (2, 3), "{s:?}");
        assert!(s.degraded && s.buffered_bytes <= 100, "{s:?}");
        assert!(
            q.delete(0, 1).await.is_err(),
            "nothing is written while degraded"
        );
        assert_eq!(q.head(), 1, "buffered records are not numbered");

        q.inject(Fault::None);
        q.flush().await.expect("recovers");
        let want: Vec<(u64, Bytes)> =
            vec![(0, rec('a')), (1, rec('d')), (2, rec('e')), (3, rec('f'))];
        assert_eq!(all(&q).await, want, "gap-free, oldest dropped");
        assert_eq!(q.usage(), (4, 120));
        // The writer believes set 2 is stored (its append returned): it is.
        q.append(rec('g'), uses(2, false)).await.expect("append");
        let sets = q.sets(vec![1, 2, 3]).await.expect("sets");
        assert_eq!(sets.len(), 3, "{sets:?}");
        assert!(!q.stats().degraded);
    }

    #[tokio::test]
    async fn failed_sync_counts_unverified_records_and_reverifies_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let interval = SyncPolicy::Interval(std::time::Duration::from_secs(3600));
        let q = Queue::open_with(dir.path(), manual(interval, 1 << 20)).expect("open");
        for i in 0..3 {
            q.append(b(&format!("r{i}")), None).await.expect("append");
        }
        q.flush().await.expect("sync");
        q.append(b("r3"), None).await.expect("append");
        q.append(b("r4"), None).await.expect("append");
        q.inject(Fault::Before);
        assert!(q.flush().await.is_err());
        let s = q.stats();
        assert!(s.degraded, "{s:?}");
        assert_eq!(
            s.unverified_records, 2,
            "written since the last good sync: {s:?}"
        );
        assert_eq!(s.buffered_records, 2, "kept to be written again: {s:?}");
        // Still readable meanwhile; new appends wait in memory.
        assert_eq!(all(&q).await.len(), 5);
        assert_eq!(
            q.append(b("r5"), None).await.expect("append"),
            Appended::Buffered
        );

        q.inject(Fault::None);
        q.flush().await.expect("recovers");
        let got = all(&q).await;
        let want: Vec<(u64, Bytes)> = (0..6).map(|i| (i, b(&format!("r{i}")))).collect();
        assert_eq!(got, want);
        assert_eq!(q.usage(), (6, 12));
        drop(q);
        let q = Queue::open_with(dir.path(), manual(interval, 1 << 20)).expect("reopen");
        assert_eq!(all(&q).await, want);
        assert_eq!(q.usage(), (6, 12));
    }

    #[tokio::test]
    async fn a_failed_write_left_in_the_log_is_never_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = Queue::open_with(dir.path(), manual(SyncPolicy::Always, 1 << 20)).expect("open");
        q.append(b("a"), None).await.expect("append");
        // The write reaches the log, then reports failure (as when its sync fails).
        q.inject(Fault::After);
        assert_eq!(
            q.append(b("g"), None).await.expect("append"),
            Appended::Buffered
        );
        assert_eq!(
            all(&q).await,
            vec![(0, b("a"))],
            "not below head, not visible"
        );
        q.inject(Fault::None);
        q.flush().await.expect("recovers");
        q.append(b("c"), None).await.expect("append");
        assert_eq!(all(&q).await, vec![(0, b("a")), (1, b("g")), (2, b("c"))]);
        assert_eq!(q.usage(), (3, 3));
    }

    fn inspect(data: &[u8]) -> Option<(i64, u64)> {
        // Test records are "t<timestamp>".
        std::str::from_utf8(data)
            .ok()?
            .strip_prefix('t')?
            .parse()
            .ok()
            .map(|t| (t, 2))
    }

    #[tokio::test]
    async fn retention_drops_oldest_exactly_and_keeps_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = Queue::open(dir.path(), false).expect("open");
        for t in 0..10 {
            q.append(b(&format!("t{t}")), None).await.expect("append");
        }
        // Each record is 2 bytes: 20 bytes stored; a 12-byte budget drops the 4 oldest.
        assert_eq!(
            q.enforce_retention(12, None, inspect)
                .await
                .expect("enforce"),
            (4, 8)
        );
        assert_eq!(q.first().await.expect("first"), 4);
        assert_eq!(q.usage(), (6, 12));
        // Age: everything older than t=7 goes.
        assert_eq!(
            q.enforce_retention(0, Some(7), inspect)
                .await
                .expect("enforce"),
            (3, 6)
        );
        assert_eq!(q.first().await.expect("first"), 7);
        // The newest record is kept even when it alone exceeds the budget.
        assert_eq!(
            q.enforce_retention(1, Some(100), inspect)
                .await
                .expect("enforce"),
            (2, 4)
        );
        assert_eq!(q.usage().0, 1);
    }

    /// A scrape target's current set outlives the acks of every record using it: its later
    /// records (fast path) refer to it without a definition, and a new connection needs it.
    #[tokio::test]
    async fn pinned_sets_survive_gc() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = Queue::open(dir.path(), false).expect("open");
        q.pin_set(5);
        q.append(
            b("a"),
            Some(SetUse {
                id: 5,
                def: Some(b("def5")),
            }),
        )
        .await
        .expect("append");
        q.delete(0, 1).await.expect("ack");
        assert_eq!(q.gc_sets().await.expect("gc"), 0, "pinned");
        q.append(b("b"), Some(SetUse { id: 5, def: None }))
            .await
            .expect("append");
        assert_eq!(q.sets(vec![5]).await.expect("sets").len(), 1);
        q.unpin_set(5);
        q.delete(1, 1).await.expect("ack");
        assert_eq!(q.gc_sets().await.expect("gc"), 1, "released");
    }

    #[tokio::test]
    async fn append_many_is_one_write_with_consecutive_seqs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = Queue::open(dir.path(), false).expect("open");
        q.append(b("first"), None).await.expect("append");
        let set = |id, def: &str| {
            Some(SetUse {
                id,
                def: Some(b(def)),
            })
        };
        let seqs = q
            .append_many(vec![
                (b("a"), set(7, "def7")),
                (b("b"), set(8, "def8")),
                (b("c"), set(7, "def7")),
            ])
            .await
            .expect("append_many");
        assert_eq!(seqs, 1..4);
        assert_eq!(q.head(), 4);
        assert_eq!(q.usage(), (4, 8));
        assert_eq!(q.append_many(Vec::new()).await.expect("empty"), 4..4);
        let got = q.read(1, 10, usize::MAX).await.expect("read");
        assert_eq!(
            got.iter().map(|r| r.data.clone()).collect::<Vec<_>>(),
            vec![b("a"), b("b"), b("c")]
        );
        // Set 7's newest user is record 3: acking 0..3 keeps it, drops set 8.
        q.delete(0, 3).await.expect("ack");
        assert_eq!(q.gc_sets().await.expect("gc"), 1);
        let sets = q.sets(vec![7, 8]).await.expect("sets");
        assert_eq!(sets.get(&7), Some(&b("def7")));
        assert!(!sets.contains_key(&8));
        drop(q);
        let q = Queue::open(dir.path(), false).expect("reopen");
        assert_eq!(q.head(), 4);
        assert_eq!(q.first().await.expect("first"), 3);
    }
}
