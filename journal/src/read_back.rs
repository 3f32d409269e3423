//! Reading unsettled records back while the journal is open: what a consumer that could not
//! hold every record in memory (its queue was full, or it gave a record up for later) reads
//! again, in sequence order, from the segment files.

use std::path::Path;

use bytes::Bytes;

use crate::record::{self, system_time};
use crate::state::SegmentMeta;
use crate::{segment, JournalError, Record};

/// What to read: the unsettled seqs wanted (ascending) and the segments that hold them.
#[derive(Debug)]
pub(crate) struct Wanted {
    pub(crate) seqs: Vec<u64>,
    pub(crate) segments: Vec<SegmentMeta>,
}

/// Reads the records `wanted` names from the segment files in `dir`. A segment deleted
/// meanwhile held only records settled meanwhile: they are left out.
pub(crate) fn read(dir: &Path, wanted: &Wanted) -> Result<Vec<Record>, JournalError> {
    let mut records = Vec::with_capacity(wanted.seqs.len());
    let mut seqs = wanted.seqs.iter().copied().peekable();
    for meta in &wanted.segments {
        let path = segment::path(dir, meta.first_seq);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                while seqs.next_if(|seq| *seq <= meta.last_seq).is_some() {}
                continue;
            }
            Err(err) => return Err(JournalError::io(path, err)),
        };
        let mut offset = 0;
        while let Some(&next) = seqs.peek() {
            if next > meta.last_seq {
                break;
            }
            let rest = bytes.get(offset..).unwrap_or_default();
            let decoded = record::decode(rest)
                .map_err(|err| JournalError::corrupt(&path, offset as u64, err.to_string()))?;
            offset += decoded.encoded_len;
            if decoded.seq == next {
                records.push(Record {
                    seq: decoded.seq,
                    appended_at: system_time(decoded.appended_micros),
                    payload: Bytes::copy_from_slice(decoded.payload),
                });
                seqs.next();
            } else if decoded.seq > next {
                return Err(JournalError::corrupt(
                    &path,
                    offset as u64,
                    format!("record {next} is missing (found {})", decoded.seq),
                ));
            }
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use crate::{Journal, JournalSettings};

    fn seqs(records: &[crate::Record]) -> Vec<u64> {
        records.iter().map(|record| record.seq).collect()
    }

    #[tokio::test]
    async fn unsettled_records_are_read_back_in_order_across_segments() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let settings = JournalSettings {
            segment_bytes: 64,
            ..JournalSettings::new(dir.path())
        };
        let (journal, recovered) = Journal::open(settings).await.expect("opens");
        assert!(recovered.is_empty());
        for index in 0..8u8 {
            journal
                .append(bytes::Bytes::from(vec![index; 20]))
                .await
                .expect("appends");
        }
        assert!(journal.stats().segments > 2, "{:?}", journal.stats());
        for seq in [1, 2, 5] {
            journal.settle(seq);
        }
        let all = journal.unsettled_after(0, 100).await.expect("reads");
        assert_eq!(seqs(&all), [3, 4, 6, 7, 8]);
        assert_eq!(all[1].payload.as_ref(), [3u8; 20]);
        assert_eq!(
            seqs(&journal.unsettled_after(4, 2).await.expect("reads")),
            [6, 7]
        );
        assert!(journal
            .unsettled_after(8, 10)
            .await
            .expect("reads")
            .is_empty());
        assert_eq!(journal.last_seq(), 8);

        // Segments a checkpoint deleted held only settled records; the rest still reads.
        journal.settle(3);
        journal.settle(4);
        journal.checkpoint().await.expect("checkpoints");
        assert_eq!(
            seqs(&journal.unsettled_after(0, 100).await.expect("reads")),
            [6, 7, 8]
        );
        journal.close().await.expect("closes");
    }
}
