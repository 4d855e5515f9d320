"""A minimal MQTT-SN 1.2 client, written straight from the specification's byte layouts
(section 5.4), as a peer for aiot's MQTT-SN gateway tests that shares no code with aiot.

Scenarios (first argument), each printing JSON lines on stdout:
  node    a pyaiot MQTT node over MQTT-SN: the WILL exchange, SUBSCRIBE (an exact topic and
          a wildcard one, so LED sets come by gateway REGISTER + PUBLISH), REGISTER, PUBLISH,
          discovery answers, the LED follows sets; pings until --stop-pinging-after.
  probe   SEARCHGW/GWINFO, QoS -1 with a predefined id, short topic ids, QoS 1 PUBACK,
          PINGREQ, will updates, UNSUBSCRIBE, DISCONNECT.
  hostile malformed datagrams, wrong lengths, unknown types, oversize, a REGISTER flood and
          many fake clients; prints what the gateway answered.
"""

import argparse
import json
import socket
import struct
import sys
import time

ADVERTISE, SEARCHGW, GWINFO = 0x00, 0x01, 0x02
CONNECT, CONNACK = 0x04, 0x05
WILLTOPICREQ, WILLTOPIC, WILLMSGREQ, WILLMSG = 0x06, 0x07, 0x08, 0x09
REGISTER, REGACK, PUBLISH, PUBACK = 0x0A, 0x0B, 0x0C, 0x0D
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 0x12, 0x13, 0x14, 0x15
PINGREQ, PINGRESP, DISCONNECT = 0x16, 0x17, 0x18
WILLTOPICUPD, WILLTOPICRESP, WILLMSGUPD, WILLMSGRESP = 0x1A, 0x1B, 0x1C, 0x1D

QOS0, QOS1, QOS_MINUS1 = 0x00, 0x20, 0x60
CLEAN, WILL = 0x04, 0x08
NORMAL, PREDEFINED, SHORT = 0x00, 0x01, 0x02


def out(**event):
    print(json.dumps(event), flush=True)


def frame(msg_type, body=b""):
    length = len(body) + 2
    if length <= 255:
        return bytes([length, msg_type]) + body
    return b"\x01" + struct.pack(">H", length + 2) + bytes([msg_type]) + body


def parse(datagram):
    """(type, body) of a datagram, checking its length field."""
    if datagram[0] == 0x01:
        (length,) = struct.unpack(">H", datagram[1:3])
        assert length == len(datagram), datagram
        return datagram[3], datagram[4:]
    assert datagram[0] == len(datagram), datagram
    return datagram[1], datagram[2:]


class Client:
    def __init__(self, gateway, timeout=1.0):
        family = socket.AF_INET6 if ":" in gateway[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.connect(gateway)
        self.sock.settimeout(timeout)
        self.msg_id = 0
        self.backlog = []

    def next_id(self):
        self.msg_id = self.msg_id % 0xFFFF + 1
        return self.msg_id

    def send(self, msg_type, body=b""):
        self.sock.send(frame(msg_type, body))

    def recv(self, timeout=None):
        if self.backlog:
            return self.backlog.pop(0)
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            return parse(self.sock.recv(70000))
        except socket.timeout:
            return None

    def expect(self, want, match=lambda body: True, timeout=3.0, resend=None):
        """The next message of type `want` whose body `match`es; others are kept."""
        deadline = time.monotonic() + timeout
        kept = []
        last_send = time.monotonic()
        while time.monotonic() < deadline:
            if resend and time.monotonic() - last_send > 1.0:
                resend()
                last_send = time.monotonic()
            try:
                self.sock.settimeout(0.2)
                message = parse(self.sock.recv(70000))
            except socket.timeout:
                continue
            if message[0] == want and match(message[1]):
                self.backlog = kept + self.backlog
                return message[1]
            kept.append(message)
        self.backlog = kept + self.backlog
        raise TimeoutError(f"no message 0x{want:02x}")

    def connect(self, client_id, duration, will=None):
        flags = CLEAN | (WILL if will else 0)
        body = bytes([flags, 0x01]) + struct.pack(">H", duration) + client_id.encode()
        self.send(CONNECT, body)
        if will:
            self.expect(WILLTOPICREQ)
            self.send(WILLTOPIC, bytes([QOS1]) + will[0].encode())
            self.expect(WILLMSGREQ)
            self.send(WILLMSG, will[1].encode())
        body = self.expect(CONNACK, timeout=10)
        return body[0]

    def register(self, topic):
        msg_id = self.next_id()
        body = struct.pack(">HH", 0, msg_id) + topic.encode()
        self.send(REGISTER, body)
        ack = self.expect(REGACK, lambda b: struct.unpack(">H", b[2:4])[0] == msg_id,
                          resend=lambda: self.send(REGISTER, body))
        topic_id, _, code = struct.unpack(">HHB", ack)
        return topic_id, code

    def subscribe(self, topic, qos=QOS1):
        msg_id = self.next_id()
        body = bytes([qos | NORMAL]) + struct.pack(">H", msg_id) + topic.encode()
        self.send(SUBSCRIBE, body)
        ack = self.expect(SUBACK, lambda b: struct.unpack(">H", b[3:5])[0] == msg_id)
        _, topic_id, _, code = struct.unpack(">BHHB", ack)
        return topic_id, code

    def publish(self, topic_id, data, qos=QOS0, id_type=NORMAL, msg_id=None):
        if qos == QOS1 and msg_id is None:
            msg_id = self.next_id()
        msg_id = msg_id or 0
        body = bytes([qos | id_type]) + struct.pack(">HH", topic_id, msg_id) + data
        self.send(PUBLISH, body)
        if qos == QOS1:
            ack = self.expect(PUBACK, lambda b: struct.unpack(">H", b[2:4])[0] == msg_id)
            return struct.unpack(">HHB", ack)[2]
        return None


def node(args):
    gw = Client((args.host, args.port))
    node_id = args.id
    code = gw.connect(node_id, args.keep_alive, will=(f"node/{node_id}/will", "gone"))
    out(event="connack", code=code)
    # Exact topic: the id comes in SUBACK. Wildcard: id 0, the gateway REGISTERs each topic.
    discover_id, code = gw.subscribe(f"gateway/{node_id}/discover")
    out(event="suback", topic="discover", topic_id=discover_id, code=code)
    _, code = gw.subscribe(f"gateway/{node_id}/+/set")
    out(event="suback", topic="set", code=code)
    check_sub, _ = gw.subscribe("gateway/check", QOS0)
    ids = {}
    for name in ["check", "resources", "led", "temperature"]:
        topic = "node/check" if name == "check" else f"node/{node_id}/{name}"
        topic_id, code = gw.register(topic)
        assert code == 0, (topic, code)
        ids[name] = topic_id
    out(event="registered", ids=ids)
    incoming = {discover_id: f"gateway/{node_id}/discover", check_sub: "gateway/check"}
    led = "0"

    def value(name):
        return json.dumps({"value": led if name == "led" else "21°C"}).encode()

    code = gw.publish(ids["check"], json.dumps({"id": node_id}).encode(), QOS1)
    out(event="puback", topic="node/check", code=code)
    start = time.monotonic()
    last_ping = last_reading = time.monotonic()
    while True:
        now = time.monotonic()
        if args.stop_pinging_after and now - start > args.stop_pinging_after:
            out(event="silent")
            time.sleep(3600)
        if now - last_ping > args.keep_alive / 2:
            gw.send(PINGREQ)
            last_ping = now
        if now - last_reading > 1.0:
            gw.publish(ids["temperature"], value("temperature"))
            last_reading = now
        message = gw.recv(timeout=0.2)
        if message is None:
            continue
        msg_type, body = message
        if msg_type == PINGRESP:
            out(event="pingresp")
        elif msg_type == PINGREQ:
            gw.send(PINGRESP)
            out(event="pinged")
        elif msg_type == REGISTER:
            topic_id, msg_id = struct.unpack(">HH", body[:4])
            incoming[topic_id] = body[4:].decode()
            gw.send(REGACK, struct.pack(">HHB", topic_id, msg_id, 0))
            out(event="register", topic=body[4:].decode(), topic_id=topic_id)
        elif msg_type == PUBLISH:
            flags, topic_id, msg_id = struct.unpack(">BHH", body[:5])
            data = body[5:]
            if flags & 0x60 == QOS1:
                gw.send(PUBACK, struct.pack(">HHB", topic_id, msg_id, 0))
            topic = incoming.get(topic_id)
            if topic == "gateway/check":
                gw.publish(ids["check"], json.dumps({"id": node_id}).encode())
            elif topic == f"gateway/{node_id}/discover":
                if data == b"resources":
                    gw.publish(ids["resources"], b'["led","temperature"]')
                else:
                    for name in ["led", "temperature"]:
                        gw.publish(ids[name], value(name))
            elif topic == f"gateway/{node_id}/led/set":
                led = data.decode()
                out(event="led", value=led)
                code = gw.publish(ids["led"], value("led"), QOS1)
                out(event="puback", topic="led", code=code)
            else:
                out(event="unknown publish", topic_id=topic_id)
        elif msg_type == DISCONNECT:
            out(event="disconnect")
            return


def probe(args):
    results = {}
    gw = Client((args.host, args.port))
    gw.send(SEARCHGW, bytes([1]))
    body = gw.expect(GWINFO)
    results["gwinfo"] = body[0]
    # QoS -1: no connection; predefined id 1 is node/check.
    gw.publish(1, json.dumps({"id": args.id}).encode(), QOS_MINUS1, PREDEFINED)
    results["connack"] = gw.connect(args.id + "-p", 30)
    # A short topic id ("sn"), subscribed and published to: it comes back as a short id.
    msg_id = gw.next_id()
    gw.send(SUBSCRIBE, bytes([QOS1 | SHORT]) + struct.pack(">H", msg_id) + b"sn")
    ack = gw.expect(SUBACK)
    results["short_suback"] = ack[5]
    results["short_puback"] = gw.publish(struct.unpack(">H", b"sn")[0], b"hi", QOS1, SHORT)
    body = gw.expect(PUBLISH, lambda b: b[0] & 0x03 == SHORT)
    results["short_back"] = [body[1:3].decode(), body[5:].decode()]
    # An unregistered topic id is refused with "invalid topic id" (2).
    results["unknown_id"] = gw.publish(999, b"x", QOS1)
    # Retransmission with the same msg id: acknowledged twice, published once.
    topic_id, _ = gw.register("probe/dup")
    gw.subscribe("probe/dup", QOS0)
    for _ in range(2):
        results.setdefault("dup_pubacks", []).append(
            gw.publish(topic_id, b"once", QOS1, msg_id=777))
    time.sleep(0.5)
    copies = 0
    while True:
        message = gw.recv(timeout=0.3)
        if message is None:
            break
        if message[0] == PUBLISH and message[1][5:] == b"once":
            copies += 1
    results["dup_copies"] = copies
    gw.send(PINGREQ)
    gw.expect(PINGRESP)
    results["pingresp"] = True
    gw.send(WILLTOPICUPD, bytes([QOS0]) + b"probe/will")
    results["willtopicresp"] = gw.expect(WILLTOPICRESP)[0]
    gw.send(WILLMSGUPD, b"bye")
    results["willmsgresp"] = gw.expect(WILLMSGRESP)[0]
    msg_id = gw.next_id()
    gw.send(UNSUBSCRIBE, bytes([NORMAL]) + struct.pack(">H", msg_id) + b"probe/dup")
    gw.expect(UNSUBACK)
    results["unsuback"] = True
    gw.send(DISCONNECT)
    gw.expect(DISCONNECT)
    results["disconnect"] = True
    # Now unknown to the gateway: told to connect again.
    gw.send(PINGREQ)
    gw.expect(DISCONNECT)
    results["told_to_connect"] = True
    out(**results)


def hostile(args):
    gw = Client((args.host, args.port), timeout=0.3)
    garbage = [
        b"",                              # empty
        b"\x05",                          # too short
        b"\x09\x16",                      # length says 9, has 2
        b"\x01\x00",                      # 3-byte form cut
        b"\x01\x00\x09\x16",              # 3-byte form, wrong length
        b"\x02\x03",                      # unknown type 0x03
        b"\x02\x11",                      # unknown type 0x11
        b"\x02\xff",                      # unknown type 0xff
        b"\x03\x17\x00",                  # PINGRESP with a body
        b"\x06\x04\x00\x01\x00\x05",      # CONNECT without client id
        b"\x07\x04\x00\x09\x00\x05x",     # CONNECT, bad protocol id
        b"\x07\x0c\x03\x00\x01\x00\x01",  # PUBLISH, reserved topic id type
        bytes([0x30, 0x04, 0x00, 0x01, 0x00, 0x05]) + b"a" * 42,  # client id too long
        b"\x02\xfe",                      # broken forwarder envelope
        frame(PUBLISH, b"\x00\x00\x01\x00\x00" + b"x" * 4000),  # oversize
        bytes(range(256)) * 8,            # noise
    ]
    for datagram in garbage:
        gw.sock.send(datagram)
    answers = 0
    while gw.recv(timeout=0.3) is not None:
        answers += 1
    connack = gw.connect("flooder", 60)
    refused = accepted = 0
    for i in range(args.flood):
        topic_id, code = gw.register(f"flood/{i}")
        if code == 0:
            accepted += 1
        else:
            refused += 1
    gw.send(DISCONNECT)
    gw.expect(DISCONNECT)
    clients = []
    fake = {"accepted": 0, "congestion": 0}
    for i in range(args.fake_clients):
        c = Client((args.host, args.port), timeout=2)
        code = c.connect(f"fake-{i}", 60)
        fake["accepted" if code == 0 else "congestion"] += 1
        clients.append(c)
    out(garbage_answers=answers, connack=connack, flood_accepted=accepted,
        flood_refused=refused, fake=fake)
    sys.stdout.flush()
    time.sleep(args.hold)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["node", "probe", "hostile"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--id", default="py1")
    parser.add_argument("--keep-alive", type=int, default=10)
    parser.add_argument("--stop-pinging-after", type=float, default=0)
    parser.add_argument("--flood", type=int, default=200)
    parser.add_argument("--fake-clients", type=int, default=10)
    parser.add_argument("--hold", type=float, default=30)
    args = parser.parse_args()
    {"node": node, "probe": probe, "hostile": hostile}[args.scenario](args)


if __name__ == "__main__":
    main()
