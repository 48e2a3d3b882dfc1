"""Helpers for tools/mailman3.sh (a throwaway Mailman 3 on loopback for tests/mailman3.rs).

    python3 mailman3_helper.py ports N            print N free loopback ports
    VENV/bin/python mailman3_helper.py sink PORT DIR
                                                  capture SMTP sink: one file per message,
                                                  the envelope in X-Envelope-From/-To lines first
    python3 mailman3_helper.py wait LMTP REST SECS
                                                  until LMTP greets and REST answers
    python3 mailman3_helper.py setup REST         domain example.com, list test@ with a member
                                                  and an owner

Standard library only, except `sink`, which runs with Mailman's venv (aiosmtpd).
"""
import base64
import json
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request

REST_USER, REST_PASS = "restadmin", "restpass"


def ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


def sink(port, directory):
    from aiosmtpd.controller import Controller

    class Capture:
        async def handle_DATA(self, server, session, envelope):
            name = "%d-%d" % (time.time_ns(), os.getpid())
            path = os.path.join(directory, name + ".eml")
            with open(path + ".tmp", "wb") as f:
                f.write(b"X-Envelope-From: %s\r\n" % envelope.mail_from.encode())
                f.write(b"X-Envelope-To: %s\r\n" % " ".join(envelope.rcpt_tos).encode())
                f.write(envelope.original_content or envelope.content)
            os.rename(path + ".tmp", path)
            return "250 OK"

    os.makedirs(directory, exist_ok=True)
    controller = Controller(Capture(), hostname="127.0.0.1", port=port)
    controller.start()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.2)
    controller.stop()


def rest(port, method, path, body=None):
    req = urllib.request.Request(
        "http://127.0.0.1:%d/3.1%s" % (port, path),
        method=method,
        data=None if body is None else json.dumps(body).encode(),
    )
    token = base64.b64encode(("%s:%s" % (REST_USER, REST_PASS)).encode()).decode()
    req.add_header("Authorization", "Basic " + token)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def lmtp_greets(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(2)
            ok = s.recv(512).startswith(b"220")
            s.sendall(b"QUIT\r\n")
            return ok
    except OSError:
        return False


def wait(lmtp, rest_port, secs):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        try:
            rest_ok = rest(rest_port, "GET", "/system/versions")[0] == 200
        except OSError:
            rest_ok = False
        if rest_ok and lmtp_greets(lmtp):
            return
        time.sleep(0.3)
    sys.exit("Mailman did not come up within %s s" % secs)


def setup(rest_port):
    steps = [
        ("POST", "/domains", {"mail_host": "example.com"}, (201, 400)),
        ("POST", "/lists", {"fqdn_listname": "test@example.com"}, (201, 400)),
        (
            "PATCH",
            "/lists/test.example.com/config",
            {"send_welcome_message": False, "default_nonmember_action": "accept"},
            (204,),
        ),
        (
            "POST",
            "/members",
            {
                "list_id": "test.example.com",
                "subscriber": "member@example.org",
                "role": "member",
                "pre_verified": True,
                "pre_confirmed": True,
                "pre_approved": True,
            },
            (201, 409),
        ),
        (
            "POST",
            "/members",
            {"list_id": "test.example.com", "subscriber": "owner@example.org", "role": "owner"},
            (201, 409),
        ),
    ]
    for method, path, body, ok in steps:
        status, text = rest(rest_port, method, path, body)
        if status not in ok:
            sys.exit("REST %s %s: %s %s" % (method, path, status, text[:300]))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ports":
        ports(int(args[0]))
    elif cmd == "sink":
        sink(int(args[0]), args[1])
    elif cmd == "wait":
        wait(int(args[0]), int(args[1]), float(args[2]))
    elif cmd == "setup":
        setup(int(args[0]))
    else:
        sys.exit("unknown command %s" % cmd)
