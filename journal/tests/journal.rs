//! The journal through its public API: durability of acknowledged appends, rolling and
//! deleting segments, the size limit, numbering across restarts, damage found at open.

#![allow(clippy::unwrap_used)]

use std::fs::{self, OpenOptions};
use std::future::{poll_fn, Future};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tandem_journal::{Journal, JournalError, JournalSettings, Record};

/// Bytes of framing per record: length, crc, seq, time.
const HEADER: u64 = 24;
/// A 10-byte payload.
const TEN: &[u8] = b"0123456789";

fn settings(dir: &Path) -> JournalSettings {
    JournalSettings::new(dir)
}

/// Settings whose segments hold two records of `payload` bytes each.
fn two_per_segment(dir: &Path, payload: u64) -> JournalSettings {
    JournalSettings {
        segment_bytes: 2 * (HEADER + payload) + 1,
        ..settings(dir)
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    files.sort();
    files
}

fn file_names(dir: &Path) -> Vec<String> {
    segment_files(dir)
        .iter()
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn seqs(records: &[Record]) -> Vec<u64> {
    records.iter().map(|record| record.seq).collect()
}

async fn append_all(journal: &Journal, payloads: &[&'static [u8]]) -> Vec<u64> {
    let mut seqs = Vec::new();
    for payload in payloads {
        seqs.push(journal.append(Bytes::from_static(payload)).await.unwrap());
    }
    seqs
}

#[tokio::test]
async fn an_append_is_in_the_file_once_it_resolves() {
    for fsync in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (journal, recovered) = Journal::open(JournalSettings {
            fsync,
            ..settings(dir.path())
        })
        .await
        .unwrap();
        assert!(recovered.is_empty());

        let seq = journal
            .append(Bytes::from_static(b"POST /orders {\"id\":17}"))
            .await
            .unwrap();
        assert_eq!(seq, 1);
        // Read with plain std::fs while the journal is still open: no close, no checkpoint.
        let files = segment_files(dir.path());
        assert_eq!(file_names(dir.path()), ["00000000000000000001.seg"]);
        let bytes = fs::read(&files[0]).unwrap();
        assert_eq!(bytes.len() as u64, HEADER + 22);
        assert_eq!(&bytes[8..16], &1u64.to_le_bytes());
        assert_eq!(&bytes[24..], b"POST /orders {\"id\":17}");
        drop(journal);
    }
}

#[tokio::test]
async fn concurrent_appends_get_distinct_seqs_and_all_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(settings(dir.path())).await.unwrap();
    let tasks: Vec<_> = (0..200u32)
        .map(|i| {
            let journal = journal.clone();
            tokio::spawn(async move {
                let payload = Bytes::from(format!("copy {i}"));
                (journal.append(payload.clone()).await.unwrap(), payload)
            })
        })
        .collect();
    let mut appended = Vec::new();
    for task in tasks {
        appended.push(task.await.unwrap());
    }
    appended.sort();
    assert_eq!(
        appended.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        (1..=200).collect::<Vec<_>>()
    );

    drop(journal); // a crash: no close, no checkpoint
    let (_journal, recovered) = Journal::open(settings(dir.path())).await.unwrap();
    let recovered: Vec<(u64, Bytes)> = recovered.into_iter().map(|r| (r.seq, r.payload)).collect();
    assert_eq!(recovered, appended);
}

#[tokio::test]
async fn sequence_numbers_continue_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(settings(dir.path())).await.unwrap();
    assert_eq!(append_all(&journal, &[b"a", b"b", b"c"]).await, [1, 2, 3]);
    journal.close().await.unwrap();

    let (journal, recovered) = Journal::open(settings(dir.path())).await.unwrap();
    assert_eq!(seqs(&recovered), [1, 2, 3]);
    assert_eq!(append_all(&journal, &[b"d"]).await, [4]);
    for seq in 1..=4 {
        journal.settle(seq);
    }
    journal.checkpoint().await.unwrap();
    journal.close().await.unwrap();

    // Everything settled: nothing comes back, and numbering still goes on.
    let (journal, recovered) = Journal::open(settings(dir.path())).await.unwrap();
    assert!(recovered.is_empty());
    assert_eq!(append_all(&journal, &[b"e"]).await, [5]);
}

#[tokio::test]
async fn settled_records_come_back_only_until_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(settings(dir.path())).await.unwrap();
    append_all(&journal, &[b"1", b"2", b"3", b"4", b"5"]).await;
    journal.settle(4);
    journal.settle(2);
    journal.checkpoint().await.unwrap();
    journal.settle(1); // settled, then a crash before the next checkpoint
    drop(journal);

    let (journal, recovered) = Journal::open(settings(dir.path())).await.unwrap();
    // 1 comes back (at least once); 2 and 4 do not.
    assert_eq!(seqs(&recovered), [1, 3, 5]);
    assert_eq!(recovered[1].payload, Bytes::from_static(b"3"));
    assert_eq!(journal.stats().unsettled, 3);
}

/// Whether the checkpoint file in `dir` is still the one `held` links to: a checkpoint written
/// anew is a new file renamed over it (the link keeps the old one's inode from being reused).
fn same_checkpoint(dir: &Path, held: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(dir.join("checkpoint")).unwrap().ino() == fs::metadata(held).unwrap().ino()
}

#[tokio::test]
async fn an_unchanged_checkpoint_is_not_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let links = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(settings(dir.path())).await.unwrap();
    append_all(&journal, &[b"1", b"2", b"3"]).await;
    journal.settle(1);
    journal.checkpoint().await.unwrap();
    let first = links.path().join("first");
    fs::hard_link(dir.path().join("checkpoint"), &first).unwrap();

    // Nothing settled or appended since: no new file (and no fsync).
    journal.checkpoint().await.unwrap();
    assert!(same_checkpoint(dir.path(), &first));
    journal.checkpoint().await.unwrap();
    assert!(same_checkpoint(dir.path(), &first));

    // A settlement is news: written.
    journal.settle(3);
    journal.checkpoint().await.unwrap();
    assert!(!same_checkpoint(dir.path(), &first));
    let second = links.path().join("second");
    fs::hard_link(dir.path().join("checkpoint"), &second).unwrap();
    // So is an append.
    append_all(&journal, &[b"4"]).await;
    journal.checkpoint().await.unwrap();
    assert!(!same_checkpoint(dir.path(), &second));
    drop(journal);

    // What a crash finds: every settlement checkpointed.
    let (_, recovered) = Journal::open(settings(dir.path())).await.unwrap();
    assert_eq!(seqs(&recovered), [2, 4]);
}

#[tokio::test]
async fn segments_roll_at_segment_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(two_per_segment(dir.path(), 10))
        .await
        .unwrap();
    append_all(&journal, &[TEN; 5]).await;
    assert_eq!(
        file_names(dir.path()),
        [
            "00000000000000000001.seg",
            "00000000000000000003.seg",
            "00000000000000000005.seg"
        ]
    );
    let stats = journal.stats();
    assert_eq!((stats.segments, stats.bytes), (3, 5 * (HEADER + 10)));

    // A record larger than a segment gets one of its own.
    let big = journal.append(Bytes::from(vec![7; 500])).await.unwrap();
    assert_eq!(big, 6);
    assert_eq!(segment_files(dir.path()).len(), 4);
    journal.close().await.unwrap();

    let (_journal, recovered) = Journal::open(two_per_segment(dir.path(), 10))
        .await
        .unwrap();
    assert_eq!(seqs(&recovered), [1, 2, 3, 4, 5, 6]);
    assert_eq!(recovered[5].payload.len(), 500);
}

#[tokio::test]
async fn a_checkpoint_deletes_settled_segments_and_bytes_drop() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(two_per_segment(dir.path(), 10))
        .await
        .unwrap();
    append_all(&journal, &[TEN; 6]).await;
    assert_eq!(journal.stats().segments, 3);

    // Out of order, and 3 still out: only the first segment is wholly settled.
    for seq in [2, 4, 1] {
        journal.settle(seq);
    }
    journal.checkpoint().await.unwrap();
    assert_eq!(
        file_names(dir.path()),
        ["00000000000000000003.seg", "00000000000000000005.seg"]
    );
    let stats = journal.stats();
    assert_eq!((stats.segments, stats.bytes), (2, 4 * (HEADER + 10)));

    // Settling 3 frees the second segment; the last one, being written, stays.
    journal.settle(3);
    journal.settle(5);
    journal.settle(6);
    journal.checkpoint().await.unwrap();
    assert_eq!(file_names(dir.path()), ["00000000000000000005.seg"]);
    let stats = journal.stats();
    assert_eq!(
        (stats.segments, stats.bytes, stats.unsettled),
        (1, 2 * (HEADER + 10), 0)
    );
    journal.close().await.unwrap();

    let (journal, recovered) = Journal::open(two_per_segment(dir.path(), 10))
        .await
        .unwrap();
    assert!(recovered.is_empty());
    assert_eq!(append_all(&journal, &[b"next"]).await, [7]);
}

#[tokio::test]
async fn appends_past_max_bytes_fail_full_until_a_checkpoint_frees_space() {
    let dir = tempfile::tempdir().unwrap();
    let record = HEADER + 10;
    let limited = JournalSettings {
        max_bytes: 4 * record,
        ..two_per_segment(dir.path(), 10)
    };
    let (journal, _) = Journal::open(limited.clone()).await.unwrap();
    append_all(&journal, &[TEN; 4]).await;
    match journal.append(Bytes::from_static(TEN)).await {
        Err(JournalError::Full { limit }) => assert_eq!(limit, 4 * record),
        other => panic!("expected Full, got {other:?}"),
    }
    // Not even an empty record fits now.
    assert_eq!(journal.stats().bytes, 4 * record);
    assert!(matches!(
        journal.append(Bytes::new()).await,
        Err(JournalError::Full { .. })
    ));

    journal.settle(1);
    journal.settle(2);
    journal.checkpoint().await.unwrap();
    assert_eq!(journal.stats().bytes, 2 * record);
    // The failed appends used no numbers.
    assert_eq!(append_all(&journal, &[b"0123456789"]).await, [5]);
    drop(journal);

    let (_journal, recovered) = Journal::open(limited).await.unwrap();
    assert_eq!(seqs(&recovered), [3, 4, 5]);
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_at_open_and_appending_resumes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(settings(dir.path())).await.unwrap();
    append_all(&journal, &[b"one", b"two"]).await;
    drop(journal);

    // A crash in the middle of writing record 3: its first 30 bytes reached the file.
    let file = segment_files(dir.path()).remove(0);
    let good_len = fs::metadata(&file).unwrap().len();
    let mut torn = Vec::new();
    torn.extend_from_slice(&60u32.to_le_bytes());
    torn.extend_from_slice(&[0xab; 4]);
    torn.extend_from_slice(&3u64.to_le_bytes());
    torn.extend_from_slice(&[0x11; 14]);
    OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap()
        .write_all(&torn)
        .unwrap();

    let (journal, recovered) = Journal::open(settings(dir.path())).await.unwrap();
    assert_eq!(seqs(&recovered), [1, 2]);
    assert_eq!(fs::metadata(&file).unwrap().len(), good_len);
    assert_eq!(append_all(&journal, &[b"three"]).await, [3]);
    journal.close().await.unwrap();

    let (_journal, recovered) = Journal::open(settings(dir.path())).await.unwrap();
    assert_eq!(seqs(&recovered), [1, 2, 3]);
    assert_eq!(recovered[2].payload, Bytes::from_static(b"three"));
}

#[tokio::test]
async fn damage_before_the_end_is_an_error_naming_the_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(settings(dir.path())).await.unwrap();
    append_all(&journal, &[b"one", b"two", b"three"]).await;
    journal.close().await.unwrap();

    let file = segment_files(dir.path()).remove(0);
    let mut bytes = fs::read(&file).unwrap();
    let second = (HEADER + 3) as usize;
    bytes[second + 25] ^= 0x04; // a bit of record 2's payload
    fs::write(&file, &bytes).unwrap();

    match Journal::open(settings(dir.path())).await {
        Err(JournalError::Corrupt {
            path,
            offset,
            reason,
        }) => {
            assert_eq!(path, file);
            assert_eq!(offset, second as u64);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let message = Journal::open(settings(dir.path()))
        .await
        .unwrap_err()
        .to_string();
    assert!(message.contains("00000000000000000001.seg"), "{message}");
}

#[tokio::test]
async fn a_corrupt_checkpoint_means_everything_is_delivered_again() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(settings(dir.path())).await.unwrap();
    append_all(&journal, &[b"a", b"b", b"c"]).await;
    journal.settle(1);
    journal.settle(2);
    journal.checkpoint().await.unwrap();
    journal.close().await.unwrap();

    let checkpoint = dir.path().join("checkpoint");
    let mut bytes = fs::read(&checkpoint).unwrap();
    bytes[10] ^= 0xff;
    fs::write(&checkpoint, bytes).unwrap();

    let (_journal, recovered) = Journal::open(settings(dir.path())).await.unwrap();
    assert_eq!(seqs(&recovered), [1, 2, 3]);
}

#[tokio::test]
async fn stats_track_the_oldest_unsettled_append() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(settings(dir.path())).await.unwrap();
    assert_eq!(journal.stats().oldest_unsettled, None);

    let before = SystemTime::now() - Duration::from_micros(1);
    journal.append(Bytes::from_static(b"first")).await.unwrap();
    let between = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    journal.append(Bytes::from_static(b"second")).await.unwrap();

    let stats = journal.stats();
    assert_eq!(stats.unsettled, 2);
    let oldest = stats.oldest_unsettled.unwrap();
    assert!(before <= oldest && oldest <= between, "{oldest:?}");

    journal.settle(1);
    let second = journal.stats().oldest_unsettled.unwrap();
    assert!(second > between);
    drop(journal);

    // The time is kept in the record: the same after a restart.
    let (journal, recovered) = Journal::open(settings(dir.path())).await.unwrap();
    assert_eq!(recovered[0].appended_at, oldest);
    assert_eq!(recovered[1].appended_at, second);
    assert_eq!(journal.stats().oldest_unsettled, Some(oldest));
}

#[tokio::test]
async fn close_writes_what_was_submitted_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(settings(dir.path())).await.unwrap();
    let other = journal.clone();
    let mut submitted: Vec<_> = (0..20u8)
        .map(|i| Box::pin(journal.append(Bytes::from(vec![i; 8]))))
        .collect();
    for append in &mut submitted {
        // One poll submits the append (the queue has room); it then waits for its answer.
        let first = poll_fn(|cx| Poll::Ready(append.as_mut().poll(cx))).await;
        assert!(first.is_pending());
    }
    // The close is queued behind the twenty appends: they are written, then the writer stops.
    journal.clone().close().await.unwrap();
    for append in submitted {
        append.await.unwrap();
    }
    assert!(matches!(
        other.append(Bytes::from_static(b"late")).await,
        Err(JournalError::Closed)
    ));
    other.clone().close().await.unwrap(); // closing twice is fine
                                          // Checkpointing after close still works (the owner's shutdown order is free).
    other.checkpoint().await.unwrap();
    drop(other);

    let (_journal, recovered) = Journal::open(settings(dir.path())).await.unwrap();
    assert_eq!(recovered.len(), 20);
}

#[tokio::test]
async fn fsync_mode_round_trips_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let synced = JournalSettings {
        fsync: true,
        ..two_per_segment(dir.path(), 4)
    };
    let (journal, _) = Journal::open(synced.clone()).await.unwrap();
    append_all(&journal, &[b"aaaa", b"bbbb", b"cccc"]).await;
    journal.settle(1);
    journal.checkpoint().await.unwrap();
    drop(journal);

    let (_journal, recovered) = Journal::open(synced).await.unwrap();
    assert_eq!(seqs(&recovered), [2, 3]);
    assert_eq!(recovered[1].payload, Bytes::from_static(b"cccc"));
}
