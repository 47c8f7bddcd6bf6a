//! The copies of a message as the workers rendered and signed them (what
//! `GET /v1/messages/{id}/raw` and the sandbox POP3 mailbox return).
//!
//! A worker stores the bytes it hands to SMTP — or, for a sandbox message, the bytes it would
//! have handed — before it records the attempt's outcomes, one [`SentCopy`] per distinct body
//! with the recipients it went to. Bodies differ per recipient only when opens or clicks are
//! tracked (each recipient's links are its own); otherwise one body serves a whole domain.
//! A later attempt replaces the copy of the recipients it covers. Copies live and are pruned
//! with their message (`storage.retention`).
//!
//! A message deleted from the sandbox POP3 mailbox (`DELE`, then `QUIT`) is marked here, so
//! later POP3 sessions leave it out; the message and its copies stay readable through the API.

use async_trait::async_trait;

use crate::StoreError;

/// One rendered, DKIM-signed body and the envelope recipients it was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentCopy {
    pub recipients: Vec<String>,
    pub bytes: Vec<u8>,
}

/// Stored copies per message and recipient.
#[async_trait]
pub trait Copies: Send + Sync + 'static {
    /// Stores the copies of one attempt at `message_id`, replacing those of an earlier attempt
    /// for the same recipients.
    async fn store_copies(&self, message_id: &str, copies: Vec<SentCopy>)
        -> Result<(), StoreError>;

    /// The stored copy of the first of `recipients` (any case) that has one.
    async fn sent_copy(
        &self,
        message_id: &str,
        recipients: &[String],
    ) -> Result<Option<Vec<u8>>, StoreError>;
}

/// POP3 deletion marks, kept beside the copies.
#[async_trait]
pub trait PopMarks: Send + Sync + 'static {
    /// Marks `message_ids` deleted from the POP3 mailbox.
    async fn mark_popped(&self, message_ids: &[String]) -> Result<(), StoreError>;

    /// Which of `message_ids` are marked deleted from the POP3 mailbox.
    async fn popped(&self, message_ids: &[String]) -> Result<Vec<String>, StoreError>;
}

/// The stored key of a recipient's copy: compared without case.
pub(crate) fn recipient_key(email: &str) -> String {
    email.to_lowercase()
}

/// What identifies a body among a message's copies.
pub(crate) fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(bytes)[..16])
}

#[cfg(test)]
pub(crate) mod contract {
    //! The behaviour both backends must show, run by each backend's tests.

    use super::*;

    pub(crate) async fn copies_are_found_per_recipient_and_replaced_by_a_later_attempt(
        store: &impl Copies,
    ) {
        let id = crate::ids::new_id("msg");
        let copy = |rcpts: &[&str], body: &str| SentCopy {
            recipients: rcpts.iter().map(|r| r.to_string()).collect(),
            bytes: body.as_bytes().to_vec(),
        };
        assert_eq!(store.sent_copy(&id, &["a@x.test".into()]).await.unwrap(), None);
        store
            .store_copies(
                &id,
                vec![copy(&["a@x.test", "b@x.test"], "one"), copy(&["c@y.test"], "two")],
            )
            .await
            .unwrap();
        let id = id.as_str();
        let find = |r: &[&str]| {
            let r: Vec<String> = r.iter().map(|s| s.to_string()).collect();
            async move { store.sent_copy(id, &r).await.unwrap().map(|b| String::from_utf8(b).unwrap()) }
        };
        assert_eq!(find(&["B@X.test"]).await.as_deref(), Some("one"));
        assert_eq!(find(&["nobody@x.test", "c@y.test", "a@x.test"]).await.as_deref(), Some("two"));
        store.store_copies(id, vec![copy(&["c@y.test"], "three")]).await.unwrap();
        assert_eq!(find(&["c@y.test"]).await.as_deref(), Some("three"));
        assert_eq!(find(&["a@x.test"]).await.as_deref(), Some("one"));
        assert_eq!(store.sent_copy("msg_other", &["a@x.test".into()]).await.unwrap(), None);
    }

    pub(crate) async fn pop_marks_are_remembered_per_message(store: &impl PopMarks) {
        let (a, b) = (crate::ids::new_id("msg"), crate::ids::new_id("msg"));
        assert!(store.popped(&[a.clone(), b.clone()]).await.unwrap().is_empty());
        store.mark_popped(std::slice::from_ref(&a)).await.unwrap();
        store.mark_popped(std::slice::from_ref(&a)).await.unwrap();
        assert_eq!(store.popped(&[a.clone(), b.clone()]).await.unwrap(), vec![a]);
        assert!(store.popped(&[]).await.unwrap().is_empty());
    }
}
