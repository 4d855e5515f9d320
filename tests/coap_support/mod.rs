//! What the CoAP tests share: a gateway with CoAP on an ephemeral port, a node's socket
//! driven by the test, and the server side of a node.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use aiot::proto::coap::message::{Code, Message, Token, Type};
use serde_json::Value;
use tokio::net::UdpSocket;

use crate::common::{self, Aiot, Peer, TIMEOUT};

/// A gateway with CoAP on an ephemeral port; nodes are reached on `node_port`.
pub struct Gateway {
    pub aiot: Aiot,
    pub web: SocketAddr,
    pub coap: SocketAddr,
    pub _dir: tempfile::TempDir,
}

pub fn gateway(node_port: u16, config: &str, extra: &[&str]) -> Gateway {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = common::config_file(&dir, config);
    let node_port = node_port.to_string();
    let mut args = vec![
        "--config",
        &config,
        "gateway",
        "--bind",
        "127.0.0.1",
        "--gateway-port",
        "0",
        "--web-port",
        "0",
        "--coap-port",
        "0",
        "--coap-node-port",
        &node_port,
        "--mqtt-bind",
        "127.0.0.1",
        "--mqtt-port",
        "0",
        "--mqttsn-bind",
        "127.0.0.1",
        "--mqttsn-port",
        "0",
    ];
    args.extend_from_slice(extra);
    let aiot = Aiot::spawn(&args);
    let web = aiot.listening("web clients");
    let port = aiot.listening("CoAP nodes").port();
    Gateway {
        aiot,
        web,
        coap: SocketAddr::from(([127, 0, 0, 1], port)),
        _dir: dir,
    }
}

/// A node's socket, driven by the test.
pub struct Node {
    pub socket: UdpSocket,
    pub gateway: SocketAddr,
    pub mid: u16,
}

impl Node {
    pub async fn bind(addr: &str, gateway: SocketAddr) -> Node {
        let socket = UdpSocket::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        Node {
            socket,
            gateway,
            mid: 0x1000,
        }
    }

    pub async fn send(&self, datagram: &[u8]) {
        self.socket
            .send_to(datagram, self.gateway)
            .await
            .expect("send");
    }

    pub fn message(&mut self, kind: Type, code: Code, path: &str, payload: &[u8]) -> Message {
        self.mid = self.mid.wrapping_add(1);
        let token = Token::new(&self.mid.to_be_bytes()).expect("token");
        let mut message = Message::new(kind, code, self.mid, token);
        message.set_path(path);
        message.payload = payload.to_vec();
        message
    }

    pub async fn post(&mut self, kind: Type, path: &str, payload: &str) -> Message {
        let message = self.message(kind, Code::POST, path, payload.as_bytes());
        self.send(&message.encode()).await;
        message
    }

    /// The next datagram, decoded; `None` after `timeout`.
    pub async fn recv(&self, timeout: Duration) -> Option<(Message, SocketAddr)> {
        let mut buffer = vec![0u8; 2048];
        let (n, from) = tokio::time::timeout(timeout, self.socket.recv_from(&mut buffer))
            .await
            .ok()?
            .expect("recv");
        Some((
            Message::decode(&buffer[..n]).expect("the gateway sends valid CoAP"),
            from,
        ))
    }

    pub async fn answer_to(&mut self, kind: Type, path: &str, payload: &str) -> Message {
        let sent = self.post(kind, path, payload).await;
        let (answer, _) = self.recv(TIMEOUT).await.expect("an answer");
        assert_eq!(
            answer.token, sent.token,
            "the answer carries the request's token"
        );
        answer
    }
}

/// Messages about `uid` until one matches `last`.
pub async fn about(client: &mut Peer, uid: &str, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let message = client.wait_for(TIMEOUT, |m| m["uid"] == uid).await;
        let done = last(&message);
        seen.push(message);
        if done {
            return seen;
        }
    }
}

/// A node's server side, driven by the test: it sees the gateway's requests and answers them.
pub struct Served {
    pub node: Node,
}

impl Served {
    pub async fn bind(ip: &str, node_port: u16, gateway: SocketAddr) -> Served {
        Served {
            node: Node::bind(&format!("{ip}:{node_port}"), gateway).await,
        }
    }

    /// The gateway's next request; asserts it is CON `method` on `path`.
    pub async fn expect(&self, method: Code, path: &str) -> (Message, SocketAddr) {
        let (request, from) = self
            .node
            .recv(TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("no {method} {path}"));
        assert_eq!(request.kind, Type::Confirmable, "{request:?}");
        assert_eq!(
            (request.code, request.path().as_deref()),
            (method, Some(path)),
            "{request:?}"
        );
        (request, from)
    }

    pub async fn reply(
        &self,
        to: &(Message, SocketAddr),
        code: Code,
        payload: &[u8],
        options: &[(u16, Vec<u8>)],
    ) {
        let mut message = Message::new(Type::Acknowledgement, code, to.0.mid, to.0.token);
        for (number, value) in options {
            message.add_option(*number, value.clone());
        }
        message.payload = payload.to_vec();
        self.node
            .socket
            .send_to(&message.encode(), to.1)
            .await
            .expect("send");
    }
}

/// `aiot node coap` simulated nodes posting to the gateway at `gateway`, from `first` on, each
/// serving on `node_port`; `extra` adds options (`--count`, `--led`, ...).
pub fn nodes(gateway: SocketAddr, first: &str, node_port: u16, extra: &[&str]) -> Aiot {
    let port = gateway.port().to_string();
    let node_port = node_port.to_string();
    let mut args = vec![
        "node",
        "coap",
        "--gateway-host",
        "127.0.0.1",
        "--gateway-port",
        &port,
        "--first-address",
        first,
        "--node-port",
        &node_port,
    ];
    args.extend_from_slice(extra);
    Aiot::spawn(&args)
}
