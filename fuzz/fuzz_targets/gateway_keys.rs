//! The broker's gateways file and the uplink's broker URL: operator input, read at start and
//! on every change of the file; bad text must be an error, never a panic.
#![no_main]

use aiot::broker::gateways::GatewayList;
use aiot::uplink::Target;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(list) = GatewayList::parse(text) {
        // Names are unique and non-empty in whatever parses.
        let names = list.names();
        assert!(names.iter().all(|n| !n.trim().is_empty()));
    }
    if let Ok(target) = Target::parse(text) {
        let again = Target::parse(&target.to_string()).ok().map(|t| t.tls);
        assert_eq!(again, Some(target.tls));
    }
});
