"""The Python original of examples/custom_server.rs (CPython <= 3.11: smtpd was removed in 3.12).

python3 examples/python/custom_server.py [port]
"""
import asyncore
import smtpd
import sys


class Inbox(smtpd.SMTPServer):
    def __init__(self, localaddr, domain):
        super().__init__(localaddr, None, data_size_limit=1_000_000)
        self.domain = domain
        self.mailboxes = {}

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        for rcpt in rcpttos:
            if not rcpt.lower().endswith('@' + self.domain):
                return '550 not relaying to that domain'
        for rcpt in rcpttos:
            self.mailboxes.setdefault(rcpt.lower(), []).append(data)
        print(f'{peer[0]}: {len(data)} bytes from {mailfrom} to {rcpttos}', flush=True)
        return None


if __name__ == '__main__':
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8025
    Inbox(('127.0.0.1', port), 'example.org')
    asyncore.loop()
