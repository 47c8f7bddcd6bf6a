//! A POP3 mailbox: the messages a sandbox key may see that have a stored copy and were not
//! deleted over POP3 before, oldest first, each with its size in octets.

use postwire_store::{MessageCursor, MessageQuery, StoreError};

use super::MAX_MESSAGES;
use crate::auth::ApiKey;
use crate::Gateway;

/// One message of the mailbox.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The message id: also the POP3 unique id.
    pub id: String,
    /// Its recipients in order: whose copy is the text ([`crate::routes::raw`]'s default).
    pub recipients: Vec<String>,
    /// Octets of the text (CRLF line endings, before dot-stuffing).
    pub size: u64,
    /// `DELE` in this session.
    pub deleted: bool,
}

/// Search pages read at most while opening a mailbox.
const MAX_PAGES: usize = 200;

/// The mailbox of `key`, read once at login.
pub async fn open(gw: &Gateway, key: &ApiKey) -> Result<Vec<Entry>, StoreError> {
    let query = MessageQuery { visibility: key.visibility(), ..MessageQuery::default() };
    let mut newest_first = Vec::new();
    let mut after: Option<MessageCursor> = None;
    for _ in 0..MAX_PAGES {
        let page = gw.messages.search_messages(&query, after.as_ref(), 100).await?;
        newest_first.extend(page.data);
        after = page.next;
        if after.is_none() || newest_first.len() >= MAX_MESSAGES {
            break;
        }
    }
    newest_first.truncate(MAX_MESSAGES);
    let ids: Vec<String> = newest_first.iter().map(|m| m.id.clone()).collect();
    let popped = gw.pop_marks.popped(&ids).await?;
    let mut entries = Vec::with_capacity(newest_first.len());
    for m in newest_first.into_iter().rev().filter(|m| !popped.contains(&m.id)) {
        let recipients: Vec<String> = m.recipients.into_iter().map(|r| r.email).collect();
        // Not rendered yet (the worker has not reached it): not in the mailbox this time.
        let Some(text) = gw.copies.sent_copy(&m.id, &recipients).await? else { continue };
        entries.push(Entry { id: m.id, recipients, size: text.len() as u64, deleted: false });
    }
    Ok(entries)
}

/// The text of `entry`, as `GET /v1/messages/{id}/raw` returns it; `None` once pruned.
pub async fn text(gw: &Gateway, entry: &Entry) -> Result<Option<Vec<u8>>, StoreError> {
    gw.copies.sent_copy(&entry.id, &entry.recipients).await
}
