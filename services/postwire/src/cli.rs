//! The `postwire` command line.

use std::path::PathBuf;

use anyhow::{bail, Context};
use chrono::Utc;
use clap::{Parser, Subcommand, ValueEnum};
use postwire_config::{DkimAlgorithm, Settings};
use postwire_store::{ids, NewApiKey, SCOPES};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{App, Roles, Stores};
use crate::keygen;

#[derive(Debug, Parser)]
#[command(
    name = "postwire",
    version,
    about = "Transactional email delivery: JSON in, signed mail out"
)]
pub struct Cli {
    /// Config file. Without this flag `./postwire.toml` is read if it exists.
    #[arg(long, global = true, env = "POSTWIRE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the API gateway, MTA worker and webhook dispatcher in one process (the default).
    Serve,
    /// Run only the API gateway.
    ApiGateway,
    /// Run only an MTA worker.
    MtaWorker,
    /// Run only the webhook dispatcher.
    WebhookDispatcher,
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage DKIM keys.
    #[command(subcommand)]
    Dkim(DkimCommand),
    /// Check the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Send a test message through a running service (its HTTP API at http.listen).
    Send(crate::send::SendArgs),
    /// Write a consistent copy of the embedded database to FILE (safe while the service runs).
    Backup {
        /// Where the copy goes; must not exist yet.
        file: PathBuf,
    },
    /// Internal: render template jobs from stdin under memory and CPU limits (the API
    /// gateway's render child; see `postwire_api_gateway::renderer`).
    #[command(hide = true)]
    RenderTemplate,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; it is printed once, alone on the last line, and only its hash is stored.
    Create {
        #[arg(long)]
        name: String,
        /// Comma-separated scopes out of send, read, admin [default: send,read,admin; with
        /// --sandbox: send,read].
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<String>>,
        /// A sandbox key: its messages are validated and recorded as delivered, but never sent
        /// (no DNS lookup, no SMTP connection).
        #[arg(long)]
        sandbox: bool,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key by id; it stops working at once.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (file, environment overrides and defaults; secrets
    /// redacted) as TOML, then one `# warning:` line per setting that is probably wrong.
    Check,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Algorithm {
    #[value(name = "rsa-sha256")]
    RsaSha256,
    #[value(name = "ed25519-sha256")]
    Ed25519Sha256,
}

#[derive(Debug, Subcommand)]
pub enum DkimCommand {
    /// Generate a key pair, write the private key and print the DNS TXT record to publish.
    Generate {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        selector: String,
        #[arg(long, value_enum, default_value = "rsa-sha256")]
        algorithm: Algorithm,
        /// Where to write the private key (default: `<storage.path>/dkim/<domain>.<selector>.pem`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

impl Cli {
    pub fn load_settings(&self) -> anyhow::Result<Settings> {
        let (path, required) = match &self.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from("postwire.toml"), false),
        };
        Ok(postwire_config::load(&path, required)?)
    }
}

impl Cli {
    /// Whether the command runs a service (rather than doing one thing and exiting).
    pub fn is_service(&self) -> bool {
        matches!(
            self.command,
            None | Some(
                Command::Serve
                    | Command::ApiGateway
                    | Command::MtaWorker
                    | Command::WebhookDispatcher
            )
        )
    }
}

/// An error and its causes, each said once: a cause whose text its parent already includes
/// (`"store: permission denied"` over `"permission denied"`) is not repeated.
pub fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// Runs the parsed command line with its loaded settings.
pub async fn run(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings, Roles::ALL).await,
        Command::ApiGateway => serve(settings, Roles::API_GATEWAY).await,
        Command::MtaWorker => serve(settings, Roles::MTA_WORKER).await,
        Command::WebhookDispatcher => serve(settings, Roles::WEBHOOK_DISPATCHER).await,
        Command::Keys(cmd) => keys(settings, cmd).await,
        Command::Backup { file } => backup(&settings, &file).await,
        Command::Send(args) => crate::send::send(&settings, args).await,
        Command::Config(ConfigCommand::Check) => {
            let mut text = toml::to_string(&settings).context("printing the configuration")?;
            for warning in settings.warnings() {
                text.push_str(&format!("\n# warning: {warning}"));
            }
            text.push('\n');
            // A closed pipe (`| head`) ends the output; that is not an error.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
            Ok(())
        }
        Command::Dkim(DkimCommand::Generate { domain, selector, algorithm, out }) => {
            dkim_generate(&settings, &domain, &selector, algorithm, out)
        }
        Command::RenderTemplate => bail!("`render-template` is run by `main`, before the runtime"),
    }
}

async fn serve(settings: Settings, roles: Roles) -> anyhow::Result<()> {
    for warning in settings.warnings() {
        tracing::warn!("{warning}");
    }
    let listener = if roles.api_gateway {
        let addr = settings.http.listen;
        Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (http.listen)"))?,
        )
    } else {
        None
    };
    // Templates render in children of this very binary, each under a memory bound.
    let app = App::build(settings).await?.with_renderer(crate::app::isolated_renderer()?);
    if let Some(l) = &listener {
        tracing::info!(addr = %l.local_addr()?, "postwire listening");
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    app.run(roles, listener, shutdown).await?;
    Ok(())
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: finishing in-flight work");
    shutdown.cancel();
}

/// Scopes of `keys create` without `--scopes` ([`postwire_store::default_scopes`]).
fn default_scopes(sandbox: bool) -> Vec<String> {
    postwire_store::default_scopes(sandbox).map(String::from).collect()
}

async fn backup(settings: &Settings, file: &std::path::Path) -> anyhow::Result<()> {
    if settings.storage.backend == postwire_config::Backend::Distributed {
        bail!(
            "`postwire backup` copies the embedded database; with storage.backend = \"distributed\" \
             back up Redis (its AOF/RDB files) and RabbitMQ instead (README: Backups)"
        );
    }
    let store = postwire_store::embedded::SqliteStore::open(&settings.storage.path)
        .with_context(|| format!("opening the store in {}", settings.storage.path.display()))?;
    let bytes =
        store.backup_to(file).await.with_context(|| format!("backing up to {}", file.display()))?;
    store.close();
    println!("backed up {} to {} ({bytes} bytes)", settings.storage.path.display(), file.display());
    Ok(())
}

async fn keys(settings: Settings, cmd: KeysCommand) -> anyhow::Result<()> {
    let stores = Stores::open(&settings).await?;
    let store = &stores.state;
    match cmd {
        KeysCommand::Create { name, scopes, sandbox } => {
            let scopes = scopes.unwrap_or_else(|| default_scopes(sandbox));
            if name.trim().is_empty() {
                bail!("--name must not be empty");
            }
            if let Some(bad) = scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
                bail!("unknown scope `{bad}`: choose from {}", SCOPES.join(", "));
            }
            let minted = ids::mint_api_key();
            store
                .create_api_key(NewApiKey {
                    id: minted.id.clone(),
                    name: name.clone(),
                    hash: minted.hash,
                    scopes: scopes.clone(),
                    created_at: Utc::now(),
                    sandbox,
                })
                .await?;
            let kind = if sandbox { "sandbox API key" } else { "API key" };
            println!(
                "created {kind} {} ({name}; scopes: {}). It is shown once:",
                minted.id,
                scopes.join(",")
            );
            println!("{}", minted.key);
        }
        KeysCommand::List => {
            println!("ID\tNAME\tSCOPES\tMODE\tCREATED\tSTATE");
            for k in store.list_api_keys().await? {
                let state = k
                    .revoked_at
                    .map(|t| format!("revoked {}", t.to_rfc3339()))
                    .unwrap_or_else(|| "active".into());
                let mode = if k.sandbox { "sandbox" } else { "live" };
                println!(
                    "{}\t{}\t{}\t{mode}\t{}\t{}",
                    k.id,
                    k.name,
                    k.scopes.join(","),
                    k.created_at.to_rfc3339(),
                    state
                );
            }
        }
        KeysCommand::Revoke { id } => {
            if !store.revoke_api_key(&id).await? {
                bail!("no API key with id `{id}`");
            }
            println!("revoked {id}");
        }
    }
    stores.close();
    Ok(())
}

fn dkim_generate(
    settings: &Settings,
    domain: &str,
    selector: &str,
    algorithm: Algorithm,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let label_ok = |s: &str| {
        !s.is_empty()
            && s.split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    };
    if !label_ok(domain) || !domain.contains('.') {
        bail!("--domain `{domain}` is not a domain name");
    }
    if !label_ok(selector) {
        bail!("--selector `{selector}` must be letters, digits, `-` and `.`");
    }
    let algorithm = match algorithm {
        Algorithm::RsaSha256 => DkimAlgorithm::RsaSha256,
        Algorithm::Ed25519Sha256 => DkimAlgorithm::Ed25519Sha256,
    };
    let path = out.unwrap_or_else(|| {
        settings.storage.path.join("dkim").join(format!("{domain}.{selector}.pem"))
    });
    let pair = keygen::generate(algorithm)?;
    crate::app::write_private(&path, &pair.private_pem)
        .with_context(|| format!("cannot write {} (it must not exist yet)", path.display()))?;
    println!("wrote the private key to {}", path.display());
    println!("add to postwire.toml:");
    println!(
        "[[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nalgorithm = \"{}\"\nprivate_key = \"{}\"",
        algorithm.as_str(),
        path.display()
    );
    println!("publish this DNS TXT record:");
    println!("{}", keygen::zone_record(domain, selector, &pair.txt_value));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created_scopes(args: &[&str]) -> Vec<String> {
        let cli =
            Cli::try_parse_from(["postwire", "keys", "create", "--name", "x"].iter().chain(args))
                .unwrap();
        match cli.command {
            Some(Command::Keys(KeysCommand::Create { scopes, sandbox, .. })) => {
                scopes.unwrap_or_else(|| default_scopes(sandbox))
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn sandbox_keys_created_by_cli_default_to_send_and_read() {
        assert_eq!(created_scopes(&["--sandbox"]), ["send", "read"]);
        assert_eq!(created_scopes(&[]), ["send", "read", "admin"], "live keys keep all three");
        assert_eq!(
            created_scopes(&["--sandbox", "--scopes", "send,admin"]),
            ["send", "admin"],
            "explicit scopes win"
        );
    }
}
