//! OpenAPI schemas the derive cannot say on its own: constraints on the items of a list or the
//! entries of a map, and the character classes the API refuses. Each limit is the one the
//! gateway enforces (its constant lives here, so the check and the spec read one number).

use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;

/// Recipients per message with the default `limits.max_recipients`, across `to`, `cc` and `bcc`.
pub const DEFAULT_MAX_RECIPIENTS: usize = 50;

/// Custom `headers` per message.
pub const MAX_CUSTOM_HEADERS: usize = 50;

/// Longest custom header line, `Name: value` in octets without the CRLF (RFC 5322 §2.1.1).
pub const MAX_HEADER_LINE: usize = 998;

/// Tags per message.
pub const MAX_TAGS: usize = 20;

/// Longest tag, in characters.
pub const MAX_TAG_CHARS: usize = 128;

/// Longest `unsubscribe_url`.
pub const MAX_UNSUBSCRIBE_URL: usize = 2048;

/// A string without control characters (C0 but tab, DEL, C1) or U+2028/U+2029: what may reach
/// a header line.
pub const HEADER_TEXT: &str = "^[^\\u0000-\\u0008\\u000A-\\u001F\\u007F-\\u009F\\u2028\\u2029]*$";

/// A non-empty string without any control character (C0, DEL, C1).
pub const NO_CONTROL: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$";

/// A header field name: printable ASCII without space or `:` (RFC 5322 §2.2).
pub const HEADER_NAME: &str = "^[!-9;-~]+$";

fn string(pattern: &str) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).pattern(Some(pattern))
}

/// `to`, `cc`, `bcc`: one mailbox as a string, or a list of up to [`DEFAULT_MAX_RECIPIENTS`].
pub fn mailboxes() -> impl Into<RefOr<Schema>> {
    let mailbox =
        || string(HEADER_TEXT).min_length(Some(3)).examples(["Ann Lee <ann@example.org>"]);
    let list = ArrayBuilder::new().items(mailbox()).max_items(Some(DEFAULT_MAX_RECIPIENTS));
    OneOfBuilder::new()
        .item(mailbox())
        .item(list)
        .description(Some(
            "One address or a list: `\"Name <addr>\"` or bare addresses (UTF-8 local parts and IDN domains allowed). \
             Each address is one envelope recipient, whichever lists repeat it; at least one \
             recipient in `to`, `cc` or `bcc`, at most `limits.max_recipients` (default 50) \
             across the three.",
        ))
}

/// `tags`: up to [`MAX_TAGS`], each 1 to [`MAX_TAG_CHARS`] characters without control characters.
pub fn tags() -> impl Into<RefOr<Schema>> {
    ArrayBuilder::new()
        .items(string(NO_CONTROL).min_length(Some(1)).max_length(Some(MAX_TAG_CHARS)))
        .max_items(Some(MAX_TAGS))
        .description(Some("Labels to search by (`GET /v1/messages?tag=`), echoed in events."))
        .examples([serde_json::json!(["password-reset"])])
}

/// `headers`: up to [`MAX_CUSTOM_HEADERS`] entries, each one header line.
pub fn headers() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(string(HEADER_NAME).min_length(Some(1))))
        .additional_properties(Some(
            // `Name: value` fits one line: a value is at most 998 − 2 − the name's length.
            string(HEADER_TEXT).max_length(Some(MAX_HEADER_LINE - 3)),
        ))
        .max_properties(Some(MAX_CUSTOM_HEADERS))
        .description(Some(
            "Extra headers, name → value. Names are printable ASCII without spaces or `:`; \
             values have no control character but tab; `Name: value` fits one 998-octet line \
             (RFC 5322 §2.1.1). Names Postwire sets (From, To, Subject, Date, Message-ID, …), \
             trace and authentication headers (Received, Authentication-Results, ARC-*, \
             Resent-*), Sender and X-Postwire-* are refused (422).",
        ))
        .examples([serde_json::json!({"X-Campaign": "spring-2026"})])
}

/// A JSON object whose values may be anything (`metadata`, `variables`): said outright, so
/// generated clients type it as a map of any value rather than as an empty object.
pub fn any_object(description: &str, example: serde_json::Value) -> ObjectBuilder {
    use utoipa::openapi::schema::AdditionalProperties;
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(true)))
        .description(Some(description))
        .examples([example])
}

/// `metadata` of a send.
pub fn metadata() -> impl Into<RefOr<Schema>> {
    any_object(
        "Echoed in every event about this message; at most `limits.max_metadata_size` \
         (default 8000 bytes) as JSON.",
        serde_json::json!({"user_id": "42"}),
    )
}

/// `variables` of a send (no example: a send's examples combine into one body without a
/// `template_id`).
pub fn variables() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(
            utoipa::openapi::schema::AdditionalProperties::<Schema>::FreeForm(true),
        ))
        .description(Some(
            "Values for the template's variables, e.g. `{\"name\": \"Ann\"}`. A variable the \
             template uses but that is missing here is a 422.",
        ))
}
