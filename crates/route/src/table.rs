//! An ordered route table: priority first, then specificity.

use std::sync::Arc;

use crate::matcher::RouteMatch;

/// What a route table looks at in a request. Borrowed, so matching allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a http::Method,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The authority's host, without port.
    pub host: &'a str,
    /// The destination port: the authority's, else the original destination's, else the
    /// listener's.
    pub port: u16,
    /// The path without the query string.
    pub path: &'a str,
    /// The raw query string without `?`, if any.
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

/// One route: a match, an optional priority (0 first) and an action chosen by the caller.
#[derive(Debug, Clone)]
pub struct Route<T> {
    pub name: Arc<str>,
    /// App Mesh `priority`, 0–1000, 0 first. Routes without one come after all that have one.
    pub priority: Option<u16>,
    pub matcher: RouteMatch,
    pub action: T,
}

/// Routes in evaluation order; the first match wins.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    routes: Box<[Route<T>]>,
}
