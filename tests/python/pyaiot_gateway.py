"""A gateway as pyaiot's speaks to a broker's /gw, for interop tests: tornado's websocket
client, the token `Fernet(private).encrypt(secret)` from a pyaiot key file, one node
announced with `new` and a temperature `update`, and answers to a client's `new` with a
replay addressed to that client.

    pyaiot_gateway.py URL KEY_FILE UID    prints "connected", or "refused CODE" and exits 3
"""

import asyncio
import configparser
import json
import sys

from cryptography.fernet import Fernet
from tornado import httpclient, websocket


def token(path):
    config = configparser.ConfigParser()
    config.read(path)
    keys = config["keys"]
    return Fernet(keys["private"].encode()).encrypt(keys["secret"].encode()).decode()


def node(uid, dst):
    return [
        {"type": "new", "uid": uid, "dst": dst},
        {"type": "update", "uid": uid, "endpoint": "protocol", "data": "CoAP", "dst": dst},
        {"type": "update", "uid": uid, "endpoint": "temperature", "data": "23°C", "dst": dst},
    ]


async def main():
    url, key_file, uid = sys.argv[1:4]
    try:
        conn = await websocket.websocket_connect(url, subprotocols=["token", token(key_file)])
    except httpclient.HTTPClientError as error:
        print(f"refused {error.code}", flush=True)
        sys.exit(3)
    print("connected", flush=True)
    for message in node(uid, "all"):
        await conn.write_message(json.dumps(message))
    while True:
        raw = await conn.read_message()
        if raw is None:
            print("closed", flush=True)
            return
        message = json.loads(raw)
        if message.get("type") == "new" and message.get("data") == "client":
            for reply in node(uid, message["src"]):
                await conn.write_message(json.dumps(reply))


if __name__ == "__main__":
    asyncio.run(main())
