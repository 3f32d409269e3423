//! Async work run to its end from synchronous code inside a test's runtime (a `Drop` that
//! cleans up), where blocking on it in place would panic.

use std::future::Future;

/// Runs `work` on a runtime of its own, on a thread of its own, and waits for it: `None` when
/// it gave `None`, or the runtime could not be built, or the thread panicked.
pub fn run_apart<T, F>(work: impl FnOnce() -> F + Send + 'static) -> Option<T>
where
    T: Send + 'static,
    F: Future<Output = Option<T>>,
{
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(work())
    })
    .join()
    .ok()
    .flatten()
}
