//! Access logs: Envoy command-operator formats (text and JSON) and a bounded, non-blocking writer.

mod format;
mod record;
mod time;
mod writer;

pub use format::{Format, FormatError};
pub use record::Record;
pub use writer::{
    DEFAULT_FLUSH_INTERVAL, DEFAULT_QUEUE_CAPACITY, DEFAULT_REOPEN_CHECK_INTERVAL, Writer,
    WriterOptions,
};
