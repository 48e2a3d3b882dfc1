//! Splitting a command line into verb and argument, and parsing ESMTP
//! parameters, the way CPython's `SMTPChannel` does. Pure functions.

use std::collections::BTreeMap;

use super::param::Param;

/// The commands the session knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verb {
    Helo,
    Ehlo,
    Mail,
    Rcpt,
    Data,
    Rset,
    Noop,
    Quit,
    Help,
    Vrfy,
    Expn,
    Starttls,
}

impl Verb {
    /// Looks up an upper-cased verb.
    pub(crate) fn from_upper(verb: &str) -> Option<Verb> {
        Some(match verb {
            "HELO" => Verb::Helo,
            "EHLO" => Verb::Ehlo,
            "MAIL" => Verb::Mail,
            "RCPT" => Verb::Rcpt,
            "DATA" => Verb::Data,
            "RSET" => Verb::Rset,
            "NOOP" => Verb::Noop,
            "QUIT" => Verb::Quit,
            "HELP" => Verb::Help,
            "VRFY" => Verb::Vrfy,
            "EXPN" => Verb::Expn,
            "STARTTLS" => Verb::Starttls,
            _ => return None,
        })
    }
}

/// A command line split at its first space.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CommandLine<'a> {
    /// Everything before the first space, upper-cased (may be empty).
    pub(crate) verb: String,
    /// Everything after the first space, stripped; empty when there is none.
    pub(crate) arg: &'a str,
}

/// Python's `str.isspace` for one character (close enough: Unicode
/// whitespace plus the ASCII separators U+001C..U+001F).
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
pub(crate) fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python's `str.split()` (no argument).
pub(crate) fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|p| !p.is_empty())
}

/// Splits like CPython: verb is `line[:i].upper()` where `i` is the first
/// space, the argument is `line[i+1:].strip()`.
pub(crate) fn split(line: &str) -> CommandLine<'_> {
    match line.find(' ') {
        None => CommandLine {
            verb: line.to_uppercase(),
            arg: "",
        },
        Some(i) => CommandLine {
            verb: line[..i].to_uppercase(),
            arg: py_strip(&line[i + 1..]),
        },
    }
}

/// CPython's `_strip_command_keyword`: when `arg` starts with `keyword`
/// (ASCII, case-insensitive) returns the stripped remainder, else `""`.
pub(crate) fn strip_keyword<'a>(keyword: &str, arg: &'a str) -> &'a str {
    match arg.get(..keyword.len()) {
        Some(head) if head.eq_ignore_ascii_case(keyword) => py_strip(&arg[keyword.len()..]),
        _ => "",
    }
}

/// Upper-cases and splits the parameter part of MAIL/RCPT into the option
/// list handed to the message handler (`params.upper().split()`).
pub(crate) fn options(rest: &str) -> Vec<String> {
    py_split(&rest.to_uppercase()).map(str::to_owned).collect()
}

/// The parameters of MAIL/RCPT as sent, case kept: each whitespace-separated option split
/// at its first `=` (the same options, in the same order, as [`options`]).
pub(crate) fn typed_params(rest: &str) -> Vec<Param> {
    py_split(rest)
        .map(|option| match option.split_once('=') {
            Some((keyword, value)) => Param::new(keyword, Some(value.to_owned())),
            None => Param::new(option, None),
        })
        .collect()
}

/// A parameter value: `None` for a bare keyword (`SMTPUTF8`), `Some` for
/// `KEY=value`.
pub(crate) type ParamValue = Option<String>;

/// CPython's `_getparams`: every option must be `KEY` or `KEY=value` with an
/// alphanumeric key and a non-empty value. Later duplicates win. Returns
/// `None` when an option is malformed.
pub(crate) fn params(options: &[String]) -> Option<BTreeMap<String, ParamValue>> {
    let mut map = BTreeMap::new();
    for option in options {
        let (key, value) = match option.split_once('=') {
            Some((key, value)) => {
                if value.is_empty() {
                    return None;
                }
                (key, Some(value.to_owned()))
            }
            None => (option.as_str(), None),
        };
        if key.is_empty() || !key.chars().all(char::is_alphanumeric) {
            return None;
        }
        map.insert(key.to_owned(), value);
    }
    Some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_like_cpython() {
        let c = split("mail FROM:<a@b>  ");
        assert_eq!(c.verb, "MAIL");
        assert_eq!(c.arg, "FROM:<a@b>");
        let c = split("noop");
        assert_eq!((c.verb.as_str(), c.arg), ("NOOP", ""));
        let c = split("  x");
        assert_eq!((c.verb.as_str(), c.arg), ("", "x"));
        let c = split("NOOP\tx");
        assert_eq!(c.verb, "NOOP\tX");
    }

    #[test]
    fn keyword_and_params() {
        assert_eq!(strip_keyword("FROM:", "from: <a@b>"), "<a@b>");
        assert_eq!(strip_keyword("FROM:", "from <a@b>"), "");
        assert_eq!(strip_keyword("TO:", "T"), "");
        let o = options(" size=20  body=8bitmime smtputf8");
        assert_eq!(o, ["SIZE=20", "BODY=8BITMIME", "SMTPUTF8"]);
        let p = params(&o).unwrap();
        assert_eq!(p["SIZE"], Some("20".to_owned()));
        assert_eq!(p["SMTPUTF8"], None);
        assert!(params(&["SIZE=".to_owned()]).is_none());
        assert!(params(&["X-Y=1".to_owned()]).is_none());
        assert!(params(&["=1".to_owned()]).is_none());
        assert_eq!(params(&[]).unwrap().len(), 0);
        let typed = typed_params(" size=20  Body=8bitMIME smtputf8 x=a=b");
        assert_eq!(
            typed,
            [
                Param::new("size", Some("20".into())),
                Param::new("Body", Some("8bitMIME".into())),
                Param::new("smtputf8", None),
                Param::new("x", Some("a=b".into())),
            ]
        );
        let views: Vec<String> = typed.iter().map(Param::to_option).collect();
        assert_eq!(views, options(" size=20  Body=8bitMIME smtputf8 x=a=b"));
    }
}
