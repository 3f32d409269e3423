//! A query tandem runs itself on a server connection between the client's requests (to read a
//! session's settings, or what became of a transaction), answered as rows of text.

use tokio::io::AsyncWriteExt;

use crate::error::PgProxyError;
use crate::messages::{query, Backend};
use crate::protocol::{read_message, write_message, Message};
use crate::stream::ServerStream;

/// The text-format rows of a query run on `server` between the client's requests.
pub(crate) async fn rows(
    server: &mut ServerStream,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, PgProxyError> {
    answered(server, &[query(sql)]).await
}

/// The text-format rows of `messages` (a Query, or extended-protocol messages ending with a
/// Sync) run on `server` between the client's requests.
pub(crate) async fn answered(
    server: &mut ServerStream,
    messages: &[Message],
) -> Result<Vec<Vec<Option<String>>>, PgProxyError> {
    let mut answers = answered_each(server, std::slice::from_ref(&messages.to_vec())).await?;
    match answers.pop() {
        Some(Ok(rows)) => Ok(rows),
        Some(Err(error)) => Err(PgProxyError::Protocol(format!(
            "the server refused tandem's own query: {error}"
        ))),
        None => Ok(Vec::new()),
    }
}

/// The rows, or the server's error, of each request of `requests` (each a Query, or
/// extended-protocol messages ending with a Sync), sent together in one round trip.
pub(crate) async fn answered_each(
    server: &mut ServerStream,
    requests: &[Vec<Message>],
) -> Result<Vec<Result<Vec<Vec<Option<String>>>, String>>, PgProxyError> {
    for message in requests.iter().flatten() {
        write_message(server, message.tag, &message.body).await?;
    }
    server.flush().await?;
    let mut answers = Vec::with_capacity(requests.len());
    for _ in requests {
        let (mut rows, mut error) = (Vec::new(), None);
        loop {
            let answer = read_message(server).await?;
            match Backend::decode(&answer) {
                Backend::DataRow => rows.push(data_row(&answer.body)),
                Backend::Error { code, message } => {
                    error.get_or_insert(format!("{code}: {message}"));
                }
                Backend::Ready { .. } => break,
                _ => {}
            }
        }
        answers.push(error.map_or(Ok(rows), Err));
    }
    Ok(answers)
}

/// The text values of a `DataRow` body.
pub(crate) fn data_row(body: &[u8]) -> Vec<Option<String>> {
    let mut values = Vec::new();
    let mut rest = body.get(2..).unwrap_or_default();
    while rest.len() >= 4 {
        let length = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        rest = &rest[4..];
        match usize::try_from(length) {
            Ok(length) => {
                let value = rest.get(..length).unwrap_or(rest);
                values.push(Some(String::from_utf8_lossy(value).into_owned()));
                rest = rest.get(length..).unwrap_or_default();
            }
            Err(_) => values.push(None),
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_rows_decode_values_and_nulls() {
        let mut body = vec![0, 2];
        body.extend_from_slice(&2i32.to_be_bytes());
        body.extend_from_slice(b"ab");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(data_row(&body), [Some("ab".to_owned()), None]);
        assert!(data_row(&[0, 1, 0, 0]).is_empty());
    }
}
