//! PostgreSQL protocol v3 framing: the untyped startup packets a client opens with, typed
//! messages (`tag`, length, body), and the few messages tandem writes itself.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::PgProxyError;

/// Protocol version 3.0.
pub const PROTOCOL_V3: i32 = 196_608;
/// The code of an `SSLRequest`.
const SSL_REQUEST: i32 = 80_877_103;
/// The code of a `GSSENCRequest`.
const GSSENC_REQUEST: i32 = 80_877_104;
/// The code of a `CancelRequest`.
const CANCEL_REQUEST: i32 = 80_877_102;

/// The largest startup packet accepted (the server's own limit is 10,000 bytes).
const MAX_STARTUP: usize = 10_000;
/// The largest message accepted (1 GiB, as the server).
const MAX_MESSAGE: usize = 1 << 30;

/// What a client opens a connection with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// A session: protocol version and parameters (`user`, `database`, `application_name`, …).
    Session(Vec<(String, String)>),
    /// A request for TLS, before the real startup.
    Ssl,
    /// A request for GSSAPI encryption, before the real startup.
    GssEnc,
    /// A request to cancel the query of another session.
    Cancel {
        /// The process id tandem gave that session.
        process_id: i32,
        /// Its secret key.
        secret_key: i32,
    },
}

/// Reads a client's startup packet.
///
/// # Errors
/// [`PgProxyError::Protocol`] for a malformed packet, or an I/O error.
pub async fn read_startup<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Startup, PgProxyError> {
    let length = usize::try_from(reader.read_i32().await?)
        .ok()
        .filter(|length| (8..=MAX_STARTUP).contains(length))
        .ok_or_else(|| PgProxyError::Protocol("invalid startup packet length".to_owned()))?;
    let mut body = vec![0; length - 4];
    reader.read_exact(&mut body).await?;
    let mut body = &body[..];
    let code = body.get_i32();
    match code {
        SSL_REQUEST => Ok(Startup::Ssl),
        GSSENC_REQUEST => Ok(Startup::GssEnc),
        CANCEL_REQUEST if body.len() == 8 => Ok(Startup::Cancel {
            process_id: body.get_i32(),
            secret_key: body.get_i32(),
        }),
        PROTOCOL_V3 => {
            let mut parameters = Vec::new();
            let mut fields = body
                .split(|byte| *byte == 0)
                .map(|field| String::from_utf8_lossy(field).into_owned());
            while let Some(name) = fields.next().filter(|name| !name.is_empty()) {
                let value = fields.next().ok_or_else(|| {
                    PgProxyError::Protocol(format!("startup parameter {name:?} has no value"))
                })?;
                parameters.push((name, value));
            }
            Ok(Startup::Session(parameters))
        }
        other => Err(PgProxyError::Protocol(format!(
            "unsupported protocol version {}.{}",
            other >> 16,
            other & 0xFFFF
        ))),
    }
}

/// A typed message: its tag and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The type byte (`Q`, `P`, `R`, `Z`, …).
    pub tag: u8,
    /// The body (after the length).
    pub body: Bytes,
}

/// Reads one typed message.
///
/// # Errors
/// [`PgProxyError::Protocol`] for an impossible length, or an I/O error (the peer closing
/// included).
pub async fn read_message<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Message, PgProxyError> {
    read_message_within(reader, MAX_MESSAGE).await
}

/// Reads one typed message of at most `max` bytes.
///
/// # Errors
/// As [`read_message`], and for a longer message.
pub async fn read_message_within<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Message, PgProxyError> {
    let tag = reader.read_u8().await?;
    let length = message_length(tag, reader.read_i32().await?, max)?;
    let mut body = BytesMut::zeroed(length - 4);
    reader.read_exact(&mut body).await?;
    Ok(Message {
        tag,
        body: body.freeze(),
    })
}

/// A message's length field checked: at least 4 (itself), at most `max`.
fn message_length(tag: u8, length: i32, max: usize) -> Result<usize, PgProxyError> {
    usize::try_from(length)
        .ok()
        .filter(|length| (4..=max).contains(length))
        .ok_or_else(|| {
            PgProxyError::Protocol(format!("invalid length of a {:?} message", tag as char))
        })
}

/// Frames typed messages for `tokio_util::codec` (a type byte, a length that counts itself,
/// the body), as [`Message`]s whose bodies share the read buffer. A length outside 4..=`max`
/// is a protocol error; the buffer grows with what arrives, never ahead of it.
#[derive(Debug, Clone, Copy)]
pub struct PgCodec {
    max: usize,
}

impl PgCodec {
    /// A codec for messages of at most `max` bytes.
    #[must_use]
    pub fn new(max: usize) -> PgCodec {
        PgCodec { max }
    }
}

impl Default for PgCodec {
    /// Messages up to the server's own limit (1 GiB).
    fn default() -> PgCodec {
        PgCodec::new(MAX_MESSAGE)
    }
}

impl tokio_util::codec::Decoder for PgCodec {
    type Item = Message;
    type Error = PgProxyError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, PgProxyError> {
        let Some(header) = src.get(..5) else {
            return Ok(None);
        };
        let tag = header[0];
        let length = message_length(
            tag,
            i32::from_be_bytes([header[1], header[2], header[3], header[4]]),
            self.max,
        )?;
        if src.len() < 1 + length {
            return Ok(None);
        }
        let mut frame = src.split_to(1 + length);
        frame.advance(5);
        Ok(Some(Message {
            tag,
            body: frame.freeze(),
        }))
    }
}

/// Writes one typed message.
///
/// # Errors
/// An I/O error.
pub async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    tag: u8,
    body: &[u8],
) -> Result<(), PgProxyError> {
    let mut frame = BytesMut::with_capacity(body.len() + 5);
    put_message(&mut frame, tag, body)?;
    writer.write_all(&frame).await?;
    Ok(())
}

/// Appends one typed message to `buffer`.
///
/// # Errors
/// [`PgProxyError::Protocol`] when the body is too large for a message.
pub fn put_message(buffer: &mut BytesMut, tag: u8, body: &[u8]) -> Result<(), PgProxyError> {
    buffer.put_u8(tag);
    buffer.put_i32(
        i32::try_from(body.len() + 4)
            .map_err(|_| PgProxyError::Protocol("message too large".to_owned()))?,
    );
    buffer.put_slice(body);
    Ok(())
}

/// A startup packet asking for a session with `parameters`.
#[must_use]
pub fn startup_packet(parameters: &[(&str, &str)]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_i32(PROTOCOL_V3);
    for (name, value) in parameters {
        put_cstr(&mut body, name);
        put_cstr(&mut body, value);
    }
    body.put_u8(0);
    let mut packet = BytesMut::with_capacity(body.len() + 4);
    packet.put_i32(i32::try_from(body.len() + 4).unwrap_or(i32::MAX));
    packet.put_slice(&body);
    packet.to_vec()
}

/// How many ReadyForQuery messages the server answers client messages with these tags: one
/// per Query, FunctionCall and Sync, except a Sync that copy data follows (the server ignores
/// Syncs in copy-in mode, where libpq's extended-protocol COPY sends one).
#[must_use]
pub fn ready_rounds(tags: impl DoubleEndedIterator<Item = u8>) -> usize {
    let (mut rounds, mut copy_follows) = (0, false);
    for tag in tags.rev() {
        match tag {
            b'd' | b'c' | b'f' => copy_follows = true,
            b'Q' | b'F' => {
                rounds += 1;
                copy_follows = false;
            }
            b'S' => {
                if !copy_follows {
                    rounds += 1;
                }
                copy_follows = false;
            }
            _ => {}
        }
    }
    rounds
}

/// Startup parameters as kept with a transaction for replay: `name\0value\0` pairs (the
/// login's `user`, `database` and `replication` left out: replay logs in as its URL says).
#[must_use]
pub fn encode_parameters(parameters: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in parameters {
        if matches!(name.as_str(), "user" | "database" | "replication") {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

/// The parameters [`encode_parameters`] kept.
#[must_use]
pub fn decode_parameters(kept: &[u8]) -> Vec<(String, String)> {
    let fields: Vec<String> = kept
        .split(|byte| *byte == 0)
        .map(|field| String::from_utf8_lossy(field).into_owned())
        .collect();
    fields
        .chunks_exact(2)
        .filter(|pair| !pair[0].is_empty())
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .collect()
}

/// An `SSLRequest` packet.
#[must_use]
pub fn ssl_request() -> [u8; 8] {
    let mut packet = [0u8; 8];
    packet[..4].copy_from_slice(&8i32.to_be_bytes());
    packet[4..].copy_from_slice(&SSL_REQUEST.to_be_bytes());
    packet
}

/// A `CancelRequest` packet.
#[must_use]
pub fn cancel_packet(process_id: i32, secret_key: i32) -> Vec<u8> {
    let mut packet = BytesMut::with_capacity(16);
    packet.put_i32(16);
    packet.put_i32(CANCEL_REQUEST);
    packet.put_i32(process_id);
    packet.put_i32(secret_key);
    packet.to_vec()
}

/// The body of an `ErrorResponse` (severity FATAL or ERROR, SQLSTATE `code`, `message`).
#[must_use]
pub fn error_body(severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut body = BytesMut::new();
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        body.put_u8(field);
        put_cstr(&mut body, value);
    }
    body.put_u8(0);
    body.to_vec()
}

/// The fields of an `ErrorResponse` body: its SQLSTATE and message.
#[must_use]
pub fn error_fields(mut body: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    while let Some((&field, rest)) = body.split_first() {
        if field == 0 {
            break;
        }
        let end = rest
            .iter()
            .position(|byte| *byte == 0)
            .unwrap_or(rest.len());
        let value = String::from_utf8_lossy(&rest[..end]).into_owned();
        match field {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
        body = rest.get(end + 1..).unwrap_or_default();
    }
    (code, message)
}

pub(crate) fn put_cstr(buffer: &mut BytesMut, text: &str) {
    buffer.put_slice(text.as_bytes());
    buffer.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn startup_packets_round_trip_and_bad_ones_are_refused() {
        let packet = startup_packet(&[("user", "ann"), ("database", "shop")]);
        let startup = read_startup(&mut &packet[..]).await.unwrap();
        assert_eq!(
            startup,
            Startup::Session(vec![
                ("user".to_owned(), "ann".to_owned()),
                ("database".to_owned(), "shop".to_owned()),
            ])
        );
        let cancel = cancel_packet(7, 42);
        assert_eq!(
            read_startup(&mut &cancel[..]).await.unwrap(),
            Startup::Cancel {
                process_id: 7,
                secret_key: 42
            }
        );
        for bad in [
            vec![0, 0, 0, 2],
            vec![0x7f, 0, 0, 0],
            vec![0, 0, 0, 8, 0, 2, 0, 0],
            vec![0, 0, 0, 12, 0, 3, 0, 0, b'u', b's', b'e', b'r'],
        ] {
            assert!(read_startup(&mut &bad[..]).await.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kept_parameters_round_trip_without_the_login() {
        let parameters = vec![
            ("user".to_owned(), "ann".to_owned()),
            ("options".to_owned(), "-c search_path=app".to_owned()),
            ("application_name".to_owned(), String::new()),
        ];
        assert_eq!(
            decode_parameters(&encode_parameters(&parameters)),
            parameters[1..].to_vec()
        );
        assert!(decode_parameters(b"").is_empty());
    }

    #[test]
    fn ready_rounds_skip_a_sync_sent_into_copy_in() {
        let rounds = |tags: &[u8]| ready_rounds(tags.iter().copied());
        assert_eq!(rounds(b"Q"), 1);
        assert_eq!(rounds(b"PBES"), 1);
        assert_eq!(rounds(b"Qddc"), 1);
        assert_eq!(rounds(b"PBESddcS"), 1);
        assert_eq!(rounds(b"PBESfS"), 1);
        assert_eq!(rounds(b"QPBESF"), 3);
        assert_eq!(rounds(b"PBESddcSQ"), 2);
    }

    #[test]
    fn the_codec_frames_messages_across_any_split_and_refuses_bad_lengths() {
        use tokio_util::codec::Decoder;
        let mut wire = BytesMut::new();
        put_message(&mut wire, b'Q', b"SELECT 1\0").unwrap();
        put_message(&mut wire, b'S', b"").unwrap();
        put_message(&mut wire, b'd', &[0, 1, 2, 0xff]).unwrap();
        for split in 0..=wire.len() {
            let mut codec = PgCodec::default();
            let mut buffer = BytesMut::from(&wire[..split]);
            let mut messages = Vec::new();
            while let Some(message) = codec.decode(&mut buffer).unwrap() {
                messages.push(message);
            }
            buffer.extend_from_slice(&wire[split..]);
            while let Some(message) = codec.decode(&mut buffer).unwrap() {
                messages.push(message);
            }
            let tags: Vec<u8> = messages.iter().map(|message| message.tag).collect();
            assert_eq!(tags, b"QSd", "split at {split}");
            assert_eq!(messages[2].body.as_ref(), [0, 1, 2, 0xff]);
            assert!(buffer.is_empty());
        }
        for bad in [&[b'Q', 0, 0, 0, 3][..], &[b'Q', 0xff, 0xff, 0xff, 0xff]] {
            assert!(PgCodec::default().decode(&mut BytesMut::from(bad)).is_err());
        }
        assert!(PgCodec::new(100)
            .decode(&mut BytesMut::from(&[b'p', 0, 0, 1, 0][..]))
            .is_err());
    }

    #[tokio::test]
    async fn messages_round_trip_and_errors_parse() {
        let mut wire = Vec::new();
        write_message(&mut wire, b'E', &error_body("ERROR", "42P01", "no table"))
            .await
            .unwrap();
        let message = read_message(&mut &wire[..]).await.unwrap();
        assert_eq!(message.tag, b'E');
        assert_eq!(
            error_fields(&message.body),
            ("42P01".to_owned(), "no table".to_owned())
        );
        assert!(read_message(&mut &[b'Q', 0, 0, 0, 1][..]).await.is_err());
    }
}
