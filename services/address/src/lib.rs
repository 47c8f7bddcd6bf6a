//! Email addresses and domain names as Postwire parses, shows, compares and sends them.
//!
//! Internationalised domain names (RFC 5890/5891) are mapped by UTS #46 (the `idna` crate) to
//! their A-label, and local parts may be UTF-8 (RFC 6531). An address therefore has two forms:
//!
//! - **as written** ([`EmailAddress::as_str`]): the local part as given, the domain lower-cased
//!   (UTS #46-mapped when written in Unicode). This is what the API shows.
//! - **envelope** ([`EmailAddress::envelope`], [`envelope`]): the domain as its A-label. This is
//!   what DNS is asked for, what `MAIL FROM`/`RCPT TO` carry, and the form addresses are compared
//!   in ([`envelope`] for search, [`comparable`] for the suppression list), so `ann@bücher.test`
//!   and `ann@xn--bcher-kva.test` are one address.
//!
//! An address whose envelope form is still not ASCII has a UTF-8 local part: it can only be sent
//! to a server that offers `SMTPUTF8` ([`needs_smtputf8`]).
//!
//! Modules: this file, and [`mailbox`] ([`Mailbox`]: a display name and an address, as the
//! gateway validates it and the worker renders it). Types: [`EmailAddress`], [`DomainName`],
//! [`Mailbox`].

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

pub mod mailbox;
pub use mailbox::Mailbox;

/// Longest local part, in octets (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;

/// Why a domain name was refused. The messages are shown to API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("the domain must be 1 to 253 characters")]
    Length,
    #[error("the domain must have at least two labels")]
    OneLabel,
    #[error("`{0}` is not a valid domain label")]
    Label(String),
    /// UTS #46 refused it: a code point not allowed in domain names, or a bad `xn--` label.
    #[error("`{0}` is not a valid internationalised domain name (UTS #46)")]
    Idna(String),
}

/// A DNS domain name with at least two labels and no trailing dot, in the form it was written
/// (lower-cased) and as its A-label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainName {
    shown: String,
    ascii: String,
}

impl DomainName {
    /// Parses an ASCII (LDH, or `xn--` A-label) or Unicode domain name.
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let written = raw.trim().trim_end_matches('.');
        let has_a_label =
            written.split('.').any(|l| l.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("xn--")));
        if written.is_ascii() && !has_a_label {
            let lower = written.to_ascii_lowercase();
            check_ldh(&lower)?;
            return Ok(Self { shown: lower.clone(), ascii: lower });
        }
        let ascii = Uts46::new()
            .to_ascii(
                written.as_bytes(),
                AsciiDenyList::STD3,
                Hyphens::CheckFirstLast,
                DnsLength::Verify,
            )
            .map_err(|_| DomainError::Idna(written.to_owned()))?
            .into_owned();
        check_ldh(&ascii)?;
        let shown = if written.is_ascii() {
            written.to_ascii_lowercase()
        } else {
            // The mapped (lower-cased, NFC, `。` as `.`) Unicode form of what was written.
            let (unicode, result) = Uts46::new().to_unicode(
                ascii.as_bytes(),
                AsciiDenyList::STD3,
                Hyphens::CheckFirstLast,
            );
            result.map_err(|_| DomainError::Idna(written.to_owned()))?;
            unicode.into_owned()
        };
        Ok(Self { shown, ascii })
    }

    /// As written, lower-cased.
    pub fn as_str(&self) -> &str {
        &self.shown
    }

    /// The A-label form: what DNS is asked for.
    pub fn ascii(&self) -> &str {
        &self.ascii
    }
}

/// 1 to 253 octets, at least two labels, each 1 to 63 letters, digits and hyphens, not starting
/// or ending with a hyphen (RFC 1035 §2.3.1, RFC 5321 §4.1.2).
fn check_ldh(domain: &str) -> Result<(), DomainError> {
    if domain.is_empty() || domain.len() > 253 {
        return Err(DomainError::Length);
    }
    if !domain.contains('.') {
        return Err(DomainError::OneLabel);
    }
    for label in domain.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(DomainError::Label(label.to_owned()));
        }
    }
    Ok(())
}

/// An RFC 5321 address (`local@domain`): a dot-atom local part, ASCII or UTF-8 (RFC 6531
/// `atext` with `UTF8-non-ascii`), and a [`DomainName`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAddress {
    /// As written: `local@shown-domain`.
    full: String,
    /// `local@a-label`.
    envelope: String,
    at: usize,
}

impl EmailAddress {
    /// Parses `local@domain`. The error says what is wrong, quoting the address.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        let at = s.rfind('@').ok_or_else(|| format!("`{s}` is not an email address (no `@`)"))?;
        let (local, domain) = (&s[..at], &s[at + 1..]);
        if local.is_empty() || local.len() > MAX_LOCAL_PART {
            return Err(format!("`{s}`: the local part must be 1 to {MAX_LOCAL_PART} octets"));
        }
        if local.split('.').any(|part| part.is_empty() || !part.chars().all(atext)) {
            return Err(format!("`{s}`: the local part has characters not allowed in an address"));
        }
        let domain = DomainName::parse(domain).map_err(|e| format!("`{s}`: {e}"))?;
        Ok(Self {
            full: format!("{local}@{}", domain.as_str()),
            envelope: format!("{local}@{}", domain.ascii()),
            at,
        })
    }

    /// As written (the domain lower-cased): what the API shows.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// `local@a-label`: what `MAIL FROM`/`RCPT TO` carry and what addresses are compared by.
    pub fn envelope(&self) -> &str {
        &self.envelope
    }

    /// The domain as written, lower-cased.
    pub fn domain(&self) -> &str {
        &self.full[self.at + 1..]
    }

    /// The domain's A-label: the recipient domain a delivery job is for.
    pub fn ascii_domain(&self) -> &str {
        &self.envelope[self.at + 1..]
    }

    /// Whether the local part is UTF-8, so the address can only travel with `SMTPUTF8`.
    pub fn needs_smtputf8(&self) -> bool {
        !self.envelope.is_ascii()
    }
}

/// RFC 5322 `atext`, with RFC 6531's `UTF8-non-ascii` (but no control, space or separator).
fn atext(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c)
    } else {
        !c.is_control() && !c.is_whitespace() && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
    }
}

/// The A-label of a domain already accepted by [`DomainName::parse`] (stored and read back):
/// the domain lower-cased when it cannot be mapped, so a comparison never fails open.
pub fn ascii_domain(domain: &str) -> String {
    let domain = domain.trim().trim_end_matches('.');
    if domain.is_ascii() {
        return domain.to_ascii_lowercase();
    }
    Uts46::new()
        .to_ascii(domain.as_bytes(), AsciiDenyList::EMPTY, Hyphens::Allow, DnsLength::Ignore)
        .map(|a| a.into_owned())
        .unwrap_or_else(|_| domain.to_lowercase())
}

/// `local@a-label` for an address already accepted by [`EmailAddress::parse`]: the envelope
/// form, also the form search compares (local part exact, domain any case or spelling).
pub fn envelope(email: &str) -> String {
    let email = email.trim();
    match email.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", ascii_domain(domain)),
        None => email.to_owned(),
    }
}

/// The form the suppression list compares: [`envelope`], lower-cased as a whole.
pub fn comparable(email: &str) -> String {
    envelope(email).to_lowercase()
}

/// Whether `email` (either form) has a UTF-8 local part and so needs `SMTPUTF8` (RFC 6531).
pub fn needs_smtputf8(email: &str) -> bool {
    !envelope(email).is_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unicode_domain_is_shown_as_written_and_sent_as_its_a_label() {
        let a = EmailAddress::parse("ann@Bücher.Test").unwrap();
        assert_eq!(a.as_str(), "ann@bücher.test");
        assert_eq!(a.envelope(), "ann@xn--bcher-kva.test");
        assert_eq!(a.domain(), "bücher.test");
        assert_eq!(a.ascii_domain(), "xn--bcher-kva.test");
        assert!(!a.needs_smtputf8());
        let written_as_a_label = EmailAddress::parse("ann@XN--bcher-kva.test").unwrap();
        assert_eq!(written_as_a_label.as_str(), "ann@xn--bcher-kva.test");
        assert_eq!(written_as_a_label.envelope(), a.envelope());
        assert_eq!(comparable("Ann@bücher.test"), comparable("ann@xn--BCHER-kva.test"));
        assert_eq!(envelope("ann@пример.рф"), "ann@xn--e1afmkfd.xn--p1ai");
        assert_eq!(DomainName::parse("例え.テスト").unwrap().ascii(), "xn--r8jz45g.xn--zckzah");
    }

    #[test]
    fn a_utf8_local_part_is_accepted_and_needs_smtputf8() {
        let a = EmailAddress::parse("jürgen@example.de").unwrap();
        assert_eq!(a.envelope(), "jürgen@example.de");
        assert!(a.needs_smtputf8());
        assert!(needs_smtputf8("jürgen@bücher.test"));
        assert!(!needs_smtputf8("ann@bücher.test"));
        let too_long = format!("{}@example.de", "ü".repeat(33));
        assert!(EmailAddress::parse(&too_long).unwrap_err().contains("64 octets"));
        for bad in ["j\u{2028}x@example.de", "a\u{a0}b@example.de", "a..ü@example.de"] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn invalid_domains_are_refused_with_the_reason() {
        let cases = [
            ("localhost", "at least two labels"),
            ("-b.com", "not a valid domain label"),
            ("a_b.com", "not a valid domain label"),
            ("xn--zz.com", "UTS #46"),
            ("bü cher.test", "UTS #46"),
            ("bü\u{0}.test", "UTS #46"),
        ];
        for (bad, why) in cases {
            let e = DomainName::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let long = format!("{}.test", "ü".repeat(70));
        assert!(DomainName::parse(&long).is_err(), "a label over 63 octets as an A-label");
        assert_eq!(DomainName::parse("ab--cd.com").unwrap().ascii(), "ab--cd.com");
    }
}
