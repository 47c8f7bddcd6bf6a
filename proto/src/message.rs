//! Rules of the message a send request becomes, written once for the gateway, which refuses a
//! request that breaks them, and the worker, which renders the stored request by them.

use base64::Engine;

/// Header names Postwire writes itself, from the request's own fields or generated: the gateway
/// refuses a custom header with one of these names, and the worker drops one so it can neither
/// duplicate nor override them. Lower-case.
pub const RESERVED_HEADERS: [&str; 14] = [
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "dkim-signature",
    "return-path",
    "received",
];

/// Whether a custom header called `name` (any case) is one of [`RESERVED_HEADERS`].
pub fn is_reserved_header(name: &str) -> bool {
    RESERVED_HEADERS.iter().any(|r| r.eq_ignore_ascii_case(name))
}

/// Whether a custom header called `name` (any case) is one that `unsubscribe_url` generates
/// (`List-Unsubscribe`, `List-Unsubscribe-Post`): a request with an `unsubscribe_url` may not
/// carry one, and the worker drops it.
pub fn set_by_unsubscribe_url(name: &str) -> bool {
    name.get(..16).is_some_and(|p| p.eq_ignore_ascii_case("list-unsubscribe"))
}

/// Whether `unsubscribe_url` also gets `List-Unsubscribe-Post: List-Unsubscribe=One-Click`:
/// RFC 8058 §3.1 needs an HTTPS URI for one-click; a `mailto:` one gets `List-Unsubscribe` alone.
pub fn is_one_click(unsubscribe_url: &str) -> bool {
    unsubscribe_url.get(..6).is_some_and(|s| s.eq_ignore_ascii_case("https:"))
}

/// The bytes of an attachment's `content`: standard base64 (RFC 4648 §4, padded).
pub fn attachment_bytes(content: &str) -> Result<Vec<u8>, base64::DecodeError> {
    base64::engine::general_purpose::STANDARD.decode(content.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_and_unsubscribe_header_names_match_in_any_case() {
        assert!(is_reserved_header("Message-ID") && is_reserved_header("RECEIVED"));
        assert!(!is_reserved_header("X-Campaign"));
        assert!(set_by_unsubscribe_url("List-Unsubscribe"));
        assert!(set_by_unsubscribe_url("list-unsubscribe-post"));
        assert!(!set_by_unsubscribe_url("List-Id"));
        assert!(is_one_click("HTTPS://app.test/u") && !is_one_click("mailto:u@app.test"));
    }
}
