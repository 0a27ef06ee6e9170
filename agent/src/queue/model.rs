//! Model test of the queue: random appends (with and without set definitions), reads, acks
//! (prefixes and duplicates), set GC, syncs, reopens, crashes (drop without flush) and disk
//! failures (injected) against an in-memory model.
//!
//! Checked after every step: everything appended and not deleted reads back in order with the
//! same bytes, a sequence number never names two different records (across reopens too), every
//! record read finds its set definition, the memory buffer stays within its budget, and (while
//! healthy, so always after a reopen) `usage()` and `head()` match the model.

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::Bytes;
use proptest::prelude::*;

use super::{Appended, Fault, Queue, QueueOptions, Record, SetUse, SyncPolicy};

const BUDGET: u64 = 256;
const SETS: u64 = 4;

#[derive(Clone, Debug)]
enum Op {
    /// Append a record of `len` bytes; `set` picks a series set, `def` whether to send its
    /// definition when the writer believes the queue has it.
    Append {
        len: usize,
        set: Option<u64>,
        def: bool,
    },
    /// The disk fails from now on.
    Fail,
    /// Append while the write reaches the log but reports failure (its sync failed).
    AppendFailing {
        len: usize,
    },
    /// The disk works again (the next sync retries).
    Heal,
    /// Read from the `offset`-th stored record, at most `max` records.
    Read {
        offset: usize,
        max: usize,
    },
    /// Acknowledge the `n` oldest records.
    Ack {
        n: usize,
    },
    /// Acknowledge the last acknowledged range again.
    DupAck,
    Gc,
    /// `flush()`: retry the disk if degraded, then sync.
    Sync,
    /// Orderly: flush, drop, open.
    Reopen,
    /// Drop without flushing, open.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0usize..48, prop::option::of(0..SETS), any::<bool>())
            .prop_map(|(len, set, def)| Op::Append { len, set, def }),
        1 => Just(Op::Fail),
        1 => (0usize..48).prop_map(|len| Op::AppendFailing { len }),
        2 => Just(Op::Heal),
        3 => (0usize..8, 1usize..6).prop_map(|(offset, max)| Op::Read { offset, max }),
        3 => (1usize..6).prop_map(|n| Op::Ack { n }),
        1 => Just(Op::DupAck),
        1 => Just(Op::Gc),
        2 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

#[derive(Clone, Debug)]
struct Rec {
    seq: u64,
    data: Bytes,
    set: Option<u64>,
}

/// What the queue should hold.
#[derive(Default)]
struct Model {
    stored: VecDeque<Rec>,
    /// Buffered records (not numbered yet), oldest first.
    buffer: VecDeque<(Bytes, Option<u64>)>,
    next: u64,
    /// A record a failed write left in the log beyond `next` (survives a crash).
    ghost: Option<Rec>,
    /// Every sequence number ever seen by a reader, with its record.
    seen: HashMap<u64, Bytes>,
    /// Sets whose definition the writer believes is in the queue.
    present: HashSet<u64>,
    last_ack: Option<(u64, u32)>,
    appended: u64,
    dropped: u64,
}

impl Model {
    fn data(&mut self, len: usize) -> Bytes {
        self.appended += 1;
        let mut s = format!("r{}:", self.appended);
        while s.len() < len {
            s.push('x');
        }
        Bytes::from(s)
    }

    fn bytes(&self) -> u64 {
        self.stored.iter().map(|r| r.data.len() as u64).sum()
    }

    /// The disk works again and the buffer was written: number it.
    fn drained(&mut self) {
        self.ghost = None;
        while let Some((data, set)) = self.buffer.pop_front() {
            self.stored.push_back(Rec {
                seq: self.next,
                data,
                set,
            });
            self.next += 1;
        }
    }

    /// The process ended: memory is lost, a ghost becomes a record.
    fn restarted(&mut self) {
        self.buffer.clear();
        self.present.clear();
        if let Some(g) = self.ghost.take() {
            self.next = g.seq + 1;
            self.stored.push_back(g);
        }
    }

    fn used(&self) -> HashSet<u64> {
        self.stored
            .iter()
            .filter_map(|r| r.set)
            .chain(self.buffer.iter().filter_map(|(_, s)| *s))
            .collect()
    }
}

fn def_of(id: u64) -> Bytes {
    Bytes::from(format!("def-of-set-{id}"))
}

fn options(sync: SyncPolicy) -> QueueOptions {
    QueueOptions {
        memory_buffer_bytes: BUDGET,
        background: false,
        ..QueueOptions::new(sync)
    }
}

struct Run {
    dir: tempfile::TempDir,
    sync: SyncPolicy,
    q: Option<Queue>,
    m: Model,
}

impl Run {
    fn q(&self) -> &Queue {
        self.q.as_ref().expect("queue open")
    }

    fn reopen(&mut self) {
        self.q = None;
        let q = Queue::open_with(self.dir.path(), options(self.sync)).expect("reopen");
        self.q = Some(q);
        self.m.restarted();
    }

    async fn append(&mut self, len: usize, set: Option<u64>, def: bool) -> Appended {
        let data = self.m.data(len);
        let set_use = set.map(|id| SetUse {
            id,
            def: (def || !self.m.present.contains(&id)).then(|| def_of(id)),
        });
        let got = self.q().append(data.clone(), set_use).await;
        let got = got.expect("append never fails with records smaller than the buffer");
        if let Some(id) = set {
            self.m.present.insert(id);
        }
        match got {
            Appended::Stored(seq) => {
                assert_eq!(seq, self.m.next, "gap-free numbering");
                self.m.next += 1;
                self.m.stored.push_back(Rec { seq, data, set });
            }
            Appended::Buffered => self.m.buffer.push_back((data, set)),
        }
        got
    }

    async fn step(&mut self, op: &Op) {
        let fault = self.q().fault();
        let degraded = self.q().stats().degraded;
        match *op {
            Op::Append { len, set, def } => {
                let got = self.append(len, set, def).await;
                if fault == Fault::None && !degraded {
                    assert!(matches!(got, Appended::Stored(_)), "healthy append stored");
                }
            }
            Op::Fail => self.q().inject(Fault::Before),
            Op::AppendFailing { len } => {
                let ghost_at = self.m.next;
                if degraded {
                    self.q().inject(Fault::Before);
                } else {
                    self.q().inject(Fault::After);
                }
                let got = self.append(len, None, false).await;
                assert_eq!(got, Appended::Buffered);
                if !degraded {
                    let (data, _) = self.m.buffer.back().cloned().expect("buffered");
                    self.m.ghost = Some(Rec {
                        seq: ghost_at,
                        data,
                        set: None,
                    });
                }
            }
            Op::Heal => self.q().inject(Fault::None),
            Op::Read { offset, max } => self.read(offset, max).await,
            Op::Ack { n } => {
                let first = self.m.stored.front().map_or(self.m.next, |r| r.seq);
                self.ack(first, n as u32, fault, degraded).await;
            }
            Op::DupAck => {
                if let Some((first, n)) = self.m.last_ack {
                    self.ack(first, n, fault, degraded).await;
                }
            }
            Op::Gc => {
                let got = self.q().gc_sets().await;
                assert!(!(degraded && got.is_ok()), "no writes while degraded");
                // A write that reports failure after reaching the log did happen.
                if got.is_ok() || (fault == Fault::After && !degraded) {
                    let used = self.m.used();
                    self.m.present.retain(|id| used.contains(id));
                }
            }
            Op::Sync => {
                let got = self.q().flush().await;
                assert_eq!(got.is_ok(), fault == Fault::None, "{got:?}");
                if got.is_ok() {
                    self.m.drained();
                }
            }
            Op::Reopen => {
                if self.q().flush().await.is_ok() {
                    self.m.drained();
                }
                self.reopen();
            }
            Op::Crash => self.reopen(),
        }
        self.account_drops();
        self.check().await;
    }

    async fn ack(&mut self, first: u64, n: u32, fault: Fault, degraded: bool) {
        let got = self.q().delete(first, n).await;
        assert!(!(degraded && got.is_ok()), "no writes while degraded");
        // A write that reports failure after reaching the log did happen.
        if got.is_ok() || (fault == Fault::After && !degraded) {
            let end = first + u64::from(n);
            self.m.stored.retain(|r| !(first..end).contains(&r.seq));
            self.m.last_ack = Some((first, n));
        } else {
            assert!(fault != Fault::None || degraded, "{got:?}");
        }
    }

    async fn read(&mut self, offset: usize, max: usize) {
        let from = self.m.stored.get(offset).map_or(self.m.next, |r| r.seq);
        let got = self.q().read(from, max, usize::MAX).await.expect("read");
        let want: Vec<Record> = self
            .m
            .stored
            .iter()
            .filter(|r| r.seq >= from)
            .take(max)
            .map(|r| Record {
                seq: r.seq,
                data: r.data.clone(),
            })
            .collect();
        assert_eq!(got, want);
        // Every record read finds its series set.
        let ids: Vec<u64> = self
            .m
            .stored
            .iter()
            .filter(|r| r.seq >= from)
            .take(max)
            .filter_map(|r| r.set)
            .collect();
        let sets = self.q().sets(ids.clone()).await.expect("sets");
        for id in ids {
            assert_eq!(sets.get(&id), Some(&def_of(id)), "set {id} missing");
        }
    }

    /// Buffered records dropped since the last step were the oldest.
    fn account_drops(&mut self) {
        let dropped = self.q().stats().dropped_records;
        // Counters restart with the process.
        if dropped < self.m.dropped {
            self.m.dropped = 0;
        }
        for _ in self.m.dropped..dropped {
            assert!(
                self.m.buffer.pop_front().is_some(),
                "dropped more than buffered"
            );
        }
        self.m.dropped = dropped;
    }

    async fn check(&mut self) {
        let q = self.q().clone();
        let stats = q.stats();
        // Only records to write again (numbered) and kept set definitions may exceed it.
        assert!(
            stats.buffered_bytes <= BUDGET || self.m.buffer.is_empty(),
            "{stats:?}"
        );
        assert_eq!(q.head(), self.m.next);
        let all = q.read(0, usize::MAX, usize::MAX).await.expect("read all");
        assert_eq!(all.len(), self.m.stored.len());
        for (got, want) in all.iter().zip(&self.m.stored) {
            assert_eq!((got.seq, &got.data), (want.seq, &want.data));
            let first = self
                .m
                .seen
                .entry(got.seq)
                .or_insert_with(|| got.data.clone());
            assert_eq!(first, &got.data, "sequence number {} reused", got.seq);
        }
        if !stats.degraded {
            assert_eq!(q.usage(), (self.m.stored.len() as u64, self.m.bytes()));
            assert!(self.m.buffer.is_empty());
        }
        assert!(
            stats.buffered_records as usize >= self.m.buffer.len(),
            "{stats:?} vs {} buffered",
            self.m.buffer.len()
        );
    }
}

fn run(sync: SyncPolicy, ops: Vec<Op>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = Queue::open_with(dir.path(), options(sync)).expect("open");
        let mut r = Run {
            dir,
            sync,
            q: Some(q),
            m: Model::default(),
        };
        for op in &ops {
            r.step(op).await;
        }
        // Finally the disk works and everything still held is written and survives a reopen.
        r.step(&Op::Heal).await;
        r.step(&Op::Reopen).await;
        assert!(r.m.buffer.is_empty());
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn queue_matches_model_sync_always(ops in prop::collection::vec(op(), 1..60)) {
        run(SyncPolicy::Always, ops);
    }

    #[test]
    fn queue_matches_model_sync_interval(ops in prop::collection::vec(op(), 1..60)) {
        run(SyncPolicy::Interval(std::time::Duration::from_secs(3600)), ops);
    }
}
