#!/usr/bin/env python3
"""Memory per idle TLS connection of a running server (docs/performance.md).

  openssl req -x509 -newkey rsa:2048 -nodes -keyout k.pem -out c.pem -days 2 \
      -subj /CN=localhost -addext subjectAltName=DNS:localhost
  RUST_LOG=warn target/release/smtpd -n -c Sink --tls-cert c.pem --tls-key k.pem 127.0.0.1:18050 &
  ulimit -n 8192; tools/tls_idle.py $! 2000 127.0.0.1 18050 c.pem

Each client does EHLO, STARTTLS, the handshake and EHLO again, then stays idle; the figure is the
server's VmRSS growth divided by the number of clients (after 20 warm-up connections).
"""
import socket
import ssl
import sys
import time

pid, n, host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]


def rss_kib():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


ctx = ssl.create_default_context(cafile=ca)


def one():
    s = socket.create_connection((host, port))
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"EHLO x\r\n")
    while f.readline()[3:4] != b" ":
        pass
    s.sendall(b"STARTTLS\r\n")
    f.readline()
    t = ctx.wrap_socket(s, server_hostname="localhost")
    t.sendall(b"EHLO x\r\n")
    buf = b""
    while not buf.endswith(b"250 HELP\r\n"):
        buf += t.recv(4096)
    return t


keep = [one() for _ in range(20)]
time.sleep(0.5)
before = rss_kib()
keep += [one() for _ in range(n)]
time.sleep(1)
after = rss_kib()
print(f"tls idle={n} rss_before_kib={before} rss_after_kib={after} "
      f"bytes_per_conn={(after - before) * 1024 // n}")
