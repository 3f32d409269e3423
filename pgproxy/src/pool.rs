//! Session pooling of server connections: a client session (and its mirror session) takes an
//! idle connection that logged in with the same startup parameters, or opens one; when the
//! client leaves with the connection idle, it is reset with `DISCARD ALL` and kept for the
//! next session, for at most `idle_timeout`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::{connect, Backend, ServerAddress};
use crate::error::PgProxyError;
use crate::protocol::{read_message, write_message};

/// How many idle connections are kept, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// The most idle connections kept per side and set of startup parameters (0: none kept).
    pub max_idle: usize,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
    /// The most connections (in use and idle) per side, user and database.
    pub max_server_connections: usize,
}

/// How long a `DISCARD ALL` may take before the connection is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// Which connections can stand in for each other: the side's address and login, and every
/// startup parameter sent.
type PoolKey = (String, Vec<(String, String)>);

/// Idle server connections of both sides.
#[derive(Debug)]
pub struct ServerPool {
    settings: PoolSettings,
    idle: Mutex<HashMap<PoolKey, Vec<(Backend, Instant)>>>,
    /// Connection slots per server, user and database.
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl ServerPool {
    /// An empty pool.
    #[must_use]
    pub fn new(settings: PoolSettings) -> ServerPool {
        ServerPool {
            settings,
            idle: Mutex::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// A logged-in connection to `server` for a client that sent `parameters`: an idle one
    /// still open, or a new one.
    ///
    /// # Errors
    /// As [`connect`].
    pub async fn get(
        &self,
        server: &ServerAddress,
        parameters: &[(String, String)],
    ) -> Result<Backend, PgProxyError> {
        let key = key(server, parameters);
        while let Some(backend) = self.take(&key) {
            if backend.stream.is_quiet() {
                counter!("tandem_pg_server_connections_total", "side" => server.side.as_str(), "source" => "pool")
                    .increment(1);
                return Ok(backend);
            }
        }
        let slot = self.slot(server).await?;
        let mut backend = connect(server, parameters).await?;
        backend.slot = Some(slot);
        counter!("tandem_pg_server_connections_total", "side" => server.side.as_str(), "source" => "new")
            .increment(1);
        Ok(backend)
    }

    /// A slot for one more connection to `server`: a free one, or one an idle connection
    /// (kept for other startup parameters) gives back by being closed.
    ///
    /// # Errors
    /// [`PgProxyError::TooManyConnections`] when every slot is in use.
    async fn slot(&self, server: &ServerAddress) -> Result<OwnedSemaphorePermit, PgProxyError> {
        let name = server_key(server);
        let semaphore =
            match self.slots.lock() {
                Ok(mut slots) => Arc::clone(slots.entry(name.clone()).or_insert_with(|| {
                    Arc::new(Semaphore::new(self.settings.max_server_connections))
                })),
                Err(_) => Arc::new(Semaphore::new(self.settings.max_server_connections)),
            };
        loop {
            if let Ok(slot) = Arc::clone(&semaphore).try_acquire_owned() {
                return Ok(slot);
            }
            let idle = self.idle.lock().ok().and_then(|mut idle| {
                idle.iter_mut()
                    .filter(|(key, _)| key.0 == name)
                    .find_map(|(_, kept)| kept.pop())
            });
            match idle {
                Some((backend, _)) => close(backend).await,
                None => {
                    counter!("tandem_pg_server_connections_refused_total", "side" => server.side.as_str())
                        .increment(1);
                    return Err(PgProxyError::TooManyConnections {
                        side: server.side,
                        database: server.database.clone(),
                        limit: self.settings.max_server_connections,
                    });
                }
            }
        }
    }

    /// Gives back a connection whose session ended with it idle: it is reset and kept, or
    /// closed when the pool is full or the reset fails.
    pub async fn put(
        &self,
        server: &ServerAddress,
        parameters: &[(String, String)],
        mut backend: Backend,
    ) {
        let reset = tokio::time::timeout(RESET_TIMEOUT, reset(&mut backend)).await;
        if self.settings.max_idle == 0 || !matches!(reset, Ok(Ok(()))) {
            close(backend).await;
            return;
        }
        let key = key(server, parameters);
        let refused = {
            let Ok(mut idle) = self.idle.lock() else {
                return;
            };
            let now = Instant::now();
            prune(&mut idle, now, self.settings.idle_timeout);
            let kept = idle.entry(key).or_default();
            if kept.len() < self.settings.max_idle {
                kept.push((backend, now));
                None
            } else {
                Some(backend)
            }
        };
        if let Some(backend) = refused {
            close(backend).await;
        }
        self.publish();
    }

    /// Closes the connections kept longer than the idle timeout.
    pub async fn close_expired(&self) {
        let expired = {
            let Ok(mut idle) = self.idle.lock() else {
                return;
            };
            prune(&mut idle, Instant::now(), self.settings.idle_timeout)
        };
        for backend in expired {
            close(backend).await;
        }
        self.publish();
    }

    /// Closes every idle connection (at shutdown).
    pub async fn close_all(&self) {
        let all: Vec<Backend> = match self.idle.lock() {
            Ok(mut idle) => idle
                .drain()
                .flat_map(|(_, kept)| kept.into_iter().map(|(backend, _)| backend))
                .collect(),
            Err(_) => return,
        };
        for backend in all {
            close(backend).await;
        }
        self.publish();
    }

    /// An idle connection of `key`, the newest made on the caller's session thread first
    /// (its event loop then wakes the session without another thread), else the newest.
    fn take(&self, key: &PoolKey) -> Option<Backend> {
        let here = crate::event_loops::current();
        let taken = self.idle.lock().ok().and_then(|mut idle| {
            let kept = idle.get_mut(key)?;
            let at = kept
                .iter()
                .rposition(|(backend, _)| backend.event_loop == here)
                .unwrap_or(kept.len().checked_sub(1)?);
            let (backend, since) = kept.remove(at);
            (since.elapsed() < self.settings.idle_timeout).then_some(backend)
        });
        self.publish();
        taken
    }

    fn publish(&self) {
        if let Ok(idle) = self.idle.lock() {
            let count: usize = idle.values().map(Vec::len).sum();
            #[allow(clippy::cast_precision_loss)] // a count of connections
            gauge!("tandem_pg_pool_idle_connections").set(count as f64);
        }
    }
}

fn key(server: &ServerAddress, parameters: &[(String, String)]) -> PoolKey {
    let mut parameters = parameters.to_vec();
    parameters.sort();
    (server_key(server), parameters)
}

/// The server, user and database a connection is counted against.
fn server_key(server: &ServerAddress) -> String {
    format!("{}@{}/{}", server.user, server.address, server.database)
}

/// Takes the expired connections out of `idle`.
fn prune(
    idle: &mut HashMap<PoolKey, Vec<(Backend, Instant)>>,
    now: Instant,
    timeout: Duration,
) -> Vec<Backend> {
    let mut expired = Vec::new();
    for kept in idle.values_mut() {
        let (old, fresh): (Vec<_>, Vec<_>) = std::mem::take(kept)
            .into_iter()
            .partition(|(_, since)| now.duration_since(*since) >= timeout);
        *kept = fresh;
        expired.extend(old.into_iter().map(|(backend, _)| backend));
    }
    idle.retain(|_, kept| !kept.is_empty());
    expired
}

/// `DISCARD ALL` (session settings, prepared statements, temporary tables, advisory locks
/// gone), keeping the parameters the server reports as they change back.
async fn reset(backend: &mut Backend) -> Result<(), PgProxyError> {
    write_message(&mut backend.stream, b'Q', b"DISCARD ALL\0").await?;
    backend.stream.flush().await?;
    // Its own CommandComplete comes first: a ReadyForQuery before it answered something else.
    let (mut failed, mut discarded) = (false, false);
    loop {
        let message = read_message(&mut backend.stream).await?;
        match message.tag {
            b'S' => {
                let mut fields = message.body[..].split(|byte| *byte == 0);
                let name = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
                let value = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
                match backend
                    .parameters
                    .iter_mut()
                    .find(|(known, _)| *known == name)
                {
                    Some(known) => known.1 = value,
                    None => backend.parameters.push((name, value)),
                }
            }
            b'C' => discarded = message.body.starts_with(b"DISCARD ALL"),
            b'E' => failed = true,
            b'Z' if discarded && !failed && message.body.first() == Some(&b'I') => return Ok(()),
            b'Z' => {
                return Err(PgProxyError::Protocol(
                    "the connection could not be reset".to_owned(),
                ))
            }
            _ => {}
        }
    }
}

/// Ends a server session politely (Terminate, for a second at most); the server may
/// already be gone.
pub async fn close(backend: Backend) {
    close_stream(backend.stream).await;
}

/// Ends a server connection politely (Terminate, for a second at most).
pub async fn close_stream(mut stream: crate::stream::ServerStream) {
    let goodbye = async {
        let _ = write_message(&mut stream, b'X', &[]).await;
        let _ = stream.shutdown().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), goodbye).await;
}
