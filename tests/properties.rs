//! Property tests of the input path (proptest): whatever bytes arrive, cut wherever, the
//! session never panics, holds no more than its limits, answers only with well-formed replies,
//! and delivers no message that was not ended by a proper `CRLF.CRLF`.

use proptest::prelude::*;
use smtpd::smtp::{Config, COMMAND_SIZE_LIMIT, SIZE_EXTENSION_BYTES};
use smtpd::testing::SessionDriver;

const DATA_LIMIT: usize = 2000;

fn config() -> Config {
    let mut config = Config::default();
    config.data_size_limit = DATA_LIMIT;
    config.max_errors = 20;
    config.max_recipients = 100;
    config
}

/// Pieces that make SMTP-shaped input likely, mixed with raw bytes.
fn token() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"\r\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\n".to_vec()),
        Just(b".".to_vec()),
        Just(b"\r\n.\r\n".to_vec()),
        Just(b"\n.\n".to_vec()),
        Just(b"\r\n..\r\n".to_vec()),
        Just(b"\0".to_vec()),
        Just(b"EHLO a.example\r\n".to_vec()),
        Just(b"HELO a.example\r\n".to_vec()),
        Just(b"MAIL FROM:<a@example.com>\r\n".to_vec()),
        Just(b"RCPT TO:<b@example.com>\r\n".to_vec()),
        Just(b"DATA\r\n".to_vec()),
        Just(b"RSET\r\n".to_vec()),
        Just(b"NOOP\r\n".to_vec()),
        Just(b"BDAT 10\r\n".to_vec()),
        Just(vec![b'x'; 700]),
        prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn input() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(token(), 0..60).prop_map(|t| t.concat())
}

/// Feeds `bytes` cut at `cuts` (positions taken modulo the length).
fn drive(bytes: &[u8], cuts: &[usize]) -> SessionDriver {
    let mut d = SessionDriver::new(config());
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| if bytes.is_empty() { 0 } else { c % bytes.len() })
        .collect();
    points.sort_unstable();
    let mut at = 0;
    for p in points.into_iter().chain([bytes.len()]) {
        d.feed(&bytes[at..p.max(at)]);
        at = p.max(at);
    }
    d
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_input_cut_anywhere_gives_the_same_well_formed_answers(
        bytes in input(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = drive(&bytes, &[]);
        let cut = drive(&bytes, &cuts);
        prop_assert_eq!(whole.replies(), cut.replies());
        prop_assert_eq!(whole.messages(), cut.messages());
        for reply in whole.replies() {
            prop_assert!((200..=599).contains(&reply.code), "{reply:?}");
            for line in &reply.lines {
                prop_assert!(!line.contains(['\r', '\n']), "{reply:?}");
            }
        }
        // Memory: a line or a body never grows past its limit; what is left unframed is at
        // most a partial terminator.
        let limit = DATA_LIMIT.max(COMMAND_SIZE_LIMIT + SIZE_EXTENSION_BYTES);
        prop_assert!(whole.peak_buffered() <= limit + 4, "{}", whole.peak_buffered());
        prop_assert!(cut.peak_buffered() <= limit + 4, "{}", cut.peak_buffered());
        // The error limit holds: at most 20 error replies before the session closed.
        let errors = whole.replies().iter().filter(|r| matches!(r.code, 500..=504 | 555)).count();
        prop_assert!(errors <= 20);
    }

    #[test]
    fn no_message_without_a_proper_end_of_data(bytes in input()) {
        let d = drive(&bytes, &[]);
        // Each message needs its own CRLF.CRLF in the input (DATA's CRLF may be the first half).
        prop_assert!(d.messages().len() <= count(&bytes, b"\r\n.\r\n"));
        for m in d.messages() {
            prop_assert!(m.data.len() <= DATA_LIMIT);
            // No bare LF survives (BareLf::Reject), so no LF.LF smuggling.
            for (i, &b) in m.data.iter().enumerate() {
                if b == b'\n' {
                    prop_assert!(i > 0 && m.data[i - 1] == b'\r');
                }
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let d = drive(&bytes, &[bytes.len() / 3, bytes.len() / 2]);
        prop_assert!(!d.replies().is_empty());
    }
}

#[test]
fn a_smuggled_end_of_data_is_not_one() {
    let mut d = SessionDriver::new(config());
    d.feed(b"HELO a\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n");
    d.feed(b"one\n.\nMAIL FROM:<evil@x.example>\r\n");
    d.feed(b"two\r\n.\n");
    assert!(d.messages().is_empty());
    d.feed(b"\r\n.\r\n");
    assert!(
        d.messages().is_empty(),
        "bare LFs are refused, not delivered"
    );
    assert_eq!(d.replies().last().unwrap().code, 554);
}
