//! Postfix's `smtp-sink` as the benchmark domain's MX: one process per scenario, counted from
//! its own `-c` counter line and dumped (`-D`) to one file, so every scenario — Postfix or
//! Postwire — is counted by the same program in the same way.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Marks the start of each message in the dump file (smtp-sink `-S`).
const MESSAGE_MARK: &str = "=====PWBENCH-MESSAGE=====";

/// How the sink answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Accept every message (`250`), dumping each to the dump file.
    Accept,
    /// Accept every message without dumping it (a long run's counter only).
    Count,
    /// Refuse every RCPT with `450 4.3.0` so the sender defers and keeps the message queued.
    Defer,
}

/// Count of messages the sink has taken, and when the `target`-th arrived.
#[derive(Debug)]
struct Counter {
    messages: usize,
    sessions: usize,
    target: usize,
    reached: Option<Instant>,
}

/// A running `smtp-sink` on `addr`. Killed when dropped.
pub struct Sink {
    child: Child,
    counter: Arc<Mutex<Counter>>,
    dump: PathBuf,
}

/// What the dump file shows about the delivered messages.
#[derive(Debug, Default)]
pub struct DumpSummary {
    pub messages: usize,
    /// Distinct RCPT TO addresses over all messages.
    pub distinct_recipients: usize,
    /// Messages with at least one `DKIM-Signature` header with `a=rsa-sha256` and `d=<domain>`.
    pub signed_rsa: usize,
    /// The first message, with CRLF line ends restored (for a signature check).
    pub sample: Option<Vec<u8>>,
}

impl Sink {
    /// Starts `smtp-sink` on `addr` (as user `postfix`, which it requires when run as root),
    /// dumping into `dir/<name>.dump`, and waits until it accepts connections.
    pub fn start(addr: SocketAddr, mode: Mode, dir: &Path, name: &str) -> anyhow::Result<Sink> {
        // Fail clearly, instead of timing a sink that never bound.
        TcpListener::bind(addr)
            .with_context(|| format!("{addr} is busy: something already listens there"))?;
        let dump_dir = dir.join("sink");
        std::fs::create_dir_all(&dump_dir)?;
        // smtp-sink drops to `postfix` before it opens the dump file.
        let status = Command::new("chown").arg("postfix").arg(&dump_dir).status()?;
        anyhow::ensure!(status.success(), "chown postfix {}", dump_dir.display());
        let dump = dump_dir.join(format!("{name}.dump"));
        let mut cmd = Command::new("smtp-sink");
        cmd.args(["-u", "postfix", "-c", "-4", "-m", "1000"]);
        if mode != Mode::Count {
            cmd.arg("-S").arg(format!("{MESSAGE_MARK}\\n"));
            cmd.arg("-D").arg(&dump);
        }
        if mode == Mode::Defer {
            cmd.args(["-r", "RCPT"]);
        }
        cmd.arg(addr.to_string()).arg("1024");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn smtp-sink (apt-get install postfix)")?;
        let counter = Arc::new(Mutex::new(Counter {
            messages: 0,
            sessions: 0,
            target: usize::MAX,
            reached: None,
        }));
        let stdout = child.stdout.take().context("smtp-sink stdout")?;
        let shared = Arc::clone(&counter);
        std::thread::spawn(move || read_counter(stdout, &shared));
        let sink = Sink { child, counter, dump };
        wait_listening(addr, Duration::from_secs(10))?;
        Ok(sink)
    }

    /// CPU time smtp-sink has used so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        crate::service::cpu_seconds(self.child.id()).unwrap_or(0.0)
    }

    /// Messages taken so far.
    pub fn messages(&self) -> usize {
        self.counter.lock().expect("counter lock").messages
    }

    /// SMTP sessions that have ended so far.
    pub fn sessions(&self) -> usize {
        self.counter.lock().expect("counter lock").sessions
    }

    /// Remembers the moment the `target`-th message arrives.
    pub fn set_target(&self, target: usize) {
        let mut c = self.counter.lock().expect("counter lock");
        c.target = target;
        c.reached = (c.messages >= target).then(Instant::now);
    }

    /// Waits until the target set with [`Sink::set_target`] is reached; returns when it was,
    /// or `None` after `deadline` (reporting progress every 10 s on stderr).
    pub async fn wait_target(&self, deadline: Duration) -> Option<Instant> {
        let end = Instant::now() + deadline;
        let mut report = Instant::now() + Duration::from_secs(10);
        loop {
            let (reached, messages, target) = {
                let c = self.counter.lock().expect("counter lock");
                (c.reached, c.messages, c.target)
            };
            if reached.is_some() {
                return reached;
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            if now >= report {
                eprintln!("  … sink has {messages} of {target}");
                report = now + Duration::from_secs(10);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the sink and reads its dump.
    pub fn finish(mut self, signer_domain: &str) -> anyhow::Result<DumpSummary> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        summarize(&self.dump, signer_domain)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Follows smtp-sink's `-c` line (`sess=N quit=N mesg=N`, rewritten in place with `\r`).
fn read_counter(mut stdout: impl std::io::Read, counter: &Mutex<Counter>) {
    let mut buf = [0u8; 4096];
    let mut pending = Vec::new();
    loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let now = Instant::now();
        pending.extend_from_slice(&buf[..n]);
        // Only complete updates: each ends with `\r` (or `\n`).
        let Some(last_end) = pending.iter().rposition(|b| *b == b'\r' || *b == b'\n') else {
            continue;
        };
        let complete: Vec<u8> = pending.drain(..=last_end).collect();
        let text = String::from_utf8_lossy(&complete);
        let latest = |field: &str| {
            text.split(['\r', '\n'])
                .filter_map(|update| update.split_whitespace().find_map(|f| f.strip_prefix(field)))
                .filter_map(|n| n.parse::<usize>().ok())
                .max()
        };
        if let Some(messages) = latest("mesg=") {
            let mut c = counter.lock().expect("counter lock");
            c.messages = c.messages.max(messages);
            c.sessions = c.sessions.max(latest("sess=").unwrap_or(0));
            if c.reached.is_none() && c.messages >= c.target {
                c.reached = Some(now);
            }
        }
    }
}

fn wait_listening(addr: SocketAddr, deadline: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + deadline;
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        anyhow::ensure!(Instant::now() < end, "nothing listening on {addr} after {deadline:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Counts messages, recipients and signatures in a `-S`-marked dump file.
fn summarize(dump: &Path, signer_domain: &str) -> anyhow::Result<DumpSummary> {
    let text = match std::fs::read(dump) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).context(format!("read {}", dump.display())),
    };
    let mut summary = DumpSummary::default();
    let mut recipients = std::collections::HashSet::new();
    let wanted_d = format!("d={}", signer_domain.to_ascii_lowercase());
    for message in text.split(&format!("{MESSAGE_MARK}\n")).filter(|m| !m.trim().is_empty()) {
        summary.messages += 1;
        let mut signed = false;
        let (head, _) = message.split_once("\n\n").unwrap_or((message, ""));
        for field in unfold(head) {
            let lower = field.to_ascii_lowercase();
            if let Some(args) = lower.strip_prefix("x-rcpt-args:") {
                if let Some(addr) = args.split_whitespace().next() {
                    recipients.insert(addr.trim_matches(['<', '>']).to_owned());
                }
            } else if lower.starts_with("dkim-signature:") {
                let tags: String = lower.split_whitespace().collect();
                signed |= tags.contains("a=rsa-sha256") && tags.split(';').any(|t| t == wanted_d);
            }
        }
        summary.signed_rsa += usize::from(signed);
        if summary.sample.is_none() {
            summary.sample = Some(strip_sink_headers(message).replace('\n', "\r\n").into_bytes());
        }
    }
    summary.distinct_recipients = recipients.len();
    Ok(summary)
}

/// Header fields with their continuation lines joined.
fn unfold(head: &str) -> Vec<String> {
    let mut fields: Vec<String> = Vec::new();
    for line in head.lines() {
        match fields.last_mut() {
            Some(last) if line.starts_with([' ', '\t']) => {
                last.push(' ');
                last.push_str(line.trim());
            }
            _ => fields.push(line.to_owned()),
        }
    }
    fields
}

/// The message as the client sent it: without smtp-sink's `X-*` records and its three-line
/// `Received:` header, which end its own prefix.
fn strip_sink_headers(message: &str) -> String {
    let mut lines = message.lines().peekable();
    while let Some(line) = lines.peek() {
        if line.starts_with("X-Client-")
            || line.starts_with("X-Helo-Args:")
            || line.starts_with("X-Mail-Args:")
            || line.starts_with("X-Rcpt-Args:")
        {
            lines.next();
        } else {
            break;
        }
    }
    // smtp-sink's Received: (one field, folded over three lines).
    if lines.peek().is_some_and(|l| l.starts_with("Received:")) {
        lines.next();
        while lines.peek().is_some_and(|l| l.starts_with([' ', '\t'])) {
            lines.next();
        }
    }
    let mut out: Vec<&str> = lines.collect();
    // smtp-sink appends one empty line after each message.
    if out.last() == Some(&"") {
        out.pop();
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}
