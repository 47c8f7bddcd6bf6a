//! A webhook receiver on loopback: the application's endpoint, as the dispatcher sees it.
//!
//! [`WebhookReceiver`] is an axum server on `127.0.0.1:0` that records every request (method,
//! path, headers with lowercased names, raw body) and answers with a scriptable status, after
//! an optional scriptable delay (to exercise the dispatcher's timeout). [`verify_standard_webhook`]
//! checks a recorded request with the reference `standardwebhooks` library, as the
//! application would.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Decides the status of the `nth` request (counted from 1).
pub type Responder = Arc<dyn Fn(u32) -> u16 + Send + Sync>;

/// Decides how long to wait before answering the `nth` request (counted from 1).
pub type Delay = Arc<dyn Fn(u32) -> Duration + Send + Sync>;

/// One request as the receiver saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// The HTTP method, e.g. `POST`.
    pub method: String,
    /// The request path, e.g. `/hooks/a`.
    pub path: String,
    /// The query string without `?`, if any.
    pub query: Option<String>,
    /// Headers by lowercased name; repeated headers are joined with `", "`.
    pub headers: BTreeMap<String, String>,
    /// The body exactly as received.
    pub body: Vec<u8>,
    /// The status the receiver answered with.
    pub status: u16,
}

impl RecordedRequest {
    /// The value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("webhook body is not JSON")
    }
}

struct Shared {
    requests: Mutex<Vec<RecordedRequest>>,
    responder: Mutex<Responder>,
    delay: Mutex<Delay>,
    /// The number of recorded requests, for [`WebhookReceiver::wait_for_requests`].
    count: watch::Sender<usize>,
}

/// A running webhook receiver. Stops listening when dropped.
pub struct WebhookReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl fmt::Debug for WebhookReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookReceiver").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl WebhookReceiver {
    /// Binds `127.0.0.1:0` and answers every request with 200.
    ///
    /// # Panics
    /// If no loopback port can be bound.
    pub async fn start() -> WebhookReceiver {
        Self::try_start().await.expect("start the webhook receiver")
    }

    /// Like [`WebhookReceiver::start`], returning the bind error instead of panicking.
    pub async fn try_start() -> anyhow::Result<WebhookReceiver> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.context("bind webhook receiver")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            responder: Mutex::new(Arc::new(|_| 200)),
            delay: Mutex::new(Arc::new(|_| Duration::ZERO)),
            count: watch::Sender::new(0),
        });
        let app = axum::Router::new().fallback(record).with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(WebhookReceiver { addr, shared, task })
    }

    /// Replaces how statuses are chosen, e.g. `|nth| if nth <= 2 { 503 } else { 200 }`.
    pub fn respond_with(&self, f: impl Fn(u32) -> u16 + Send + Sync + 'static) {
        *lock(&self.shared.responder) = Arc::new(f);
    }

    /// Replaces how long each answer is held back, e.g. to make the first attempt time out.
    pub fn delay_with(&self, f: impl Fn(u32) -> Duration + Send + Sync + 'static) {
        *lock(&self.shared.delay) = Arc::new(f);
    }

    /// The base URL, e.g. `http://127.0.0.1:41234` (no trailing slash); append any path.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Waits until at least `n` requests arrived, or fails after `timeout`.
    pub async fn wait_for_requests(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<RecordedRequest>> {
        let mut rx = self.shared.count.subscribe();
        let arrived = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|count| *count >= n)).await,
            Ok(Ok(_))
        );
        if arrived {
            return Ok(self.requests());
        }
        let got = self.requests().len();
        anyhow::bail!(
            "webhook receiver {} got {got} of {n} requests within {timeout:?}",
            self.url(),
        )
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poison| poison.into_inner())
}

async fn record(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let nth = {
        let requests = lock(&shared.requests);
        u32::try_from(requests.len() + 1).unwrap_or(u32::MAX)
    };
    let status = (lock(&shared.responder).clone())(nth);
    let delay = (lock(&shared.delay).clone())(nth);
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        map.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let request = RecordedRequest {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers: map,
        body: body.to_vec(),
        status,
    };
    // Recorded on arrival, so a request the client gives up on (a timeout) is still seen.
    let count = {
        let mut requests = lock(&shared.requests);
        requests.push(request);
        requests.len()
    };
    shared.count.send_replace(count);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Verifies `req`'s `webhook-id`, `webhook-timestamp` and `webhook-signature` headers against
/// `secret` (`whsec_…`) with the reference `standardwebhooks` library (which also rejects
/// timestamps more than five minutes off), and returns the body parsed as JSON.
pub fn verify_standard_webhook(
    secret: &str,
    req: &RecordedRequest,
) -> anyhow::Result<serde_json::Value> {
    let webhook =
        standardwebhooks::Webhook::new(secret).context("webhook secret is not whsec_<base64>")?;
    let mut headers = HeaderMap::new();
    for (name, value) in &req.headers {
        headers.insert(HeaderName::from_bytes(name.as_bytes())?, HeaderValue::from_str(value)?);
    }
    webhook.verify(&req.body, &headers).with_context(|| {
        format!("Standard Webhooks verification failed for {} {}", req.method, req.path)
    })?;
    req.json()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    const WAIT: Duration = Duration::from_secs(5);

    fn secret() -> String {
        format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode([7u8; 32]))
    }

    /// Posts `body` signed the Standard Webhooks way with `secret`.
    async fn post_signed(url: &str, secret: &str, body: &str) -> u16 {
        let ts = chrono::Utc::now().timestamp();
        let signature = standardwebhooks::Webhook::new(secret)
            .unwrap()
            .sign("msg_1", ts, body.as_bytes())
            .unwrap();
        reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", "msg_1")
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    #[tokio::test]
    async fn a_signed_post_is_recorded_and_verifies_with_the_reference_library() {
        let receiver = WebhookReceiver::start().await;
        let body = r#"{"type":"message.delivered","data":{"message_id":"m1"}}"#;
        let status = post_signed(&format!("{}/hooks/a?x=1", receiver.url()), &secret(), body).await;
        assert_eq!(status, 200);
        let got = receiver.wait_for_requests(1, WAIT).await.unwrap();
        assert_eq!(got[0].method, "POST");
        assert_eq!(got[0].path, "/hooks/a");
        assert_eq!(got[0].query.as_deref(), Some("x=1"));
        assert_eq!(got[0].header("Content-Type"), Some("application/json"));
        assert_eq!(got[0].body, body.as_bytes());
        let json = verify_standard_webhook(&secret(), &got[0]).unwrap();
        assert_eq!(json["type"], "message.delivered");
    }

    #[tokio::test]
    async fn a_wrong_secret_or_a_tampered_body_fails_verification() {
        let receiver = WebhookReceiver::start().await;
        post_signed(&receiver.url(), &secret(), r#"{"a":1}"#).await;
        let mut got = receiver.wait_for_requests(1, WAIT).await.unwrap();
        let other =
            format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode([9u8; 32]));
        assert!(verify_standard_webhook(&other, &got[0]).is_err());
        got[0].body = br#"{"a":2}"#.to_vec();
        assert!(verify_standard_webhook(&secret(), &got[0]).is_err());
    }

    #[tokio::test]
    async fn statuses_follow_the_scripted_responder() {
        let receiver = WebhookReceiver::start().await;
        receiver.respond_with(|nth| if nth <= 2 { 503 } else { 204 });
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(post_signed(&receiver.url(), &secret(), "{}").await);
        }
        assert_eq!(statuses, vec![503, 503, 204]);
        let got = receiver.requests();
        assert_eq!(got.iter().map(|r| r.status).collect::<Vec<_>>(), vec![503, 503, 204]);
    }

    #[tokio::test]
    async fn waiting_for_more_requests_than_arrive_fails_at_the_deadline() {
        let receiver = WebhookReceiver::start().await;
        assert!(receiver.wait_for_requests(1, Duration::from_millis(50)).await.is_err());
    }
}
