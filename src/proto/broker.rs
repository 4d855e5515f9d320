//! The broker protocol (protocol.md §1): what gateways, the broker and web clients say to
//! each other over websockets, as typed values with pyaiot's acceptance rules.

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Kind, ProtoError, check_message, shorten, string_field};

/// The uid pyaiot gateways use for their keep-alive `update`.
pub const ALIVE_UID: &str = "alive";
const DST_ALL: &str = "all";

/// Who a node message is for: every web client, or the one client whose `new` asked for a
/// replay of the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dst {
    All,
    Client(String),
}

impl Dst {
    fn parse(object: &mut Map<String, Value>) -> Result<Self, ProtoError> {
        match object.remove("dst") {
            // pyaiot's `out` and `reset` carry no dst; a missing one can only mean everyone.
            None => Ok(Dst::All),
            Some(Value::String(dst)) if dst == DST_ALL => Ok(Dst::All),
            Some(Value::String(client)) => Ok(Dst::Client(client)),
            Some(_) => Err(ProtoError::WrongType {
                field: "dst",
                expected: "a string",
            }),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Dst::All => DST_ALL,
            Dst::Client(client) => client,
        }
    }
}

/// News about a node, as a gateway sends it to the broker and the broker (or a gateway's
/// local endpoint) sends it to web clients.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeMessage {
    New {
        uid: String,
        dst: Dst,
    },
    Update {
        uid: String,
        endpoint: String,
        data: Value,
        dst: Dst,
    },
    Out {
        uid: String,
    },
    Reset {
        uid: String,
    },
    /// `{"type":"update","uid":"alive"}`: the gateway keep-alive, never forwarded.
    Alive,
}

#[derive(Serialize)]
struct WireNode<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    uid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst: Option<&'a str>,
}

impl NodeMessage {
    /// Parses a gateway's message with the broker's rules: pyaiot's `check_message`, then the
    /// fields each kind needs. A missing `dst` means everyone.
    pub fn parse(raw: &str) -> Result<Self, ProtoError> {
        let (kind, mut object) = check_message(raw)?;
        let uid = string_field(&mut object, "uid")?;
        Ok(match kind {
            Kind::Update if uid == ALIVE_UID => NodeMessage::Alive,
            Kind::New => NodeMessage::New {
                dst: Dst::parse(&mut object)?,
                uid,
            },
            Kind::Update => NodeMessage::Update {
                endpoint: string_field(&mut object, "endpoint")?,
                data: object.remove("data").ok_or(ProtoError::Missing("data"))?,
                dst: Dst::parse(&mut object)?,
                uid,
            },
            Kind::Out => NodeMessage::Out { uid },
            Kind::Reset => NodeMessage::Reset { uid },
        })
    }

    /// The JSON text, with keys in pyaiot's order and non-ASCII kept as UTF-8 (pyaiot's
    /// `ensure_ascii=False`).
    pub fn to_json(&self) -> String {
        let wire = match self {
            NodeMessage::New { uid, dst } => WireNode {
                kind: "new",
                uid,
                endpoint: None,
                data: None,
                dst: Some(dst.as_str()),
            },
            NodeMessage::Update {
                uid,
                endpoint,
                data,
                dst,
            } => WireNode {
                kind: "update",
                uid,
                endpoint: Some(endpoint),
                data: Some(data),
                dst: Some(dst.as_str()),
            },
            NodeMessage::Out { uid } => WireNode {
                kind: "out",
                uid,
                endpoint: None,
                data: None,
                dst: None,
            },
            NodeMessage::Reset { uid } => WireNode {
                kind: "reset",
                uid,
                endpoint: None,
                data: None,
                dst: None,
            },
            NodeMessage::Alive => WireNode {
                kind: "update",
                uid: ALIVE_UID,
                endpoint: None,
                data: None,
                dst: None,
            },
        };
        serde_json::to_string(&wire).expect("a tree of strings and JSON values always serializes")
    }

    /// A `new` as the broker tells an aiot dashboard: pyaiot's message with the name of the
    /// gateway the node came from added last. `None` for every other message: those stay
    /// pyaiot's, and pyaiot dashboards only ever get [`Self::to_json`].
    pub fn to_json_with_gateway(&self, gateway: &str) -> Option<String> {
        #[derive(Serialize)]
        struct WireNew<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            uid: &'a str,
            dst: &'a str,
            gateway: &'a str,
        }
        let NodeMessage::New { uid, dst } = self else {
            return None;
        };
        let wire = WireNew {
            kind: "new",
            uid,
            dst: dst.as_str(),
            gateway,
        };
        Some(serde_json::to_string(&wire).expect("strings always serialize"))
    }
}

/// A web client's request to write `payload` to resource `endpoint` of node `uid`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Write {
    pub uid: String,
    pub endpoint: String,
    pub payload: Value,
}

impl Write {
    /// pyaiot's `check_broker_data`: exactly the keys `uid`, `endpoint` and `payload`. We also
    /// want `uid` and `endpoint` to be strings, since no node could match anything else.
    fn from_data(data: Value) -> Result<Self, ProtoError> {
        let Value::Object(mut data) = data else {
            return Err(ProtoError::WrongType {
                field: "data",
                expected: "an object",
            });
        };
        let uid = string_field(&mut data, "uid")?;
        let endpoint = string_field(&mut data, "endpoint")?;
        let payload = data
            .remove("payload")
            .ok_or(ProtoError::Missing("payload"))?;
        if let Some(extra) = data.keys().next() {
            return Err(ProtoError::Unexpected(format!("key '{}'", shorten(extra))));
        }
        Ok(Write {
            uid,
            endpoint,
            payload,
        })
    }
}

/// What a web client says on `/ws`.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// `{"type":"new","data":"client"}`: send me everything you know.
    Hello,
    /// `{"type":"update","data":{"uid":..,"endpoint":..,"payload":..}}`.
    Write(Write),
    /// Valid for pyaiot's `check_message` but nothing any gateway acts on (an `out` from a
    /// client, an update with the wrong keys): logged and ignored, as pyaiot does.
    Ignored(ProtoError),
}

impl ClientMessage {
    /// Errors are the messages pyaiot's broker closes the connection for (1003).
    pub fn parse(raw: &str) -> Result<Self, ProtoError> {
        let (kind, mut object) = check_message(raw)?;
        Ok(match kind {
            Kind::New => ClientMessage::Hello,
            Kind::Update => match object.remove("data") {
                None => ClientMessage::Ignored(ProtoError::Missing("data")),
                Some(data) => match Write::from_data(data) {
                    Ok(write) => ClientMessage::Write(write),
                    Err(why) => ClientMessage::Ignored(why),
                },
            },
            Kind::Out | Kind::Reset => {
                ClientMessage::Ignored(ProtoError::Unexpected("out/reset from a client".into()))
            }
        })
    }
}

/// What the broker forwards to every gateway on a client's behalf; `src` names the client.
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerRequest {
    /// A client connected: replay your cache to `src` (with `dst` = `src`).
    ClientHello { src: String },
    /// A client wants a resource written.
    Write { write: Write, src: Option<String> },
}

#[derive(Serialize)]
struct WireRequest<'a, D: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    data: D,
    #[serde(skip_serializing_if = "Option::is_none")]
    src: Option<&'a str>,
}

impl BrokerRequest {
    pub fn to_json(&self) -> String {
        let json = match self {
            BrokerRequest::ClientHello { src } => serde_json::to_string(&WireRequest {
                kind: "new",
                data: "client",
                src: Some(src),
            }),
            BrokerRequest::Write { write, src } => serde_json::to_string(&WireRequest {
                kind: "update",
                data: write,
                src: src.as_deref(),
            }),
        };
        json.expect("a tree of strings and JSON values always serializes")
    }

    /// A gateway reading what the broker sent. `Ok(None)` is a well-formed message the gateway
    /// has nothing to do with (pyaiot logs and ignores those too).
    pub fn parse(raw: &str) -> Result<Option<Self>, ProtoError> {
        let (kind, mut object) = check_message(raw)?;
        let src = match object.remove("src") {
            Some(Value::String(src)) => Some(src),
            _ => None,
        };
        Ok(match kind {
            Kind::New => src.map(|src| BrokerRequest::ClientHello { src }),
            Kind::Update => match object.remove("data").map(Write::from_data) {
                Some(Ok(write)) => Some(BrokerRequest::Write { write, src }),
                _ => None,
            },
            Kind::Out | Kind::Reset => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(message: &NodeMessage) {
        let text = message.to_json();
        assert_eq!(&NodeMessage::parse(&text).expect(&text), message);
    }

    #[test]
    fn parses_the_literal_messages_pyaiot_gateways_send() {
        // Strings as pyaiot's `Message` builds them (json.dumps, ensure_ascii=False).
        assert_eq!(
            NodeMessage::parse(r#"{"type": "new", "uid": "2f0a", "dst": "all"}"#),
            Ok(NodeMessage::New {
                uid: "2f0a".into(),
                dst: Dst::All
            })
        );
        assert_eq!(
            NodeMessage::parse(
                r#"{"type": "update", "uid": "2f0a", "endpoint": "temperature", "data": "23°C", "dst": "9b1c"}"#
            ),
            Ok(NodeMessage::Update {
                uid: "2f0a".into(),
                endpoint: "temperature".into(),
                data: json!("23°C"),
                dst: Dst::Client("9b1c".into()),
            })
        );
        assert_eq!(
            NodeMessage::parse(r#"{"type": "out", "uid": "2f0a"}"#),
            Ok(NodeMessage::Out { uid: "2f0a".into() })
        );
        assert_eq!(
            NodeMessage::parse(r#"{"type": "reset", "uid": "2f0a"}"#),
            Ok(NodeMessage::Reset { uid: "2f0a".into() })
        );
        assert_eq!(
            NodeMessage::parse(r#"{"type": "update", "uid": "alive"}"#),
            Ok(NodeMessage::Alive)
        );
    }

    #[test]
    fn values_may_be_any_json_and_survive_a_round_trip() {
        for data in [
            json!("température: 23 °C — ☀"),
            json!({"x": 1.5, "y": [1, 2, {"z": null}]}),
            json!([1, "two", 3.0]),
            json!(42),
            json!(-0.25),
            json!(true),
            json!(null),
        ] {
            round_trip(&NodeMessage::Update {
                uid: "node-1".into(),
                endpoint: "reading".into(),
                data,
                dst: Dst::All,
            });
        }
        round_trip(&NodeMessage::New {
            uid: "ünï".into(),
            dst: Dst::Client("c".into()),
        });
        round_trip(&NodeMessage::Out { uid: "n".into() });
        round_trip(&NodeMessage::Reset { uid: "n".into() });
        round_trip(&NodeMessage::Alive);
    }

    #[test]
    fn serializes_like_pyaiot_in_key_order_and_utf8() {
        let update = NodeMessage::Update {
            uid: "u".into(),
            endpoint: "temperature".into(),
            data: json!("23°C"),
            dst: Dst::All,
        };
        assert_eq!(
            update.to_json(),
            r#"{"type":"update","uid":"u","endpoint":"temperature","data":"23°C","dst":"all"}"#
        );
        assert_eq!(
            NodeMessage::Alive.to_json(),
            r#"{"type":"update","uid":"alive"}"#
        );
        assert_eq!(
            NodeMessage::Out { uid: "u".into() }.to_json(),
            r#"{"type":"out","uid":"u"}"#
        );
    }

    #[test]
    fn a_new_for_an_aiot_dashboard_is_pyaiots_with_the_gateway_added_last() {
        let new = NodeMessage::New {
            uid: "u".into(),
            dst: Dst::Client("c".into()),
        };
        assert_eq!(
            new.to_json_with_gateway("küche \"1\"").as_deref(),
            Some(r#"{"type":"new","uid":"u","dst":"c","gateway":"küche \"1\""}"#)
        );
        assert_eq!(new.to_json(), r#"{"type":"new","uid":"u","dst":"c"}"#);
        let update = NodeMessage::Update {
            uid: "u".into(),
            endpoint: "led".into(),
            data: json!("1"),
            dst: Dst::All,
        };
        assert_eq!(update.to_json_with_gateway("kitchen"), None);
        assert_eq!(
            NodeMessage::Out { uid: "u".into() }.to_json_with_gateway("kitchen"),
            None
        );
    }

    #[test]
    fn gateway_messages_missing_fields_or_wrong_types_are_refused() {
        for (raw, expected) in [
            (r#"{"type":"new"}"#, ProtoError::Missing("uid")),
            (
                r#"{"type":"new","uid":7}"#,
                ProtoError::WrongType {
                    field: "uid",
                    expected: "a string",
                },
            ),
            (
                r#"{"type":"update","uid":"u","data":1}"#,
                ProtoError::Missing("endpoint"),
            ),
            (
                r#"{"type":"update","uid":"u","endpoint":"e"}"#,
                ProtoError::Missing("data"),
            ),
            (
                r#"{"type":"new","uid":"u","dst":["all"]}"#,
                ProtoError::WrongType {
                    field: "dst",
                    expected: "a string",
                },
            ),
        ] {
            assert_eq!(NodeMessage::parse(raw), Err(expected), "{raw}");
        }
    }

    #[test]
    fn client_messages_follow_check_broker_data() {
        assert_eq!(
            ClientMessage::parse(r#"{"type": "new", "data": "client"}"#),
            Ok(ClientMessage::Hello)
        );
        assert_eq!(
            ClientMessage::parse(
                r#"{"type": "update", "data": {"uid": "u", "endpoint": "led", "payload": "1"}}"#
            ),
            Ok(ClientMessage::Write(Write {
                uid: "u".into(),
                endpoint: "led".into(),
                payload: json!("1"),
            }))
        );
        for ignored in [
            r#"{"type":"update","data":{"uid":"u","endpoint":"led"}}"#,
            r#"{"type":"update","data":{"uid":"u","endpoint":"led","payload":1,"extra":2}}"#,
            r#"{"type":"update","data":"led"}"#,
            r#"{"type":"update"}"#,
            r#"{"type":"out","uid":"u"}"#,
        ] {
            assert!(
                matches!(ClientMessage::parse(ignored), Ok(ClientMessage::Ignored(_))),
                "{ignored}"
            );
        }
        assert!(ClientMessage::parse(r#"{"type":"subscribe"}"#).is_err());
        assert!(ClientMessage::parse("not json").is_err());
    }

    #[test]
    fn broker_requests_round_trip_as_a_gateway_reads_them() {
        let hello = BrokerRequest::ClientHello { src: "c1".into() };
        assert_eq!(
            hello.to_json(),
            r#"{"type":"new","data":"client","src":"c1"}"#
        );
        assert_eq!(BrokerRequest::parse(&hello.to_json()), Ok(Some(hello)));
        let write = BrokerRequest::Write {
            write: Write {
                uid: "u".into(),
                endpoint: "led".into(),
                payload: json!("0"),
            },
            src: Some("c1".into()),
        };
        assert_eq!(
            write.to_json(),
            r#"{"type":"update","data":{"uid":"u","endpoint":"led","payload":"0"},"src":"c1"}"#
        );
        assert_eq!(BrokerRequest::parse(&write.to_json()), Ok(Some(write)));
        // What a pyaiot broker forwards from clients that gateways have no use for.
        assert_eq!(
            BrokerRequest::parse(r#"{"type":"out","uid":"x","src":"c"}"#),
            Ok(None)
        );
        assert_eq!(
            BrokerRequest::parse(r#"{"type":"update","data":{"uid":"u"},"src":"c"}"#),
            Ok(None)
        );
    }
}
