//! Streams on the machine's NATS server (JetStream), one per test.

/// The machine's NATS server with JetStream.
pub const NATS: &str = "nats://127.0.0.1:4222";

/// A JetStream stream name no other test uses; on drop the stream and its lease bucket
/// (`{name}_leases`, the shared journal's) are deleted.
pub struct ScratchStream(String);

impl ScratchStream {
    /// A fresh name starting with `prefix` (stream names allow letters and digits).
    #[must_use]
    pub fn new(prefix: &str) -> ScratchStream {
        ScratchStream(format!("{prefix}{}", uuid::Uuid::new_v4().simple()))
    }

    /// The stream's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl Drop for ScratchStream {
    fn drop(&mut self) {
        let name = self.0.clone();
        // Drop may run inside a test's runtime: delete from a thread of its own.
        let deleted = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Runtime::new() else {
                return;
            };
            runtime.block_on(async move {
                let Ok(client) = async_nats::connect(NATS).await else {
                    return;
                };
                let jetstream = async_nats::jetstream::new(client);
                let _ = jetstream.delete_stream(&name).await;
                let _ = jetstream.delete_stream(format!("{name}_leases")).await;
                let _ = jetstream.delete_stream(format!("{name}_parked")).await;
            });
        })
        .join();
        drop(deleted);
    }
}
