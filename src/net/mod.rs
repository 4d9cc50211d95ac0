//! The IO layer: length-prefixed frames, channels, and the [`Selector`] that owns every socket.
//!
//! Nothing above this module touches a socket. See [`Selector`] for the contract of one poll.

mod channel;
mod error;
pub mod frame;
mod id;
mod layer;
mod lru;
mod metrics;
mod options;
mod selector;
mod send_queue;
mod slots;
#[cfg(feature = "tls")]
pub mod tls;
mod transport;

pub use error::{ChannelError, DisconnectReason, IoFault, SendError, TlsFailure};
pub use frame::{FrameDecoder, FrameError};
pub use id::{ChannelId, ListenerId};
pub use metrics::SelectorMetrics;
pub use options::{SelectorConfig, SocketOptions};
pub use selector::{
    split_frame, Accepted, ChannelSink, CloseMode, CompletedSend, Disconnected, Received, Selector,
    SelectorWaker, ACCEPT_RETRY_INTERVAL, DEFAULT_BACKLOG,
};
pub use send_queue::FrameWriter;
pub use slots::ChannelMap;
pub use transport::Transport;
