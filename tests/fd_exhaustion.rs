//! Running out of file descriptors: the acceptor refuses the waiting connection with its
//! overload reply (using its reserve descriptor), pauses, and resumes — it neither spins on a
//! listener that stays readable nor stalls. Its own test binary, so lowering RLIMIT_NOFILE
//! affects nothing else.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use smtpd::reactor::{Acceptor, AcceptorOptions, Ctx, Reactor};

/// (number of open descriptors, highest descriptor number), including the one used to list them.
fn open_fds() -> (u64, u64) {
    let fds: Vec<u64> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    (fds.len() as u64, fds.into_iter().max().unwrap())
}

#[test]
fn descriptor_exhaustion_refuses_pauses_and_recovers() {
    let mut reactor = Reactor::new().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let held: Rc<RefCell<Vec<TcpStream>>> = Default::default();
    let held2 = held.clone();
    let mut options = AcceptorOptions::default();
    options.overload_reply = Some(b"421 busy\r\n".to_vec());
    options.retry_after = Duration::from_millis(50);
    reactor
        .add(Acceptor::new(
            listener,
            options,
            move |mut stream: TcpStream, _, _ctx: &mut Ctx<'_>| {
                let _ = stream.write(b"220 hi\r\n");
                held2.borrow_mut().push(stream);
            },
        ))
        .unwrap();

    // Connect everybody first: the kernel completes the handshakes into the backlog.
    let mut clients: Vec<StdTcpStream> = (0..8)
        .map(|_| {
            let c = StdTcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c
        })
        .collect();

    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // New descriptors take the lowest free numbers below the limit: room for the gaps below
    // the highest open descriptor plus three.
    let (count, max) = open_fds();
    // Fill the gaps so exactly three descriptors are left.
    let _fillers: Vec<std::fs::File> = (count..=max)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let (count, max) = open_fds();
    // The listing counted its own directory descriptor, which is closed again (and, with no
    // gaps left, was the highest): `count - 1` descriptors are open, numbered 0..count-1.
    assert_eq!(count, max + 1, "no gaps left");
    let limit = count - 1 + 3;
    let fit = 3;
    setrlimit(Resource::RLIMIT_NOFILE, limit, hard).unwrap();

    let start = Instant::now();
    let mut busy_ticks = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        if reactor.poll_once(Some(Duration::from_millis(100))).unwrap() > 0 {
            busy_ticks += 1;
        }
    }
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();

    assert_eq!(
        held.borrow().len(),
        fit,
        "as many connections as descriptors"
    );
    // A listener spinning on EMFILE would run its hook on every tick (thousands here); one
    // refusal per retry interval is a few dozen at most.
    assert!(
        busy_ticks < 60,
        "the listener spun: {busy_ticks} busy ticks"
    );

    // Held connections stay open: read just their greeting. Refused ones end after the reply.
    held.borrow_mut().clear();
    let mut greeted = 0;
    let mut refused = 0;
    for c in clients.iter_mut() {
        let mut answer = String::new();
        c.read_to_string(&mut answer).ok();
        match answer.as_str() {
            "220 hi\r\n" => greeted += 1,
            "421 busy\r\n" => refused += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((greeted, refused), (fit, 8 - fit));

    // Descriptors are back: new connections are accepted again.
    let mut late = StdTcpStream::connect(addr).unwrap();
    late.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while held.borrow().is_empty() {
        assert!(Instant::now() < deadline, "accepting never resumed");
        reactor.poll_once(Some(Duration::from_millis(50))).unwrap();
    }
    let mut buf = [0u8; 8];
    late.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"220 hi\r\n");
}
