//! The session and its framing under arbitrary bytes: the first byte picks the options and
//! where the input is cut into reads; the rest is the client's input. Checks what the
//! property tests check (tests/properties.rs): no panic, bounded buffering, well-formed
//! replies, no message without its own CRLF.CRLF, the same result however the input is cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtpd::smtp::{BareLf, Config};
use smtpd::testing::SessionDriver;

fuzz_target!(|input: &[u8]| {
    let Some((&knobs, bytes)) = input.split_first() else {
        return;
    };
    let mut config = Config::default();
    config.data_size_limit = if knobs & 1 == 0 { 1000 } else { 0 };
    config.enable_smtputf8 = knobs & 2 != 0;
    config.bare_lf = if knobs & 4 == 0 { BareLf::Reject } else { BareLf::Normalize };
    config.lf_newlines = knobs & 8 != 0;
    config.max_errors = 20;
    config.max_recipients = 100;
    let step = usize::from(knobs >> 4) + 1;

    let mut whole = SessionDriver::new(config.clone());
    whole.feed(bytes);
    let mut cut = SessionDriver::new(config.clone());
    for piece in bytes.chunks(step) {
        cut.feed(piece);
    }
    assert_eq!(whole.replies(), cut.replies());
    assert_eq!(whole.messages(), cut.messages());

    let ends = bytes.windows(5).filter(|w| *w == b"\r\n.\r\n").count();
    assert!(whole.messages().len() <= ends);
    for reply in whole.replies() {
        assert!((200..=599).contains(&reply.code));
        assert!(reply.lines.iter().all(|l| !l.contains(['\r', '\n'])));
    }
    if config.data_size_limit != 0 {
        assert!(whole.peak_buffered() <= 1000 + 4);
        assert!(cut.peak_buffered() <= 1000 + 4);
    }
});
