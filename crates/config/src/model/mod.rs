//! Serde types for App Mesh resource specs (API 2019-01-25), with the API's own camelCase field
//! names and enum spellings. Numbers are read wide (`i64`) so that range errors are reported by
//! validation with a clear reason instead of a bare integer-overflow message.

mod common;
mod gateway;
mod mesh;
mod node;
mod route;

pub use common::*;
pub use gateway::*;
pub use mesh::*;
pub use node::*;
pub use route::*;
