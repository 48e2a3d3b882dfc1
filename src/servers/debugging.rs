//! The message dump printed by CPython's `smtpd.DebuggingServer`, as a pure
//! formatter.
//!
//! The layout follows CPython 3.11's `DebuggingServer.process_message` and
//! `_print_message_content`. One deliberate difference: CPython prints each
//! line as a `b'...'` repr when it has undecoded bytes; here lines are
//! printed as text. Valid UTF-8 is copied as is, while invalid bytes and
//! control characters other than tab are shown as `\xNN`, so the output is
//! safe to send to a terminal. Backslashes are not escaped.

use std::fmt::Write as _;
use std::io::{self, Write};

use crate::server::{EnhancedCode, Message, Outcome, Reply, ServerCtx, SmtpServer};
use crate::servers::capture::{self, CaptureStore};

/// What [`DebuggingServer`] prints for each message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Print {
    /// CPython's block (the default): banners, option lines, the message with `X-Peer:`.
    #[default]
    Cpython,
    /// The message bytes as stored (see [`capture::stored_bytes`]): no banner, no `X-Peer:`.
    Raw,
    /// Nothing.
    None,
}

/// CPython's `DebuggingServer`: prints every message it receives (to stdout by default) and
/// accepts it; with [capture stores](crate::servers::capture) attached
/// ([`with_store`](Self::with_store)), it also keeps every message.
///
/// Each message is written and flushed as one block. A closed or broken output (a pipe whose
/// reader went away) is logged once and otherwise ignored: the message is still accepted, as
/// printing is not delivery, and the server never panics on it. A store that fails is
/// different: the message is answered `451 4.3.0` (the client keeps it and retries), the
/// reason is logged, and nothing is printed for it. Stores run in the order they were
/// attached; a message refused because a later store failed may already be in an earlier one
/// (a retry then stores it there twice).
pub struct DebuggingServer {
    out: Box<dyn Write>,
    failed: bool,
    buf: Vec<u8>,
    print: Print,
    stores: Vec<Box<dyn CaptureStore>>,
}

impl DebuggingServer {
    /// Prints to stdout.
    pub fn new() -> DebuggingServer {
        DebuggingServer::with_writer(Box::new(io::stdout()))
    }

    /// Prints to any writer (a file, a buffer in a test).
    pub fn with_writer(out: Box<dyn Write>) -> DebuggingServer {
        DebuggingServer {
            out,
            failed: false,
            buf: Vec::new(),
            print: Print::Cpython,
            stores: Vec::new(),
        }
    }

    /// Chooses what is printed ([`Print::Cpython`] by default).
    pub fn with_print(mut self, print: Print) -> DebuggingServer {
        self.print = print;
        self
    }

    /// Attaches a capture store, called for every message after the ones attached before.
    pub fn with_store(mut self, store: impl CaptureStore + 'static) -> DebuggingServer {
        self.stores.push(Box::new(store));
        self
    }

    /// Attaches an already boxed capture store.
    pub fn with_boxed_store(mut self, store: Box<dyn CaptureStore>) -> DebuggingServer {
        self.stores.push(store);
        self
    }

    /// Runs every store; the first error ends it.
    fn capture(&mut self, message: &Message) -> io::Result<()> {
        let mut stored = Vec::new();
        for store in &mut self.stores {
            if let Some(place) = store.store(message, &stored)? {
                stored.push(place);
            }
        }
        Ok(())
    }
}

impl Default for DebuggingServer {
    fn default() -> Self {
        DebuggingServer::new()
    }
}

impl std::fmt::Debug for DebuggingServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebuggingServer")
            .field("print", &self.print)
            .field("stores", &self.stores.len())
            .finish_non_exhaustive()
    }
}

impl SmtpServer for DebuggingServer {
    fn process_message(&mut self, message: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        if let Err(e) = self.capture(message) {
            log::error!(
                "{}: cannot store the message from <{}>: {e}; answering 451",
                message.peer,
                message.mail_from
            );
            return Outcome::Reply(Reply::enhanced(
                451,
                EnhancedCode::new(4, 3, 0),
                "Requested action aborted: cannot store the message",
            ));
        }
        self.buf.clear();
        match self.print {
            Print::Cpython => format_message(
                &message.peer.ip().to_string(),
                &message.data,
                &message.mail_options,
                &message.rcpt_options,
                &mut self.buf,
            ),
            Print::Raw => self
                .buf
                .extend_from_slice(&capture::stored_bytes(&message.data)),
            Print::None => return Outcome::Accept,
        }
        let written = self
            .out
            .write_all(&self.buf)
            .and_then(|()| self.out.flush());
        match written {
            Ok(()) => self.failed = false,
            Err(e) if !self.failed => {
                self.failed = true;
                log::error!("DebuggingServer cannot print messages: {e}");
            }
            Err(_) => {}
        }
        Outcome::Accept
    }
}

/// First line of every dump.
const HEADER: &str = "---------- MESSAGE FOLLOWS ----------";
/// Last line of every dump.
const FOOTER: &str = "------------ END MESSAGE ------------";

/// Appends to `out` the dump CPython's `DebuggingServer` prints for one
/// message received from `peer_ip`.
///
/// The dump is the `MESSAGE FOLLOWS` banner; a `mail options: [...]` line
/// if `mail_options` is not empty; a `rcpt options: [...]` line and an
/// empty line if `rcpt_options` is not empty (lists shown as Python's repr
/// of a list of `str`); the message lines, split like `bytes.splitlines()`,
/// with `X-Peer: <peer_ip>` inserted before the first empty line (none is
/// inserted when the message has no empty line); and the `END MESSAGE`
/// banner. Every line ends with `\n`.
pub(crate) fn format_message(
    peer_ip: &str,
    data: &[u8],
    mail_options: &[String],
    rcpt_options: &[String],
    out: &mut Vec<u8>,
) {
    push_line(out, HEADER.as_bytes());
    if !mail_options.is_empty() {
        push_line(
            out,
            format!("mail options: {}", py_list_repr(mail_options)).as_bytes(),
        );
    }
    if !rcpt_options.is_empty() {
        push_line(
            out,
            format!("rcpt options: {}\n", py_list_repr(rcpt_options)).as_bytes(),
        );
    }
    let mut in_headers = true;
    for line in split_lines(data) {
        if in_headers && line.is_empty() {
            push_line(out, format!("X-Peer: {peer_ip}").as_bytes());
            in_headers = false;
        }
        push_line(out, line);
    }
    push_line(out, FOOTER.as_bytes());
}

/// Splits like Python's `bytes.splitlines()`: on `\r\n`, `\n` and `\r`,
/// with no empty piece after a final line break.
fn split_lines(data: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\n' => {
                lines.push(&data[start..i]);
                i += 1;
                start = i;
            }
            b'\r' => {
                lines.push(&data[start..i]);
                i += if data.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < data.len() {
        lines.push(&data[start..]);
    }
    lines
}

/// Appends `line` made terminal-safe (see the module docs), then `\n`.
/// A `\n` inside `line` is kept, so callers can add an empty line.
fn push_line(out: &mut Vec<u8>, line: &[u8]) {
    for chunk in line.utf8_chunks() {
        push_text(out, chunk.valid());
        for b in chunk.invalid() {
            push_hex(out, u32::from(*b));
        }
    }
    out.push(b'\n');
}

/// Appends valid text, escaping control characters other than tab and the
/// embedded newlines written by this module.
fn push_text(out: &mut Vec<u8>, text: &str) {
    for ch in text.chars() {
        if ch.is_control() && ch != '\t' && ch != '\n' {
            push_hex(out, u32::from(ch));
        } else {
            let mut buf = [0; 4];
            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        }
    }
}

/// Appends `\xNN` for a byte value or a C0/C1 control code point.
fn push_hex(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(format!("\\x{value:02x}").as_bytes());
}

/// Python's `repr()` of a list of `str`, e.g. `['BODY=8BITMIME', 'SMTPUTF8']`.
fn py_list_repr(items: &[String]) -> String {
    let parts: Vec<String> = items.iter().map(|s| py_str_repr(s)).collect();
    format!("[{}]", parts.join(", "))
}

/// Python's `repr()` of a `str`: single quotes unless the text contains a
/// single quote and no double quote; `\\`, the quote, `\t`, `\n` and `\r`
/// backslash-escaped; other non-printable characters as `\xNN`, `\uNNNN`
/// or `\UNNNNNNNN`.
fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if py_is_printable(c) => out.push(c),
            c => {
                let n = u32::from(c);
                // Writing to a String cannot fail.
                let _ = match n {
                    0..=0xff => write!(out, "\\x{n:02x}"),
                    0x100..=0xffff => write!(out, "\\u{n:04x}"),
                    _ => write!(out, "\\U{n:08x}"),
                };
            }
        }
    }
    out.push(quote);
    out
}

/// Python's `str.isprintable()` for one character (Unicode 14.0, as in
/// CPython 3.11). Exact for every assigned code point; among unassigned
/// ones (category Cn, which Python treats as non-printable) only the
/// noncharacters are recognised.
fn py_is_printable(c: char) -> bool {
    let n = u32::from(c);
    if n < 0x80 {
        return (0x20..0x7f).contains(&n);
    }
    let nonprintable = matches!(
        n,
        0x80..=0xA0
            | 0xAD
            | 0x600..=0x605
            | 0x61C
            | 0x6DD
            | 0x70F
            | 0x890..=0x891
            | 0x8E2
            | 0x1680
            | 0x180E
            | 0x2000..=0x200F
            | 0x2028..=0x202F
            | 0x205F..=0x2064
            | 0x2066..=0x206F
            | 0x3000
            | 0xD800..=0xF8FF
            | 0xFDD0..=0xFDEF
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x13438
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
            | 0xF0000..=0xFFFFD
            | 0x100000..=0x10FFFD
    );
    !nonprintable && (n & 0xFFFE) != 0xFFFE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(data: &[u8], mail: &[&str], rcpt: &[&str]) -> String {
        let mail: Vec<String> = mail.iter().map(|s| s.to_string()).collect();
        let rcpt: Vec<String> = rcpt.iter().map(|s| s.to_string()).collect();
        let mut out = Vec::new();
        format_message("192.0.2.7", data, &mail, &rcpt, &mut out);
        String::from_utf8(out).expect("output is UTF-8")
    }

    fn framed(body: &str) -> String {
        format!("{HEADER}\n{body}{FOOTER}\n")
    }

    #[test]
    fn typical_message() {
        let got = dump(b"From: a@b\r\nTo: c@d\r\n\r\nHello\r\nBye\r\n", &[], &[]);
        let want = framed("From: a@b\nTo: c@d\nX-Peer: 192.0.2.7\n\nHello\nBye\n");
        assert_eq!(got, want);
    }

    #[test]
    fn empty_data_has_no_peer_line() {
        assert_eq!(dump(b"", &[], &[]), framed(""));
    }

    #[test]
    fn headers_only_has_no_peer_line() {
        assert_eq!(
            dump(b"Subject: x\r\nTo: y", &[], &[]),
            framed("Subject: x\nTo: y\n")
        );
        assert_eq!(dump(b"Subject: x\r\n", &[], &[]), framed("Subject: x\n"));
    }

    #[test]
    fn peer_line_only_at_first_empty_line() {
        let got = dump(b"\n\nbody\n\nmore", &[], &[]);
        assert_eq!(got, framed("X-Peer: 192.0.2.7\n\n\nbody\n\nmore\n"));
        let got = dump(b"\n", &[], &[]);
        assert_eq!(got, framed("X-Peer: 192.0.2.7\n\n"));
    }

    #[test]
    fn splitlines_rules() {
        let table: &[(&[u8], &[&[u8]])] = &[
            (b"", &[]),
            (b"\n", &[b""]),
            (b"\r\r\n", &[b"", b""]),
            (b"a\r\nb\rc\nd", &[b"a", b"b", b"c", b"d"]),
            (b"a\n\rb", &[b"a", b"", b"b"]),
            (b"a\x0bb\x0cc\x1cd\n\n", &[b"a\x0bb\x0cc\x1cd", b""]),
        ];
        for (data, want) in table {
            assert_eq!(split_lines(data), *want, "{data:?}");
        }
        let got = dump(b"H: 1\rH: 2\r\rbody", &[], &[]);
        assert_eq!(got, framed("H: 1\nH: 2\nX-Peer: 192.0.2.7\n\nbody\n"));
    }

    #[test]
    fn option_lines() {
        let got = dump(b"A: b\n\nc", &["BODY=8BITMIME", "SMTPUTF8"], &[]);
        let want =
            framed("mail options: ['BODY=8BITMIME', 'SMTPUTF8']\nA: b\nX-Peer: 192.0.2.7\n\nc\n");
        assert_eq!(got, want);
        let got = dump(b"A: b\n\nc", &[], &["NOTIFY=NEVER"]);
        let want = framed("rcpt options: ['NOTIFY=NEVER']\n\nA: b\nX-Peer: 192.0.2.7\n\nc\n");
        assert_eq!(got, want);
        let got = dump(b"", &["SIZE=10"], &["X", "Y"]);
        assert_eq!(
            got,
            framed("mail options: ['SIZE=10']\nrcpt options: ['X', 'Y']\n\n")
        );
    }

    #[test]
    fn python_str_repr() {
        // Expected values produced by CPython 3.11's repr().
        let table = [
            ("SMTPUTF8", "'SMTPUTF8'"),
            ("", "''"),
            ("a'b", "\"a'b\""),
            ("a\"b", "'a\"b'"),
            ("a'\"b", "'a\\'\"b'"),
            ("x\\y\ty\r\n", "'x\\\\y\\ty\\r\\n'"),
            ("\x00\x1b\x7f", "'\\x00\\x1b\\x7f'"),
            ("\u{80}\u{a0}\u{ad}é", "'\\x80\\xa0\\xadé'"),
            ("\u{2028}\u{e000}\u{feff}", "'\\u2028\\ue000\\ufeff'"),
            ("😀\u{e0001}\u{10fffd}", "'😀\\U000e0001\\U0010fffd'"),
            ("\u{fffe}\u{1ffff}", "'\\ufffe\\U0001ffff'"),
        ];
        for (text, want) in table {
            assert_eq!(py_str_repr(text), want, "{text:?}");
        }
        let items = vec!["a".to_string(), "b'".to_string()];
        assert_eq!(py_list_repr(&items), "['a', \"b'\"]");
    }

    #[test]
    fn utf8_text_printed_as_is() {
        let got = dump("Subject: héllo ✓\n\nπ 😀\tend".as_bytes(), &[], &[]);
        assert_eq!(
            got,
            framed("Subject: héllo ✓\nX-Peer: 192.0.2.7\n\nπ 😀\tend\n")
        );
    }

    #[test]
    fn invalid_utf8_escaped_not_dropped() {
        let got = dump(b"a\xffb\xc3\n\xe2\x82x\xe2\x82", &[], &[]);
        assert_eq!(got, framed("a\\xffb\\xc3\n\\xe2\\x82x\\xe2\\x82\n"));
        let got = dump(b"Latin-1: caf\xe9 ok", &[], &[]);
        assert_eq!(got, framed("Latin-1: caf\\xe9 ok\n"));
    }

    #[test]
    fn backslash_left_as_is() {
        let got = dump(b"C:\\path\\x41", &[], &[]);
        assert_eq!(got, framed("C:\\path\\x41\n"));
    }

    #[test]
    fn control_characters_escaped() {
        let got = dump(b"\x1b[31mred\x07\x00\x7f\tTab\x0b\x0c", &[], &[]);
        assert_eq!(got, framed("\\x1b[31mred\\x07\\x00\\x7f\tTab\\x0b\\x0c\n"));
        // C1 controls arrive as UTF-8 and are shown by code point.
        let got = dump("a\u{9b}b\u{85}".as_bytes(), &[], &[]);
        assert_eq!(got, framed("a\\x9bb\\x85\n"));
    }

    #[test]
    fn peer_ip_is_sanitised() {
        let mut out = Vec::new();
        format_message("::1\x1b", b"\n", &[], &[], &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            framed("X-Peer: ::1\\x1b\n\n")
        );
    }

    #[test]
    fn appends_to_existing_output() {
        let mut out = b"prefix\n".to_vec();
        format_message("10.0.0.1", b"x", &[], &[], &mut out);
        assert_eq!(out, format!("prefix\n{}", framed("x\n")).into_bytes());
    }
}
