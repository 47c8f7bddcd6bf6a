//! The reference: Postfix with OpenDKIM as its milter, each from its own throwaway config
//! directory, fed by Postfix's `smtp-source`.
//!
//! Postfix runs as [`postwire_e2e::postfix::Postfix`] (its master in the foreground, a child of this
//! process, logging to `DIR/postfix.log`), its `smtpd` on a loopback port, every message for the
//! benchmark domain routed by a transport map to `[127.0.0.2]:25`. OpenDKIM signs with a fresh
//! RSA-2048 key from `opendkim-genkey`, relaxed/relaxed like Postwire. Both are stopped when the
//! [`Postfix`] value is dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
pub use postwire_e2e::postfix::{run, wait_listening};

/// A running Postfix + OpenDKIM pair.
pub struct Postfix {
    postfix: Option<postwire_e2e::postfix::Postfix>,
    opendkim: Option<Child>,
    /// Where `smtpd` listens.
    pub smtpd: SocketAddr,
    /// The TXT value OpenDKIM's key publishes (`v=DKIM1; k=rsa; p=…`).
    pub txt_value: String,
    /// `postconf mail_version`, `opendkim -V`'s first line.
    pub versions: String,
}

impl Postfix {
    /// Writes the configuration under `dir`, starts OpenDKIM and Postfix, and waits for smtpd.
    pub fn start(
        dir: &Path,
        sender_domain: &str,
        selector: &str,
        relay: SocketAddr,
        recipient_domain: &str,
    ) -> anyhow::Result<Postfix> {
        let keys = dir.join("postfix-dkim");
        std::fs::create_dir_all(&keys)?;
        run(Command::new("opendkim-genkey")
            .args(["-b", "2048", "-d", sender_domain, "-s", selector, "-D"])
            .arg(&keys))?;
        let txt_value =
            txt_from_genkey(&std::fs::read_to_string(keys.join(format!("{selector}.txt")))?);
        let milter_port = free_port()?;
        let smtpd = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let opendkim_conf = dir.join("opendkim.conf");
        std::fs::write(
            &opendkim_conf,
            format!(
                "Syslog no\nBackground no\nMode s\nDomain {sender_domain}\nSelector {selector}\n\
                 KeyFile {key}\nSocket inet:{milter_port}@127.0.0.1\nCanonicalization relaxed/relaxed\n\
                 SignatureAlgorithm rsa-sha256\nRequireSafeKeys false\n",
                key = keys.join(format!("{selector}.private")).display(),
            ),
        )?;

        // `opendkim -V` opens with "opendkim: OpenDKIM Filter v2.11.0".
        let opendkim_version = output(Command::new("opendkim").arg("-V"))?
            .split_whitespace()
            .find_map(|w| {
                w.strip_prefix('v')
                    .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "?".into());
        let versions = format!(
            "Postfix {} + OpenDKIM {opendkim_version}",
            output(Command::new("postconf").args(["-d", "-h", "mail_version"]))?.trim(),
        );
        let log = std::fs::File::create(dir.join("opendkim.log"))?;
        let opendkim = Command::new("opendkim")
            .arg("-x")
            .arg(&opendkim_conf)
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn opendkim (apt-get install opendkim)")?;
        let mut postfix =
            Postfix { postfix: None, opendkim: Some(opendkim), smtpd, txt_value, versions };
        wait_listening(SocketAddr::from(([127, 0, 0, 1], milter_port)), Duration::from_secs(15))
            .context("opendkim did not start")?;

        postfix.postfix = Some(postwire_e2e::postfix::Postfix::start(
            dir,
            postwire_e2e::postfix::Config {
                smtpd,
                hostname: "postfix.bench.test",
                transport: vec![format!(
                    "{recipient_domain} smtp:[{}]:{}",
                    relay.ip(),
                    relay.port()
                )],
                main_extra: format!(
                    "myorigin = {sender_domain}
smtpd_milters = inet:127.0.0.1:{milter_port}
non_smtpd_milters = $smtpd_milters
# Never pass a message on unsigned.
milter_default_action = tempfail"
                ),
            },
        )?);
        Ok(postfix)
    }

    /// Runs `smtp-source -s sessions -m count -N` with the message in `message_file`;
    /// returns when smtp-source has handed every message to smtpd.
    pub async fn inject(
        &self,
        message_file: &Path,
        count: usize,
        sessions: usize,
        from: &str,
        to: &str,
    ) -> anyhow::Result<Instant> {
        let status = tokio::process::Command::new("smtp-source")
            .args([
                "-s",
                &sessions.to_string(),
                "-m",
                &count.to_string(),
                "-N",
                "-f",
                from,
                "-t",
                to,
            ])
            .arg("-F")
            .arg(message_file)
            .arg(self.smtpd.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .await
            .context("spawn smtp-source")?;
        anyhow::ensure!(status.success(), "smtp-source exited with {status}");
        Ok(Instant::now())
    }

    /// Stops Postfix and OpenDKIM.
    pub fn stop(&mut self) {
        if let Some(mut postfix) = self.postfix.take() {
            postfix.stop();
        }
        if let Some(mut opendkim) = self.opendkim.take() {
            let _ = opendkim.kill();
            let _ = opendkim.wait();
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The record value from `opendkim-genkey`'s zone file: the quoted strings joined.
fn txt_from_genkey(zone: &str) -> String {
    zone.split('"').skip(1).step_by(2).collect::<String>()
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
