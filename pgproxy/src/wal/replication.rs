//! The streaming replication protocol inside CopyBoth: what the server sends in its CopyData
//! messages (XLogData carrying a pgoutput message, primary keepalives) and the Standby Status
//! Update tandem answers with. Pure: no I/O.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::lsn::Lsn;

/// A CopyData message from the server, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ServerCopy {
    /// `w`: a piece of the log (one pgoutput message).
    XLogData {
        /// Where its data starts in the log.
        start: Lsn,
        /// How far the server's log reaches.
        end: Lsn,
        /// The pgoutput message.
        data: Bytes,
    },
    /// `k`: the server is alive, and how far its log reaches.
    Keepalive {
        /// How far the server's log reaches.
        end: Lsn,
        /// Whether the server asks for a status update at once (else it ends the connection
        /// at `wal_sender_timeout`).
        reply: bool,
    },
}

/// XLogData's header: the type byte, data start, WAL end and send time.
const XLOG_HEADER: usize = 1 + 8 + 8 + 8;
/// A keepalive: the type byte, WAL end, send time and the reply flag.
const KEEPALIVE: usize = 1 + 8 + 8 + 1;

impl ServerCopy {
    /// Reads the body of a server's CopyData message.
    ///
    /// # Errors
    /// What is wrong with it (an unknown type, a short message).
    pub(crate) fn parse(mut body: Bytes) -> Result<ServerCopy, String> {
        match body.first() {
            Some(b'w') if body.len() >= XLOG_HEADER => {
                body.advance(1);
                let start = Lsn(body.get_u64());
                let end = Lsn(body.get_u64());
                body.advance(8);
                Ok(ServerCopy::XLogData {
                    start,
                    end,
                    data: body,
                })
            }
            Some(b'k') if body.len() == KEEPALIVE => {
                body.advance(1);
                let end = Lsn(body.get_u64());
                body.advance(8);
                Ok(ServerCopy::Keepalive {
                    end,
                    reply: body.get_u8() != 0,
                })
            }
            Some(b'w' | b'k') => Err(format!(
                "a {:?} CopyData message of {} bytes",
                char::from(body[0]),
                body.len()
            )),
            Some(other) => Err(format!(
                "a CopyData message of unknown type {:?}",
                char::from(*other)
            )),
            None => Err("an empty CopyData message".to_owned()),
        }
    }
}

/// The body of a Standby Status Update (`r`), to send as CopyData: what was received
/// (`write`), and what is applied and may be discarded by the slot (`flush` and `apply`).
pub(crate) fn status_update(write: Lsn, flush: Lsn, now: i64) -> Bytes {
    let mut body = BytesMut::with_capacity(34);
    body.put_u8(b'r');
    body.put_u64(write.0);
    body.put_u64(flush.0);
    body.put_u64(flush.0);
    body.put_i64(now);
    body.put_u8(0);
    body.freeze()
}

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 00:00 UTC).
pub(crate) const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The time now as PostgreSQL counts it: microseconds since 2000-01-01 00:00 UTC.
pub(crate) fn postgres_now() -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX)
        });
    unix - POSTGRES_EPOCH_MICROS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xlog_data_and_keepalives_parse() {
        let mut wire = BytesMut::new();
        wire.put_u8(b'w');
        wire.put_u64(10);
        wire.put_u64(20);
        wire.put_i64(30);
        wire.put_slice(b"Bpayload");
        assert_eq!(
            ServerCopy::parse(wire.freeze()),
            Ok(ServerCopy::XLogData {
                start: Lsn(10),
                end: Lsn(20),
                data: Bytes::from_static(b"Bpayload"),
            })
        );
        let mut wire = BytesMut::new();
        wire.put_u8(b'k');
        wire.put_u64(99);
        wire.put_i64(1);
        wire.put_u8(1);
        assert_eq!(
            ServerCopy::parse(wire.freeze()),
            Ok(ServerCopy::Keepalive {
                end: Lsn(99),
                reply: true
            })
        );
        for bad in [&b""[..], b"w", b"k\0\0", b"x123"] {
            assert!(ServerCopy::parse(Bytes::copy_from_slice(bad)).is_err());
        }
    }

    #[test]
    fn status_updates_confirm_the_flush_position() {
        let body = status_update(Lsn(300), Lsn(200), 5);
        assert_eq!(body.len(), 34);
        assert_eq!(body[0], b'r');
        let mut rest = body.slice(1..);
        assert_eq!(
            (
                rest.get_u64(),
                rest.get_u64(),
                rest.get_u64(),
                rest.get_i64(),
                rest.get_u8()
            ),
            (300, 200, 200, 5, 0)
        );
        // 2000-01-01 lies in the past, and not by more than a century.
        let now = postgres_now();
        assert!(now > 0 && now < 100 * 366 * 86_400 * 1_000_000);
    }
}
