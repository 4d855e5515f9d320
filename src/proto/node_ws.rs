//! The websocket node protocol (protocol.md §4): a node on the gateway's `/node` endpoint.

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Kind, ProtoError, check_message};

/// The gateway's discovery request, sent when a node connects.
pub const DISCOVER: &str = r#"{"request":"discover"}"#;

/// What a node sends.
#[derive(Debug, Clone, PartialEq)]
pub enum FromNode {
    /// `{"type":"update","data":{"<resource>":<value>, ...}}`: each key is a resource.
    Update(Map<String, Value>),
    /// Any other kind `check_message` lets through; pyaiot ignores those.
    Ignored(Kind),
}

impl FromNode {
    pub fn parse(raw: &str) -> Result<Self, ProtoError> {
        let (kind, mut object) = check_message(raw)?;
        if kind != Kind::Update {
            return Ok(FromNode::Ignored(kind));
        }
        match object.remove("data") {
            Some(Value::Object(resources)) => Ok(FromNode::Update(resources)),
            Some(_) => Err(ProtoError::WrongType {
                field: "data",
                expected: "an object",
            }),
            None => Err(ProtoError::Missing("data")),
        }
    }

    /// A node's update, as the simulated nodes send it.
    pub fn update_json(resources: &Map<String, Value>) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            data: &'a Map<String, Value>,
        }
        serde_json::to_string(&Wire {
            kind: "update",
            data: resources,
        })
        .expect("a JSON object always serializes")
    }
}

/// What the gateway sends a node: discovery, or a write to one of its resources.
#[derive(Debug, Clone, PartialEq)]
pub enum ToNode {
    Discover,
    Write { endpoint: String, payload: Value },
}

#[derive(Serialize)]
struct WireWrite<'a> {
    endpoint: &'a str,
    payload: &'a Value,
}

impl ToNode {
    pub fn to_json(&self) -> String {
        match self {
            ToNode::Discover => DISCOVER.to_owned(),
            ToNode::Write { endpoint, payload } => {
                serde_json::to_string(&WireWrite { endpoint, payload })
                    .expect("a string and a JSON value always serialize")
            }
        }
    }

    /// A node reading what its gateway sent.
    pub fn parse(raw: &str) -> Result<Self, ProtoError> {
        let value: Value = serde_json::from_str(raw)
            .map_err(|e| ProtoError::NotJson(super::shorten(&e.to_string())))?;
        let Value::Object(mut object) = value else {
            return Err(ProtoError::NotObject);
        };
        if object.get("request").and_then(Value::as_str) == Some("discover") {
            return Ok(ToNode::Discover);
        }
        let endpoint = super::string_field(&mut object, "endpoint")?;
        let payload = object
            .remove("payload")
            .ok_or(ProtoError::Missing("payload"))?;
        Ok(ToNode::Write { endpoint, payload })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_pyaiot_ws_test_client_messages() {
        let raw = r#"{"type": "update", "data": {"node": "fd00:aaaa:bbbb::1", "name": "websocket", "led": "0", "os": "riot"}}"#;
        let FromNode::Update(resources) = FromNode::parse(raw).expect("valid") else {
            panic!("not an update");
        };
        assert_eq!(resources.len(), 4);
        assert_eq!(resources["led"], json!("0"));
        let keys: Vec<&str> = resources.keys().map(String::as_str).collect();
        assert_eq!(keys, ["node", "name", "led", "os"], "order kept");
    }

    #[test]
    fn refuses_bad_node_messages() {
        assert!(matches!(FromNode::parse("{"), Err(ProtoError::NotJson(_))));
        assert_eq!(FromNode::parse("[]"), Err(ProtoError::NotObject));
        assert_eq!(
            FromNode::parse(r#"{"type":"update","data":[1]}"#),
            Err(ProtoError::WrongType {
                field: "data",
                expected: "an object"
            })
        );
        assert_eq!(
            FromNode::parse(r#"{"type":"update"}"#),
            Err(ProtoError::Missing("data"))
        );
        assert_eq!(
            FromNode::parse(r#"{"type":"out"}"#),
            Ok(FromNode::Ignored(Kind::Out))
        );
    }

    #[test]
    fn gateway_messages_are_what_pyaiot_sends() {
        assert_eq!(ToNode::Discover.to_json(), r#"{"request":"discover"}"#);
        let write = ToNode::Write {
            endpoint: "led".into(),
            payload: json!("1"),
        };
        assert_eq!(write.to_json(), r#"{"endpoint":"led","payload":"1"}"#);
        assert_eq!(ToNode::parse(&write.to_json()), Ok(write));
        assert_eq!(ToNode::parse(DISCOVER), Ok(ToNode::Discover));
    }
}
