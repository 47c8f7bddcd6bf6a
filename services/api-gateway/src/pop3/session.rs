//! One POP3 conversation (RFC 1939): the AUTHORIZATION state (`USER`, `PASS`, `STLS`), the
//! TRANSACTION state (`STAT`, `LIST`, `UIDL`, `TOP`, `RETR`, `DELE`, `RSET`, `NOOP`) and the
//! UPDATE state `QUIT` enters; `CAPA` in both. Generic over the stream, so the same code runs
//! before and after `STLS`.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::mailbox::Entry;
use super::Pop3Server;
use crate::auth::verify_key;
use crate::error::ApiError;

/// Longest command line read (RFC 2449 §4: 255 octets; room for a long key).
const MAX_LINE: u64 = 1024;

/// Tells a client over the session limit to come back later.
pub async fn refuse(mut stream: TcpStream) {
    let _ = stream.write_all(b"-ERR [SYS/TEMP] too many sessions; try again later\r\n").await;
}

enum Phase {
    Authorization,
    Transaction { mailbox: Vec<Entry> },
}

struct State {
    peer: SocketAddr,
    tls: bool,
    phase: Phase,
}

/// How a run of commands ended.
enum After {
    /// `QUIT`, a closed connection, a timeout or shutdown.
    Done,
    /// `STLS` was accepted: the handshake comes next.
    StartTls,
}

/// Serves one connection until `QUIT`, close, idle timeout or shutdown.
pub async fn run(
    server: &Pop3Server,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let mut state = State { peer, tls: false, phase: Phase::Authorization };
    let mut conn = BufReader::new(stream);
    if reply(&mut conn, "+OK Postwire sandbox POP3 server ready").await.is_err() {
        return;
    }
    if let After::StartTls = commands(server, &mut state, &mut conn, &shutdown).await {
        // Whatever the client sent after STLS is dropped with the buffer (no injection).
        let tcp = conn.into_inner();
        let Ok(tls) = server.tls.accept(tcp).await else { return };
        state.tls = true;
        let mut conn = BufReader::new(tls);
        commands(server, &mut state, &mut conn, &shutdown).await;
    }
}

async fn reply<S: AsyncWrite + Unpin>(conn: &mut S, line: &str) -> std::io::Result<()> {
    conn.write_all(line.as_bytes()).await?;
    conn.write_all(b"\r\n").await?;
    conn.flush().await
}

async fn commands<S: AsyncRead + AsyncWrite + Unpin>(
    server: &Pop3Server,
    state: &mut State,
    conn: &mut BufReader<S>,
    shutdown: &CancellationToken,
) -> After {
    loop {
        let mut line = Vec::new();
        let read = {
            let mut limited = (&mut *conn).take(MAX_LINE);
            tokio::select! {
                _ = shutdown.cancelled() => None,
                r = tokio::time::timeout(server.idle, limited.read_until(b'\n', &mut line)) => Some(r),
            }
        };
        let Some(read) = read else {
            let _ = reply(conn, "-ERR [SYS/TEMP] the server is shutting down").await;
            return After::Done;
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return After::Done,
            Err(_) => {
                let _ = reply(conn, "-ERR idle for too long; closing").await;
                return After::Done;
            }
            Ok(Ok(_)) if !line.ends_with(b"\n") => {
                let _ = reply(conn, "-ERR command line too long").await;
                return After::Done;
            }
            Ok(Ok(_)) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        let (verb, arg) = match text.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.trim()),
            None => (text.to_ascii_uppercase(), ""),
        };
        let (out, next) = step(server, state, &verb, arg).await;
        if conn.write_all(&out).await.is_err() || conn.flush().await.is_err() {
            return After::Done;
        }
        if let Some(after) = next {
            return after;
        }
    }
}

/// One command: the bytes to answer, and whether the run of commands ends.
async fn step(
    server: &Pop3Server,
    state: &mut State,
    verb: &str,
    arg: &str,
) -> (Vec<u8>, Option<After>) {
    let line = |s: String| (format!("{s}\r\n").into_bytes(), None);
    if verb == "CAPA" {
        return (capabilities(state), None);
    }
    if verb == "NOOP" {
        return line("+OK".into());
    }
    match &mut state.phase {
        Phase::Authorization => match verb {
            "USER" => {
                line("+OK send PASS with a sandbox API key (the user name is ignored)".into())
            }
            "PASS" => line(login(server, state, arg).await),
            "STLS" if state.tls => line("-ERR TLS is already on".into()),
            "STLS" => (b"+OK begin TLS negotiation\r\n".to_vec(), Some(After::StartTls)),
            "QUIT" => (b"+OK bye\r\n".to_vec(), Some(After::Done)),
            "APOP" | "AUTH" => line("-ERR use USER and PASS (PASS = a sandbox API key)".into()),
            _ => line("-ERR unknown command, or not before PASS".into()),
        },
        Phase::Transaction { mailbox, .. } => {
            transaction(server, mailbox, verb, arg).await.unwrap_or_else(line)
        }
    }
}

fn capabilities(state: &State) -> Vec<u8> {
    let mut out = String::from("+OK capability list follows\r\n");
    for cap in ["USER", "TOP", "UIDL", "RESP-CODES", "IMPLEMENTATION Postwire"] {
        out.push_str(cap);
        out.push_str("\r\n");
    }
    if !state.tls && matches!(state.phase, Phase::Authorization) {
        out.push_str("STLS\r\n");
    }
    out.push_str(".\r\n");
    out.into_bytes()
}

/// `PASS key`: the one way in. Returns the reply line.
async fn login(server: &Pop3Server, state: &mut State, password: &str) -> String {
    let ip = state.peer.ip();
    if !state.tls && !ip.is_loopback() {
        return "-ERR [AUTH] STLS first: the key is taken only over TLS".into();
    }
    if server.failures.locked_out(ip) {
        return "-ERR [AUTH] too many failed logins; try again later".into();
    }
    let key = match verify_key(&server.gw, password.trim()).await {
        Ok(key) => key,
        Err(ApiError::Unavailable(_)) => {
            return "-ERR [SYS/TEMP] cannot check the key right now; try again".into()
        }
        Err(_) => {
            server.failures.record(ip);
            return "-ERR [AUTH] invalid API key".into();
        }
    };
    if !key.sandbox {
        return "-ERR [AUTH] not a sandbox API key: POP3 serves sandbox mailboxes only".into();
    }
    if key.require("read").is_err() {
        return "-ERR [AUTH] this sandbox key lacks the `read` scope".into();
    }
    server.failures.clear(ip);
    match super::mailbox::open(&server.gw, &key).await {
        Ok(mailbox) => {
            let reply = format!("+OK {}", summary(&mailbox));
            tracing::info!(key = %key.id, messages = mailbox.len(), "pop3 login");
            state.phase = Phase::Transaction { mailbox };
            reply
        }
        Err(error) => {
            tracing::warn!(%error, "pop3: the mailbox could not be read");
            "-ERR [SYS/TEMP] the mailbox cannot be read right now; try again".into()
        }
    }
}

/// `n messages (m octets)` over the messages not marked deleted.
fn summary(mailbox: &[Entry]) -> String {
    let (n, size) = totals(mailbox);
    format!("maildrop has {n} messages ({size} octets)")
}

fn totals(mailbox: &[Entry]) -> (usize, u64) {
    mailbox.iter().filter(|e| !e.deleted).fold((0, 0), |(n, s), e| (n + 1, s + e.size))
}

/// The entry a message-number argument names, unless it is marked deleted.
fn entry<'a>(mailbox: &'a mut [Entry], arg: &str) -> Result<(usize, &'a mut Entry), String> {
    let n: usize = arg
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| "-ERR a message number is needed".to_string())?;
    match n.checked_sub(1).and_then(|i| mailbox.get_mut(i)) {
        Some(e) if e.deleted => Err(format!("-ERR message {n} is already deleted")),
        Some(e) => Ok((n, e)),
        None => Err(format!("-ERR no message {n}")),
    }
}

/// A TRANSACTION-state command; `Err` is a one-line `-ERR` answer.
async fn transaction(
    server: &Pop3Server,
    mailbox: &mut [Entry],
    verb: &str,
    arg: &str,
) -> Result<(Vec<u8>, Option<After>), String> {
    let line = |s: String| Ok((format!("{s}\r\n").into_bytes(), None));
    match verb {
        "STAT" => {
            let (n, size) = totals(mailbox);
            line(format!("+OK {n} {size}"))
        }
        "LIST" | "UIDL" => {
            let show = |n: usize, e: &Entry| match verb {
                "LIST" => format!("{n} {}", e.size),
                _ => format!("{n} {}", e.id),
            };
            if !arg.is_empty() {
                let (n, e) = entry(mailbox, arg)?;
                return line(format!("+OK {}", show(n, e)));
            }
            let mut out = format!("+OK {}\r\n", summary(mailbox));
            for (i, e) in mailbox.iter().enumerate().filter(|(_, e)| !e.deleted) {
                out.push_str(&show(i + 1, e));
                out.push_str("\r\n");
            }
            out.push_str(".\r\n");
            Ok((out.into_bytes(), None))
        }
        "RETR" | "TOP" => {
            let body_lines = match verb {
                "TOP" => Some(
                    arg.split_whitespace()
                        .nth(1)
                        .and_then(|k| k.parse::<usize>().ok())
                        .ok_or("-ERR TOP needs a message number and a line count")?,
                ),
                _ => None,
            };
            let (n, e) = entry(mailbox, arg)?;
            let text = match super::mailbox::text(&server.gw, e).await {
                Ok(Some(text)) => text,
                Ok(None) => return Err(format!("-ERR message {n} is gone (pruned)")),
                Err(_) => return Err("-ERR [SYS/TEMP] the message cannot be read now".into()),
            };
            let mut out = format!("+OK {} octets\r\n", e.size).into_bytes();
            out.extend_from_slice(&dot_stuffed(&text, body_lines));
            Ok((out, None))
        }
        "DELE" => {
            let (n, e) = entry(mailbox, arg)?;
            e.deleted = true;
            line(format!("+OK message {n} deleted"))
        }
        "RSET" => {
            mailbox.iter_mut().for_each(|e| e.deleted = false);
            line(format!("+OK {}", summary(mailbox)))
        }
        "QUIT" => {
            // The UPDATE state: what was marked leaves the mailbox for good.
            let gone: Vec<String> =
                mailbox.iter().filter(|e| e.deleted).map(|e| e.id.clone()).collect();
            let answer = match server.gw.pop_marks.mark_popped(&gone).await {
                Ok(()) => format!(
                    "+OK Postwire POP3 signing off ({} deleted, {} left)",
                    gone.len(),
                    mailbox.len() - gone.len()
                ),
                Err(error) => {
                    tracing::warn!(%error, "pop3: deletions could not be recorded");
                    "-ERR [SYS/TEMP] the deletions could not be recorded; the messages stay".into()
                }
            };
            Ok((format!("{answer}\r\n").into_bytes(), Some(After::Done)))
        }
        "STLS" => line("-ERR STLS only before PASS".into()),
        "USER" | "PASS" => line("-ERR already logged in".into()),
        _ => line("-ERR unknown command".into()),
    }
}

/// `text` as a multi-line POP3 answer (RFC 1939 §3): each line CRLF-terminated, a leading
/// `.` doubled, then the `.` line. `body_lines` (for `TOP`) keeps the header, the blank line
/// and that many lines of the body.
pub fn dot_stuffed(text: &[u8], body_lines: Option<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 50 + 5);
    let mut in_body = false;
    let mut body_left = body_lines;
    let mut rest = text;
    while !rest.is_empty() {
        if in_body && body_left == Some(0) {
            break;
        }
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        if in_body {
            body_left = body_left.map(|n| n - 1);
        } else if line.is_empty() {
            in_body = true;
        }
        rest = next;
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &[u8] =
        b"From: a@x.test\r\nSubject: hi\r\n\r\nline one\r\n.dot line\r\nline three\r\n";

    #[test]
    fn a_message_is_dot_stuffed_and_terminated() {
        assert_eq!(
            dot_stuffed(TEXT, None),
            b"From: a@x.test\r\nSubject: hi\r\n\r\nline one\r\n..dot line\r\nline three\r\n.\r\n"
        );
        assert_eq!(dot_stuffed(b"no newline", None), b"no newline\r\n.\r\n");
    }

    #[test]
    fn top_keeps_the_header_and_the_first_body_lines() {
        assert_eq!(dot_stuffed(TEXT, Some(0)), b"From: a@x.test\r\nSubject: hi\r\n\r\n.\r\n");
        assert_eq!(
            dot_stuffed(TEXT, Some(2)),
            b"From: a@x.test\r\nSubject: hi\r\n\r\nline one\r\n..dot line\r\n.\r\n"
        );
    }
}
