//! Device adapters: the only code that talks to devices. Each turns its protocol into node
//! messages for the hub and carries out the writes the hub routes to it.

pub mod coap;
pub mod mqtt;
pub mod mqttsn;
pub mod to_hub;
pub mod ws_node;
