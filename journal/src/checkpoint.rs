//! The checkpoint: which records are settled, persisted atomically in a small checksummed file.
//!
//! Settled records are described by a low watermark `W` (every seq ≤ W is settled), the
//! highest seq the checkpoint knows of `H`, and the settled seqs between them as sorted,
//! disjoint, inclusive ranges. Ranges rather than single seqs keep the file as small as the
//! unsettled set: one stuck record with a million settled after it is one range, not a
//! million entries. A seq above `H` was appended after the checkpoint and is unsettled.
//!
//! The file `checkpoint`, all integers little-endian:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `TJC1` |
//! | 4 | 4 | CRC-32 of every byte after this field |
//! | 8 | 8 | `W`, the low watermark |
//! | 16 | 8 | `H`, the highest seq covered |
//! | 24 | 4 | `n`, the number of ranges |
//! | 28 | 16 n | `n` × (first u64, last u64), settled seqs in `W+1..=H` |
//!
//! It is replaced atomically: written to `checkpoint.tmp` and renamed over `checkpoint`, so a
//! crash leaves either the old file or the new one. With the journal's `fsync` on, the
//! temporary file is fsynced before the rename and the directory after it, so that a power
//! loss cannot take a checkpoint back either; with it off, the records themselves are not
//! synced before they are acknowledged, and syncing the checkpoint would buy nothing a power
//! loss respects, while its two syncs (every second, while copies settle) delay every other
//! process's syncs on the same disk (a database's commits among them). A clean close syncs the
//! last one ([`sync`]).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use crate::segment::sync_dir;
use crate::JournalError;

/// The checkpoint's file name in the journal directory.
pub(crate) const FILE_NAME: &str = "checkpoint";
/// Where the next checkpoint is written before it is renamed into place.
pub(crate) const TEMP_FILE_NAME: &str = "checkpoint.tmp";

const MAGIC: &[u8; 4] = b"TJC1";
const FIXED_LEN: usize = 28;
const RANGE_LEN: usize = 16;

/// Which records are settled, as of some moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    /// Every seq up to and including this is settled.
    pub(crate) watermark: u64,
    /// The highest seq this checkpoint says anything about.
    pub(crate) high: u64,
    /// Settled seqs in `watermark + 1 ..= high`: sorted, disjoint, inclusive ranges.
    pub(crate) settled: Vec<(u64, u64)>,
}

impl Checkpoint {
    /// The checkpoint for a journal whose records up to `high` are settled except `unsettled`
    /// (in ascending order; seqs above `high` are ignored).
    pub(crate) fn from_unsettled(high: u64, unsettled: impl IntoIterator<Item = u64>) -> Self {
        let mut unsettled = unsettled.into_iter().take_while(|&seq| seq <= high);
        let Some(first) = unsettled.next() else {
            return Self {
                watermark: high,
                high,
                settled: Vec::new(),
            };
        };
        let mut settled = Vec::new();
        let mut previous = first;
        for seq in unsettled {
            if seq > previous + 1 {
                settled.push((previous + 1, seq - 1));
            }
            previous = seq;
        }
        if previous < high {
            settled.push((previous + 1, high));
        }
        Self {
            watermark: first - 1,
            high,
            settled,
        }
    }

    /// Whether this checkpoint records `seq` as settled.
    pub(crate) fn is_settled(&self, seq: u64) -> bool {
        if seq <= self.watermark {
            return true;
        }
        if seq > self.high {
            return false;
        }
        let after = self.settled.partition_point(|&(first, _)| first <= seq);
        after > 0 && self.settled[after - 1].1 >= seq
    }

    /// The file's bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(FIXED_LEN + RANGE_LEN * self.settled.len());
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&self.watermark.to_le_bytes());
        buf.extend_from_slice(&self.high.to_le_bytes());
        let count = u32::try_from(self.settled.len()).unwrap_or(u32::MAX);
        buf.extend_from_slice(&count.to_le_bytes());
        for &(first, last) in &self.settled {
            buf.extend_from_slice(&first.to_le_bytes());
            buf.extend_from_slice(&last.to_le_bytes());
        }
        let crc = crc32fast::hash(&buf[8..]);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    /// Reads the file's bytes back, checking the checksum and every invariant.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < FIXED_LEN {
            return Err(format!("{} bytes, shorter than the header", bytes.len()));
        }
        if &bytes[0..4] != MAGIC {
            return Err("not a checkpoint file (bad magic)".into());
        }
        let stored = u32::from_le_bytes(array(&bytes[4..8]));
        let computed = crc32fast::hash(&bytes[8..]);
        if stored != computed {
            return Err(format!(
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ));
        }
        let watermark = u64::from_le_bytes(array(&bytes[8..16]));
        let high = u64::from_le_bytes(array(&bytes[16..24]));
        let count = u32::from_le_bytes(array(&bytes[24..28])) as usize;
        let ranges = &bytes[FIXED_LEN..];
        if Some(ranges.len()) != count.checked_mul(RANGE_LEN) {
            return Err(format!(
                "{count} ranges announced, {} bytes follow",
                ranges.len()
            ));
        }
        if watermark > high {
            return Err(format!("watermark {watermark} above high {high}"));
        }
        let mut settled = Vec::with_capacity(count);
        let mut floor = watermark;
        for range in ranges.chunks_exact(RANGE_LEN) {
            let first = u64::from_le_bytes(array(&range[..8]));
            let last = u64::from_le_bytes(array(&range[8..]));
            if first <= floor || last < first || last > high {
                return Err(format!(
                    "range {first}..={last} out of order or outside {watermark}..={high}"
                ));
            }
            settled.push((first, last));
            floor = last;
        }
        Ok(Self {
            watermark,
            high,
            settled,
        })
    }
}

/// Copies an 8- or 4-byte slice into an array (the callers slice exact lengths).
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(bytes);
    out
}

/// What was found in the journal directory.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Loaded {
    /// A valid checkpoint.
    Found(Checkpoint),
    /// No checkpoint file.
    Missing,
    /// A checkpoint file that does not decode, and why.
    Corrupt(String),
}

/// Reads the checkpoint in `dir`. A missing or damaged file is reported, not an error: the
/// caller falls back to "nothing settled". Other I/O failures are errors.
pub(crate) fn load(dir: &Path) -> Result<Loaded, JournalError> {
    let path = dir.join(FILE_NAME);
    match fs::read(&path) {
        Ok(bytes) => Ok(match Checkpoint::decode(&bytes) {
            Ok(checkpoint) => Loaded::Found(checkpoint),
            Err(reason) => Loaded::Corrupt(reason),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Loaded::Missing),
        Err(e) => Err(JournalError::io(path, e)),
    }
}

/// Replaces the checkpoint in `dir` atomically; with `durable`, also so that it survives a
/// power loss (the file synced before the rename, the directory after it).
pub(crate) fn store(
    dir: &Path,
    checkpoint: &Checkpoint,
    durable: bool,
) -> Result<(), JournalError> {
    let temp = dir.join(TEMP_FILE_NAME);
    let write = || -> io::Result<()> {
        let mut file = File::create(&temp)?;
        file.write_all(&checkpoint.encode())?;
        if durable {
            file.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| JournalError::io(&temp, e))?;
    let path = dir.join(FILE_NAME);
    fs::rename(&temp, &path).map_err(|e| JournalError::io(&path, e))?;
    if durable {
        sync_dir(dir).map_err(|e| JournalError::io(dir, e))?;
    }
    Ok(())
}

/// Makes the checkpoint in `dir` (if any) survive a power loss: the file, then the directory
/// that names it.
pub(crate) fn sync(dir: &Path) -> Result<(), JournalError> {
    let path = dir.join(FILE_NAME);
    match File::open(&path) {
        Ok(file) => file.sync_all().map_err(|e| JournalError::io(&path, e))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(JournalError::io(&path, e)),
    }
    sync_dir(dir).map_err(|e| JournalError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint::from_unsettled(20, [4, 5, 9, 15])
    }

    #[test]
    fn built_from_the_unsettled_set() {
        assert_eq!(
            sample(),
            Checkpoint {
                watermark: 3,
                high: 20,
                settled: vec![(6, 8), (10, 14), (16, 20)],
            }
        );
        assert_eq!(
            Checkpoint::from_unsettled(7, []),
            Checkpoint {
                watermark: 7,
                high: 7,
                settled: vec![],
            }
        );
        assert_eq!(
            Checkpoint::from_unsettled(3, [1, 2, 3, 9]),
            Checkpoint {
                watermark: 0,
                high: 3,
                settled: vec![],
            }
        );
        assert_eq!(Checkpoint::from_unsettled(0, []), Checkpoint::default());
    }

    #[test]
    fn settled_exactly_where_the_unsettled_set_is_not() {
        let unsettled = [4, 5, 9, 15];
        let checkpoint = sample();
        for seq in 0..30 {
            let expected = seq <= 20 && !unsettled.contains(&seq);
            assert_eq!(checkpoint.is_settled(seq), expected, "seq {seq}");
        }
    }

    #[test]
    fn round_trips_through_bytes() {
        for checkpoint in [Checkpoint::default(), sample()] {
            assert_eq!(Checkpoint::decode(&checkpoint.encode()), Ok(checkpoint));
        }
    }

    #[test]
    fn every_bit_flip_and_every_cut_is_rejected() {
        let bytes = sample().encode();
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(Checkpoint::decode(&damaged).is_err(), "bit {bit}");
        }
        for cut in 0..bytes.len() {
            assert!(Checkpoint::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn ranges_out_of_order_are_rejected_even_with_a_good_checksum() {
        let bad = Checkpoint {
            watermark: 3,
            high: 20,
            settled: vec![(10, 14), (6, 8)],
        };
        assert!(Checkpoint::decode(&bad.encode()).is_err());
        let overlapping_watermark = Checkpoint {
            watermark: 6,
            high: 20,
            settled: vec![(6, 8)],
        };
        assert!(Checkpoint::decode(&overlapping_watermark.encode()).is_err());
    }

    #[test]
    fn stored_atomically_and_loaded_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), Loaded::Missing);

        store(dir.path(), &Checkpoint::from_unsettled(5, [2]), true).unwrap();
        store(dir.path(), &sample(), true).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Loaded::Found(sample()));
        assert!(!dir.path().join(TEMP_FILE_NAME).exists());
    }

    #[test]
    fn stored_without_syncing_it_is_replaced_the_same_way_and_synced_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        sync(dir.path()).unwrap();
        store(dir.path(), &Checkpoint::from_unsettled(5, [2]), false).unwrap();
        store(dir.path(), &sample(), false).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Loaded::Found(sample()));
        assert!(!dir.path().join(TEMP_FILE_NAME).exists());
        sync(dir.path()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Loaded::Found(sample()));
    }

    #[test]
    fn a_torn_temp_file_leaves_the_last_checkpoint_in_force() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &sample(), true).unwrap();
        // A crash while writing the next one leaves a partial temp file behind.
        fs::write(dir.path().join(TEMP_FILE_NAME), &sample().encode()[..10]).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Loaded::Found(sample()));
        // The next store overwrites it.
        store(dir.path(), &Checkpoint::default(), true).unwrap();
        assert_eq!(
            load(dir.path()).unwrap(),
            Loaded::Found(Checkpoint::default())
        );
    }

    #[test]
    fn a_damaged_file_is_reported_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &sample(), true).unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        bytes[12] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(load(dir.path()).unwrap(), Loaded::Corrupt(_)));
    }
}
