use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::TimeZone;
use hickory_resolver::proto::rr::rdata::{A, MX};
use hickory_resolver::proto::rr::RData;
use postwire_proto::SendRequest;
use postwire_store::{NewMessage, PendingRecipient};

use super::*;
use crate::testutil::{name, start_dns, Script, SmtpPeer, Zone};

/// A queue holding claimable jobs in memory and recording completions.
#[derive(Default)]
struct FakeQueue {
    jobs: Mutex<Vec<ClaimedJob>>,
    completed: Mutex<Vec<(String, Vec<RecipientOutcome>)>>,
    fail_complete: bool,
}

#[async_trait]
impl Queue for FakeQueue {
    async fn accept(&self, _: NewMessage) -> Result<(), StoreError> {
        unimplemented!("not used by the worker")
    }
    async fn claim(&self, _: &str, _: Duration) -> Result<Option<ClaimedJob>, StoreError> {
        let mut jobs = self.jobs.lock().unwrap();
        Ok((!jobs.is_empty()).then(|| jobs.remove(0)))
    }
    async fn complete(
        &self,
        job: &ClaimedJob,
        outcomes: Vec<RecipientOutcome>,
    ) -> Result<(), StoreError> {
        if self.fail_complete {
            return Err(StoreError::Closed);
        }
        self.completed.lock().unwrap().push((job.job_id.clone(), outcomes));
        Ok(())
    }
    async fn renew(&self, _: &ClaimedJob, _: Duration) -> Result<bool, StoreError> {
        Ok(true)
    }
    async fn wait_for_work(&self, max: Duration) {
        tokio::time::sleep(max.min(Duration::from_millis(20))).await;
    }
    async fn depth(&self) -> Result<u64, StoreError> {
        Ok(self.jobs.lock().unwrap().len() as u64)
    }
}

fn job(domain: &str, recipients: &[&str]) -> ClaimedJob {
    job_created(domain, recipients, Utc::now())
}

fn job_created(domain: &str, recipients: &[&str], created_at: DateTime<Utc>) -> ClaimedJob {
    ClaimedJob {
        job_id: format!("job_{domain}"),
        claim_token: "claim".into(),
        message_id: "msg_1".into(),
        created_at,
        request: SendRequest {
            from: "Sender <s@sender.test>".into(),
            to: recipients.iter().map(|r| r.to_string()).collect(),
            subject: "Hi".into(),
            text: Some("hello\n.\nbye".into()),
            ..Default::default()
        },
        message_id_header: "msg_1@sender.test".into(),
        domain: domain.into(),
        recipients: recipients
            .iter()
            .enumerate()
            .map(|(i, e)| PendingRecipient {
                email: e.to_string(),
                attempts: 0,
                position: i as u32,
            })
            .collect(),
        sandbox: false,
        raw: None,
    }
}

fn mx(pref: u16, host: &str) -> RData {
    RData::MX(MX::new(pref, name(host)))
}

fn a(ip: Ipv4Addr) -> RData {
    RData::A(A(ip))
}

struct Harness {
    worker: Arc<MtaWorker>,
    queue: Arc<FakeQueue>,
    metrics: Metrics,
}

fn settings(dns: SocketAddr, smtp_port: u16) -> Settings {
    let mut s = Settings::default();
    s.dns.nameservers = vec![dns];
    s.dns.timeout = Some(postwire_config::Duration::from_secs(2));
    s.smtp.port = smtp_port;
    s.smtp.helo_name = "worker.test".into();
    s.smtp.connect_timeout = postwire_config::Duration::from_secs(3);
    s.smtp.command_timeout = postwire_config::Duration::from_secs(3);
    s.smtp.data_timeout = postwire_config::Duration::from_secs(3);
    s
}

fn harness(settings: &Settings, queue: FakeQueue) -> Harness {
    let queue = Arc::new(queue);
    let metrics = Metrics::new();
    let worker =
        MtaWorker::new(settings, queue.clone(), metrics.clone(), TrackingKeys::new(b"k")).unwrap();
    Harness { worker: Arc::new(worker), queue, metrics }
}

fn queue_with(jobs: Vec<ClaimedJob>) -> FakeQueue {
    FakeQueue { jobs: Mutex::new(jobs), ..Default::default() }
}

fn outcomes_by_email(q: &FakeQueue) -> HashMap<String, RecipientOutcome> {
    q.completed
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(_, o)| o.clone())
        .map(|o| (o.email.clone(), o))
        .collect()
}

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// An SMTP peer accepting everything as the one MX of `domain`, and the DNS server saying so.
async fn accepting_mx(domain: &str) -> (SmtpPeer, SocketAddr) {
    let peer = SmtpPeer::start(LOCAL, Script::default()).await;
    let mx_name = format!("mx.{domain}");
    let dns = start_dns(
        Zone::default()
            .add(domain, mx(10, &format!("{mx_name}.")))
            .add(&mx_name, a(Ipv4Addr::LOCALHOST)),
    )
    .await;
    (peer, dns)
}

#[tokio::test]
async fn each_recipient_is_delivered_bounced_or_deferred_by_its_own_reply() {
    let peer = SmtpPeer::start(
        LOCAL,
        Script {
            rcpt: HashMap::from([
                ("b@rcpt.test".to_string(), "550 5.1.1 no such user".to_string()),
                ("c@rcpt.test".to_string(), "451 4.7.1 try later".to_string()),
            ]),
            ..Default::default()
        },
    )
    .await;
    let dns = start_dns(
        Zone::default()
            .add("rcpt.test", mx(10, "mx.rcpt.test."))
            .add("mx.rcpt.test", a(Ipv4Addr::LOCALHOST)),
    )
    .await;
    let h = harness(
        &settings(dns, peer.addr.port()),
        queue_with(vec![job("rcpt.test", &["a@rcpt.test", "b@rcpt.test", "c@rcpt.test"])]),
    );

    let before = Utc::now();
    assert!(h.worker.step_once().await.unwrap());
    let o = outcomes_by_email(&h.queue);
    assert_eq!(o["a@rcpt.test"].result, DeliveryResult::Delivered);
    assert_eq!(o["a@rcpt.test"].mx_host.as_deref(), Some("mx.rcpt.test"));
    assert_eq!(o["b@rcpt.test"].result, DeliveryResult::Bounced);
    assert_eq!(o["b@rcpt.test"].response, "550 5.1.1 no such user");
    let DeliveryResult::Deferred { next_attempt_at } = o["c@rcpt.test"].result else {
        panic!("{:?}", o["c@rcpt.test"])
    };
    assert_eq!(o["c@rcpt.test"].response, "451 4.7.1 try later");
    // First failed attempt → schedule[0] = 1m.
    let delay = next_attempt_at - before;
    assert!(
        delay >= chrono::Duration::seconds(59) && delay <= chrono::Duration::seconds(70),
        "{delay}"
    );

    let seen = peer.seen();
    assert_eq!(seen[0].messages.len(), 1);
    let wire = String::from_utf8_lossy(&seen[0].messages[0]);
    assert!(wire.contains("\r\n..\r\n"), "the lone dot line is stuffed: {wire}");
    assert!(!wire.contains("\n.\n"));

    let m = h.metrics.render();
    for r in ["delivered", "bounced", "deferred"] {
        assert!(m.contains(&format!("postwire_deliveries_total{{result=\"{r}\"}} 1")), "{m}");
    }
    assert!(m.contains("postwire_smtp_transaction_seconds_count 1"), "{m}");
    assert!(!h.worker.step_once().await.unwrap(), "the queue is empty now");
}

#[tokio::test]
async fn messages_from_a_domain_with_a_key_arrive_dkim_signed() {
    let dir =
        std::env::temp_dir().join(format!("postwire-worker-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let der = mail_auth::common::crypto::Ed25519Key::generate_pkcs8().unwrap();
    use base64::Engine;
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    );
    std::fs::write(dir.join("ed.pem"), pem).unwrap();
    let peer = SmtpPeer::start(LOCAL, Script::default()).await;
    let dns = start_dns(Zone::default().add("signed.test", a(Ipv4Addr::LOCALHOST))).await;
    let mut s = settings(dns, peer.addr.port());
    s.dkim = vec![postwire_config::DkimKey {
        domain: "sender.test".into(),
        selector: "ed1".into(),
        algorithm: postwire_config::DkimAlgorithm::Ed25519Sha256,
        private_key: dir.join("ed.pem"),
    }];
    let h = harness(&s, queue_with(vec![job("signed.test", &["k@signed.test"])]));
    assert!(h.worker.step_once().await.unwrap());
    let wire = String::from_utf8(peer.seen()[0].messages[0].clone()).unwrap();
    assert!(
        wire.starts_with("DKIM-Signature: v=1; a=ed25519-sha256; s=ed1; d=sender.test;"),
        "{wire}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn null_mx_and_nxdomain_bounce_without_connecting() {
    let peer = SmtpPeer::start(LOCAL, Script::default()).await;
    let dns = start_dns(Zone::default().add("nomail.test", mx(0, "."))).await;
    let h = harness(
        &settings(dns, peer.addr.port()),
        queue_with(vec![
            job("nomail.test", &["x@nomail.test"]),
            job("missing.test", &["y@missing.test"]),
        ]),
    );
    assert!(h.worker.step_once().await.unwrap());
    assert!(h.worker.step_once().await.unwrap());
    let o = outcomes_by_email(&h.queue);
    assert_eq!(o["x@nomail.test"].result, DeliveryResult::Bounced);
    assert!(o["x@nomail.test"].response.contains("null MX"), "{}", o["x@nomail.test"].response);
    assert_eq!(o["y@missing.test"].result, DeliveryResult::Bounced);
    assert!(o["y@missing.test"].response.contains("NXDOMAIN"), "{}", o["y@missing.test"].response);
    assert!(peer.seen().is_empty());
}

#[tokio::test]
async fn servfail_defers() {
    let dns = start_dns(Zone::default().servfail("broken.test")).await;
    let h = harness(&settings(dns, 25), queue_with(vec![job("broken.test", &["z@broken.test"])]));
    assert!(h.worker.step_once().await.unwrap());
    let o = outcomes_by_email(&h.queue);
    assert!(
        matches!(o["z@broken.test"].result, DeliveryResult::Deferred { .. }),
        "{:?}",
        o["z@broken.test"]
    );
}

#[tokio::test]
async fn a_domain_without_mx_records_is_delivered_to_its_own_address() {
    let peer = SmtpPeer::start(LOCAL, Script::default()).await;
    let dns = start_dns(Zone::default().add("implicit.test", a(Ipv4Addr::LOCALHOST))).await;
    let h = harness(
        &settings(dns, peer.addr.port()),
        queue_with(vec![job("implicit.test", &["u@implicit.test"])]),
    );
    assert!(h.worker.step_once().await.unwrap());
    let o = outcomes_by_email(&h.queue);
    assert_eq!(o["u@implicit.test"].result, DeliveryResult::Delivered);
    assert_eq!(o["u@implicit.test"].mx_host.as_deref(), Some("implicit.test"));
}

#[tokio::test]
async fn a_refusing_primary_mx_falls_through_to_the_backup() {
    // The backup listens on 127.0.0.2; the primary's 127.0.0.3 has nothing on that port.
    let peer = SmtpPeer::start(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), Script::default()).await;
    let dns = start_dns(
        Zone::default()
            .add("two.test", mx(10, "primary.two.test."))
            .add("two.test", mx(20, "backup.two.test."))
            .add("primary.two.test", a(Ipv4Addr::new(127, 0, 0, 3)))
            .add("backup.two.test", a(Ipv4Addr::new(127, 0, 0, 2))),
    )
    .await;
    let h = harness(
        &settings(dns, peer.addr.port()),
        queue_with(vec![job("two.test", &["v@two.test"])]),
    );
    assert!(h.worker.step_once().await.unwrap());
    let o = outcomes_by_email(&h.queue);
    assert_eq!(o["v@two.test"].result, DeliveryResult::Delivered);
    assert_eq!(o["v@two.test"].mx_host.as_deref(), Some("backup.two.test"));
}

#[tokio::test]
async fn when_every_host_fails_recipients_are_deferred_with_the_last_error() {
    let greeter = SmtpPeer::start(
        LOCAL,
        Script { greeting: "421 4.3.2 shutting down".into(), ..Default::default() },
    )
    .await;
    let dns = start_dns(
        Zone::default()
            .add("down.test", mx(10, "a.down.test."))
            .add("down.test", mx(20, "b.down.test."))
            .add("a.down.test", a(Ipv4Addr::new(127, 0, 0, 4)))
            .add("b.down.test", a(Ipv4Addr::LOCALHOST)),
    )
    .await;
    let h = harness(
        &settings(dns, greeter.addr.port()),
        queue_with(vec![job("down.test", &["w@down.test"])]),
    );
    assert!(h.worker.step_once().await.unwrap());
    let o = outcomes_by_email(&h.queue);
    assert!(
        matches!(o["w@down.test"].result, DeliveryResult::Deferred { .. }),
        "{:?}",
        o["w@down.test"]
    );
    assert!(
        o["w@down.test"].response.contains("421 4.3.2 shutting down"),
        "{}",
        o["w@down.test"].response
    );
    assert_eq!(o["w@down.test"].mx_host.as_deref(), Some("b.down.test"));
}

#[tokio::test]
async fn a_failed_complete_is_reported_and_nothing_panics() {
    let dns = start_dns(Zone::default()).await;
    let mut q = queue_with(vec![job("gone.test", &["q@gone.test"])]);
    q.fail_complete = true;
    let h = harness(&settings(dns, 25), q);
    assert!(matches!(h.worker.step_once().await, Err(WorkerError::Queue(StoreError::Closed))));
}

#[tokio::test]
async fn run_processes_queued_jobs_and_returns_after_shutdown() {
    let peer = SmtpPeer::start(LOCAL, Script::default()).await;
    let dns = start_dns(Zone::default().add("run.test", a(Ipv4Addr::LOCALHOST))).await;
    let mut jobs = Vec::new();
    for i in 0..5 {
        let mut j = job("run.test", &[&format!("r{i}@run.test")]);
        j.job_id = format!("job_{i}");
        jobs.push(j);
    }
    let h = harness(&settings(dns, peer.addr.port()), queue_with(jobs));
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(h.worker.clone().run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while h.queue.completed.lock().unwrap().len() < 5 {
        assert!(tokio::time::Instant::now() < deadline, "jobs were not processed in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("run returns after shutdown")
        .unwrap();
    assert_eq!(
        outcomes_by_email(&h.queue)
            .values()
            .filter(|o| o.result == DeliveryResult::Delivered)
            .count(),
        5
    );
}

fn verdict(email: &str, verdict: Verdict, response: &str) -> RecipientVerdict {
    RecipientVerdict {
        email: email.into(),
        verdict,
        response: response.into(),
        mx_host: Some("mx.test".into()),
        hard_bounce: false,
    }
}

#[test]
fn deferred_recipients_follow_the_retry_schedule_by_attempt_count() {
    let retry = Retry::default();
    let now = Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap();
    let mut j =
        job_created("d.test", &["a@d.test", "b@d.test"], now - chrono::Duration::minutes(10));
    j.recipients[1].attempts = 3; // this is the 4th attempt → schedule[3] = 30m
    let out = outcomes(
        &j,
        vec![
            verdict("a@d.test", Verdict::Failed(Action::Retry), "451 later"),
            verdict("b@d.test", Verdict::Failed(Action::Retry), "451 later"),
        ],
        &retry,
        now,
    );
    assert_eq!(
        out[0].result,
        DeliveryResult::Deferred { next_attempt_at: now + chrono::Duration::minutes(1) }
    );
    assert_eq!(
        out[1].result,
        DeliveryResult::Deferred { next_attempt_at: now + chrono::Duration::minutes(30) }
    );
    assert_eq!(out[0].response, "451 later");
}

#[test]
fn a_recipient_still_deferred_after_max_age_bounces_as_expired() {
    let retry = Retry::default();
    let now = Utc.with_ymd_and_hms(2024, 5, 3, 12, 0, 0).unwrap();
    let j = job_created("d.test", &["a@d.test", "b@d.test"], now - chrono::Duration::hours(48));
    let out = outcomes(
        &j,
        vec![
            verdict("a@d.test", Verdict::Failed(Action::Retry), "451 4.7.1 try later"),
            verdict("b@d.test", Verdict::Delivered, "250 ok"),
        ],
        &retry,
        now,
    );
    assert_eq!(out[0].result, DeliveryResult::Bounced);
    assert_eq!(out[0].response, "expired: last reply was 451 4.7.1 try later");
    assert_eq!(out[1].result, DeliveryResult::Delivered);
}

#[test]
fn a_recipient_without_a_verdict_is_deferred_not_lost() {
    let now = Utc::now();
    let j = job_created("d.test", &["a@d.test"], now);
    let out = outcomes(&j, vec![], &Retry::default(), now);
    assert!(matches!(out[0].result, DeliveryResult::Deferred { .. }));
}

#[tokio::test]
async fn a_sandbox_job_is_delivered_without_a_dns_query_or_a_connection() {
    let (peer, dns) = accepting_mx("sandbox.test").await;
    let mut sandboxed = job("sandbox.test", &["a@sandbox.test", "b@sandbox.test"]);
    sandboxed.sandbox = true;
    let h = harness(&settings(dns, peer.addr.port()), queue_with(vec![sandboxed]));
    assert!(h.worker.step_once().await.unwrap());
    let o = outcomes_by_email(&h.queue);
    for email in ["a@sandbox.test", "b@sandbox.test"] {
        assert_eq!(o[email].result, DeliveryResult::Delivered);
        assert_eq!(o[email].response, SANDBOX_RESPONSE);
        assert_eq!(o[email].mx_host, None);
    }
    assert!(peer.seen().is_empty(), "no SMTP connection for a sandbox job");
    assert_eq!(h.metrics.deliveries.with_label_values(&["delivered"]).get(), 0);
}

/// Suppression list: only a 5xx reply to RCPT TO flags an outcome (`suppress`), never a 4xx,
/// a DATA rejection or a delivery.
#[tokio::test]
async fn only_a_5xx_to_rcpt_marks_the_outcome_for_suppression() {
    let rcpt_peer = SmtpPeer::start(
        LOCAL,
        Script {
            rcpt: HashMap::from([
                ("b@hard.test".to_string(), "550 5.1.1 no such user".to_string()),
                ("c@hard.test".to_string(), "451 4.7.1 try later".to_string()),
            ]),
            ..Default::default()
        },
    )
    .await;
    let dns = start_dns(
        Zone::default()
            .add("hard.test", mx(10, "mx.hard.test."))
            .add("mx.hard.test", a(Ipv4Addr::LOCALHOST)),
    )
    .await;
    let h = harness(
        &settings(dns, rcpt_peer.addr.port()),
        queue_with(vec![job("hard.test", &["a@hard.test", "b@hard.test", "c@hard.test"])]),
    );
    assert!(h.worker.step_once().await.unwrap());
    let o = outcomes_by_email(&h.queue);
    assert!(!o["a@hard.test"].suppress);
    assert!(o["b@hard.test"].suppress, "{:?}", o["b@hard.test"]);
    assert!(!o["c@hard.test"].suppress);

    let data_peer = SmtpPeer::start(
        LOCAL,
        Script { end_reply: Some("554 5.7.1 refused as spam".into()), ..Default::default() },
    )
    .await;
    let dns = start_dns(
        Zone::default()
            .add("data.test", mx(10, "mx.data.test."))
            .add("mx.data.test", a(Ipv4Addr::LOCALHOST)),
    )
    .await;
    let h = harness(
        &settings(dns, data_peer.addr.port()),
        queue_with(vec![job("data.test", &["d@data.test"])]),
    );
    assert!(h.worker.step_once().await.unwrap());
    let o = outcomes_by_email(&h.queue);
    assert_eq!(o["d@data.test"].result, DeliveryResult::Bounced);
    assert!(!o["d@data.test"].suppress, "a DATA rejection is about the message, not the address");
}

#[test]
fn a_scheduled_message_is_not_expired_by_the_days_it_waited_for_send_at() {
    let retry = Retry::default();
    let now = Utc.with_ymd_and_hms(2024, 5, 8, 12, 0, 0).unwrap();
    let mut j = job_created("d.test", &["a@d.test"], now - chrono::Duration::days(7));
    j.request.send_at = Some(now - chrono::Duration::minutes(1));
    let out = outcomes(
        &j,
        vec![verdict("a@d.test", Verdict::Failed(Action::Retry), "451 4.7.1 try later")],
        &retry,
        now,
    );
    assert!(matches!(out[0].result, DeliveryResult::Deferred { .. }), "{:?}", out[0]);
}

#[tokio::test]
async fn with_a_bounce_domain_each_copy_goes_from_its_own_verified_return_path() {
    let (peer, dns) = accepting_mx("rcpt.test").await;
    let mut s = settings(dns, peer.addr.port());
    s.bounces.domain = "Bounces.Sender.test".into();
    let mut j = job("rcpt.test", &["a@rcpt.test", "b@rcpt.test"]);
    j.message_id = "msg_0193a5b2c3d47e8f9a0b1c2d3e4f5a6b".into();
    let h = harness(&s, queue_with(vec![j]));
    assert!(h.worker.step_once().await.unwrap());
    let o = outcomes_by_email(&h.queue);
    assert_eq!(o["a@rcpt.test"].result, DeliveryResult::Delivered);
    assert_eq!(o["b@rcpt.test"].result, DeliveryResult::Delivered);

    let commands: Vec<String> = peer.seen().into_iter().flat_map(|s| s.commands).collect();
    let senders: Vec<&str> = commands
        .iter()
        .filter_map(|c| c.strip_prefix("MAIL FROM:<"))
        .map(|c| c.split('>').next().unwrap())
        .collect();
    assert_eq!(senders.len(), 2, "one transaction per copy: {commands:?}");
    let keys = TrackingKeys::new(b"k");
    let mut positions = Vec::new();
    for sender in senders {
        let (local, domain) = sender.split_once('@').unwrap();
        assert_eq!(domain, "bounces.sender.test");
        assert!(local.len() <= 64);
        let path = keys.verify_return_path(local, std::time::SystemTime::now()).unwrap();
        assert_eq!(path.message_id, "msg_0193a5b2c3d47e8f9a0b1c2d3e4f5a6b");
        positions.push(path.recipient);
    }
    positions.sort();
    assert_eq!(positions, [0, 1]);
}

#[tokio::test]
async fn without_a_bounce_domain_the_envelope_sender_is_the_from_address() {
    let (peer, dns) = accepting_mx("rcpt.test").await;
    let h = harness(
        &settings(dns, peer.addr.port()),
        queue_with(vec![job("rcpt.test", &["a@rcpt.test", "b@rcpt.test"])]),
    );
    assert!(h.worker.step_once().await.unwrap());
    let commands: Vec<String> = peer.seen().into_iter().flat_map(|s| s.commands).collect();
    let mails: Vec<&String> = commands.iter().filter(|c| c.starts_with("MAIL FROM")).collect();
    assert_eq!(mails, ["MAIL FROM:<s@sender.test>"], "one transaction for both recipients");
}
