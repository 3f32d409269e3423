//! What a session set up while it was relayed byte for byte (in `old-only`), read from its
//! server when mirroring starts, so the tracker and the other side's session start from it:
//! the settings it changed (`SET`, as `set_config` calls) and its prepared statements.

use bytes::{BufMut, BytesMut};

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
}

/// The settings a session changed itself, as statements that set them elsewhere.
const SETTINGS: &str = "SELECT 'SELECT pg_catalog.set_config(' || quote_literal(name) || ', ' \
     || quote_literal(current_setting(name)) || ', false)' FROM pg_catalog.pg_settings \
     WHERE source = 'session' ORDER BY name";

/// Its prepared statements: name, text, parameter type OIDs (`{…}`), whether by SQL.
const PREPARED: &str = "SELECT name, statement, parameter_types::oid[]::text, from_sql \
     FROM pg_catalog.pg_prepared_statements ORDER BY prepare_time";

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
    Ok(snapshot)
}
