//! Sockets for the data plane: listeners, original destination, upstream connect and L4 byte proxying.

mod connect;
mod copy;
mod gather;
mod host;
mod listen;
mod orig_dst;

pub use connect::{
    ConnectError, DEFAULT_CONNECT_TIMEOUT, KEEPALIVE_INTERVAL, KEEPALIVE_RETRIES, KEEPALIVE_TIME,
    connect, set_nodelay_keepalive,
};
pub use copy::{IdleTimeout, MAX_BUFFER, SMALL_BUFFER, is_idle_timeout, proxy, proxy_io};
pub use gather::{GATHER_MAX, Gather};
pub use host::{host_addrs, is_self, is_self_with};
pub use listen::{LISTEN_BACKLOG, bind};
pub use orig_dst::original_dst;
