//! pyaiot's MQTT topic scheme (protocol.md §3), sans-IO: a topic and a payload in, what a
//! node said out; and the topics and payloads the gateway publishes.

use serde_json::Value;

/// Nodes publish `{"id":"<id>"}` here every 30 s.
pub const NODE_CHECK: &str = "node/check";
/// The gateway publishes here (empty) to ask every node for a `node/check`.
pub const GATEWAY_CHECK: &str = "gateway/check";
/// Largest payload read from a node; larger ones are dropped.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Longest node id and resource name accepted.
pub const MAX_NAME: usize = 128;

/// What a node said.
#[derive(Debug, Clone, PartialEq)]
pub enum FromNode {
    /// `node/check` `{"id":"<id>"}`: the node is alive.
    Check { id: String },
    /// `node/<id>/resources` `["name", ...]`: the answer to a `discover resources`.
    Resources { id: String, resources: Vec<String> },
    /// `node/<id>/<resource>` `{"value": v}`.
    Value {
        id: String,
        resource: String,
        value: Value,
    },
}

/// Why a message from a node was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MqttError {
    #[error("unknown topic")]
    UnknownTopic,
    #[error("payload larger than {MAX_PAYLOAD} bytes")]
    Oversize,
    #[error("payload is not JSON")]
    NotJson,
    #[error("payload has the wrong shape: {0}")]
    WrongShape(&'static str),
    #[error("invalid node id or resource name")]
    InvalidName,
}

/// A node id or resource name that is safe inside a topic: not empty, no wildcard or level
/// separator, no control characters, at most [`MAX_NAME`] bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name
            .chars()
            .any(|c| c == '/' || c == '+' || c == '#' || c.is_control())
}

/// Reads one message a node published.
pub fn parse(topic: &str, payload: &[u8]) -> Result<FromNode, MqttError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(MqttError::Oversize);
    }
    let mut levels = topic.split('/');
    let (Some("node"), Some(second), third, None) =
        (levels.next(), levels.next(), levels.next(), levels.next())
    else {
        return Err(MqttError::UnknownTopic);
    };
    let json = || serde_json::from_slice::<Value>(payload).map_err(|_| MqttError::NotJson);
    match (second, third) {
        ("check", None) => {
            let Value::Object(mut object) = json()? else {
                return Err(MqttError::WrongShape("node/check needs an object"));
            };
            match object.remove("id") {
                Some(Value::String(id)) if valid_name(&id) => Ok(FromNode::Check { id }),
                Some(Value::String(_)) => Err(MqttError::InvalidName),
                _ => Err(MqttError::WrongShape("node/check needs a string id")),
            }
        }
        (id, Some(resource)) if valid_name(id) && valid_name(resource) => {
            if resource == "resources" {
                let Value::Array(items) = json()? else {
                    return Err(MqttError::WrongShape("resources needs an array"));
                };
                let mut resources = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(name) if valid_name(&name) && name != "resources" => {
                            if !resources.contains(&name) {
                                resources.push(name);
                            }
                        }
                        Value::String(_) => return Err(MqttError::InvalidName),
                        _ => return Err(MqttError::WrongShape("resource names are strings")),
                    }
                }
                Ok(FromNode::Resources {
                    id: id.to_owned(),
                    resources,
                })
            } else {
                let Value::Object(mut object) = json()? else {
                    return Err(MqttError::WrongShape("a value needs an object"));
                };
                let value = object
                    .remove("value")
                    .ok_or(MqttError::WrongShape("a value needs a 'value' key"))?;
                Ok(FromNode::Value {
                    id: id.to_owned(),
                    resource: resource.to_owned(),
                    value,
                })
            }
        }
        (_, Some(_)) => Err(MqttError::InvalidName),
        _ => Err(MqttError::UnknownTopic),
    }
}

/// `node/<id>/resources`, where a node answers `discover resources`.
pub fn resources_topic(id: &str) -> String {
    format!("node/{id}/resources")
}

/// `node/<id>/<resource>`, where a node publishes a value.
pub fn value_topic(id: &str, resource: &str) -> String {
    format!("node/{id}/{resource}")
}

/// `gateway/<id>/discover`, with `resources` or `values`.
pub fn discover_topic(id: &str) -> String {
    format!("gateway/{id}/discover")
}

/// `gateway/<id>/<resource>/set`, a write.
pub fn set_topic(id: &str, resource: &str) -> String {
    format!("gateway/{id}/{resource}/set")
}

/// The payload of a write: a string as is (LED `1`/`0`, text), anything else as JSON.
pub fn set_payload(value: &Value) -> Vec<u8> {
    match value {
        Value::String(text) => text.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_three_node_messages() {
        assert_eq!(
            parse("node/check", br#"{"id":"n1"}"#),
            Ok(FromNode::Check { id: "n1".into() })
        );
        assert_eq!(
            parse("node/n1/resources", br#"["led","temperature","led"]"#),
            Ok(FromNode::Resources {
                id: "n1".into(),
                resources: vec!["led".into(), "temperature".into()]
            })
        );
        assert_eq!(
            parse("node/n1/temperature", r#"{"value":"23°C"}"#.as_bytes()),
            Ok(FromNode::Value {
                id: "n1".into(),
                resource: "temperature".into(),
                value: json!("23°C")
            })
        );
    }

    #[test]
    fn drops_what_is_not_the_scheme() {
        assert_eq!(parse("node/check", b"hello"), Err(MqttError::NotJson));
        assert!(parse("node/check", b"[]").is_err());
        assert_eq!(
            parse("node/check", br#"{"id":"a/b"}"#),
            Err(MqttError::InvalidName)
        );
        assert!(parse("node/check", br#"{"id":5}"#).is_err());
        assert_eq!(parse("other/x", b"{}"), Err(MqttError::UnknownTopic));
        assert_eq!(parse("node", b"{}"), Err(MqttError::UnknownTopic));
        assert_eq!(parse("node/a/b/c", b"{}"), Err(MqttError::UnknownTopic));
        assert_eq!(parse("node/n1", b"{}"), Err(MqttError::UnknownTopic));
        assert!(parse("node/n1/resources", br#"{"a":1}"#).is_err());
        assert!(parse("node/n1/resources", br#"[1]"#).is_err());
        assert!(parse("node/n1/resources", br#"["resources"]"#).is_err());
        assert!(parse("node/n1/led", br#"{"val":1}"#).is_err());
        assert!(parse("node/n1/led", b"1").is_err());
        assert!(parse("node//led", br#"{"value":1}"#).is_err());
        let big = vec![b' '; MAX_PAYLOAD + 1];
        assert_eq!(parse("node/check", &big), Err(MqttError::Oversize));
    }

    #[test]
    fn writes_strings_as_is() {
        assert_eq!(set_payload(&json!("1")), b"1");
        assert_eq!(set_payload(&json!(3)), b"3");
        assert_eq!(set_topic("n1", "led"), "gateway/n1/led/set");
        assert_eq!(discover_topic("n1"), "gateway/n1/discover");
    }
}
