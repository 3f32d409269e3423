//! Reading unsettled records back while the journal is open: what a consumer that could not
//! hold every record in memory (its queue was full, or it gave a record up for later) reads
//! again, in sequence order, from the segment files.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use bytes::Bytes;

use crate::record::{self, system_time};
use crate::state::SegmentMeta;
use crate::{segment, JournalError, Record};

/// What to read: the unsettled seqs wanted (ascending) and the segments that hold them, each
/// with where reading may start (a record's seq and its offset).
#[derive(Debug)]
pub(crate) struct Wanted {
    pub(crate) seqs: Vec<u64>,
    pub(crate) segments: Vec<(SegmentMeta, (u64, u64))>,
}

/// Reads the records `wanted` names from the segment files in `dir`, each segment from its
/// start mark on and only as far as its last wanted record. A segment deleted meanwhile held
/// only records settled meanwhile: they are left out.
pub(crate) fn read(dir: &Path, wanted: &Wanted) -> Result<Vec<Record>, JournalError> {
    let mut records = Vec::with_capacity(wanted.seqs.len());
    let mut seqs = wanted.seqs.iter().copied().peekable();
    for (meta, (mut seq, offset)) in &wanted.segments {
        let path = segment::path(dir, meta.first_seq);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                while seqs.next_if(|seq| *seq <= meta.last_seq).is_some() {}
                continue;
            }
            Err(err) => return Err(JournalError::io(path, err)),
        };
        let mut reader = std::io::BufReader::new(file);
        reader
            .seek(SeekFrom::Start(*offset))
            .map_err(|err| JournalError::io(&path, err))?;
        let mut at = *offset;
        let mut frame = Vec::new();
        while let Some(&next) = seqs.peek() {
            if next > meta.last_seq {
                break;
            }
            frame.clear();
            frame.resize(record::PREFIX_LEN, 0);
            reader.read_exact(&mut frame).map_err(|err| {
                JournalError::corrupt(&path, at, format!("record {seq} cut short: {err}"))
            })?;
            let length = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
            frame.resize(record::PREFIX_LEN + length as usize, 0);
            reader
                .read_exact(&mut frame[record::PREFIX_LEN..])
                .map_err(|err| {
                    JournalError::corrupt(&path, at, format!("record {seq} cut short: {err}"))
                })?;
            let decoded = record::decode(&frame)
                .map_err(|err| JournalError::corrupt(&path, at, err.to_string()))?;
            if decoded.seq != seq {
                return Err(JournalError::corrupt(
                    &path,
                    at,
                    format!("record has seq {}, expected {seq}", decoded.seq),
                ));
            }
            at += decoded.encoded_len as u64;
            seq += 1;
            if decoded.seq == next {
                records.push(Record {
                    seq: decoded.seq,
                    appended_at: system_time(decoded.appended_micros),
                    payload: Bytes::copy_from_slice(decoded.payload),
                });
                seqs.next();
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

    #[tokio::test]
    async fn reading_starts_at_the_nearest_mark_and_finds_every_record() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (journal, _) = Journal::open(JournalSettings::new(dir.path()))
            .await
            .expect("opens");
        for index in 0..1_000u32 {
            journal
                .append(bytes::Bytes::from(index.to_le_bytes().to_vec()))
                .await
                .expect("appends");
        }
        for seq in (1..=900).filter(|seq| *seq != 700) {
            journal.settle(seq);
        }
        let read = journal.unsettled_after(600, 3).await.expect("reads");
        assert_eq!(seqs(&read), [700, 901, 902]);
        assert_eq!(read[0].payload.as_ref(), 699u32.to_le_bytes());
        assert_eq!(read[2].payload.as_ref(), 901u32.to_le_bytes());
        let rest = journal.unsettled_after(902, 1_000).await.expect("reads");
        assert_eq!(seqs(&rest), (903..=1_000).collect::<Vec<u64>>());
        journal.close().await.expect("closes");
    }
}
