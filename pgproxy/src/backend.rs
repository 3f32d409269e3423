//! Sessions with the servers: connecting as the side's URL says (TLS where its `sslmode`
//! asks), authenticating (trust, a password, MD5 or SCRAM-SHA-256), and the parameters the
//! server reports.

use bytes::{Buf, BufMut, BytesMut};
use tandem_control::{redact_url, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::PgProxyError;
use crate::protocol::{
    error_fields, put_cstr, read_message, ssl_request, startup_packet, write_message,
};
use crate::scram::{ScramClient, MECHANISM};
use crate::stream::ServerStream;
use crate::tls::{SslMode, TlsSettings};

/// Where and as whom one side is reached.
#[derive(Debug, Clone)]
pub struct ServerAddress {
    /// Which side.
    pub side: Side,
    /// `host:port`.
    pub address: String,
    /// The user to log in as.
    pub user: String,
    /// Its password, if any.
    pub password: Option<String>,
    /// The database.
    pub database: String,
    /// The host, as the certificate must name it.
    pub host: String,
    /// Whether and how the connection is encrypted.
    pub tls: TlsSettings,
}

impl ServerAddress {
    /// Parses a `postgres://user[:password]@host[:port][/database][?sslmode=…&sslrootcert=…]`
    /// URL.
    ///
    /// # Errors
    /// [`PgProxyError::InvalidUrl`] (showing the URL without its password).
    pub fn parse(side: Side, text: &str) -> Result<ServerAddress, PgProxyError> {
        let invalid = |reason: &str| PgProxyError::InvalidUrl {
            side,
            url: redact_url(text),
            reason: reason.to_owned(),
        };
        let url = url::Url::parse(text).map_err(|err| invalid(&err.to_string()))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(invalid("expected postgres://"));
        }
        let host = url.host_str().ok_or_else(|| invalid("no host"))?;
        let user = if url.username().is_empty() {
            "postgres".to_owned()
        } else {
            decode(url.username())
        };
        let database = url.path().trim_start_matches('/');
        let (mut mode, mut root_file) = (SslMode::Disable, None);
        for (name, value) in url.query_pairs() {
            match name.as_ref() {
                "sslmode" => mode = SslMode::parse(&value).map_err(|reason| invalid(&reason))?,
                "sslrootcert" => root_file = Some(value.into_owned()),
                other => {
                    return Err(invalid(&format!(
                        "unsupported parameter {other:?} (tandem takes sslmode and sslrootcert)"
                    )))
                }
            }
        }
        let tls =
            TlsSettings::new(mode, root_file.as_deref()).map_err(|reason| invalid(&reason))?;
        if mode != SslMode::Disable {
            TlsSettings::server_name(host).map_err(|reason| invalid(&reason))?;
        }
        Ok(ServerAddress {
            side,
            address: format!("{host}:{}", url.port().unwrap_or(5432)),
            database: if database.is_empty() {
                user.clone()
            } else {
                decode(database)
            },
            password: url.password().map(decode),
            user,
            host: host.to_owned(),
            tls,
        })
    }
}

fn decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map_or_else(|| text.to_owned(), |(_, value)| value.into_owned())
}

/// A logged-in session with one server, before any query.
#[derive(Debug)]
pub struct Backend {
    /// The connection.
    pub stream: ServerStream,
    /// `ParameterStatus` values the server reported (`server_version`, `TimeZone`, …).
    pub parameters: Vec<(String, String)>,
    /// The server's process id, for cancel requests.
    pub process_id: i32,
    /// The server's secret key, for cancel requests.
    pub secret_key: i32,
    /// Its place among the connections tandem may have to this server and database (given
    /// back when the connection is dropped).
    pub slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The session thread whose event loop it is registered with, if any
    /// ([`crate::event_loops::current`]): the pool gives it to a session there first.
    pub event_loop: Option<usize>,
}

/// How long connecting and logging in to a server may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connects to `server` and logs in, passing `client_parameters` (e.g. `application_name`)
/// on; returns once the server is ready for queries.
///
/// # Errors
/// [`PgProxyError::Server`] when the server is unreachable, refuses the session, or has not
/// let it in within 10 s.
pub async fn connect(
    server: &ServerAddress,
    client_parameters: &[(String, String)],
) -> Result<Backend, PgProxyError> {
    tokio::time::timeout(CONNECT_TIMEOUT, log_in(server, client_parameters))
        .await
        .map_err(|_| PgProxyError::Server {
            side: server.side,
            reason: format!("no session within {CONNECT_TIMEOUT:?}"),
        })?
}

/// [`connect`], without its time limit.
async fn log_in(
    server: &ServerAddress,
    client_parameters: &[(String, String)],
) -> Result<Backend, PgProxyError> {
    let refused = |reason: String| PgProxyError::Server {
        side: server.side,
        reason,
    };
    let tcp = TcpStream::connect(&server.address)
        .await
        .map_err(|err| refused(format!("cannot connect to {}: {err}", server.address)))?;
    tcp.set_nodelay(true)?;
    let mut stream = encrypt(server, tcp).await?;
    let mut parameters = vec![
        ("user", server.user.as_str()),
        ("database", server.database.as_str()),
    ];
    parameters.extend(
        client_parameters
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "user" | "database"))
            .map(|(name, value)| (name.as_str(), value.as_str())),
    );
    stream.write_all(&startup_packet(&parameters)).await?;
    stream.flush().await?;
    let (mut reported, mut key) = (Vec::new(), (0, 0));
    loop {
        let mut message = read_message(&mut stream).await?;
        match message.tag {
            b'R' => match message.body.get_i32() {
                0 => {}
                3 => {
                    let password = server.password.as_deref().ok_or_else(|| {
                        refused("asks for a password and the URL has none".to_owned())
                    })?;
                    let mut body = password.as_bytes().to_vec();
                    body.push(0);
                    write_message(&mut stream, b'p', &body).await?;
                    stream.flush().await?;
                }
                5 if message.body.len() >= 4 => {
                    let password = server.password.as_deref().ok_or_else(|| {
                        refused("asks for a password and the URL has none".to_owned())
                    })?;
                    let salt = [
                        message.body[0],
                        message.body[1],
                        message.body[2],
                        message.body[3],
                    ];
                    let mut body = md5_password(&server.user, password, salt).into_bytes();
                    body.push(0);
                    write_message(&mut stream, b'p', &body).await?;
                    stream.flush().await?;
                }
                10 => {
                    let password = server.password.as_deref().ok_or_else(|| {
                        refused("asks for a password and the URL has none".to_owned())
                    })?;
                    scram_login(&mut stream, password)
                        .await
                        .map_err(|err| refused(format!("SCRAM-SHA-256 login failed: {err}")))?;
                }
                other => {
                    return Err(refused(format!(
                        "asks for an authentication method tandem does not speak (code {other}); \
                         use trust, password, md5 or scram-sha-256"
                    )))
                }
            },
            b'S' => {
                let mut fields = message.body[..].split(|byte| *byte == 0);
                let name = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
                let value = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
                reported.push((name, value));
            }
            b'K' if message.body.len() >= 8 => {
                key = (message.body.get_i32(), message.body.get_i32())
            }
            b'Z' => {
                return Ok(Backend {
                    stream,
                    parameters: reported,
                    process_id: key.0,
                    secret_key: key.1,
                    slot: None,
                    event_loop: crate::event_loops::current(),
                })
            }
            b'E' => {
                let (code, text) = error_fields(&message.body);
                return Err(refused(format!("{text} (SQLSTATE {code})")));
            }
            b'N' => {}
            other => {
                return Err(PgProxyError::Protocol(format!(
                    "unexpected {:?} message while logging in to the {} side",
                    other as char, server.side
                )))
            }
        }
    }
}

/// The answer to an MD5 password request: `md5` and the hex digest of the hex digest of
/// password and user, salted.
fn md5_password(user: &str, password: &str, salt: [u8; 4]) -> String {
    use md5::{Digest, Md5};
    let hex = |digest: &[u8]| {
        digest
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    };
    let inner = hex(&Md5::new()
        .chain_update(password)
        .chain_update(user)
        .finalize());
    let outer = hex(&Md5::new().chain_update(inner).chain_update(salt).finalize());
    format!("md5{outer}")
}

/// Asks for TLS when the side's `sslmode` wants it and shakes hands; plain TCP otherwise.
async fn encrypt(server: &ServerAddress, mut tcp: TcpStream) -> Result<ServerStream, PgProxyError> {
    let Some(config) = server.tls.config.clone() else {
        return Ok(ServerStream::Plain(tcp));
    };
    let refused = |reason: String| PgProxyError::Server {
        side: server.side,
        reason,
    };
    tcp.write_all(&ssl_request()).await?;
    match tcp.read_u8().await? {
        b'S' => {}
        b'N' if server.tls.mode == SslMode::Prefer => return Ok(ServerStream::Plain(tcp)),
        b'N' => {
            return Err(refused(
                "does not accept TLS, and the URL's sslmode requires it".to_owned(),
            ))
        }
        other => {
            return Err(PgProxyError::Protocol(format!(
                "unexpected answer {:?} to an SSLRequest from the {} side",
                other as char, server.side
            )))
        }
    }
    let name = TlsSettings::server_name(&server.host).map_err(refused)?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|err| refused(format!("TLS handshake failed: {err}")))?;
    Ok(ServerStream::Tls(Box::new(tls)))
}

/// Logs in with SCRAM-SHA-256 once the server offered it; returns after the server proved it
/// knows the password too (its AuthenticationOk follows).
async fn scram_login(stream: &mut ServerStream, password: &str) -> Result<(), PgProxyError> {
    let protocol = |reason: String| PgProxyError::Protocol(reason);
    let mut client = ScramClient::new(password).map_err(|err| protocol(err.0))?;
    let first = client.first();
    let mut body = BytesMut::new();
    put_cstr(&mut body, MECHANISM);
    body.put_i32(i32::try_from(first.len()).unwrap_or(i32::MAX));
    body.put_slice(first.as_bytes());
    write_message(stream, b'p', &body).await?;
    stream.flush().await?;
    let mut answer = read_message(stream).await?;
    if answer.tag != b'R' || answer.body.len() < 4 || answer.body.get_i32() != 11 {
        return Err(protocol("expected SASLContinue".to_owned()));
    }
    let last = client
        .last(&String::from_utf8_lossy(&answer.body))
        .map_err(|err| protocol(err.0))?;
    write_message(stream, b'p', last.as_bytes()).await?;
    stream.flush().await?;
    let mut answer = read_message(stream).await?;
    if answer.tag == b'E' {
        let (code, text) = error_fields(&answer.body);
        return Err(protocol(format!("{text} (SQLSTATE {code})")));
    }
    if answer.tag != b'R' || answer.body.len() < 4 || answer.body.get_i32() != 12 {
        return Err(protocol("expected SASLFinal".to_owned()));
    }
    client
        .verify(&String::from_utf8_lossy(&answer.body))
        .map_err(|err| protocol(err.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_answers_are_salted_digests_of_password_and_user() {
        // md5(hex(md5("secret" + "ann")) + salt), as the server computes it.
        assert_eq!(
            md5_password("ann", "secret", [1, 2, 3, 4]),
            "md59009ce60b9ca97f1e752376843d1309e"
        );
    }

    #[test]
    fn urls_name_the_server_and_the_login() {
        let server =
            ServerAddress::parse(Side::Old, "postgres://ann:p%40ss@db.local:6432/shop").unwrap();
        assert_eq!(
            (
                server.address.as_str(),
                server.user.as_str(),
                server.password.as_deref(),
                server.database.as_str()
            ),
            ("db.local:6432", "ann", Some("p@ss"), "shop")
        );
        let bare = ServerAddress::parse(Side::New, "postgres://127.0.0.1").unwrap();
        assert_eq!(
            (
                bare.user.as_str(),
                bare.database.as_str(),
                bare.address.as_str()
            ),
            ("postgres", "postgres", "127.0.0.1:5432")
        );
        let err = ServerAddress::parse(Side::Old, "mysql://root:hunter2@x/db").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
