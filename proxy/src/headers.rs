//! Header handling: hop-by-hop removal, tandem's own headers, and a lossless stored form.

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST};

/// The request id tandem puts on the primary request, the mirror copy and the client response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-tandem-request-id");
/// Marks the copy sent to the non-authoritative side.
pub const MIRROR: HeaderName = HeaderName::from_static("x-tandem-mirror");
/// Set on a sync-mode answer whose copy the other side had not confirmed within its timeout:
/// the copy is kept (journaled) and still on its way.
pub const MIRROR_PENDING: HeaderName = HeaderName::from_static("x-tandem-mirror-status");

/// Hop-by-hop headers (RFC 9110 §7.6.1) that never cross a proxy.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including those named by `Connection`, and `Host`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(HOST);
}

/// Encodes headers as an HTTP/1 header block (`name: value\r\n`…), byte for byte.
#[must_use]
pub fn encode_block(headers: &HeaderMap) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in headers {
        block.extend_from_slice(name.as_str().as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    block
}

/// Decodes a block written by [`encode_block`]; lines that are not valid headers are skipped.
#[must_use]
pub fn decode_block(block: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in block.split(|&byte| byte == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&byte| byte == b':') else {
            continue;
        };
        let value = line[colon + 1..]
            .strip_prefix(b" ")
            .unwrap_or(&line[colon + 1..]);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("host", HeaderValue::from_static("client.example"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut headers);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type"]);
    }

    #[test]
    fn header_blocks_round_trip_bytes_and_repeats() {
        let mut headers = HeaderMap::new();
        headers.append("accept", HeaderValue::from_static("a"));
        headers.append("accept", HeaderValue::from_static("b"));
        headers.insert("x-bytes", HeaderValue::from_bytes(b"caf\xe9: ok").unwrap());
        assert_eq!(decode_block(&encode_block(&headers)), headers);
    }
}
