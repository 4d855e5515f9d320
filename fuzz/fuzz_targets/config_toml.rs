//! The configuration file parser (`Config::load`'s strict serde over TOML, then `check`): any
//! text gives a configuration or a clean error, never a panic; a configuration that passes
//! `check` prints (as `aiot config` would) and parses back to the same value.

#![no_main]

use aiot::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config: Config = match toml::from_str(text) {
        Ok(config) => config,
        Err(error) => {
            // A clean error says something.
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    if config.check().is_err() {
        return;
    }
    let printed = toml::to_string(&config).expect("a checked configuration prints");
    let again: Config = toml::from_str(&printed).expect("what we print parses");
    assert_eq!(again, config, "{printed}");
});
