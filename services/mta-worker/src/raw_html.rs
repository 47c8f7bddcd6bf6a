//! Tracking in a message submitted over SMTP: the client's MIME text is kept as written except
//! for its HTML bodies, which are decoded, handed to the tracking rewrite and put back as UTF-8
//! in base64 — the part's other headers, every other part and every byte around them untouched.
//!
//! An HTML part is a `text/html` leaf that is not an attachment. Parts are located by the
//! byte offsets `mail-parser` records and replaced from the last to the first, so earlier
//! offsets stay valid.

use base64::Engine as _;
use mail_parser::{MessageParser, MimeHeaders, PartType};

/// `raw` with every HTML body replaced by `rewrite(html)`; `None` when it has none.
pub fn rewrite_html_parts(raw: &[u8], rewrite: impl Fn(&str) -> String) -> Option<Vec<u8>> {
    let message = MessageParser::default().parse(raw)?;
    let mut spans: Vec<(usize, usize, usize, String)> = message
        .parts
        .iter()
        .filter(|p| !p.content_disposition().is_some_and(|d| d.is_attachment()))
        .filter_map(|p| match &p.body {
            PartType::Html(html) if p.is_content_type("text", "html") => Some((
                p.offset_header as usize,
                p.offset_body as usize,
                p.offset_end as usize,
                rewrite(html),
            )),
            _ => None,
        })
        .collect();
    if spans.is_empty() {
        return None;
    }
    spans.sort_by_key(|s| std::cmp::Reverse(s.0));
    let mut out = raw.to_vec();
    for (header, body, end, html) in spans {
        let (header, body, end) = (header.min(out.len()), body.min(out.len()), end.min(out.len()));
        if !(header <= body && body <= end) {
            return None;
        }
        let mut part = kept_headers(&out[header..body]);
        part.extend_from_slice(b"Content-Type: text/html; charset=utf-8\r\n");
        part.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n\r\n");
        let encoded = base64::engine::general_purpose::STANDARD.encode(html.as_bytes());
        for line in encoded.as_bytes().chunks(76) {
            part.extend_from_slice(line);
            part.extend_from_slice(b"\r\n");
        }
        // What followed the body (the CRLF before a boundary, or nothing) stays as it was.
        out.splice(header..end, part);
    }
    Some(out)
}

/// The header block without its Content-Type and Content-Transfer-Encoding fields (folded
/// lines included) and without the blank line that ends it.
fn kept_headers(block: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(block.len());
    let mut dropping = false;
    for line in block.split_inclusive(|&b| b == b'\n') {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            dropping = name.eq_ignore_ascii_case(b"content-type")
                || name.eq_ignore_ascii_case(b"content-transfer-encoding");
        }
        if !dropping {
            out.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> mail_parser::Message<'_> {
        MessageParser::default().parse(raw).unwrap()
    }

    #[test]
    fn a_single_part_html_message_keeps_its_headers_and_gets_the_rewritten_body() {
        let raw = b"From: a@x.test\r\nTo: b@y.test\r\nSubject: Hi\r\nContent-Type: text/html;\r\n charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<p>Gr=FC=DFe <a href=3D\"https://x.test/\">x</a></p>\r\n";
        let out =
            rewrite_html_parts(raw, |html| html.replace("https://x.test/", "https://t/1")).unwrap();
        let m = parse(&out);
        assert_eq!(m.subject(), Some("Hi"));
        assert_eq!(m.header_raw("To").map(str::trim), Some("b@y.test"));
        assert_eq!(m.body_html(0).unwrap(), "<p>Grüße <a href=\"https://t/1\">x</a></p>\r\n");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("Content-Type").count(), 1, "{text}");
        assert!(!text.contains("iso-8859-1") && !text.contains("quoted-printable"), "{text}");
    }

    #[test]
    fn in_a_multipart_message_only_the_html_body_changes() {
        let raw = b"From: a@x.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: multipart/alternative; boundary=\"A\"\r\n\r\n--A\r\nContent-Type: text/plain\r\n\r\nplain https://x.test/\r\n--A\r\nContent-Type: text/html\r\nContent-ID: <h1>\r\n\r\n<a href=\"https://x.test/\">x</a>\r\n--A--\r\n\r\n--B\r\nContent-Type: text/html; name=\"page.html\"\r\nContent-Disposition: attachment; filename=\"page.html\"\r\n\r\n<a href=\"https://x.test/\">attached</a>\r\n--B--\r\n";
        let out =
            rewrite_html_parts(raw, |html| html.replace("https://x.test/", "https://t/1")).unwrap();
        let m = parse(&out);
        assert_eq!(m.body_text(0).unwrap(), "plain https://x.test/");
        assert_eq!(m.body_html(0).unwrap(), "<a href=\"https://t/1\">x</a>");
        let attached = m.attachments().next().expect("the attachment is kept");
        assert_eq!(attached.contents(), b"<a href=\"https://x.test/\">attached</a>");
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("Content-ID: <h1>\r\nContent-Type: text/html; charset=utf-8"),
            "{text}"
        );
        assert!(text.ends_with("--B--\r\n"));
    }

    #[test]
    fn a_message_without_html_is_left_alone() {
        let raw = b"From: a@x.test\r\nSubject: t\r\n\r\njust text\r\n";
        assert_eq!(rewrite_html_parts(raw, |h| h.to_owned()), None);
    }
}
