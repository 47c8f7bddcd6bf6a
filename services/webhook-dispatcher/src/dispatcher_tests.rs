//! Dispatcher tests: a fake outbox and a real HTTP receiver on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use postwire_config::Settings;
use postwire_proto::{MessageView, Webhook};
use postwire_store::{
    ApiKeyRecord, Hit, HitRecorded, MessageOwner, NewApiKey, NewWebhook, State, StoreError,
    WebhookAttempt, WebhookDelivery,
};
use postwire_telemetry::Metrics;
use tokio_util::sync::CancellationToken;

use super::*;

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const BODY: &str = r#"{"type":"message.delivered","timestamp":"2025-01-01T00:00:00Z","data":{"message_id":"msg_1"}}"#;

/// An in-memory outbox: due deliveries are claimable, attempts are recorded.
#[derive(Default)]
struct FakeState {
    pending: Mutex<Vec<(WebhookDelivery, DateTime<Utc>)>>,
    attempts: Mutex<Vec<(WebhookDelivery, WebhookAttempt)>>,
    /// The endpoint's failure streak, as a store keeps it.
    failing_since: Mutex<Option<DateTime<Utc>>>,
    /// `disable_webhook` calls: (endpoint, event).
    disabled: Mutex<Vec<(String, postwire_proto::Event)>>,
}

impl FakeState {
    fn with(deliveries: Vec<WebhookDelivery>) -> Arc<Self> {
        let s = Self::default();
        *s.pending.lock().unwrap() = deliveries.into_iter().map(|d| (d, Utc::now())).collect();
        Arc::new(s)
    }
    fn attempts(&self) -> Vec<(WebhookDelivery, WebhookAttempt)> {
        self.attempts.lock().unwrap().clone()
    }
}

#[async_trait]
impl State for FakeState {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn create_api_key(&self, _: NewApiKey) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn api_key(&self, _: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        unimplemented!()
    }
    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        unimplemented!()
    }
    async fn revoke_api_key(&self, _: &str) -> Result<bool, StoreError> {
        unimplemented!()
    }
    async fn message(&self, _: &str) -> Result<Option<MessageView>, StoreError> {
        unimplemented!()
    }
    async fn message_owner(&self, _: &str) -> Result<Option<MessageOwner>, StoreError> {
        unimplemented!()
    }
    async fn record_hit(&self, _: Hit) -> Result<Option<HitRecorded>, StoreError> {
        unimplemented!()
    }
    async fn record_feedback(
        &self,
        _: postwire_store::Feedback,
    ) -> Result<Option<postwire_store::FeedbackRecorded>, StoreError> {
        unimplemented!()
    }
    async fn create_webhook(&self, _: NewWebhook) -> Result<Webhook, StoreError> {
        unimplemented!()
    }
    async fn webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        unimplemented!()
    }
    async fn delete_webhook(&self, _: &str) -> Result<bool, StoreError> {
        unimplemented!()
    }
    async fn claim_webhook_deliveries(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let now = Utc::now();
        let mut pending = self.pending.lock().unwrap();
        let mut out = Vec::new();
        for (d, due) in pending.iter_mut() {
            if out.len() < limit && *due <= now {
                *due = now + chrono::Duration::from_std(lease).unwrap();
                out.push(d.clone());
            }
        }
        Ok(out)
    }
    async fn finish_webhook_delivery(
        &self,
        d: &WebhookDelivery,
        a: WebhookAttempt,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.attempts.lock().unwrap().push((d.clone(), a.clone()));
        let since = {
            let mut since = self.failing_since.lock().unwrap();
            *since = if a.succeeded { None } else { Some(since.unwrap_or(a.at)) };
            *since
        };
        let mut pending = self.pending.lock().unwrap();
        pending.retain(|(p, _)| p.id != d.id);
        if let (false, Some(at)) = (a.succeeded, a.retry_at) {
            pending.push((WebhookDelivery { attempts: d.attempts + 1, ..d.clone() }, at));
        }
        Ok(since)
    }
    async fn disable_webhook(
        &self,
        id: &str,
        event: postwire_proto::Event,
    ) -> Result<bool, StoreError> {
        self.disabled.lock().unwrap().push((id.to_string(), event));
        Ok(true)
    }
    async fn next_webhook_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self.pending.lock().unwrap().iter().map(|(_, due)| *due).min())
    }
}

/// What the receiver saw.
#[derive(Clone)]
struct Seen {
    headers: HeaderMap,
    body: Vec<u8>,
}

/// A webhook endpoint on 127.0.0.1 answering each request with the next of `answers` (the last
/// one repeats), after `delay`.
async fn receiver(answers: Vec<u16>, delay: Duration) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let log = seen.clone();
    let handler = move |headers: HeaderMap, body: axum::body::Bytes| {
        let log = log.clone();
        let answers = answers.clone();
        async move {
            let n = {
                let mut log = log.lock().unwrap();
                log.push(Seen { headers, body: body.to_vec() });
                log.len()
            };
            tokio::time::sleep(delay).await;
            let code = answers[(n - 1).min(answers.len() - 1)];
            let mut resp_headers = HeaderMap::new();
            resp_headers.insert("location", "/elsewhere".parse().unwrap());
            (StatusCode::from_u16(code).unwrap(), resp_headers, "endpoint says\nno")
        }
    };
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(handler.clone()))
        .route("/elsewhere", axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), seen)
}

fn delivery(url: &str, attempts: u32) -> WebhookDelivery {
    WebhookDelivery {
        id: "whd_1".into(),
        webhook_id: "wh_1".into(),
        url: url.into(),
        secret: SECRET.into(),
        event_id: "evt_1".into(),
        body: BODY.into(),
        attempts,
    }
}

fn settings(allow_private: bool, schedule: &[&str], timeout: &str) -> Settings {
    let mut s = Settings::default();
    s.webhooks.allow_private_targets = allow_private;
    s.webhooks.retry_schedule = schedule.iter().map(|d| d.parse().unwrap()).collect();
    s.webhooks.timeout = timeout.parse().unwrap();
    s
}

fn dispatcher(settings: &Settings, state: Arc<FakeState>) -> (Dispatcher, Metrics) {
    let metrics = Metrics::new();
    (Dispatcher::new(settings, state, metrics.clone()), metrics)
}

fn count(metrics: &Metrics, result: &str) -> u64 {
    metrics.webhook_deliveries.with_label_values(&[result]).get()
}

const DEFAULT_SCHEDULE: &[&str] = &["5s", "5m", "30m"];

#[tokio::test]
async fn accepted_delivery_is_signed_verifiable_and_recorded_as_delivered() {
    let (url, seen) = receiver(vec![204], Duration::ZERO).await;
    let state = FakeState::with(vec![delivery(&url, 0)]);
    let (d, metrics) = dispatcher(&settings(true, DEFAULT_SCHEDULE, "5s"), state.clone());

    assert_eq!(d.step_once().await.unwrap(), 1);

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.body, BODY.as_bytes(), "the stored body is sent byte for byte");
    assert_eq!(req.headers["content-type"], "application/json");
    assert_eq!(req.headers["webhook-id"], "evt_1");
    let ts: i64 = req.headers["webhook-timestamp"].to_str().unwrap().parse().unwrap();
    assert!((Utc::now().timestamp() - ts).abs() < 5);
    standardwebhooks::Webhook::new(SECRET).unwrap().verify(&req.body, &req.headers).unwrap();

    let attempts = state.attempts();
    let a = &attempts[0].1;
    assert_eq!((a.status, &a.error, a.retry_at, a.succeeded), (Some(204), &None, None, true));
    assert!((Utc::now() - a.at).num_seconds() < 5, "the attempt's time is recorded");
    assert!(state.disabled.lock().unwrap().is_empty());
    assert_eq!(count(&metrics, "delivered"), 1);
    assert_eq!(d.step_once().await.unwrap(), 0, "a delivered event is not sent again");
}

#[tokio::test]
async fn first_failure_is_retried_after_the_first_schedule_step() {
    let (url, _) = receiver(vec![500], Duration::ZERO).await;
    let state = FakeState::with(vec![delivery(&url, 0)]);
    let (d, metrics) = dispatcher(&settings(true, DEFAULT_SCHEDULE, "5s"), state.clone());

    let before = Utc::now();
    d.step_once().await.unwrap();

    let (_, a) = &state.attempts()[0];
    assert!(!a.succeeded);
    assert_eq!(a.status, Some(500));
    assert_eq!(
        a.error.as_deref(),
        Some("endpoint answered 500 Internal Server Error: endpoint says no")
    );
    let wait = a.retry_at.unwrap() - before;
    assert!(wait >= chrono::Duration::seconds(5) && wait < chrono::Duration::seconds(7), "{wait}");
    assert_eq!(count(&metrics, "failed"), 1);
}

#[tokio::test]
async fn an_endpoint_failing_for_disable_after_is_disabled_with_a_webhook_disabled_event() {
    let (url, _) = receiver(vec![500, 500], Duration::ZERO).await;
    let state = FakeState::with(vec![delivery(&url, 0)]);
    let mut s = settings(true, DEFAULT_SCHEDULE, "5s");
    s.webhooks.disable_after = "1h".parse().unwrap();
    let (d, _) = dispatcher(&s, state.clone());
    d.step_once().await.unwrap();
    assert!(state.disabled.lock().unwrap().is_empty(), "one failure is not an hour of them");
    assert!(state.attempts()[0].1.latency_ms < 5_000);
    assert_eq!(state.attempts()[0].1.response.as_deref(), Some("endpoint says no"));

    // The streak began over an hour ago: the next failure disables the endpoint.
    *state.failing_since.lock().unwrap() = Some(Utc::now() - chrono::Duration::minutes(61));
    state.pending.lock().unwrap()[0].1 = Utc::now();
    d.step_once().await.unwrap();
    let disabled = state.disabled.lock().unwrap().clone();
    assert_eq!(disabled.len(), 1);
    assert_eq!(disabled[0].0, "wh_1");
    assert_eq!(disabled[0].1.kind, postwire_proto::EventType::WebhookDisabled);
    assert_eq!(disabled[0].1.data.webhook_id.as_deref(), Some("wh_1"));
    assert!(disabled[0].1.data.reason.as_deref().unwrap().contains(&url), "{:?}", disabled[0].1);
}

#[tokio::test]
async fn later_failures_follow_the_schedule_and_the_last_one_gives_up() {
    let (url, _) = receiver(vec![503], Duration::ZERO).await;
    for (made_before, expected) in [(1, Some(300)), (2, Some(1800)), (3, None)] {
        let state = FakeState::with(vec![delivery(&url, made_before)]);
        let (d, metrics) = dispatcher(&settings(true, DEFAULT_SCHEDULE, "5s"), state.clone());
        let before = Utc::now();
        d.step_once().await.unwrap();
        let (_, a) = &state.attempts()[0];
        match expected {
            Some(secs) => {
                let wait = (a.retry_at.unwrap() - before).num_seconds();
                assert!((secs..secs + 2).contains(&wait), "after {made_before}: waited {wait}");
                assert_eq!(count(&metrics, "failed"), 1);
            }
            None => {
                assert_eq!(a.retry_at, None, "attempt {} of {} is the last", made_before + 1, 4);
                assert_eq!(count(&metrics, "gave_up"), 1);
                assert_eq!(count(&metrics, "failed"), 0);
            }
        }
    }
}

#[tokio::test]
async fn retries_keep_the_webhook_id_and_re_sign_each_send() {
    let (url, seen) = receiver(vec![500, 200], Duration::ZERO).await;
    let state = FakeState::with(vec![delivery(&url, 0)]);
    let (d, metrics) = dispatcher(&settings(true, &["0s"], "5s"), state.clone());

    assert_eq!(d.step_once().await.unwrap(), 1);
    assert_eq!(d.step_once().await.unwrap(), 1);

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for req in &seen {
        assert_eq!(req.headers["webhook-id"], "evt_1");
        standardwebhooks::Webhook::new(SECRET).unwrap().verify(&req.body, &req.headers).unwrap();
    }
    assert_eq!(count(&metrics, "failed"), 1);
    assert_eq!(count(&metrics, "delivered"), 1);
}

#[tokio::test]
async fn redirect_is_a_failure_and_is_not_followed() {
    let (url, seen) = receiver(vec![302], Duration::ZERO).await;
    let state = FakeState::with(vec![delivery(&url, 0)]);
    let (d, _) = dispatcher(&settings(true, DEFAULT_SCHEDULE, "5s"), state.clone());

    d.step_once().await.unwrap();

    assert_eq!(seen.lock().unwrap().len(), 1, "the Location was not fetched");
    let (_, a) = &state.attempts()[0];
    assert_eq!(a.status, Some(302));
    assert!(a.error.as_deref().unwrap().contains("redirects are not followed"));
    assert!(a.retry_at.is_some());
}

#[tokio::test]
async fn slow_endpoint_times_out_and_is_retried() {
    let (url, _) = receiver(vec![200], Duration::from_secs(3)).await;
    let state = FakeState::with(vec![delivery(&url, 0)]);
    let (d, metrics) = dispatcher(&settings(true, DEFAULT_SCHEDULE, "200ms"), state.clone());

    let started = std::time::Instant::now();
    d.step_once().await.unwrap();

    assert!(started.elapsed() < Duration::from_secs(2));
    let (_, a) = &state.attempts()[0];
    assert_eq!(a.status, None);
    assert_eq!(a.error.as_deref(), Some("no answer within 200ms"));
    assert!(a.retry_at.is_some());
    assert_eq!(count(&metrics, "failed"), 1);
}

#[tokio::test]
async fn refused_connection_is_a_retryable_failure() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let state = FakeState::with(vec![delivery(&url, 0)]);
    let (d, _) = dispatcher(&settings(true, DEFAULT_SCHEDULE, "5s"), state.clone());

    d.step_once().await.unwrap();

    let (_, a) = &state.attempts()[0];
    assert_eq!(a.status, None);
    assert!(a.error.as_deref().unwrap().to_lowercase().contains("connect"), "{:?}", a.error);
    assert!(a.retry_at.is_some());
}

#[tokio::test]
async fn private_target_is_given_up_without_sending() {
    let (url, seen) = receiver(vec![200], Duration::ZERO).await;
    let state = FakeState::with(vec![delivery(&url, 0)]);
    let (d, metrics) = dispatcher(&settings(false, DEFAULT_SCHEDULE, "5s"), state.clone());

    d.step_once().await.unwrap();

    assert!(seen.lock().unwrap().is_empty());
    let (_, a) = &state.attempts()[0];
    assert!(a
        .error
        .as_deref()
        .unwrap()
        .contains("a loopback address; set webhooks.allow_private_targets"));
    assert_eq!(a.retry_at, None);
    assert_eq!(count(&metrics, "gave_up"), 1);
}

#[tokio::test]
async fn client_refuses_names_that_resolve_to_private_addresses() {
    // The guard inside the HTTP client catches a name that passed the pre-send check and then
    // changed (DNS rebinding); `localhost` stands in for the rebound name.
    let (d, _) = dispatcher(&settings(false, DEFAULT_SCHEDULE, "5s"), FakeState::with(vec![]));
    let err = d.client.post("http://localhost:9/").send().await.unwrap_err();
    let refused = find_source::<TargetError>(&err).expect("the resolver's refusal is in the chain");
    assert!(refused.is_permanent());
    assert!(refused.to_string().contains("loopback"));
}

#[tokio::test]
async fn invalid_secret_gives_up() {
    let (url, seen) = receiver(vec![200], Duration::ZERO).await;
    let state =
        FakeState::with(vec![WebhookDelivery { secret: "whsec_???".into(), ..delivery(&url, 0) }]);
    let (d, metrics) = dispatcher(&settings(true, DEFAULT_SCHEDULE, "5s"), state.clone());

    d.step_once().await.unwrap();

    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(state.attempts()[0].1.retry_at, None);
    assert_eq!(count(&metrics, "gave_up"), 1);
}

#[tokio::test]
async fn run_delivers_new_work_and_stops_on_shutdown() {
    let (url, seen) = receiver(vec![200], Duration::ZERO).await;
    let state = FakeState::with(vec![]);
    let (d, metrics) = dispatcher(&settings(true, DEFAULT_SCHEDULE, "5s"), state.clone());
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(Arc::new(d).run(shutdown.clone()));

    // Work appears after the loop has gone idle; it must be picked up by polling.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let many: Vec<_> =
        (0..40).map(|i| WebhookDelivery { id: format!("whd_{i}"), ..delivery(&url, 0) }).collect();
    *state.pending.lock().unwrap() = many.into_iter().map(|d| (d, Utc::now())).collect();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state.attempts().len() < 40 {
        assert!(tokio::time::Instant::now() < deadline, "only {} attempts", state.attempts().len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), running).await.expect("run stops").unwrap();
    assert_eq!(seen.lock().unwrap().len(), 40);
    assert_eq!(count(&metrics, "delivered"), 40);
}

#[tokio::test]
async fn shutdown_waits_for_sends_in_flight() {
    let (url, _) = receiver(vec![200], Duration::from_millis(400)).await;
    let state = FakeState::with(vec![delivery(&url, 0)]);
    let (d, _) = dispatcher(&settings(true, DEFAULT_SCHEDULE, "5s"), state.clone());
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(Arc::new(d).run(shutdown.clone()));

    tokio::time::sleep(Duration::from_millis(150)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), running).await.expect("run stops").unwrap();
    assert_eq!(state.attempts().len(), 1, "the claimed send finished and was recorded");
}
