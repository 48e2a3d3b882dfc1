//! Dialogue tests for the session. Expected texts come from `replies.rs`.

use std::net::SocketAddr;
use std::sync::Arc;

use proptest::prelude::*;

use super::replies::{self, Canned};
use super::*;

const HOST: &str = "mx.test";

fn peer() -> SocketAddr {
    "192.0.2.7:4321".parse().unwrap()
}

fn config() -> Config {
    Config {
        hostname: HOST.to_owned(),
        ..Config::default()
    }
}

fn session_with(config: Config) -> Session {
    let mut s = Session::new(Arc::new(config), peer());
    let mut out = Vec::new();
    s.start(&mut out);
    assert_eq!(out.len(), 1);
    s
}

// ---- fixtures named after states -------------------------------------

fn session_greeted() -> Session {
    session_with(config())
}

fn session_after_helo() -> Session {
    let mut s = session_greeted();
    expect(&mut s, "HELO client.example", &format!("250 {HOST}"));
    s
}

fn session_after_ehlo_with(config: Config) -> Session {
    let mut s = session_with(config);
    let r = one_reply(&mut s, b"EHLO client.example");
    assert_eq!(r.code, 250);
    s
}

fn session_after_ehlo() -> Session {
    session_after_ehlo_with(config())
}

fn session_in_mail() -> Session {
    let mut s = session_after_ehlo();
    ok(&mut s, "MAIL FROM:<eggs@example>");
    s
}

fn session_in_rcpt() -> Session {
    let mut s = session_in_mail();
    ok(&mut s, "RCPT TO:<spam@example>");
    s
}

fn session_in_data_with(config: Config) -> Session {
    let mut s = session_after_ehlo_with(config);
    ok(&mut s, "MAIL FROM:<eggs@example>");
    ok(&mut s, "RCPT TO:<spam@example>");
    expect(&mut s, "DATA", &replies::START_DATA.line());
    assert_eq!(s.framing(), Framing::Data);
    s
}

fn session_in_data() -> Session {
    session_in_data_with(config())
}

// ---- helpers -----------------------------------------------------------

fn feed(s: &mut Session, line: &[u8]) -> Vec<Output> {
    let mut out = Vec::new();
    s.feed_line(line, &mut out)
        .expect("the session takes a line");
    out
}

fn one_reply(s: &mut Session, line: &[u8]) -> Reply {
    let mut out = feed(s, line);
    // The end of a transaction is reported besides the reply (RSET, HELO, QUIT).
    out.retain(|o| *o != Output::Reset);
    match out.as_slice() {
        [Output::Reply(r)] => r.clone(),
        other => panic!("expected one reply to {line:?}, got {other:?}"),
    }
}

fn wire(r: &Reply) -> String {
    String::from_utf8(r.to_bytes()).unwrap()
}

/// Feeds `line`, expects one single-line reply equal to `want` (no CRLF).
fn expect(s: &mut Session, line: &str, want: &str) {
    let r = one_reply(s, line.as_bytes());
    assert_eq!(r.to_string(), want, "reply to {line:?}");
}

fn expect_canned(s: &mut Session, line: &str, want: Canned) {
    expect(s, line, &want.line());
}

fn ok(s: &mut Session, line: &str) {
    expect_canned(s, line, replies::OK);
}

/// Runs a table of (line, expected reply) against a session.
fn dialogue(s: &mut Session, steps: &[(&str, Canned)]) {
    for (line, want) in steps {
        expect_canned(s, line, *want);
    }
}

fn data(s: &mut Session, body: &[u8]) -> Vec<Output> {
    let mut out = Vec::new();
    s.feed_data(body, &mut out)
        .expect("the session takes a body");
    out
}

fn message(s: &mut Session, body: &[u8]) -> Message {
    let out = data(s, body);
    assert!(s.is_waiting());
    match out.as_slice() {
        [Output::Decide(Request::Message(m))] => m.clone(),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// A refused body: the transaction ends ([`Output::Reset`]) with one reply.
fn data_reply(s: &mut Session, body: &[u8]) -> Reply {
    match data(s, body).as_slice() {
        [Output::Reset, Output::Reply(r)] => r.clone(),
        other => panic!("expected a reply, got {other:?}"),
    }
}

// ---- greeting, HELO, EHLO ----------------------------------------------

#[test]
fn greeting_names_host_and_product() {
    let mut s = Session::new(Arc::new(config()), peer());
    let mut out = Vec::new();
    s.start(&mut out);
    assert_eq!(
        out,
        vec![Output::Reply(Reply::new(
            220,
            format!("{HOST} smtpd-rs 0.1")
        ))]
    );
    assert_eq!(s.framing(), Framing::Line);
    assert_eq!(s.input_limit(), Some(512));
    assert_eq!(s.peer(), peer());
}

#[test]
fn helo_sets_greeting() {
    let s = session_after_helo();
    assert_eq!(s.helo(), Some("client.example"));
    assert!(!s.is_esmtp());
}

#[test]
fn ehlo_reply_default() {
    let mut s = session_greeted();
    let r = one_reply(&mut s, b"EHLO client.example");
    assert_eq!(
        wire(&r),
        format!("250-{HOST}\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250 HELP\r\n")
    );
    assert!(s.is_esmtp());
    assert_eq!(s.helo(), Some("client.example"));
}

#[test]
fn ehlo_reply_variants() {
    let table: &[(Config, &str)] = &[
        (
            Config {
                data_size_limit: 0,
                ..config()
            },
            "250-mx.test\r\n250-8BITMIME\r\n250 HELP\r\n",
        ),
        (
            Config {
                decode_data: true,
                ..config()
            },
            "250-mx.test\r\n250-SIZE 33554432\r\n250 HELP\r\n",
        ),
        (
            Config {
                enable_smtputf8: true,
                data_size_limit: 100,
                ..config()
            },
            "250-mx.test\r\n250-SIZE 100\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 HELP\r\n",
        ),
    ];
    for (cfg, want) in table {
        let mut s = session_with(cfg.clone());
        assert_eq!(wire(&one_reply(&mut s, b"ehlo x")), *want);
    }
}

#[test]
fn helo_ehlo_errors() {
    let mut s = session_greeted();
    dialogue(
        &mut s,
        &[
            ("HELO", replies::HELO_SYNTAX),
            ("HELO   ", replies::HELO_SYNTAX),
            ("EHLO", replies::EHLO_SYNTAX),
        ],
    );
    for first in ["HELO a", "EHLO a"] {
        for second in ["HELO b", "EHLO b"] {
            let mut s = session_greeted();
            let _ = one_reply(&mut s, first.as_bytes());
            expect_canned(&mut s, second, replies::DUPLICATE_HELO);
            assert_eq!(s.helo(), Some("a"));
        }
    }
}

#[test]
fn commands_are_case_insensitive() {
    let mut s = session_greeted();
    expect(&mut s, "hElO x", &format!("250 {HOST}"));
    dialogue(
        &mut s,
        &[
            ("mail from:<a@b>", replies::OK),
            ("rcpt to:<c@d>", replies::OK),
            ("noop", replies::OK),
            ("rset", replies::OK),
        ],
    );
}

// ---- commands before HELO ------------------------------------------------

#[test]
fn commands_before_helo() {
    let mut s = session_greeted();
    dialogue(
        &mut s,
        &[
            ("MAIL FROM:<a@b>", replies::SEND_HELO_FIRST),
            ("RCPT TO:<a@b>", replies::SEND_HELO_FIRST),
            ("DATA", replies::SEND_HELO_FIRST),
            ("NOOP", replies::OK),
            ("RSET", replies::OK),
            ("HELP", replies::HELP_ALL),
            ("VRFY a@b", replies::CANNOT_VRFY),
            ("EXPN a", replies::EXPN_NOT_IMPLEMENTED),
        ],
    );
}

// ---- NOOP, RSET, QUIT, EXPN, unknown, empty ------------------------------

#[test]
fn noop_and_rset_syntax() {
    let mut s = session_after_helo();
    dialogue(
        &mut s,
        &[
            ("NOOP", replies::OK),
            ("NOOP ", replies::OK),
            ("NOOP hi", replies::NOOP_SYNTAX),
            ("RSET hi", replies::RSET_SYNTAX),
            ("RSET", replies::OK),
        ],
    );
}

#[test]
fn rset_ends_transaction_keeps_greeting() {
    let mut s = session_in_rcpt();
    assert!(s.envelope().is_some());
    ok(&mut s, "RSET");
    assert!(s.envelope().is_none());
    assert_eq!(s.helo(), Some("client.example"));
    ok(&mut s, "MAIL FROM:<foo@example>");
    ok(&mut s, "RCPT TO:<eggs@example>");
    expect_canned(&mut s, "DATA", replies::START_DATA);
    let m = message(&mut s, b"data");
    assert_eq!(m.mail_from, "foo@example");
    assert_eq!(m.rcpt_tos, ["eggs@example"]);
}

#[test]
fn quit_replies_then_closes() {
    for line in ["QUIT", "quit bye bye"] {
        let mut s = session_in_mail();
        let out = feed(&mut s, line.as_bytes());
        assert_eq!(
            out,
            vec![
                Output::Reset,
                Output::Reply(replies::BYE.reply()),
                Output::Close
            ]
        );
        assert!(s.is_closed());
        assert!(s.envelope().is_none());
        assert!(feed(&mut s, b"NOOP").is_empty());
        let mut out = Vec::new();
        s.feed_oversize(&mut out).unwrap();
        assert!(out.is_empty());
    }
}

#[test]
fn expn_always_502() {
    let mut s = session_after_ehlo();
    dialogue(
        &mut s,
        &[
            ("EXPN", replies::EXPN_NOT_IMPLEMENTED),
            ("EXPN list", replies::EXPN_NOT_IMPLEMENTED),
        ],
    );
}

#[test]
fn unknown_commands() {
    let mut s = session_greeted();
    let table = [
        ("UNKNOWN_CMD", "UNKNOWN_CMD"),
        ("foo bar", "FOO"),
        ("   NOOP", ""),
        ("NOOP\tx", "NOOP\tX"),
        ("T\u{e9}ST", "T?ST"),
        ("\u{0}x", "?X"),
    ];
    for (line, shown) in table {
        let r = one_reply(&mut s, line.as_bytes());
        assert_eq!(r, replies::command_not_recognized(shown), "{line:?}");
    }
}

#[test]
fn empty_line_is_bad_syntax() {
    let mut s = session_greeted();
    assert_eq!(one_reply(&mut s, b""), replies::BAD_SYNTAX.reply());
}

#[test]
fn bare_cr_or_lf_in_line_is_not_executed() {
    for line in [&b"QUIT\rx"[..], b"QUIT\n", b"\r", b"RSET\r\nQUIT"] {
        let mut s = session_in_mail();
        assert_eq!(one_reply(&mut s, line), replies::BAD_SYNTAX.reply());
        assert!(!s.is_closed());
        assert!(s.envelope().is_some());
    }
}

#[test]
fn non_utf8_line_gets_reply() {
    let mut s = session_after_ehlo();
    assert_eq!(
        one_reply(&mut s, b"MAIL FROM:<\xff@x>"),
        replies::BAD_SYNTAX.reply()
    );
    ok(&mut s, "MAIL FROM:<a@x>");
}

// ---- HELP ----------------------------------------------------------------

#[test]
fn help_after_helo() {
    let mut s = session_after_helo();
    dialogue(
        &mut s,
        &[
            ("HELP", replies::HELP_ALL),
            ("HELP EHLO", replies::HELP_EHLO),
            ("HELP helo", replies::HELP_HELO),
            ("HELP MAIL", replies::HELP_MAIL),
            ("HELP RCPT", replies::HELP_RCPT),
            ("HELP DATA", replies::HELP_DATA),
            ("HELP RSET", replies::HELP_RSET),
            ("HELP NOOP", replies::HELP_NOOP),
            ("HELP QUIT", replies::HELP_QUIT),
            ("HELP VRFY", replies::HELP_VRFY),
            ("HELP SPAM", replies::HELP_UNKNOWN),
            ("HELP EXPN", replies::HELP_UNKNOWN),
        ],
    );
}

#[test]
fn help_after_ehlo_is_extended() {
    let mut s = session_after_ehlo();
    dialogue(
        &mut s,
        &[
            ("HELP MAIL", replies::HELP_MAIL_ESMTP),
            ("HELP rcpt", replies::HELP_RCPT_ESMTP),
        ],
    );
}

#[test]
fn help_texts_are_exact() {
    assert_eq!(
        replies::HELP_ALL.line(),
        "250 Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY"
    );
    assert_eq!(
        replies::HELP_MAIL_ESMTP.line(),
        "250 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"
    );
    assert_eq!(
        replies::START_DATA.line(),
        "354 End data with <CR><LF>.<CR><LF>"
    );
}

// ---- VRFY ------------------------------------------------------------------

#[test]
fn vrfy() {
    let mut s = session_greeted();
    dialogue(
        &mut s,
        &[
            ("VRFY", replies::VRFY_SYNTAX),
            ("VRFY eggs@example", replies::CANNOT_VRFY),
            ("VRFY <eggs@example>", replies::CANNOT_VRFY),
        ],
    );
    assert_eq!(
        one_reply(&mut s, b"VRFY <bad@"),
        replies::could_not_vrfy("<bad@")
    );
    assert_eq!(one_reply(&mut s, b"VRFY <>"), replies::could_not_vrfy("<>"));
    assert_eq!(
        one_reply(&mut s, "VRFY <a\tb\u{e9}@".as_bytes()),
        replies::could_not_vrfy("<a\tb?@")
    );
}

// ---- MAIL --------------------------------------------------------------------

#[test]
fn mail_forms_accepted() {
    let table = [
        ("MAIL from:<eggs@example>", "eggs@example"),
        ("MAIL From:eggs@example", "eggs@example"),
        ("MAIL from:   <foo@example.com>", "foo@example.com"),
        ("MAIL FROM: <foo@example.com>", "foo@example.com"),
        ("MAIL from:<>", "<>"),
        (
            "MAIL from: <\"Fred Blogs\"@example.com>",
            "\"Fred Blogs\"@example.com",
        ),
        (
            "MAIL from: \"Fred Blogs\"@example.com",
            "\"Fred Blogs\"@example.com",
        ),
        ("MAIL FROM:<@relay.example:eggs@example>", "eggs@example"),
        ("MAIL FROM:<\"eggs\"@example>", "eggs@example"),
        ("MAIL FROM:<eggs@[192.0.2.1]>", "eggs@[192.0.2.1]"),
    ];
    for (line, addr) in table {
        let mut s = session_after_helo();
        ok(&mut s, line);
        assert_eq!(s.envelope().unwrap().mail_from, addr, "{line:?}");
    }
}

#[test]
fn mail_syntax_errors_after_helo() {
    let mut s = session_after_helo();
    dialogue(
        &mut s,
        &[
            ("MAIL", replies::MAIL_SYNTAX),
            ("MAIL from:", replies::MAIL_SYNTAX),
            ("MAIL from eggs@example", replies::MAIL_SYNTAX),
            (
                "MAIL from:<foo@example.com> SIZE=1234",
                replies::MAIL_SYNTAX,
            ),
            ("MAIL from:<foo@", replies::MAIL_SYNTAX),
            ("MAIL from:<a@b..c>", replies::MAIL_SYNTAX),
            ("MAIL from:<", replies::MAIL_SYNTAX),
            ("MAIL from:\"", replies::MAIL_SYNTAX),
        ],
    );
    assert!(s.envelope().is_none());
}

#[test]
fn mail_syntax_errors_after_ehlo() {
    let mut s = session_after_ehlo();
    dialogue(
        &mut s,
        &[
            ("MAIL", replies::MAIL_SYNTAX_ESMTP),
            ("MAIL from eggs@example", replies::MAIL_SYNTAX_ESMTP),
            (
                "MAIL FROM:<eggs@example> SIZE=invalid",
                replies::MAIL_SYNTAX_ESMTP,
            ),
            ("MAIL FROM:<eggs@example> SIZE", replies::MAIL_SYNTAX_ESMTP),
            ("MAIL FROM:<eggs@example> SIZE=", replies::MAIL_SYNTAX_ESMTP),
            ("MAIL FROM:<eggs@example> X-Y=1", replies::MAIL_SYNTAX_ESMTP),
            ("MAIL FROM:<eggs@example> =1", replies::MAIL_SYNTAX_ESMTP),
            ("MAIL FROM:<eggs@example>junk=", replies::MAIL_SYNTAX_ESMTP),
            // As CPython: text right after `>` is a parameter.
            ("MAIL FROM:<eggs@example>junk", replies::MAIL_PARAMS_UNKNOWN),
        ],
    );
}

#[test]
fn mail_params() {
    let mut s = session_after_ehlo();
    dialogue(
        &mut s,
        &[
            (
                "MAIL FROM:<eggs@example> ham=green",
                replies::MAIL_PARAMS_UNKNOWN,
            ),
            (
                "MAIL FROM:<eggs@example> BODY=UNKNOWN",
                replies::BODY_INVALID,
            ),
            ("MAIL FROM:<eggs@example> BODY", replies::BODY_INVALID),
            (
                "MAIL FROM:<eggs@example> SMTPUTF8",
                replies::MAIL_PARAMS_UNKNOWN,
            ),
            (
                "MAIL from: <foo@example.com> size=20 SMTPUTF8 BODY=UNKNOWN",
                replies::BODY_INVALID,
            ),
            (
                "MAIL FROM:<eggs@example> SIZE=33554433",
                replies::SIZE_EXCEEDED,
            ),
            (
                "MAIL FROM:<eggs@example> SIZE=99999999999999999999999",
                replies::SIZE_EXCEEDED,
            ),
            (
                "MAIL FROM:<eggs@example> SIZE=\u{b2}",
                replies::MAIL_SYNTAX_ESMTP,
            ),
            (
                "MAIL from: <foo@example.com> size=20 body=8bitmime",
                replies::OK,
            ),
        ],
    );
    let env = s.envelope().unwrap();
    assert_eq!(env.mail_options, ["SIZE=20", "BODY=8BITMIME"]);
    assert!(!env.smtputf8);
}

#[test]
fn mail_params_with_quoted_local_part() {
    let mut s = session_after_ehlo();
    ok(&mut s, "MAIL from: <\"Fred Blogs\"@example.com> SIZE=1000");
    let mut s = session_after_ehlo();
    ok(&mut s, "MAIL from: \"Fred Blogs\"@example.com SIZE=1000");
    assert_eq!(s.envelope().unwrap().mail_options, ["SIZE=1000"]);
}

#[test]
fn mail_size_without_limit() {
    let mut s = session_after_ehlo_with(Config {
        data_size_limit: 0,
        ..config()
    });
    ok(&mut s, "MAIL FROM:<a@b> SIZE=99999999999999999999999");
}

#[test]
fn mail_with_decode_data() {
    let mut s = session_after_ehlo_with(Config {
        decode_data: true,
        ..config()
    });
    dialogue(
        &mut s,
        &[
            (
                "MAIL from: <foo@example.com> size=20 SMTPUTF8",
                replies::MAIL_PARAMS_UNKNOWN,
            ),
            (
                "MAIL from: <foo@example.com> size=20 body=8bitmime",
                replies::MAIL_PARAMS_UNKNOWN,
            ),
            (
                "MAIL from: <foo@example.com> size=20 BODY=UNKNOWN",
                replies::MAIL_PARAMS_UNKNOWN,
            ),
            ("MAIL from: <foo@example.com> size=20", replies::OK),
        ],
    );
}

#[test]
fn mail_smtputf8() {
    let cfg = Config {
        enable_smtputf8: true,
        ..config()
    };
    let mut s = session_after_ehlo_with(cfg.clone());
    dialogue(
        &mut s,
        &[
            ("MAIL FROM:<a@b> SMTPUTF8=yes", replies::SMTPUTF8_NO_ARGS),
            ("MAIL FROM:<späm@b>", replies::NON_ASCII_ADDRESS),
            (
                "MAIL from: <foo@example.com> size=20 body=8bitmime smtputf8",
                replies::OK,
            ),
        ],
    );
    assert!(s.envelope().unwrap().smtputf8);
    let mut s = session_after_ehlo_with(cfg);
    ok(&mut s, "MAIL FROM:<späm@examplé> SMTPUTF8");
    ok(&mut s, "RCPT To:späm@examplé");
    expect_canned(&mut s, "DATA", replies::START_DATA);
    let m = message(&mut s, "utf8 enriched text: żźć".as_bytes());
    assert!(m.smtputf8);
    assert_eq!(m.mail_from, "späm@examplé");
    assert_eq!(m.rcpt_tos, ["späm@examplé"]);
    assert_eq!(m.mail_options, ["SMTPUTF8"]);
}

#[test]
fn non_ascii_address_without_smtputf8_is_553() {
    let mut s = session_after_ehlo();
    expect_canned(&mut s, "MAIL FROM:<späm@b>", replies::NON_ASCII_ADDRESS);
    ok(&mut s, "MAIL FROM:<a@b>");
    expect_canned(&mut s, "RCPT TO:<späm@b>", replies::NON_ASCII_ADDRESS);
}

#[test]
fn nested_mail() {
    let mut s = session_in_mail();
    expect_canned(&mut s, "MAIL from:spam@example", replies::NESTED_MAIL);
    // The syntax check comes first, as in CPython.
    expect_canned(&mut s, "MAIL from spam", replies::MAIL_SYNTAX_ESMTP);
    assert_eq!(s.envelope().unwrap().mail_from, "eggs@example");
}

// ---- RCPT ----------------------------------------------------------------------

#[test]
fn rcpt_before_mail() {
    let mut s = session_after_helo();
    expect_canned(&mut s, "RCPT to:spam@example", replies::NEED_MAIL);
    expect_canned(&mut s, "RCPT to eggs@example", replies::NEED_MAIL);
}

#[test]
fn rcpt_errors() {
    let mut s = session_after_helo();
    ok(&mut s, "MAIL From: eggs@example");
    dialogue(
        &mut s,
        &[
            ("RCPT to eggs@example", replies::RCPT_SYNTAX),
            ("RCPT", replies::RCPT_SYNTAX),
            ("RCPT to:<>", replies::RCPT_SYNTAX),
            ("RCPT to:<a@b> X=1", replies::RCPT_SYNTAX),
            ("RCPT to: <eggs@example>", replies::OK),
        ],
    );
    let mut s = session_in_mail();
    dialogue(
        &mut s,
        &[
            ("RCPT to eggs@example", replies::RCPT_SYNTAX_ESMTP),
            (
                "RCPT TO:<eggs@example> ham=green",
                replies::RCPT_PARAMS_UNKNOWN,
            ),
            ("RCPT TO:<eggs@example> =", replies::RCPT_SYNTAX_ESMTP),
        ],
    );
    assert!(s.envelope().unwrap().rcpt_tos.is_empty());
}

#[test]
fn multiple_rcpt() {
    let mut s = session_after_helo();
    dialogue(
        &mut s,
        &[
            ("MAIL From:eggs@example", replies::OK),
            ("RCPT To:spam@example", replies::OK),
            ("RCPT To:ham@example", replies::OK),
            ("DATA", replies::START_DATA),
        ],
    );
    let m = message(&mut s, b"data");
    assert_eq!(m.peer, peer());
    assert_eq!(m.helo.as_deref(), Some("client.example"));
    assert_eq!(m.mail_from, "eggs@example");
    assert_eq!(m.rcpt_tos, ["spam@example", "ham@example"]);
    assert_eq!(m.data, b"data");
    assert!(m.mail_options.is_empty() && m.rcpt_options.is_empty());
}

#[test]
fn max_recipients() {
    let mut s = session_after_ehlo_with(Config {
        max_recipients: 2,
        ..config()
    });
    dialogue(
        &mut s,
        &[
            ("MAIL FROM:<a@b>", replies::OK),
            ("RCPT TO:<1@b>", replies::OK),
            ("RCPT TO:<2@b>", replies::OK),
            ("RCPT TO:<3@b>", replies::TOO_MANY_RECIPIENTS),
        ],
    );
    assert_eq!(s.envelope().unwrap().rcpt_tos.len(), 2);
    assert_eq!(
        replies::TOO_MANY_RECIPIENTS.line(),
        "452 Error: too many recipients"
    );
}

// ---- DATA ------------------------------------------------------------------------

#[test]
fn data_errors() {
    let mut s = session_after_helo();
    expect_canned(&mut s, "DATA", replies::NEED_RCPT);
    ok(&mut s, "MAIL From:eggs@example");
    expect_canned(&mut s, "DATA", replies::NEED_RCPT);
    ok(&mut s, "RCPT To:spam@example");
    expect_canned(&mut s, "DATA spam", replies::DATA_SYNTAX);
    assert_eq!(s.framing(), Framing::Line);
    expect_canned(&mut s, "DATA", replies::START_DATA);
    assert_eq!(s.framing(), Framing::Data);
}

#[test]
fn data_round_trip_and_verdict() {
    let mut s = session_in_data();
    assert_eq!(s.input_limit(), Some(33_554_432));
    let m = message(&mut s, b"data\r\nmore");
    assert_eq!(m.data, b"data\r\nmore");
    assert!(s.is_waiting());
    assert!(s.envelope().is_none());
    assert_eq!(s.framing(), Framing::Line);
    let mut out = Vec::new();
    s.resolve(Decision::Reply(Reply::ok()), &mut out).unwrap();
    assert_eq!(out, vec![Output::Reply(replies::OK.reply())]);
    assert!(!s.is_waiting());
    assert!(s.envelope().is_none());
    // Back in command state, greeting kept: a new transaction works.
    ok(&mut s, "MAIL FROM:<x@y>");
}

#[test]
fn custom_verdict_from_parse() {
    let mut s = session_in_data();
    let _ = message(&mut s, b"return status");
    let mut out = Vec::new();
    s.resolve(
        Decision::Reply(Reply::parse("250 Okish").unwrap()),
        &mut out,
    )
    .unwrap();
    assert_eq!(out, vec![Output::Reply(Reply::new(250, "Okish"))]);
}

#[test]
fn dot_unstuffing() {
    let table: &[(&[u8], &[u8])] = &[
        (b"..", b"."),
        (b"a\r\n..\r\n...b\r\n.c", b"a\r\n.\r\n..b\r\nc"),
        (b"x.y", b"x.y"),
    ];
    for (body, want) in table {
        let mut s = session_in_data();
        assert_eq!(message(&mut s, body).data, *want);
    }
}

#[test]
fn empty_body() {
    let mut s = session_in_data();
    assert_eq!(message(&mut s, b"").data, b"");
}

#[test]
fn lf_newlines_option() {
    let mut s = session_in_data_with(Config {
        lf_newlines: true,
        ..config()
    });
    assert_eq!(message(&mut s, b"a\r\n..b\r\n\r\nc").data, b"a\n.b\n\nc");
}

#[test]
fn bare_lf_rejected_by_default() {
    let mut s = session_in_data();
    assert_eq!(data_reply(&mut s, b"a\nb"), replies::BARE_LF.reply());
    assert_eq!(s.framing(), Framing::Line);
    assert!(s.envelope().is_none());
    assert!(!s.is_waiting());
    ok(&mut s, "MAIL FROM:<a@b>");
}

#[test]
fn bare_lf_normalized() {
    let mut s = session_in_data_with(Config {
        bare_lf: BareLf::Normalize,
        ..config()
    });
    assert_eq!(message(&mut s, b"a\n.b\r\nc").data, b"a\r\nb\r\nc");
}

#[test]
fn decode_data_requires_utf8() {
    let cfg = Config {
        decode_data: true,
        ..config()
    };
    let mut s = session_in_data_with(cfg.clone());
    assert_eq!(
        data_reply(&mut s, b"\xff\xfe"),
        replies::DATA_NOT_UTF8.reply()
    );
    assert_eq!(s.framing(), Framing::Line);
    let mut s = session_in_data_with(cfg);
    let m = message(&mut s, "utf8 enriched text: żźć".as_bytes());
    assert_eq!(m.data, "utf8 enriched text: żźć".as_bytes());
}

#[test]
fn options_upper_cased_in_message() {
    let mut s = session_after_ehlo();
    ok(&mut s, "MAIL FROM:<a@b> size=20   body=8bitmime");
    ok(&mut s, "RCPT TO:<c@d>");
    expect_canned(&mut s, "DATA", replies::START_DATA);
    let m = message(&mut s, b"x");
    assert_eq!(m.mail_options, ["SIZE=20", "BODY=8BITMIME"]);
    assert!(m.rcpt_options.is_empty());
}

#[test]
fn several_messages_in_one_session() {
    let mut s = session_after_ehlo();
    for n in 0..3 {
        ok(&mut s, &format!("MAIL FROM:<{n}@a>"));
        ok(&mut s, "RCPT TO:<r@b>");
        expect_canned(&mut s, "DATA", replies::START_DATA);
        let m = message(&mut s, b"test");
        assert_eq!(m.mail_from, format!("{n}@a"));
        let mut out = Vec::new();
        s.resolve(Decision::Reply(Reply::new(550, "No")), &mut out)
            .unwrap();
        assert_eq!(out, vec![Output::Reply(Reply::new(550, "No"))]);
    }
}

// ---- size limits -----------------------------------------------------------

#[test]
fn oversize_line() {
    let mut s = session_after_helo();
    let mut out = Vec::new();
    s.feed_oversize(&mut out).unwrap();
    assert_eq!(out, vec![Output::Reply(replies::LINE_TOO_LONG.reply())]);
    let line = format!("MAIL from: {}@example", "a".repeat(512));
    expect_canned(&mut s, &line, replies::LINE_TOO_LONG);
    assert!(s.envelope().is_none());
}

#[test]
fn oversize_data_resets_to_command_state() {
    let mut s = session_in_data();
    let mut out = Vec::new();
    s.feed_oversize(&mut out).unwrap();
    assert_eq!(
        out,
        vec![Output::Reset, Output::Reply(replies::TOO_MUCH_DATA.reply())]
    );
    assert_eq!(s.framing(), Framing::Line);
    assert!(s.envelope().is_none());
    assert!(!s.is_waiting());
    assert_eq!(s.helo(), Some("client.example"));
    ok(&mut s, "NOOP");
    expect_canned(&mut s, "DATA", replies::NEED_RCPT);
}

#[test]
fn data_longer_than_limit_fed_anyway() {
    let mut s = session_in_data_with(Config {
        data_size_limit: 32,
        ..config()
    });
    assert_eq!(s.input_limit(), Some(32));
    let r = data_reply(&mut s, b"This message is longer than 32 bytes");
    assert_eq!(r, replies::TOO_MUCH_DATA.reply());
    assert_eq!(s.framing(), Framing::Line);
}

#[test]
fn data_unlimited() {
    let s = session_in_data_with(Config {
        data_size_limit: 0,
        ..config()
    });
    assert_eq!(s.input_limit(), None);
}

#[test]
fn command_limit_grows_after_ehlo_with_size() {
    let mut s = session_greeted();
    assert_eq!(s.input_limit(), Some(512));
    let _ = one_reply(&mut s, b"EHLO example");
    assert_eq!(s.input_limit(), Some(538));
    let fill = 512 - "MAIL from:<@example>".len();
    ok(
        &mut s,
        &format!("MAIL from:<{}@example> SIZE=1234", "a".repeat(fill)),
    );
    ok(&mut s, "RSET");
    expect_canned(
        &mut s,
        &format!("MAIL from:<{}@example> SIZE=1234", "a".repeat(fill + 26)),
        replies::LINE_TOO_LONG,
    );
    // Other commands keep the base limit.
    expect_canned(
        &mut s,
        &format!("NOOP {}", "x".repeat(510)),
        replies::LINE_TOO_LONG,
    );
}

#[test]
fn command_limit_with_size_and_smtputf8() {
    let mut s = session_after_ehlo_with(Config {
        enable_smtputf8: true,
        ..config()
    });
    assert_eq!(s.input_limit(), Some(548));
    let fill = 548 - "mail from:<@example>".len();
    let long = format!("MAIL from:<{}a@example>", "b".repeat(fill));
    expect_canned(&mut s, &long, replies::LINE_TOO_LONG);
    ok(&mut s, &format!("MAIL from:<{}@example>", "b".repeat(fill)));
}

#[test]
fn command_limit_is_per_session() {
    let _ehlo = session_after_ehlo_with(Config {
        enable_smtputf8: true,
        ..config()
    });
    let mut fresh = session_greeted();
    assert_eq!(fresh.input_limit(), Some(512));
    let mut helo = session_after_helo();
    assert_eq!(helo.input_limit(), Some(512));
    let fill = 512 - "MAIL from:<@example>".len() + 1;
    expect_canned(
        &mut helo,
        &format!("MAIL from:<{}@example>", "a".repeat(fill)),
        replies::LINE_TOO_LONG,
    );
    let _ = one_reply(&mut fresh, b"EHLO x");
    assert_eq!(fresh.input_limit(), Some(538));
}

#[test]
fn command_limit_without_size() {
    let s = session_after_ehlo_with(Config {
        data_size_limit: 0,
        ..config()
    });
    assert_eq!(s.input_limit(), Some(512));
}

// ---- caller bugs ---------------------------------------------------------------

#[test]
fn feeding_while_waiting_is_an_error() {
    let mut s = session_in_data();
    let _ = message(&mut s, b"x");
    let mut out = Vec::new();
    assert_eq!(s.feed_line(b"NOOP", &mut out), Err(UsageError::Deciding));
    assert_eq!(s.feed_data(b"x", &mut out), Err(UsageError::WrongFraming));
    assert_eq!(s.feed_oversize(&mut out), Err(UsageError::Deciding));
    assert!(out.is_empty());
    assert!(s.is_waiting(), "nothing changed");
}

#[test]
fn resolving_without_a_request_is_an_error() {
    let mut s = session_greeted();
    let mut out = Vec::new();
    assert_eq!(
        s.resolve(Decision::Default, &mut out),
        Err(UsageError::NothingToResolve)
    );
    assert!(out.is_empty());
    // The session is unchanged and still works.
    expect(&mut s, "HELO client.example", &format!("250 {HOST}"));
}

#[test]
fn a_body_fed_outside_data_is_an_error() {
    let mut s = session_after_helo();
    let mut out = Vec::new();
    assert_eq!(s.feed_data(b"x", &mut out), Err(UsageError::WrongFraming));
    assert_eq!(
        s.feed_data_refused(Reply::new(452, "no"), &mut out),
        Err(UsageError::WrongFraming)
    );
    assert!(out.is_empty());
}

// ---- Reply ---------------------------------------------------------------------

#[test]
fn reply_wire_forms() {
    assert_eq!(wire(&Reply::ok()), "250 OK\r\n");
    assert_eq!(
        wire(&Reply::multiline(250, ["a", "b", "c"])),
        "250-a\r\n250-b\r\n250 c\r\n"
    );
    assert_eq!(wire(&Reply::new(250, "")), "250\r\n");
    assert_eq!(
        wire(&Reply {
            lines: vec![],
            ..Reply::new(250, "")
        }),
        "250\r\n"
    );
    assert_eq!(
        Reply::multiline(250, ["a", "b"]).to_string(),
        "250-a\r\n250 b"
    );
}

#[test]
fn reply_texts_never_contain_crlf() {
    let r = Reply::new(550, "evil\r\n250 OK");
    assert_eq!(wire(&r), "550 evil  250 OK\r\n");
    let mut hand = Reply::new(550, "");
    hand.lines = vec!["x\ny".to_owned()];
    assert_eq!(wire(&hand), "550 x y\r\n");
}

#[test]
fn reply_parse() {
    type Expected = Option<(u16, &'static [&'static str])>;
    let table: &[(&str, Expected)] = &[
        ("550 No such user", Some((550, &["No such user"]))),
        ("250 OK\r\n", Some((250, &["OK"]))),
        ("250", Some((250, &[""]))),
        ("250-a\r\n250 b", Some((250, &["a", "b"]))),
        ("250-a\n250 b\n", Some((250, &["a", "b"]))),
        ("250-a\r\n251 b", None),
        ("250-a", None),
        ("25 x", None),
        ("650 x", None),
        ("250x", None),
        ("", None),
        ("abc def", None),
        ("250 a\rb", None),
    ];
    for (text, want) in table {
        let got = Reply::parse(text);
        let want = want.map(|(c, l)| Reply::multiline(c, l.iter().copied()));
        assert_eq!(got, want, "{text:?}");
    }
}

#[test]
fn config_validation() {
    assert!(Config::default().validate().is_ok());
    let bad = Config {
        enable_smtputf8: true,
        decode_data: true,
        ..Config::default()
    };
    assert_eq!(bad.validate(), Err(ConfigError::DecodeDataWithSmtputf8));
    let d = Config::default();
    assert_eq!(d.data_size_limit, 33_554_432);
    assert_eq!(d.product, "smtpd-rs 0.1");
    assert_eq!(d.bare_lf, BareLf::Reject);
    assert_eq!(d.max_recipients, 0);
    assert!(!d.lf_newlines && !d.enable_smtputf8 && !d.decode_data);
}

// ---- property tests ----------------------------------------------------------------

/// Checks that `out` is exactly one well-formed reply, plus Close after 221.
fn assert_one_wellformed_reply(out: &[Output]) {
    // The end of a transaction may be reported first (RSET, HELO, QUIT).
    let out = out.strip_prefix(&[Output::Reset]).unwrap_or(out);
    let reply = match out {
        [Output::Reply(r)] => r,
        [Output::Reply(r), Output::Close] if r.code == 221 => r,
        other => panic!("expected one reply, got {other:?}"),
    };
    let bytes = reply.to_bytes();
    let text = std::str::from_utf8(&bytes).expect("reply is UTF-8");
    let lines: Vec<&str> = text.split_terminator("\r\n").collect();
    assert!(text.ends_with("\r\n"));
    assert!(!lines.is_empty());
    for (i, line) in lines.iter().enumerate() {
        assert!(!line.contains(['\r', '\n']), "{text:?}");
        let b = line.as_bytes();
        assert!(
            b.len() >= 3 && b[..3].iter().all(u8::is_ascii_digit),
            "{text:?}"
        );
        assert!((200..600).contains(&reply.code), "{text:?}");
        let last = i + 1 == lines.len();
        match b.get(3) {
            None => assert!(last),
            Some(b'-') => assert!(!last),
            Some(b' ') => assert!(last),
            _ => panic!("bad separator in {text:?}"),
        }
    }
}

fn command_line() -> impl Strategy<Value = Vec<u8>> {
    let verbs = prop::sample::select(vec![
        "HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "HELP", "VRFY", "EXPN",
        "mail", "XYZ", "",
    ]);
    let tail = prop::collection::vec(
        prop_oneof![
            prop::sample::select(b"<>@\":., =\\[]\r\n\t-".to_vec()),
            any::<u8>(),
            prop::sample::select(b"FROM:TO:SIZEBODY8BITMIMESMTPUTF8ab".to_vec()),
        ],
        0..80,
    );
    (verbs, tail).prop_map(|(v, t)| {
        let mut line = v.as_bytes().to_vec();
        line.push(b' ');
        line.extend(t);
        line
    })
}

proptest! {
    #[test]
    fn random_lines_get_one_wellformed_reply(
        state in 0..5usize,
        utf8 in any::<bool>(),
        lines in prop::collection::vec(
            prop_oneof![command_line(), prop::collection::vec(any::<u8>(), 0..40)],
            1..8,
        ),
    ) {
        let cfg = Config { enable_smtputf8: utf8, ..config() };
        let mut s = match state {
            0 => session_with(cfg),
            1 => { let mut s = session_with(cfg); let _ = feed(&mut s, b"HELO x"); s }
            2 => session_after_ehlo_with(cfg),
            3 => { let mut s = session_after_ehlo_with(cfg); let _ = feed(&mut s, b"MAIL FROM:<a@b>"); s }
            _ => { let mut s = session_after_ehlo_with(cfg); let _ = feed(&mut s, b"MAIL FROM:<a@b>"); let _ = feed(&mut s, b"RCPT TO:<c@d>"); s }
        };
        for line in lines {
            if s.is_closed() {
                prop_assert!(feed(&mut s, &line).is_empty());
                continue;
            }
            if s.framing() == Framing::Data {
                let out = data(&mut s, &line);
                prop_assert!(matches!(out.as_slice(), [Output::Decide(_)] | [Output::Reset, Output::Reply(_)]));
                if s.is_waiting() {
                    s.resolve(Decision::Reply(Reply::ok()), &mut Vec::new()).unwrap();
                }
                continue;
            }
            let out = feed(&mut s, &line);
            assert_one_wellformed_reply(&out);
        }
    }

    #[test]
    fn random_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..200), normalize in any::<bool>()) {
        let cfg = Config {
            bare_lf: if normalize { BareLf::Normalize } else { BareLf::Reject },
            ..config()
        };
        let mut s = session_in_data_with(cfg);
        let out = data(&mut s, &body);
        // A message, or a refusal that ends the transaction.
        prop_assert!(matches!(out.as_slice(), [Output::Decide(_)] | [Output::Reset, Output::Reply(_)]));
        if let Output::Decide(Request::Message(m)) = &out[0] {
            // Unstuffing never grows the body; normalizing adds one CR per LF at most.
            prop_assert!(m.data.len() <= body.len() * 2);
        }
    }

    #[test]
    fn reply_parse_round_trips(code in 200u16..600, text in "[ -~]{0,40}") {
        let r = Reply::new(code, text.clone());
        let wire = r.to_string();
        let parsed = Reply::parse(&wire).expect("own wire form parses");
        prop_assert_eq!(parsed.code, code);
        prop_assert_eq!(parsed.to_string(), wire);
    }
}

// ---- decisions ------------------------------------------------------------------

fn deciding(config: Config) -> Session {
    session_with(config)
}

fn decide_line(s: &mut Session, line: &[u8]) -> Request {
    match feed(s, line).as_slice() {
        [Output::Decide(request)] => request.clone(),
        other => panic!("expected a request for {line:?}, got {other:?}"),
    }
}

fn resolve(s: &mut Session, decision: Decision) -> Vec<Output> {
    let mut out = Vec::new();
    s.resolve(decision, &mut out).expect("a request is pending");
    out
}

#[test]
fn connect_decision_greets_or_refuses() {
    let cfg = Config {
        check_connect: true,
        ..config()
    };
    let mut s = Session::new(Arc::new(cfg.clone()), peer());
    let mut out = Vec::new();
    s.start(&mut out);
    assert_eq!(out, vec![Output::Decide(Request::Connect)]);
    assert!(s.is_waiting());
    assert_eq!(
        resolve(&mut s, Decision::Default),
        vec![Output::Reply(session::greeting(&cfg))]
    );
    assert!(!s.is_waiting());

    let mut s = Session::new(Arc::new(cfg.clone()), peer());
    s.start(&mut Vec::new());
    let custom = Reply::new(220, "welcome");
    assert_eq!(
        resolve(&mut s, Decision::Reply(custom.clone())),
        vec![Output::Reply(custom)]
    );
    assert!(!s.is_closed());

    let mut s = Session::new(Arc::new(cfg), peer());
    s.start(&mut Vec::new());
    let no = Reply::new(554, "No service");
    assert_eq!(
        resolve(&mut s, Decision::Reply(no.clone())),
        vec![Output::Reply(no), Output::Close]
    );
    assert!(s.is_closed());
}

#[test]
fn helo_decision_default_runs_the_built_in() {
    let mut s = deciding(Config {
        check_helo: true,
        ..config()
    });
    let request = decide_line(&mut s, b"EHLO client.example");
    assert_eq!(
        request,
        Request::Helo(HeloCheck {
            name: "client.example".into(),
            extended: true
        })
    );
    let out = resolve(&mut s, Decision::Default);
    assert!(matches!(out.as_slice(), [Output::Reply(r)] if r.code == 250 && r.lines.len() > 1));
    assert!(s.is_esmtp());
}

#[test]
fn helo_decision_with_own_text_greets_and_refusal_does_not() {
    let cfg = Config {
        check_helo: true,
        ..config()
    };
    let mut s = deciding(cfg.clone());
    decide_line(&mut s, b"HELO client.example");
    let mine = Reply::new(250, "hello there");
    assert_eq!(
        resolve(&mut s, Decision::Reply(mine.clone())),
        vec![Output::Reply(mine)]
    );
    assert_eq!(s.helo(), Some("client.example"));

    let mut s = deciding(cfg.clone());
    decide_line(&mut s, b"HELO client.example");
    let no = Reply::new(550, "5.7.1 go away");
    assert_eq!(
        resolve(&mut s, Decision::Reply(no.clone())),
        vec![Output::Reply(no)]
    );
    assert_eq!(s.helo(), None);

    // The built-in syntax check keeps its answer even when the caller says 250.
    let mut s = deciding(cfg);
    decide_line(&mut s, b"HELO");
    let out = resolve(&mut s, Decision::Reply(Reply::new(250, "fine")));
    assert_eq!(out, vec![Output::Reply(replies::HELO_SYNTAX.reply())]);
}

#[test]
fn mail_and_rcpt_decisions_keep_state_in_the_session() {
    let mut s = deciding(Config {
        check_mail: true,
        check_rcpt: true,
        ..config()
    });
    assert_eq!(one_reply(&mut s, b"EHLO c").code, 250);
    let request = decide_line(&mut s, b"MAIL FROM:<a@b> SIZE=10");
    assert!(matches!(&request, Request::Mail(c) if c.address == "a@b" && c.options == ["SIZE=10"]));
    assert!(
        s.envelope().is_none(),
        "the sender is not in the envelope before it is accepted"
    );
    assert!(
        s.in_transaction(),
        "a sender being decided is an open transaction"
    );
    assert_eq!(
        resolve(&mut s, Decision::Default),
        vec![Output::Reply(replies::OK.reply())]
    );
    assert_eq!(s.envelope().unwrap().mail_from, "a@b");
    decide_line(&mut s, b"RCPT TO:<x@y>");
    let no = Reply::new(550, "No such user");
    assert_eq!(
        resolve(&mut s, Decision::Reply(no.clone())),
        vec![Output::Reply(no)]
    );
    assert!(s.envelope().unwrap().rcpt_tos.is_empty());
    decide_line(&mut s, b"RCPT TO:<z@y>");
    resolve(&mut s, Decision::Default);
    assert_eq!(s.envelope().unwrap().rcpt_tos, ["z@y"]);
}

#[test]
fn a_refused_sender_opens_no_transaction() {
    let mut s = deciding(Config {
        check_mail: true,
        ..config()
    });
    assert_eq!(one_reply(&mut s, b"HELO c").code, 250);
    decide_line(&mut s, b"MAIL FROM:<a@b>");
    let no = Reply::new(550, "5.7.1 not you");
    assert_eq!(
        resolve(&mut s, Decision::Reply(no.clone())),
        vec![Output::Reply(no)]
    );
    assert!(!s.in_transaction());
}

#[test]
fn reset_is_reported_only_for_an_open_transaction() {
    let mut s = session_after_ehlo();
    assert_eq!(
        feed(&mut s, b"RSET"),
        vec![Output::Reply(replies::OK.reply())]
    );
    ok(&mut s, "MAIL FROM:<a@b>");
    assert_eq!(
        feed(&mut s, b"RSET"),
        vec![Output::Reset, Output::Reply(replies::OK.reply())]
    );
    ok(&mut s, "MAIL FROM:<a@b>");
    assert_eq!(
        feed(&mut s, b"QUIT"),
        vec![
            Output::Reset,
            Output::Reply(replies::BYE.reply()),
            Output::Close
        ]
    );
}

#[test]
fn a_delivered_message_is_not_a_reset() {
    let mut s = session_in_data();
    let _ = message(&mut s, b"x");
    assert!(!s.in_transaction());
    let out = resolve(&mut s, Decision::Reply(Reply::new(554, "no")));
    assert_eq!(out, vec![Output::Reply(Reply::new(554, "no"))]);
}

#[test]
fn custom_command_default_runs_the_built_in_or_250() {
    let mut s = deciding(Config {
        custom_verbs: vec!["NOOP".into(), "XFOO".into()],
        ..config()
    });
    let request = decide_line(&mut s, b"XFOO bar");
    assert_eq!(
        request,
        Request::Command(CommandCheck {
            verb: "XFOO".into(),
            arg: "bar".into()
        })
    );
    assert_eq!(
        resolve(&mut s, Decision::Default),
        vec![Output::Reply(replies::OK.reply())]
    );
    decide_line(&mut s, b"NOOP x");
    assert_eq!(
        resolve(&mut s, Decision::Default),
        vec![Output::Reply(replies::NOOP_SYNTAX.reply())]
    );
    // An overridden HELO answered 250 still greets.
    let mut s = deciding(Config {
        custom_verbs: vec!["HELO".into()],
        ..config()
    });
    decide_line(&mut s, b"HELO c");
    resolve(&mut s, Decision::Reply(Reply::new(250, "mine")));
    assert_eq!(s.helo(), Some("c"));
}

// ---- enhanced status codes ------------------------------------------------------

#[test]
fn enhanced_code_display_and_parse() {
    let code = EnhancedCode::new(4, 3, 1);
    assert_eq!(code.to_string(), "4.3.1");
    assert_eq!("4.3.1".parse(), Ok(code));
    assert_eq!("5.700.999".parse(), Ok(EnhancedCode::new(5, 700, 999)));
    for bad in [
        "", "4", "4.3", "4.3.1.2", "3.1.1", "4.03.1", "4.3.01", "4.1000.1", "4..1", "4.a.1",
        " 4.3.1", "4.3.1 ",
    ] {
        assert_eq!(
            bad.parse::<EnhancedCode>(),
            Err(ParseEnhancedCodeError),
            "{bad:?}"
        );
    }
}

#[test]
fn enhanced_code_goes_after_the_code_on_every_line() {
    let code = EnhancedCode::new(2, 0, 0);
    assert_eq!(wire(&Reply::enhanced(250, code, "OK")), "250 2.0.0 OK\r\n");
    assert_eq!(wire(&Reply::enhanced(250, code, "")), "250 2.0.0\r\n");
    assert_eq!(
        wire(&Reply::multiline(250, ["a", "", "b"]).with_enhanced(code)),
        "250-2.0.0 a\r\n250-2.0.0\r\n250 2.0.0 b\r\n"
    );
    let mut empty = Reply::enhanced(452, EnhancedCode::new(4, 3, 1), "");
    empty.lines.clear();
    assert_eq!(wire(&empty), "452 4.3.1\r\n");
}

#[test]
fn replies_are_equal_when_their_wire_forms_are() {
    let typed = Reply::enhanced(
        452,
        EnhancedCode::new(4, 3, 1),
        "Insufficient system storage",
    );
    let plain = Reply::new(452, "4.3.1 Insufficient system storage");
    assert_eq!(typed, plain);
    use std::hash::BuildHasher;
    let state = std::hash::RandomState::new();
    assert_eq!(state.hash_one(&typed), state.hash_one(&plain));
    assert_ne!(typed, Reply::new(452, "4.3.2 Insufficient system storage"));
    assert_ne!(typed, Reply::new(451, "4.3.1 Insufficient system storage"));
    assert_eq!(typed.text(), "4.3.1 Insufficient system storage");
    assert_eq!(
        Reply::multiline(250, ["a", "b"])
            .with_enhanced(EnhancedCode::new(2, 1, 5))
            .text(),
        "2.1.5 a 2.1.5 b"
    );
}

#[test]
fn enhanced_code_accessor_reads_the_field_or_the_text() {
    let code = EnhancedCode::new(5, 7, 1);
    assert_eq!(Reply::enhanced(550, code, "no").enhanced_code(), Some(code));
    assert_eq!(Reply::new(550, "5.7.1 no").enhanced_code(), Some(code));
    assert_eq!(Reply::new(550, "5.7.1").enhanced_code(), Some(code));
    // The class must match the code's first digit.
    assert_eq!(Reply::new(450, "5.7.1 no").enhanced_code(), None);
    assert_eq!(Reply::new(550, "5.7.1x no").enhanced_code(), None);
    assert_eq!(Reply::new(550, "No such user").enhanced_code(), None);
}

#[test]
fn parse_takes_out_a_matching_enhanced_code_and_keeps_the_bytes() {
    let r = Reply::parse("550 5.1.1 No such user").unwrap();
    assert_eq!(r.enhanced, Some(EnhancedCode::new(5, 1, 1)));
    assert_eq!(r.lines, ["No such user"]);
    let r = Reply::parse("250-2.0.0 a\r\n250 2.0.0 b").unwrap();
    assert_eq!(r.enhanced, Some(EnhancedCode::new(2, 0, 0)));
    assert_eq!(r.lines, ["a", "b"]);
    // Left in the text: class mismatch, different codes per line, a line without one, a
    // lone trailing space (which the field could not give back), leading zeros.
    for text in [
        "450 5.1.1 x",
        "250-2.0.0 a\r\n250 2.0.1 b",
        "250-2.0.0 a\r\n250 b",
        "250 2.0.0 ",
        "250 2.00.0 x",
        "250 2.0.0x",
    ] {
        let r = Reply::parse(text).unwrap();
        assert_eq!(r.enhanced, None, "{text:?}");
    }
    // Every reply is written back byte for byte.
    for text in [
        "550 5.1.1 No such user",
        "550 5.1.1",
        "550 5.1.1  two spaces",
        "250-2.0.0 a\r\n250-2.0.0\r\n250 2.0.0 b",
        "450 5.1.1 x",
        "250 2.0.0 ",
        "250-2.0.0 a\r\n250 b",
    ] {
        let r = Reply::parse(text).unwrap();
        assert_eq!(r.to_string(), text, "{r:?}");
    }
}

#[test]
fn too_many_errors_carries_its_enhanced_code() {
    let mut cfg = config();
    cfg.max_errors = 1;
    let mut s = session_with(cfg);
    let out = feed(&mut s, b"BOGUS");
    let Some(Output::Reply(r)) = out.iter().rev().nth(1) else {
        panic!("expected the too-many-errors reply, got {out:?}");
    };
    assert_eq!(r.enhanced, Some(EnhancedCode::new(4, 7, 0)));
    assert_eq!(
        r.to_string(),
        format!("421 4.7.0 {HOST} Error: too many errors")
    );
}

// ---- typed parameters, recipients, peer ----------------------------------------

#[test]
fn parameters_are_kept_typed_and_case_preserving_per_recipient() {
    let mut s = session_after_ehlo();
    ok(&mut s, "MAIL FROM:<eggs@example> size=20 Body=8bitMIME");
    ok(&mut s, "RCPT TO:<a@example>");
    ok(&mut s, "RCPT TO:<b@example>");
    let envelope = s.envelope().unwrap();
    assert_eq!(
        envelope.mail_params,
        [
            Param::new("size", Some("20".into())),
            Param::new("Body", Some("8bitMIME".into()))
        ]
    );
    assert_eq!(envelope.mail_param("SIZE"), Some(Some("20")));
    assert_eq!(envelope.mail_param("smtputf8"), None);
    assert_eq!(envelope.mail_options, ["SIZE=20", "BODY=8BITMIME"]);
    expect(&mut s, "DATA", &replies::START_DATA.line());
    let m = message(&mut s, b"hi");
    assert_eq!(m.mail_options, ["SIZE=20", "BODY=8BITMIME"]);
    assert_eq!(m.mail_param("body"), Some(Some("8bitMIME")));
    assert_eq!(
        m.recipients,
        [
            Recipient::new("a@example", Vec::new()),
            Recipient::new("b@example", Vec::new())
        ]
    );
    assert_eq!(m.rcpt_tos, ["a@example", "b@example"]);
    let views: Vec<String> = m.mail_params.iter().map(Param::to_option).collect();
    assert_eq!(views, m.mail_options);
}

#[test]
fn checked_mail_and_rcpt_carry_typed_parameters() {
    let mut cfg = config();
    cfg.check_mail = true;
    cfg.check_rcpt = true;
    let mut s = session_after_ehlo_with(cfg);
    let out = feed(&mut s, b"MAIL FROM:<eggs@example> Size=5");
    let [Output::Decide(Request::Mail(check))] = out.as_slice() else {
        panic!("{out:?}");
    };
    assert_eq!(check.params, [Param::new("Size", Some("5".into()))]);
    assert_eq!(check.options, ["SIZE=5"]);
    resolve(&mut s, Decision::Default);
    let out = feed(&mut s, b"RCPT TO:<a@example>");
    let [Output::Decide(Request::Rcpt(check))] = out.as_slice() else {
        panic!("{out:?}");
    };
    assert!(check.params.is_empty());
    resolve(&mut s, Decision::Default);
    assert_eq!(
        s.envelope().unwrap().recipients,
        [Recipient::new("a@example", Vec::new())]
    );
}

#[test]
fn message_builder_keeps_the_views_in_step() {
    let m = Message::new(peer(), "a@example", ["b@example"], b"x".to_vec())
        .with_helo("client.example")
        .with_mail_params(vec![Param::new("size", Some("1".into()))])
        .with_recipient(Recipient::new(
            "c@example",
            vec![Param::new("notify", Some("never".into()))],
        ));
    assert_eq!(m.helo.as_deref(), Some("client.example"));
    assert_eq!(m.mail_options, ["SIZE=1"]);
    assert_eq!(m.rcpt_tos, ["b@example", "c@example"]);
    assert_eq!(m.rcpt_options, ["NOTIFY=NEVER"]);
    assert_eq!(m.recipients[1].param("NOTIFY"), Some(Some("never")));
}

#[test]
fn session_keeps_its_peer() {
    let s = Session::with_peer(Arc::new(config()), Peer::new(peer()));
    assert_eq!(s.peer(), peer());
    assert_eq!(s.peer_info(), &Peer::from(peer()));
}

// ---- STARTTLS ------------------------------------------------------------

fn tls_config() -> Config {
    Config {
        starttls: true,
        ..config()
    }
}

fn tls_info() -> TlsInfo {
    TlsInfo::new(
        "TLSv1.3",
        "TLS13_AES_128_GCM_SHA256",
        Some("mx.test".to_owned()),
    )
}

fn ehlo_lines(s: &mut Session) -> Vec<String> {
    let r = one_reply(s, b"EHLO client.example");
    assert_eq!(r.code, 250);
    r.lines.clone()
}

#[test]
fn starttls_is_unknown_without_tls_and_listed_only_before_it() {
    let mut s = session_greeted();
    assert!(!ehlo_lines(&mut s).iter().any(|l| l == "STARTTLS"));
    expect(
        &mut s,
        "STARTTLS",
        "500 Error: command \"STARTTLS\" not recognized",
    );

    let mut s = session_with(tls_config());
    let lines = ehlo_lines(&mut s);
    assert_eq!(lines[lines.len() - 2..], ["STARTTLS", "HELP"]);
    ok(&mut s, "MAIL FROM:<eggs@example>");
    let mut out = Vec::new();
    s.feed_line(b"STARTTLS", &mut out).unwrap();
    // The open transaction ends, the reply asks for the handshake.
    assert_eq!(
        out,
        [
            Output::Reset,
            Output::StartTls(Reply::enhanced(
                220,
                EnhancedCode::new(2, 0, 0),
                "Ready to start TLS"
            ))
        ]
    );
    assert!(s.is_handshaking());
    assert_eq!(s.feed_line(b"NOOP", &mut out), Err(UsageError::Deciding));
    s.tls_established(tls_info());
    assert!(s.is_tls() && !s.is_handshaking());
    assert_eq!(s.helo(), None);
    assert!(s.envelope().is_none());
    expect(
        &mut s,
        "MAIL FROM:<eggs@example>",
        &replies::SEND_HELO_FIRST.line(),
    );
    assert!(!ehlo_lines(&mut s).iter().any(|l| l == "STARTTLS"));
    expect(&mut s, "STARTTLS", "503 5.5.1 Error: TLS already active");
    expect(
        &mut s,
        "STARTTLS x",
        "501 5.5.4 Syntax error (no parameters allowed)",
    );
}

#[test]
fn require_tls_serves_only_the_allowed_commands_before_tls() {
    let mut s = session_with(Config {
        require_tls: true,
        ..tls_config()
    });
    ok(&mut s, "NOOP");
    ok(&mut s, "RSET");
    ehlo_lines(&mut s);
    for line in [
        "MAIL FROM:<eggs@example>",
        "VRFY x",
        "HELP",
        "DATA",
        "BOGUS",
    ] {
        expect(
            &mut s,
            line,
            "530 5.7.0 Must issue a STARTTLS command first",
        );
    }
    let mut out = Vec::new();
    s.feed_line(b"STARTTLS", &mut out).unwrap();
    s.tls_established(tls_info());
    ehlo_lines(&mut s);
    ok(&mut s, "MAIL FROM:<eggs@example>");
}

#[test]
fn the_receiver_discards_what_follows_starttls() {
    let session = Session::new(Arc::new(tls_config()), peer());
    let mut rx = Receiver::new(session);
    let mut out = Vec::new();
    rx.start(&mut out);
    let input =
        b"EHLO a\r\nSTARTTLS\r\nMAIL FROM:<evil@example>\r\nRCPT TO:<x@example>\r\nDATA\r\npartial";
    assert_eq!(rx.receive(input, &mut out), input.len());
    assert!(matches!(out.last(), Some(Output::StartTls(_))));
    assert!(!rx.wants_input());
    out.clear();
    rx.tls_established(tls_info());
    rx.receive(b"MAIL FROM:<a@example>\r\n", &mut out);
    assert_eq!(
        out,
        [Output::Reply(replies::SEND_HELO_FIRST.reply())],
        "the injected EHLO must not have run"
    );
    assert_eq!(rx.session().peer_info().tls.as_deref(), Some(&tls_info()));
}

#[test]
fn messages_carry_the_tls_facts() {
    let mut s = session_with(tls_config());
    let mut out = Vec::new();
    s.feed_line(b"STARTTLS", &mut out).unwrap();
    s.tls_established(tls_info());
    ehlo_lines(&mut s);
    ok(&mut s, "MAIL FROM:<eggs@example>");
    ok(&mut s, "RCPT TO:<spam@example>");
    expect(&mut s, "DATA", &replies::START_DATA.line());
    out.clear();
    s.feed_data(b"hi", &mut out).unwrap();
    let Some(Output::Decide(Request::Message(m))) = out.pop() else {
        panic!("no message")
    };
    assert_eq!(m.tls.as_deref(), Some(&tls_info()));
}
