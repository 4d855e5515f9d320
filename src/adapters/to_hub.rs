//! How an adapter's loop hands node messages to the hub without ever waiting on it.
//!
//! A forwarder task is the only one that waits for the hub, behind a bounded queue. When that
//! queue is full, messages wait in a bounded backlog the loop moves into the queue as room
//! appears; past the backlog's maximum they are dropped, counted and warned about. Above the
//! high-water mark the adapter should take no new work (`is_behind`), so that the backlog
//! drains instead of growing.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::hub::Source;
use crate::metrics::{Channel, Metrics};
use crate::proto::broker::NodeMessage;
use crate::runtime::Supervisor;

/// Messages between the loop and the forwarder.
const QUEUE: usize = 1024;
/// Messages waiting in the backlog before the adapter should take no new work.
const HIGH: usize = 16 * 1024;
/// Messages waiting at most; past this they are dropped (only updates get here: new work is
/// refused well before).
const MAX: usize = 64 * 1024;
/// Messages the forwarder hands the hub per wake-up.
const BATCH: usize = 64;

pub struct ToHub {
    forward: mpsc::Sender<NodeMessage>,
    backlog: VecDeque<NodeMessage>,
    dropped: u64,
    metrics: Arc<Metrics>,
    channel: Channel,
}

impl ToHub {
    /// Spawns the forwarder for `source`; it closes the source when the loop is gone.
    pub fn start(
        supervisor: &Supervisor,
        source: Source,
        metrics: Arc<Metrics>,
        channel: Channel,
    ) -> ToHub {
        let (forward, mut forwarded) = mpsc::channel::<NodeMessage>(QUEUE);
        supervisor.spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while forwarded.recv_many(&mut batch, BATCH).await > 0 {
                for message in batch.drain(..) {
                    source.send(message).await;
                }
            }
            source.close().await;
        });
        ToHub {
            forward,
            backlog: VecDeque::new(),
            dropped: 0,
            metrics,
            channel,
        }
    }

    /// Whether the hub is so far behind that the adapter should take no new work.
    pub fn is_behind(&self) -> bool {
        self.backlog.len() >= HIGH
    }

    pub fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Waits for room in the queue, then moves as much of the backlog as fits. `false`: the
    /// forwarder is gone (shutting down).
    pub async fn drain(&mut self) -> bool {
        let Ok(permit) = self.forward.reserve().await else {
            return false;
        };
        if let Some(message) = self.backlog.pop_front() {
            permit.send(message);
        }
        while !self.backlog.is_empty() {
            let Ok(permit) = self.forward.try_reserve() else {
                break;
            };
            if let Some(message) = self.backlog.pop_front() {
                permit.send(message);
            }
        }
        if self.backlog.is_empty() && self.backlog.capacity() > QUEUE {
            // A burst's backlog is given back once drained, not kept for the next one.
            self.backlog.shrink_to(QUEUE);
        }
        true
    }

    /// Queues a message for the hub without waiting. `false`: the forwarder is gone.
    pub fn push(&mut self, message: NodeMessage) -> bool {
        if self.backlog.is_empty() {
            match self.forward.try_send(message) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Full(message)) => self.backlog.push_back(message),
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        } else if self.backlog.len() < MAX {
            self.backlog.push_back(message);
        } else {
            self.dropped += 1;
            self.metrics.messages_dropped(self.channel, 1);
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    channel = ?self.channel,
                    dropped = self.dropped,
                    "node messages dropped: the hub is not keeping up"
                );
            }
        }
        true
    }
}
