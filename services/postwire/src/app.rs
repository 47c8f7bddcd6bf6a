//! [`App`]: one Postwire instance. Tests build several side by side; the binary builds one.

use std::path::Path;
use std::sync::Arc;

use postwire_api_gateway::Gateway;
use postwire_config::Settings;
use postwire_mta_worker::MtaWorker;
use postwire_store::embedded::SqliteStore;
use postwire_store::{Queue, State};
use postwire_telemetry::Metrics;
use postwire_tracking::TrackingKeys;
use postwire_webhook_dispatcher::Dispatcher;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] postwire_store::StoreError),
    #[error("cannot start the MTA worker: {0}")]
    Worker(#[from] postwire_mta_worker::WorkerError),
    #[error("tracking key {path}: {source}")]
    TrackingKey {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("storage.backend = \"distributed\" is not available in this build yet; use \"embedded\"")]
    DistributedUnavailable,
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
}

/// Which services a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api_gateway: bool,
    pub mta_worker: bool,
    pub webhook_dispatcher: bool,
}

impl Roles {
    pub const ALL: Roles = Roles { api_gateway: true, mta_worker: true, webhook_dispatcher: true };
}

/// A built Postwire instance: store, metrics and the three services.
pub struct App {
    settings: Settings,
    store: SqliteStore,
    metrics: Metrics,
    tracking: TrackingKeys,
    worker: Arc<MtaWorker>,
    dispatcher: Arc<Dispatcher>,
}

impl App {
    /// Opens the store and builds every service (nothing runs until [`App::run`]).
    pub fn build(settings: Settings) -> Result<Self, AppError> {
        if settings.storage.backend != postwire_config::Backend::Embedded {
            return Err(AppError::DistributedUnavailable);
        }
        let store = SqliteStore::open(&settings.storage.path)?;
        let metrics = Metrics::new();
        let tracking = TrackingKeys::new(&tracking_secret(&settings)?);
        let queue: Arc<dyn Queue> = Arc::new(store.clone());
        let state: Arc<dyn State> = Arc::new(store.clone());
        let worker = Arc::new(MtaWorker::new(&settings, queue, metrics.clone(), tracking.clone())?);
        let dispatcher = Arc::new(Dispatcher::new(&settings, state, metrics.clone()));
        Ok(Self { settings, store, metrics, tracking, worker, dispatcher })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn store(&self) -> &SqliteStore {
        &self.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn worker(&self) -> &Arc<MtaWorker> {
        &self.worker
    }

    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// The API gateway's shared state.
    pub fn gateway(&self) -> Gateway {
        Gateway {
            queue: Arc::new(self.store.clone()),
            state: Arc::new(self.store.clone()),
            metrics: self.metrics.clone(),
            tracking: self.tracking.clone(),
            limits: self.settings.limits.clone(),
            allow_private_targets: self.settings.webhooks.allow_private_targets,
        }
    }

    /// Runs the chosen services until `shutdown` fires, then waits for each to finish its
    /// in-flight work. `listener` is required when the API gateway runs.
    pub async fn run(self, roles: Roles, listener: Option<TcpListener>, shutdown: CancellationToken) -> Result<(), AppError> {
        let tasks = TaskTracker::new();
        if roles.mta_worker {
            tasks.spawn(self.worker.clone().run(shutdown.clone()));
        }
        if roles.webhook_dispatcher {
            tasks.spawn(self.dispatcher.clone().run(shutdown.clone()));
        }
        tasks.close();
        let http = match (roles.api_gateway, listener) {
            (true, Some(listener)) => postwire_api_gateway::serve(listener, self.gateway(), shutdown.clone()).await,
            _ => {
                shutdown.cancelled().await;
                Ok(())
            }
        };
        // Whatever ended the HTTP server, the other services stop too.
        shutdown.cancel();
        tasks.wait().await;
        self.store.close();
        http.map_err(AppError::Http)
    }
}

/// The tracking HMAC key: `tracking.secret`, or one generated once and kept in the store
/// directory so links in mail already sent stay valid across restarts.
fn tracking_secret(settings: &Settings) -> Result<Vec<u8>, AppError> {
    if !settings.tracking.secret.is_empty() {
        return Ok(settings.tracking.secret.expose().as_bytes().to_vec());
    }
    let path = settings.storage.path.join("tracking.key");
    let err = |source| AppError::TrackingKey { path: path.display().to_string(), source };
    match std::fs::read_to_string(&path) {
        Ok(hex_key) => Ok(hex_key.trim().as_bytes().to_vec()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = hex::encode(rand::random::<[u8; 32]>());
            write_private(&path, &key).map_err(err)?;
            Ok(key.into_bytes())
        }
        Err(e) => Err(err(e)),
    }
}

/// Writes a file readable only by its owner.
pub(crate) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)?.write_all(contents.as_bytes())
}
