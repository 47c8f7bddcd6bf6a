//! [`App`]: one Postwire instance. Tests build several side by side; the binary builds one.

use std::path::Path;
use std::sync::Arc;

use postwire_api_gateway::capacity::Capacity;
use postwire_api_gateway::renderer::Renderer;
use postwire_api_gateway::{smtp_in, Gateway};
use postwire_config::{Backend, Settings};
use postwire_domain_auth::domain_check::DomainChecker;
use postwire_mta_worker::MtaWorker;
use postwire_store::embedded::SqliteStore;
use postwire_store::sealing::{SealedDomains, Sealer};
use postwire_store::{Idempotency, Queue, RateLimiter, State, Suppressions};
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
    #[error("tracking key {path}")]
    TrackingKey {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} ({key})")]
    Listen {
        addr: std::net::SocketAddr,
        key: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("tracking.secret must be set with storage.backend = \"distributed\": every process must share it")]
    TrackingSecretRequired,
    #[error("HTTP server failed")]
    Http(#[source] std::io::Error),
    #[error("cannot start the SMTP listeners")]
    SmtpIn(#[from] postwire_api_gateway::smtp_in::SmtpInError),
}

/// The sockets a process serves on, bound by the caller ([`App::run`] binds them from the
/// settings; tests bind free ports).
#[derive(Default)]
pub struct Listeners {
    /// The HTTP API (`http.listen`).
    pub http: Option<TcpListener>,
    /// SMTP submission with STARTTLS (`submission.listen`).
    pub submission: Option<TcpListener>,
    /// SMTP submission over implicit TLS (`submission.tls_listen`).
    pub submission_tls: Option<TcpListener>,
    /// Reports to the bounce domain (`bounces.listen`, only with `bounces.domain` set).
    pub bounces: Option<TcpListener>,
    /// `sandbox.pop3_listen`.
    pub pop3: Option<TcpListener>,
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
    pub const API_GATEWAY: Roles =
        Roles { api_gateway: true, mta_worker: false, webhook_dispatcher: false };
    pub const MTA_WORKER: Roles =
        Roles { api_gateway: false, mta_worker: true, webhook_dispatcher: false };
    pub const WEBHOOK_DISPATCHER: Roles =
        Roles { api_gateway: false, mta_worker: false, webhook_dispatcher: true };
}

/// The queue/state backend chosen by `storage.backend`.
#[derive(Clone)]
pub struct Stores {
    pub queue: Arc<dyn Queue>,
    pub state: Arc<dyn State>,
    pub idempotency: Arc<dyn Idempotency>,
    pub suppressions: Arc<dyn Suppressions>,
    /// Webhook delivery logs, replay, enable/disable and the event pull API.
    pub webhook_log: Arc<dyn postwire_store::WebhookLog>,
    /// Message search and cancel (`GET /v1/messages`, `DELETE /v1/messages/{id}`).
    pub messages: Arc<dyn postwire_store::Messages>,
    /// Stored templates (`/v1/templates`).
    pub templates: Arc<dyn postwire_store::Templates>,
    /// Per-API-key rate limits: in process (embedded) or in Redis (distributed).
    pub rate_limiter: Arc<dyn RateLimiter>,
    /// Sending domains and their DKIM keys (`/v1/domains`), signed with by the workers.
    pub domains: Arc<dyn postwire_store::Domains>,
    /// Pruning under `storage.retention` and the store's size.
    pub retention: Arc<dyn postwire_store::Retention>,
    /// Seals secrets at rest under `storage.encryption_key` (the domains above already
    /// go through it).
    pub sealer: Arc<Sealer>,
    /// The signed copies workers keep (`/raw`, POP3).
    pub copies: Arc<dyn postwire_store::Copies>,
    /// POP3 deletion marks.
    pub pop_marks: Arc<dyn postwire_store::PopMarks>,
    /// The embedded store, which must be closed so its writer thread drains.
    sqlite: Option<SqliteStore>,
}

impl Stores {
    /// Opens the configured backend: SQLite under `storage.path`, or RabbitMQ + Redis.
    pub async fn open(settings: &Settings) -> Result<Stores, AppError> {
        let sealer = Arc::new(Sealer::new(settings.storage.encryption_key.bytes()));
        match settings.storage.backend {
            Backend::Embedded => {
                let store = SqliteStore::open(&settings.storage.path)?;
                Ok(Stores {
                    queue: Arc::new(store.clone()),
                    state: Arc::new(store.clone()),
                    idempotency: Arc::new(store.clone()),
                    suppressions: Arc::new(store.clone()),
                    webhook_log: Arc::new(store.clone()),
                    messages: Arc::new(store.clone()),
                    templates: Arc::new(store.clone()),
                    rate_limiter: Arc::new(postwire_store::embedded::LocalRateLimiter::new(
                        store.clone(),
                    )),
                    domains: Arc::new(SealedDomains::new(Arc::new(store.clone()), sealer.clone())),
                    retention: Arc::new(store.clone()),
                    sealer,
                    copies: Arc::new(store.clone()),
                    pop_marks: Arc::new(store.clone()),
                    sqlite: Some(store),
                })
            }
            Backend::Distributed => {
                let store = postwire_store::distributed::DistributedStore::connect(
                    &postwire_store::distributed::Options::from_settings(settings),
                )
                .await?;
                Ok(Stores {
                    queue: Arc::new(store.clone()),
                    state: Arc::new(store.clone()),
                    idempotency: Arc::new(store.clone()),
                    suppressions: Arc::new(store.clone()),
                    webhook_log: Arc::new(store.clone()),
                    messages: Arc::new(store.clone()),
                    templates: Arc::new(store.clone()),
                    rate_limiter: Arc::new(store.clone()),
                    domains: Arc::new(SealedDomains::new(Arc::new(store.clone()), sealer.clone())),
                    retention: Arc::new(store.clone()),
                    sealer,
                    copies: Arc::new(store.clone()),
                    pop_marks: Arc::new(store.clone()),
                    sqlite: None,
                })
            }
        }
    }

    /// Lets buffered writes finish (embedded) before the process exits.
    pub fn close(&self) {
        if let Some(s) = &self.sqlite {
            s.close();
        }
    }
}

/// A built Postwire instance: backend, metrics and the three services.
pub struct App {
    settings: Settings,
    stores: Stores,
    metrics: Metrics,
    tracking: TrackingKeys,
    worker: Arc<MtaWorker>,
    dispatcher: Arc<Dispatcher>,
    /// Live DNS checks for `/v1/domains`, on the configured resolver.
    domain_checker: DomainChecker,
    /// Where the gateway renders templates: in process unless [`App::with_renderer`] says so.
    renderer: Renderer,
    /// The gateway's in-flight slots (`limits.max_in_flight`), shared by every [`App::gateway`].
    capacity: Capacity,
}

/// Renders templates in memory-bounded children of the running binary
/// (`postwire render-template`).
pub fn isolated_renderer() -> std::io::Result<Renderer> {
    Ok(Renderer::isolated(std::env::current_exe()?, vec!["render-template".into()]))
}

impl App {
    /// Opens the backend and builds every service (nothing runs until [`App::run`]).
    pub async fn build(settings: Settings) -> Result<Self, AppError> {
        let stores = Stores::open(&settings).await?;
        let metrics = Metrics::new();
        let tracking = TrackingKeys::new(&tracking_secret(&settings)?);
        let worker = Arc::new(
            MtaWorker::new(&settings, stores.queue.clone(), metrics.clone(), tracking.clone())?
                .with_domain_keys(stores.domains.clone())
                .with_copies(stores.copies.clone()),
        );
        let dispatcher =
            Arc::new(Dispatcher::new(&settings, stores.state.clone(), metrics.clone()));
        let domain_checker =
            DomainChecker::from_settings(&settings.dns, &settings.smtp).map_err(|e| {
                AppError::Worker(postwire_mta_worker::WorkerError::Resolver(
                    postwire_mta_worker::resolve::ResolveError::Config(e),
                ))
            })?;
        let capacity = Capacity::from_limits(&settings.limits);
        Ok(Self {
            settings,
            stores,
            metrics,
            tracking,
            worker,
            dispatcher,
            domain_checker,
            renderer: Renderer::in_process(),
            capacity,
        })
    }

    /// Renders templates with `renderer` (the binary passes [`isolated_renderer`]).
    pub fn with_renderer(mut self, renderer: Renderer) -> Self {
        self.renderer = renderer;
        self
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn state(&self) -> &Arc<dyn State> {
        &self.stores.state
    }

    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.stores.queue
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
            queue: self.stores.queue.clone(),
            state: self.stores.state.clone(),
            idempotency: self.stores.idempotency.clone(),
            suppressions: self.stores.suppressions.clone(),
            webhook_log: self.stores.webhook_log.clone(),
            messages: self.stores.messages.clone(),
            templates: self.stores.templates.clone(),
            renderer: self.renderer.clone(),
            rate_limiter: self.stores.rate_limiter.clone(),
            domains: self.stores.domains.clone(),
            copies: self.stores.copies.clone(),
            pop_marks: self.stores.pop_marks.clone(),
            signing_keys: postwire_domain_auth::dkim_status::SigningKeys::new(
                &self.settings.dkim,
                self.stores.domains.clone(),
            ),
            require_dkim: self.settings.signing.require_dkim,
            domain_checker: self.domain_checker.clone(),
            metrics: self.metrics.clone(),
            tracking: self.tracking.clone(),
            limits: self.settings.limits.clone(),
            capacity: self.capacity.clone(),
            allow_private_targets: self.settings.webhooks.allow_private_targets,
            sealer: self.stores.sealer.clone(),
        }
    }

    /// Binds the SMTP listeners the settings ask for beside `http`: submission, and the
    /// bounce intake when `bounces.domain` is set (none when the process does not run the API
    /// gateway).
    pub async fn bind_listeners(
        &self,
        roles: Roles,
        http: Option<TcpListener>,
    ) -> Result<Listeners, AppError> {
        if !roles.api_gateway {
            return Ok(Listeners { http, ..Listeners::default() });
        }
        let sub = &self.settings.submission;
        let bounces = match self.settings.bounces.domain.trim() {
            "" => None,
            _ => bind(self.settings.bounces.listen.0, "bounces.listen").await?,
        };
        Ok(Listeners {
            http,
            submission: bind(sub.listen.0, "submission.listen").await?,
            submission_tls: bind(sub.tls_listen.0, "submission.tls_listen").await?,
            bounces,
            pop3: bind(self.settings.sandbox.pop3_listen.0, "sandbox.pop3_listen").await?,
        })
    }

    /// Runs the chosen services until `shutdown` fires, then waits for each to finish its
    /// in-flight work. `listener` serves the API when the gateway runs, beside the SMTP
    /// submission listeners of `[submission]`; processes without it serve `/metrics` and
    /// health on `telemetry.metrics_listen` when that is set.
    pub async fn run(
        self,
        roles: Roles,
        listener: Option<TcpListener>,
        shutdown: CancellationToken,
    ) -> Result<(), AppError> {
        let listeners = self.bind_listeners(roles, listener).await?;
        self.run_with(roles, listeners, shutdown).await
    }

    /// [`App::run`] on listeners the caller bound.
    pub async fn run_with(
        self,
        roles: Roles,
        listeners: Listeners,
        shutdown: CancellationToken,
    ) -> Result<(), AppError> {
        let listener = listeners.http;
        let ops_listener = match (roles.api_gateway, self.settings.telemetry.metrics_listen) {
            (false, Some(addr)) => Some(TcpListener::bind(addr).await.map_err(|source| {
                AppError::Listen { addr, key: "telemetry.metrics_listen", source }
            })?),
            _ => None,
        };
        let tasks = TaskTracker::new();
        // Every process prunes: a lone embedded one, and on Redis any of them (the batches of
        // several processes do not overlap in what they count).
        tasks.spawn(crate::pruner::run(
            self.stores.retention.clone(),
            self.settings.storage.retention.std(),
            self.metrics.clone(),
            shutdown.clone(),
        ));
        if roles.mta_worker {
            tasks.spawn(self.worker.clone().run(shutdown.clone()));
            tasks.spawn(crate::pruner::sweep(
                self.stores.queue.clone(),
                crate::pruner::overdue(self.settings.worker.lease.std()),
                shutdown.clone(),
            ));
        }
        if roles.webhook_dispatcher {
            tasks.spawn(self.dispatcher.clone().run(shutdown.clone()));
        }
        let smtp = [
            (listeners.submission, smtp_in::Listener::StartTls),
            (listeners.submission_tls, smtp_in::Listener::ImplicitTls),
            (listeners.bounces, smtp_in::Listener::Bounces),
        ];
        if roles.api_gateway && smtp.iter().any(|(l, _)| l.is_some()) {
            let server =
                Arc::new(smtp_in::SmtpServer::from_settings(self.gateway(), &self.settings)?);
            for (l, kind) in smtp {
                if let Some(l) = l {
                    if let Ok(addr) = l.local_addr() {
                        tracing::info!(%addr, listener = kind.label(), "smtp listening");
                    }
                    tasks.spawn(smtp_in::serve(server.clone(), l, kind, shutdown.clone()));
                }
            }
        }
        if let (true, Some(l)) = (roles.api_gateway, listeners.pop3) {
            let server = Arc::new(postwire_api_gateway::pop3::Pop3Server::from_settings(
                self.gateway(),
                &self.settings,
            )?);
            if let Ok(addr) = l.local_addr() {
                tracing::info!(%addr, "pop3 listening");
            }
            tasks.spawn(postwire_api_gateway::pop3::serve(server, l, shutdown.clone()));
        }
        tasks.close();
        let router = match (roles.api_gateway, listener, ops_listener) {
            (true, Some(l), _) => Some((l, postwire_api_gateway::router(self.gateway()))),
            (_, _, Some(l)) => Some((l, postwire_api_gateway::ops_router(self.gateway()))),
            _ => None,
        };
        let http = match router {
            Some((l, r)) => {
                let limits =
                    postwire_api_gateway::conn::ConnLimits::from_settings(&self.settings.http);
                postwire_api_gateway::serve_router(l, r, limits, shutdown.clone()).await
            }
            None => {
                shutdown.cancelled().await;
                Ok(())
            }
        };
        // Whatever ended the HTTP server, the other services stop too.
        shutdown.cancel();
        tasks.wait().await;
        self.stores.close();
        http.map_err(AppError::Http)
    }
}

async fn bind(
    addr: Option<std::net::SocketAddr>,
    key: &'static str,
) -> Result<Option<TcpListener>, AppError> {
    let Some(addr) = addr else { return Ok(None) };
    TcpListener::bind(addr).await.map(Some).map_err(|source| AppError::Listen { addr, key, source })
}

/// The tracking HMAC key: `tracking.secret`, or one generated once and kept in the store
/// directory so links in mail already sent stay valid across restarts.
fn tracking_secret(settings: &Settings) -> Result<Vec<u8>, AppError> {
    if !settings.tracking.secret.is_empty() {
        return Ok(settings.tracking.secret.expose().as_bytes().to_vec());
    }
    if settings.storage.backend == Backend::Distributed {
        // Workers sign links the gateway verifies: every process needs the same key.
        return Err(AppError::TrackingSecretRequired);
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
