"""CPython's smtpd.SMTPServer for tests/differential.rs: one server, one option set.

usage: python3 -W ignore cpython_server.py HOSTNAME CLASS SIZE SMTPUTF8 DECODE

CLASS is `sink` (process_message returns None: "250 OK") or `echo` (the reply shows what
process_message received, as JSON). SMTPUTF8 and DECODE are 0 or 1. The chosen port is printed
on stdout; the process exits when its stdin is closed (the test ended or died).
"""
import asyncore
import json
import os
import smtpd
import socket
import sys
import threading

hostname, kind, size, smtputf8, decode = sys.argv[1:6]
# SMTPChannel greets with socket.getfqdn(): make it the name the test expects.
socket.getfqdn = lambda name='': hostname


class Sink(smtpd.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        return None


class Echo(smtpd.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        if isinstance(data, bytes):
            data = data.decode('latin-1')
        seen = [mailfrom, rcpttos, kwargs.get('mail_options'),
                kwargs.get('rcpt_options'), data]
        return '250 ' + json.dumps(seen)


cls = {'sink': Sink, 'echo': Echo}[kind]
server = cls(('127.0.0.1', 0), None, data_size_limit=int(size),
             enable_SMTPUTF8=smtputf8 == '1', decode_data=decode == '1')
print(server.socket.getsockname()[1], flush=True)
# Tracebacks of the crashes the tests provoke go nowhere (asyncore prints them to stdout).
devnull = open(os.devnull, 'w')
sys.stdout = sys.stderr = devnull


def exit_with_parent():
    sys.stdin.read()
    os._exit(0)


threading.Thread(target=exit_with_parent, daemon=True).start()
asyncore.loop(timeout=0.05)
