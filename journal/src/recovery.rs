//! Opening a journal directory after a clean stop or a crash: scan every segment, verify every
//! record, cut off a torn tail, and rebuild the unsettled set from the checkpoint.
//!
//! What counts as a torn tail: in the **last** segment only, a first bad record that is cut
//! short by the end of the file, or whose checksum fails and which ends exactly at the end of
//! the file, or from which the rest of the file is zeros (space the file system allocated but
//! never wrote before a power loss). That is what a crash in the middle of an append leaves,
//! and such an append was never acknowledged (with `fsync` off, a power loss can also tear
//! acknowledged appends that were still in the page cache). The tail is cut off with a
//! warning. Any other bad record, in any segment, is [`JournalError::Corrupt`]: skipping it
//! would silently drop copies.

use std::fs::{self, OpenOptions};
use std::path::Path;

use bytes::Bytes;

use crate::checkpoint::{self, Checkpoint, Loaded};
use crate::record::{self, DecodeError, DecodedRecord};
use crate::segment::{self, ActiveSegment};
use crate::state::{SegmentMeta, State};
use crate::{JournalError, Record};

/// What opening a journal directory found.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// The records not settled per the checkpoint, in seq order.
    pub(crate) records: Vec<Record>,
    /// Segments and unsettled set as found.
    pub(crate) state: State,
    /// The segment to keep appending to, if the last one can be.
    pub(crate) active: Option<ActiveSegment>,
    /// The seq the next append gets.
    pub(crate) next_seq: u64,
}

/// Recovers the journal in `dir`, creating the directory if needed.
pub(crate) fn recover(dir: &Path) -> Result<Recovered, JournalError> {
    fs::create_dir_all(dir).map_err(|e| JournalError::io(dir, e))?;
    let segments = segment::list(dir)?;
    let checkpoint = match checkpoint::load(dir)? {
        Loaded::Found(checkpoint) => checkpoint,
        Loaded::Missing => {
            if !segments.is_empty() {
                tracing::warn!(
                    dir = %dir.display(),
                    "journal checkpoint missing: every record in the segments is treated as \
                     unsettled and will be delivered again"
                );
            }
            Checkpoint::default()
        }
        Loaded::Corrupt(reason) => {
            tracing::warn!(
                dir = %dir.display(),
                %reason,
                "journal checkpoint unreadable: every record in the segments is treated as \
                 unsettled and will be delivered again"
            );
            Checkpoint::default()
        }
    };

    let mut state = State::default();
    let mut records = Vec::new();
    let count = segments.len();
    for (index, (first_seq, path)) in segments.into_iter().enumerate() {
        if first_seq == 0 {
            return Err(JournalError::corrupt(
                path,
                0,
                "segment named 0: seqs start at 1",
            ));
        }
        if let Some(previous) = state.segments.back() {
            if first_seq <= previous.last_seq {
                return Err(JournalError::corrupt(
                    path,
                    0,
                    format!(
                        "segment starts at seq {first_seq}, inside the previous segment \
                         (which ends at {})",
                        previous.last_seq
                    ),
                ));
            }
            if first_seq > previous.last_seq + 1 {
                tracing::warn!(
                    segment = %path.display(),
                    missing_from = previous.last_seq + 1,
                    missing_to = first_seq - 1,
                    "journal records missing between segments"
                );
            }
        }
        let is_last = index + 1 == count;
        let bytes = fs::read(&path).map_err(|e| JournalError::io(&path, e))?;
        let end = scan(&path, &bytes, first_seq, is_last, |record| {
            if !checkpoint.is_settled(record.seq) {
                state.unsettled.insert(record.seq, record.appended_micros);
                records.push(Record {
                    seq: record.seq,
                    appended_at: record::system_time(record.appended_micros),
                    payload: Bytes::copy_from_slice(record.payload),
                });
            }
        })?;
        if let Some(torn) = end.torn {
            cut_torn_tail(&path, end.valid_len, bytes.len() as u64, &torn)?;
        }
        state.segments.push_back(SegmentMeta {
            first_seq,
            last_seq: end.last_seq,
            bytes: end.valid_len,
        });
        state.bytes += end.valid_len;
    }

    let after_segments = state.segments.back().map_or(1, |s| s.last_seq + 1);
    let next_seq = after_segments.max(checkpoint.high + 1);
    if next_seq > after_segments {
        tracing::warn!(
            dir = %dir.display(),
            checkpoint_high = checkpoint.high,
            segments_end = after_segments - 1,
            "journal checkpoint covers records the segments no longer hold (lost in a power \
             failure without fsync?); numbering continues after the checkpoint"
        );
    }
    state.last_seq = next_seq - 1;
    let active = reopen_last_segment(dir, &mut state, next_seq)?;
    Ok(Recovered {
        records,
        state,
        active,
        next_seq,
    })
}

/// The last segment, opened for appending if the next record belongs in it. An empty last
/// segment that does not is removed (its name would not match the first record written).
fn reopen_last_segment(
    dir: &Path,
    state: &mut State,
    next_seq: u64,
) -> Result<Option<ActiveSegment>, JournalError> {
    let Some(last) = state.segments.back().copied() else {
        return Ok(None);
    };
    let path = segment::path(dir, last.first_seq);
    if last.last_seq + 1 == next_seq {
        return ActiveSegment::open(path, last.first_seq, last.bytes).map(Some);
    }
    if last.bytes == 0 {
        fs::remove_file(&path).map_err(|e| JournalError::io(&path, e))?;
        state.segments.pop_back();
    }
    Ok(None)
}

/// Where a segment's valid records end.
struct ScanEnd {
    /// Bytes of whole, valid records from the start of the file.
    valid_len: u64,
    /// The seq of the last valid record (`first_seq - 1` if none).
    last_seq: u64,
    /// Why the bytes after `valid_len` were judged a torn tail, if there are any.
    torn: Option<DecodeError>,
}

/// Verifies the records of one segment, calling `on_record` for each valid one.
fn scan(
    path: &Path,
    bytes: &[u8],
    first_seq: u64,
    is_last: bool,
    mut on_record: impl FnMut(&DecodedRecord<'_>),
) -> Result<ScanEnd, JournalError> {
    let mut offset = 0;
    let mut expected = first_seq;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        match record::decode(rest) {
            Ok(record) if record.seq == expected => {
                on_record(&record);
                offset += record.encoded_len;
                expected += 1;
            }
            Ok(record) => {
                return Err(JournalError::corrupt(
                    path,
                    offset as u64,
                    format!("record has seq {}, expected {expected}", record.seq),
                ));
            }
            Err(error) if is_last && is_torn_tail(rest, &error) => {
                return Ok(ScanEnd {
                    valid_len: offset as u64,
                    last_seq: expected - 1,
                    torn: Some(error),
                });
            }
            Err(error) => {
                return Err(JournalError::corrupt(
                    path,
                    offset as u64,
                    error.to_string(),
                ));
            }
        }
    }
    Ok(ScanEnd {
        valid_len: offset as u64,
        last_seq: expected - 1,
        torn: None,
    })
}

/// Whether a bad record at the start of `rest`, the remainder of the last segment, is what an
/// interrupted append leaves (see the module docs).
fn is_torn_tail(rest: &[u8], error: &DecodeError) -> bool {
    let reaches_the_end = match error {
        DecodeError::ShortPrefix { .. } | DecodeError::ShortBody { .. } => true,
        DecodeError::BadChecksum { encoded_len, .. } => *encoded_len == rest.len(),
        DecodeError::BadLength { .. } => false,
    };
    reaches_the_end || rest.iter().all(|&b| b == 0)
}

/// Cuts the torn tail off the last segment, durably, before anything is appended after it.
fn cut_torn_tail(
    path: &Path,
    valid_len: u64,
    file_len: u64,
    why: &DecodeError,
) -> Result<(), JournalError> {
    tracing::warn!(
        segment = %path.display(),
        offset = valid_len,
        bytes = file_len - valid_len,
        reason = %why,
        "journal: cutting off a record torn by a crash during an append"
    );
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| JournalError::io(path, e))?;
    file.set_len(valid_len)
        .and_then(|()| file.sync_all())
        .map_err(|e| JournalError::io(path, e))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn encode_records(first_seq: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (seq, payload) in (first_seq..).zip(payloads) {
            record::encode_into(&mut buf, seq, 1_000 + seq as i64, payload);
        }
        buf
    }

    fn write_segment(dir: &Path, first_seq: u64, bytes: &[u8]) -> PathBuf {
        let path = segment::path(dir, first_seq);
        fs::write(&path, bytes).unwrap();
        path
    }

    fn seqs(recovered: &Recovered) -> Vec<u64> {
        recovered.records.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn an_empty_directory_is_created_and_starts_at_one() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("journal");
        let recovered = recover(&dir).unwrap();
        assert!(dir.is_dir());
        assert!(recovered.records.is_empty() && recovered.active.is_none());
        assert_eq!(recovered.next_seq, 1);
    }

    #[test]
    fn records_come_back_in_order_with_their_payloads_and_times() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, &encode_records(1, &[b"a", b"bb"]));
        write_segment(dir.path(), 3, &encode_records(3, &[b"", b"dddd"]));
        let recovered = recover(dir.path()).unwrap();
        assert_eq!(seqs(&recovered), [1, 2, 3, 4]);
        assert_eq!(recovered.records[3].payload, Bytes::from_static(b"dddd"));
        assert_eq!(recovered.records[1].appended_at, record::system_time(1_002));
        assert_eq!(recovered.next_seq, 5);
        assert_eq!(
            recovered.active.as_ref().map(ActiveSegment::first_seq),
            Some(3)
        );
        assert_eq!(recovered.state.unsettled.len(), 4);
    }

    #[test]
    fn every_cut_of_the_last_record_is_a_torn_tail() {
        let whole = encode_records(1, &[b"kept", b"torn record"]);
        let first_len = record::encoded_len(4) as usize;
        for cut in first_len..whole.len() {
            let dir = tempfile::tempdir().unwrap();
            let path = write_segment(dir.path(), 1, &whole[..cut]);
            let recovered = recover(dir.path()).unwrap();
            assert_eq!(seqs(&recovered), [1], "cut at {cut}");
            assert_eq!(fs::metadata(&path).unwrap().len(), first_len as u64);
            assert_eq!(recovered.next_seq, 2);
        }
    }

    #[test]
    fn a_bad_checksum_at_the_end_of_the_last_segment_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = encode_records(1, &[b"kept", b"flipped"]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x80;
        write_segment(dir.path(), 1, &bytes);
        assert_eq!(seqs(&recover(dir.path()).unwrap()), [1]);
    }

    #[test]
    fn zeros_after_the_last_record_are_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = encode_records(1, &[b"kept"]);
        let kept = bytes.len() as u64;
        bytes.extend_from_slice(&[0; 4096]);
        let path = write_segment(dir.path(), 1, &bytes);
        assert_eq!(seqs(&recover(dir.path()).unwrap()), [1]);
        assert_eq!(fs::metadata(path).unwrap().len(), kept);
    }

    #[test]
    fn a_bad_record_before_good_ones_is_corruption_naming_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = encode_records(1, &[b"one", b"two", b"three"]);
        let second = record::encoded_len(3) as usize;
        bytes[second + record::HEADER_LEN] ^= 0x01;
        let path = write_segment(dir.path(), 1, &bytes);
        match recover(dir.path()) {
            Err(JournalError::Corrupt {
                path: at, offset, ..
            }) => {
                assert_eq!(at, path);
                assert_eq!(offset, second as u64);
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        // Nothing was cut off.
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn a_torn_end_of_an_older_segment_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let older = encode_records(1, &[b"one", b"two"]);
        let path = write_segment(dir.path(), 1, &older[..older.len() - 2]);
        write_segment(dir.path(), 3, &encode_records(3, &[b"three"]));
        assert!(matches!(
            recover(dir.path()),
            Err(JournalError::Corrupt { path: at, .. }) if at == path
        ));
    }

    #[test]
    fn a_record_out_of_sequence_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = encode_records(1, &[b"one"]);
        bytes.extend(encode_records(3, &[b"three"]));
        write_segment(dir.path(), 1, &bytes);
        assert!(matches!(
            recover(dir.path()),
            Err(JournalError::Corrupt { reason, .. }) if reason.contains("expected 2")
        ));
    }

    #[test]
    fn overlapping_segments_are_corruption() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, &encode_records(1, &[b"one", b"two"]));
        write_segment(dir.path(), 2, &encode_records(2, &[b"two"]));
        assert!(matches!(
            recover(dir.path()),
            Err(JournalError::Corrupt { .. })
        ));
    }

    #[test]
    fn settled_records_stay_out_and_numbering_follows_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, &encode_records(1, &[b"1", b"2", b"3", b"4"]));
        // 1 and 3 settled; the checkpoint also covers 5 and 6, which a power loss took.
        checkpoint::store(dir.path(), &Checkpoint::from_unsettled(6, [2, 4]), true).unwrap();
        let recovered = recover(dir.path()).unwrap();
        assert_eq!(seqs(&recovered), [2, 4]);
        assert_eq!(recovered.next_seq, 7);
        // The next record belongs in a new segment named 7, not after seq 4.
        assert!(recovered.active.is_none());
    }

    #[test]
    fn a_corrupt_checkpoint_falls_back_to_nothing_settled() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, &encode_records(1, &[b"1", b"2"]));
        fs::write(dir.path().join(checkpoint::FILE_NAME), b"garbage").unwrap();
        assert_eq!(seqs(&recover(dir.path()).unwrap()), [1, 2]);
    }

    #[test]
    fn an_empty_last_segment_is_reused_when_its_name_is_next() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, &encode_records(1, &[b"1"]));
        let empty = write_segment(dir.path(), 2, &[]);
        let recovered = recover(dir.path()).unwrap();
        assert_eq!(
            recovered.active.as_ref().map(ActiveSegment::first_seq),
            Some(2)
        );
        assert!(empty.exists());

        // A torn first record in a fresh segment leaves it empty, and reused too.
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, &encode_records(1, &[b"1"]));
        let torn = encode_records(2, &[b"never acknowledged"]);
        write_segment(dir.path(), 2, &torn[..5]);
        let recovered = recover(dir.path()).unwrap();
        assert_eq!(recovered.next_seq, 2);
        assert_eq!(recovered.active.as_ref().map(ActiveSegment::len), Some(0));
    }
}
