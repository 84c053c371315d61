//! Dev-only helpers for Outrider's tests: an in-process DNS server, upstream servers with
//! faults, and network namespaces.

pub mod dns;
pub mod faults;
pub mod netns;
pub mod servers;
