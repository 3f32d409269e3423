//! Request and response bodies read into memory up to a limit, streamed beyond it.

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body_util::BodyExt;

/// A body read up to a size limit.
#[derive(Debug)]
pub enum LimitedBody {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// The body is over the limit: what was read, and the unread rest.
    TooLarge {
        /// The bytes read so far (just over the limit).
        prefix: Bytes,
        /// The rest of the body, not read yet.
        rest: Body,
    },
}

impl LimitedBody {
    /// Reads `body` until it ends or exceeds `limit` bytes.
    ///
    /// # Errors
    /// When the body breaks off or is malformed (e.g. bad chunked encoding).
    pub async fn read(mut body: Body, limit: usize) -> Result<LimitedBody, axum::Error> {
        let mut buffer = BytesMut::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                buffer.extend_from_slice(&data);
                if buffer.len() > limit {
                    return Ok(LimitedBody::TooLarge {
                        prefix: buffer.freeze(),
                        rest: body,
                    });
                }
            }
        }
        Ok(LimitedBody::Complete(buffer.freeze()))
    }

    /// The whole body again, to send on.
    pub fn into_body(self) -> Body {
        match self {
            LimitedBody::Complete(bytes) => Body::from(bytes),
            LimitedBody::TooLarge { prefix, rest } => Body::from_stream(
                futures_util::stream::once(async move { Ok::<_, axum::Error>(prefix) })
                    .chain(rest.into_data_stream()),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(body: Body) -> Bytes {
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn small_bodies_are_read_whole() {
        let read = LimitedBody::read(Body::from("hello"), 5).await.unwrap();
        assert!(matches!(&read, LimitedBody::Complete(b) if b == "hello"));
        assert_eq!(collect(read.into_body()).await, "hello");
    }

    #[tokio::test]
    async fn large_bodies_keep_every_byte() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = (0..10)
            .map(|i| Ok(Bytes::from(vec![b'a' + i; 100])))
            .collect();
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        let read = LimitedBody::read(body, 250).await.unwrap();
        let LimitedBody::TooLarge { prefix, .. } = &read else {
            panic!("expected TooLarge");
        };
        assert_eq!(prefix.len(), 300);
        let whole = collect(read.into_body()).await;
        assert_eq!(whole.len(), 1000);
        assert_eq!(whole[999], b'j');
    }
}
