//! What a session set up while it was relayed byte for byte (in `old-only`), read from its
//! server when mirroring starts, so the tracker and the other side's session start from it:
//! the settings it changed (`SET`, as `set_config` calls) and its prepared statements. Also
//! read when a session moves to the other side, whose type OIDs differ for user-defined
//! types: those are carried by name ([`SessionSnapshot::statements_for`]).

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::PgProxyError;
use crate::protocol::{put_cstr, Message};
use crate::stream::ServerStream;
use crate::text_query::rows;
use crate::tracker::{SessionState, StateStatement};

/// What a session had set up: its settings (statements that bring another session to them,
/// SQL `PREPARE`s included) and its protocol-level prepared statements (name, Parse).
#[derive(Debug, Default)]
pub struct SessionSnapshot {
    /// Statements that bring a new session to the same settings.
    pub state: SessionState,
    /// Protocol-level prepared statements, with a Parse that makes each again.
    pub statements: Vec<(String, Message)>,
    /// The user-defined types (enums, domains, composites, ranges and their arrays: OIDs from
    /// 16384 up) those statements take, by OID on the server read, with their
    /// schema-qualified names: another server has the same names under other OIDs.
    pub user_types: Vec<(u32, String)>,
}

/// The first OID PostgreSQL gives an object that is not built in (`FirstNormalObjectId`).
const FIRST_USER_OID: u32 = 16_384;

/// The settings a session changed itself, as statements that set them elsewhere.
const SETTINGS: &str = "SELECT 'SELECT pg_catalog.set_config(' || quote_literal(name) || ', ' \
     || quote_literal(current_setting(name)) || ', false)' FROM pg_catalog.pg_settings \
     WHERE source = 'session' ORDER BY name";

/// Its prepared statements: name, text, parameter type OIDs (`{…}`), whether by SQL.
const PREPARED: &str = "SELECT name, statement, parameter_types::oid[]::text, from_sql \
     FROM pg_catalog.pg_prepared_statements ORDER BY prepare_time";

/// The user-defined types the protocol-level prepared statements take: OID and qualified name.
const USER_TYPES: &str = "SELECT DISTINCT t.oid::text, \
     pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(t.typname) \
     FROM pg_catalog.pg_prepared_statements p, \
     unnest(p.parameter_types::oid[]) AS o(oid) \
     JOIN pg_catalog.pg_type t ON t.oid = o.oid \
     JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
     WHERE NOT p.from_sql AND t.oid >= 16384";

/// Reads what the session on `server` set up; it must be idle, with nothing in flight.
///
/// # Errors
/// When the server fails to answer (the session then cannot be mirrored exactly).
pub async fn snapshot(server: &mut ServerStream) -> Result<SessionSnapshot, PgProxyError> {
    let mut snapshot = SessionSnapshot::default();
    for row in rows(server, SETTINGS).await? {
        if let Some(Some(statement)) = row.into_iter().next() {
            snapshot
                .state
                .statements
                .push(StateStatement::Sql(statement));
        }
    }
    for row in rows(server, PREPARED).await? {
        let [Some(name), Some(statement), types, Some(from_sql)] =
            <[Option<String>; 4]>::try_from(row).map_err(|_| {
                PgProxyError::Protocol("unexpected prepared-statement row".to_owned())
            })?
        else {
            continue;
        };
        if from_sql == "t" {
            snapshot
                .state
                .statements
                .push(StateStatement::Sql(statement));
            continue;
        }
        let oids: Vec<u32> = types
            .unwrap_or_default()
            .trim_matches(|c| c == '{' || c == '}')
            .split(',')
            .filter_map(|oid| oid.trim().parse().ok())
            .collect();
        let mut body = BytesMut::new();
        put_cstr(&mut body, &name);
        put_cstr(&mut body, &statement);
        body.put_i16(i16::try_from(oids.len()).unwrap_or(i16::MAX));
        for oid in oids {
            body.put_u32(oid);
        }
        snapshot.statements.push((
            name,
            Message {
                tag: b'P',
                body: body.freeze(),
            },
        ));
    }
    for row in rows(server, USER_TYPES).await? {
        let mut fields = row.into_iter().flatten();
        if let (Some(oid), Some(name)) = (fields.next(), fields.next()) {
            if let Ok(oid) = oid.parse::<u32>() {
                snapshot.user_types.push((oid, name));
            }
        }
    }
    Ok(snapshot)
}

impl SessionSnapshot {
    /// The prepared statements as the server on `server` (idle) takes them: each user-defined
    /// parameter type is looked up there by its qualified name, and its OID in every Parse
    /// replaced by that server's.
    ///
    /// # Errors
    /// Which type that server lacks (the session cannot go on there), or a failed look-up.
    pub(crate) async fn statements_for(
        &self,
        server: &mut ServerStream,
    ) -> Result<Vec<(String, Message)>, String> {
        if self.user_types.is_empty() {
            return Ok(self.statements.clone());
        }
        let names: Vec<String> = self
            .user_types
            .iter()
            .map(|(_, name)| escaped_literal(name))
            .collect();
        let found = rows(
            server,
            &format!(
                "SELECT coalesce(pg_catalog.to_regtype(name)::oid::text, '') \
                 FROM unnest(ARRAY[{}]::text[]) WITH ORDINALITY AS looked(name, at) ORDER BY at",
                names.join(", ")
            ),
        )
        .await
        .map_err(|err| format!("cannot look its prepared statements' types up there: {err}"))?;
        let mut there = HashMap::new();
        for ((oid, name), row) in self.user_types.iter().zip(found) {
            let Some(found) = row
                .into_iter()
                .next()
                .flatten()
                .and_then(|oid| oid.parse::<u32>().ok())
            else {
                return Err(format!(
                    "a prepared statement of it takes the type {name}, which that side lacks"
                ));
            };
            there.insert(*oid, found);
        }
        self.statements
            .iter()
            .map(|(name, parse)| {
                let body = retyped(&parse.body, &there)
                    .ok_or_else(|| format!("its prepared statement {name:?} cannot be read"))?;
                Ok((
                    name.clone(),
                    Message {
                        tag: parse.tag,
                        body,
                    },
                ))
            })
            .collect()
    }
}

/// `text` as an escape-string literal (`E'…'`), read alike whatever the server's
/// `standard_conforming_strings`; a quote doubled, not backslashed, which a server refuses
/// under a client-only encoding (SJIS, GBK, …; `backslash_quote = safe_encoding`).
pub(crate) fn escaped_literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// A Parse body (name, text, parameter type OIDs) with each user-defined OID replaced by its
/// counterpart in `there` (built-in ones are the same everywhere); `None` when the body is
/// not a Parse.
fn retyped(body: &Bytes, there: &HashMap<u32, u32>) -> Option<Bytes> {
    let name_end = body.iter().position(|&byte| byte == 0)?;
    let text_end = name_end + 1 + body[name_end + 1..].iter().position(|&byte| byte == 0)?;
    let mut types = body.slice(text_end + 1..);
    if types.remaining() < 2 {
        return None;
    }
    let count = usize::try_from(types.get_i16()).ok()?;
    if types.remaining() != count * 4 {
        return None;
    }
    let mut out = BytesMut::with_capacity(body.len());
    out.put_slice(&body[..=text_end]);
    out.put_i16(i16::try_from(count).ok()?);
    for _ in 0..count {
        let oid = types.get_u32();
        let oid = if oid >= FIRST_USER_OID {
            there.get(&oid).copied().unwrap_or(oid)
        } else {
            oid
        };
        out.put_u32(oid);
    }
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, text: &str, oids: &[u32]) -> Bytes {
        let mut body = BytesMut::new();
        put_cstr(&mut body, name);
        put_cstr(&mut body, text);
        body.put_i16(i16::try_from(oids.len()).unwrap());
        for oid in oids {
            body.put_u32(*oid);
        }
        body.freeze()
    }

    #[test]
    fn user_defined_parameter_types_take_the_other_servers_oids() {
        let there = HashMap::from([(16_500, 17_001), (16_499, 17_000)]);
        let body = parse(
            "add",
            "INSERT INTO t VALUES ($1, $2, $3)",
            &[23, 16_500, 16_499],
        );
        assert_eq!(
            retyped(&body, &there).unwrap(),
            parse(
                "add",
                "INSERT INTO t VALUES ($1, $2, $3)",
                &[23, 17_001, 17_000]
            )
        );
        let untyped = parse("", "SELECT 1", &[]);
        assert_eq!(retyped(&untyped, &there).unwrap(), untyped);
        assert!(retyped(&Bytes::from_static(b"no nul"), &there).is_none());
        assert!(retyped(&body.slice(..body.len() - 1), &there).is_none());
    }

    #[test]
    fn names_are_escaped_as_literals() {
        assert_eq!(escaped_literal("public.mood"), "E'public.mood'");
        assert_eq!(escaped_literal("\"o'k\\\""), "E'\"o''k\\\\\"'");
    }
}
