//! The "hello world": a DebuggingServer on 127.0.0.1:8025 that prints every message.
//!
//! Run it with `cargo run --example debugging_server [ADDRESS]` (default 127.0.0.1:8025), then
//! send mail with any client, e.g.
//! `python3 -c "import smtplib; smtplib.SMTP('127.0.0.1', 8025).sendmail('a@x', ['b@y'], 'hi')"`.

use std::cell::RefCell;
use std::rc::Rc;

use smtpd::reactor::Reactor;
use smtpd::server::{Listener, ServerOptions};
use smtpd::servers::DebuggingServer;

fn main() -> std::io::Result<()> {
    // The reactor is asyncore's loop and socket map in one value.
    let mut reactor = Reactor::new()?;
    // One server object serves every connection; channels borrow it one at a time.
    let server = Rc::new(RefCell::new(DebuggingServer::new()));
    // CPython's defaults: the machine's FQDN in the greeting, a 32 MiB size limit.
    // The address from the command line, or CPython's default port.
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8025".into());
    let addr = addr.parse().map_err(std::io::Error::other)?;
    let listener = Listener::bind(&mut reactor, addr, server, ServerOptions::default())?;
    eprintln!("listening on {}", listener.local_addr());
    // asyncore.loop(): runs until every dispatcher is gone or a StopHandle stops it.
    reactor.run()
}
