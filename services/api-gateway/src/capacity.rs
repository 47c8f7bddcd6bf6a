//! The gateway's capacity: at most `limits.max_in_flight` API requests are handled at once, at
//! most `limits.max_waiting` more wait for a slot, and the slots are shared fairly between the
//! API keys that want them.
//!
//! A request being handled holds its body, its parsed, rendered and serialized copies and its
//! pending Redis and RabbitMQ calls: about 50 KB for a message with a 4 KB body, on top of its
//! connection's buffers. Without a bound, a stall of a second or two under an open-loop load
//! (slow backends, a busy host) lets thousands of them start at once, and the allocator keeps
//! most of that memory after they drain. A waiting request has not had its body read (the
//! slot is taken before the handler's body extractor runs), so it costs little more than its
//! connection.
//!
//! **Fair shares.** Each request is counted against its API key — authenticated before the
//! slot is taken, so a forged key id cannot spend another key's share — or against one shared
//! anonymous bucket (the tracking links). While `n` keys hold or wait for slots, each may hold
//! at most `max_in_flight / max(n, 2)` of them and have `max_waiting / max(n, 2)` (rounded up)
//! waiting: a single key never holds more than half, so another key finds a free slot at once
//! even while the first one's requests hang (a slow body holds its slot until
//! `http.body_read_timeout` ends it). A freed slot goes to the oldest waiter whose key is under
//! its share. A key over its share is refused with 429 ([`ApiError::KeyBusy`]); a gateway with
//! every slot busy and no room to wait refuses with 503 ([`ApiError::Overloaded`]), both with
//! `Retry-After`. Slots are never taken back, so a key that got more while it was alone keeps
//! them until those requests end.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use postwire_config::Limits;
use postwire_store::ratelimit::Granted;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::auth::ApiKey;
use crate::error::ApiError;
use crate::Gateway;

/// `Retry-After` of a refused request: by then the requests ahead of it are long done.
pub const RETRY_AFTER_SECS: u64 = 1;

/// The bucket of requests that carry no API key (open pixel, click redirects).
const ANONYMOUS: &str = "";

/// Slots for requests being handled, shared by every clone. Unlimited when
/// `limits.max_in_flight` is 0.
#[derive(Clone)]
pub struct Capacity {
    slots: Option<Arc<Slots>>,
}

struct Slots {
    max_in_flight: usize,
    max_waiting: usize,
    book: Mutex<Book>,
}

/// Who holds and who waits for slots.
#[derive(Default)]
struct Book {
    in_flight: usize,
    /// Oldest first.
    queue: VecDeque<Waiter>,
    /// Keys with a request in flight or waiting.
    keys: HashMap<String, Use>,
    next_waiter: u64,
}

#[derive(Default, Clone, Copy)]
struct Use {
    in_flight: usize,
    waiting: usize,
}

struct Waiter {
    id: u64,
    key: String,
    granted: oneshot::Sender<()>,
}

/// What `/readyz` reports.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    pub in_flight: usize,
    pub max_in_flight: usize,
    pub waiting: usize,
    pub max_waiting: usize,
    /// Keys (the anonymous bucket counted as one) with requests in flight or waiting.
    pub keys: usize,
}

impl Usage {
    /// Every slot busy and the waiting room full: the next request is refused.
    pub fn saturated(&self) -> bool {
        self.max_in_flight > 0
            && self.in_flight >= self.max_in_flight
            && self.waiting >= self.max_waiting
    }
}

/// A request's slot, given back when dropped.
pub struct Slot {
    held: Option<(Arc<Slots>, String)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((slots, key)) = self.held.take() {
            slots.release(&key);
        }
    }
}

impl Capacity {
    /// `max_in_flight` slots (0: unlimited) and room for `max_waiting` requests to wait for one.
    pub fn new(max_in_flight: usize, max_waiting: usize) -> Self {
        let slots = (max_in_flight > 0).then(|| {
            Arc::new(Slots { max_in_flight, max_waiting, book: Mutex::new(Book::default()) })
        });
        Self { slots }
    }

    /// From `limits.max_in_flight` and `limits.max_waiting`.
    pub fn from_limits(limits: &Limits) -> Self {
        Self::new(limits.max_in_flight, limits.max_waiting)
    }

    /// Slots busy and requests waiting now.
    pub fn usage(&self) -> Usage {
        let Some(slots) = &self.slots else {
            return Usage { in_flight: 0, max_in_flight: 0, waiting: 0, max_waiting: 0, keys: 0 };
        };
        let book = slots.book.lock().expect("capacity book");
        Usage {
            in_flight: book.in_flight,
            max_in_flight: slots.max_in_flight,
            waiting: book.queue.len(),
            max_waiting: slots.max_waiting,
            keys: book.keys.len(),
        }
    }

    /// A slot for a request of `key`: at once when one is free and the key is under its
    /// share; after waiting otherwise; [`ApiError::KeyBusy`] when the key already has its
    /// share in flight and waiting, [`ApiError::Overloaded`] when the waiting room is full.
    pub async fn admit(&self, key: &str) -> Result<Slot, ApiError> {
        let Some(slots) = &self.slots else {
            return Ok(Slot { held: None });
        };
        let (id, granted) = {
            let mut book = slots.book.lock().expect("capacity book");
            let shares = slots.shares(&book, key);
            let used = book.keys.get(key).copied().unwrap_or_default();
            if book.in_flight < slots.max_in_flight && used.in_flight < shares.in_flight {
                book.take(key);
                return Ok(Slot { held: Some((slots.clone(), key.to_string())) });
            }
            let over_share = used.in_flight >= shares.in_flight;
            if book.queue.len() >= slots.max_waiting && !over_share {
                return Err(ApiError::Overloaded);
            }
            if book.queue.len() >= slots.max_waiting || used.waiting >= shares.waiting {
                return Err(ApiError::KeyBusy(used.in_flight + used.waiting));
            }
            let id = book.next_waiter;
            book.next_waiter += 1;
            let (tx, rx) = oneshot::channel();
            book.queue.push_back(Waiter { id, key: key.to_string(), granted: tx });
            book.keys.entry(key.to_string()).or_default().waiting += 1;
            (id, rx)
        };
        // Leaves the queue however the wait ends, the client hanging up included.
        let mut place = Place { slots, key, id, converted: false };
        granted.await.expect("a waiter leaves the queue granted, or through its own place");
        place.converted = true;
        Ok(Slot { held: Some((slots.clone(), key.to_string())) })
    }
}

/// The most one key may hold and have waiting.
struct Shares {
    in_flight: usize,
    waiting: usize,
}

impl Slots {
    /// `key`'s shares, with `key` counted among the active keys.
    fn shares(&self, book: &Book, key: &str) -> Shares {
        let active = book.keys.len() + usize::from(!book.keys.contains_key(key));
        let between = active.max(2);
        Shares {
            in_flight: (self.max_in_flight / between).max(1),
            waiting: self.max_waiting.div_ceil(between),
        }
    }

    fn release(&self, key: &str) {
        let mut book = self.book.lock().expect("capacity book");
        book.in_flight -= 1;
        book.forget(key, |u| u.in_flight -= 1);
        self.dispatch(&mut book);
    }

    /// Hands free slots to the oldest waiters whose keys are under their share.
    fn dispatch(&self, book: &mut Book) {
        let mut i = 0;
        while book.in_flight < self.max_in_flight && i < book.queue.len() {
            let key = &book.queue[i].key;
            let used = book.keys.get(key).copied().unwrap_or_default();
            if used.in_flight < self.shares(book, key).in_flight {
                let waiter = book.queue.remove(i).expect("index in range");
                book.keys.entry(waiter.key.clone()).or_default().waiting -= 1;
                book.take(&waiter.key);
                // A waiter gone since is given back by its `Place`.
                let _ = waiter.granted.send(());
            } else {
                i += 1;
            }
        }
    }
}

impl Book {
    fn take(&mut self, key: &str) {
        self.in_flight += 1;
        self.keys.entry(key.to_string()).or_default().in_flight += 1;
    }

    /// Applies `change` to `key`'s use and drops the entry once it is idle.
    fn forget(&mut self, key: &str, change: impl FnOnce(&mut Use)) {
        if let Some(used) = self.keys.get_mut(key) {
            change(used);
            if used.in_flight == 0 && used.waiting == 0 {
                self.keys.remove(key);
            }
        }
    }
}

/// A waiter's place in the queue, or the slot it was granted and has not taken up yet.
struct Place<'a> {
    slots: &'a Arc<Slots>,
    key: &'a str,
    id: u64,
    converted: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if self.converted {
            return;
        }
        let mut book = self.slots.book.lock().expect("capacity book");
        if let Some(i) = book.queue.iter().position(|w| w.id == self.id) {
            book.queue.remove(i);
            book.forget(self.key, |u| u.waiting -= 1);
            // One key fewer may raise the others' shares.
            self.slots.dispatch(&mut book);
        } else {
            // Granted, but the request went away before taking the slot up.
            drop(book);
            self.slots.release(self.key);
        }
    }
}

/// Middleware of the `/v1` routes: authenticates the key (401/429 as the handler would; the
/// handler then reuses it), then runs the request in one of the key's slots. Whatever the
/// answer, it then carries the key's request window in `RateLimit-*` headers (a 429 over a
/// limit keeps its own, describing the refusing window).
pub async fn limit_in_flight_per_key(
    State(gw): State<Gateway>,
    req: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let key = match ApiKey::from_request_parts(&mut parts, &gw).await {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let standing = parts
        .extensions
        .get::<Granted>()
        .map(|granted| crate::ratelimit::standing_headers(gw.limits.per_key_per_second, granted));
    let bucket = key.id.clone();
    parts.extensions.insert(key);
    let req = Request::from_parts(parts, body);
    let mut response = match gw.capacity.admit(&bucket).await {
        Ok(_slot) => next.run(req).await,
        Err(e) => e.into_response(),
    };
    let headers = response.headers_mut();
    if !headers.contains_key(crate::ratelimit::RATELIMIT_LIMIT) {
        for (name, value) in standing.into_iter().flatten() {
            headers.insert(name, value);
        }
    }
    response
}

/// Middleware of routes without an API key: one shared bucket.
pub async fn limit_in_flight_anonymous(
    State(gw): State<Gateway>,
    req: Request,
    next: Next,
) -> Response {
    match gw.capacity.admit(ANONYMOUS).await {
        Ok(_slot) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
#[path = "capacity_tests.rs"]
mod tests;
