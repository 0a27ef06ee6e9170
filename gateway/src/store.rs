//! The gateway's durable state, in RocksDB: one shared log of accepted batches with a cursor per
//! destination, and the dedupe cursor of every agent queue. The only module that touches
//! `rocksdb`.
//!
//! # Layout
//! Integers are big-endian, so iteration order is numeric order.
//! - `e` + seq (u64): one log entry's body, the snappy-compressed remote-write 1.0
//!   `WriteRequest` of one agent batch (labels already normalized). One log serves every
//!   destination: the body is stored once, whatever the number of destinations.
//! - `h` + seq: the entry's header ([`Meta`]: when it was stored, samples, body size, site,
//!   and the trace context of the batch when it was traced), apart from the body so that
//!   opening the store reads headers only.
//! - `c` + destination name: the destination's cursor, 16 bytes: the next seq to deliver, then
//!   the end of the request in flight (equal to the cursor when none). After a crash the first
//!   request covers exactly the entries of the request that was in flight, so a resend carries
//!   nothing new (see `fanout.rs`). While the destination has a live lane ([`Live`]), 40
//!   bytes: then the lane's start, its cursor and the end of its request in flight.
//! - `a` + identity length (u16) + identity + queue id (u64): the agent queue's dedupe
//!   cursor, one past the last record stored.
//! - `m:next`: the next entry seq; entries are numbered without gaps and numbers never repeat.
//! - `m:reset_key`: 64 random bytes chosen when the store is created: the key of the QUIC
//!   endpoint's stateless resets, so a restarted gateway can tell agents still holding a
//!   connection to the old process to reconnect at once (instead of after their idle timeout).
//!
//! # Invariants
//! - Storing a batch is one atomic write: body, header, `m:next` and the dedupe cursor
//!   ([`Store::commit`]); with `fsync` the write is synced before `commit` returns, so a batch
//!   the agent saw acknowledged is on disk, and a retransmission of it is recognised. Commits
//!   are grouped: one thread writes whatever is pending as one write batch (one sync).
//! - Entries become visible to readers ([`Store::head`]) only after their write returned, in seq
//!   order, with no gaps below the head.
//! - A destination's cursor only moves forward ([`Store::advance`], [`Store::enforce_retention`]).
//! - A live lane splits a destination's undelivered entries in two: the backlog
//!   `[cursor, live.from)` and the live lane `[live.cursor, head)`; `[live.from, live.cursor)`
//!   is delivered and kept (the cursor is below it) until the backlog reaches `live.from`, when
//!   the lanes merge and the cursor jumps to `live.cursor`. So `cursor < live.from <=
//!   live.cursor <= head` while a lane exists, and deletion still follows the cursor alone.
//!   Entries below every destination's cursor are deleted in the same write batch as the cursor
//!   move that frees them. Cursor moves are not synced: a process crash keeps them (the WAL is
//!   in the page cache), a power loss may roll one back to the last synced write, which resends
//!   entries (duplicates, never loss).
//! - A destination new to the store starts at the head; the cursor of a destination no longer
//!   configured is deleted at open (its undelivered entries are reported, then freed).
//! - Every RocksDB call runs off the async runtime: on the blocking pool (`spawn_blocking`), or on
//!   the store's own commit thread.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rocksdb::{DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use tokio::sync::{mpsc, oneshot, watch};
use uplink_shared::wire::TraceContext;

const NEXT: &[u8] = b"m:next";
const RESET_KEY: &[u8] = b"m:reset_key";
const BODY: u8 = b'e';
const HEADER: u8 = b'h';
const CURSOR: u8 = b'c';
const DEDUPE: u8 = b'a';
const HEADER_VERSION: u8 = 1;
/// Commits written together at most (one write batch, one sync).
const MAX_GROUP: usize = 256;

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// RocksDB reported an error (disk full, corruption, lock held by another process).
    #[error("store at {}: {source}", path.display())]
    Db {
        path: PathBuf,
        source: rocksdb::Error,
    },
    /// A stored value had an unexpected size or format.
    #[error("store at {}: corrupt {what}", path.display())]
    Corrupt { path: PathBuf, what: &'static str },
    /// The blocking task or the commit thread is gone (panicked, or the store is closing).
    #[error("store task failed: {0}")]
    Task(String),
}

impl StoreError {
    /// RocksDB found corruption, or a stored value cannot be decoded (not: a lock held by
    /// another process, a full disk).
    pub fn is_corruption(&self) -> bool {
        match self {
            StoreError::Db { source, .. } => source.kind() == rocksdb::ErrorKind::Corruption,
            StoreError::Corrupt { .. } => true,
            StoreError::Task(_) => false,
        }
    }
}

impl From<tokio::task::JoinError> for StoreError {
    fn from(e: tokio::task::JoinError) -> Self {
        StoreError::Task(e.to_string())
    }
}

/// What an entry carries besides its body; kept in memory for every entry some destination
/// still needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Meta {
    /// When the entry was stored, ms since the Unix epoch.
    pub stored_ms: i64,
    pub samples: u64,
    /// Body size in bytes.
    pub bytes: u64,
    /// Identity of the agent that sent it.
    pub site: Arc<str>,
    /// The gateway's ingest span of the batch, when sampled: destination writes join its trace.
    pub trace: Option<Box<TraceContext>>,
    /// What the body holds besides float samples (`remote_write::extras` bits).
    pub extras: u8,
}

/// One entry read back for delivery.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub seq: u64,
    pub meta: Meta,
    pub body: Bytes,
}

/// One accepted agent batch to store: its body (absent when every record was a retransmission
/// or carried no sample) and the agent queue's new dedupe cursor.
#[derive(Clone, Debug)]
pub struct Commit {
    pub identity: Arc<str>,
    pub queue_id: u64,
    /// One past the batch's last record.
    pub next_seq: u64,
    pub entry: Option<Entry>,
}

/// A remote-write body to append to the log.
#[derive(Clone, Debug)]
pub struct Entry {
    pub samples: u64,
    /// Snappy-compressed remote-write 1.0 `WriteRequest`.
    pub body: Bytes,
    pub trace: Option<TraceContext>,
    /// `remote_write::extras` bits of the body.
    pub extras: u8,
}

/// A destination's backlog.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub entries: u64,
    pub bytes: u64,
    /// When the oldest undelivered entry was stored (ms since the epoch).
    pub oldest_ms: Option<i64>,
}

/// Entries a cursor move skipped without delivering them, per site.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Skipped {
    pub entries: u64,
    pub samples: u64,
    pub by_site: Vec<(Arc<str>, u64)>,
}

/// What retention dropped for one destination, by reason.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dropped {
    /// Over `max_bytes`.
    pub bytes: Skipped,
    /// Older than `max_age`.
    pub age: Skipped,
}

/// A destination removed from the configuration, and what it had not received.
#[derive(Clone, Debug, PartialEq)]
pub struct Removed {
    pub name: String,
    pub entries: u64,
    pub samples: u64,
}

/// A destination's live lane: entries from `from` on are delivered in their own order, ahead
/// of the backlog below `from` (`remote_write[].replay.live_first`, see `fanout.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Live {
    /// The first entry of the lane.
    pub from: u64,
    /// The next entry of the lane to deliver.
    pub cursor: u64,
    /// The end of the lane's request in flight (equal to `cursor` when none).
    pub inflight: u64,
}

/// A destination's position in the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// The next entry to deliver (of the backlog, while there is a live lane).
    pub cursor: u64,
    /// The end of the request in flight from `cursor`.
    pub inflight: u64,
    pub live: Option<Live>,
}

/// Which of a destination's lanes an operation moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// From the cursor: the whole backlog, or the part below the live lane.
    Backlog,
    /// The live lane.
    Live,
}

#[derive(Debug)]
struct DestState {
    name: String,
    cursor: u64,
    inflight: u64,
    /// Bytes of the entries not yet delivered.
    bytes: u64,
    live: Option<Live>,
}

impl Position {
    /// Whether entry `seq` is still to be delivered.
    fn pending(&self, seq: u64) -> bool {
        seq >= self.cursor && !self.live.is_some_and(|l| seq >= l.from && seq < l.cursor)
    }
}

impl DestState {
    /// Whether entry `seq` is still to be delivered.
    fn pending(&self, seq: u64) -> bool {
        self.position().pending(seq)
    }

    fn position(&self) -> Position {
        Position {
            cursor: self.cursor,
            inflight: self.inflight,
            live: self.live,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Seq of `metas[0]`; equals the lowest destination cursor.
    front: u64,
    /// One past the last visible entry.
    head: u64,
    metas: VecDeque<Meta>,
    dests: Vec<DestState>,
}

impl State {
    fn meta(&self, seq: u64) -> Option<&Meta> {
        self.metas.get(seq.checked_sub(self.front)? as usize)
    }

    fn min_cursor(&self) -> u64 {
        self.dests
            .iter()
            .map(|d| d.cursor)
            .min()
            .unwrap_or(self.head)
    }

    fn skipped(&self, from: u64, to: u64) -> Skipped {
        let mut s = Skipped::default();
        let mut sites: HashMap<Arc<str>, u64> = HashMap::new();
        for seq in from..to {
            if let Some(m) = self.meta(seq) {
                s.entries += 1;
                s.samples += m.samples;
                *sites.entry(m.site.clone()).or_default() += m.samples;
            }
        }
        s.by_site = sites.into_iter().collect();
        s.by_site.sort();
        s
    }
}

struct Inner {
    db: DB,
    path: PathBuf,
    fsync: bool,
    reset_key: [u8; 64],
    state: Mutex<State>,
    head: watch::Sender<u64>,
    /// The oldest entry some destination still needs (every cursor is at or past it).
    front: watch::Sender<u64>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock happens only between a successful write and the
        // in-memory update that follows it; the state is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn db_err(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            source,
        }
    }
}

type CommitRequest = (Commit, oneshot::Sender<Result<(), StoreError>>);

/// Handle to the store; cheap to clone. The database closes when the last handle is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    commits: mpsc::Sender<CommitRequest>,
}

fn seq_key(prefix: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of(prefix: u8, k: &[u8]) -> Option<u64> {
    match k {
        [p, rest @ ..] if *p == prefix => rest.try_into().ok().map(u64::from_be_bytes),
        _ => None,
    }
}

fn cursor_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(CURSOR);
    k.extend_from_slice(name.as_bytes());
    k
}

fn cursor_value(p: &Position) -> Vec<u8> {
    let mut v = Vec::with_capacity(40);
    v.extend_from_slice(&p.cursor.to_be_bytes());
    v.extend_from_slice(&p.inflight.to_be_bytes());
    if let Some(l) = p.live {
        for x in [l.from, l.cursor, l.inflight] {
            v.extend_from_slice(&x.to_be_bytes());
        }
    }
    v
}

/// A stored cursor value, clamped to `head`. A live lane that does not fit its invariant
/// (`cursor < from <= live cursor`) is dropped: its delivered entries are sent again
/// (duplicates, never loss).
fn decode_cursor(v: &[u8], head: u64) -> Option<Position> {
    let (cursor, inflight) = (u64_at(v, 0)?.min(head), u64_at(v, 8)?.min(head));
    let live = match v.len() {
        16 => None,
        40 => {
            let (from, lc, lf) = (u64_at(v, 16)?, u64_at(v, 24)?, u64_at(v, 32)?);
            (cursor < from && from <= lc && lc <= head).then(|| Live {
                from,
                cursor: lc,
                inflight: lf.clamp(lc, head),
            })
        }
        _ => return None,
    };
    Some(Position {
        cursor,
        inflight: inflight.max(cursor),
        live,
    })
}

fn dedupe_key(identity: &str, queue_id: u64) -> Vec<u8> {
    let id = &identity.as_bytes()[..identity.len().min(u16::MAX as usize)];
    let mut k = Vec::with_capacity(11 + id.len());
    k.push(DEDUPE);
    k.extend_from_slice(&(id.len() as u16).to_be_bytes());
    k.extend_from_slice(id);
    k.extend_from_slice(&queue_id.to_be_bytes());
    k
}

fn encode_meta(m: &Meta) -> Bytes {
    let mut b = BytesMut::with_capacity(27 + m.site.len());
    b.put_u8(HEADER_VERSION);
    b.put_i64(m.stored_ms);
    b.put_u64(m.samples);
    b.put_u64(m.bytes);
    let site = &m.site.as_bytes()[..m.site.len().min(u16::MAX as usize)];
    b.put_u16(site.len() as u16);
    b.put_slice(site);
    // Optional and last, so headers written before traces existed still decode; then the
    // extras bits when there are some (one byte, so the lengths stay distinct).
    if let Some(t) = &m.trace {
        t.put(&mut b);
    }
    if m.extras != 0 {
        b.put_u8(m.extras);
    }
    b.freeze()
}

fn decode_meta(mut v: &[u8], sites: &mut HashMap<String, Arc<str>>) -> Option<Meta> {
    if v.len() < 27 || v.get_u8() != HEADER_VERSION {
        return None;
    }
    let stored_ms = v.get_i64();
    let samples = v.get_u64();
    let bytes = v.get_u64();
    let n = v.get_u16() as usize;
    let site = std::str::from_utf8(v.get(..n)?).ok()?;
    let mut rest = &v[n..];
    let trace = match rest.len() {
        0 | 1 => None,
        TraceContext::LEN | EXTRAS_AFTER_TRACE => TraceContext::get(&mut rest).map(Box::new),
        _ => return None,
    };
    let extras = match rest {
        [] => 0,
        [b] => *b,
        _ => return None,
    };
    let site = sites
        .entry(site.to_owned())
        .or_insert_with(|| site.into())
        .clone();
    Some(Meta {
        stored_ms,
        samples,
        bytes,
        site,
        trace,
        extras,
    })
}

/// Header tail length with both a trace context and the extras byte.
const EXTRAS_AFTER_TRACE: usize = TraceContext::LEN + 1;

fn u64_at(v: &[u8], at: usize) -> Option<u64> {
    v.get(at..at + 8)?.try_into().ok().map(u64::from_be_bytes)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Store {
    /// Opens (creating if needed) the store in `dir` for the destinations named `destinations`
    /// (in the order the other methods index them). Blocking: call from `spawn_blocking` or
    /// before the runtime starts. Returns the destinations whose cursors were removed.
    pub fn open(
        dir: &Path,
        fsync: bool,
        destinations: &[String],
    ) -> Result<(Store, Vec<Removed>), StoreError> {
        let db_err = |source| StoreError::Db {
            path: dir.into(),
            source,
        };
        let corrupt = |what| StoreError::Corrupt {
            path: dir.into(),
            what,
        };
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        opts.set_max_log_file_size(8 << 20);
        let db = DB::open(&opts, dir).map_err(db_err)?;

        let mut head = match db.get(NEXT).map_err(db_err)? {
            None => 0,
            Some(v) => u64_at(&v, 0).ok_or_else(|| corrupt("m:next"))?,
        };
        // Headers, in seq order.
        let mut sites = HashMap::new();
        let mut metas: Vec<(u64, Meta)> = Vec::new();
        for item in db.iterator(IteratorMode::From(&[HEADER], Direction::Forward)) {
            let (k, v) = item.map_err(db_err)?;
            let Some(seq) = seq_of(HEADER, &k) else { break };
            let meta = decode_meta(&v, &mut sites).ok_or_else(|| corrupt("entry header"))?;
            head = head.max(seq + 1);
            metas.push((seq, meta));
        }
        // Cursors: configured ones kept (new ones start at the head), others removed.
        let mut stored: HashMap<String, Position> = HashMap::new();
        for item in db.iterator(IteratorMode::From(&[CURSOR], Direction::Forward)) {
            let (k, v) = item.map_err(db_err)?;
            if k.first() != Some(&CURSOR) {
                break;
            }
            let name = String::from_utf8_lossy(&k[1..]).into_owned();
            let p = decode_cursor(&v, head).ok_or_else(|| corrupt("destination cursor"))?;
            stored.insert(name, p);
        }
        let mut wb = WriteBatch::default();
        let reset_key = match db.get(RESET_KEY).map_err(db_err)? {
            Some(v) => <[u8; 64]>::try_from(v.as_slice()).map_err(|_| corrupt("m:reset_key"))?,
            None => {
                let mut k = [0u8; 64];
                rand::fill(&mut k[..]);
                wb.put(RESET_KEY, k);
                k
            }
        };
        let mut dests = Vec::new();
        for name in destinations {
            let p = stored.remove(name).unwrap_or_else(|| {
                let p = Position {
                    cursor: head,
                    inflight: head,
                    live: None,
                };
                wb.put(cursor_key(name), cursor_value(&p));
                p
            });
            dests.push(DestState {
                name: name.clone(),
                cursor: p.cursor,
                inflight: p.inflight,
                bytes: 0,
                live: p.live,
            });
        }
        let mut removed = Vec::new();
        for (name, p) in stored {
            wb.delete(cursor_key(&name));
            let left = metas.iter().filter(|(s, _)| p.pending(*s));
            removed.push(Removed {
                entries: left.clone().count() as u64,
                samples: left.map(|(_, m)| m.samples).sum(),
                name,
            });
        }
        removed.sort_by(|a, b| a.name.cmp(&b.name));
        let mut state = State {
            front: 0,
            head,
            metas: VecDeque::new(),
            dests,
        };
        let front = state.min_cursor();
        // Entries no destination needs (left by a removed destination).
        wb.delete_range(seq_key(BODY, 0), seq_key(BODY, front));
        wb.delete_range(seq_key(HEADER, 0), seq_key(HEADER, front));
        // Synced whatever `fsync` says: it runs once per start, and the reset key must not
        // change under agents after a power loss.
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        db.write_opt(wb, &wo).map_err(db_err)?;

        state.front = front;
        let mut expect = front;
        for (seq, meta) in metas.into_iter().filter(|(s, _)| *s >= front) {
            if seq != expect {
                return Err(corrupt("log (gap in entry numbers)"));
            }
            for d in &mut state.dests {
                if d.pending(seq) {
                    d.bytes += meta.bytes;
                }
            }
            state.metas.push_back(meta);
            expect += 1;
        }
        if expect != head {
            return Err(corrupt("log (entries missing below the head)"));
        }
        let (head_tx, _) = watch::channel(head);
        let (front_tx, _) = watch::channel(state.front);
        let inner = Arc::new(Inner {
            db,
            path: dir.into(),
            fsync,
            reset_key,
            state: Mutex::new(state),
            head: head_tx,
            front: front_tx,
        });
        let (tx, rx) = mpsc::channel(4 * MAX_GROUP);
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("uplink-store".into())
            .spawn(move || commit_loop(weak, rx))
            .map_err(|e| StoreError::Task(format!("starting the commit thread: {e}")))?;
        Ok((Store { inner, commits: tx }, removed))
    }

    /// The key for the QUIC endpoint's stateless resets; the same across restarts.
    pub fn reset_key(&self) -> [u8; 64] {
        self.inner.reset_key
    }

    /// The dedupe cursor of an agent queue: one past the last record stored, if any was.
    pub async fn dedupe_cursor(
        &self,
        identity: &str,
        queue_id: u64,
    ) -> Result<Option<u64>, StoreError> {
        let inner = self.inner.clone();
        let key = dedupe_key(identity, queue_id);
        tokio::task::spawn_blocking(move || match inner.db.get(&key) {
            Ok(None) => Ok(None),
            Ok(Some(v)) => u64_at(&v, 0).map(Some).ok_or_else(|| StoreError::Corrupt {
                path: inner.path.clone(),
                what: "dedupe cursor",
            }),
            Err(e) => Err(inner.db_err(e)),
        })
        .await?
    }

    /// Stores one accepted batch atomically (see the module docs); returns once it is durable.
    pub async fn commit(&self, c: Commit) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let gone = || StoreError::Task("commit thread stopped".into());
        self.commits.send((c, tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// One past the last visible entry.
    pub fn head(&self) -> u64 {
        *self.inner.head.borrow()
    }

    /// Waits until every destination's cursor is at or past `upto`: every entry below it was
    /// delivered, refused or dropped (counted) everywhere.
    pub async fn wait_delivered(&self, upto: u64) {
        let mut rx = self.inner.front.subscribe();
        // The sender lives as long as the store; an error means the store is gone.
        let _ = rx.wait_for(|f| *f >= upto).await;
    }

    /// A receiver that changes whenever entries are appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.head.subscribe()
    }

    /// Destination `dest`'s cursor and the end of its request in flight.
    pub fn cursor(&self, dest: usize) -> (u64, u64) {
        let p = self.position(dest);
        (p.cursor, p.inflight)
    }

    /// Destination `dest`'s cursor, request in flight and live lane.
    pub fn position(&self, dest: usize) -> Position {
        let s = self.inner.state();
        s.dests
            .get(dest)
            .map_or_else(Position::default, DestState::position)
    }

    /// When entry `seq` was stored, if it is still in the store.
    pub fn stored_ms(&self, seq: u64) -> Option<i64> {
        self.inner.state().meta(seq).map(|m| m.stored_ms)
    }

    /// Starts a live lane for destination `dest` at entry `from` (which must be above its
    /// cursor, at most the head): entries from there on may be delivered before the backlog
    /// below it. Whether it did: not when the destination has a lane already or `from` does
    /// not fit (retention may have moved the cursor meanwhile).
    pub async fn split(&self, dest: usize, from: u64) -> Result<bool, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = inner.state();
            let head = s.head;
            let Some(d) = s.dests.get_mut(dest) else {
                return Ok(false);
            };
            if d.live.is_some() || from <= d.cursor || from > head {
                return Ok(false);
            }
            let mut p = d.position();
            p.live = Some(Live {
                from,
                cursor: from,
                inflight: from,
            });
            inner
                .db
                .put(cursor_key(&d.name), cursor_value(&p))
                .map_err(|e| inner.db_err(e))?;
            d.live = p.live;
            Ok(true)
        })
        .await?
    }

    /// Destination `dest`'s backlog.
    pub fn usage(&self, dest: usize) -> Usage {
        let s = self.inner.state();
        let Some(d) = s.dests.get(dest) else {
            return Usage::default();
        };
        Usage {
            entries: match d.live {
                None => s.head - d.cursor,
                Some(l) => (l.from - d.cursor) + (s.head - l.cursor),
            },
            bytes: d.bytes,
            oldest_ms: s.meta(d.cursor).map(|m| m.stored_ms),
        }
    }

    /// Reads entries from `from` on, in order: at most up to `until`, stopping before the
    /// samples would exceed `max_samples` or the bodies `max_bytes` (at least one entry is
    /// returned if any is visible). Stops early at an entry deleted meanwhile.
    pub async fn read(
        &self,
        from: u64,
        until: u64,
        max_samples: u64,
        max_bytes: u64,
    ) -> Result<Vec<Stored>, StoreError> {
        let plan: Vec<(u64, Meta)> = {
            let s = self.inner.state();
            let (mut samples, mut bytes) = (0u64, 0u64);
            let mut plan = Vec::new();
            for seq in from.max(s.front)..until.min(s.head) {
                let Some(m) = s.meta(seq) else { break };
                if !plan.is_empty()
                    && (samples + m.samples > max_samples || bytes + m.bytes > max_bytes)
                {
                    break;
                }
                samples += m.samples;
                bytes += m.bytes;
                plan.push((seq, m.clone()));
            }
            plan
        };
        let Some(first) = plan.first().map(|p| p.0) else {
            return Ok(Vec::new());
        };
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(plan.len());
            let start = seq_key(BODY, first);
            let mut it = inner
                .db
                .iterator(IteratorMode::From(&start, Direction::Forward));
            for (seq, meta) in plan {
                let Some(item) = it.next() else { break };
                let (k, v) = item.map_err(|e| inner.db_err(e))?;
                if seq_of(BODY, &k) != Some(seq) {
                    break;
                }
                out.push(Stored {
                    seq,
                    meta,
                    body: Bytes::from(v.into_vec()),
                });
            }
            Ok(out)
        })
        .await?
    }

    /// Records that destination `dest` is about to send entries of `lane` up to `end`
    /// (exclusive), so that after a crash the lane's first request covers exactly those entries
    /// again.
    pub async fn set_inflight(&self, dest: usize, lane: Lane, end: u64) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = inner.state();
            let Some(d) = s.dests.get_mut(dest) else {
                return Ok(());
            };
            let mut p = d.position();
            match (lane, &mut p.live) {
                (Lane::Backlog, _) if end > p.cursor && end != p.inflight => p.inflight = end,
                (Lane::Live, Some(l)) if end > l.cursor && end != l.inflight => l.inflight = end,
                _ => return Ok(()),
            }
            inner
                .db
                .put(cursor_key(&d.name), cursor_value(&p))
                .map_err(|e| inner.db_err(e))?;
            (d.inflight, d.live) = (p.inflight, p.live);
            Ok(())
        })
        .await?
    }

    /// Moves `lane` of destination `dest` forward to `to` (entries below it were delivered or
    /// refused). The backlog lane deletes entries no destination needs any more, in the same
    /// write, and merges into the live lane when it reaches it. Returns what the move passed
    /// over (nothing when the lane was already there).
    pub async fn advance(&self, dest: usize, lane: Lane, to: u64) -> Result<Skipped, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = inner.state();
            match lane {
                Lane::Backlog => advance_locked(&inner, &mut s, dest, to),
                Lane::Live => advance_live(&inner, &mut s, dest, to),
            }
        })
        .await?
    }

    /// Applies destination `dest`'s retention budget: moves its cursor past the oldest entries
    /// while its backlog exceeds `max_bytes` (0: no limit) or while the oldest was stored before
    /// `min_stored_ms`. The newest entry is kept. Returns what was dropped, by reason.
    pub async fn enforce_retention(
        &self,
        dest: usize,
        max_bytes: u64,
        min_stored_ms: Option<i64>,
    ) -> Result<Dropped, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = inner.state();
            let Some(d) = s.dests.get(dest) else {
                return Ok(Dropped::default());
            };
            let (cursor, mut left) = (d.cursor, d.bytes);
            let (mut by_bytes, mut by_age) = (cursor, cursor);
            let mut seq = cursor;
            // The newest entry is kept; with a live lane, the backlog below it may all go.
            let end = d.live.map_or(s.head.saturating_sub(1), |l| l.from);
            while seq < end {
                let Some(m) = s.meta(seq) else { break };
                if max_bytes > 0 && left > max_bytes {
                    by_bytes = seq + 1;
                } else if min_stored_ms.is_some_and(|min| m.stored_ms < min) {
                    by_age = seq + 1;
                } else {
                    break;
                }
                left -= m.bytes;
                seq += 1;
            }
            if seq == cursor {
                return Ok(Dropped::default());
            }
            // Entries are dropped oldest first: the bytes reason covers a prefix, the age reason
            // whatever follows it.
            let bytes = s.skipped(cursor, by_bytes);
            let age = s.skipped(by_bytes.max(cursor), by_age.max(by_bytes));
            advance_locked(&inner, &mut s, dest, seq)?;
            Ok(Dropped { bytes, age })
        })
        .await?
    }

    /// Syncs the write-ahead log and flushes memtables; used on orderly shutdown.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner.db.flush_wal(true).map_err(|e| inner.db_err(e))?;
            inner.db.flush().map_err(|e| inner.db_err(e))
        })
        .await?
    }
}

/// Moves a live lane forward (no deletion: the backlog's cursor is below it).
fn advance_live(inner: &Inner, s: &mut State, dest: usize, to: u64) -> Result<Skipped, StoreError> {
    let head = s.head;
    let Some(d) = s.dests.get(dest) else {
        return Ok(Skipped::default());
    };
    let Some(mut live) = d.live else {
        // Retention merged the lanes while this lane's request was in flight: the cursor is
        // where that request started, so moving it records the delivery.
        return advance_locked(inner, s, dest, to);
    };
    let (from, to) = (live.cursor, to.min(head));
    if to <= from {
        return Ok(Skipped::default());
    }
    live.cursor = to;
    live.inflight = live.inflight.max(to);
    let mut p = d.position();
    p.live = Some(live);
    inner
        .db
        .put(cursor_key(&d.name), cursor_value(&p))
        .map_err(|e| inner.db_err(e))?;
    let skipped = s.skipped(from, to);
    let freed: u64 = (from..to).filter_map(|q| s.meta(q)).map(|m| m.bytes).sum();
    let d = &mut s.dests[dest];
    d.live = Some(live);
    d.bytes -= freed.min(d.bytes);
    Ok(skipped)
}

fn advance_locked(
    inner: &Inner,
    s: &mut State,
    dest: usize,
    to: u64,
) -> Result<Skipped, StoreError> {
    let head = s.head;
    let Some(d) = s.dests.get(dest) else {
        return Ok(Skipped::default());
    };
    // The backlog lane ends where the live lane starts.
    let (from, to) = (d.cursor, to.min(d.live.map_or(head, |l| l.from)));
    if to <= from {
        return Ok(Skipped::default());
    }
    let skipped = s.skipped(from, to);
    let freed: u64 = (from..to).filter_map(|q| s.meta(q)).map(|m| m.bytes).sum();
    // Reaching the live lane merges the lanes: the cursor jumps past what the lane delivered.
    let p = match d.live {
        Some(l) if to == l.from => Position {
            cursor: l.cursor,
            inflight: l.inflight,
            live: None,
        },
        live => Position {
            cursor: to,
            inflight: d.inflight.max(to),
            live,
        },
    };
    let to = p.cursor;
    let new_min = s
        .dests
        .iter()
        .enumerate()
        .map(|(i, d)| if i == dest { to } else { d.cursor })
        .min()
        .unwrap_or(to);
    let mut wb = WriteBatch::default();
    wb.put(cursor_key(&s.dests[dest].name), cursor_value(&p));
    if new_min > s.front {
        wb.delete_range(seq_key(BODY, s.front), seq_key(BODY, new_min));
        wb.delete_range(seq_key(HEADER, s.front), seq_key(HEADER, new_min));
    }
    inner.db.write(wb).map_err(|e| inner.db_err(e))?;
    let d = &mut s.dests[dest];
    (d.cursor, d.inflight, d.live) = (p.cursor, p.inflight, p.live);
    d.bytes -= freed.min(d.bytes);
    while s.front < new_min && s.metas.pop_front().is_some() {
        s.front += 1;
    }
    inner.front.send_if_modified(|f| {
        let moved = *f != s.front;
        *f = s.front;
        moved
    });
    Ok(skipped)
}

/// The commit thread: writes every pending commit as one write batch, then answers them.
fn commit_loop(inner: Weak<Inner>, mut rx: mpsc::Receiver<CommitRequest>) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        let result = match inner.upgrade() {
            Some(inner) => write_group(&inner, group.iter().map(|(c, _)| c)),
            None => Err(StoreError::Task("store closed".into())),
        };
        for (_, reply) in group {
            let _ = reply.send(result.clone());
        }
    }
}

fn write_group<'a>(
    inner: &Inner,
    group: impl Iterator<Item = &'a Commit>,
) -> Result<(), StoreError> {
    let first = inner.state().head;
    let mut next = first;
    let mut metas = Vec::new();
    let mut wb = WriteBatch::default();
    let now = now_ms();
    for c in group {
        if let Some(e) = &c.entry {
            let meta = Meta {
                stored_ms: now,
                samples: e.samples,
                bytes: e.body.len() as u64,
                site: c.identity.clone(),
                trace: e.trace.map(Box::new),
                extras: e.extras,
            };
            wb.put(seq_key(BODY, next), &e.body);
            wb.put(seq_key(HEADER, next), encode_meta(&meta));
            metas.push(meta);
            next += 1;
        }
        wb.put(
            dedupe_key(&c.identity, c.queue_id),
            c.next_seq.to_be_bytes(),
        );
    }
    wb.put(NEXT, next.to_be_bytes());
    let mut wo = WriteOptions::default();
    wo.set_sync(inner.fsync);
    inner.db.write_opt(wb, &wo).map_err(|e| inner.db_err(e))?;
    if next > first {
        let mut s = inner.state();
        for m in metas {
            for d in &mut s.dests {
                d.bytes += m.bytes;
            }
            s.metas.push_back(m);
        }
        s.head = next;
        drop(s);
        inner.head.send_replace(next);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| (*s).to_owned()).collect()
    }

    fn commit(site: &str, queue_id: u64, next_seq: u64, body: Option<&str>) -> Commit {
        Commit {
            identity: site.into(),
            queue_id,
            next_seq,
            entry: body.map(|b| Entry {
                samples: b.len() as u64,
                body: Bytes::copy_from_slice(b.as_bytes()),
                trace: None,
                extras: 0,
            }),
        }
    }

    fn bodies(v: &[Stored]) -> Vec<(u64, &[u8])> {
        v.iter().map(|s| (s.seq, &s.body[..])).collect()
    }

    async fn open(dir: &Path, dests: &[&str]) -> (Store, Vec<Removed>) {
        let (dir, dests) = (dir.to_owned(), names(dests));
        tokio::task::spawn_blocking(move || Store::open(&dir, false, &dests))
            .await
            .expect("join")
            .expect("open")
    }

    #[test]
    fn headers_carry_an_optional_trace_and_old_headers_still_decode() {
        let mut meta = Meta {
            stored_ms: 5,
            samples: 7,
            bytes: 9,
            site: "t/s".into(),
            trace: None,
            extras: 0,
        };
        let mut sites = HashMap::new();
        let plain = encode_meta(&meta);
        assert_eq!(plain.len(), 27 + 3, "the pre-trace layout, unchanged");
        assert_eq!(decode_meta(&plain, &mut sites), Some(meta.clone()));
        meta.trace = Some(Box::new(TraceContext {
            trace_id: [3; 16],
            span_id: [4; 8],
            flags: 1,
        }));
        let traced = encode_meta(&meta);
        assert_eq!(decode_meta(&traced, &mut sites), Some(meta.clone()));
        assert_eq!(decode_meta(&traced[..traced.len() - 1], &mut sites), None);
        // The extras byte, after a trace context or without one.
        meta.extras = 5;
        assert_eq!(
            decode_meta(&encode_meta(&meta), &mut sites),
            Some(meta.clone())
        );
        meta.trace = None;
        let extras = encode_meta(&meta);
        assert_eq!(extras.len(), 27 + 3 + 1);
        assert_eq!(decode_meta(&extras, &mut sites), Some(meta));
    }

    #[tokio::test]
    async fn append_read_advance_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (s, removed) = open(dir.path(), &["a", "b"]).await;
        assert!(removed.is_empty());
        let reset_key = s.reset_key();
        for (i, b) in ["x", "yy", "zzz"].iter().enumerate() {
            s.commit(commit("site", 7, i as u64 + 1, Some(b)))
                .await
                .expect("commit");
        }
        assert_eq!(s.head(), 3);
        assert_eq!(
            s.usage(0),
            Usage {
                entries: 3,
                bytes: 6,
                oldest_ms: s.usage(0).oldest_ms
            }
        );
        assert!(s.usage(0).oldest_ms.is_some());
        let got = s.read(0, u64::MAX, 100, 100).await.expect("read");
        assert_eq!(
            bodies(&got),
            vec![(0, &b"x"[..]), (1, &b"yy"[..]), (2, &b"zzz"[..])]
        );
        assert_eq!(&*got[0].meta.site, "site");
        // Sample and byte limits; at least one entry.
        assert_eq!(s.read(0, u64::MAX, 3, 100).await.expect("read").len(), 2);
        assert_eq!(s.read(0, u64::MAX, 0, 0).await.expect("read").len(), 1);
        assert_eq!(s.read(1, 2, 100, 100).await.expect("read").len(), 1);

        // Destination a delivers two entries; b none: nothing is deleted yet.
        let skipped = s.advance(0, Lane::Backlog, 2).await.expect("advance");
        assert_eq!((skipped.entries, skipped.samples), (2, 3));
        assert_eq!(s.usage(0).entries, 1);
        assert_eq!(s.usage(0).bytes, 3);
        assert_eq!(s.usage(1).entries, 3);
        // Cursors never move back.
        assert_eq!(
            s.advance(0, Lane::Backlog, 1).await.expect("advance"),
            Skipped::default()
        );
        assert_eq!(s.cursor(0), (2, 2));
        s.set_inflight(1, Lane::Backlog, 2).await.expect("inflight");
        drop(s);

        let (s, _) = open(dir.path(), &["a", "b"]).await;
        assert_eq!(s.reset_key(), reset_key, "the reset key survives restarts");
        assert_eq!(s.head(), 3);
        assert_eq!(s.cursor(0), (2, 2));
        assert_eq!(s.cursor(1), (0, 2), "the request in flight is remembered");
        assert_eq!(s.usage(1).bytes, 6);
        // b catches up: every entry is delivered everywhere and deleted.
        s.advance(1, Lane::Backlog, 3).await.expect("advance");
        s.advance(0, Lane::Backlog, 3).await.expect("advance");
        assert_eq!(s.usage(0), Usage::default());
        drop(s);
        let (s, _) = open(dir.path(), &["a", "b"]).await;
        assert_eq!(s.head(), 3, "entry numbers never repeat");
        assert!(
            s.read(0, u64::MAX, 100, 100)
                .await
                .expect("read")
                .is_empty()
        );
        s.commit(commit("site", 7, 4, Some("w")))
            .await
            .expect("commit");
        assert_eq!(
            bodies(&s.read(0, u64::MAX, 100, 100).await.expect("read")),
            vec![(3, &b"w"[..])]
        );
    }

    #[tokio::test]
    async fn dedupe_cursor_is_durable_and_written_with_the_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (s, _) = open(dir.path(), &["a"]).await;
        assert_eq!(s.dedupe_cursor("site", 1).await.expect("get"), None);
        s.commit(commit("site", 1, 10, Some("a")))
            .await
            .expect("commit");
        // A batch of retransmitted records only: the cursor moves, no entry.
        s.commit(commit("site", 1, 12, None)).await.expect("commit");
        s.commit(commit("other", 1, 3, Some("b")))
            .await
            .expect("commit");
        assert_eq!(s.head(), 2);
        drop(s);
        let (s, _) = open(dir.path(), &["a"]).await;
        assert_eq!(s.dedupe_cursor("site", 1).await.expect("get"), Some(12));
        assert_eq!(s.dedupe_cursor("site", 2).await.expect("get"), None);
        assert_eq!(s.dedupe_cursor("other", 1).await.expect("get"), Some(3));
        // Identities are length-prefixed: no prefix collisions.
        assert_eq!(s.dedupe_cursor("sit", 1).await.expect("get"), None);
    }

    #[tokio::test]
    async fn concurrent_commits_are_grouped_without_gaps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (s, _) = open(dir.path(), &["a"]).await;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200u64 {
            let s = s.clone();
            tasks.spawn(async move {
                s.commit(commit(&format!("site{}", i % 7), i, 1, Some("x")))
                    .await
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("join").expect("commit");
        }
        assert_eq!(s.head(), 200);
        let got = s.read(0, u64::MAX, u64::MAX, u64::MAX).await.expect("read");
        assert_eq!(
            got.iter().map(|g| g.seq).collect::<Vec<_>>(),
            (0..200).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn retention_drops_oldest_per_destination_by_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (s, _) = open(dir.path(), &["up", "down"]).await;
        for i in 0..10u64 {
            let site = if i % 2 == 0 { "even" } else { "odd" };
            s.commit(commit(site, 1, i + 1, Some("0123456789")))
                .await
                .expect("commit");
        }
        s.advance(0, Lane::Backlog, 10)
            .await
            .expect("up delivers everything");
        // 100 bytes waiting for "down"; a budget of 35 keeps the newest 3 entries.
        let d = s.enforce_retention(1, 35, None).await.expect("retention");
        assert_eq!((d.bytes.entries, d.bytes.samples), (7, 70));
        assert_eq!(
            d.bytes.by_site,
            vec![("even".into(), 40), ("odd".into(), 30)]
        );
        assert_eq!(d.age, Skipped::default());
        assert_eq!(s.usage(1).entries, 3);
        assert_eq!(s.usage(1).bytes, 30);
        assert_eq!(
            s.enforce_retention(0, 35, None).await.expect("r"),
            Dropped::default()
        );
        // Age: everything stored before "the future" goes, except the newest entry.
        let d = s
            .enforce_retention(1, 0, Some(now_ms() + 60_000))
            .await
            .expect("retention");
        assert_eq!((d.age.entries, d.bytes.entries), (2, 0));
        assert_eq!(s.usage(1).entries, 1);
        drop(s);
        let (s, _) = open(dir.path(), &["up", "down"]).await;
        assert_eq!(s.usage(1).entries, 1);
        assert_eq!(
            bodies(
                &s.read(s.cursor(1).0, u64::MAX, 100, 100)
                    .await
                    .expect("read")
            ),
            vec![(9, &b"0123456789"[..])]
        );
    }

    #[tokio::test]
    async fn destinations_added_and_removed_between_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (s, _) = open(dir.path(), &["old", "kept"]).await;
        for i in 0..4u64 {
            s.commit(commit("site", 1, i + 1, Some("abc")))
                .await
                .expect("commit");
        }
        s.advance(1, Lane::Backlog, 4).await.expect("kept delivers");
        s.advance(0, Lane::Backlog, 1)
            .await
            .expect("old delivers one");
        drop(s);
        let (s, removed) = open(dir.path(), &["kept", "new"]).await;
        assert_eq!(
            removed,
            vec![Removed {
                name: "old".into(),
                entries: 3,
                samples: 9
            }]
        );
        assert_eq!(s.cursor(0), (4, 4));
        assert_eq!(s.cursor(1), (4, 4), "a new destination starts at the head");
        assert!(
            s.read(0, u64::MAX, 100, 100)
                .await
                .expect("read")
                .is_empty()
        );
        s.commit(commit("site", 1, 5, Some("d")))
            .await
            .expect("commit");
        assert_eq!(s.usage(1).entries, 1);
    }

    /// A deterministic model check: random commits, reads, advances of both lanes, live-lane
    /// splits, retention and reopens against an in-memory model of the log and positions.
    #[tokio::test]
    async fn matches_model_under_random_operations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dests = ["a", "b", "c"];
        let (mut s, _) = open(dir.path(), &dests).await;
        let mut log: Vec<Vec<u8>> = Vec::new();
        // Per destination: the cursor and the live lane (start, cursor).
        let mut model = [(0u64, None::<(u64, u64)>); 3];
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // The backlog reached the live lane: the lanes merge.
        let merge = |m: &mut (u64, Option<(u64, u64)>)| {
            if let Some((from, lc)) = m.1
                && m.0 == from
            {
                *m = (lc, None);
            }
        };
        for step in 0..800u64 {
            let d = (next() % 3) as usize;
            let head = log.len() as u64;
            let m = &mut model[d];
            match next() % 10 {
                0..=3 => {
                    let body = format!("s{step}");
                    s.commit(commit("m", 1, step + 1, Some(&body)))
                        .await
                        .expect("commit");
                    log.push(body.into_bytes());
                }
                4 => {
                    let end = m.1.map_or(head, |l| l.0);
                    let to = m.0 + next() % (end - m.0 + 1);
                    s.advance(d, Lane::Backlog, to).await.expect("advance");
                    m.0 = to;
                    merge(m);
                }
                5 => match m.1 {
                    Some((from, lc)) => {
                        let to = lc + next() % (head - lc + 1);
                        s.advance(d, Lane::Live, to).await.expect("advance live");
                        m.1 = Some((from, to));
                    }
                    None if m.0 < head => {
                        let from = m.0 + 1 + next() % (head - m.0);
                        assert!(s.split(d, from).await.expect("split"));
                        m.1 = Some((from, from));
                    }
                    None => {}
                },
                6 => {
                    let r = s.enforce_retention(d, 12, None).await.expect("retention");
                    m.0 += r.bytes.entries;
                    merge(m);
                }
                7 => {
                    drop(s);
                    s = open(dir.path(), &dests).await.0;
                }
                _ => {
                    let end = m.1.map_or(u64::MAX, |l| l.0);
                    let lanes = [(m.0, end)].into_iter().chain(m.1.map(|l| (l.1, u64::MAX)));
                    for (from, until) in lanes {
                        let got = s.read(from, until, u64::MAX, u64::MAX).await.expect("read");
                        let want: Vec<(u64, &[u8])> = log
                            .iter()
                            .enumerate()
                            .take(until.min(log.len() as u64) as usize)
                            .skip(from as usize)
                            .map(|(i, b)| (i as u64, &b[..]))
                            .collect();
                        assert_eq!(bodies(&got), want, "step {step}");
                    }
                }
            }
            for (i, (c, live)) in model.iter().enumerate() {
                let p = s.position(i);
                assert_eq!(
                    (p.cursor, p.live.map(|l| (l.from, l.cursor))),
                    (*c, *live),
                    "step {step}"
                );
                let pending = |q: &u64| *q >= *c && !live.is_some_and(|(f, lc)| *q >= f && *q < lc);
                let seqs = (0..log.len() as u64).filter(pending);
                let bytes: u64 = seqs.clone().map(|q| log[q as usize].len() as u64).sum();
                assert_eq!(s.usage(i).bytes, bytes, "step {step}");
                assert_eq!(s.usage(i).entries, seqs.count() as u64, "step {step}");
            }
        }
    }

    #[tokio::test]
    async fn a_live_lane_goes_first_survives_a_reopen_and_merges() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (s, _) = open(dir.path(), &["d"]).await;
        for i in 0..4 {
            s.commit(commit("site", 1, i + 1, Some(&format!("b{i}"))))
                .await
                .expect("commit");
        }
        // Entries 0..4 are the backlog; the lane starts at the head.
        assert!(s.split(0, 4).await.expect("split"));
        assert!(!s.split(0, 5).await.expect("one lane at a time"));
        for i in 4..6 {
            s.commit(commit("site", 1, i + 1, Some(&format!("l{i}"))))
                .await
                .expect("commit");
        }
        s.set_inflight(0, Lane::Live, 6).await.expect("inflight");
        s.advance(0, Lane::Live, 6).await.expect("live delivered");
        s.set_inflight(0, Lane::Backlog, 2).await.expect("inflight");
        drop(s);
        let (s, _) = open(dir.path(), &["d"]).await;
        let p = s.position(0);
        assert_eq!(
            p,
            Position {
                cursor: 0,
                inflight: 2,
                live: Some(Live {
                    from: 4,
                    cursor: 6,
                    inflight: 6
                })
            }
        );
        assert_eq!(s.usage(0).entries, 4);
        // The backlog lane stops at the lane's start, then the lanes merge.
        s.advance(0, Lane::Backlog, 100).await.expect("backlog");
        assert_eq!(
            s.position(0),
            Position {
                cursor: 6,
                inflight: 6,
                live: None
            }
        );
        assert_eq!(s.usage(0), Usage::default());
        // A store of an earlier release (16-byte cursors) still opens; a lane that does not
        // fit is dropped (resent, never lost).
        assert_eq!(decode_cursor(&[0; 16], 9), Some(Position::default()));
        let mut v = cursor_value(&Position {
            cursor: 5,
            inflight: 5,
            live: Some(Live {
                from: 3,
                cursor: 4,
                inflight: 4,
            }),
        });
        assert_eq!(decode_cursor(&v, 9).expect("decodes").live, None);
        // Beyond the head (entries lost since): dropped, not a panic.
        let beyond = cursor_value(&Position {
            cursor: 1,
            inflight: 1,
            live: Some(Live {
                from: 2,
                cursor: 50,
                inflight: 60,
            }),
        });
        assert_eq!(decode_cursor(&beyond, 9).expect("decodes").live, None);
        v.pop();
        assert_eq!(decode_cursor(&v, 9), None);
    }

    #[tokio::test]
    async fn retention_drops_the_backlog_behind_a_live_lane_and_merges() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (s, _) = open(dir.path(), &["d"]).await;
        for i in 0..3 {
            s.commit(commit("site", 1, i + 1, Some("xxxxxxxxxx")))
                .await
                .expect("commit");
        }
        assert!(s.split(0, 3).await.expect("split"));
        s.commit(commit("site", 1, 4, Some("yyyyyyyyyy")))
            .await
            .expect("commit");
        // Over 5 bytes: the whole backlog may go (the live lane keeps the newest), then merge.
        let r = s.enforce_retention(0, 5, None).await.expect("retention");
        assert_eq!(r.bytes.entries, 3);
        assert_eq!(
            s.position(0),
            Position {
                cursor: 3,
                inflight: 3,
                live: None
            }
        );
        assert_eq!(s.usage(0).entries, 1);
        // A live request in flight across that merge still counts as delivered.
        s.advance(0, Lane::Live, 4).await.expect("live after merge");
        assert_eq!(s.position(0).cursor, 4);
        assert_eq!(s.usage(0), Usage::default());
    }
}
