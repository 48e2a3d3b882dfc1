//! Connection-scale load for `tools/bench.sh`: opens many idle SMTP connections (each greeted
//! and past EHLO), reports the server's resident memory per connection, then times fresh
//! transactions while the idle ones stay open.
//!
//! ```text
//! cargo run --release --example conn_scale -- 127.0.0.1:2525 SERVER_PID [IDLE] [SAMPLES]
//! ```
//!
//! Prints one line: `idle=N rss_delta_kib=.. bytes_per_conn=.. p50_us=.. p90_us=.. p99_us=..`.
//! A transaction is: connect, greeting, EHLO, MAIL, RCPT, DATA, 1 KiB body, `250`, QUIT.
//! The client uses plain blocking sockets; it needs `ulimit -n` above IDLE + SAMPLES.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Reads one complete SMTP reply (the last line has a space after the code) into `buf`.
fn read_reply(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        // A complete reply ends with CRLF and its last line is `ddd ` or `ddd\r\n`.
        if buf.ends_with(b"\r\n") {
            let body = &buf[..buf.len() - 2];
            let start = body
                .windows(2)
                .rposition(|w| w == b"\r\n")
                .map_or(0, |i| i + 2);
            let last = &buf[start..];
            if last.len() >= 4 && last[3] != b'-' {
                let code = std::str::from_utf8(&last[..3])
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| io::Error::other("bad reply"))?;
                return Ok(code);
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn expect(stream: &mut TcpStream, buf: &mut Vec<u8>, code: u16) -> io::Result<()> {
    let got = read_reply(stream, buf)?;
    if got != code {
        return Err(io::Error::other(format!(
            "expected {code}, got {:?}",
            String::from_utf8_lossy(buf)
        )));
    }
    Ok(())
}

fn greeted(addr: SocketAddr, buf: &mut Vec<u8>) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    expect(&mut s, buf, 220)?;
    s.write_all(b"EHLO bench.example\r\n")?;
    expect(&mut s, buf, 250)?;
    Ok(s)
}

fn transaction(addr: SocketAddr, body: &[u8], buf: &mut Vec<u8>) -> io::Result<Duration> {
    let t0 = Instant::now();
    let mut s = greeted(addr, buf)?;
    for (cmd, code) in [
        (&b"MAIL FROM:<a@bench.example>\r\n"[..], 250),
        (b"RCPT TO:<b@bench.example>\r\n", 250),
        (b"DATA\r\n", 354),
    ] {
        s.write_all(cmd)?;
        expect(&mut s, buf, code)?;
    }
    s.write_all(body)?;
    expect(&mut s, buf, 250)?;
    let elapsed = t0.elapsed();
    s.write_all(b"QUIT\r\n")?;
    let _ = read_reply(&mut s, buf);
    Ok(elapsed)
}

fn vm_rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS"))
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: conn_scale HOST:PORT SERVER_PID [IDLE=10000] [SAMPLES=200]");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[0].parse().map_err(io::Error::other)?;
    let pid: u32 = args[1].parse().map_err(io::Error::other)?;
    let idle: usize = args
        .get(2)
        .map_or(Ok(10_000), |a| a.parse())
        .map_err(io::Error::other)?;
    let samples: usize = args
        .get(3)
        .map_or(Ok(200), |a| a.parse())
        .map_err(io::Error::other)?;

    let mut body = Vec::with_capacity(1100);
    body.extend_from_slice(b"Subject: bench\r\n\r\n");
    while body.len() < 1024 {
        body.extend_from_slice(
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n",
        );
    }
    body.extend_from_slice(b".\r\n");

    let mut buf = Vec::new();
    // Warm the server up (allocator arenas, scratch buffer) before the baseline reading.
    for _ in 0..20 {
        transaction(addr, &body, &mut buf)?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = vm_rss_kib(pid)?;
    let mut conns = Vec::with_capacity(idle);
    for i in 0..idle {
        match greeted(addr, &mut buf) {
            Ok(s) => conns.push(s),
            Err(e) => {
                eprintln!("conn_scale: connection {i}: {e}");
                std::process::exit(1);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = vm_rss_kib(pid)?;

    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        times.push(transaction(addr, &body, &mut buf)?);
    }
    times.sort();
    let pct = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)].as_micros();
    let delta = after.saturating_sub(before);
    println!(
        "idle={} rss_before_kib={before} rss_after_kib={after} bytes_per_conn={} p50_us={} p90_us={} p99_us={}",
        conns.len(),
        delta * 1024 / conns.len().max(1) as u64,
        pct(50),
        pct(90),
        pct(99)
    );
    drop(conns);
    Ok(())
}
