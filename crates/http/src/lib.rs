//! The proxy: HTTP/1.1, h2c and gRPC routing and forwarding, upstream pools, and the dispatch
//! of each accepted connection to the L7 or L4 path.

mod access;
mod body;
mod explain;
mod h1client;
mod h1codec;
mod h1server;
mod headers;
mod health;
mod idle;
mod local;
mod pool;
mod proxy;
mod runtime;
mod server;
mod upstream;

pub use access::{AccessLog, next_connection_id};
pub use body::{BodyError, ReqBody, RespBody, UpstreamBody};
pub use explain::{
    ClusterReport, DEFAULT_HTTP_PORT, DEFAULT_HTTPS_PORT, EndpointLine, ExplainDirection,
    ExplainError, ExplainRequest, Explanation, Outcome, RouteReport, TargetReport, TcpCandidate,
    explain, explain_snapshot, explain_snapshot_with,
};
pub use headers::{request_id, split_authority};
pub use health::DEFAULT_HEALTH_PATH;
pub use local::{LocalReason, local_reply};
pub use outrider_balance::Algorithm;
pub use outrider_policy::RetryBudgetConfig;
pub use pool::{MAX_IDLE_PER_ENDPOINT, POOL_IDLE_TIMEOUT, POOL_SWEEP_INTERVAL, SendError};
pub use proxy::{ConnInfo, Direction, ListenerCtx, MAX_REPLAY_BODY, ProxyService, RetrySkipped};
pub use runtime::{
    HttpDecision, ListenerChoice, NO_RETRY, PASSTHROUGH_CLUSTER, Runtime, RuntimeOptions,
    ServiceAddrs, TcpDecision, choose_router_listener,
};
pub use server::{
    DETECT_TIMEOUT, Detected, HEADER_READ_TIMEOUT, MAX_CONCURRENT_STREAMS, MAX_HEADER_BYTES,
    MAX_HEADERS, ServeOptions, detect, serve_connection,
};
pub use upstream::{DEFAULT_MAX_PENDING_REQUESTS, EndpointReport, Upstream, UpstreamPolicy};
