//! The reference: Postfix with OpenDKIM as its milter, each from its own throwaway config
//! directory, fed by Postfix's `smtp-source`.
//!
//! Postfix runs as `postfix -c DIR start-fg` (its master in the foreground, a child of this
//! process, logging to `DIR/postfix.log`), its `smtpd` on a loopback port, every message for the
//! benchmark domain routed by a transport map to `[127.0.0.2]:25`. OpenDKIM signs with a fresh
//! RSA-2048 key from `opendkim-genkey`, relaxed/relaxed like Postwire. Both are stopped when the
//! [`Postfix`] value is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// A running Postfix + OpenDKIM pair.
pub struct Postfix {
    conf: PathBuf,
    master: Option<Child>,
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
        let root = dir.join("postfix");
        let (conf, queue, data, keys) =
            (root.join("conf"), root.join("queue"), root.join("data"), root.join("dkim"));
        for d in [&conf, &queue, &data, &keys] {
            std::fs::create_dir_all(d)?;
        }
        // Postfix's daemons (user postfix) must traverse the tree; its data dir is theirs.
        for d in [dir, &root] {
            chmod(d, "755")?;
        }
        run(Command::new("chown").arg("postfix").arg(&data))?;

        run(Command::new("opendkim-genkey")
            .args(["-b", "2048", "-d", sender_domain, "-s", selector, "-D"])
            .arg(&keys))?;
        let txt_value =
            txt_from_genkey(&std::fs::read_to_string(keys.join(format!("{selector}.txt")))?);
        let milter_port = free_port()?;
        let smtpd = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        std::fs::write(
            root.join("opendkim.conf"),
            format!(
                "Syslog no\nBackground no\nMode s\nDomain {sender_domain}\nSelector {selector}\n\
                 KeyFile {key}\nSocket inet:{milter_port}@127.0.0.1\nCanonicalization relaxed/relaxed\n\
                 SignatureAlgorithm rsa-sha256\nRequireSafeKeys false\n",
                key = keys.join(format!("{selector}.private")).display(),
            ),
        )?;
        std::fs::write(
            conf.join("transport"),
            format!("{recipient_domain} smtp:[{}]:{}\n", relay.ip(), relay.port()),
        )?;
        std::fs::write(
            conf.join("main.cf"),
            main_cf(&conf, &queue, &data, milter_port, sender_domain),
        )?;
        std::fs::write(conf.join("master.cf"), master_cf(smtpd))?;

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
        let log = std::fs::File::create(root.join("opendkim.log"))?;
        let opendkim = Command::new("opendkim")
            .arg("-x")
            .arg(root.join("opendkim.conf"))
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn opendkim (apt-get install opendkim)")?;
        let mut postfix = Postfix {
            conf: conf.clone(),
            master: None,
            opendkim: Some(opendkim),
            smtpd,
            txt_value,
            versions,
        };
        wait_listening(SocketAddr::from(([127, 0, 0, 1], milter_port)), Duration::from_secs(15))
            .context("opendkim did not start")?;

        let log = std::fs::File::create(root.join("postfix.log"))?;
        postfix.master = Some(
            Command::new("postfix")
                .arg("-c")
                .arg(&conf)
                .arg("start-fg")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("spawn postfix (apt-get install postfix)")?,
        );
        wait_listening(smtpd, Duration::from_secs(20)).with_context(|| {
            format!("postfix did not start; see {}", root.join("postfix.log").display())
        })?;
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

    /// Stops Postfix (`postfix stop`, which ends its master) and OpenDKIM.
    pub fn stop(&mut self) {
        if let Some(mut master) = self.master.take() {
            let _ = Command::new("postfix")
                .arg("-c")
                .arg(&self.conf)
                .arg("stop")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let end = Instant::now() + Duration::from_secs(10);
            while matches!(master.try_wait(), Ok(None)) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = master.kill();
            let _ = master.wait();
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

fn main_cf(
    conf: &Path,
    queue: &Path,
    data: &Path,
    milter_port: u16,
    sender_domain: &str,
) -> String {
    format!(
        "# Written by the Postwire benchmark; a throwaway instance.
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = {sender_domain}
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
transport_maps = texthash:{transport}
smtpd_milters = inet:127.0.0.1:{milter_port}
non_smtpd_milters = $smtpd_milters
# Never pass a message on unsigned.
milter_default_action = tempfail
smtp_tls_security_level = none
smtpd_tls_security_level = none
alias_maps =
alias_database =
biff = no
maillog_file = /dev/stdout
",
        queue = queue.display(),
        data = data.display(),
        transport = conf.join("transport").display(),
    )
}

/// Debian's stock services, without chroot (the queue lives outside /var/spool/postfix), and
/// smtpd on `smtpd` only.
fn master_cf(smtpd: SocketAddr) -> String {
    format!(
        "{smtpd} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"
    )
}

/// The record value from `opendkim-genkey`'s zone file: the quoted strings joined.
fn txt_from_genkey(zone: &str) -> String {
    zone.split('"').skip(1).step_by(2).collect::<String>()
}

fn chmod(path: &Path, mode: &str) -> anyhow::Result<()> {
    run(Command::new("chmod").arg(mode).arg(path))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn wait_listening(addr: SocketAddr, deadline: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + deadline;
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        anyhow::ensure!(Instant::now() < end, "nothing listening on {addr} after {deadline:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
