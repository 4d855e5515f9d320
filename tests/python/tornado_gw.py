"""A tornado websocket server that does what pyaiot's broker does on /gw, for interop tests.

pyaiot's broker is a tornado application: it reads the token from Sec-WebSocket-Protocol
(split on ','), answers 401 unless it is `token, <Fernet token of secret>`, and, like every
tornado handler that does not override select_subprotocol, selects no subprotocol in its
answer. This script does the same, prints every message the gateway sends as one JSON line
on stdout, and acts as a web client would through the broker: it sends a client's `new` (the gateway must replay its cache to that client) and an
LED write for that node, once the gateway has reported the node's LED.

    tornado_gw.py KEY_FILE    prints "listening PORT" first
"""

import asyncio
import configparser
import json
import sys

from cryptography.fernet import Fernet, InvalidToken
from tornado import web, websocket

CLIENT = "tornado-client"


def load_keys(path):
    config = configparser.ConfigParser()
    config.read(path)
    return config["keys"]["private"], config["keys"]["secret"]


class GatewayHandler(websocket.WebSocketHandler):
    asked = False

    async def get(self, *args, **kwargs):
        subprotocols = self.request.headers.get("Sec-WebSocket-Protocol", "").split(",")
        private, secret = self.application.keys
        try:
            ok = (len(subprotocols) == 2 and subprotocols[0].strip() == "token"
                  and Fernet(private.encode()).decrypt(subprotocols[1].strip().encode())
                  == secret.encode())
        except InvalidToken:
            ok = False
        if not ok:
            self.set_status(401)
            self.finish("Invalid token")
            return
        await super().get(*args, **kwargs)

    def on_message(self, raw):
        message = json.loads(raw)
        print(json.dumps(message, ensure_ascii=False), flush=True)
        # Ask once the node's LED is known, so the replay has something to show.
        if (message.get("type") == "update" and message.get("endpoint") == "led"
                and message.get("dst") == "all" and not self.asked):
            self.asked = True
            self.write_message(json.dumps({"type": "new", "data": "client", "src": CLIENT}))
            self.write_message(json.dumps({
                "type": "update",
                "data": {"uid": message["uid"], "endpoint": "led", "payload": "1"},
                "src": CLIENT,
            }))


async def main():
    app = web.Application([(r"/gw", GatewayHandler)])
    app.keys = load_keys(sys.argv[1])
    server = app.listen(0, address="127.0.0.1")
    port = next(iter(server._sockets.values())).getsockname()[1]
    print(f"listening {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
