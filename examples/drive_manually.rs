//! Driving the loop, way 2 of 3: the host program's own loop calls `poll_once` between its own
//! work — a game frame, a GUI idle callback, a simulation step — and never sleeps longer than
//! `next_timeout()` allows.
//!
//! Everything runs on one thread, so the host and the SMTP server share state through a plain
//! `Rc<RefCell<..>>`: no locks, no channels. Run it with `cargo run --example drive_manually`.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::thread;
use std::time::{Duration, Instant};

use smtpd::reactor::Reactor;
use smtpd::server::{Listener, Message, Outcome, ServerCtx, ServerOptions, SmtpServer};
use smtpd::testing::Client;

/// The server puts messages where the host loop can see them.
struct Mailbox(Rc<RefCell<Vec<Message>>>);

impl SmtpServer for Mailbox {
    fn process_message(&mut self, m: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.0.borrow_mut().push(m.clone());
        Outcome::Accept
    }
}

/// What the host loop did.
#[derive(Debug, Default)]
pub struct Stats {
    /// Turns of the host loop.
    pub frames: u64,
    /// Reactor hooks run in those turns.
    pub hooks: usize,
    /// The longest the host slept in one turn.
    pub longest_nap: Duration,
    /// Messages received.
    pub messages: Vec<Message>,
}

/// Runs a host loop with frames of `frame` until a client (on another thread) has sent
/// `count` messages and quit, or `limit` passes.
pub fn demo(frame: Duration, count: usize, limit: Duration) -> io::Result<Stats> {
    let mut reactor = Reactor::new()?;
    let mailbox = Rc::new(RefCell::new(Vec::new()));
    let mut options = ServerOptions::default();
    options.session.hostname = "drive-manually.example".into();
    let listener = Listener::bind(
        &mut reactor,
        "127.0.0.1:0".parse().unwrap(),
        Rc::new(RefCell::new(Mailbox(mailbox.clone()))),
        options,
    )?;

    // Someone sends mail while the host loop runs.
    let addr = listener.local_addr();
    let client = thread::spawn(move || -> io::Result<()> {
        let mut c = Client::connect(addr)?;
        c.ehlo("client.example")?;
        for n in 0..count {
            c.send_mail(
                "a@example.com",
                &["b@example.com"],
                format!("#{n}").as_bytes(),
            )?;
        }
        c.quit()?;
        Ok(())
    });

    let mut stats = Stats::default();
    let deadline = Instant::now() + limit;
    while !client.is_finished() && Instant::now() < deadline {
        // 1. The host's own work for this frame.
        stats.frames += 1;

        // 2. Serve whatever the reactor has ready, without blocking.
        stats.hooks += reactor.poll_once(Some(Duration::ZERO))?;

        // 3. Sleep until the next frame, but no longer than the reactor allows: `next_timeout()`
        //    is zero while it has work that needs no new event (cached readiness, queued
        //    notifications), or the time to its next timer. A host that can block on I/O may
        //    instead pass `nap` to `poll_once`, which then returns as soon as a socket is ready.
        let nap = reactor.next_timeout().map_or(frame, |t| t.min(frame));
        stats.longest_nap = stats.longest_nap.max(nap);
        thread::sleep(nap);
    }
    client.join().expect("client panicked")?;
    stats.messages = mailbox.take();
    Ok(stats)
}

fn main() -> io::Result<()> {
    let stats = demo(Duration::from_millis(16), 3, Duration::from_secs(10))?;
    println!(
        "{} frames, {} hooks, longest nap {:?}, {} messages",
        stats.frames,
        stats.hooks,
        stats.longest_nap,
        stats.messages.len()
    );
    Ok(())
}
