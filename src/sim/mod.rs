//! Simulated nodes speaking the real protocols, as pyaiot's test-node scripts did: for demos,
//! tests and load. Many run in one process.

pub mod coap;
pub mod mqtt;
pub mod mqttsn;
pub mod ws;

/// What the simulated MQTT and MQTT-SN nodes report, as pyaiot's `mqtt-test-node.py`.
pub const RESOURCES: [&str; 7] = [
    "name",
    "os",
    "ip",
    "board",
    "led",
    "temperature",
    "pressure",
];
