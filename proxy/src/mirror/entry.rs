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
    })
}
