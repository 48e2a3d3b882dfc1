//! Your own `smtpd` command: the command line of `python3 -m smtpd` (and all of ours), with a
//! server class of your own registered by name — Python's `-c module.ClassName`.
//!
//! `cargo run --example custom_cli -- -n -c Counter 127.0.0.1:8025` serves until SIGINT/SIGTERM
//! and prints one line per message; `-c DebuggingServer` and the other built-ins still work.

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;

use smtpd::cli::Classes;
use smtpd::server::{Message, Outcome, ServerCtx, SmtpServer};

/// Counts the messages it accepts.
struct Counter {
    seen: u64,
}

impl SmtpServer for Counter {
    fn process_message(&mut self, message: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.seen += 1;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "message {} from {}", self.seen, message.mail_from);
        let _ = out.flush();
        Outcome::Accept
    }
}

fn main() {
    // The built-in classes, plus ours under the name `-c` will look for.
    let mut classes = Classes::builtin();
    classes.register("Counter", |_args| {
        Ok(Rc::new(RefCell::new(Counter { seen: 0 })))
    });
    // Parsing, binding, dropping privileges, signals, logging: all as in `smtpd`.
    std::process::exit(smtpd::cli::main(std::env::args_os().skip(1), &classes));
}
