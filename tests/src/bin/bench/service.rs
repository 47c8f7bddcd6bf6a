//! Postwire under test: the real release binary as separate processes, so the load generator
//! never shares the service's runtime. Embedded is one `postwire serve`; distributed is the
//! `api-gateway`, `mta-worker` and `webhook-dispatcher` role processes on the local RabbitMQ and
//! Redis under a namespace of their own, deleted afterwards.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use postwire_config::DkimKey;

/// Which storage backend the processes use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Distributed,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Distributed => "distributed",
        }
    }
}

/// Which roles run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Roles {
    /// The whole service: `serve`, or the three role processes.
    All,
    /// Only the API (`postwire api-gateway`): accepted messages stay queued.
    ApiOnly,
}

/// What goes into the service's config file beyond the fixed benchmark settings.
pub struct Options<'a> {
    pub backend: Backend,
    pub roles: Roles,
    pub dns: SocketAddr,
    pub dkim: &'a DkimKey,
    /// `[retry] schedule`, e.g. `["1s"]`, or `["1h"]` to hold deferred messages.
    pub retry: &'a str,
    /// `[worker] concurrency`; `None` keeps the shipped default.
    pub workers: Option<usize>,
    /// The SMTP listeners, off unless set.
    pub smtp_in: Option<SmtpIn>,
    /// `[storage] retention`, e.g. `"5m"`; `None` keeps the shipped default.
    pub retention: Option<&'a str>,
}

/// Submission for trusted loopback clients (as the benchmark's own key) and the bounce intake.
#[derive(Clone, Copy)]
pub struct SmtpIn {
    pub submission: u16,
    pub bounces: u16,
    pub bounce_domain: &'static str,
}

/// Running Postwire processes; killed when dropped.
pub struct Service {
    procs: Vec<(&'static str, Child)>,
    pub base: String,
    /// An API key with every scope, from `postwire keys create`.
    pub key: String,
    pub config: PathBuf,
    bin: PathBuf,
    dir: PathBuf,
    settings: postwire_config::Settings,
}

impl Service {
    /// Writes `dir/postwire.toml`, creates an API key with the CLI, starts the processes and
    /// waits until `/readyz` answers 200.
    pub async fn start(bin: &Path, dir: &Path, options: &Options<'_>) -> anyhow::Result<Service> {
        std::fs::create_dir_all(dir)?;
        let port = crate::postfix::free_port()?;
        let config = dir.join("postwire.toml");
        // Fixed before the first write: the config is written again once the key exists.
        let run = Run {
            secret: format!("bench-tracking-secret-{:016x}", rand::random::<u64>()),
            namespace: format!("pwbench-{:016x}", rand::random::<u64>()),
        };
        std::fs::write(&config, config_text(dir, port, options, &run, ""))?;

        let out = postwire(bin, &config)
            .args(["keys", "create", "--name", "bench", "--scopes", "send,read,admin"])
            .output()
            .context("run postwire keys create")?;
        anyhow::ensure!(
            out.status.success(),
            "postwire keys create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned();
        anyhow::ensure!(
            key.starts_with("pw_"),
            "no key on the last line of `postwire keys create`: {key:?}"
        );
        // Trusted submission clients send as the key just made.
        std::fs::write(&config, config_text(dir, port, options, &run, &key))?;
        let settings =
            postwire_config::load(&config, true).context("the benchmark's config does not load")?;

        let roles: &[&'static str] = match (options.backend, options.roles) {
            (_, Roles::ApiOnly) => &["api-gateway"],
            (Backend::Embedded, Roles::All) => &["serve"],
            (Backend::Distributed, Roles::All) => {
                &["api-gateway", "mta-worker", "webhook-dispatcher"]
            }
        };
        let mut service = Service {
            procs: Vec::new(),
            base: format!("http://127.0.0.1:{port}"),
            key,
            config,
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            settings,
        };
        for role in roles {
            let child = service.spawn(role)?;
            service.procs.push((role, child));
        }
        service
            .wait_ready(Duration::from_secs(60))
            .await
            .with_context(|| format!("see the logs in {}", dir.display()))?;
        Ok(service)
    }

    /// Starts `postwire <role>`, appending to `dir/<role>.log`.
    fn spawn(&self, role: &str) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{role}.log")))?;
        postwire(&self.bin, &self.config)
            .arg(role)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn postwire {role}"))
    }

    /// How many processes run (one for embedded, three for distributed).
    pub fn process_count(&self) -> usize {
        self.procs.len()
    }

    /// SIGKILLs process `index` and starts its role again at once, without waiting for it to
    /// be ready; returns the role.
    pub fn kill_and_restart(&mut self, index: usize) -> anyhow::Result<&'static str> {
        let role = self.procs[index].0;
        let child = &mut self.procs[index].1;
        child.kill().with_context(|| format!("SIGKILL postwire {role}"))?;
        child.wait()?;
        self.procs[index].1 = self.spawn(role)?;
        Ok(role)
    }

    async fn wait_ready(&mut self, deadline: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let url = format!("{}/readyz", self.base);
        let end = Instant::now() + deadline;
        loop {
            for (role, child) in &mut self.procs {
                if let Some(status) = child.try_wait()? {
                    anyhow::bail!("postwire {role} exited at start: {status}");
                }
            }
            if client.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < end, "{url} not ready after {deadline:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The settings the processes run with.
    pub fn settings(&self) -> &postwire_config::Settings {
        &self.settings
    }

    /// Resident set size of each process, in KiB (VmRSS).
    pub fn rss_kib(&self) -> Vec<(&'static str, u64)> {
        self.procs
            .iter()
            .map(|(role, child)| (*role, status_kib(child.id(), "VmRSS:").unwrap_or(0)))
            .collect()
    }

    /// `"api-gateway 40 MB (peak 52 MB), …"`: RSS now and its high-water mark (VmHWM).
    pub fn rss_note(&self) -> String {
        let mb = |kib: Option<u64>| kib.unwrap_or(0) as f64 / 1024.0;
        self.procs
            .iter()
            .map(|(role, child)| {
                let (now, peak) =
                    (status_kib(child.id(), "VmRSS:"), status_kib(child.id(), "VmHWM:"));
                format!("{role} {:.0} MB (peak {:.0} MB)", mb(now), mb(peak))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// CPU time (user + system) each process has used so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        self.procs.iter().map(|(_, child)| cpu_seconds(child.id()).unwrap_or(0.0)).sum()
    }

    /// SIGTERM, then up to 30 s for a graceful exit, then SIGKILL; then, for the distributed
    /// backend, deletes the namespace's queues and keys.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for (_, child) in &self.procs {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        }
        let end = Instant::now() + Duration::from_secs(30);
        for (_, child) in &mut self.procs {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.settings.storage.backend == postwire_config::Backend::Distributed {
            let options = postwire_store::distributed::Options::from_settings(&self.settings);
            let store = postwire_store::distributed::DistributedStore::connect(&options).await?;
            store.destroy_namespace().await?;
        }
        Ok(())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn postwire(bin: &Path, config: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(config)
        .env("RUST_LOG", std::env::var("POSTWIRE_BENCH_LOG").unwrap_or_else(|_| "warn".into()));
    cmd
}

/// What one service's config files share however often they are written.
struct Run {
    secret: String,
    namespace: String,
}

fn config_text(dir: &Path, port: u16, o: &Options<'_>, run: &Run, key: &str) -> String {
    let storage = match o.backend {
        Backend::Embedded => "backend = \"embedded\"".to_owned(),
        Backend::Distributed => {
            format!("backend = \"distributed\"\nnamespace = \"{}\"", run.namespace)
        }
    };
    let retention = o.retention.map(|r| format!("retention = \"{r}\"\n")).unwrap_or_default();
    let workers = o.workers.map(|n| format!("[worker]\nconcurrency = {n}\n")).unwrap_or_default();
    let smtp_in = match o.smtp_in {
        None => "[submission]\nlisten = \"\"\ntls_listen = \"\"\n[sandbox]\npop3_listen = \"\"\n".to_owned(),
        Some(s) => format!(
            "[submission]\nlisten = \"127.0.0.1:{}\"\ntls_listen = \"\"\n\
             trusted_networks = [\"127.0.0.0/8\"]\ntrusted_key = \"{key}\"\n\
             [bounces]\ndomain = \"{}\"\nlisten = \"127.0.0.1:{}\"\n[sandbox]\npop3_listen = \"\"\n",
            s.submission, s.bounce_domain, s.bounces
        ),
    };
    format!(
        r#"# Written by the Postwire benchmark.
[http]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
[storage]
{storage}
path = "{data}"
{retention}[dns]
nameservers = ["{dns}"]
[smtp]
helo_name = "mta.postwire.bench"
port = 25
[retry]
schedule = {retry}
max_age = "48h"
[tracking]
secret = "{secret}"
[webhooks]
allow_private_targets = true
retry_schedule = ["1s", "2s", "5s"]
{smtp_in}
[limits]
per_key_per_second = 1000000000
per_key_per_day = 1000000000
{workers}
[[dkim]]
domain = "{domain}"
selector = "{selector}"
algorithm = "{algorithm}"
private_key = "{key}"
"#,
        data = dir.join("data").display(),
        dns = o.dns,
        retry = o.retry,
        secret = run.secret,
        domain = o.dkim.domain,
        selector = o.dkim.selector,
        algorithm = o.dkim.algorithm.as_str(),
        key = o.dkim.private_key.display(),
    )
}

/// A `/proc/PID/status` memory field (`VmRSS:`, `VmHWM:`), in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// User + system CPU time of a process, in seconds (`/proc/PID/stat` fields 14 and 15, in
/// clock ticks of 1/100 s, the value Linux reports as `getconf CLK_TCK` on every platform).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}
