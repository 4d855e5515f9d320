//! The broker protocol's parsers: gateway messages, client messages, broker requests.
//! Whatever parses must serialize and parse back to the same value.
#![no_main]

use aiot::proto::broker::{BrokerRequest, ClientMessage, NodeMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(message) = NodeMessage::parse(text) {
        assert_eq!(NodeMessage::parse(&message.to_json()), Ok(message));
    }
    if let Ok(ClientMessage::Write(write)) = ClientMessage::parse(text) {
        let request = BrokerRequest::Write { write, src: None };
        assert_eq!(BrokerRequest::parse(&request.to_json()), Ok(Some(request)));
    }
    if let Ok(Some(request)) = BrokerRequest::parse(text) {
        assert_eq!(BrokerRequest::parse(&request.to_json()), Ok(Some(request)));
    }
});
