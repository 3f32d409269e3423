//! The front door: what a client goes through before its session is relayed. TLS requests
//! are declined, cancel requests forwarded; the startup packet and the login messages are
//! capped in size (and the whole login in time, by the caller); replication connections are
//! refused; the user must be one tandem knows (with a SCRAM-SHA-256 password check) and the
//! database one it serves; past `max_client_connections` a client is told 53300.

use bytes::{BufMut, BytesMut};
use metrics::counter;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::backend::ServerAddress;
use crate::error::PgProxyError;
use crate::protocol::{
    cancel_packet, error_body, put_cstr, read_message_within, read_startup, write_message, Startup,
};
use crate::scram::{ScramError, ScramServer, MECHANISM};
use crate::session::{CancelTarget, Shared};

/// The largest login message accepted before the client is authenticated (SCRAM messages
/// are a few hundred bytes).
const MAX_LOGIN_MESSAGE: usize = 10_000;

/// A client let in: its startup parameters, its user, and both sides' servers with the
/// database it asked for.
#[derive(Debug)]
pub struct Admitted {
    /// The startup parameters, as sent.
    pub parameters: Vec<(String, String)>,
    /// The user it logged in as.
    pub user: String,
    /// The old and the new side's servers, each with the database the session uses there.
    pub servers: [ServerAddress; 2],
}

/// Reads the client's startup and logs it in; `None` when it only asked to cancel a query.
/// `admitted` is false when the proxy has as many clients as it takes.
///
/// # Errors
/// When the client breaks the protocol, is refused (it is told why with a SQLSTATE), or
/// the connection fails.
pub async fn admit(
    client: &mut TcpStream,
    shared: &Shared,
    admitted: bool,
) -> Result<Option<Admitted>, PgProxyError> {
    let parameters = loop {
        match read_startup(client).await {
            Ok(Startup::Ssl | Startup::GssEnc) => client.write_all(b"N").await?,
            Ok(Startup::Cancel {
                process_id,
                secret_key,
            }) => {
                forward_cancel(shared, process_id, secret_key).await?;
                return Ok(None);
            }
            Ok(Startup::Session(parameters)) => break parameters,
            Err(err @ PgProxyError::Protocol(_)) => {
                refuse(client, "08P01", &err.to_string()).await;
                return Err(err);
            }
            Err(err) => return Err(err),
        }
    };
    let refused = |code: &'static str, message: String| (code, message);
    let checked =
        check(shared, &parameters, admitted).map_err(|(code, message)| refused(code, message));
    let (user, servers, password) = match checked {
        Ok(checked) => checked,
        Err((code, message)) => {
            counter!("tandem_pg_logins_refused_total", "reason" => code).increment(1);
            refuse(client, code, &message).await;
            return Err(PgProxyError::Protocol(message));
        }
    };
    if let Some(password) = &password {
        if let Err(reason) = authenticate(client, password).await {
            let message = format!("password authentication failed for user {user:?}: {reason}");
            counter!("tandem_pg_logins_refused_total", "reason" => "28P01").increment(1);
            refuse(client, "28P01", &message).await;
            return Err(PgProxyError::Protocol(message));
        }
    }
    Ok(Some(Admitted {
        parameters,
        user,
        servers,
    }))
}

/// What the startup parameters ask, checked: the user, both sides' servers with the
/// database, and the password to check (if any); or the SQLSTATE and message of a refusal.
#[allow(clippy::type_complexity)]
fn check(
    shared: &Shared,
    parameters: &[(String, String)],
    admitted: bool,
) -> Result<(String, [ServerAddress; 2], Option<String>), (&'static str, String)> {
    let parameter = |name: &str| {
        parameters
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    if !admitted {
        return Err((
            "53300",
            "sorry, too many clients already (tandem's max_client_connections)".to_owned(),
        ));
    }
    if parameter("replication").is_some_and(|value| {
        !matches!(
            value.to_ascii_lowercase().as_str(),
            "false" | "off" | "no" | "0"
        )
    }) {
        return Err((
            "0A000",
            "replication connections are not served through tandem; connect to the server \
             itself"
                .to_owned(),
        ));
    }
    let user = parameter("user").unwrap_or_default().to_owned();
    // Configured users log in with their own passwords; without any, the old URL's user
    // with that URL's password (none when it has none).
    let password = if shared.users.is_empty() {
        if user != shared.old.user {
            return Err((
                "28000",
                format!(
                    "tandem accepts the user of the old side's URL ({}), not {user:?}",
                    shared.old.user
                ),
            ));
        }
        shared.old.password.clone()
    } else {
        match shared.users.get(&user) {
            Some(password) => Some(password.clone()),
            None => return Err(("28000", format!("no tandem user {user:?}"))),
        }
    };
    // As libpq: no database means the user's name.
    let database = parameter("database")
        .filter(|database| !database.is_empty())
        .unwrap_or(&user);
    let servers = servers_for(shared, database).ok_or_else(|| {
        let mut served = vec![shared.old.database.clone()];
        if shared.new.database != shared.old.database {
            served.push(shared.new.database.clone());
        }
        served.extend(shared.databases.iter().cloned());
        (
            "3D000",
            format!(
                "database {database:?} is not served by this tandem (it serves {}; \
                 add others with --database)",
                served
                    .iter()
                    .map(|name| format!("{name:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    Ok((user, servers, password))
}

/// Both sides' servers for a session asking for `database`: the URLs' own databases (either
/// name) stand for each other; a configured one has the same name on both sides.
fn servers_for(shared: &Shared, database: &str) -> Option<[ServerAddress; 2]> {
    if database == shared.old.database || database == shared.new.database {
        return Some([shared.old.clone(), shared.new.clone()]);
    }
    shared
        .databases
        .iter()
        .any(|served| served == database)
        .then(|| {
            [&shared.old, &shared.new].map(|server| ServerAddress {
                database: database.to_owned(),
                ..server.clone()
            })
        })
}

/// Checks the client's password with SCRAM-SHA-256 (AuthenticationSASL, SASLContinue,
/// SASLFinal); the password itself never crosses the wire.
pub async fn authenticate(client: &mut TcpStream, password: &str) -> Result<(), PgProxyError> {
    let mut offer = BytesMut::new();
    offer.put_i32(10);
    put_cstr(&mut offer, MECHANISM);
    offer.put_u8(0);
    write_message(client, b'R', &offer).await?;
    let initial = read_message_within(client, MAX_LOGIN_MESSAGE).await?;
    let mut body = &initial.body[..];
    let mechanism_end = body
        .iter()
        .position(|byte| *byte == 0)
        .unwrap_or(body.len());
    if initial.tag != b'p' || &body[..mechanism_end] != MECHANISM.as_bytes() {
        return Err(PgProxyError::Protocol(format!("expected {MECHANISM}")));
    }
    body = body.get(mechanism_end + 1 + 4..).unwrap_or_default();
    let scram = |err: ScramError| PgProxyError::Protocol(err.0);
    let mut server = ScramServer::new(password).map_err(scram)?;
    let server_first = server
        .first(&String::from_utf8_lossy(body))
        .map_err(scram)?;
    let mut next = BytesMut::new();
    next.put_i32(11);
    next.put_slice(server_first.as_bytes());
    write_message(client, b'R', &next).await?;
    let response = read_message_within(client, MAX_LOGIN_MESSAGE).await?;
    if response.tag != b'p' {
        return Err(PgProxyError::Protocol("expected a SASLResponse".to_owned()));
    }
    let server_final = server
        .last(&String::from_utf8_lossy(&response.body))
        .map_err(scram)?;
    let mut last = BytesMut::new();
    last.put_i32(12);
    last.put_slice(server_final.as_bytes());
    write_message(client, b'R', &last).await?;
    Ok(())
}

/// Sends a client's cancel request on to the server session it stands for.
async fn forward_cancel(
    shared: &Shared,
    process_id: i32,
    secret_key: i32,
) -> Result<(), PgProxyError> {
    let target = shared
        .cancel_keys
        .lock()
        .ok()
        .and_then(|keys| keys.get(&(process_id, secret_key)).cloned());
    let Some(target) = target else {
        // As the server does: an unknown key is ignored without a word.
        return Ok(());
    };
    cancel(&target).await
}

/// Sends a cancel request for the query running in `target`'s server session (a client's,
/// or tandem's own when a stage change's grace has run out).
///
/// # Errors
/// When the server cannot be reached.
pub async fn cancel(target: &CancelTarget) -> Result<(), PgProxyError> {
    let mut server = TcpStream::connect(&target.address).await?;
    server
        .write_all(&cancel_packet(target.process_id, target.secret_key))
        .await?;
    server.flush().await?;
    counter!("tandem_pg_cancels_total").increment(1);
    Ok(())
}

/// Tells the client why its session ends (best effort: it may be gone).
pub async fn refuse(client: &mut TcpStream, code: &str, message: &str) {
    let _ = write_message(client, b'E', &error_body("FATAL", code, message)).await;
    let _ = client.flush().await;
}
