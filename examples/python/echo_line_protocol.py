"""The Python original of examples/echo_line_protocol.rs (CPython <= 3.11: asynchat and
asyncore were removed in 3.12).

A line protocol: each line comes back upper-cased; `BLOB n` switches to a counted read of n
bytes; `QUIT` says goodbye and closes once the goodbye is sent.

python3 examples/python/echo_line_protocol.py [port]
"""
import asynchat
import asyncore
import socket
import sys


class EchoChannel(asynchat.async_chat):
    def __init__(self, sock):
        super().__init__(sock)
        self.set_terminator(b'\r\n')
        self.buffer = []
        self.push(b'+OK echo ready\r\n')

    def collect_incoming_data(self, data):
        self.buffer.append(data)

    def found_terminator(self):
        line = b''.join(self.buffer)
        self.buffer = []
        if isinstance(self.get_terminator(), int):  # the end of a counted read
            self.push(b'+OK got %d bytes\r\n' % len(line))
            self.set_terminator(b'\r\n')
        elif line.upper() == b'QUIT':
            self.push(b'+OK bye\r\n')
            self.close_when_done()
        elif line.upper().startswith(b'BLOB '):
            try:
                n = int(line[5:])
            except ValueError:
                n = 0
            if n > 0:
                self.set_terminator(n)
            else:
                self.push(b'-ERR bad length\r\n')
        else:
            self.push(line.upper() + b'\r\n')


class EchoServer(asyncore.dispatcher):
    def __init__(self, addr):
        super().__init__()
        self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
        self.set_reuse_addr()
        self.bind(addr)
        self.listen(5)

    def handle_accepted(self, sock, addr):
        EchoChannel(sock)


if __name__ == '__main__':
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8026
    server = EchoServer(('127.0.0.1', port))
    print(server.socket.getsockname()[1], flush=True)
    asyncore.loop()
