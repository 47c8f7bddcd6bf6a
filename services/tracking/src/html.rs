//! Rewriting HTML bodies: click links and the open pixel.
//!
//! This is a small tolerant scanner, not a full HTML parser: it finds `<a …>` start tags, reads
//! their attributes the way HTML tokenizers do (quoted, single-quoted or unquoted values; names
//! case-insensitive; the first `href` wins), and splices in the tracking URL. Comments are
//! skipped. Everything else is copied byte for byte.

use crate::token::{MailCopy, TrackingKeys};

/// Instruments one recipient's copy of an HTML body.
///
/// With `clicks`, every `<a href>` whose value (after HTML entity decoding, as a browser reads it)
/// is an absolute http(s) URL is replaced by a signed click URL redirecting to that URL in its
/// normalised form. `mailto:`, `#anchors` and relative links are left alone. With `opens`, a 1×1
/// pixel is inserted before the last `</body>` (or appended when there is none).
pub fn instrument_html(
    html: &str,
    keys: &TrackingKeys,
    public_url: &str,
    copy: &MailCopy<'_>,
    opens: bool,
    clicks: bool,
) -> String {
    let mut out = if clicks {
        rewrite_links(html, |target| keys.click_url(public_url, copy, target))
    } else {
        html.to_owned()
    };
    if opens {
        let pixel = format!(
            r#"<img src="{}" width="1" height="1" alt="" style="display:none">"#,
            escape_attr(&keys.open_url(public_url, copy))
        );
        // ASCII lowercasing keeps byte offsets, so positions carry over to `out`.
        match out.to_ascii_lowercase().rfind("</body") {
            Some(pos) => out.insert_str(pos, &pixel),
            None => out.push_str(&pixel),
        }
    }
    out
}

/// Copies `html`, replacing each absolute http(s) `<a href>` with `make(target)`.
fn rewrite_links(html: &str, make: impl Fn(&str) -> String) -> String {
    let bytes = html.as_bytes();
    let mut out = String::with_capacity(html.len() + html.len() / 4);
    let mut copied = 0;
    let mut i = 0;
    while let Some(off) = html[i..].find('<') {
        let start = i + off;
        if html[start..].starts_with("<!--") {
            i = html[start + 4..].find("-->").map_or(html.len(), |e| start + 4 + e + 3);
            continue;
        }
        if !is_anchor_start(bytes, start) {
            i = start + 1;
            continue;
        }
        let tag = scan_tag(bytes, start + 2);
        if let Some(href) = tag.href {
            let raw = &html[href.start..href.end];
            if let Some(target) = absolute_http_target(&decode_entities(raw)) {
                let replacement = escape_attr(&make(&target));
                out.push_str(&html[copied..href.start]);
                match href.quote {
                    Some(_) => out.push_str(&replacement),
                    None => {
                        out.push('"');
                        out.push_str(&replacement);
                        out.push('"');
                    }
                }
                copied = href.end;
            }
        }
        i = tag.end;
    }
    out.push_str(&html[copied..]);
    out
}

/// `<a` followed by whitespace, `/` or `>`: the start of an anchor tag (not `<abbr>`).
fn is_anchor_start(bytes: &[u8], lt: usize) -> bool {
    matches!(bytes.get(lt + 1), Some(b'a' | b'A'))
        && matches!(
            bytes.get(lt + 2),
            None | Some(b'>' | b'/') | Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')
        )
}

/// Where an attribute value sits in the source (without its quotes).
struct Span {
    start: usize,
    end: usize,
    quote: Option<u8>,
}

struct Tag {
    /// Index just past the tag's `>` (or the end of input).
    end: usize,
    href: Option<Span>,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')
}

/// Reads attributes from `i` (just after the tag name) to the closing `>`.
fn scan_tag(bytes: &[u8], mut i: usize) -> Tag {
    let n = bytes.len();
    let mut href = None;
    loop {
        while i < n && (is_space(bytes[i]) || bytes[i] == b'/') {
            i += 1;
        }
        if i >= n {
            return Tag { end: n, href: None };
        }
        if bytes[i] == b'>' {
            return Tag { end: i + 1, href };
        }
        let name_start = i;
        while i < n && !is_space(bytes[i]) && !matches!(bytes[i], b'=' | b'>' | b'/') {
            i += 1;
        }
        let is_href = bytes[name_start..i].eq_ignore_ascii_case(b"href");
        while i < n && is_space(bytes[i]) {
            i += 1;
        }
        if i >= n || bytes[i] != b'=' {
            continue;
        }
        i += 1;
        while i < n && is_space(bytes[i]) {
            i += 1;
        }
        let span = match bytes.get(i) {
            Some(&q @ (b'"' | b'\'')) => {
                let Some(len) = bytes[i + 1..].iter().position(|&b| b == q) else {
                    // Unterminated value: the tag never closes, rewrite nothing.
                    return Tag { end: n, href: None };
                };
                let span = Span { start: i + 1, end: i + 1 + len, quote: Some(q) };
                i += len + 2;
                span
            }
            _ => {
                let start = i;
                while i < n && !is_space(bytes[i]) && bytes[i] != b'>' {
                    i += 1;
                }
                Span { start, end: i, quote: None }
            }
        };
        // HTML keeps the first of duplicated attributes.
        if is_href && href.is_none() {
            href = Some(span);
        }
    }
}

/// The URL a browser would follow for this (decoded) href, if it is absolute http(s).
fn absolute_http_target(href: &str) -> Option<String> {
    let trimmed = href.trim_matches(|c: char| c.is_ascii_whitespace());
    let lower = trimmed.get(..8).map(str::to_ascii_lowercase).unwrap_or_default();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return None;
    }
    let url = url::Url::parse(trimmed).ok()?;
    url.host()?;
    Some(url.into())
}

/// Decodes the character references that appear in real-world hrefs. Unknown or unterminated
/// references are kept as written, as browsers do inside attribute values.
fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest[1..].find(';').filter(|&e| e <= 10).and_then(|e| {
            let name = &rest[1..1 + e];
            let ch = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ => {
                    let code = if let Some(hex) =
                        name.strip_prefix("#x").or_else(|| name.strip_prefix("#X"))
                    {
                        u32::from_str_radix(hex, 16).ok()
                    } else if let Some(dec) = name.strip_prefix('#') {
                        dec.parse().ok()
                    } else {
                        None
                    };
                    code.and_then(char::from_u32)
                }
            };
            ch.map(|c| (c, e + 2))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn escape_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{Link, Tracked, Verified};

    const PUB: &str = "https://pw.example";

    fn keys() -> TrackingKeys {
        TrackingKeys::new(b"k")
    }

    fn copy() -> MailCopy<'static> {
        MailCopy {
            message_id: "m1",
            recipient: 2,
            expires_at: SystemTime::now() + Duration::from_secs(3_600),
        }
    }

    fn clicks(html: &str) -> String {
        instrument_html(html, &keys(), PUB, &copy(), false, true)
    }

    /// Every click target in `html`, verified.
    fn targets(html: &str) -> Vec<String> {
        html.match_indices("/t/c/")
            .map(|(i, _)| {
                let token: String = html[i + 5..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || "-_".contains(*c))
                    .collect();
                match keys().verify(&token, SystemTime::now()).unwrap() {
                    Verified::Live(Tracked { link: Link::Click { url }, .. }) => url,
                    other => panic!("not a live click: {other:?}"),
                }
            })
            .collect()
    }

    #[test]
    fn absolute_links_are_rewritten_to_signed_clicks() {
        let out = clicks(r#"<p><a href="https://shop.example/x">buy</a></p>"#);
        assert!(out.starts_with(r#"<p><a href="https://pw.example/t/c/"#), "{out}");
        assert!(out.ends_with(r#"">buy</a></p>"#), "{out}");
        assert_eq!(targets(&out), ["https://shop.example/x"]);
    }

    #[test]
    fn entities_in_href_are_decoded_before_signing() {
        let out = clicks(r#"<a href="https://x.example/?a=1&amp;b=2&#38;c=&#x33;">x</a>"#);
        assert_eq!(targets(&out), ["https://x.example/?a=1&b=2&c=3"]);
    }

    #[test]
    fn single_quoted_and_unquoted_hrefs_are_rewritten() {
        let out = clicks("<a href='http://a.example/1'>1</a> <a href=http://b.example/2>2</a>");
        assert!(out.contains("<a href='https://pw.example/t/c/"), "{out}");
        assert!(out.contains("<a href=\"https://pw.example/t/c/"), "{out}");
        assert_eq!(targets(&out), ["http://a.example/1", "http://b.example/2"]);
    }

    #[test]
    fn tag_and_attribute_names_are_case_insensitive() {
        let out = clicks(r#"<A class="btn" HREF = "HTTPS://Shop.Example/Path">x</A>"#);
        assert_eq!(targets(&out), ["https://shop.example/Path"]);
        assert!(out.starts_with(r#"<A class="btn" HREF = "https://pw.example/t/c/"#), "{out}");
    }

    #[test]
    fn mailto_anchors_and_relative_links_are_untouched() {
        let html = r##"<a href="mailto:a@b.example">m</a><a href="#top">t</a><a href="/rel">r</a><a href="tel:+1">p</a><a name="x">n</a>"##;
        assert_eq!(clicks(html), html);
    }

    #[test]
    fn similar_tags_and_comments_are_untouched() {
        let html = r#"<abbr href="https://x.example/">a</abbr><area href="https://y.example/"><!-- <a href="https://z.example/"> -->"#;
        assert_eq!(clicks(html), html);
    }

    #[test]
    fn only_the_first_href_counts_and_other_attributes_survive() {
        let out = clicks(
            r#"<a title="a > b" href="https://one.example/" href="https://two.example/" data-x=1>x</a>"#,
        );
        assert_eq!(targets(&out), ["https://one.example/"]);
        assert!(out.starts_with(r#"<a title="a > b" href="https://pw.example/t/c/"#), "{out}");
        assert!(out.contains(r#"" href="https://two.example/" data-x=1>x</a>"#), "{out}");
    }

    #[test]
    fn clicks_off_leaves_links_alone() {
        let html = r#"<a href="https://x.example/">x</a>"#;
        assert_eq!(instrument_html(html, &keys(), PUB, &copy(), false, false), html);
    }

    #[test]
    fn open_pixel_goes_before_the_closing_body_tag() {
        let out = instrument_html(
            "<html><BODY>hi</BODY></html>",
            &keys(),
            "https://pw.example/",
            &copy(),
            true,
            false,
        );
        let pixel_at = out.find("<img src=\"https://pw.example/t/o/").expect(&out);
        assert_eq!(out.find("</BODY>").unwrap(), out.find("style=\"display:none\">").unwrap() + 21);
        assert!(pixel_at > out.find("hi").unwrap());
        assert!(out.contains(r#"width="1" height="1" alt="" style="display:none">"#));
    }

    #[test]
    fn open_pixel_is_appended_without_a_body_tag() {
        let out = instrument_html("<p>hi</p>", &keys(), PUB, &copy(), true, false);
        assert!(out.starts_with("<p>hi</p><img src=\"https://pw.example/t/o/"), "{out}");
        let token = out.split("/t/o/").nth(1).unwrap().split('"').next().unwrap();
        assert_eq!(
            keys().verify(token, SystemTime::now()).unwrap(),
            Verified::Live(Tracked { message_id: "m1".into(), recipient: 2, link: Link::Open })
        );
    }

    #[test]
    fn non_ascii_text_is_copied_intact() {
        let html = "<p>héllo ✓</p><a href=\"https://x.example/ü\">ü</a><p>fin</p>";
        let out = clicks(html);
        assert!(out.starts_with("<p>héllo ✓</p><a href="));
        assert!(out.ends_with("\">ü</a><p>fin</p>"));
        assert_eq!(targets(&out), ["https://x.example/%C3%BC"]);
    }

    #[test]
    fn unterminated_tags_do_not_panic() {
        for html in ["<a", "<a href", "<a href=", "<a href=\"https://x.example/", "<!--", "<"] {
            assert_eq!(clicks(html), html);
        }
    }
}
