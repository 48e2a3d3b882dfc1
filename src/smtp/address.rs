//! A small RFC 5321 path parser for MAIL, RCPT and VRFY arguments. Pure
//! functions.
//!
//! Accepted forms, compatible with what CPython's `_getaddr` returns for
//! common input:
//!
//! * `<local@domain>` and bare `local@domain`, returned without brackets;
//! * `<>` (the null reverse-path, only where allowed), returned as `"<>"`;
//! * quoted local parts, unquoted when they need no quoting
//!   (`"abc"@x` gives `abc@x`, `"a b"@x` stays `"a b"@x`);
//! * source routes `<@a,@b:local@domain>`, which are dropped;
//! * a local part without domain (`<postmaster>`), as CPython accepts it;
//! * domains made of labels (letters, digits, `-`, `_`) or an address
//!   literal `[...]`;
//! * non-ASCII characters, flagged in [`Path::non_ascii`] so the session
//!   can require SMTPUTF8.
//!
//! What follows the path is returned stripped as [`Path::rest`] (the ESMTP
//! parameters). It may follow without a space, as with CPython's
//! `get_angle_addr`/`get_addr_spec` (`<a@b>SIZE=10` has the parameter
//! `SIZE=10`; in `a@b,c@d` the "parameter" `,c@d` is a syntax error).

use super::command::py_strip;

/// A parsed path and what followed it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Path<'a> {
    /// The address without angle brackets, or `"<>"` for the null path.
    pub(crate) address: String,
    /// The text after the path, stripped (the parameters).
    pub(crate) rest: &'a str,
    /// Whether the address contains non-ASCII characters.
    pub(crate) non_ascii: bool,
}

/// The argument is not a path this parser accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AddressError;

/// RFC 5322 `atext` for ASCII, plus any non-control non-ASCII character
/// (RFC 6531 `UTF8-non-ascii`).
fn is_atext(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
    } else {
        !c.is_control()
    }
}

/// A domain label character: letter, digit, `-`, `_`, or non-ASCII.
fn is_label_char(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphanumeric() || c == '-' || c == '_'
    } else {
        !c.is_control()
    }
}

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, want: char) -> bool {
        if self.peek() == Some(want) {
            self.pos += want.len_utf8();
            true
        } else {
            false
        }
    }

    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.pos += 1;
        }
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    /// `"..."`: returns the unescaped content.
    fn quoted(&mut self) -> Result<String, AddressError> {
        let mut content = String::new();
        loop {
            match self.bump().ok_or(AddressError)? {
                '"' => return Ok(content),
                '\\' => match self.bump() {
                    Some(c) if c == ' ' || c.is_ascii_graphic() => content.push(c),
                    _ => return Err(AddressError),
                },
                c if c.is_control() => return Err(AddressError),
                c => content.push(c),
            }
        }
    }

    /// Local part: quoted string or (leniently) atext and dots.
    fn local_part(&mut self) -> Result<String, AddressError> {
        if self.eat('"') {
            return Ok(requote(&self.quoted()?));
        }
        let start = self.pos;
        while matches!(self.peek(), Some(c) if is_atext(c) || c == '.') {
            self.bump();
        }
        if self.pos == start {
            return Err(AddressError);
        }
        Ok(self.text[start..self.pos].to_owned())
    }

    /// Domain: dot-separated labels or an address literal.
    fn domain(&mut self) -> Result<&'a str, AddressError> {
        let start = self.pos;
        if self.eat('[') {
            let inner = self.pos;
            while matches!(self.peek(), Some(c) if c.is_ascii_graphic() && !"[]\\".contains(c)) {
                self.bump();
            }
            if self.pos == inner || !self.eat(']') {
                return Err(AddressError);
            }
            return Ok(&self.text[start..self.pos]);
        }
        loop {
            let label = self.pos;
            while matches!(self.peek(), Some(c) if is_label_char(c)) {
                self.bump();
            }
            if self.pos == label {
                return Err(AddressError);
            }
            if !self.eat('.') {
                return Ok(&self.text[start..self.pos]);
            }
        }
    }

    /// `local[@domain]`.
    fn mailbox(&mut self) -> Result<String, AddressError> {
        let mut address = self.local_part()?;
        if self.eat('@') {
            address.push('@');
            address.push_str(self.domain()?);
        }
        Ok(address)
    }

    /// `@a,@b:` (already past nothing); drops it.
    fn source_route(&mut self) -> Result<(), AddressError> {
        loop {
            if !self.eat('@') {
                return Err(AddressError);
            }
            self.domain()?;
            if self.eat(':') {
                return Ok(());
            }
            if !self.eat(',') {
                return Err(AddressError);
            }
        }
    }
}

/// Quotes a local part only when it is not a dot-atom.
fn requote(content: &str) -> String {
    let dot_atom = !content.is_empty()
        && content
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext));
    if dot_atom {
        return content.to_owned();
    }
    let mut out = String::with_capacity(content.len() + 2);
    out.push('"');
    for c in content.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Parses the path at the start of `arg`. `allow_null` admits `<>`.
pub(crate) fn parse_path(arg: &str, allow_null: bool) -> Result<Path<'_>, AddressError> {
    let arg = py_strip(arg);
    let mut cur = Cursor { text: arg, pos: 0 };
    let address = if cur.eat('<') {
        cur.skip_spaces();
        if cur.eat('>') {
            if !allow_null {
                return Err(AddressError);
            }
            "<>".to_owned()
        } else {
            if cur.peek() == Some('@') {
                cur.source_route()?;
            }
            let address = cur.mailbox()?;
            cur.skip_spaces();
            if !cur.eat('>') {
                return Err(AddressError);
            }
            address
        }
    } else {
        cur.mailbox()?
    };
    let rest = cur.rest();
    Ok(Path {
        non_ascii: !address.is_ascii(),
        address,
        rest: py_strip(rest),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(arg: &str) -> (String, &str) {
        let p = parse_path(arg, true).unwrap_or_else(|_| panic!("{arg:?} should parse"));
        (p.address, p.rest)
    }

    #[test]
    fn accepted_forms_match_cpython() {
        let table: &[(&str, &str, &str)] = &[
            ("<foo@example.com>", "foo@example.com", ""),
            ("<foo@example.com> SIZE=20", "foo@example.com", "SIZE=20"),
            ("foo@example.com SIZE=20", "foo@example.com", "SIZE=20"),
            (
                "\"Fred Blogs\"@example.com",
                "\"Fred Blogs\"@example.com",
                "",
            ),
            (
                "<\"Fred Blogs\"@example.com> X",
                "\"Fred Blogs\"@example.com",
                "X",
            ),
            ("<>", "<>", ""),
            ("<a@b>x", "a@b", "x"),
            ("<a@b>SIZE=10", "a@b", "SIZE=10"),
            ("<a@b>>", "a@b", ">"),
            ("a@b,c@d", "a@b", ",c@d"),
            ("from:<a@b>", "from", ":<a@b>"),
            ("<> SIZE=1", "<>", "SIZE=1"),
            ("<@a,@b:x@y>", "x@y", ""),
            ("<@a:x@y>", "x@y", ""),
            ("eggs@example", "eggs@example", ""),
            ("<foo>", "foo", ""),
            ("<Postmaster>", "Postmaster", ""),
            ("<\"abc\"@x>", "abc@x", ""),
            ("<\"a.b\"@x>", "a.b@x", ""),
            ("<\"a\\ b\"@c>", "\"a b\"@c", ""),
            ("<\"a\\\"b\"@c>", "\"a\\\"b\"@c", ""),
            ("<\"a@b\"@c>", "\"a@b\"@c", ""),
            ("<\"\"@a>", "\"\"@a", ""),
            ("<a@[1.2.3.4]>", "a@[1.2.3.4]", ""),
            ("<a@[IPv6:::1]>", "a@[IPv6:::1]", ""),
            ("< a@b >", "a@b", ""),
            ("<a+b=c@d.e>", "a+b=c@d.e", ""),
            ("<a%b@c>", "a%b@c", ""),
            ("<späm@examplé>", "späm@examplé", ""),
        ];
        for (arg, addr, rest) in table {
            assert_eq!(ok(arg), (addr.to_string(), *rest), "{arg:?}");
        }
        assert!(parse_path("<späm@x>", true).unwrap().non_ascii);
        assert!(!parse_path("<spam@x>", true).unwrap().non_ascii);
    }

    #[test]
    fn rejected_forms() {
        for arg in [
            "",
            "<",
            "\"",
            "<@>",
            "<foo@>",
            "<@example>",
            "<a@b..c>",
            "<a@b.>",
            "<a@@b>",
            "<a@b",
            "<a@b c>",
            "@a:b@c",
            "<a@b(c)>",
            "<a@[]>",
            "<\"a>",
        ] {
            assert!(parse_path(arg, true).is_err(), "{arg:?} should fail");
        }
        assert!(parse_path("<>", false).is_err());
    }
}
