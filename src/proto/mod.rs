//! Sans-IO wire formats: text in, typed values out, and back. No tokio, no sockets.
//!
//! - [`broker`]: the JSON messages between gateways, the broker and web clients (protocol.md §1).
//! - [`coap`]: CoAP with nodes (protocol.md §2): datagrams, exchanges, link format, payloads.
//! - [`mqtt`]: pyaiot's MQTT topic scheme with nodes (protocol.md §3): topics and payloads.
//! - [`mqttsn`]: MQTT-SN 1.2 datagrams (RIOT `emcute` nodes), encoded and decoded.
//! - [`node_ws`]: the JSON messages between a websocket node and its gateway (protocol.md §4).
//! - [`reading`]: numbers inside resource values (`23°C`), for history.
//! - [`limits`]: named limits shared by every endpoint.

pub mod broker;
pub mod coap;
pub mod limits;
pub mod mqtt;
pub mod mqttsn;
pub mod node_ws;
pub mod reading;

use serde_json::{Map, Value};

/// Why a message was refused. The text is what goes into the websocket close reason and the
/// log, so it names the offending part without echoing large input back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("Only JSON format is supported: {0}")]
    NotJson(String),
    #[error("Invalid message: not a JSON object")]
    NotObject,
    #[error("Invalid message: missing field '{0}'")]
    Missing(&'static str),
    #[error("Invalid message type '{0}'")]
    UnknownType(String),
    #[error("Invalid message: unexpected {0}")]
    Unexpected(String),
    #[error("Invalid message: field '{field}' must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
}

/// The message kinds pyaiot's `Message.check_message` lets through; anything else is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    New,
    Update,
    Out,
    Reset,
}

/// pyaiot's `check_message`: a JSON object whose `type` is one of `new`, `update`, `out`,
/// `reset`. Returns the kind and the object for the caller to read its own fields from.
pub fn check_message(raw: &str) -> Result<(Kind, Map<String, Value>), ProtoError> {
    let value: Value =
        serde_json::from_str(raw).map_err(|e| ProtoError::NotJson(shorten(&e.to_string())))?;
    let Value::Object(object) = value else {
        return Err(ProtoError::NotObject);
    };
    let kind = match object.get("type") {
        None => return Err(ProtoError::Missing("type")),
        Some(Value::String(kind)) => match kind.as_str() {
            "new" => Kind::New,
            "update" => Kind::Update,
            "out" => Kind::Out,
            "reset" => Kind::Reset,
            other => return Err(ProtoError::UnknownType(shorten(other))),
        },
        Some(other) => return Err(ProtoError::UnknownType(shorten(&other.to_string()))),
    };
    Ok((kind, object))
}

/// Reads a string field, refusing a missing field or another JSON type.
pub(crate) fn string_field(
    object: &mut Map<String, Value>,
    field: &'static str,
) -> Result<String, ProtoError> {
    match object.remove(field) {
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(ProtoError::WrongType {
            field,
            expected: "a string",
        }),
        None => Err(ProtoError::Missing(field)),
    }
}

/// Keeps echoed input short: a close reason has at most 123 bytes, and logs should not carry
/// a hostile peer's megabytes.
pub(crate) fn shorten(text: &str) -> String {
    const KEEP: usize = 40;
    match text.char_indices().nth(KEEP) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_message_accepts_the_four_kinds() {
        for (raw, kind) in [
            (r#"{"type":"new"}"#, Kind::New),
            (r#"{"type":"update"}"#, Kind::Update),
            (r#"{"type":"out"}"#, Kind::Out),
            (r#"{"type":"reset"}"#, Kind::Reset),
        ] {
            assert_eq!(check_message(raw).expect(raw).0, kind);
        }
    }

    #[test]
    fn check_message_refuses_what_pyaiot_refuses() {
        assert!(matches!(
            check_message("hello"),
            Err(ProtoError::NotJson(_))
        ));
        assert!(matches!(check_message(""), Err(ProtoError::NotJson(_))));
        assert_eq!(check_message("[1,2]"), Err(ProtoError::NotObject));
        assert_eq!(check_message("42"), Err(ProtoError::NotObject));
        assert_eq!(check_message(r#""new""#), Err(ProtoError::NotObject));
        assert_eq!(check_message("{}"), Err(ProtoError::Missing("type")));
        assert_eq!(
            check_message(r#"{"data":"client"}"#),
            Err(ProtoError::Missing("type"))
        );
        assert_eq!(
            check_message(r#"{"type":"delete"}"#),
            Err(ProtoError::UnknownType("delete".into()))
        );
        assert_eq!(
            check_message(r#"{"type":1}"#),
            Err(ProtoError::UnknownType("1".into()))
        );
    }

    #[test]
    fn close_reasons_fit_a_close_frame() {
        let long = "x".repeat(10_000);
        let reason = check_message(&format!(r#"{{"type":"{long}"}}"#))
            .expect_err("unknown type")
            .to_string();
        assert!(reason.len() <= 123, "{} bytes", reason.len());
        let reason = check_message(&format!("{{{long}"))
            .expect_err("not json")
            .to_string();
        assert!(reason.len() <= 123, "{} bytes", reason.len());
    }
}
