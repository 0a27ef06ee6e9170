//! The durable on-disk queue, in RocksDB. The only module that touches `rocksdb`.
//!
//! # Layout
//! - `d` + seq (u64, big-endian): one record (`uplink_shared::codec::ScrapeRecord`: one
//!   scrape's values, or one timestamp's worth of a remote-write request). Big-endian keys make
//!   iteration order equal to append order.
//! - `m:next_seq`: the next sequence number to assign (u64 BE). Written in the same atomic
//!   write batch as each append, so sequence numbers never repeat, even after the queue drains
//!   and the process restarts.
//! - `s` + set id (u64 BE): the encoded series set (labels) that records refer to
//!   (`uplink_shared::codec`), written in the same write batch as the first record using it.
//! - `u` + set id: the sequence number of the newest record using the set. [`Queue::gc_sets`]
//!   deletes sets whose newest user was acknowledged.
//! - `m:queue_id`: a random u64 chosen when the queue is created. The agent sends it in its
//!   hello, so the gateway never confuses the sequence numbers of a wiped queue with the old
//!   ones.
//!
//! # Invariants
//! - A record is *collected* once [`Queue::append`] or [`Queue::append_many`] returned: it is
//!   in RocksDB's write-ahead log (synced to disk when `fsync` is on, else in the OS page
//!   cache, which survives a process crash but not a power loss).
//! - One append is one RocksDB write batch: [`Queue::append_many`] stores all of its records,
//!   set definitions and set uses, or (on error or crash) none of them.
//! - Appends are serialized, so records become visible in sequence order with no gaps below
//!   [`Queue::head`]; a reader that saw `head` never misses a record below it.
//! - An append's bookkeeping (head, usage counters) happens on the blocking thread right after
//!   its write, so it is complete even if the caller's future is dropped meanwhile (a remote
//!   write sender hanging up).
//! - A record is deleted only by [`Queue::delete`], which the shipper calls only for batches the
//!   gateway acknowledged, or by [`Queue::enforce_retention`] (counted by the caller). A restart
//!   therefore resumes at the first unacknowledged record.
//! - Set definitions: the queue remembers (in memory, for this process) which definitions it
//!   has stored, and skips writing a given definition again while it is stored. A set is
//!   deleted only by [`Queue::gc_sets`], under the append lock, and only when no record at or
//!   after the first stored one uses it; it is then forgotten, so the next append that supplies
//!   its definition stores it again. A writer that omits a definition (`def: None`) must know
//!   the set is still stored.
//! - Every RocksDB call runs on the blocking pool (`spawn_blocking`), never on the async
//!   runtime's worker threads.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rocksdb::{DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use tokio::sync::watch;

const NEXT_SEQ: &[u8] = b"m:next_seq";
const QUEUE_ID: &[u8] = b"m:queue_id";
const DATA: u8 = b'd';
const SET: u8 = b's';
const SET_USE: u8 = b'u';

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
    /// The blocking task panicked or was cancelled.
    #[error("queue task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// One stored record.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub seq: u64,
    pub data: Bytes,
}

/// What appends share, behind the append lock.
struct Writer {
    /// The next sequence number; only advanced after a successful write.
    next: u64,
    /// Sets whose definition this process stored and [`Queue::gc_sets`] has not deleted since.
    stored_sets: HashSet<u64>,
    /// Sets a producer will keep referring to without repeating the definition (a scrape
    /// target's current set), with their pin counts: never garbage-collected.
    pinned: HashMap<u64, usize>,
}

struct Inner {
    db: DB,
    path: PathBuf,
    fsync: bool,
    /// Serializes appends (and set deletions).
    writer: Mutex<Writer>,
    /// One past the last appended sequence number, for readers.
    head: watch::Sender<u64>,
    /// Approximate bytes and count of stored records (exact for this process's lifetime).
    bytes: AtomicU64,
    records: AtomicU64,
}

impl Inner {
    fn db_err(&self, source: rocksdb::Error) -> QueueError {
        QueueError::Db {
            path: self.path.clone(),
            source,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        // A poisoned lock means an append panicked mid-way; the state it guards is still
        // correct because it is only updated after a successful write.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `batch` as one RocksDB write batch; returns the sequence numbers it took.
    fn append_many(&self, batch: &[(Bytes, Option<SetUse>)]) -> Result<Range<u64>, QueueError> {
        let mut w = self.lock();
        let first = w.next;
        if batch.is_empty() {
            return Ok(first..first);
        }
        let mut wb = WriteBatch::default();
        let mut new_sets = HashSet::new();
        let mut bytes = 0u64;
        for (seq, (data, set)) in (first..).zip(batch) {
            wb.put(key(seq), data);
            bytes += data.len() as u64;
            if let Some(set) = set {
                if let Some(def) = &set.def
                    && !w.stored_sets.contains(&set.id)
                    && new_sets.insert(set.id)
                {
                    wb.put(set_key(SET, set.id), def);
                }
                // Later puts of the same key in one batch win: the newest user is stored.
                wb.put(set_key(SET_USE, set.id), seq.to_be_bytes());
            }
        }
        let end = first + batch.len() as u64;
        wb.put(NEXT_SEQ, end.to_be_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(self.fsync);
        self.db.write_opt(wb, &wo).map_err(|e| self.db_err(e))?;
        w.next = end;
        w.stored_sets.extend(new_sets);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.records
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.head.send_replace(end);
        Ok(first..end)
    }

    /// Sets whose newest user is below `first`, read without blocking appends.
    fn unused_sets(&self, first: u64) -> Result<Vec<u64>, QueueError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&[SET_USE], Direction::Forward))
        {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            if k.first() != Some(&SET_USE) {
                break;
            }
            let last: Option<u64> = v.as_ref().try_into().ok().map(u64::from_be_bytes);
            if last.is_none_or(|l| l < first)
                && let Ok(id) = <[u8; 8]>::try_from(&k[1..])
            {
                out.push(u64::from_be_bytes(id));
            }
        }
        Ok(out)
    }

    /// Deletes the `candidates` still unused by records at or after `first`, under the append
    /// lock (an append since [`Inner::unused_sets`] may have used one again).
    fn delete_sets(&self, candidates: &[u64], first: u64) -> Result<usize, QueueError> {
        let mut w = self.lock();
        let keys: Vec<[u8; 9]> = candidates.iter().map(|id| set_key(SET_USE, *id)).collect();
        let mut wb = WriteBatch::default();
        let mut gone = Vec::new();
        for (id, got) in candidates.iter().zip(self.db.multi_get(keys)) {
            let last = got
                .map_err(|e| self.db_err(e))?
                .and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes));
            if last.is_none_or(|l| l < first) && !w.pinned.contains_key(id) {
                wb.delete(set_key(SET, *id));
                wb.delete(set_key(SET_USE, *id));
                gone.push(*id);
            }
        }
        self.db.write(wb).map_err(|e| self.db_err(e))?;
        for id in &gone {
            w.stored_sets.remove(id);
        }
        Ok(gone.len())
    }
}

/// Handle to the queue; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
    queue_id: u64,
}

fn key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = DATA;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of(k: &[u8]) -> Option<u64> {
    match k {
        [DATA, rest @ ..] => rest.try_into().ok().map(u64::from_be_bytes),
        _ => None,
    }
}

impl Queue {
    /// Opens (creating if needed) the queue in `dir`. Blocking: call from `spawn_blocking` or
    /// before the runtime starts.
    pub fn open(dir: &Path, fsync: bool) -> Result<Queue, QueueError> {
        let db_err = |source| QueueError::Db {
            path: dir.into(),
            source,
        };
        let mut opts = Options::default();
        opts.create_if_missing(true);
        // Small footprint: this runs on modems.
        opts.set_max_background_jobs(1);
        opts.set_write_buffer_size(4 << 20);
        opts.set_max_write_buffer_number(2);
        opts.set_keep_log_file_num(2);
        opts.set_max_log_file_size(1 << 20);
        let db = DB::open(&opts, dir).map_err(db_err)?;

        let read_u64 = |k: &'static [u8], name: &'static str| -> Result<Option<u64>, QueueError> {
            match db.get(k).map_err(db_err)? {
                None => Ok(None),
                Some(v) => v
                    .as_slice()
                    .try_into()
                    .map(|b| Some(u64::from_be_bytes(b)))
                    .map_err(|_| QueueError::Corrupt {
                        path: dir.into(),
                        key: name,
                    }),
            }
        };
        let queue_id = match read_u64(QUEUE_ID, "queue_id")? {
            Some(id) => id,
            None => {
                let id = rand::random::<u64>();
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                db.put_opt(QUEUE_ID, id.to_be_bytes(), &wo)
                    .map_err(db_err)?;
                id
            }
        };
        let mut next = read_u64(NEXT_SEQ, "next_seq")?.unwrap_or(0);
        let (mut bytes, mut records) = (0u64, 0u64);
        for item in db.iterator(IteratorMode::From(&[DATA], Direction::Forward)) {
            let (k, v) = item.map_err(db_err)?;
            let Some(seq) = seq_of(&k) else { break };
            next = next.max(seq + 1);
            bytes += v.len() as u64;
            records += 1;
        }
        let (head, _) = watch::channel(next);
        Ok(Queue {
            inner: Arc::new(Inner {
                db,
                path: dir.into(),
                fsync,
                writer: Mutex::new(Writer {
                    next,
                    stored_sets: HashSet::new(),
                    pinned: HashMap::new(),
                }),
                head,
                bytes: AtomicU64::new(bytes),
                records: AtomicU64::new(records),
            }),
            queue_id,
        })
    }

    /// Random identity of this queue's sequence space.
    pub fn queue_id(&self) -> u64 {
        self.queue_id
    }

    /// Appends one record; returns its sequence number once it is durable (see module docs).
    /// `set` names the series set the record uses; its definition, when given, is stored in the
    /// same atomic write (unless the queue already stores it).
    /// Keeps set `id` from garbage collection until as many [`Queue::unpin_set`] calls: a
    /// producer that appends records referring to a set without its definition (a scrape
    /// target on its fast path) pins the set before the first such append.
    pub fn pin_set(&self, id: u64) {
        *self.inner.lock().pinned.entry(id).or_default() += 1;
    }

    /// Releases one [`Queue::pin_set`] of `id`.
    pub fn unpin_set(&self, id: u64) {
        let mut w = self.inner.lock();
        if let Some(n) = w.pinned.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                w.pinned.remove(&id);
            }
        }
    }

    pub async fn append(&self, data: Bytes, set: Option<SetUse>) -> Result<u64, QueueError> {
        Ok(self.append_many(vec![(data, set)]).await?.start)
    }

    /// Appends several records, with their set definitions and uses, in one atomic write:
    /// after a crash either all of them are stored or none. Returns their sequence numbers
    /// (consecutive, in `batch` order) once they are durable. An empty batch writes nothing.
    pub async fn append_many(
        &self,
        batch: Vec<(Bytes, Option<SetUse>)>,
    ) -> Result<Range<u64>, QueueError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.append_many(&batch)).await?
    }

    /// One past the last appended sequence number.
    pub fn head(&self) -> u64 {
        *self.inner.head.borrow()
    }

    /// A receiver that changes whenever a record is appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.head.subscribe()
    }

    /// Reads records with `seq >= from`, in order, until `max_records` or `max_bytes` (at least
    /// one record is returned if any exists).
    pub async fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, QueueError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut size = 0usize;
            let start = key(from);
            for item in inner
                .db
                .iterator(IteratorMode::From(&start, Direction::Forward))
            {
                let (k, v) = item.map_err(|source| QueueError::Db {
                    path: inner.path.clone(),
                    source,
                })?;
                let Some(seq) = seq_of(&k) else { break };
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
        .await?
    }

    /// Sequence number of the oldest stored record, or [`Queue::head`] when empty.
    pub async fn first(&self) -> Result<u64, QueueError> {
        let head = self.head();
        Ok(self.read(0, 1, 0).await?.first().map_or(head, |r| r.seq))
    }

    /// Deletes records `first..first + count` (acknowledged by the gateway). Not synced: if a
    /// crash loses the deletion, the records are sent again and the gateway drops them.
    pub async fn delete(&self, first: u64, count: u32) -> Result<(), QueueError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let db_err = |source| QueueError::Db {
                path: inner.path.clone(),
                source,
            };
            let end = first.saturating_add(count as u64);
            // Account for sizes before deleting (records may have been deleted already by a
            // duplicate ack; those are not counted twice).
            let mut freed = (0u64, 0u64);
            let start = key(first);
            for item in inner
                .db
                .iterator(IteratorMode::From(&start, Direction::Forward))
            {
                let (k, v) = item.map_err(db_err)?;
                match seq_of(&k) {
                    Some(seq) if seq < end => {
                        freed.0 += v.len() as u64;
                        freed.1 += 1;
                    }
                    _ => break,
                }
            }
            let mut wb = WriteBatch::default();
            wb.delete_range(key(first), key(end));
            inner.db.write(wb).map_err(db_err)?;
            inner.bytes.fetch_sub(freed.0, Ordering::Relaxed);
            inner.records.fetch_sub(freed.1, Ordering::Relaxed);
            Ok(())
        })
        .await?
    }

    /// Definitions of the given series sets (those found).
    pub async fn sets(&self, ids: Vec<u64>) -> Result<HashMap<u64, Bytes>, QueueError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let keys: Vec<[u8; 9]> = ids.iter().map(|id| set_key(SET, *id)).collect();
            let mut out = HashMap::new();
            for (id, got) in ids.iter().zip(inner.db.multi_get(keys)) {
                let got = got.map_err(|source| QueueError::Db {
                    path: inner.path.clone(),
                    source,
                })?;
                if let Some(v) = got {
                    out.insert(*id, Bytes::from(v));
                }
            }
            Ok(out)
        })
        .await?
    }

    /// Deletes series sets no stored record uses any more; returns how many. Appends wait only
    /// for the final check and delete, not for the scan.
    pub async fn gc_sets(&self) -> Result<usize, QueueError> {
        let first = self.first().await?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let candidates = inner.unused_sets(first)?;
            if candidates.is_empty() {
                return Ok(0);
            }
            inner.delete_sets(&candidates, first)
        })
        .await?
    }

    /// Applies the retention budget: deletes the oldest records while the queue holds more
    /// than `max_bytes` (0: no limit) or while the oldest record is older than `min_ts`.
    /// `inspect` returns a record's timestamp and sample count. Returns the records and
    /// samples dropped; the deletion is one atomic write.
    pub async fn enforce_retention(
        &self,
        max_bytes: u64,
        min_ts: Option<i64>,
        inspect: fn(&[u8]) -> Option<(i64, u64)>,
    ) -> Result<(u64, u64), QueueError> {
        let (_, bytes) = self.usage();
        if (max_bytes == 0 || bytes <= max_bytes) && min_ts.is_none() {
            return Ok((0, 0));
        }
        let inner = self.inner.clone();
        let head = self.head();
        tokio::task::spawn_blocking(move || {
            let db_err = |source| QueueError::Db {
                path: inner.path.clone(),
                source,
            };
            let mut freed = 0u64;
            let (mut records, mut samples) = (0u64, 0u64);
            let mut end: Option<u64> = None;
            for item in inner
                .db
                .iterator(IteratorMode::From(&[DATA], Direction::Forward))
            {
                let (k, v) = item.map_err(db_err)?;
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
            if let Some(end) = end {
                let mut wb = WriteBatch::default();
                wb.delete_range(key(0), key(end));
                inner.db.write(wb).map_err(db_err)?;
                inner.bytes.fetch_sub(freed, Ordering::Relaxed);
                inner.records.fetch_sub(records, Ordering::Relaxed);
            }
            Ok((records, samples))
        })
        .await?
    }

    /// Stored (unacknowledged) records and their bytes.
    pub fn usage(&self) -> (u64, u64) {
        (
            self.inner.records.load(Ordering::Relaxed),
            self.inner.bytes.load(Ordering::Relaxed),
        )
    }

    /// Flushes memtables and the WAL; used on orderly shutdown.
    pub async fn flush(&self) -> Result<(), QueueError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner.db.flush_wal(true).map_err(|source| QueueError::Db {
                path: inner.path.clone(),
                source,
            })
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

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
                i
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
        assert_eq!(q.append(b("x"), None).await.expect("append"), 10);
        assert_eq!(q.usage(), (1, 1));
    }

    /// A deterministic model check: random append/read/ack/reopen against a VecDeque.
    #[tokio::test]
    async fn matches_model_under_random_operations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut q = Queue::open(dir.path(), false).expect("open");
        let mut model: VecDeque<(u64, Bytes)> = VecDeque::new();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for step in 0..600u64 {
            match next() % 10 {
                0..=4 => {
                    let data = b(&format!("s{step}"));
                    let seq = q.append(data.clone(), None).await.expect("append");
                    model.push_back((seq, data));
                }
                5..=6 if !model.is_empty() => {
                    // Ack a prefix, as the shipper does for in-order acks.
                    let n = (next() % model.len() as u64 + 1) as usize;
                    let first = model[0].0;
                    q.delete(first, n as u32).await.expect("delete");
                    model.drain(..n);
                }
                7 => {
                    drop(q);
                    q = Queue::open(dir.path(), false).expect("reopen");
                }
                _ => {
                    let from = model.front().map_or(q.head(), |m| m.0);
                    let got = q.read(from, 1000, usize::MAX).await.expect("read");
                    let want: Vec<_> = model
                        .iter()
                        .map(|(s, d)| Record {
                            seq: *s,
                            data: d.clone(),
                        })
                        .collect();
                    assert_eq!(got, want, "step {step}");
                }
            }
            assert_eq!(q.usage().0, model.len() as u64, "step {step}");
        }
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

    #[tokio::test]
    async fn stored_definitions_are_written_once_and_again_after_gc() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = Queue::open(dir.path(), false).expect("open");
        let with_def = |def: &str| {
            Some(SetUse {
                id: 1,
                def: Some(b(def)),
            })
        };
        q.append(b("a"), with_def("v1")).await.expect("append");
        // Known to be stored: a second definition for the same id is not written again.
        q.append(b("b"), with_def("v2")).await.expect("append");
        assert_eq!(q.sets(vec![1]).await.expect("sets").get(&1), Some(&b("v1")));
        // Every user acknowledged: gc deletes the set and forgets it ...
        q.delete(0, 2).await.expect("ack");
        assert_eq!(q.gc_sets().await.expect("gc"), 1);
        assert!(q.sets(vec![1]).await.expect("sets").is_empty());
        // ... so the next append that supplies the definition stores it again.
        q.append(b("c"), with_def("v3")).await.expect("append");
        assert_eq!(q.sets(vec![1]).await.expect("sets").get(&1), Some(&b("v3")));
        assert_eq!(q.gc_sets().await.expect("gc"), 0, "record c still uses it");
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
}
