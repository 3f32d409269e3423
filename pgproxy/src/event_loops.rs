//! The threads sessions are served on: each runs a single-threaded tokio runtime of its own
//! (its own epoll and timers), and a session stays on the one it was given from login to end.
//!
//! A relay is one wake-up per message each way. On the work-stealing runtime every such
//! wake-up also woke a second worker to look for work (a futex wake and a context switch,
//! about three per TPC-B transaction), which cost about a fifth more CPU per transaction than
//! serving everything on one thread (docs/benchmarks.md, "Sessions on event loops of their
//! own"). Here a session's wake-ups stay on its thread; several threads serve many sessions
//! as several poolers side by side would. What the sessions share (the stage, the capture's
//! status, the server pool, the control store) is thread-safe and rarely wakes across threads.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// The index of the session thread this is, on one.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the session thread the caller runs on (`None` off them): a connection made
/// here is registered with this thread's event loop.
pub(crate) fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

/// One thread and its runtime.
#[derive(Debug)]
struct EventLoop {
    handle: Handle,
    /// Dropped to end the thread (its runtime is dropped there, outside any async context).
    _stop: oneshot::Sender<()>,
}

/// The session threads, given sessions in turn.
#[derive(Debug)]
pub(crate) struct EventLoops {
    loops: Vec<EventLoop>,
    next: AtomicUsize,
}

impl EventLoops {
    /// Starts `threads` threads (at least one), each running a runtime until the loops are
    /// dropped.
    ///
    /// # Errors
    /// When a runtime or a thread cannot be started.
    pub(crate) fn start(threads: usize) -> std::io::Result<Self> {
        let loops = (0..threads.max(1))
            .map(|index| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let handle = runtime.handle().clone();
                let (stop, stopped) = oneshot::channel::<()>();
                std::thread::Builder::new()
                    .name(format!("tandem-sessions-{index}"))
                    .spawn(move || {
                        CURRENT.with(|current| current.set(Some(index)));
                        runtime.block_on(async {
                            // Either a send or the sender dropped: both end the loop.
                            let _ = stopped.await;
                        });
                    })?;
                Ok(EventLoop {
                    handle,
                    _stop: stop,
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            loops,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `future` on the next thread in turn.
    pub(crate) fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let at = self.next.fetch_add(1, Ordering::Relaxed) % self.loops.len();
        drop(self.loops[at].handle.spawn(future));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn futures_are_spread_over_every_thread_and_each_runs_on_one() {
        let loops = EventLoops::start(3).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (done, mut finished) = tokio::sync::mpsc::channel(6);
        for _ in 0..6 {
            let (seen, done) = (Arc::clone(&seen), done.clone());
            loops.spawn(async move {
                let before = std::thread::current().id();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                tokio::task::yield_now().await;
                assert_eq!(before, std::thread::current().id());
                seen.lock().unwrap().push(before);
                done.send(()).await.unwrap();
            });
        }
        drop(done);
        for _ in 0..6 {
            finished.recv().await.unwrap();
        }
        let threads: HashSet<_> = seen.lock().unwrap().iter().copied().collect();
        assert_eq!(threads.len(), 3);
        assert!(!threads.contains(&std::thread::current().id()));
        assert_eq!(current(), None, "off the session threads");
        let (told, indexes) = tokio::sync::mpsc::channel(3);
        for _ in 0..3 {
            let told = told.clone();
            loops.spawn(async move {
                told.send(current()).await.unwrap();
            });
        }
        drop(told);
        let mut indexes = indexes;
        let mut seen = Vec::new();
        while let Some(index) = indexes.recv().await {
            seen.push(index);
        }
        seen.sort_unstable();
        assert_eq!(seen, [Some(0), Some(1), Some(2)]);
    }

    #[tokio::test]
    async fn zero_threads_means_one() {
        let loops = EventLoops::start(0).unwrap();
        let (done, finished) = oneshot::channel();
        loops.spawn(async move {
            done.send(()).unwrap();
        });
        finished.await.unwrap();
    }
}
