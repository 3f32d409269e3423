//! The gap log: writes answered without a copy (not mirrored), kept on disk until the control
//! store has taken their records.
//!
//! A write the mirror cannot copy (its body is over the limit, or the journal is full under
//! the `record` policy) still reaches the authoritative side; the record of that gap must then
//! survive a crash as surely as a copy would. [`GapLog::record`] writes it (no body: key,
//! method, path, request id, reason, times) to a small journal of its own, in the `gaps`
//! directory of the mirror journal, before the client is answered; a shipper reads
//! [`GapLog::unshipped`] records, puts them in the control store and marks them
//! [`GapLog::shipped`]; [`GapLog::checkpoint`] then lets their segments go. A record shipped
//! but not yet checkpointed comes back after a crash: the store side must take it once only.
//!
//! It is a [`Journal`] underneath (the same records, checksums, group commit, checkpoints and
//! recovery), so its guarantees are the journal's.

use std::path::{Path, PathBuf};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{Journal, JournalError, JournalSettings, JournalStats, Reservation};

/// The format's version, first byte of every gap record.
const VERSION: u8 = 1;

/// A write that reached the authoritative side only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The client request id.
    pub request_id: String,
    /// The side that did not get the write (`old` or `new`).
    pub target: String,
    /// HTTP method (or the front end's equivalent).
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// End-to-end request headers as the front end encodes them (no body is ever kept).
    pub headers: Vec<u8>,
    /// The key that orders writes.
    pub ordering_key: String,
    /// Why it was not mirrored (`journal_full`, `body_too_large`, …).
    pub reason: String,
    /// What was wrong, for a person.
    pub error: String,
    /// When the authoritative side accepted the write, Unix milliseconds.
    pub accepted_at_ms: i64,
    /// The accepting process's sequence number for writes in the same millisecond.
    pub accepted_seq: i64,
}

/// Why a gap record could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable gap record: {0}")]
pub struct GapError(&'static str);

impl Gap {
    /// The record's bytes.
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let fields = self.fields();
        let mut out =
            BytesMut::with_capacity(17 + fields.iter().map(|field| 4 + field.len()).sum::<usize>());
        out.put_u8(VERSION);
        out.put_i64(self.accepted_at_ms);
        out.put_i64(self.accepted_seq);
        for field in fields {
            out.put_u32(u32::try_from(field.len()).unwrap_or(u32::MAX));
            out.put_slice(field);
        }
        out.freeze()
    }

    /// The length of [`Gap::encode`]'s bytes (the times do not change it).
    #[must_use]
    pub fn encoded_len(&self) -> u64 {
        let fields: usize = self.fields().iter().map(|field| 4 + field.len()).sum();
        u64::try_from(17 + fields).unwrap_or(u64::MAX)
    }

    /// Reads a record back.
    ///
    /// # Errors
    /// When it is truncated, of another version, or not UTF-8 where text is due.
    pub fn decode(mut bytes: Bytes) -> Result<Gap, GapError> {
        if bytes.remaining() < 17 {
            return Err(GapError("too short"));
        }
        if bytes.get_u8() != VERSION {
            return Err(GapError("unknown version"));
        }
        let accepted_at_ms = bytes.get_i64();
        let accepted_seq = bytes.get_i64();
        let mut field = || -> Result<Bytes, GapError> {
            if bytes.remaining() < 4 {
                return Err(GapError("truncated"));
            }
            let length = usize::try_from(bytes.get_u32()).map_err(|_| GapError("too long"))?;
            if bytes.remaining() < length {
                return Err(GapError("truncated"));
            }
            Ok(bytes.split_to(length))
        };
        let mut text = || -> Result<String, GapError> {
            String::from_utf8(field()?.to_vec()).map_err(|_| GapError("not UTF-8"))
        };
        let (request_id, target, method, uri) = (text()?, text()?, text()?, text()?);
        let (ordering_key, reason, error) = (text()?, text()?, text()?);
        let headers = field()?.to_vec();
        Ok(Gap {
            request_id,
            target,
            method,
            uri,
            headers,
            ordering_key,
            reason,
            error,
            accepted_at_ms,
            accepted_seq,
        })
    }

    fn fields(&self) -> [&[u8]; 8] {
        [
            self.request_id.as_bytes(),
            self.target.as_bytes(),
            self.method.as_bytes(),
            self.uri.as_bytes(),
            self.ordering_key.as_bytes(),
            self.reason.as_bytes(),
            self.error.as_bytes(),
            &self.headers,
        ]
    }
}

/// A gap record read back for shipping: its seq, and the gap (or why it cannot be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnshippedGap {
    /// What [`GapLog::shipped`] takes once the store has it.
    pub seq: u64,
    /// The record.
    pub gap: Result<Gap, GapError>,
}

/// The gap log of one journal directory. Clones share it.
#[derive(Debug, Clone)]
pub struct GapLog {
    journal: Journal,
}

impl GapLog {
    /// The directory, inside the mirror journal's, that holds the gap log.
    pub const DIR_NAME: &'static str = "gaps";
    /// The most bytes the gap log takes (about 200,000 records of a few hundred bytes);
    /// [`GapLog::reserve`] says no past it.
    pub const MAX_BYTES: u64 = 64 << 20;
    /// Its segments are small: they are deleted once everything in them is shipped.
    const SEGMENT_BYTES: u64 = 1 << 20;

    /// Where the gap log of the mirror journal in `journal_dir` lives.
    #[must_use]
    pub fn dir(journal_dir: &Path) -> PathBuf {
        journal_dir.join(Self::DIR_NAME)
    }

    /// Opens (or creates) the gap log of the mirror journal in `journal_dir`; records a
    /// previous run left unshipped are read by [`GapLog::unshipped`]. `fsync` as the mirror
    /// journal's.
    ///
    /// # Errors
    /// As [`Journal::open`].
    pub async fn open(journal_dir: &Path, fsync: bool) -> Result<GapLog, JournalError> {
        let (journal, _unshipped) = Journal::open(JournalSettings {
            segment_bytes: Self::SEGMENT_BYTES,
            fsync,
            max_bytes: Self::MAX_BYTES,
            ..JournalSettings::new(Self::dir(journal_dir))
        })
        .await?;
        Ok(GapLog { journal })
    }

    /// Promises room for `gap`'s record (its times may still change); `None` when the log is
    /// full. Take it before the authoritative side sees the write.
    #[must_use]
    pub fn reserve(&self, gap: &Gap) -> Option<Reservation> {
        self.journal.reserve(gap.encoded_len())
    }

    /// Writes `gap` and returns its seq once it is written to the operating system (and
    /// `fdatasync`ed with `fsync`): from then on a crash cannot lose it.
    ///
    /// # Errors
    /// As [`Journal::append`].
    pub async fn record(&self, gap: &Gap) -> Result<u64, JournalError> {
        self.journal.append(gap.encode()).await
    }

    /// Up to `max` records not shipped yet, oldest first.
    ///
    /// # Errors
    /// When the segments cannot be read.
    pub async fn unshipped(&self, max: usize) -> Result<Vec<UnshippedGap>, JournalError> {
        let records = self.journal.unsettled_after(0, max).await?;
        Ok(records
            .into_iter()
            .map(|record| UnshippedGap {
                seq: record.seq,
                gap: Gap::decode(record.payload),
            })
            .collect())
    }

    /// Marks record `seq` taken by the store (or given up as unreadable).
    pub fn shipped(&self, seq: u64) {
        self.journal.settle(seq);
    }

    /// Persists what is shipped and deletes segments holding nothing else.
    ///
    /// # Errors
    /// As [`Journal::checkpoint`].
    pub async fn checkpoint(&self) -> Result<(), JournalError> {
        self.journal.checkpoint().await
    }

    /// Records not shipped, bytes on disk, the oldest unshipped record's time.
    #[must_use]
    pub fn stats(&self) -> JournalStats {
        self.journal.stats()
    }

    /// Stops the log once what was submitted is written (call [`GapLog::checkpoint`] first).
    ///
    /// # Errors
    /// As [`Journal::close`].
    pub async fn close(&self) -> Result<(), JournalError> {
        self.journal.clone().close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gap(id: &str) -> Gap {
        Gap {
            request_id: id.to_owned(),
            target: "new".to_owned(),
            method: "PUT".to_owned(),
            uri: format!("/orders/{id}?x=1"),
            headers: b"content-type: application/json\r\n".to_vec(),
            ordering_key: format!("/orders/{id}"),
            reason: "journal_full".to_owned(),
            error: "the mirror journal is full".to_owned(),
            accepted_at_ms: 1_700_000_000_123,
            accepted_seq: 7,
        }
    }

    #[test]
    fn a_gap_reads_back_as_written_and_its_length_is_known_before() {
        let written = gap("r-1");
        let bytes = written.encode();
        assert_eq!(bytes.len() as u64, written.encoded_len());
        assert_eq!(Gap::decode(bytes).unwrap(), written);
    }

    #[test]
    fn damaged_gaps_are_errors_not_panics() {
        let whole = gap("r-2").encode();
        for cut in 0..whole.len() {
            assert!(Gap::decode(whole.slice(..cut)).is_err(), "cut at {cut}");
        }
        assert!(Gap::decode(Bytes::from_static(&[9; 20])).is_err());
    }

    #[tokio::test]
    async fn unshipped_gaps_survive_a_reopen_and_shipped_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let log = GapLog::open(dir.path(), false).await.unwrap();
        let mut seqs = Vec::new();
        for id in ["a", "b", "c"] {
            let room = log.reserve(&gap(id)).expect("room");
            seqs.push(log.record(&gap(id)).await.unwrap());
            drop(room);
        }
        log.shipped(seqs[1]);
        log.checkpoint().await.unwrap();
        // No close: the process is killed (what was written reached the OS).
        drop(log);

        let log = GapLog::open(dir.path(), false).await.unwrap();
        let left: Vec<String> = log
            .unshipped(10)
            .await
            .unwrap()
            .into_iter()
            .map(|unshipped| unshipped.gap.unwrap().request_id)
            .collect();
        assert_eq!(left, ["a", "c"]);
        assert_eq!(log.stats().unsettled, 2);
    }

    #[tokio::test]
    async fn a_full_gap_log_promises_no_room() {
        let dir = tempfile::tempdir().unwrap();
        let log = GapLog::open(dir.path(), false).await.unwrap();
        let mut big = gap("big");
        big.error = "x".repeat(usize::try_from(GapLog::MAX_BYTES).unwrap());
        assert!(log.reserve(&big).is_none());
        assert!(log.reserve(&gap("small")).is_some());
    }
}
