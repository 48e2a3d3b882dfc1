//! The reactor: handles, timers, notifications, stop and remote handles, pending-work reporting.

use std::any::Any;
use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use mio::event::Source;
use mio::net::UnixStream;
use smtpd::reactor::{Ctx, Dispatcher, Handle, Reactor, TimerId};

type Log = Rc<RefCell<Vec<String>>>;
type TimerHook = Box<dyn FnMut(&mut Ctx<'_>, TimerId)>;
type NotifyHook = Box<dyn FnMut(&mut Ctx<'_>)>;

/// A dispatcher with no socket that records every hook it gets.
struct Probe {
    name: &'static str,
    log: Log,
    on_timer: Option<TimerHook>,
    on_notify: Option<NotifyHook>,
}

impl Probe {
    fn new(name: &'static str, log: &Log) -> Probe {
        Probe {
            name,
            log: log.clone(),
            on_timer: None,
            on_notify: None,
        }
    }
}

impl Dispatcher for Probe {
    fn source(&mut self) -> Option<&mut dyn Source> {
        None
    }
    fn on_start(&mut self, _ctx: &mut Ctx<'_>) {
        self.log.borrow_mut().push(format!("{} start", self.name));
    }
    fn on_readable(&mut self, _ctx: &mut Ctx<'_>) {
        self.log
            .borrow_mut()
            .push(format!("{} readable", self.name));
    }
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: TimerId) {
        self.log.borrow_mut().push(format!("{} timer", self.name));
        if let Some(f) = self.on_timer.as_mut() {
            f(ctx, timer);
        }
    }
    fn on_notify(&mut self, ctx: &mut Ctx<'_>, message: Box<dyn Any>) {
        if let Some(f) = self.on_notify.as_mut() {
            f(ctx);
        }
        let text = message
            .downcast::<String>()
            .map(|s| *s)
            .unwrap_or_else(|_| "?".into());
        self.log
            .borrow_mut()
            .push(format!("{} notify {text}", self.name));
    }
    fn on_close(&mut self, _ctx: &mut Ctx<'_>) {
        self.log.borrow_mut().push(format!("{} close", self.name));
    }
}

/// A dispatcher around one end of a socket pair that records reads.
struct Sock {
    stream: UnixStream,
    log: Log,
}

impl Dispatcher for Sock {
    fn source(&mut self) -> Option<&mut dyn Source> {
        Some(&mut self.stream)
    }
    fn on_readable(&mut self, ctx: &mut Ctx<'_>) {
        let mut buf = [0u8; 64];
        loop {
            match std::io::Read::read(&mut self.stream, &mut buf) {
                Ok(0) => return ctx.close(),
                Ok(n) => self
                    .log
                    .borrow_mut()
                    .push(format!("sock read {}", String::from_utf8_lossy(&buf[..n]))),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return ctx.read_would_block()
                }
                Err(e) => return ctx.error(e),
            }
        }
    }
    fn on_close(&mut self, _ctx: &mut Ctx<'_>) {
        self.log.borrow_mut().push("sock close".into());
    }
}

fn entries(log: &Log) -> Vec<String> {
    log.borrow().clone()
}

fn tick_until(reactor: &mut Reactor, what: impl FnMut(&mut Reactor) -> bool) {
    let done = reactor
        .run_until(Instant::now() + Duration::from_secs(5), what)
        .unwrap();
    assert!(done, "condition not reached within 5 s");
}

#[test]
fn stale_handles_never_reach_a_reused_slot() {
    let log: Log = Default::default();
    let mut reactor = Reactor::new().unwrap();
    let (a_end, mut peer) = UnixStream::pair().unwrap();
    let a = reactor
        .add(Sock {
            stream: a_end,
            log: log.clone(),
        })
        .unwrap();

    // A timer on another dispatcher closes A and spawns B in the same tick in which A's
    // readiness event is in the batch: B lands in A's slot, and A's queued readiness must not
    // be served to it.
    let spawned: Rc<RefCell<Option<Handle>>> = Default::default();
    let mut killer = Probe::new("killer", &log);
    let (log2, spawned2) = (log.clone(), spawned.clone());
    killer.on_timer = Some(Box::new(move |ctx, _| {
        ctx.close_other(a);
        let me = ctx.handle();
        ctx.notify(me, String::from("spawn now"));
    }));
    killer.on_notify = Some(Box::new(move |ctx| {
        let b = ctx.spawn(Probe::new("b", &log2));
        *spawned2.borrow_mut() = Some(b);
    }));
    let k = reactor.add(killer).unwrap();
    reactor
        .with_dispatcher::<Probe, _>(k, |_, ctx| ctx.set_timer(Duration::from_millis(20)))
        .unwrap();
    peer.write_all(b"hello").unwrap();
    thread::sleep(Duration::from_millis(40));
    reactor.poll_once(Some(Duration::ZERO)).unwrap();

    let b = spawned.borrow().expect("b spawned");
    assert_eq!(b.index(), a.index(), "the slab reused A's slot for B");
    assert_ne!(a, b);
    assert!(!reactor.contains(a));
    assert!(reactor.contains(b));

    // Notifications and host calls through the stale handle go nowhere.
    reactor.notify(a, String::from("for a"));
    reactor.notify(b, String::from("for b"));
    reactor.poll_once(Some(Duration::ZERO)).unwrap();
    assert!(reactor.with_dispatcher::<Sock, _>(a, |_, _| ()).is_none());
    let log = entries(&log);
    assert!(log.contains(&"sock close".to_string()), "{log:?}");
    assert!(!log.iter().any(|e| e == "b readable"), "{log:?}");
    assert!(!log.iter().any(|e| e.starts_with("sock read")), "{log:?}");
    assert!(log.contains(&"b notify for b".to_string()), "{log:?}");
    assert!(!log.iter().any(|e| e.contains("for a")), "{log:?}");
}

#[test]
fn timers_fire_in_order_and_reset_cancel_work() {
    let log: Log = Default::default();
    let mut reactor = Reactor::new().unwrap();
    let h = reactor.add(Probe::new("p", &log)).unwrap();
    let (t1, t2, t3) = reactor
        .with_dispatcher::<Probe, _>(h, |_, ctx| {
            let t1 = ctx.set_timer(Duration::from_millis(30));
            let t2 = ctx.set_timer(Duration::from_millis(10));
            let t3 = ctx.set_timer(Duration::from_millis(20));
            (t1, t2, t3)
        })
        .unwrap();
    let fired: Rc<RefCell<Vec<TimerId>>> = Default::default();
    let f2 = fired.clone();
    reactor
        .with_dispatcher::<Probe, _>(h, |p, ctx| {
            p.on_timer = Some(Box::new(move |_, id| f2.borrow_mut().push(id)));
            assert!(ctx.cancel_timer(t3));
            assert!(!ctx.cancel_timer(t3), "second cancel is a no-op");
            // Pushed back twice: fires once, at the last deadline.
            assert!(ctx.reset_timer(t1, Duration::from_millis(40)));
            assert!(ctx.reset_timer(t1, Duration::from_millis(50)));
        })
        .unwrap();
    let start = Instant::now();
    tick_until(&mut reactor, |_| fired.borrow().len() == 2);
    assert!(start.elapsed() >= Duration::from_millis(45));
    assert_eq!(*fired.borrow(), vec![t2, t1]);
    // Nothing else is due: the reactor reports no timeout.
    reactor.poll_once(Some(Duration::from_millis(30))).unwrap();
    assert_eq!(fired.borrow().len(), 2);
    assert_eq!(reactor.next_timeout(), None);
}

#[test]
fn timers_of_a_closed_dispatcher_do_not_fire() {
    let log: Log = Default::default();
    let mut reactor = Reactor::new().unwrap();
    let h = reactor.add(Probe::new("p", &log)).unwrap();
    reactor
        .with_dispatcher::<Probe, _>(h, |_, ctx| ctx.set_timer(Duration::from_millis(5)))
        .unwrap();
    reactor.close(h);
    let other = reactor.add(Probe::new("q", &log)).unwrap();
    assert_eq!(other.index(), h.index());
    thread::sleep(Duration::from_millis(10));
    reactor.poll_once(Some(Duration::ZERO)).unwrap();
    assert_eq!(entries(&log), vec!["p start", "p close", "q start"]);
}

#[test]
fn next_timeout_is_zero_while_work_is_pending() {
    let log: Log = Default::default();
    let mut reactor = Reactor::new().unwrap();
    let h = reactor.add(Probe::new("p", &log)).unwrap();
    assert_eq!(reactor.next_timeout(), None);
    assert!(!reactor.has_pending_work());

    reactor.notify(h, String::from("x"));
    assert!(reactor.has_pending_work());
    assert_eq!(reactor.next_timeout(), Some(Duration::ZERO));
    // The pending notification does not make the epoll fd readable, yet a zero-timeout tick
    // delivers it: this is what a host nesting the reactor must rely on.
    assert_eq!(reactor.poll_once(Some(Duration::ZERO)).unwrap(), 1);
    assert!(entries(&log).contains(&"p notify x".to_string()));
    assert_eq!(reactor.next_timeout(), None);

    reactor
        .with_dispatcher::<Probe, _>(h, |_, ctx| ctx.set_timer(Duration::from_secs(5)))
        .unwrap();
    let t = reactor.next_timeout().unwrap();
    assert!(
        t > Duration::from_secs(4) && t <= Duration::from_secs(5),
        "{t:?}"
    );
}

#[test]
fn a_full_events_buffer_means_more_work() {
    let mut reactor = Reactor::with_capacity(1).unwrap();
    let log: Log = Default::default();
    let mut peers = Vec::new();
    for _ in 0..3 {
        let (a, mut b) = UnixStream::pair().unwrap();
        reactor
            .add(Sock {
                stream: a,
                log: log.clone(),
            })
            .unwrap();
        b.write_all(b"x").unwrap();
        peers.push(b);
    }
    // Each tick takes one event; while the buffer came back full, next_timeout says "now".
    let mut ticks = 0;
    while entries(&log).len() < 3 {
        ticks += 1;
        assert!(ticks < 20);
        reactor.poll_once(Some(Duration::from_secs(1))).unwrap();
        if entries(&log).len() < 3 {
            assert_eq!(reactor.next_timeout(), Some(Duration::ZERO));
        }
    }
}

#[test]
fn notifications_between_dispatchers_are_delivered_next_tick_not_nested() {
    let log: Log = Default::default();
    let mut reactor = Reactor::new().unwrap();
    let b = reactor.add(Probe::new("b", &log)).unwrap();
    let mut a = Probe::new("a", &log);
    a.on_timer = Some(Box::new(move |ctx, _| {
        ctx.notify(b, String::from("hi"));
        ctx.close();
    }));
    let a = reactor.add(a).unwrap();
    reactor
        .with_dispatcher::<Probe, _>(a, |_, ctx| ctx.set_timer(Duration::ZERO))
        .unwrap();
    tick_until(&mut reactor, |_| entries(&log).len() >= 5);
    assert_eq!(
        entries(&log),
        vec!["b start", "a start", "a timer", "a close", "b notify hi"]
    );
}

#[test]
fn stop_from_another_thread_ends_run() {
    // The reactor is !Send: it is built on the thread that runs it, from a Send closure.
    let (tx, rx) = mpsc::channel();
    let runner = thread::spawn(move || {
        let mut reactor = Reactor::new().unwrap();
        let log: Log = Default::default();
        reactor.add(Probe::new("keepalive", &log)).unwrap();
        tx.send(reactor.stop_handle()).unwrap();
        let start = Instant::now();
        reactor.run().unwrap();
        (start.elapsed(), reactor.len())
    });
    let stop = rx.recv().unwrap();
    thread::sleep(Duration::from_millis(50));
    stop.stop();
    let (elapsed, len) = runner.join().unwrap();
    assert!(elapsed >= Duration::from_millis(40) && elapsed < Duration::from_secs(5));
    assert_eq!(len, 1, "stop leaves dispatchers in place");
}

#[test]
fn a_worker_thread_completes_through_the_remote_handle() {
    let log: Log = Default::default();
    let mut reactor = Reactor::new().unwrap();
    let h = reactor.add(Probe::new("p", &log)).unwrap();
    let remote = reactor.remote();
    let worker = thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        remote.notify(h, String::from("computed elsewhere"));
        remote.notify(h, String::from("second"));
    });
    // No timer and no socket event: only the waker can end this wait.
    let start = Instant::now();
    tick_until(&mut reactor, |_| entries(&log).len() >= 3);
    worker.join().unwrap();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(
        entries(&log),
        vec!["p start", "p notify computed elsewhere", "p notify second"]
    );
}

#[test]
fn run_returns_when_the_map_is_empty_and_close_all_closes_everything() {
    let log: Log = Default::default();
    let mut reactor = Reactor::new().unwrap();
    let mut p = Probe::new("p", &log);
    p.on_timer = Some(Box::new(|ctx, _| ctx.close()));
    let h = reactor.add(p).unwrap();
    reactor
        .with_dispatcher::<Probe, _>(h, |_, ctx| ctx.set_timer(Duration::from_millis(5)))
        .unwrap();
    reactor.run().unwrap();
    assert!(reactor.is_empty());

    reactor.add(Probe::new("x", &log)).unwrap();
    reactor.add(Probe::new("y", &log)).unwrap();
    reactor.close_all();
    assert!(reactor.is_empty());
    let log = entries(&log);
    assert!(log.contains(&"x close".into()) && log.contains(&"y close".into()));
}

struct Panicky;

impl Dispatcher for Panicky {
    fn source(&mut self) -> Option<&mut dyn Source> {
        None
    }
    fn on_notify(&mut self, _ctx: &mut Ctx<'_>, _message: Box<dyn Any>) {
        panic!("user code bug");
    }
}

#[test]
fn a_panicking_dispatcher_is_dropped_and_the_loop_goes_on() {
    let log: Log = Default::default();
    let mut reactor = Reactor::new().unwrap();
    let bad = reactor.add(Panicky).unwrap();
    let good = reactor.add(Probe::new("good", &log)).unwrap();
    reactor.notify(bad, ());
    reactor.notify(good, String::from("still here"));
    reactor.poll_once(Some(Duration::ZERO)).unwrap();
    assert!(!reactor.contains(bad));
    assert!(reactor.contains(good));
    assert!(entries(&log).contains(&"good notify still here".into()));
}

#[test]
fn run_count_runs_at_most_n_ticks() {
    let log: Log = Default::default();
    let mut reactor = Reactor::new().unwrap();
    let h = reactor.add(Probe::new("p", &log)).unwrap();
    for i in 0..5 {
        reactor.notify(h, format!("{i}"));
    }
    // Notifications queued before a tick are delivered in that tick.
    reactor.run_count(1).unwrap();
    assert_eq!(entries(&log).len(), 6);
}
