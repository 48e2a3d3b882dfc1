//! SMTP replies: the [`Reply`] value, its enhanced status code ([`EnhancedCode`]), its wire
//! form and its parser.

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// An enhanced mail system status code (RFC 3463, announced with RFC 2034's
/// `ENHANCEDSTATUSCODES`): `class.subject.detail`, such as `4.3.1` (insufficient system
/// storage) or `5.7.1` (delivery not authorized).
///
/// The class is 2 (success), 4 (persistent transient failure) or 5 (permanent failure);
/// subject and detail have one to three digits. [`Display`](fmt::Display) writes the wire
/// form (`4.3.1`) and [`FromStr`] reads it (without leading zeros, so that the two agree).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnhancedCode {
    class: u8,
    subject: u16,
    detail: u16,
}

impl EnhancedCode {
    /// `class.subject.detail`.
    ///
    /// # Panics
    /// When `class` is not 2, 4 or 5, or `subject` or `detail` is above 999 (at compile time
    /// in a `const`).
    pub const fn new(class: u8, subject: u16, detail: u16) -> EnhancedCode {
        assert!(
            matches!(class, 2 | 4 | 5),
            "enhanced status class must be 2, 4 or 5"
        );
        assert!(
            subject <= 999 && detail <= 999,
            "enhanced status subject and detail have at most three digits"
        );
        EnhancedCode {
            class,
            subject,
            detail,
        }
    }

    /// The class: 2, 4 or 5. It matches the first digit of the reply code it goes with.
    pub const fn class(self) -> u8 {
        self.class
    }

    /// The subject (the middle number: 3 is "mail system", 7 "security or policy", ...).
    pub const fn subject(self) -> u16 {
        self.subject
    }

    /// The detail (the last number).
    pub const fn detail(self) -> u16 {
        self.detail
    }

    /// Reads an enhanced code at the start of `text`, followed by the end of the text or a
    /// space; returns it and the rest of the text after it (the space included).
    fn split_prefix(text: &str) -> Option<(EnhancedCode, &str)> {
        let end = text.find(' ').unwrap_or(text.len());
        let code = text[..end].parse().ok()?;
        Some((code, &text[end..]))
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// Text that is not an enhanced status code ([`EnhancedCode`]'s [`FromStr`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ParseEnhancedCodeError;

impl fmt::Display for ParseEnhancedCodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not an enhanced status code (class.subject.detail, such as 4.3.1)")
    }
}

impl std::error::Error for ParseEnhancedCodeError {}

impl FromStr for EnhancedCode {
    type Err = ParseEnhancedCodeError;

    /// Reads `class.subject.detail`: class 2, 4 or 5; subject and detail of one to three
    /// digits without leading zeros.
    fn from_str(s: &str) -> Result<EnhancedCode, ParseEnhancedCodeError> {
        fn number(part: Option<&str>) -> Option<u16> {
            let part = part?;
            let plain = !part.is_empty()
                && part.len() <= 3
                && part.bytes().all(|b| b.is_ascii_digit())
                && (part.len() == 1 || !part.starts_with('0'));
            plain.then(|| part.parse().ok()).flatten()
        }
        let mut parts = s.split('.');
        let class = match parts.next() {
            Some("2") => 2,
            Some("4") => 4,
            Some("5") => 5,
            _ => return Err(ParseEnhancedCodeError),
        };
        let subject = number(parts.next()).ok_or(ParseEnhancedCodeError)?;
        let detail = number(parts.next()).ok_or(ParseEnhancedCodeError)?;
        if parts.next().is_some() {
            return Err(ParseEnhancedCodeError);
        }
        Ok(EnhancedCode::new(class, subject, detail))
    }
}

/// One SMTP reply: a three-digit code, an optional enhanced status code, and one or more text
/// lines.
///
/// On the wire the enhanced code follows the reply code on every line
/// (`452 4.3.1 Insufficient system storage`). Two replies are equal when their wire forms
/// are: `Reply::new(452, "4.3.1 x")` equals `Reply::enhanced(452, EnhancedCode::new(4, 3, 1),
/// "x")`.
///
/// Texts never contain CR or LF: the constructors replace them with spaces,
/// and [`Reply::write_to`] does so again for values changed by hand.
///
/// The fields are public for reading (and editing); build replies with [`Reply::new`],
/// [`Reply::multiline`], [`Reply::enhanced`] or [`Reply::parse`]: more fields may come.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Reply {
    /// The reply code, 100..=999 (SMTP uses 2xx to 5xx).
    pub code: u16,
    /// The enhanced status code written after [`code`](Self::code) on every line, if any.
    /// Its class should match the code's first digit (RFC 3463).
    pub enhanced: Option<EnhancedCode>,
    /// The text lines (after the enhanced code, when there is one); more than one makes a
    /// multi-line reply (as for EHLO). An empty vector is written like a single empty line.
    pub lines: Vec<String>,
}

impl Reply {
    /// A single-line reply. CR and LF in `text` become spaces.
    pub fn new(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: None,
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
            enhanced: None,
            lines: lines.into_iter().map(|l| sanitize_line(l.into())).collect(),
        }
    }

    /// A single-line reply with an enhanced status code:
    /// `Reply::enhanced(452, EnhancedCode::new(4, 3, 1), "Insufficient system storage")` is
    /// sent as `452 4.3.1 Insufficient system storage`. CR and LF in `text` become spaces.
    pub fn enhanced(code: u16, enhanced: EnhancedCode, text: impl Into<String>) -> Reply {
        Reply::new(code, text).with_enhanced(enhanced)
    }

    /// This reply with `enhanced` as its enhanced status code (on every line).
    pub fn with_enhanced(mut self, enhanced: EnhancedCode) -> Reply {
        self.enhanced = Some(enhanced);
        self
    }

    /// `250 OK`, the reply for an accepted message.
    pub fn ok() -> Reply {
        Reply::new(250, "OK")
    }

    /// The enhanced status code: the [`enhanced`](Self::enhanced) field, or else one that
    /// the text of the first line starts with (as in a reply built with
    /// `Reply::new(550, "5.7.1 go away")`, or received from an upstream server) when its
    /// class matches the code's first digit.
    pub fn enhanced_code(&self) -> Option<EnhancedCode> {
        if self.enhanced.is_some() {
            return self.enhanced;
        }
        let (code, _) = EnhancedCode::split_prefix(self.lines.first()?)?;
        (u16::from(code.class) == self.code / 100).then_some(code)
    }

    /// The text of each line as sent after the code and its separator: the enhanced code, if
    /// any, then the line (`"4.3.1 Insufficient system storage"`). An empty reply has one
    /// empty line.
    pub fn texts(&self) -> impl Iterator<Item = Cow<'_, str>> + '_ {
        static ONE_EMPTY: [String; 1] = [String::new()];
        let lines: &[String] = if self.lines.is_empty() {
            &ONE_EMPTY
        } else {
            &self.lines
        };
        lines.iter().map(move |line| match self.enhanced {
            None => Cow::Borrowed(line.as_str()),
            Some(code) if line.is_empty() => Cow::Owned(code.to_string()),
            Some(code) => Cow::Owned(format!("{code} {line}")),
        })
    }

    /// All of [`texts`](Self::texts) joined with spaces: the reply's text on one line, as a
    /// relay quotes an upstream's answer.
    pub fn text(&self) -> String {
        self.texts().collect::<Vec<_>>().join(" ")
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
        let enhanced = self.enhanced.map(|e| e.to_string());
        if self.lines.is_empty() {
            buf.extend_from_slice(&digits);
            if let Some(enhanced) = &enhanced {
                buf.push(b' ');
                buf.extend_from_slice(enhanced.as_bytes());
            }
            buf.extend_from_slice(b"\r\n");
            return;
        }
        let last = self.lines.len() - 1;
        for (i, line) in self.lines.iter().enumerate() {
            buf.extend_from_slice(&digits);
            if i != last {
                buf.push(b'-');
            } else if !line.is_empty() || enhanced.is_some() {
                buf.push(b' ');
            }
            if let Some(enhanced) = &enhanced {
                buf.extend_from_slice(enhanced.as_bytes());
                if !line.is_empty() {
                    buf.push(b' ');
                }
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
    ///
    /// When every line's text starts with the same enhanced status code whose class matches
    /// the reply code's first digit (`"550 5.1.1 No such user"`), followed by the end of the
    /// line or a space and more text, it goes to [`enhanced`](Self::enhanced) and the lines
    /// keep the rest; otherwise the text stays as it is. Either way the reply is written back
    /// byte for byte as it was given.
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
        let code = code?;
        let enhanced = common_enhanced(code, &lines);
        if enhanced.is_some() {
            for line in &mut lines {
                let cut = line.find(' ').map_or(line.len(), |at| at + 1);
                line.drain(..cut);
            }
        }
        Some(Reply {
            code,
            enhanced,
            lines,
        })
    }
}

/// The enhanced code every line of a parsed reply starts with, if it can be taken out of the
/// texts without changing the wire form: its class matches `code`, and each line has nothing
/// after it or a space and more text (a lone trailing space would be lost).
fn common_enhanced(code: u16, lines: &[String]) -> Option<EnhancedCode> {
    let mut common = None;
    for line in lines {
        let (this, rest) = EnhancedCode::split_prefix(line)?;
        if rest == " " || *common.get_or_insert(this) != this {
            return None;
        }
    }
    common.filter(|c: &EnhancedCode| u16::from(c.class) == code / 100)
}

impl PartialEq for Reply {
    /// Equal wire forms: the same code and the same [`texts`](Reply::texts).
    fn eq(&self, other: &Reply) -> bool {
        self.code == other.code && self.texts().eq(other.texts())
    }
}

impl Eq for Reply {}

impl Hash for Reply {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.code.hash(state);
        for text in self.texts() {
            text.hash(state);
        }
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
