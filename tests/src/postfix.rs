//! A real Postfix (Debian's package) run from a throwaway config directory: `postfix -c DIR
//! start-fg`, its master a child of this process logging to `DIR/postfix.log`, stopped with
//! `postfix -c DIR stop` when the [`Postfix`] value is dropped. Debian's stock services without
//! chroot (the queue lives outside /var/spool/postfix), `smtpd` only on the address given.
//!
//! The end-to-end suite uses it as a recipient MX that accepts at RCPT and bounces afterwards;
//! the benchmark as the reference MTA (with OpenDKIM as its milter).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// What an instance is for.
pub struct Config<'a> {
    /// Where `smtpd` listens.
    pub smtpd: SocketAddr,
    /// `myhostname` (its domain becomes `mydomain`).
    pub hostname: &'a str,
    /// Lines of the transport map (`domain smtp:[ip]:port`).
    pub transport: Vec<String>,
    /// More `main.cf` lines, after the common ones (later lines win).
    pub main_extra: String,
}

/// A running instance.
pub struct Postfix {
    conf: PathBuf,
    master: Option<Child>,
    /// The instance's directory (config, queue, data, log).
    pub root: PathBuf,
    pub smtpd: SocketAddr,
}

impl Postfix {
    /// Writes the configuration under `dir/postfix`, starts Postfix and waits for `smtpd`.
    pub fn start(dir: &Path, config: Config<'_>) -> anyhow::Result<Postfix> {
        anyhow::ensure!(
            Command::new("postfix").arg("-h").output().is_ok(),
            "postfix is not installed (apt-get install postfix)"
        );
        let root = dir.join("postfix");
        let (conf, queue, data) = (root.join("conf"), root.join("queue"), root.join("data"));
        for d in [&conf, &queue, &data] {
            std::fs::create_dir_all(d)?;
        }
        // Postfix's daemons (user postfix) must traverse the tree; its data dir is theirs.
        for d in [dir, &root] {
            run(Command::new("chmod").arg("755").arg(d))?;
        }
        run(Command::new("chown").arg("postfix").arg(&data))?;
        let transport = conf.join("transport");
        std::fs::write(&transport, config.transport.join("\n") + "\n")?;
        let domain = config.hostname.split_once('.').map_or(config.hostname, |(_, d)| d);
        let main = format!(
            "# Written by the Postwire tests; a throwaway instance.
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = {hostname}
mydomain = {domain}
myorigin = {domain}
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
transport_maps = texthash:{transport}
smtp_tls_security_level = none
smtpd_tls_security_level = none
alias_maps =
alias_database =
biff = no
maillog_file = /dev/stdout
{extra}
",
            queue = queue.display(),
            data = data.display(),
            hostname = config.hostname,
            transport = transport.display(),
            extra = config.main_extra,
        );
        std::fs::write(conf.join("main.cf"), main)?;
        std::fs::write(conf.join("master.cf"), master_cf(config.smtpd))?;
        let log = std::fs::File::create(root.join("postfix.log"))?;
        let master = Command::new("postfix")
            .arg("-c")
            .arg(&conf)
            .arg("start-fg")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn postfix (apt-get install postfix)")?;
        let postfix = Postfix { conf, master: Some(master), root, smtpd: config.smtpd };
        wait_listening(config.smtpd, Duration::from_secs(20)).with_context(|| {
            format!("postfix did not start; see {}", postfix.log_path().display())
        })?;
        Ok(postfix)
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("postfix.log")
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops Postfix (`postfix stop`, which ends its master).
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
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
    }
}

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
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"
    )
}

/// Runs a command to success; its output is the error otherwise.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Waits until something accepts connections on `addr`.
pub fn wait_listening(addr: SocketAddr, deadline: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + deadline;
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        anyhow::ensure!(Instant::now() < end, "nothing listening on {addr} after {deadline:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
