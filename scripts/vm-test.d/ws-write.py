#!/usr/bin/env python3
"""Switches the LED of the VM's simulated websocket node from the host, as a web client that
first logs in with the password on stdin (an empty line: no login). Prints one JSON object:
login (the HTTP status of POST /api/login, or null), uid, before and after (the LED's value
before the write and at the end), denied (the reason of a "denied" answer, or null).

usage: echo PASSWORD | ws-write.py HOST PORT
"""
import importlib.util
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("ws_watch", os.path.join(here, "ws-watch.py"))
ws = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ws)


def login(host: str, port: int, password: str):
    request = urllib.request.Request(
        f"http://{host}:{port}/api/login",
        data=json.dumps({"password": password}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            cookie = response.headers.get("Set-Cookie", "").split(";")[0]
            return response.status, cookie
    except urllib.error.HTTPError as error:
        return error.code, ""


def connect(host: str, port: int, cookie: str) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=10)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    extra = f"Cookie: {cookie}\r\n" if cookie else ""
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += ws.read_exact(sock, 1)
    if b" 101 " not in head.split(b"\r\n")[0]:
        sys.exit(f"no websocket upgrade: {head!r}")
    return sock


def messages(sock: socket.socket, until: float):
    """Yields the JSON text messages that arrive before the monotonic time `until`."""
    while time.monotonic() < until:
        sock.settimeout(max(0.1, until - time.monotonic()))
        try:
            b0, b1 = ws.read_exact(sock, 2)
        except (socket.timeout, EOFError):
            return
        length = b1 & 0x7F
        if length == 126:
            length = int.from_bytes(ws.read_exact(sock, 2), "big")
        elif length == 127:
            length = int.from_bytes(ws.read_exact(sock, 8), "big")
        payload = ws.read_exact(sock, length)
        if b0 & 0x0F == 0x1:
            yield json.loads(payload)
        elif b0 & 0x0F == 0x8:
            return


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    password = sys.stdin.readline().rstrip("\r\n")
    result = {"login": None, "uid": None, "before": None, "after": None, "denied": None}
    cookie = ""
    if password:
        result["login"], cookie = login(host, port, password)
    sock = connect(host, port, cookie)
    # "aiot": 1 says we are aiot's dashboard, so a refused write is answered with "denied".
    sock.sendall(ws.frame(json.dumps({"type": "new", "data": "client", "aiot": 1})))
    websocket_nodes, leds = set(), {}
    for message in messages(sock, time.monotonic() + 60):
        if message.get("type") != "update":
            continue
        uid, endpoint = message.get("uid"), message.get("endpoint")
        if endpoint == "protocol" and message.get("data") == "WebSocket":
            websocket_nodes.add(uid)
        elif endpoint == "led":
            leds[uid] = message.get("data")
        found = [u for u in websocket_nodes if u in leds]
        if found:
            result["uid"] = found[0]
            break
    if result["uid"] is None:
        print(json.dumps(result))
        return
    uid = result["uid"]
    result["before"] = result["after"] = leds[uid]
    target = "0" if leds[uid] == "1" else "1"
    sock.sendall(
        ws.frame(
            json.dumps(
                {"type": "update", "data": {"uid": uid, "endpoint": "led", "payload": target}}
            )
        )
    )
    # Long enough for the node's report of a switched LED; a refused write never brings one.
    for message in messages(sock, time.monotonic() + 8):
        if message.get("type") == "denied":
            result["denied"] = message.get("reason")
        elif message.get("uid") == uid and message.get("endpoint") == "led":
            result["after"] = message.get("data")
            if result["after"] == target:
                break
    # A polite close (1000), so the gateway logs no protocol error.
    mask = os.urandom(4)
    body = (1000).to_bytes(2, "big")
    sock.sendall(bytes([0x88, 0x82]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(body)))
    sock.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
