//! The journal's one error type: which file failed and how.

use std::io;
use std::path::PathBuf;

/// Why a journal operation failed.
#[derive(thiserror::Error, Debug)]
pub enum JournalError {
    /// Reading, writing, syncing, renaming or deleting a file failed.
    #[error("journal I/O on {}: {source}", path.display())]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// A record that is not the torn tail of the last segment is damaged (bad length, bad
    /// checksum, cut short, or out of sequence). The journal refuses to open rather than skip
    /// records it cannot read.
    #[error("journal corrupt at {} offset {offset}: {reason}", path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Where the bad record starts, in bytes from the start of the file.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The append would take the journal's segments past `max_bytes` (or the payload is
    /// larger than one record can hold, 4 GiB less the header).
    #[error("journal full: appending would exceed {limit} bytes")]
    Full {
        /// The configured `max_bytes`.
        limit: u64,
    },
    /// The journal was closed (or its writer stopped) before the operation could run.
    #[error("journal closed")]
    Closed,
    /// The shared journal's NATS server could not be reached, refused a request, or holds a
    /// stream that does not match the settings.
    #[error("journal on NATS at {server}: {what}: {reason}")]
    Nats {
        /// The server, without credentials.
        server: String,
        /// What was being done.
        what: &'static str,
        /// What the server or the client said.
        reason: String,
    },
    /// The NATS server answers, but not to JetStream requests.
    #[error("the NATS server at {server} has no JetStream (start it with -js): {reason}")]
    NoJetStream {
        /// The server, without credentials.
        server: String,
        /// What the client said.
        reason: String,
    },
}

impl JournalError {
    /// An [`JournalError::Io`] on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`JournalError::Corrupt`] at `offset` of `path`.
    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        Self::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}
