//! The pool against a loopback SMTP peer that counts connections, transactions and how many
//! sessions are open at once.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use lettre::transport::smtp::extension::ClientId;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::*;
use crate::session::{Answer, SessionError};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const HOST: &str = "mx.pool.test";
const MESSAGE: &[u8] = b"From: s@sender.test\r\nTo: a@rcpt.test\r\nSubject: t\r\n\r\nhello\r\n";

/// How the peer misbehaves, if at all.
#[derive(Clone, Copy, Default)]
struct Behaviour {
    /// The first end-of-data anywhere is answered with a line that is not SMTP; the connection
    /// stays up and keeps answering, so only the client's own rule keeps it out of the pool.
    garble_first_end: bool,
    /// The connection that carried the first message is closed right after its 250.
    close_after_first_end: bool,
    /// Replies to end-of-data wait for a permit of `Peer::gate`.
    gated: bool,
}

#[derive(Default)]
struct Stats {
    accepted: usize,
    open: usize,
    max_open: usize,
    /// Sessions waiting for the gate at end of data.
    waiting: usize,
    /// Command lines per connection, in accept order.
    commands: Vec<Vec<String>>,
}

struct Peer {
    addr: SocketAddr,
    stats: Arc<Mutex<Stats>>,
    gate: Arc<Semaphore>,
}

impl Peer {
    async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Mutex::new(Stats::default()));
        let gate = Arc::new(Semaphore::new(0));
        let ends = Arc::new(AtomicUsize::new(0));
        let (s, g) = (Arc::clone(&stats), Arc::clone(&gate));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let idx = {
                    let mut st = s.lock().unwrap();
                    st.accepted += 1;
                    st.open += 1;
                    st.max_open = st.max_open.max(st.open);
                    st.commands.push(Vec::new());
                    st.commands.len() - 1
                };
                let (s, g, ends) = (Arc::clone(&s), Arc::clone(&g), Arc::clone(&ends));
                tokio::spawn(async move {
                    let _ = serve(stream, behaviour, &s, &g, &ends, idx).await;
                    s.lock().unwrap().open -= 1;
                });
            }
        });
        Self { addr, stats, gate }
    }

    fn accepted(&self) -> usize {
        self.stats.lock().unwrap().accepted
    }

    fn commands(&self) -> Vec<Vec<String>> {
        self.stats.lock().unwrap().commands.clone()
    }

    /// Polls `check` until it holds, failing the test after a few seconds.
    async fn wait_until(&self, what: &str, check: impl Fn(&Stats) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check(&self.stats.lock().unwrap()) {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn serve(
    stream: tokio::net::TcpStream,
    behaviour: Behaviour,
    stats: &Mutex<Stats>,
    gate: &Semaphore,
    ends: &AtomicUsize,
    idx: usize,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 mx.pool.test ESMTP\r\n").await?;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_ascii_uppercase();
        stats.lock().unwrap().commands[idx].push(cmd.clone());
        let reply: &[u8] = if cmd.starts_with("EHLO") {
            b"250-mx.pool.test\r\n250 8BITMIME\r\n"
        } else if cmd == "QUIT" {
            w.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else if cmd == "DATA" {
            w.write_all(b"354 go ahead\r\n").await?;
            loop {
                line.clear();
                if r.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
            }
            if behaviour.gated {
                stats.lock().unwrap().waiting += 1;
                gate.acquire().await.unwrap().forget();
                stats.lock().unwrap().waiting -= 1;
            }
            let first = ends.fetch_add(1, Ordering::SeqCst) == 0;
            if first && behaviour.garble_first_end {
                w.write_all(b"this is not an SMTP reply\r\n").await?;
                continue;
            }
            w.write_all(b"250 2.0.0 queued\r\n").await?;
            if first && behaviour.close_after_first_end {
                return Ok(());
            }
            continue;
        } else {
            // MAIL, RCPT, RSET, NOOP
            b"250 2.0.0 ok\r\n"
        };
        w.write_all(reply).await?;
    }
}

fn pool(peer: &Peer, max_per_host: usize, idle_timeout: Duration) -> SmtpPool {
    let opts = SmtpOptions {
        helo: ClientId::Domain("worker.test".into()),
        port: peer.addr.port(),
        tls: TlsMode::Disabled,
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
        data_timeout: Duration::from_secs(5),
    };
    SmtpPool::new(opts, PoolLimits { max_per_host, idle_timeout })
}

async fn send(pool: &SmtpPool, recipient: &str) -> HostAttempt {
    let recipients = vec![recipient.to_owned()];
    let tx = [Transaction { sender: "s@sender.test", recipients: &recipients, message: MESSAGE }];
    pool.deliver(LOCAL, HOST, &tx).await
}

fn delivered(attempt: &HostAttempt) -> bool {
    attempt.failure.is_none()
        && !attempt.answers.is_empty()
        && attempt.answers.iter().all(|(_, a)| matches!(a, Answer::Delivered(_)))
}

#[tokio::test]
async fn two_jobs_to_the_same_host_are_two_transactions_on_one_connection() {
    let peer = Peer::start(Behaviour::default()).await;
    let pool = pool(&peer, 4, Duration::from_secs(30));

    assert!(delivered(&send(&pool, "a@rcpt.test").await));
    assert!(delivered(&send(&pool, "b@rcpt.test").await));

    assert_eq!(peer.accepted(), 1, "the second job opened its own connection");
    let commands = &peer.commands()[0];
    let mails: Vec<_> = commands.iter().filter(|c| c.starts_with("MAIL FROM")).collect();
    assert_eq!(mails.len(), 2, "{commands:?}");
    // The reuse starts with RSET, after the first transaction and before the second.
    let rset = commands.iter().position(|c| c == "RSET").expect("no RSET before reuse");
    let second_mail = commands.iter().rposition(|c| c.starts_with("MAIL FROM")).unwrap();
    assert!(rset < second_mail, "{commands:?}");
    assert!(commands.iter().all(|c| c != "QUIT"), "the pooled connection was closed: {commands:?}");
    assert_eq!(pool.open_connections(HOST), 1);

    pool.close().await;
    peer.wait_until("the pool QUITs on close", |s| {
        s.commands[0].last().map(String::as_str) == Some("QUIT")
    })
    .await;
}

#[tokio::test]
async fn a_connection_that_broke_is_dropped_not_reused() {
    let peer = Peer::start(Behaviour { garble_first_end: true, ..Default::default() }).await;
    let pool = pool(&peer, 4, Duration::from_secs(30));

    let first = send(&pool, "a@rcpt.test").await;
    assert!(
        matches!(
            first.failure,
            Some(SessionError::ConnectionLost { stage: crate::session::Stage::DataEnd, .. })
        ),
        "{:?}",
        first.failure
    );
    assert_eq!(first.in_doubt, vec!["a@rcpt.test".to_string()]);
    assert_eq!(pool.open_connections(HOST), 0);

    // The peer would still answer on the first connection; only the pool's rule keeps it out.
    assert!(delivered(&send(&pool, "b@rcpt.test").await));
    assert_eq!(peer.accepted(), 2, "the broken connection was reused");
    assert!(peer.commands()[0].iter().all(|c| c != "RSET"), "{:?}", peer.commands());
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_replaced_without_failing_the_delivery() {
    let peer = Peer::start(Behaviour { close_after_first_end: true, ..Default::default() }).await;
    let pool = pool(&peer, 4, Duration::from_secs(30));

    assert!(delivered(&send(&pool, "a@rcpt.test").await));
    peer.wait_until("the server closed the first connection", |s| s.open == 0).await;
    let second = send(&pool, "b@rcpt.test").await;
    assert!(delivered(&second), "{second:?}");
    assert_eq!(peer.accepted(), 2);
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let peer = Peer::start(Behaviour::default()).await;
    let pool = pool(&peer, 4, Duration::from_millis(100));

    assert!(delivered(&send(&pool, "a@rcpt.test").await));
    peer.wait_until("the idle connection is QUIT", |s| {
        s.open == 0 && s.commands[0].last().map(String::as_str) == Some("QUIT")
    })
    .await;
    assert_eq!(pool.open_connections(HOST), 0);
    assert!(delivered(&send(&pool, "b@rcpt.test").await));
    assert_eq!(peer.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_host_cap_holds_and_waiting_jobs_reuse_the_capped_connections() {
    let peer = Peer::start(Behaviour { gated: true, ..Default::default() }).await;
    let pool = pool(&peer, 2, Duration::from_secs(30));

    let jobs: Vec<_> = (0..6)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move { send(&pool, &format!("r{i}@rcpt.test")).await })
        })
        .collect();
    // Two sessions reach the end of DATA and are held there; the other four must wait for them.
    peer.wait_until("two sessions are held at end of data", |s| s.waiting == 2).await;
    assert_eq!(peer.accepted(), 2, "a third connection was opened past the cap");
    assert_eq!(pool.open_connections(HOST), 2);

    peer.gate.add_permits(6);
    for job in jobs {
        assert!(delivered(&job.await.unwrap()));
    }
    let stats = peer.stats.lock().unwrap();
    assert_eq!(stats.max_open, 2, "more than two connections were open at once");
    assert_eq!(stats.accepted, 2, "waiting jobs opened new connections instead of reusing");
    let transactions: usize = stats
        .commands
        .iter()
        .map(|c| c.iter().filter(|c| c.starts_with("MAIL FROM")).count())
        .sum();
    assert_eq!(transactions, 6);
}

#[tokio::test]
async fn an_idle_timeout_of_zero_turns_reuse_off() {
    let peer = Peer::start(Behaviour::default()).await;
    let pool = pool(&peer, 4, Duration::ZERO);

    assert!(delivered(&send(&pool, "a@rcpt.test").await));
    assert!(delivered(&send(&pool, "b@rcpt.test").await));
    assert_eq!(peer.accepted(), 2);
    peer.wait_until("both connections are QUIT", |s| {
        s.open == 0 && s.commands.iter().all(|c| c.last().map(String::as_str) == Some("QUIT"))
    })
    .await;
}
