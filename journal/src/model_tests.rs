//! The journal against an in-memory model, under random appends, settles, checkpoints, clean
//! restarts and crashes (some of them tearing an append that was never acknowledged).

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::Index;

use crate::{record, segment, Journal, JournalSettings, Record};

/// Small segments, so that rolling and deleting happen often.
const SEGMENT_BYTES: u64 = 4096;

#[derive(Debug, Clone)]
enum Op {
    /// One append, awaited.
    Append(Vec<u8>),
    /// Several appends in flight at once (group-committed together).
    AppendConcurrently(Vec<Vec<u8>>),
    /// Settle an acknowledged seq (unsettled or not).
    Settle(Index),
    /// Settle a seq that was never handed out; it must not affect the record that gets it.
    SettleUnknown(u8),
    Checkpoint,
    /// `close` then `open`.
    Reopen,
    /// Drop the journal without `close` or `checkpoint`, maybe leaving a torn append behind.
    Crash(Option<Tear>),
    /// Read unsettled records back after a seq (an index into those handed out), at most so
    /// many.
    ReadBack(Index, u8),
}

/// The bytes an interrupted, never acknowledged append left at the end of the last segment.
#[derive(Debug, Clone)]
struct Tear {
    payload: Vec<u8>,
    /// Where the record was cut; `None` for a whole record whose last byte is wrong.
    cut: Option<Index>,
    /// Whether the append had just started a new segment.
    in_new_segment: bool,
}

fn payload(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn op() -> impl Strategy<Value = Op> {
    let tear = (
        payload(100),
        prop::option::of(any::<Index>()),
        any::<bool>(),
    )
        .prop_map(|(payload, cut, in_new_segment)| Tear {
            payload,
            cut,
            in_new_segment,
        });
    prop_oneof![
        8 => payload(2000).prop_map(Op::Append),
        2 => prop::collection::vec(payload(2000), 1..8).prop_map(Op::AppendConcurrently),
        6 => any::<Index>().prop_map(Op::Settle),
        1 => any::<u8>().prop_map(Op::SettleUnknown),
        2 => Just(Op::Checkpoint),
        1 => Just(Op::Reopen),
        1 => prop::option::of(tear).prop_map(Op::Crash),
        3 => (any::<Index>(), 1..=u8::MAX).prop_map(|(after, max)| Op::ReadBack(after, max)),
    ]
}

/// What the journal must hold.
#[derive(Debug, Default)]
struct Model {
    /// Acknowledged and not settled.
    unsettled: BTreeMap<u64, Vec<u8>>,
    /// Settled since the last checkpoint: may come back after a restart.
    settled_since_checkpoint: BTreeMap<u64, Vec<u8>>,
    /// The highest seq acknowledged.
    last_seq: u64,
}

impl Model {
    fn acknowledged(&mut self, seq: u64, payload: Vec<u8>) {
        assert!(seq > self.last_seq, "seq {seq} after {}", self.last_seq);
        assert!(self.last_seq > 0 || seq == 1, "numbering starts at 1");
        self.last_seq = seq;
        self.unsettled.insert(seq, payload);
    }

    fn settle(&mut self, seq: u64) {
        if let Some(payload) = self.unsettled.remove(&seq) {
            self.settled_since_checkpoint.insert(seq, payload);
        }
    }

    /// Checks what `open` returned, then takes redelivered records back as unsettled.
    fn recovered(&mut self, records: &[Record]) {
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "not in seq order: {seqs:?}"
        );
        for record in records {
            let expected = self
                .unsettled
                .get(&record.seq)
                .or_else(|| self.settled_since_checkpoint.get(&record.seq));
            match expected {
                Some(payload) => assert_eq!(
                    record.payload.as_ref(),
                    payload.as_slice(),
                    "payload of {}",
                    record.seq
                ),
                None => panic!(
                    "record {} came back though settled before the last checkpoint \
                     (or never acknowledged)",
                    record.seq
                ),
            }
        }
        for seq in self.unsettled.keys() {
            assert!(seqs.binary_search(seq).is_ok(), "record {seq} lost");
        }
        for seq in seqs {
            if let Some(payload) = self.settled_since_checkpoint.remove(&seq) {
                self.unsettled.insert(seq, payload);
            }
        }
        self.settled_since_checkpoint.clear();
    }
}

fn settings(dir: &Path) -> JournalSettings {
    JournalSettings {
        segment_bytes: SEGMENT_BYTES,
        max_bytes: u64::MAX,
        ..JournalSettings::new(dir)
    }
}

/// The segment files' count and total length.
fn segments_on_disk(dir: &Path) -> (usize, u64) {
    let segments = segment::list(dir).unwrap();
    let bytes = segments
        .iter()
        .map(|(_, path)| fs::metadata(path).unwrap().len())
        .sum();
    (segments.len(), bytes)
}

/// Leaves the start of an append of record `seq` that a crash interrupted.
fn tear(dir: &Path, seq: u64, tear: &Tear) {
    let mut bytes = Vec::new();
    record::encode_into(&mut bytes, seq, 0, &tear.payload);
    match tear.cut {
        Some(cut) => bytes.truncate(1 + cut.index(bytes.len() - 1)),
        None => {
            let last = bytes.len() - 1;
            bytes[last] ^= 0x01;
        }
    }
    let last = segment::list(dir).unwrap().pop();
    let path = match last {
        Some((_, path)) if !tear.in_new_segment => path,
        _ => segment::path(dir, seq),
    };
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    file.write_all(&bytes).unwrap();
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, records) = Journal::open(settings(dir.path())).await.unwrap();
    assert!(records.is_empty());
    let mut model = Model::default();

    for op in ops {
        match op {
            Op::Append(payload) => {
                let seq = journal.append(Bytes::from(payload.clone())).await.unwrap();
                model.acknowledged(seq, payload);
            }
            Op::AppendConcurrently(payloads) => {
                let tasks: Vec<_> = payloads
                    .into_iter()
                    .map(|payload| {
                        let journal = journal.clone();
                        tokio::spawn(async move {
                            let seq = journal.append(Bytes::from(payload.clone())).await;
                            (seq.unwrap(), payload)
                        })
                    })
                    .collect();
                let mut acknowledged = Vec::new();
                for task in tasks {
                    acknowledged.push(task.await.unwrap());
                }
                acknowledged.sort_by_key(|(seq, _)| *seq);
                for (seq, payload) in acknowledged {
                    model.acknowledged(seq, payload);
                }
            }
            Op::Settle(index) => {
                if model.last_seq > 0 {
                    let seq = 1 + index.index(usize::try_from(model.last_seq).unwrap()) as u64;
                    journal.settle(seq);
                    model.settle(seq);
                }
            }
            Op::SettleUnknown(ahead) => journal.settle(model.last_seq + 1 + u64::from(ahead)),
            Op::Checkpoint => {
                journal.checkpoint().await.unwrap();
                model.settled_since_checkpoint.clear();
            }
            Op::Reopen => {
                journal.close().await.unwrap();
                let (reopened, records) = Journal::open(settings(dir.path())).await.unwrap();
                model.recovered(&records);
                journal = reopened;
            }
            Op::ReadBack(after, max) => {
                let after = after.index(usize::try_from(model.last_seq + 1).unwrap()) as u64;
                let read = journal
                    .unsettled_after(after, usize::from(max))
                    .await
                    .unwrap();
                let got: Vec<(u64, &[u8])> =
                    read.iter().map(|r| (r.seq, r.payload.as_ref())).collect();
                let expected: Vec<(u64, &[u8])> = model
                    .unsettled
                    .range(after + 1..)
                    .take(usize::from(max))
                    .map(|(seq, payload)| (*seq, payload.as_slice()))
                    .collect();
                assert_eq!(got, expected, "read back after {after}, at most {max}");
            }
            Op::Crash(torn) => {
                drop(journal);
                if let Some(torn) = torn {
                    tear(dir.path(), model.last_seq + 1, &torn);
                }
                let (reopened, records) = Journal::open(settings(dir.path())).await.unwrap();
                model.recovered(&records);
                journal = reopened;
            }
        }

        let stats = journal.stats();
        assert_eq!(stats.unsettled, model.unsettled.len() as u64);
        assert_eq!((stats.segments, stats.bytes), segments_on_disk(dir.path()));
        assert!(stats.bytes <= model.last_seq * record::encoded_len(2000));
    }

    // Finally: a clean shutdown with a checkpoint returns exactly the unsettled records.
    journal.checkpoint().await.unwrap();
    model.settled_since_checkpoint.clear();
    journal.close().await.unwrap();
    let (_journal, records) = Journal::open(settings(dir.path())).await.unwrap();
    let got: Vec<(u64, &[u8])> = records
        .iter()
        .map(|r| (r.seq, r.payload.as_ref()))
        .collect();
    let expected: Vec<(u64, &[u8])> = model
        .unsettled
        .iter()
        .map(|(seq, payload)| (*seq, payload.as_slice()))
        .collect();
    assert_eq!(got, expected);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn journal_matches_the_model(ops in prop::collection::vec(op(), 1..80)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(ops));
    }
}
