//! `spawn_app`: a real Postwire `App` on loopback, wired to a test DNS server and SMTP port,
//! with an admin API key and helpers per endpoint, so tests read like a user's session.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use postwire::app::{App, Listeners, Roles};
use postwire_config::Settings;
use postwire_store::{ids, NewApiKey, State};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::dns::DnsServer;

/// Settings for a test app: everything on loopback, short retry delays, private webhook
/// targets allowed (the receiver is on 127.0.0.1), and rate limits far above what any test
/// sends (the rate-limit tests set low ones themselves).
pub fn test_settings(dir: &std::path::Path, dns: SocketAddr, smtp_port: u16) -> Settings {
    let mut s = postwire_config::load_from_str(
        r#"
        [smtp]
        helo_name = "mta.postwire.test"
        connect_timeout = "3s"
        command_timeout = "5s"
        data_timeout = "5s"
        [retry]
        schedule = ["1s"]
        max_age = "1h"
        [worker]
        concurrency = 8
        lease = "30s"
        [webhooks]
        allow_private_targets = true
        retry_schedule = ["200ms", "400ms", "800ms"]
        timeout = "3s"
        [tracking]
        secret = "test-tracking-secret"
        [dns]
        timeout = "2s"
        [limits]
        per_key_per_second = 1000000
        per_key_per_day = 100000000
        "#,
    )
    .expect("test settings parse");
    s.storage.path = dir.to_path_buf();
    if let Some(backend) = distributed_backend() {
        s.storage.backend = backend;
        // Each app gets its own Redis keys and queues on the shared servers.
        s.storage.namespace = format!("pwtest-{:016x}", rand::random::<u64>());
    }
    s.dns.nameservers = vec![dns];
    s.smtp.port = smtp_port;
    s
}

/// The backend under test: `POSTWIRE_TEST_BACKEND=distributed` runs the whole suite on
/// RabbitMQ + Redis (at the default URLs, or `POSTWIRE__AMQP__URL` / `POSTWIRE__REDIS__URL`);
/// unset or `embedded` runs it on SQLite.
pub fn distributed_backend() -> Option<postwire_config::Backend> {
    match std::env::var("POSTWIRE_TEST_BACKEND").as_deref() {
        Ok("distributed") => Some(postwire_config::Backend::Distributed),
        Ok("embedded") | Err(_) => None,
        Ok(other) => panic!("POSTWIRE_TEST_BACKEND={other}: expected `embedded` or `distributed`"),
    }
}

/// A running app and a client for it.
pub struct TestApp {
    pub base: String,
    pub addr: SocketAddr,
    /// SMTP submission with STARTTLS (`submission.listen`), on a free port.
    pub submission_addr: SocketAddr,
    /// SMTP submission over implicit TLS (`submission.tls_listen`), on a free port.
    pub submission_tls_addr: SocketAddr,
    /// The bounce listener, when `bounces.domain` is set.
    pub bounces_addr: Option<SocketAddr>,
    /// The sandbox POP3 listener (`sandbox.pop3_listen`), on a free port.
    pub pop3_addr: SocketAddr,
    /// An API key with every scope.
    pub key: String,
    pub client: reqwest::Client,
    pub settings: Settings,
    /// The app's state backend, for tests that act as an operator (e.g. revoking a key).
    pub state: std::sync::Arc<dyn State>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TestApp {
    /// Builds and starts an app with `settings` (its `http.listen` is ignored: a free port is used).
    pub async fn start(mut settings: Settings) -> anyhow::Result<TestApp> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let base = format!("http://{addr}");
        settings.http.listen = addr;
        settings.http.public_url = base.clone();
        // Templates render in the real binary's bounded children, as in production.
        let renderer = postwire_api_gateway::renderer::Renderer::isolated(
            crate::process::postwire_bin(),
            vec!["render-template".into()],
        );
        let app =
            App::build(settings.clone()).await.context("building the app")?.with_renderer(renderer);
        let minted = ids::mint_api_key();
        app.state()
            .create_api_key(NewApiKey {
                id: minted.id.clone(),
                name: "test".into(),
                hash: minted.hash,
                scopes: postwire_store::SCOPES.map(String::from).to_vec(),
                created_at: Utc::now(),
                sandbox: false,
            })
            .await?;
        let state = app.state().clone();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let submission = TcpListener::bind("127.0.0.1:0").await?;
        let submission_tls = TcpListener::bind("127.0.0.1:0").await?;
        let (submission_addr, submission_tls_addr) =
            (submission.local_addr()?, submission_tls.local_addr()?);
        let bounces = match !settings.bounces.domain.is_empty() {
            true => Some(TcpListener::bind("127.0.0.1:0").await?),
            false => None,
        };
        let bounces_addr = bounces.as_ref().map(|l| l.local_addr()).transpose()?;
        let pop3 = TcpListener::bind("127.0.0.1:0").await?;
        let pop3_addr = pop3.local_addr()?;
        let listeners = Listeners {
            http: Some(listener),
            submission: Some(submission),
            submission_tls: Some(submission_tls),
            bounces,
            pop3: Some(pop3),
        };
        let task = tokio::spawn(async move {
            if let Err(e) = app.run_with(Roles::ALL, listeners, token).await {
                eprintln!("test app stopped with an error: {e}");
            }
        });
        let client =
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
        Ok(TestApp {
            base,
            addr,
            submission_addr,
            submission_tls_addr,
            bounces_addr,
            pop3_addr,
            key: minted.key,
            client,
            settings,
            state,
            shutdown,
            task: Some(task),
        })
    }

    /// Stops every service and waits for in-flight work to finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /v1/messages` with this app's key.
    pub async fn send(&self, body: &Value) -> anyhow::Result<(u16, Value)> {
        let r = self
            .client
            .post(self.url("/v1/messages"))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// `POST /v1/messages`, expecting 202; returns the message id.
    pub async fn send_ok(&self, body: &Value) -> anyhow::Result<String> {
        let (status, json) = self.send(body).await?;
        anyhow::ensure!(status == 202, "expected 202, got {status}: {json}");
        Ok(json["id"].as_str().context("id in 202 body")?.to_string())
    }

    /// `GET /v1/messages/{id}`.
    pub async fn message(&self, id: &str) -> anyhow::Result<Value> {
        let r = self
            .client
            .get(self.url(&format!("/v1/messages/{id}")))
            .bearer_auth(&self.key)
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "GET message {id}: {}", r.status());
        Ok(r.json().await?)
    }

    /// Polls the message until `done` holds, with a deadline.
    pub async fn wait_message(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let m = self.message(id).await?;
            if done(&m) {
                return Ok(m);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting on message {id}; last state: {m:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every recipient is in a final state.
    pub async fn wait_final(&self, id: &str, timeout: Duration) -> anyhow::Result<Value> {
        self.wait_message(id, timeout, |m| {
            m["recipients"].as_array().is_some_and(|rs| {
                rs.iter().all(|r| {
                    matches!(
                        r["status"].as_str(),
                        Some("delivered" | "bounced" | "suppressed" | "canceled")
                    )
                })
            })
        })
        .await
    }

    /// `POST /v1/webhooks`; returns (id, secret).
    pub async fn create_webhook(
        &self,
        url: &str,
        events: &[&str],
    ) -> anyhow::Result<(String, String)> {
        let r = self
            .client
            .post(self.url("/v1/webhooks"))
            .bearer_auth(&self.key)
            .json(&serde_json::json!({"url": url, "events": events}))
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await?;
        anyhow::ensure!(status == 201, "create webhook: {status} {body}");
        Ok((body["id"].as_str().unwrap().to_string(), body["secret"].as_str().unwrap().to_string()))
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The common test world: a DNS server, a temp directory and a per-test SMTP port.
pub struct World {
    pub dns: DnsServer,
    pub dir: tempfile::TempDir,
    pub smtp_port: u16,
    /// `submission.listen` / `submission.tls_listen` of [`World::write_config`].
    pub submission_port: u16,
    pub submission_tls_port: u16,
    /// `sandbox.pop3_listen` of [`World::write_config`].
    pub pop3_port: u16,
}

impl World {
    pub async fn new() -> World {
        World {
            dns: DnsServer::start().await,
            dir: tempfile::tempdir().expect("temp dir"),
            smtp_port: crate::smtp::pick_free_port(),
            submission_port: crate::smtp::pick_free_port(),
            submission_tls_port: crate::smtp::pick_free_port(),
            pop3_port: crate::smtp::pick_free_port(),
        }
    }

    pub fn settings(&self) -> Settings {
        test_settings(self.dir.path(), self.dns.addr(), self.smtp_port)
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Writes `postwire.toml` for the real binary: API on `http_port`, this world's DNS server
    /// and SMTP port, short retries and leases, and the distributed backend (in a fresh
    /// namespace) when `distributed`. Returns its path.
    pub fn write_config(&self, http_port: u16, distributed: bool) -> PathBuf {
        let config = self.path().join("postwire.toml");
        let backend = if distributed {
            format!(
                "backend = \"distributed\"\nnamespace = \"pwtest-{:016x}\"\n",
                rand::random::<u64>()
            )
        } else {
            String::new()
        };
        let text = format!(
            r#"
[http]
listen = "127.0.0.1:{http_port}"
public_url = "http://127.0.0.1:{http_port}"
[dns]
nameservers = ["{dns}"]
[smtp]
helo_name = "mta.postwire.test"
port = {smtp}
[retry]
schedule = ["1s"]
[worker]
lease = "3s"
[tracking]
secret = "e2e-binary-tracking-secret"
[submission]
listen = "127.0.0.1:{submission}"
tls_listen = "127.0.0.1:{submission_tls}"
[sandbox]
pop3_listen = "127.0.0.1:{pop3}"
[limits]
per_key_per_second = 1000000
per_key_per_day = 100000000
[storage]
path = "{data}"
{backend}
"#,
            data = self.path().join("data").display(),
            dns = self.dns.addr(),
            smtp = self.smtp_port,
            submission = self.submission_port,
            submission_tls = self.submission_tls_port,
            pop3 = self.pop3_port,
        );
        std::fs::write(&config, text).expect("write postwire.toml");
        config
    }
}

/// A minimal valid send body.
pub fn simple_message(to: &[&str]) -> Value {
    serde_json::json!({
        "from": "App <app@sender.test>",
        "to": to,
        "subject": "Your password reset",
        "text": "Hello,\nfollow the link to reset your password.\n",
    })
}
