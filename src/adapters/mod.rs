//! Device adapters: the only code that talks to devices. Each turns its protocol into node
//! messages for the hub and carries out the writes the hub routes to it. `mqttsn` is the
//! exception: it bridges MQTT-SN clients into the MQTT broker, and the `mqtt` adapter takes
//! their nodes from there.

pub mod coap;
pub mod mqtt;
pub mod mqttsn;
pub mod to_hub;
pub mod ws_node;
