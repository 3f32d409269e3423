//! A session that goes on with the other side at a stage change, instead of being told to
//! reconnect: stopped between transactions with every request answered, it brings its
//! settings and prepared statements over ([`SessionSnapshot`]) to a connection of the side
//! taking over, once that side has everything acknowledged before (the statement mirror's
//! backlog settled, or the write-ahead-log switch done), its prepared statements' user-defined
//! parameter types taken by name there. A session holding what cannot move
//! (`LISTEN`, cursors `WITH HOLD`, advisory locks, temporary tables, a role or user it switched
//! to with `SET ROLE` or `SET SESSION AUTHORIZATION`: no setting the snapshot can carry, and
//! going on as the login user would give back privileges the session gave up) is not moved. The
//! parameters its client was told (ParameterStatus) are kept: set back there where a session
//! may set them, told anew where not ([`crate::reported`]).

use bytes::BytesMut;
use tandem_control::Side;
use tokio::io::AsyncWriteExt;

use crate::backend::{Backend, ServerAddress};
use crate::baseline::Setting;
use crate::messages::{query, Backend as Answer};
use crate::pool::close_stream;
use crate::protocol::{error_fields, put_message, read_message, Message};
use crate::reported::{self, ParameterChange};
use crate::session::Shared;
use crate::snapshot::{snapshot, SessionSnapshot};
use crate::stream::ServerStream;
use crate::text_query::rows;
use crate::tracker::StateStatement;
use crate::wal_mirror::OpenSession;

/// What a session holds that another connection cannot have: empty when nothing.
const HELD: &str = "SELECT concat_ws(', ', \
     CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_listening_channels()) \
       THEN 'LISTEN channels' END, \
     CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_cursors WHERE is_holdable) \
       THEN 'cursors WITH HOLD' END, \
     CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_locks \
       WHERE pid = pg_catalog.pg_backend_pid() AND locktype = 'advisory') \
       THEN 'advisory locks' END, \
     CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_class \
       WHERE relnamespace = pg_catalog.pg_my_temp_schema()) THEN 'temporary tables' END, \
     CASE WHEN current_user <> session_user THEN 'a role set with SET ROLE' END, \
     CASE WHEN session_user <> (SELECT usename FROM pg_catalog.pg_stat_activity \
       WHERE pid = pg_catalog.pg_backend_pid()) \
       THEN 'a user set with SET SESSION AUTHORIZATION' END)";

/// A session moved to the side taking over.
pub(crate) struct Moved {
    /// The side it went to.
    pub side: Side,
    /// Its connection there.
    pub backend: Backend,
    /// What the session had set up (to seed its tracker).
    pub snapshot: SessionSnapshot,
    /// It, counted as open on that side (with the write-ahead-log capture).
    pub open: Option<OpenSession>,
    /// The reported parameters whose value there differs from what the client was told and
    /// could not be set back: the client is told them before the session's next answer.
    pub changes: Vec<ParameterChange>,
}

/// Moves the session whose idle connection on the side before is `from` (whose login
/// reported `login_report`) to a connection of `to` (on its server of `servers`, old then new,
/// logged in with `parameters`); to the side before again when the stage names it again
/// before the session got to `to`.
///
/// # Errors
/// Why it cannot move (it holds what cannot move, the side taking over is not ready, a
/// connection failed); the session is then told to reconnect.
pub(crate) async fn move_session(
    shared: &Shared,
    servers: &[ServerAddress; 2],
    parameters: &[(String, String)],
    login_report: &[(String, String)],
    to: Side,
    mut from: ServerStream,
) -> Result<Moved, String> {
    let held = rows(&mut from, HELD)
        .await
        .map_err(|err| err.to_string())?
        .into_iter()
        .next()
        .and_then(|row| row.into_iter().next().flatten())
        .unwrap_or_default();
    if !held.is_empty() {
        close_stream(from).await;
        return Err(format!("it holds {held}"));
    }
    // What it set up, and every reported parameter as its client was told it (the server
    // reported each change, which tandem relayed).
    let names = reported::moving_names(login_report);
    let read = async {
        let taken = snapshot(&mut from).await?;
        let told = reported::read(&mut from, &names).await?;
        Ok::<_, crate::error::PgProxyError>((taken, told))
    }
    .await
    .map_err(|err| err.to_string());
    close_stream(from).await;
    let (mut taken, told) = read?;
    let stages = shared.stage.subscribe();
    let mut to = to;
    let open = loop {
        shared
            .sequencer
            .settled_for(to, shared.stage_grace)
            .await
            .map_err(|owed| format!("{owed} transactions are still owed to the {to} side"))?;
        let Some(wal) = &shared.wal else { break None };
        match wal.open_session(to, &stages).await? {
            Some(open) => break Some(open),
            // The stage named the other side again before the session got here: it goes
            // there (each turn of this loop follows a stage change).
            None => to = stages.borrow().stage.authoritative(),
        }
    };
    let mut backend = shared
        .pool
        .get(&servers[usize::from(to == Side::New)], parameters)
        .await
        .map_err(|err| err.to_string())?;
    // Its prepared statements are made there with that side's OIDs for user-defined types (an
    // enum's OID on one server is another type's, or none, on the other). What the session
    // set up is kept as read: its tracker brings the other side's connections (the side
    // before, now the other one) to it. Then the parameters its client was told are kept:
    // what the server reported while restoring is superseded by what it shows once they are.
    let restored = match taken.statements_for(&mut backend.stream).await {
        Ok(statements) => restore(&mut backend.stream, &taken, &statements).await,
        Err(err) => Err(err),
    };
    let kept = match restored {
        Ok(()) => reported::keep(&mut backend.stream, &names, &told)
            .await
            .map_err(|err| format!("cannot read its reported parameters there: {err}")),
        Err(err) => Err(err),
    };
    let kept = match kept {
        Ok(kept) => kept,
        Err(err) => {
            crate::pool::close(backend).await;
            return Err(err);
        }
    };
    // The settings made there are the session's now: its tracker brings the other side's
    // connections to them too.
    taken
        .state
        .statements
        .extend(kept.settings.iter().map(Setting::statement));
    // A setting no server reports that could not be kept is not told (its client never
    // heard of it): it is said here.
    let (unkept, changes): (Vec<ParameterChange>, Vec<ParameterChange>) = kept
        .changes
        .into_iter()
        .partition(|change| reported::unreported(&change.name));
    for change in &unkept {
        change.record_unkept(to.other(), to);
    }
    Ok(Moved {
        side: to,
        backend,
        snapshot: taken,
        open,
        changes,
    })
}

/// Brings the idle session on `server` to `taken`'s settings, then makes `statements` (its
/// prepared statements as that server takes them).
async fn restore(
    server: &mut ServerStream,
    taken: &SessionSnapshot,
    statements: &[(String, Message)],
) -> Result<(), String> {
    let mut wire = BytesMut::new();
    let mut rounds = 0;
    let frame = |wire: &mut BytesMut, tag: u8, body: &[u8]| {
        put_message(wire, tag, body).map_err(|err| err.to_string())
    };
    for statement in &taken.state.statements {
        match statement {
            StateStatement::Sql(sql) => frame(&mut wire, b'Q', &query(sql).body)?,
            StateStatement::Messages(messages) => {
                for message in messages {
                    frame(&mut wire, message.tag, &message.body)?;
                }
                frame(&mut wire, b'S', &[])?;
            }
        }
        rounds += 1;
    }
    if !statements.is_empty() {
        for (_, parse) in statements {
            frame(&mut wire, parse.tag, &parse.body)?;
        }
        frame(&mut wire, b'S', &[])?;
        rounds += 1;
    }
    if rounds == 0 {
        return Ok(());
    }
    write_raw(server, &wire).await?;
    let mut refused = None;
    while rounds > 0 {
        let answer = read_message(server).await.map_err(|err| err.to_string())?;
        match Answer::decode(&answer) {
            Answer::Error { .. } => {
                refused.get_or_insert_with(|| error_fields(&answer.body));
            }
            Answer::Ready { .. } => rounds -= 1,
            _ => {}
        }
    }
    match refused {
        Some((code, message)) => Err(format!(
            "the session's settings do not apply there: {message} (SQLSTATE {code})"
        )),
        None => Ok(()),
    }
}

/// Writes framed messages as they are.
async fn write_raw(server: &mut ServerStream, wire: &[u8]) -> Result<(), String> {
    server
        .write_all(wire)
        .await
        .map_err(|err| err.to_string())?;
    server.flush().await.map_err(|err| err.to_string())
}
