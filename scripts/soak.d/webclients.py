#!/usr/bin/env python3
"""Web clients for scripts/soak: each one opens a /ws, asks for everything as the dashboard
does ({"type": "new", "data": "client"}) and reads every message. Their counts go to a JSON
status file (rewritten every second, atomically) that the soak script samples; a dropped
connection is counted and reopened, so the soak sees it instead of a silent stop."""

import argparse
import asyncio
import json
import os
import time

from tornado.websocket import websocket_connect


class Client:
    def __init__(self, url):
        self.url = url
        self.connected = False
        self.messages = 0
        self.updates = 0
        self.reconnects = 0
        self.uids = set()

    async def run(self):
        while True:
            try:
                ws = await websocket_connect(self.url, max_message_size=1 << 20)
                await ws.write_message(json.dumps({"type": "new", "data": "client"}))
                self.connected = True
                while True:
                    text = await ws.read_message()
                    if text is None:
                        break
                    self.messages += 1
                    message = json.loads(text)
                    if message.get("type") == "update":
                        self.updates += 1
                    uid = message.get("uid")
                    if uid is not None:
                        self.uids.add(uid)
            except (OSError, ValueError) as error:
                print(f"webclients: {self.url}: {error}", flush=True)
            except Exception as error:  # tornado's closed-stream errors and the like
                print(f"webclients: {self.url}: {type(error).__name__}: {error}", flush=True)
            self.connected = False
            self.reconnects += 1
            await asyncio.sleep(1)

    def status(self):
        return {
            "url": self.url,
            "connected": self.connected,
            "messages": self.messages,
            "updates": self.updates,
            "reconnects": self.reconnects,
            "uids": len(self.uids),
        }


async def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--status", required=True, help="JSON file written every second")
    parser.add_argument("urls", nargs="+", help="one ws://HOST:PORT/ws per client")
    args = parser.parse_args()
    clients = [Client(url) for url in args.urls]
    for client in clients:
        asyncio.ensure_future(client.run())
    started = time.monotonic()
    while True:
        await asyncio.sleep(1)
        status = {
            "elapsed": time.monotonic() - started,
            "clients": [client.status() for client in clients],
        }
        tmp = args.status + ".tmp"
        with open(tmp, "w") as out:
            json.dump(status, out)
        os.replace(tmp, args.status)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
