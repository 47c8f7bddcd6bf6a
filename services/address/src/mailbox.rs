//! A mailbox as a header names it: an optional display name and an [`EmailAddress`].
//!
//! The gateway parses every `from`, `to`, `cc`, `bcc` and `reply_to` with [`Mailbox::parse`] and
//! stores its [`Mailbox::canonical`] form; the worker parses that stored form with the same
//! function when it renders the message, so both read an address by one rule.

use crate::EmailAddress;

/// What [`has_forbidden_chars`] refuses, as said in a field error.
pub const FORBIDDEN_CHARS: &str =
    "control characters (CR, LF, NUL, VT, FF, ESC, DEL, U+0080 to U+009F; tab is allowed), U+2028 or U+2029";

/// Any control character but HTAB (C0, DEL and C1), or a Unicode line or paragraph separator:
/// what must not reach a header line (RFC 5322 §2.2).
pub fn has_forbidden_chars(s: &str) -> bool {
    s.chars().any(|c| (c.is_control() && c != '\t') || c == '\u{2028}' || c == '\u{2029}')
}

/// A parsed mailbox: optional display name and an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub name: Option<String>,
    pub address: EmailAddress,
}

impl Mailbox {
    /// Parses `addr`, `Name <addr>` or `"Name" <addr>`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if has_forbidden_chars(raw) {
            return Err(format!("must not contain {FORBIDDEN_CHARS}"));
        }
        let raw = raw.trim();
        match (raw.rfind('<'), raw.ends_with('>')) {
            (Some(open), true) => {
                let name = raw[..open].trim().trim_matches('"').trim();
                let address = EmailAddress::parse(&raw[open + 1..raw.len() - 1])?;
                if name.contains(['<', '>']) {
                    return Err("display name must not contain `<` or `>`".into());
                }
                Ok(Self { name: (!name.is_empty()).then(|| name.to_string()), address })
            }
            (None, false) => Ok(Self { name: None, address: EmailAddress::parse(raw)? }),
            _ => Err("expected `address` or `Name <address>`".into()),
        }
    }

    /// Canonical form stored with the message.
    pub fn canonical(&self) -> String {
        match &self.name {
            Some(n) => format!("{n} <{}>", self.address.as_str()),
            None => self.address.as_str().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canonical_mailbox_parses_back_to_itself() {
        for raw in [
            "a@Example.COM",
            "Ann Lee <ann@example.com>",
            "\"Lee, Ann\" <ann@example.com>",
            "Jörg <jörg@bücher.test>",
            "ann@xn--bcher-kva.test",
        ] {
            let once = Mailbox::parse(raw).unwrap();
            let again = Mailbox::parse(&once.canonical()).unwrap();
            assert_eq!(again, once, "{raw}");
            assert_eq!(again.canonical(), once.canonical(), "{raw}");
        }
    }

    #[test]
    fn mailbox_forms_parse_to_canonical() {
        assert_eq!(Mailbox::parse("a@Example.COM").unwrap().canonical(), "a@example.com");
        assert_eq!(
            Mailbox::parse("Ann Lee <ann@example.com>").unwrap().canonical(),
            "Ann Lee <ann@example.com>"
        );
        assert_eq!(
            Mailbox::parse("\"Lee, Ann\" <ann@example.com>").unwrap().canonical(),
            "Lee, Ann <ann@example.com>"
        );
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "a b@example.com",
            "a..b@example.com",
            "a@localhost",
            "x <a@b.com",
            "a@-b.com",
        ] {
            assert!(Mailbox::parse(bad).is_err(), "{bad} should be refused");
        }
        assert!(Mailbox::parse("Evil\r\nBcc: x@y.com <a@b.com>").is_err());
    }
}
