//! A chat room on the asyncore/asynchat layer — no SMTP in sight. Every line one member sends
//! is pushed to every other member.
//!
//! The pattern for "one channel writes to the others": hooks never nest, so a channel cannot
//! call another channel's `push` directly (asynchat code did `for ch in room: ch.push(line)`).
//! Instead the members share a `Rc<RefCell<Room>>` holding their `Handle`s, and a channel
//! sends each other member a notification (`ctx.notify(handle, Say(..))`); the member pushes it
//! in `on_notify`, on the next tick. The borrow of the room never overlaps because no other
//! channel's code runs while one hook runs.
//!
//! `cargo run --example chat_room` runs a scripted two-member session and prints it;
//! `cargo run --example chat_room -- serve` serves on 127.0.0.1:8026 until Ctrl-C
//! (try two `telnet 127.0.0.1 8026`).

use std::any::Any;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use smtpd::chat::{ChatCtl, ChatDispatcher, ChatHandler, Terminator};
use smtpd::reactor::{Acceptor, AcceptorOptions, Ctx, Handle, Reactor};
use smtpd::testing::ClientThread;

/// Longest line kept; the rest of a longer line is dropped (every buffer has a bound).
const MAX_LINE: usize = 1024;

/// Who is in the room: each member's handle and nickname.
#[derive(Default)]
struct Room {
    members: BTreeMap<Handle, String>,
    next_guest: usize,
}

impl Room {
    /// Sends `text` to every member but `from` — as notifications, delivered next tick.
    fn broadcast(&self, ctx: &mut Ctx<'_>, from: Handle, text: String) {
        let line: Rc<[u8]> = format!("{text}\r\n").into_bytes().into();
        for &member in self.members.keys().filter(|&&h| h != from) {
            ctx.notify(member, Say(line.clone()));
        }
    }
}

/// A line for one member to push.
struct Say(Rc<[u8]>);

/// One member's connection: an `async_chat` subclass.
struct Member {
    room: Rc<RefCell<Room>>,
    line: Vec<u8>,
}

impl ChatHandler for Member {
    fn on_start(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        chat.set_terminator(Terminator::bytes("\r\n"));
        let mut room = self.room.borrow_mut();
        room.next_guest += 1;
        let nick = format!("guest{}", room.next_guest);
        chat.push(format!("* welcome, you are {nick}\r\n").as_bytes());
        room.broadcast(ctx, ctx.handle(), format!("* {nick} joined"));
        room.members.insert(ctx.handle(), nick);
    }

    fn collect_incoming_data(&mut self, data: &[u8]) {
        let room_left = MAX_LINE.saturating_sub(self.line.len());
        self.line
            .extend_from_slice(&data[..data.len().min(room_left)]);
    }

    fn found_terminator(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        let line = String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
        let me = ctx.handle();
        let mut room = self.room.borrow_mut();
        let nick = room.members.get(&me).cloned().unwrap_or_default();
        if line == "/quit" {
            chat.push(b"* bye\r\n");
            chat.close_when_done(); // on_close tells the others
        } else if let Some(new) = line.strip_prefix("/nick ") {
            let new = new.trim().to_string();
            room.broadcast(ctx, me, format!("* {nick} is now {new}"));
            chat.push(format!("* you are now {new}\r\n").as_bytes());
            room.members.insert(me, new);
        } else if !line.is_empty() {
            room.broadcast(ctx, me, format!("{nick}: {line}"));
        }
    }

    fn on_notify(&mut self, chat: &mut ChatCtl, _ctx: &mut Ctx<'_>, message: Box<dyn Any>) {
        if let Ok(say) = message.downcast::<Say>() {
            chat.push(&say.0);
        }
    }

    fn on_close(&mut self, _chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        let mut room = self.room.borrow_mut();
        if let Some(nick) = room.members.remove(&ctx.handle()) {
            room.broadcast(ctx, ctx.handle(), format!("* {nick} left"));
        }
    }
}

/// Adds a listening chat room to `reactor`; returns its address.
pub fn serve(reactor: &mut Reactor, addr: SocketAddr) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let room = Rc::new(RefCell::new(Room::default()));
    // asyncore's dispatcher with handle_accepted(sock, addr): one Member per connection.
    let acceptor = Acceptor::new(
        listener,
        AcceptorOptions::default(),
        move |stream: TcpStream, _peer, ctx: &mut Ctx<'_>| {
            let member = Member {
                room: room.clone(),
                line: Vec::new(),
            };
            ctx.spawn(ChatDispatcher::new(stream, member));
        },
    );
    reactor.add(acceptor)?;
    Ok(local)
}

/// A blocking line client for the demo.
struct Person {
    name: &'static str,
    reader: BufReader<StdTcpStream>,
    writer: StdTcpStream,
    heard: Vec<String>,
}

impl Person {
    fn join(name: &'static str, addr: SocketAddr) -> io::Result<Person> {
        let s = StdTcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut p = Person {
            name,
            reader: BufReader::new(s.try_clone()?),
            writer: s,
            heard: Vec::new(),
        };
        p.hear()?; // the welcome
        Ok(p)
    }

    fn say(&mut self, line: &str) -> io::Result<()> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())
    }

    fn hear(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end().to_string();
        println!("{:>5} hears: {line}", self.name);
        self.heard.push(line.clone());
        Ok(line)
    }
}

/// A scripted session of two members; returns what each heard.
pub fn demo(limit: Duration) -> io::Result<(Vec<String>, Vec<String>)> {
    let mut reactor = Reactor::new()?;
    let addr = serve(&mut reactor, "127.0.0.1:0".parse().unwrap())?;
    // On its own thread; it wakes the reactor when it is done (a thread's end is no event).
    let people = ClientThread::spawn(&reactor, move || script(addr));
    let deadline = Instant::now() + limit;
    reactor.run_until(deadline, |_| people.is_done())?;
    people.join()
}

/// Alice and Bob meet, rename themselves, talk, and Bob leaves.
fn script(addr: SocketAddr) -> io::Result<(Vec<String>, Vec<String>)> {
    {
        let mut alice = Person::join("alice", addr)?;
        let mut bob = Person::join("bob", addr)?;
        alice.hear()?; // * guest2 joined
        alice.say("/nick alice")?;
        alice.hear()?; // * you are now alice
        bob.hear()?; // * guest1 is now alice
        bob.say("/nick bob")?;
        bob.hear()?;
        alice.hear()?;
        alice.say("hi bob")?;
        bob.hear()?; // alice: hi bob
        bob.say("bye alice")?;
        alice.hear()?;
        bob.say("/quit")?;
        bob.hear()?; // * bye
        alice.hear()?; // * bob left
        Ok((alice.heard, bob.heard))
    }
}

fn main() -> io::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("serve") {
        let mut reactor = Reactor::new()?;
        let addr = serve(&mut reactor, "127.0.0.1:8026".parse().unwrap())?;
        println!("chat room on {addr}; Ctrl-C ends it");
        return reactor.run();
    }
    demo(Duration::from_secs(20))?;
    Ok(())
}
