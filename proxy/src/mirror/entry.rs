//! A mirror copy as the journal keeps it: everything needed to deliver it after a restart
//! (target, request, body, ordering key, when it was accepted), in a compact binary form.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::Method;
use tandem_control::{Side, Timestamp};

use super::MirrorJob;
use crate::headers::{decode_block, encode_block};
use crate::routes::RouteClass;
use crate::upstream::OutboundRequest;

/// The format's version, first byte of every entry.
const VERSION: u8 = 1;

/// Why a journal entry could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("unreadable journal entry: {0}")]
pub struct EntryError(&'static str);

/// The bytes [`encode`] will make of a copy of this request (with up to [`HEADER_SLACK`]
/// bytes of headers tandem adds), known before the authoritative side sees the write, so
/// that room for it can be promised in the journal.
#[must_use]
pub fn size_of(
    request_id: &str,
    request: &OutboundRequest,
    ordering_key: &str,
    route: &str,
    body_len: usize,
) -> u64 {
    let headers: usize = request
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let fields = [
        request_id.len(),
        request.method.as_str().len(),
        request.path_and_query.len(),
        headers + HEADER_SLACK,
        ordering_key.len(),
        route.len(),
        body_len,
    ];
    let fixed = 3 + 8 + 8 + 4 * fields.len();
    u64::try_from(fixed + fields.iter().sum::<usize>()).unwrap_or(u64::MAX)
}

/// Room for the headers tandem adds to a copy after its size was taken (`x-tandem-mirror`).
pub const HEADER_SLACK: usize = 64;

/// Encodes what a copy needs to be delivered later (not the comparison it may carry).
#[must_use]
pub fn encode(job: &MirrorJob) -> Bytes {
    let headers = encode_block(&job.request.headers);
    let mut out = BytesMut::with_capacity(
        64 + job.request_id.len()
            + job.request.path_and_query.len()
            + headers.len()
            + job.ordering_key.len()
            + job.route.len()
            + job.body.len(),
    );
    out.put_u8(VERSION);
    out.put_u8(u8::from(job.target == Side::New));
    out.put_u8(match job.class {
        RouteClass::Write => 0,
        RouteClass::Read => 1,
        RouteClass::NoMirror => 2,
    });
    out.put_i64(job.accepted_at.millis());
    out.put_i64(job.accepted_seq);
    for field in [
        job.request_id.as_bytes(),
        job.request.method.as_str().as_bytes(),
        job.request.path_and_query.as_bytes(),
        &headers,
        job.ordering_key.as_bytes(),
        job.route.as_bytes(),
        &job.body,
    ] {
        out.put_u32(u32::try_from(field.len()).unwrap_or(u32::MAX));
        out.put_slice(field);
    }
    out.freeze()
}

/// Reads an entry back as a copy to deliver (no waiter, nothing to compare with).
///
/// # Errors
/// When the entry is truncated or of another version.
pub fn decode(mut entry: Bytes) -> Result<MirrorJob, EntryError> {
    if entry.remaining() < 19 {
        return Err(EntryError("too short"));
    }
    if entry.get_u8() != VERSION {
        return Err(EntryError("unknown version"));
    }
    let target = if entry.get_u8() == 1 {
        Side::New
    } else {
        Side::Old
    };
    let class = match entry.get_u8() {
        0 => RouteClass::Write,
        1 => RouteClass::Read,
        _ => RouteClass::NoMirror,
    };
    let accepted_at = Timestamp(entry.get_i64());
    let accepted_seq = entry.get_i64();
    let mut field = || -> Result<Bytes, EntryError> {
        if entry.remaining() < 4 {
            return Err(EntryError("truncated"));
        }
        let length = usize::try_from(entry.get_u32()).map_err(|_| EntryError("too long"))?;
        if entry.remaining() < length {
            return Err(EntryError("truncated"));
        }
        Ok(entry.split_to(length))
    };
    let text =
        |bytes: Bytes| String::from_utf8(bytes.to_vec()).map_err(|_| EntryError("not UTF-8"));
    let request_id = text(field()?)?;
    let method = Method::from_bytes(&field()?).map_err(|_| EntryError("bad method"))?;
    let path_and_query = text(field()?)?;
    let headers = decode_block(&field()?);
    let ordering_key = text(field()?)?;
    let route: Arc<str> = text(field()?)?.into();
    let body = field()?;
    Ok(MirrorJob {
        request_id,
        target,
        request: OutboundRequest {
            method,
            path_and_query,
            headers,
        },
        body,
        ordering_key,
        route,
        class,
        primary: None,
        accepted_at,
        accepted_seq,
        done: None,
        journal_seq: None,
        read_under: None,
        expired: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::MIRROR;
    use http::{HeaderMap, HeaderValue};

    fn job(body: &'static [u8]) -> MirrorJob {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-trace", HeaderValue::from_static("a"));
        headers.append("x-trace", HeaderValue::from_static("b"));
        MirrorJob {
            request_id: "r-1".to_owned(),
            target: Side::New,
            request: OutboundRequest {
                method: Method::PATCH,
                path_and_query: "/orders/7?x=1".to_owned(),
                headers,
            },
            body: Bytes::from_static(body),
            ordering_key: "/orders/7".to_owned(),
            route: Arc::from("orders"),
            class: RouteClass::Write,
            primary: None,
            accepted_at: Timestamp(1_700_000_000_123),
            accepted_seq: 42,
            done: None,
            journal_seq: None,
            read_under: None,
            expired: false,
        }
    }

    #[test]
    fn a_copy_reads_back_as_it_was_written() {
        let written = job(b"{\"n\":1}");
        let read = decode(encode(&written)).expect("readable");
        assert_eq!(read.request_id, written.request_id);
        assert_eq!(read.target, written.target);
        assert_eq!(read.request.method, written.request.method);
        assert_eq!(read.request.path_and_query, written.request.path_and_query);
        assert_eq!(read.request.headers, written.request.headers);
        assert_eq!(read.body, written.body);
        assert_eq!(read.ordering_key, written.ordering_key);
        assert_eq!(&*read.route, &*written.route);
        assert_eq!(read.class, written.class);
        assert_eq!(read.accepted_at, written.accepted_at);
        assert_eq!(read.accepted_seq, written.accepted_seq);
    }

    #[test]
    fn the_size_promised_before_the_write_covers_the_entry_tandem_then_writes() {
        let mut copy = job(b"0123456789");
        let promised = size_of(
            &copy.request_id,
            &copy.request,
            &copy.ordering_key,
            &copy.route,
            copy.body.len(),
        );
        copy.request
            .headers
            .insert(MIRROR, HeaderValue::from_static("1"));
        let written = encode(&copy).len() as u64;
        assert!(written <= promised, "{written} > {promised}");
        assert!(
            promised - written <= HEADER_SLACK as u64,
            "{promised} vs {written}"
        );
    }

    #[test]
    fn damaged_entries_are_errors_not_panics() {
        let whole = encode(&job(b"body"));
        for cut in 0..whole.len() {
            let _ = decode(whole.slice(..cut));
        }
        assert!(decode(Bytes::from_static(&[9, 0, 0])).is_err());
    }
}
