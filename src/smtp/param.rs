//! Typed MAIL/RCPT parameters ([`Param`]) and the per-recipient record ([`Recipient`]).

use std::fmt;

/// One ESMTP parameter of a `MAIL FROM` or `RCPT TO` command (`SIZE=1000`, `SMTPUTF8`), as the
/// client sent it: keyword and value keep their case. Compare keywords with
/// [`is`](Self::is), which ignores ASCII case (keywords are case-insensitive, RFC 5321 2.4);
/// values are compared as they are (xtext values such as DSN's `ORCPT` are not decoded).
///
/// CPython's upper-cased option strings (`"SIZE=1000"`) are
/// [`to_option`](Self::to_option), kept as [`Message::mail_options`](super::Message::mail_options)
/// and [`Message::rcpt_options`](super::Message::rcpt_options).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Param {
    /// The keyword, as sent (`"size"` stays `"size"`).
    pub keyword: String,
    /// The value after `=`, as sent; `None` for a bare keyword (`SMTPUTF8`).
    pub value: Option<String>,
}

impl Param {
    /// `keyword=value`, or the bare `keyword` when `value` is `None`.
    pub fn new(keyword: impl Into<String>, value: Option<String>) -> Param {
        Param {
            keyword: keyword.into(),
            value,
        }
    }

    /// Whether this parameter's keyword is `keyword`, ignoring ASCII case.
    pub fn is(&self, keyword: &str) -> bool {
        self.keyword.eq_ignore_ascii_case(keyword)
    }

    /// The value of the first parameter in `params` whose keyword is `keyword` (ignoring
    /// ASCII case): `None` when there is none, `Some(None)` for a bare keyword.
    pub fn find<'a>(params: &'a [Param], keyword: &str) -> Option<Option<&'a str>> {
        params
            .iter()
            .find(|p| p.is(keyword))
            .map(|p| p.value.as_deref())
    }

    /// CPython's form: `KEYWORD=VALUE` (or `KEYWORD`), upper-cased as `params.upper()` does.
    pub fn to_option(&self) -> String {
        self.to_string().to_uppercase()
    }
}

impl fmt::Display for Param {
    /// The parameter as sent: `keyword=value` or `keyword`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            None => f.write_str(&self.keyword),
            Some(value) => write!(f, "{}={}", self.keyword, value),
        }
    }
}

/// One accepted recipient of a transaction: the forward-path and the parameters its
/// `RCPT TO` carried (where DSN's `NOTIFY` and `ORCPT` and similar per-recipient facts live).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Recipient {
    /// The forward-path without angle brackets.
    pub address: String,
    /// The `RCPT TO` parameters, in order, as sent.
    pub params: Vec<Param>,
}

impl Recipient {
    /// A recipient at `address` with `params`.
    pub fn new(address: impl Into<String>, params: Vec<Param>) -> Recipient {
        Recipient {
            address: address.into(),
            params,
        }
    }

    /// The value of this recipient's parameter `keyword` (ignoring ASCII case), as
    /// [`Param::find`].
    pub fn param(&self, keyword: &str) -> Option<Option<&str>> {
        Param::find(&self.params, keyword)
    }

    /// CPython's upper-cased option strings of this recipient's parameters.
    pub fn options(&self) -> Vec<String> {
        self.params.iter().map(Param::to_option).collect()
    }
}
