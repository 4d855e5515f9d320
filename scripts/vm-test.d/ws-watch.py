#!/usr/bin/env python3
"""Connects to a gateway's /ws as a web client (stdlib only: a websocket client in a few
lines) and prints every text message for a while; vm-test greps them.

usage: ws-watch.py HOST PORT SECONDS
"""
import base64
import json
import os
import socket
import struct
import sys
import time


def frame(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    head = bytes([0x81])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    else:
        head += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def main() -> None:
    host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    sock = socket.create_connection((host, port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += read_exact(sock, 1)
    if b" 101 " not in head.split(b"\r\n")[0]:
        sys.exit(f"no websocket upgrade: {head!r}")
    sock.sendall(frame(json.dumps({"type": "new", "data": "client"})))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            b0, b1 = read_exact(sock, 2)
        except (socket.timeout, EOFError):
            break
        length = b1 & 0x7F
        if length == 126:
            length = struct.unpack("!H", read_exact(sock, 2))[0]
        elif length == 127:
            length = struct.unpack("!Q", read_exact(sock, 8))[0]
        payload = read_exact(sock, length)
        opcode = b0 & 0x0F
        if opcode == 0x1:
            print(payload.decode(), flush=True)
        elif opcode == 0x8:
            break
    # A polite close (1000), so the gateway logs no protocol error.
    try:
        mask = os.urandom(4)
        body = struct.pack("!H", 1000)
        sock.sendall(bytes([0x88, 0x80 | len(body)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(body)))
        sock.settimeout(2)
        while sock.recv(4096):
            pass
    except OSError:
        pass
    sock.close()


if __name__ == "__main__":
    main()
