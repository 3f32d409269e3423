//! Propagation of stage changes to running processes: LISTEN/NOTIFY on PostgreSQL, polling always.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::applied::StoreReachability;
use crate::error::ControlError;
use crate::store::{Backend, ControlStore, StageRecord};

/// The PostgreSQL channel a stage change is announced on (see the control-plane migration).
pub const STAGE_CHANNEL: &str = "tandem_stage";

/// How long to wait before trying to LISTEN again after the listener failed.
const LISTEN_RETRY: Duration = Duration::from_secs(5);

/// The stage in force, kept current by a background task.
#[derive(Debug, Clone)]
pub struct StageWatch {
    receiver: watch::Receiver<StageRecord>,
    store_reachable: Arc<AtomicBool>,
}

impl StageWatch {
    /// Loads the current stage and starts the task that follows its changes until `shutdown`.
    ///
    /// The task re-reads the stage every `poll_interval`, and at once when PostgreSQL
    /// announces a change.
    ///
    /// # Errors
    /// When the current stage cannot be loaded.
    pub async fn start(
        store: ControlStore,
        poll_interval: Duration,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<StageWatch, ControlError> {
        // LISTEN before loading the stage, so that no change falls between the two.
        let listener = match store.backend() {
            Backend::Postgres => listen(&store).await,
            Backend::Sqlite => None,
        };
        let initial = store.current_stage().await?;
        let (sender, receiver) = watch::channel(initial);
        let store_reachable = Arc::new(AtomicBool::new(true));
        StoreReachability(true).emit();
        let follower = StageFollower {
            store,
            poll_interval,
            sender,
            store_reachable: Arc::clone(&store_reachable),
        };
        tracker.spawn(follower.run(listener, shutdown));
        Ok(StageWatch {
            receiver,
            store_reachable,
        })
    }

    /// The stage record in force now.
    #[must_use]
    pub fn current(&self) -> StageRecord {
        self.receiver.borrow().clone()
    }

    /// A receiver that is notified of every change.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<StageRecord> {
        self.receiver.clone()
    }

    /// Whether the last read of the store succeeded.
    #[must_use]
    pub fn store_reachable(&self) -> bool {
        self.store_reachable.load(Ordering::Relaxed)
    }
}

/// How long a stage read (or opening the listener) may take before the store counts as
/// unreachable: `/readyz` says so within this and the poll interval.
const STORE_ANSWER: Duration = Duration::from_secs(2);

struct StageFollower {
    store: ControlStore,
    poll_interval: Duration,
    sender: watch::Sender<StageRecord>,
    store_reachable: Arc<AtomicBool>,
}

impl StageFollower {
    async fn run(self, mut listener: Option<PgListener>, shutdown: CancellationToken) {
        let mut next_listen_attempt = Instant::now() + LISTEN_RETRY;
        loop {
            if self.store.backend() == Backend::Postgres
                && listener.is_none()
                && Instant::now() >= next_listen_attempt
            {
                listener = tokio::time::timeout(STORE_ANSWER, listen(&self.store))
                    .await
                    .ok()
                    .flatten();
                next_listen_attempt = Instant::now() + LISTEN_RETRY;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = sleep(self.poll_interval) => {}
                notified = recv_optional(listener.as_mut()) => {
                    if let Err(err) = notified {
                        tracing::warn!(error = %err, "stage listener lost; polling until it is back");
                        listener = None;
                    }
                }
            }
            self.refresh().await;
        }
    }

    async fn refresh(&self) {
        let read = tokio::time::timeout(STORE_ANSWER, self.store.current_stage())
            .await
            .unwrap_or_else(|_| {
                Err(ControlError::Unavailable(format!(
                    "no answer within {}s",
                    STORE_ANSWER.as_secs()
                )))
            });
        match read {
            Ok(record) => {
                if !self.store_reachable.swap(true, Ordering::Relaxed) {
                    StoreReachability(true).emit();
                    tracing::info!("control store reachable again");
                }
                self.sender.send_if_modified(|current| {
                    let changed = current.id != record.id;
                    if changed {
                        *current = record;
                    }
                    changed
                });
            }
            Err(err) => {
                if self.store_reachable.swap(false, Ordering::Relaxed) {
                    StoreReachability(false).emit();
                    tracing::warn!(error = %err, "control store unreachable; keeping the last stage");
                }
            }
        }
    }
}

async fn listen(store: &ControlStore) -> Option<PgListener> {
    let attempt = async {
        let mut listener = PgListener::connect(store.url()).await?;
        listener.listen(STAGE_CHANNEL).await?;
        Ok::<_, sqlx::Error>(listener)
    };
    match attempt.await {
        Ok(listener) => Some(listener),
        Err(err) => {
            tracing::warn!(
                store = %store.redacted_url(),
                error = %err,
                "cannot LISTEN for stage changes; polling instead"
            );
            None
        }
    }
}

async fn recv_optional(listener: Option<&mut PgListener>) -> Result<(), sqlx::Error> {
    match listener {
        Some(listener) => listener.recv().await.map(drop),
        None => std::future::pending().await,
    }
}
