//! Loopback stand-ins for unit tests: a scripted SMTP responder and a tiny authoritative DNS
//! server. The end-to-end suite (tests/) runs real peers; these only exercise this crate's logic.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};

/// How the SMTP responder behaves.
#[derive(Clone, Debug)]
pub struct Script {
    pub greeting: String,
    /// Extra EHLO keywords, e.g. `STARTTLS`.
    pub extensions: Vec<String>,
    /// Reply per recipient address (lower-case); default `250 2.1.5 ok`.
    pub rcpt: HashMap<String, String>,
    pub data_reply: String,
    /// Reply to the final "."; `None` never answers (to test timeouts).
    pub end_reply: Option<String>,
    /// After answering STARTTLS with 220, send this instead of a TLS ServerHello and close.
    pub break_tls: bool,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            greeting: "220 mx.test ESMTP ready".into(),
            extensions: vec![],
            rcpt: HashMap::new(),
            data_reply: "354 go ahead".into(),
            end_reply: Some("250 2.0.0 queued as X1".into()),
            break_tls: false,
        }
    }
}

/// What one connection saw.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Command lines, without CRLF.
    pub commands: Vec<String>,
    /// Raw DATA payloads as received (dot-stuffed, without the terminating ".").
    pub messages: Vec<Vec<u8>>,
}

/// A running SMTP responder.
pub struct SmtpPeer {
    pub addr: SocketAddr,
    pub sessions: Arc<Mutex<Vec<Seen>>>,
}

impl SmtpPeer {
    pub async fn start(ip: IpAddr, script: Script) -> Self {
        Self::start_on(TcpListener::bind((ip, 0)).await.unwrap(), script)
    }

    pub fn start_on(listener: TcpListener, script: Script) -> Self {
        let addr = listener.local_addr().unwrap();
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&sessions);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let idx = {
                    let mut l = log.lock().unwrap();
                    l.push(Seen::default());
                    l.len() - 1
                };
                let script = script.clone();
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let _ = serve(stream, script, log, idx).await;
                });
            }
        });
        Self { addr, sessions }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.sessions.lock().unwrap().clone()
    }
}

async fn serve(
    stream: tokio::net::TcpStream,
    script: Script,
    log: Arc<Mutex<Vec<Seen>>>,
    idx: usize,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(format!("{}\r\n", script.greeting).as_bytes()).await?;
    if !script.greeting.starts_with('2') {
        return Ok(());
    }
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        log.lock().unwrap()[idx].commands.push(cmd.clone());
        let upper = cmd.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") {
            let mut lines = vec!["250-mx.test".to_string(), "250-8BITMIME".to_string()];
            lines.extend(script.extensions.iter().map(|e| format!("250-{e}")));
            lines.push("250 SIZE 10000000".into());
            lines.join("\r\n")
        } else if upper.starts_with("STARTTLS") {
            if script.break_tls {
                w.write_all(b"220 2.0.0 ready\r\n").await?;
                w.write_all(b"this is not a TLS server hello\r\n").await?;
                return Ok(());
            }
            "454 4.7.0 TLS not available".into()
        } else if upper.starts_with("MAIL FROM") {
            "250 2.1.0 ok".into()
        } else if upper.starts_with("RCPT TO") {
            let addr = cmd[cmd.find('<').map_or(0, |i| i + 1)..cmd.rfind('>').unwrap_or(cmd.len())]
                .to_ascii_lowercase();
            script.rcpt.get(&addr).cloned().unwrap_or_else(|| "250 2.1.5 ok".into())
        } else if upper == "DATA" {
            w.write_all(format!("{}\r\n", script.data_reply).as_bytes()).await?;
            if !script.data_reply.starts_with('3') {
                continue;
            }
            let mut data = Vec::new();
            loop {
                let mut b = [0u8; 1];
                if r.read(&mut b).await? == 0 {
                    return Ok(());
                }
                data.push(b[0]);
                if data.ends_with(b"\r\n.\r\n") {
                    data.truncate(data.len() - 3);
                    break;
                }
            }
            log.lock().unwrap()[idx].messages.push(data);
            match &script.end_reply {
                Some(reply) => reply.clone(),
                None => {
                    // Never answer; hold the connection open until the client gives up.
                    let mut sink = Vec::new();
                    let _ = r.read_to_end(&mut sink).await;
                    return Ok(());
                }
            }
        } else if upper == "RSET" || upper == "NOOP" {
            "250 2.0.0 ok".into()
        } else if upper == "QUIT" {
            w.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            "500 5.5.1 unknown command".into()
        };
        w.write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
}

/// Answers of the fake DNS server.
#[derive(Default, Clone)]
pub struct Zone {
    records: HashMap<(String, RecordType), Vec<RData>>,
    servfail: Vec<String>,
}

impl Zone {
    pub fn add(mut self, name: &str, rdata: RData) -> Self {
        let key = (name.trim_end_matches('.').to_ascii_lowercase(), rdata.record_type());
        self.records.entry(key).or_default().push(rdata);
        self
    }

    pub fn servfail(mut self, name: &str) -> Self {
        self.servfail.push(name.to_ascii_lowercase());
        self
    }

    fn answer(&self, request: &Message) -> Message {
        let mut resp = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
        resp.metadata.recursion_desired = request.metadata.recursion_desired;
        resp.metadata.recursion_available = true;
        resp.metadata.authoritative = true;
        let Some(q) = request.queries.first() else {
            resp.metadata.response_code = ResponseCode::FormErr;
            return resp;
        };
        resp.add_query(q.clone());
        let name = q.name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
        if self.servfail.contains(&name) {
            resp.metadata.response_code = ResponseCode::ServFail;
            return resp;
        }
        let exists = self.records.keys().any(|(n, _)| *n == name);
        match self.records.get(&(name, q.query_type)) {
            Some(rdata) => {
                for rd in rdata {
                    resp.add_answer(Record::from_rdata(q.name.clone(), 300, rd.clone()));
                }
            }
            None if exists => {} // NODATA
            None => resp.metadata.response_code = ResponseCode::NXDomain,
        }
        resp
    }
}

/// Serves `zone` over UDP on loopback; returns its address.
pub async fn start_dns(zone: Zone) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let Ok(request) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if let Ok(bytes) = zone.answer(&request).to_vec() {
                let _ = socket.send_to(&bytes, from).await;
            }
        }
    });
    addr
}

pub fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}
