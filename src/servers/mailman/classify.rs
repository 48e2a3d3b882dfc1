//! Which recipients might be Mailman's: the pure part of `MailmanProxy.process_message`.
//!
//! CPython lower-cased the recipient, took the local part, split it on `-` and skipped it when
//! that gave more than two parts; the first part was the list, the second (or none) the
//! command, which had to be one of `admin`, `owner`, `request`, `join`, `leave`. Mailman 3
//! answers more addresses than that (`-bounces`, `-confirm`, `-subscribe`, `-unsubscribe`,
//! `+tag`s, list names with dashes): [`Suffixes::Mailman3`] recognises them too.

/// Which addresses are candidates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Suffixes {
    /// CPython's rules, quirks included (the default): `LIST` or
    /// `LIST-admin|owner|request|join|leave`; a local part with more than one `-` is never a
    /// list, and `LIST-` counts as a post to `LIST`.
    #[default]
    Cpython,
    /// Mailman 3's own: also `-bounces`, `-confirm`, `-subscribe`, `-unsubscribe`; the suffix is
    /// whatever follows the last `-` (so list names may contain dashes), and a `+tag` after it is
    /// kept (as in `LIST-confirm+TOKEN`).
    Mailman3,
}

/// What a list address asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum Command {
    /// `LIST`: a post.
    Post,
    /// `LIST-admin`: Mailman 2's bounce address (Mailman 3 calls it `-bounces`).
    Admin,
    /// `LIST-owner`.
    Owner,
    /// `LIST-request`: commands in the subject or body.
    Request,
    /// `LIST-join`.
    Join,
    /// `LIST-leave`.
    Leave,
    /// `LIST-bounces` ([`Suffixes::Mailman3`] only).
    Bounces,
    /// `LIST-confirm` ([`Suffixes::Mailman3`] only).
    Confirm,
    /// `LIST-subscribe` ([`Suffixes::Mailman3`] only).
    Subscribe,
    /// `LIST-unsubscribe` ([`Suffixes::Mailman3`] only).
    Unsubscribe,
}

impl Command {
    fn from_suffix(suffix: &str, suffixes: Suffixes) -> Option<Command> {
        let cpython = match suffix {
            "admin" => Some(Command::Admin),
            "owner" => Some(Command::Owner),
            "request" => Some(Command::Request),
            "join" => Some(Command::Join),
            "leave" => Some(Command::Leave),
            _ => None,
        };
        match (cpython, suffixes) {
            (Some(c), _) => Some(c),
            (None, Suffixes::Cpython) => None,
            (None, Suffixes::Mailman3) => match suffix {
                "bounces" => Some(Command::Bounces),
                "confirm" => Some(Command::Confirm),
                "subscribe" => Some(Command::Subscribe),
                "unsubscribe" => Some(Command::Unsubscribe),
                _ => None,
            },
        }
    }

    /// The argument of Mailman 2's `mail/mailman` wrapper (its `VALID_COMMANDS`).
    pub fn wrapper_command(self) -> &'static str {
        match self {
            Command::Post => "post",
            Command::Admin => "admin",
            Command::Owner => "owner",
            Command::Request => "request",
            Command::Join => "join",
            Command::Leave => "leave",
            Command::Bounces => "bounces",
            Command::Confirm => "confirm",
            Command::Subscribe => "subscribe",
            Command::Unsubscribe => "unsubscribe",
        }
    }

    /// The local-part suffix Mailman 3 knows this command by: `-admin` becomes `-bounces`
    /// (Mailman 2.1 installed `admin` as a copy of `bounces`; Mailman 3 refuses `-admin`).
    pub fn mailman3_suffix(self) -> &'static str {
        match self {
            Command::Post => "",
            Command::Admin | Command::Bounces => "-bounces",
            Command::Owner => "-owner",
            Command::Request => "-request",
            Command::Join => "-join",
            Command::Leave => "-leave",
            Command::Confirm => "-confirm",
            Command::Subscribe => "-subscribe",
            Command::Unsubscribe => "-unsubscribe",
        }
    }
}

/// A recipient that may be a list address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// The list name, lower-case, without domain (Mailman 2's name for the list).
    pub list: String,
    /// What the address asks for.
    pub command: Command,
    /// `+tag` after the suffix, with its `+` ([`Suffixes::Mailman3`] only; else empty).
    pub tag: String,
    /// The domain, lower-case (empty when the address has none).
    pub domain: String,
}

impl Candidate {
    /// The address to give Mailman 3's LMTP runner: `list[-suffix][+tag]@domain`, with `-admin`
    /// mapped to `-bounces`. `None` without a domain (Mailman 3 lists are domain-qualified).
    pub fn mailman3_address(&self) -> Option<String> {
        if self.domain.is_empty() {
            return None;
        }
        Some(format!(
            "{}{}{}@{}",
            self.list,
            self.command.mailman3_suffix(),
            self.tag,
            self.domain
        ))
    }
}

/// Classifies a recipient (as given in `RCPT TO`, without angle brackets):
/// `Test-Request@Example.COM` is list `test`, command `Request`; `my-list-request@...` is no
/// list candidate under CPython's rules (see the tests).
pub(crate) fn classify(rcpt: &str, suffixes: Suffixes) -> Option<Candidate> {
    let lower = rcpt.to_lowercase();
    // CPython: rcpt.lower().split('@')[0]; the domain is what follows the last '@'.
    let local = lower.split('@').next().unwrap_or("");
    let domain = match lower.rsplit_once('@') {
        Some((_, d)) => d.to_string(),
        None => String::new(),
    };
    let (list, command, tag) = match suffixes {
        Suffixes::Cpython => {
            let parts: Vec<&str> = local.split('-').collect();
            if parts.len() > 2 {
                return None;
            }
            let command = match parts.get(1) {
                None | Some(&"") => Command::Post,
                Some(s) => Command::from_suffix(s, suffixes)?,
            };
            (parts[0].to_string(), command, String::new())
        }
        Suffixes::Mailman3 => {
            let (base, tag) = match local.find('+') {
                Some(i) => (&local[..i], &local[i..]),
                None => (local, ""),
            };
            match base.rsplit_once('-') {
                Some((list, suffix)) => match Command::from_suffix(suffix, suffixes) {
                    Some(command) => (list.to_string(), command, tag.to_string()),
                    None => (base.to_string(), Command::Post, tag.to_string()),
                },
                None => (base.to_string(), Command::Post, tag.to_string()),
            }
        }
    };
    if list.is_empty() {
        return None;
    }
    Some(Candidate {
        list,
        command,
        tag,
        domain,
    })
}

/// Whether `name` may be looked up as a Mailman 2 list directory: Mailman 2.1's
/// `ACCEPTABLE_LISTNAME_CHARACTERS` (`[-+_.=a-z0-9]`), not empty, not starting with a dot (so
/// neither `.` nor `..`), at most 255 bytes. Nothing else ever reaches the file system, so no
/// path can escape the lists directory.
pub(crate) fn is_safe_list_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'+' | b'_' | b'.' | b'='))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(rcpt: &str) -> Option<(String, Command)> {
        classify(rcpt, Suffixes::Cpython).map(|c| (c.list, c.command))
    }

    fn mm3(rcpt: &str) -> Option<String> {
        classify(rcpt, Suffixes::Mailman3).and_then(|c| c.mailman3_address())
    }

    #[test]
    fn classify_lower_cases_and_splits_like_cpython() {
        let c = classify("Test-Request@Example.COM", Suffixes::Cpython).unwrap();
        assert_eq!((c.list.as_str(), c.command), ("test", Command::Request));
        assert_eq!(c.domain, "example.com");
        assert_eq!(
            classify("my-list-request@example.com", Suffixes::Cpython),
            None
        );
    }

    #[test]
    fn cpython_rules() {
        let table: &[(&str, Option<(&str, Command)>)] = &[
            ("test@example.com", Some(("test", Command::Post))),
            ("TEST@EXAMPLE.COM", Some(("test", Command::Post))),
            ("test-admin@x", Some(("test", Command::Admin))),
            ("test-owner@x", Some(("test", Command::Owner))),
            ("Test-Request@x", Some(("test", Command::Request))),
            ("test-join@x", Some(("test", Command::Join))),
            ("test-leave@x", Some(("test", Command::Leave))),
            // CPython's quirks, kept.
            ("test-@x", Some(("test", Command::Post))), // "test-".split('-') == ['test', '']
            ("my-list-request@x", None),                // more than two parts: never a list
            ("my-list@x", None),                        // 'list' is no command
            ("test-bounces@x", None),                   // not in CPython's set
            ("test-confirm@x", None),
            ("test-subscribe@x", None),
            ("test-unsubscribe@x", None),
            ("test+tag@x", Some(("test+tag", Command::Post))), // '+' stays in the name
            ("-request@x", None),                              // empty list name
            ("@x", None),
            ("test", Some(("test", Command::Post))), // no domain: MM2 ignores it anyway
        ];
        for (rcpt, want) in table {
            let want = want.map(|(l, c)| (l.to_string(), c));
            assert_eq!(cp(rcpt), want, "{rcpt}");
        }
    }

    #[test]
    fn mailman3_rules() {
        let table: &[(&str, Option<&str>)] = &[
            ("test@example.com", Some("test@example.com")),
            ("Test-Admin@Example.com", Some("test-bounces@example.com")),
            ("test-bounces@x.org", Some("test-bounces@x.org")),
            (
                "test-confirm+abc123@x.org",
                Some("test-confirm+abc123@x.org"),
            ),
            ("test+foo@x.org", Some("test+foo@x.org")),
            ("my-list@x.org", Some("my-list@x.org")),
            ("my-list-request@x.org", Some("my-list-request@x.org")),
            ("a-b-c-unsubscribe@x.org", Some("a-b-c-unsubscribe@x.org")),
            ("test-subscribe@x.org", Some("test-subscribe@x.org")),
            ("test", None), // no domain
        ];
        for (rcpt, want) in table {
            assert_eq!(mm3(rcpt).as_deref(), *want, "{rcpt}");
        }
        let c = classify("my-list-leave@x", Suffixes::Mailman3).unwrap();
        assert_eq!((c.list.as_str(), c.command), ("my-list", Command::Leave));
    }

    #[test]
    fn cpython_quirk_addresses_map_to_canonical_mailman3_ones() {
        let c = classify("Test-@Example.com", Suffixes::Cpython).unwrap();
        assert_eq!(c.mailman3_address().unwrap(), "test@example.com");
        let c = classify("test-admin@example.com", Suffixes::Cpython).unwrap();
        assert_eq!(c.mailman3_address().unwrap(), "test-bounces@example.com");
    }

    #[test]
    fn wrapper_commands() {
        assert_eq!(Command::Post.wrapper_command(), "post");
        assert_eq!(Command::Admin.wrapper_command(), "admin");
        assert_eq!(Command::Leave.wrapper_command(), "leave");
    }

    #[test]
    fn list_names_that_could_escape_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            ".hidden",
            "a b",
            "A",
            "caf\u{e9}",
            "a\0b",
        ] {
            assert!(!is_safe_list_name(bad), "{bad:?}");
        }
        for good in ["test", "my-list", "a.b", "x+y", "a_b=c", "0"] {
            assert!(is_safe_list_name(good), "{good:?}");
        }
        assert!(!is_safe_list_name(&"a".repeat(256)));
    }
}
