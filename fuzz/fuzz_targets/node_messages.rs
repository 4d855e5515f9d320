//! The websocket node protocol's parsers, both directions, and reading numbers from values.
#![no_main]

use aiot::proto::node_ws::{FromNode, ToNode};
use aiot::proto::reading;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(FromNode::Update(resources)) = FromNode::parse(text) {
        let again = FromNode::parse(&FromNode::update_json(&resources));
        assert_eq!(again, Ok(FromNode::Update(resources)));
    }
    if let Ok(message) = ToNode::parse(text) {
        assert_eq!(ToNode::parse(&message.to_json()), Ok(message));
    }
    let _ = reading::numeric(&serde_json::Value::String(text.to_owned()));
});
