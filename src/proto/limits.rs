//! Named limits shared by every websocket endpoint. Each can be overridden in the config; these
//! are the defaults and the reasons for them.

/// Largest websocket frame or message accepted. A node's biggest resource in pyaiot is the
/// JavaScript source of the `js` resource (a few KiB); 64 KiB leaves room and still bounds
/// what a stranger can make us buffer. Larger frames close the connection with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Events a subscriber may fall behind the hub before it is resynchronised from a snapshot.
/// The hub's broadcast ring holds this many events; each slot is one pointer.
pub const EVENT_BACKLOG: usize = 16 * 1024;

/// How long a write to one peer may take before that peer counts as stalled and is dropped,
/// so that it never holds up anything else.
pub const SEND_TIMEOUT_SECS: u64 = 10;

/// Outgoing messages queued for one node or gateway connection before further ones are
/// dropped and counted.
pub const PEER_QUEUE: usize = 256;

/// Nodes a hub holds at most; a new node past this is refused and logged.
pub const MAX_NODES: usize = 10_000;

/// Resources one node may have. pyaiot's richest nodes have about 20; a node that keeps
/// inventing names is refused past this instead of growing the table.
pub const MAX_RESOURCES: usize = 128;

/// Numeric readings kept per resource for charts.
pub const HISTORY_POINTS: usize = 120;

/// Nodes one gateway may hold in the broker's table, so that one gateway (a runaway or a
/// stolen one) cannot fill the table and starve the others: a tenth of `MAX_NODES`.
pub const MAX_NODES_PER_GATEWAY: usize = 1_000;

/// Largest value of a node's resource, in bytes (a string's, or another value's JSON text):
/// what a websocket frame (`MAX_FRAME_BYTES`) and a CoAP body (`coap.max_body_bytes`) carry,
/// so that MQTT and MQTT-SN nodes and gateways are held to the same. pyaiot's biggest, the
/// `js` resource's source, is a few KiB.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Updates one node may send per second, on any channel; bursts of a node's whole set of
/// resources plus twice that pass. RIOT nodes report every few seconds; a node past this
/// is broken or hostile: its values wait for the rate and only the newest of each resource
/// is kept, so it costs every client no more than this and still shows its last word.
pub const NODE_MESSAGES_PER_SEC: u32 = 100;

/// Messages per second the broker reads from one gateway connection; bursts of twice that
/// pass. A gateway at its 1,000 nodes (`MAX_NODES_PER_GATEWAY`) reporting every second sends
/// 1,000/s, and replays its whole table after a reconnection; one sending far more is broken
/// or hostile, and is read more slowly rather than let take the hub from the other gateways.
/// Nothing it sends is dropped: TCP and its own uplink queue hold the rest.
pub const GATEWAY_MESSAGES_PER_SEC: u32 = 5000;

/// CoAP nodes waiting for their discovery (behind the `discovery_concurrency` running ones);
/// an unknown node's `/alive` past this is answered 5.03 and it is registered at a later alive.
/// Room for a thousand nodes booting at once (tests/coap_scale.rs) with margin; a flood of
/// new addresses beyond it costs a refusal each, not a queue entry.
pub const MAX_PENDING_DISCOVERIES: usize = 2048;
