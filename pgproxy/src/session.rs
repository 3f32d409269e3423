//! One client session: its startup (TLS refused, cancel requests forwarded), its login, and
//! the relay to the side that is authoritative when it starts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, BytesMut};
use metrics::{counter, gauge};
use tandem_control::{Side, StageWatch};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::backend::{connect, ServerAddress};
use crate::error::PgProxyError;
use crate::protocol::{
    cancel_packet, error_body, put_cstr, read_message, read_startup, write_message, Startup,
};
use crate::scram::{ScramError, ScramServer, MECHANISM};

/// What every session shares.
#[derive(Debug)]
pub struct Shared {
    /// The old side's server.
    pub old: ServerAddress,
    /// The new side's server.
    pub new: ServerAddress,
    /// The stage in force.
    pub stage: StageWatch,
    /// The cancel keys tandem gave its clients, mapped to the server session they stand for.
    pub cancel_keys: Mutex<HashMap<(i32, i32), CancelTarget>>,
}

/// Where a client's cancel request goes.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    address: String,
    process_id: i32,
    secret_key: i32,
}

impl Shared {
    fn server(&self, side: Side) -> &ServerAddress {
        match side {
            Side::Old => &self.old,
            Side::New => &self.new,
        }
    }
}

/// Serves one client connection to its end.
///
/// # Errors
/// When the client breaks the protocol (it is told, with SQLSTATE 08P01), cannot log in, or a
/// connection fails.
pub async fn serve(mut client: TcpStream, shared: Arc<Shared>) -> Result<(), PgProxyError> {
    client.set_nodelay(true)?;
    let parameters = loop {
        match read_startup(&mut client).await {
            Ok(Startup::Ssl | Startup::GssEnc) => client.write_all(b"N").await?,
            Ok(Startup::Cancel {
                process_id,
                secret_key,
            }) => return forward_cancel(&shared, process_id, secret_key).await,
            Ok(Startup::Session(parameters)) => break parameters,
            Err(err @ PgProxyError::Protocol(_)) => {
                refuse(&mut client, "08P01", &err.to_string()).await;
                return Err(err);
            }
            Err(err) => return Err(err),
        }
    };
    let parameter = |name: &str| {
        parameters
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let user = parameter("user").unwrap_or_default().to_owned();
    if user != shared.old.user {
        let message = format!(
            "tandem accepts the user of the old side's URL ({}), not {user:?}",
            shared.old.user
        );
        refuse(&mut client, "28000", &message).await;
        return Err(PgProxyError::Protocol(message));
    }
    if let Some(password) = &shared.old.password {
        if let Err(reason) = authenticate(&mut client, password).await {
            let message = format!("password authentication failed for user {user:?}: {reason}");
            refuse(&mut client, "28P01", &message).await;
            return Err(PgProxyError::Protocol(message));
        }
    }
    let side = shared.stage.current().stage.authoritative();
    let backend = match connect(shared.server(side), &parameters).await {
        Ok(backend) => backend,
        Err(err) => {
            refuse(&mut client, "08006", &err.to_string()).await;
            return Err(err);
        }
    };
    write_message(&mut client, b'R', &0i32.to_be_bytes()).await?;
    for (name, value) in &backend.parameters {
        let mut body = BytesMut::new();
        put_cstr(&mut body, name);
        put_cstr(&mut body, value);
        write_message(&mut client, b'S', &body).await?;
    }
    let key = (fastrand::i32(1..), fastrand::i32(..));
    let mut body = BytesMut::with_capacity(8);
    body.put_i32(key.0);
    body.put_i32(key.1);
    write_message(&mut client, b'K', &body).await?;
    write_message(&mut client, b'Z', b"I").await?;
    if let Ok(mut keys) = shared.cancel_keys.lock() {
        keys.insert(
            key,
            CancelTarget {
                address: shared.server(side).address.clone(),
                process_id: backend.process_id,
                secret_key: backend.secret_key,
            },
        );
    }
    counter!("tandem_pg_sessions_total", "side" => side.as_str()).increment(1);
    gauge!("tandem_pg_sessions_active").increment(1.0);
    tracing::debug!(%side, user, "session relayed");
    let mut server = backend.stream;
    let relayed = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    gauge!("tandem_pg_sessions_active").decrement(1.0);
    if let Ok(mut keys) = shared.cancel_keys.lock() {
        keys.remove(&key);
    }
    relayed.map(drop).map_err(PgProxyError::from)
}

/// Checks the client's password with SCRAM-SHA-256 (AuthenticationSASL, SASLContinue,
/// SASLFinal); the password itself never crosses the wire.
async fn authenticate(client: &mut TcpStream, password: &str) -> Result<(), PgProxyError> {
    let mut offer = BytesMut::new();
    offer.put_i32(10);
    put_cstr(&mut offer, MECHANISM);
    offer.put_u8(0);
    write_message(client, b'R', &offer).await?;
    let initial = read_message(client).await?;
    let mut body = &initial.body[..];
    let mechanism_end = body
        .iter()
        .position(|byte| *byte == 0)
        .unwrap_or(body.len());
    if initial.tag != b'p' || &body[..mechanism_end] != MECHANISM.as_bytes() {
        return Err(PgProxyError::Protocol(format!("expected {MECHANISM}")));
    }
    body = body.get(mechanism_end + 1 + 4..).unwrap_or_default();
    let mut server = ScramServer::new(password);
    let scram = |err: ScramError| PgProxyError::Protocol(err.0);
    let server_first = server
        .first(&String::from_utf8_lossy(body))
        .map_err(scram)?;
    let mut next = BytesMut::new();
    next.put_i32(11);
    next.put_slice(server_first.as_bytes());
    write_message(client, b'R', &next).await?;
    let response = read_message(client).await?;
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
    let mut server = TcpStream::connect(&target.address).await?;
    server
        .write_all(&cancel_packet(target.process_id, target.secret_key))
        .await?;
    counter!("tandem_pg_cancels_total").increment(1);
    Ok(())
}

/// Tells the client why its session ends (best effort: it may be gone).
async fn refuse(client: &mut TcpStream, code: &str, message: &str) {
    let _ = write_message(client, b'E', &error_body("FATAL", code, message)).await;
    let _ = client.flush().await;
}
