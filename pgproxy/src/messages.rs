//! Typed views of the protocol messages tandem acts on: what a client asks (`Frontend`) and
//! what a server answers (`Backend`), decoded from a framed [`Message`] without copying its
//! body more than the fields need.

use crate::protocol::{error_fields, Message};

/// A client's message, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frontend {
    /// `Q`: a simple query (possibly several statements).
    Query {
        /// The query text.
        sql: String,
    },
    /// `P`: prepares a statement.
    Parse {
        /// Its name (`""` for the unnamed statement).
        name: String,
        /// Its text.
        sql: String,
    },
    /// `B`: binds parameters to a prepared statement, making a portal.
    Bind {
        /// The portal made (`""` for the unnamed portal).
        portal: String,
        /// The statement bound.
        statement: String,
    },
    /// `D`: describes a statement or a portal.
    Describe {
        /// Whether a portal (`P`) rather than a statement (`S`) is described.
        portal: bool,
        /// Its name.
        name: String,
    },
    /// `E`: runs a portal.
    Execute {
        /// The portal run.
        portal: String,
    },
    /// `C`: closes a statement or a portal.
    Close {
        /// Whether a portal (`P`) rather than a statement (`S`) is closed.
        portal: bool,
        /// Its name.
        name: String,
    },
    /// `S`: ends an extended-protocol batch.
    Sync,
    /// `H`: asks for the answers so far.
    Flush,
    /// `F`: a fast-path function call.
    FunctionCall,
    /// `d`, `c`, `f`: COPY data, its end, or its abandonment.
    Copy,
    /// `X`: the client leaves.
    Terminate,
    /// Anything else (password messages, unknown tags).
    Other(u8),
}

impl Frontend {
    /// The typed form of a client's message.
    #[must_use]
    pub fn decode(message: &Message) -> Frontend {
        let mut fields = message.body.split(|byte| *byte == 0);
        let mut text = || {
            fields
                .next()
                .map(|field| String::from_utf8_lossy(field).into_owned())
                .unwrap_or_default()
        };
        match message.tag {
            b'Q' => Frontend::Query { sql: text() },
            b'P' => {
                let name = text();
                Frontend::Parse { name, sql: text() }
            }
            b'B' => {
                let portal = text();
                Frontend::Bind {
                    portal,
                    statement: text(),
                }
            }
            b'D' => {
                let (portal, name) = kind_and_name(message);
                Frontend::Describe { portal, name }
            }
            b'E' => Frontend::Execute { portal: text() },
            b'C' => {
                let (portal, name) = kind_and_name(message);
                Frontend::Close { portal, name }
            }
            b'S' => Frontend::Sync,
            b'H' => Frontend::Flush,
            b'F' => Frontend::FunctionCall,
            b'd' | b'c' | b'f' => Frontend::Copy,
            b'X' => Frontend::Terminate,
            other => Frontend::Other(other),
        }
    }
}

/// The body of a Describe or Close: whether it names a portal (`P`), and the name.
fn kind_and_name(message: &Message) -> (bool, String) {
    let portal = message.body.first() == Some(&b'P');
    let name = message
        .body
        .get(1..)
        .and_then(|rest| rest.split(|byte| *byte == 0).next())
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .unwrap_or_default();
    (portal, name)
}

/// A server's message, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// `1`.
    ParseComplete,
    /// `2`.
    BindComplete,
    /// `3`.
    CloseComplete,
    /// `t`: a statement's parameter types.
    ParameterDescription,
    /// `T`: the columns of the rows that follow.
    RowDescription,
    /// `n`: a described statement or portal returns no rows.
    NoData,
    /// `D`: one row.
    DataRow,
    /// `C`: a statement completed.
    CommandComplete {
        /// Its tag (`INSERT 0 1`, `COMMIT`, `ROLLBACK`, …).
        tag: String,
    },
    /// `I`: the query was empty.
    EmptyQuery,
    /// `s`: an Execute stopped at its row limit.
    PortalSuspended,
    /// `E`: an error.
    Error {
        /// The SQLSTATE.
        code: String,
        /// The message.
        message: String,
    },
    /// `Z`: ready for the next query, with the transaction status (`I`, `T` or `E`).
    Ready {
        /// `I` idle, `T` in a transaction block, `E` in a failed one.
        status: u8,
    },
    /// `G`: the server waits for COPY data.
    CopyIn,
    /// `H` or `W`: the server sends COPY data.
    CopyOut,
    /// `V`: a function call's result.
    FunctionResult,
    /// Anything else (notices, notifications, parameter changes, COPY data).
    Other,
}

impl Backend {
    /// The typed form of a server's message.
    #[must_use]
    pub fn decode(message: &Message) -> Backend {
        match message.tag {
            b'1' => Backend::ParseComplete,
            b'2' => Backend::BindComplete,
            b'3' => Backend::CloseComplete,
            b't' => Backend::ParameterDescription,
            b'T' => Backend::RowDescription,
            b'n' => Backend::NoData,
            b'D' => Backend::DataRow,
            b'C' => Backend::CommandComplete {
                tag: message
                    .body
                    .split(|byte| *byte == 0)
                    .next()
                    .map(|tag| String::from_utf8_lossy(tag).into_owned())
                    .unwrap_or_default(),
            },
            b'I' => Backend::EmptyQuery,
            b's' => Backend::PortalSuspended,
            b'E' => {
                let (code, message) = error_fields(&message.body);
                Backend::Error { code, message }
            }
            b'Z' => Backend::Ready {
                status: message.body.first().copied().unwrap_or(b'I'),
            },
            b'G' => Backend::CopyIn,
            b'H' | b'W' => Backend::CopyOut,
            b'V' => Backend::FunctionResult,
            _ => Backend::Other,
        }
    }
}

/// A simple Query message for `sql`.
#[must_use]
pub fn query(sql: &str) -> Message {
    let mut body = Vec::with_capacity(sql.len() + 1);
    body.extend_from_slice(sql.as_bytes());
    body.push(0);
    Message {
        tag: b'Q',
        body: body.into(),
    }
}

/// A message with no body (`Sync`, `Terminate`, …).
#[must_use]
pub fn bare(tag: u8) -> Message {
    Message {
        tag,
        body: bytes::Bytes::new(),
    }
}

/// A `Close` of the prepared statement `name`.
#[must_use]
pub fn close_statement(name: &str) -> Message {
    let mut body = Vec::with_capacity(name.len() + 2);
    body.push(b'S');
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    Message {
        tag: b'C',
        body: body.into(),
    }
}

/// One parameter a Bind binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// NULL.
    Null,
    /// A value in text.
    Text(String),
    /// A value in binary.
    Binary,
}

/// The parameters a Bind binds; `None` when the message is cut short.
#[must_use]
pub fn bound(bind: &Message) -> Option<Vec<Bound>> {
    let body = &bind.body[..];
    let mut at = 0;
    for _ in 0..2 {
        at += body.get(at..)?.iter().position(|byte| *byte == 0)? + 1;
    }
    let i16_at = |at: &mut usize| -> Option<i16> {
        let value = i16::from_be_bytes([*body.get(*at)?, *body.get(*at + 1)?]);
        *at += 2;
        Some(value)
    };
    let count = usize::try_from(i16_at(&mut at)?).ok()?;
    let mut formats = Vec::with_capacity(count);
    for _ in 0..count {
        formats.push(i16_at(&mut at)?);
    }
    let count = usize::try_from(i16_at(&mut at)?).ok()?;
    let mut params = Vec::with_capacity(count);
    for index in 0..count {
        let format = match formats.as_slice() {
            [] => 0,
            [one] => *one,
            many => *many.get(index)?,
        };
        let length = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        params.push(match usize::try_from(length) {
            Ok(length) => {
                let value = body.get(at..at + length)?;
                at += length;
                if format == 0 {
                    Bound::Text(String::from_utf8_lossy(value).into_owned())
                } else {
                    Bound::Binary
                }
            }
            Err(_) => Bound::Null,
        });
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Message {
        Message {
            tag,
            body: bytes::Bytes::copy_from_slice(body),
        }
    }

    #[test]
    fn client_messages_decode_their_names_and_text() {
        assert_eq!(
            Frontend::decode(&message(b'P', b"s1\0INSERT INTO t VALUES ($1)\0\0\0")),
            Frontend::Parse {
                name: "s1".into(),
                sql: "INSERT INTO t VALUES ($1)".into()
            }
        );
        assert_eq!(
            Frontend::decode(&message(b'B', b"\0s1\0\0\0")),
            Frontend::Bind {
                portal: String::new(),
                statement: "s1".into()
            }
        );
        assert_eq!(
            Frontend::decode(&message(b'C', b"Ss1\0")),
            Frontend::Close {
                portal: false,
                name: "s1".into()
            }
        );
        assert_eq!(
            Frontend::decode(&query("SELECT 1")),
            Frontend::Query {
                sql: "SELECT 1".into()
            }
        );
        // Truncated bodies decode to empty fields rather than failing.
        assert_eq!(
            Frontend::decode(&message(b'P', b"")),
            Frontend::Parse {
                name: String::new(),
                sql: String::new()
            }
        );
        assert_eq!(
            Frontend::decode(&message(b'C', b"")),
            Frontend::Close {
                portal: false,
                name: String::new()
            }
        );
    }

    #[test]
    fn server_messages_decode_tags_errors_and_status() {
        assert_eq!(
            Backend::decode(&message(b'C', b"INSERT 0 1\0")),
            Backend::CommandComplete {
                tag: "INSERT 0 1".into()
            }
        );
        assert_eq!(
            Backend::decode(&message(b'Z', b"E")),
            Backend::Ready { status: b'E' }
        );
        assert_eq!(
            Backend::decode(&message(b'E', b"SERROR\0C23505\0Mdup\0\0")),
            Backend::Error {
                code: "23505".into(),
                message: "dup".into()
            }
        );
    }
}
