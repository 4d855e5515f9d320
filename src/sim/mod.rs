//! Simulated nodes speaking the real protocols, as pyaiot's test-node scripts did: for demos,
//! tests and load. Many run in one process.

pub mod coap;
pub mod mqtt;
pub mod mqttsn;
pub mod ws;
