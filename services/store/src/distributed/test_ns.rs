//! A namespace of its own on the local RabbitMQ and Redis for one test (`.ci/run` starts them;
//! override with `POSTWIRE_TEST_AMQP_URL` / `POSTWIRE_TEST_REDIS_URL`), deleted when the test
//! ends, even by a panic.

use std::time::Duration;

use super::{DistributedStore, Options};

pub(crate) struct TestNs {
    pub options: Options,
    pub store: DistributedStore,
}

impl TestNs {
    /// Drops every copy of every job from the deliveries queue, as a broker crash can.
    pub async fn lose_every_copy(&self) {
        let broker = self.store.broker().await.unwrap();
        let queue = self.store.inner.keys.deliveries_queue();
        let purge = lapin::options::QueuePurgeOptions::default();
        broker.publisher.queue_purge(&queue, purge).await.unwrap();
    }

    pub async fn new() -> Self {
        Self::with_retention(Options::new("", "", "").retention).await
    }

    /// A namespace whose messages are kept `retention` once finished.
    pub async fn with_retention(retention: Duration) -> Self {
        let env =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
        let ns = format!("pwtest_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let options = Options {
            op_timeout: Duration::from_secs(3),
            retention,
            ..Options::new(
                &env("POSTWIRE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
                &env("POSTWIRE_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
                &ns,
            )
        };
        let store = DistributedStore::connect(&options).await.expect("connect");
        Self { options, store }
    }

    /// Another connection to the same namespace: what a process on another machine has.
    pub async fn second_process(&self) -> DistributedStore {
        DistributedStore::connect(&self.options).await.expect("connect")
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let options = self.options.clone();
        // A fresh runtime on its own thread: the test's runtime may be gone or panicking.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(store) = DistributedStore::connect(&options).await {
                    let _ = store.destroy_namespace().await;
                }
            });
        })
        .join();
    }
}
