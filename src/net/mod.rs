//! The IO layer: length-prefixed frames, channels, and the [`Selector`] that owns every socket.
//!
//! Nothing above this module touches a socket. See [`Selector`] for the contract of one poll.

mod channel;
mod error;
pub mod frame;
mod id;
mod lru;
mod metrics;
mod options;
mod selector;
mod send_queue;
mod slots;
mod transport;

pub use error::{ChannelError, DisconnectReason, IoFault, SendError};
pub use frame::{FrameDecoder, FrameError};
pub use id::{ChannelId, ListenerId};
pub use metrics::SelectorMetrics;
pub use options::{SelectorConfig, SocketOptions};
pub use selector::{
    Accepted, ChannelSink, CloseMode, CompletedSend, Disconnected, Received, Selector,
    SelectorWaker, ACCEPT_RETRY_INTERVAL, DEFAULT_BACKLOG,
};
pub use send_queue::FrameWriter;
pub use slots::ChannelMap;
pub use transport::Transport;
