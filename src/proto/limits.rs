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
