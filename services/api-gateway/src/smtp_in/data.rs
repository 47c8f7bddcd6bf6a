//! Message bodies as they arrive: DATA (RFC 5321 §4.1.1.4, ending at `CRLF.CRLF`, leading dots
//! unstuffed) and BDAT chunks (RFC 3030, taken as they are).
//!
//! A bare LF or a bare CR anywhere in the text refuses the whole message: receivers disagree on
//! what such a line ending means, and that disagreement is how SMTP smuggling hides a second
//! message inside the first. Only `CRLF.CRLF` ends DATA here, whatever `LF.LF` or `CR.CR` the
//! client sends before it; what follows the real end is the client's next command. Past the
//! size limit the text is read to its end and dropped, so the reply comes at the right place.

/// Why a body that arrived completely is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than `limits.max_message_size`.
    TooBig,
    /// A line ended with a bare LF or a bare CR.
    BareLineEnding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    LineStart,
    Mid,
    /// After a CR, expecting its LF.
    Cr,
    /// A line that began with a dot.
    Dot,
    /// `.` + CR at a line start: LF next ends the data.
    DotCr,
}

/// Reads one DATA body from successive slices of the connection's input.
pub struct DataReader {
    out: Vec<u8>,
    max: usize,
    at: At,
    too_big: bool,
    bare: bool,
}

impl DataReader {
    /// A reader keeping at most `max` bytes of text.
    pub fn new(max: usize) -> Self {
        Self { out: Vec::new(), max, at: At::LineStart, too_big: false, bare: false }
    }

    /// Feeds `input`; returns how many of its bytes belong to the body and whether the body
    /// ended within them (bytes after the end are the client's next commands).
    pub fn feed(&mut self, input: &[u8]) -> (usize, bool) {
        for (i, &b) in input.iter().enumerate() {
            match (self.at, b) {
                (At::LineStart, b'.') => self.at = At::Dot,
                (At::Dot, b'\r') => self.at = At::DotCr,
                (At::DotCr, b'\n') => return (i + 1, true),
                (At::DotCr, _) => {
                    // `.` CR x: a bare CR on a dot line (the dot itself was a stuffing dot).
                    self.bare = true;
                    self.push(b'\r');
                    self.byte(b);
                }
                (At::Dot, _) => {
                    // The dot was stuffing (RFC 5321 §4.5.2): drop it, keep the rest.
                    self.at = At::Mid;
                    self.byte(b);
                }
                (At::Cr, b'\n') => {
                    self.push(b'\r');
                    self.push(b'\n');
                    self.at = At::LineStart;
                }
                (At::Cr, _) => {
                    self.bare = true;
                    self.push(b'\r');
                    self.at = At::Mid;
                    self.byte(b);
                }
                (At::LineStart | At::Mid, _) => self.byte(b),
            }
        }
        (input.len(), false)
    }

    /// One byte in the middle of a line (or starting one that has no dot).
    fn byte(&mut self, b: u8) {
        match b {
            b'\r' => self.at = At::Cr,
            b'\n' => {
                // A bare LF never starts a line: `LF.CRLF` cannot end the data.
                self.bare = true;
                self.push(b'\n');
                self.at = At::Mid;
            }
            _ => {
                self.push(b);
                self.at = At::Mid;
            }
        }
    }

    fn push(&mut self, b: u8) {
        if self.too_big {
            return;
        }
        if self.out.len() >= self.max {
            self.too_big = true;
            self.out = Vec::new();
            return;
        }
        self.out.push(b);
    }

    /// The body once [`feed`](Self::feed) said it ended.
    pub fn finish(self) -> Result<Vec<u8>, BodyError> {
        if self.too_big {
            Err(BodyError::TooBig)
        } else if self.bare {
            Err(BodyError::BareLineEnding)
        } else {
            Ok(self.out)
        }
    }
}

/// Whether `text` has an LF not after a CR, or a CR not before an LF (for BDAT bodies, which
/// are taken as sent).
pub fn has_bare_line_ending(text: &[u8]) -> bool {
    text.iter().enumerate().any(|(i, &b)| match b {
        b'\n' => i == 0 || text[i - 1] != b'\r',
        b'\r' => text.get(i + 1) != Some(&b'\n'),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8], max: usize) -> (Result<Vec<u8>, BodyError>, usize) {
        let mut reader = DataReader::new(max);
        let (used, done) = reader.feed(input);
        assert!(done, "the body should have ended");
        (reader.finish(), used)
    }

    #[test]
    fn data_ends_at_crlf_dot_crlf_and_leading_dots_are_unstuffed() {
        let input = b"Subject: x\r\n\r\n..hidden dot\r\n.\r\nQUIT\r\n";
        let (body, used) = read_all(input, 1000);
        assert_eq!(body.unwrap(), b"Subject: x\r\n\r\n.hidden dot\r\n".to_vec());
        assert_eq!(&input[used..], b"QUIT\r\n", "the next command is left for the session");
    }

    #[test]
    fn an_empty_body_is_just_the_terminator() {
        let (body, used) = read_all(b".\r\n", 10);
        assert_eq!((body.unwrap(), used), (Vec::new(), 3));
    }

    #[test]
    fn the_end_is_found_across_any_split_of_the_input() {
        let input = b"a\r\n.b\r\n\r\n.\r\nNEXT";
        // Every split before the terminator's last byte (at 12 the first slice holds it all).
        for split in 0..12 {
            let mut reader = DataReader::new(100);
            let (used, done) = reader.feed(&input[..split]);
            assert_eq!((used, done), (split, false), "split at {split}");
            let (used, done) = reader.feed(&input[split..]);
            assert!(done, "split at {split}");
            assert_eq!(&input[split + used..], b"NEXT", "split at {split}");
            assert_eq!(reader.finish().unwrap(), b"a\r\nb\r\n\r\n".to_vec(), "split at {split}");
        }
    }

    #[test]
    fn bare_lf_and_bare_cr_refuse_the_whole_message_and_never_end_it_early() {
        // The smuggling shapes: LF.LF, LF.CRLF and CR.CR do not end the data; the real end
        // does, and the message is refused rather than split in two.
        for smuggled in [
            &b"a\n.\nMAIL FROM:<x@y>\r\n"[..],
            b"a\n.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r.\rMAIL FROM:<x@y>\r\n",
            b"a\r\n.\nMAIL FROM:<x@y>\r\n",
            b"a\r\n.\r.\r\nb\r\n",
        ] {
            let mut input = smuggled.to_vec();
            input.extend_from_slice(b"tail\r\n.\r\n");
            let (body, used) = read_all(&input, 1000);
            assert_eq!(
                body,
                Err(BodyError::BareLineEnding),
                "{:?}",
                String::from_utf8_lossy(smuggled)
            );
            assert_eq!(used, input.len(), "only the real CRLF.CRLF ends it");
        }
    }

    #[test]
    fn a_body_over_the_limit_is_read_to_its_end_and_refused() {
        let mut input = vec![b'x'; 5000];
        input.extend_from_slice(b"\r\n.\r\nRSET\r\n");
        let (body, used) = read_all(&input, 1000);
        assert_eq!(body, Err(BodyError::TooBig));
        assert_eq!(&input[used..], b"RSET\r\n");
    }

    #[test]
    fn bdat_text_is_checked_for_bare_line_endings() {
        assert!(!has_bare_line_ending(b"a\r\nb\r\n"));
        assert!(has_bare_line_ending(b"a\nb"));
        assert!(has_bare_line_ending(b"\nb"));
        assert!(has_bare_line_ending(b"a\rb"));
        assert!(has_bare_line_ending(b"a\r"));
    }
}
