//! Segment files: their names, listing them, and the one being appended to.
//!
//! A segment is a file of records back to back, named after the sequence number of its first
//! record, zero-padded to 20 digits (`00000000000000000001.seg`) so that names sort like
//! numbers. Only the last segment is ever written; the others are read at recovery and deleted
//! once every record in them is settled.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::JournalError;

/// The extension of segment files.
const EXTENSION: &str = ".seg";
/// Digits in a segment name: enough for any u64.
const DIGITS: usize = 20;

/// The file name of the segment whose first record is `first_seq`.
pub(crate) fn file_name(first_seq: u64) -> String {
    format!("{first_seq:0DIGITS$}{EXTENSION}")
}

/// The path of the segment whose first record is `first_seq`.
pub(crate) fn path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(file_name(first_seq))
}

/// The first sequence number a segment file name stands for, or `None` for any other file.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(EXTENSION)?;
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments in `dir` as `(first seq, path)`, in sequence order. Other files are ignored.
pub(crate) fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut segments = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| JournalError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| JournalError::io(dir, e))?;
        let name = entry.file_name();
        if let Some(first_seq) = name.to_str().and_then(parse_file_name) {
            segments.push((first_seq, entry.path()));
        }
    }
    segments.sort_unstable_by_key(|(first_seq, _)| *first_seq);
    Ok(segments)
}

/// Makes the directory's entries (a created, renamed or removed file) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The segment being appended to: an open file and how many bytes it holds.
#[derive(Debug)]
pub(crate) struct ActiveSegment {
    file: File,
    path: PathBuf,
    first_seq: u64,
    len: u64,
    /// Whether the directory entry of the file is known to be durable.
    dir_synced: bool,
}

impl ActiveSegment {
    /// Creates the segment for `first_seq` in `dir`; the file must not exist yet.
    pub(crate) fn create(dir: &Path, first_seq: u64) -> Result<Self, JournalError> {
        let path = path(dir, first_seq);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| JournalError::io(&path, e))?;
        Ok(Self {
            file,
            path,
            first_seq,
            len: 0,
            dir_synced: false,
        })
    }

    /// Opens an existing segment of `len` valid bytes to append after them.
    pub(crate) fn open(path: PathBuf, first_seq: u64, len: u64) -> Result<Self, JournalError> {
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| JournalError::io(&path, e))?;
        Ok(Self {
            file,
            path,
            first_seq,
            len,
            dir_synced: true,
        })
    }

    /// A segment over an already open `file` (for tests that need a file that fails).
    #[cfg(test)]
    pub(crate) fn from_file(file: File, path: PathBuf, first_seq: u64, len: u64) -> Self {
        Self {
            file,
            path,
            first_seq,
            len,
            dir_synced: true,
        }
    }

    /// The sequence number the segment is named after.
    pub(crate) fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// The bytes written so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The segment's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the segment's directory entry durable, once.
    pub(crate) fn sync_dir_entry(&mut self, dir: &Path) -> io::Result<()> {
        if !self.dir_synced {
            sync_dir(dir)?;
            self.dir_synced = true;
        }
        Ok(())
    }

    /// Writes `bytes` at the end of the segment in one `write_all`. On failure the file is cut
    /// back to its previous length, so no partial record is left behind; if even that fails,
    /// the error is fatal: the segment can no longer be trusted.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> Result<(), AppendError> {
        match self.file.write_all(bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(error) => Err(self.roll_back(self.len, error)),
        }
    }

    /// `fdatasync`: the written bytes reach the disk.
    pub(crate) fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Cuts the file back to `keep` bytes after `error`, so that bytes nobody was told are
    /// written do not stay in front of later records. Fatal if the cut itself fails.
    pub(crate) fn roll_back(&mut self, keep: u64, error: io::Error) -> AppendError {
        // The file is opened in append mode: after `set_len` the next write lands at `keep`.
        match self.file.set_len(keep) {
            Ok(()) => {
                self.len = keep;
                AppendError {
                    error,
                    fatal: false,
                }
            }
            Err(cut) => AppendError {
                error: io::Error::new(
                    error.kind(),
                    format!("{error}; cutting the partial write off failed too: {cut}"),
                ),
                fatal: true,
            },
        }
    }
}

/// A failed append or sync on the active segment.
#[derive(Debug)]
pub(crate) struct AppendError {
    /// What failed.
    pub(crate) error: io::Error,
    /// Whether the segment is left in a state that later appends must not build on.
    pub(crate) fatal: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_zero_padded_and_parse_back() {
        assert_eq!(file_name(1), "00000000000000000001.seg");
        assert_eq!(file_name(u64::MAX), "18446744073709551615.seg");
        for seq in [0, 1, 42, 1 << 40, u64::MAX] {
            assert_eq!(parse_file_name(&file_name(seq)), Some(seq));
        }
        for other in [
            "checkpoint",
            "1.seg",
            "0000000000000000000a.seg",
            "00000000000000000001.seg.tmp",
            "00000000000000000001",
            "99999999999999999999.seg",
        ] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn listing_sorts_by_sequence_and_skips_other_files() {
        let dir = tempfile::tempdir().unwrap();
        for seq in [30, 2, 100] {
            fs::write(path(dir.path(), seq), b"").unwrap();
        }
        fs::write(dir.path().join("checkpoint"), b"").unwrap();
        fs::write(dir.path().join("notes.txt"), b"").unwrap();
        let firsts: Vec<u64> = list(dir.path())
            .unwrap()
            .into_iter()
            .map(|(first, _)| first)
            .collect();
        assert_eq!(firsts, [2, 30, 100]);
    }

    #[test]
    fn appends_land_at_the_end_and_create_refuses_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut segment = ActiveSegment::create(dir.path(), 5).unwrap();
        segment.append(b"hello ").unwrap();
        segment.append(b"world").unwrap();
        segment.sync_dir_entry(dir.path()).unwrap();
        segment.sync_data().unwrap();
        assert_eq!(segment.len(), 11);
        assert_eq!(fs::read(path(dir.path(), 5)).unwrap(), b"hello world");
        assert!(ActiveSegment::create(dir.path(), 5).is_err());

        let mut reopened = ActiveSegment::open(path(dir.path(), 5), 5, 11).unwrap();
        reopened.append(b"!").unwrap();
        assert_eq!(fs::read(reopened.path()).unwrap(), b"hello world!");
    }

    #[test]
    fn roll_back_cuts_the_file_to_the_kept_length() {
        let dir = tempfile::tempdir().unwrap();
        let mut segment = ActiveSegment::create(dir.path(), 1).unwrap();
        segment.append(b"kept|lost").unwrap();
        let failure = segment.roll_back(5, io::Error::other("disk on fire"));
        assert!(!failure.fatal);
        assert_eq!(segment.len(), 5);
        segment.append(b"next").unwrap();
        assert_eq!(fs::read(segment.path()).unwrap(), b"kept|next");
    }
}
