//! SMTP replies: the [`Reply`] value, its wire form and its parser.

use std::fmt;

/// One SMTP reply: a three-digit code and one or more text lines.
///
/// Texts never contain CR or LF: the constructors replace them with spaces,
/// and [`Reply::write_to`] does so again for values built by hand.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reply {
    /// The reply code, 100..=999 (SMTP uses 2xx to 5xx).
    pub code: u16,
    /// The text lines; more than one makes a multi-line reply (as for EHLO).
    /// An empty vector is written like a single empty line.
    pub lines: Vec<String>,
}

impl Reply {
    /// A single-line reply. CR and LF in `text` become spaces.
    pub fn new(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            lines: vec![sanitize_line(text.into())],
        }
    }

    /// A multi-line reply. CR and LF in each line become spaces.
    pub fn multiline<I, S>(code: u16, lines: I) -> Reply
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Reply {
            code,
            lines: lines.into_iter().map(|l| sanitize_line(l.into())).collect(),
        }
    }

    /// `250 OK`, the reply for an accepted message.
    pub fn ok() -> Reply {
        super::replies::OK.reply()
    }

    /// Appends the wire form (`250-a\r\n250 b\r\n`) to `buf`.
    ///
    /// A code outside 100..=999 is clamped into that range so that the
    /// output stays a well-formed reply.
    pub fn write_to(&self, buf: &mut Vec<u8>) {
        let code = self.code.clamp(100, 999);
        let digits = [
            b'0' + (code / 100) as u8,
            b'0' + (code / 10 % 10) as u8,
            b'0' + (code % 10) as u8,
        ];
        if self.lines.is_empty() {
            buf.extend_from_slice(&digits);
            buf.extend_from_slice(b"\r\n");
            return;
        }
        let last = self.lines.len() - 1;
        for (i, line) in self.lines.iter().enumerate() {
            buf.extend_from_slice(&digits);
            if i != last {
                buf.push(b'-');
            } else if !line.is_empty() {
                buf.push(b' ');
            }
            let bytes = line.as_bytes();
            if memchr::memchr2(b'\r', b'\n', bytes).is_none() {
                buf.extend_from_slice(bytes);
            } else {
                buf.extend(
                    bytes
                        .iter()
                        .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
                );
            }
            buf.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as bytes, CRLF-terminated.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.write_to(&mut buf);
        buf
    }

    /// Parses a reply as a message handler would give it in Python
    /// (`"550 No such user"`), also multi-line (`"250-a\r\n250 b"`).
    ///
    /// Each line must be three digits (first digit 1 to 5) followed by the
    /// end of the line, a space or (not on the last line) a hyphen, and all
    /// lines must carry the same code. A trailing line break is allowed.
    /// Returns `None` for anything else.
    pub fn parse(text: &str) -> Option<Reply> {
        let text = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(text);
        let raw: Vec<&str> = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .collect();
        let mut code = None;
        let mut lines = Vec::with_capacity(raw.len());
        for (i, line) in raw.iter().enumerate() {
            let last = i + 1 == raw.len();
            let bytes = line.as_bytes();
            if bytes.len() < 3
                || !(b'1'..=b'5').contains(&bytes[0])
                || !bytes[1].is_ascii_digit()
                || !bytes[2].is_ascii_digit()
            {
                return None;
            }
            let this: u16 = line[..3].parse().ok()?;
            if *code.get_or_insert(this) != this {
                return None;
            }
            let rest = &line[3..];
            let body = match rest.as_bytes().first() {
                None => "",
                Some(b' ') => &rest[1..],
                Some(b'-') if !last => &rest[1..],
                _ => return None,
            };
            if body.contains('\r') {
                return None;
            }
            lines.push(body.to_owned());
        }
        Some(Reply { code: code?, lines })
    }
}

impl fmt::Display for Reply {
    /// The wire form without the final CRLF.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_bytes();
        let text = String::from_utf8_lossy(&bytes[..bytes.len() - 2]);
        f.write_str(&text)
    }
}

/// Replaces CR and LF with spaces.
fn sanitize_line(text: String) -> String {
    if text.contains(['\r', '\n']) {
        text.replace(['\r', '\n'], " ")
    } else {
        text
    }
}

/// Makes client-supplied text safe to echo in a reply: control characters
/// other than TAB (CR, LF, NUL, DEL, ...) become `?`, and so do non-ASCII
/// characters unless `utf8` is set (the transaction asked for SMTPUTF8).
/// TAB stays, as CPython echoes it: RFC 5321's `textstring` allows it.
pub(crate) fn echo(text: &str, utf8: bool) -> String {
    text.chars()
        .map(|c| {
            if (c.is_control() && c != '\t') || (!utf8 && !c.is_ascii()) {
                '?'
            } else {
                c
            }
        })
        .collect()
}
