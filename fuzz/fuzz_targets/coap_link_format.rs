//! RFC 6690 link format as nodes answer `/.well-known/core`: any text parses or is refused
//! without panicking, and the resource paths taken from it are local paths without repeats.

#![no_main]

use aiot::proto::coap::link_format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(links) = link_format::parse(text) {
        let paths = link_format::resource_paths(&links);
        assert!(paths.len() <= links.len());
        for (i, path) in paths.iter().enumerate() {
            assert!(path.starts_with('/') && path.len() > 1, "{path:?}");
            assert_ne!(path, link_format::WELL_KNOWN_CORE);
            assert!(!paths[..i].contains(path), "repeated {path:?}");
        }
    }
});
