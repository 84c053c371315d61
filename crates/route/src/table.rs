//! An ordered route table: priority first, then specificity.

use std::cmp::Reverse;
use std::sync::Arc;

use crate::matcher::{GrpcMatch, HttpMatch, PathMatch, RouteMatch};

/// What a route table looks at in a request. Borrowed, so matching allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// The request method.
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
    /// The request headers (and gRPC metadata, and `cookie`).
    pub headers: &'a http::HeaderMap,
}

/// One route: a match, an optional priority (0 first) and an action chosen by the caller.
#[derive(Debug, Clone)]
pub struct Route<T> {
    /// The route's name, for logs and metrics.
    pub name: Arc<str>,
    /// App Mesh `priority`, 0–1000, 0 first. Routes without one come after all that have one.
    pub priority: Option<u16>,
    /// What the route matches.
    pub matcher: RouteMatch,
    /// What the caller does with a matching request.
    pub action: T,
}

/// Routes in evaluation order; the first match wins.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    routes: Box<[Route<T>]>,
}

/// How specific a route's match is; greater sorts first among routes without a priority.
///
/// Compared field by field: `rank`, then `detail`, then `constraints`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Specificity {
    /// HTTP: exact path 4 > regex path 3 > prefix 2 > no path 1.
    /// gRPC: service and method 4 > service (or method) only 3 > neither 1. TCP: 0.
    rank: u8,
    /// Prefix length for HTTP prefix paths (longer first); 0 otherwise.
    detail: usize,
    /// How many other constraints are set (headers, query, method, scheme, port, hostname,
    /// cookies; for gRPC metadata, port, hostname, cookies): more first.
    constraints: usize,
}

impl<T> RouteTable<T> {
    /// Orders `routes` once for evaluation.
    ///
    /// Routes with a `priority` come first, in ascending priority (0 first). Routes without one
    /// follow, most specific first:
    /// - HTTP: exact path > regex path > prefix (longer prefix first) > no path;
    /// - gRPC: service and method > service only > neither;
    /// - then, at equal path (or service/method) specificity, the route with more other
    ///   constraints (headers or metadata, query, method, scheme, port, hostname, cookies) first;
    /// - TCP routes last.
    ///
    /// Ties (equal priority, or equal specificity) keep input order.
    pub fn new(mut routes: Vec<Route<T>>) -> Self {
        // Stable: equal keys keep the order the config listed them in.
        routes.sort_by_cached_key(|r| match r.priority {
            Some(p) => (false, p, Reverse(Specificity::NONE)),
            None => (true, 0, Reverse(Specificity::of(&r.matcher))),
        });
        Self {
            routes: routes.into_boxed_slice(),
        }
    }

    /// The first HTTP or gRPC route that matches the request, in evaluation order. TCP routes
    /// never match.
    pub fn select(&self, req: &RequestParts<'_>) -> Option<&Route<T>> {
        self.routes.iter().find(|r| r.matcher.matches(req))
    }

    /// The first TCP route whose port is unset or equal to `port`.
    pub fn select_tcp(&self, port: u16) -> Option<&Route<T>> {
        self.routes.iter().find(|r| match &r.matcher {
            RouteMatch::Tcp(m) => m.matches(port),
            RouteMatch::Http(_) | RouteMatch::Grpc(_) => false,
        })
    }

    /// The routes in evaluation order.
    pub fn routes(&self) -> &[Route<T>] {
        &self.routes
    }

    /// Whether the table has no route.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }
}

impl<T> Default for RouteTable<T> {
    /// An empty table, which selects nothing.
    fn default() -> Self {
        Self {
            routes: Box::default(),
        }
    }
}

impl Specificity {
    /// Used for routes with a priority, where specificity does not count.
    const NONE: Self = Self {
        rank: 0,
        detail: 0,
        constraints: 0,
    };

    fn of(m: &RouteMatch) -> Self {
        match m {
            RouteMatch::Http(h) => Self::of_http(h),
            RouteMatch::Grpc(g) => Self::of_grpc(g),
            RouteMatch::Tcp(_) => Self::NONE,
        }
    }

    fn of_http(m: &HttpMatch) -> Self {
        let (rank, detail) = match &m.path {
            Some(PathMatch::Exact(_)) => (4, 0),
            Some(PathMatch::Regex(_)) => (3, 0),
            Some(PathMatch::Prefix(p)) => (2, p.len()),
            None => (1, 0),
        };
        Self {
            rank,
            detail,
            constraints: m.constraint_count(),
        }
    }

    fn of_grpc(m: &GrpcMatch) -> Self {
        let rank = match (&m.service_name, &m.method_name) {
            (Some(_), Some(_)) => 4,
            (Some(_), None) | (None, Some(_)) => 3,
            (None, None) => 1,
        };
        Self {
            rank,
            detail: 0,
            constraints: m.constraint_count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::{HeaderMatch, QueryMatch, StringMatch, TcpMatch};
    use http::{HeaderMap, HeaderName, HeaderValue, Method};
    use proptest::prelude::*;
    use regex::Regex;

    fn route(name: &str, priority: Option<u16>, matcher: RouteMatch) -> Route<u32> {
        Route {
            name: name.into(),
            priority,
            matcher,
            action: 0,
        }
    }

    fn http(path: Option<PathMatch>) -> RouteMatch {
        RouteMatch::Http(HttpMatch {
            path,
            ..HttpMatch::default()
        })
    }

    fn prefix(p: &str) -> Option<PathMatch> {
        Some(PathMatch::Prefix(p.into()))
    }

    fn names<T>(t: &RouteTable<T>) -> Vec<&str> {
        t.routes().iter().map(|r| &*r.name).collect()
    }

    fn req<'a>(path: &'a str, headers: &'a HeaderMap) -> RequestParts<'a> {
        RequestParts {
            method: &Method::GET,
            scheme: "http",
            host: "svc",
            port: 80,
            path,
            query: None,
            headers,
        }
    }

    #[test]
    fn priority_first_ascending_then_unprioritised() {
        let t = RouteTable::new(vec![
            route("none", None, http(Some(PathMatch::Exact("/x".into())))),
            route("p5", Some(5), http(prefix("/"))),
            route("p0", Some(0), http(prefix("/"))),
            route("p1000", Some(1000), http(None)),
        ]);
        assert_eq!(names(&t), ["p0", "p5", "p1000", "none"]);
    }

    #[test]
    fn equal_priority_keeps_input_order() {
        let t = RouteTable::new(vec![
            route("a", Some(1), http(prefix("/"))),
            route("b", Some(1), http(Some(PathMatch::Exact("/b".into())))),
            route("c", Some(1), http(prefix("/long/prefix"))),
        ]);
        assert_eq!(names(&t), ["a", "b", "c"]);
    }

    #[test]
    fn specificity_order_http() {
        let with_header = RouteMatch::Http(HttpMatch {
            path: prefix("/api"),
            headers: vec![HeaderMatch {
                name: HeaderName::from_static("x-a"),
                matcher: None,
                invert: false,
            }],
            ..HttpMatch::default()
        });
        let t = RouteTable::new(vec![
            route("none", None, http(None)),
            route("root", None, http(prefix("/"))),
            route("api", None, http(prefix("/api"))),
            route("api-hdr", None, with_header),
            route(
                "regex",
                None,
                http(Some(PathMatch::Regex(Regex::new("/r.*").unwrap()))),
            ),
            route("exact", None, http(Some(PathMatch::Exact("/e".into())))),
            route("tcp", None, RouteMatch::Tcp(TcpMatch::default())),
            route("api-long", None, http(prefix("/api/v1"))),
        ]);
        assert_eq!(
            names(&t),
            [
                "exact", "regex", "api-long", "api-hdr", "api", "root", "none", "tcp"
            ]
        );
    }

    #[test]
    fn specificity_order_grpc() {
        let g = |s: Option<&str>, m: Option<&str>, meta: usize| {
            RouteMatch::Grpc(GrpcMatch {
                service_name: s.map(Into::into),
                method_name: m.map(Into::into),
                metadata: (0..meta)
                    .map(|_| HeaderMatch {
                        name: HeaderName::from_static("x-m"),
                        matcher: None,
                        invert: false,
                    })
                    .collect(),
                ..GrpcMatch::default()
            })
        };
        let t = RouteTable::new(vec![
            route("any", None, g(None, None, 0)),
            route("svc", None, g(Some("S"), None, 0)),
            route("svc-meta", None, g(Some("S"), None, 1)),
            route("svc-m", None, g(Some("S"), Some("M"), 0)),
        ]);
        assert_eq!(names(&t), ["svc-m", "svc-meta", "svc", "any"]);
    }

    #[test]
    fn specificity_ties_keep_input_order() {
        let t = RouteTable::new(vec![
            route("b", None, http(prefix("/bb"))),
            route("a", None, http(prefix("/aa"))),
            route("c", None, http(prefix("/cc"))),
        ]);
        assert_eq!(names(&t), ["b", "a", "c"]);
    }

    #[test]
    fn select_first_match() {
        let t = RouteTable::new(vec![
            route("root", None, http(prefix("/"))),
            route("api", None, http(prefix("/api"))),
            route("tcp", None, RouteMatch::Tcp(TcpMatch::default())),
        ]);
        let h = HeaderMap::new();
        assert_eq!(&*t.select(&req("/api/x", &h)).unwrap().name, "api");
        assert_eq!(&*t.select(&req("/other", &h)).unwrap().name, "root");
        assert_eq!(&*t.select_tcp(9).unwrap().name, "tcp");
        assert!(RouteTable::<u32>::default().select(&req("/", &h)).is_none());
        assert_eq!(t.len(), 3);
        assert!(!t.is_empty());
    }

    #[test]
    fn select_tcp_by_port() {
        let t = RouteTable::new(vec![
            route("http", None, http(None)),
            route("p9", None, RouteMatch::Tcp(TcpMatch { port: Some(9) })),
            route("any", None, RouteMatch::Tcp(TcpMatch { port: None })),
        ]);
        assert_eq!(&*t.select_tcp(9).unwrap().name, "p9");
        assert_eq!(&*t.select_tcp(10).unwrap().name, "any");
        let only9 = RouteTable::new(vec![route(
            "p9",
            None,
            RouteMatch::Tcp(TcpMatch { port: Some(9) }),
        )]);
        assert!(only9.select_tcp(10).is_none());
        let h = HeaderMap::new();
        assert!(only9.select(&req("/", &h)).is_none());
    }

    // === property tests ===

    fn arb_string_match() -> impl Strategy<Value = StringMatch> {
        prop_oneof![
            "[a-c]{0,3}".prop_map(StringMatch::Exact),
            "[a-c]{0,2}".prop_map(StringMatch::Prefix),
            "[a-c]{0,2}".prop_map(StringMatch::Suffix),
            prop::sample::select(vec!["a+", "[a-c]*", "b|ab", "^(?:a|ab)$", ""])
                .prop_map(|p| StringMatch::Regex(Regex::new(p).unwrap())),
            (-3i64..3, -3i64..3).prop_map(|(start, end)| StringMatch::Range { start, end }),
        ]
    }

    fn arb_header_match() -> impl Strategy<Value = HeaderMatch> {
        (
            prop::sample::select(vec!["x-a", "x-b"]),
            prop::option::of(arb_string_match()),
            any::<bool>(),
        )
            .prop_map(|(n, matcher, invert)| HeaderMatch {
                name: HeaderName::from_static(n),
                matcher,
                invert,
            })
    }

    fn arb_path_match() -> impl Strategy<Value = PathMatch> {
        prop_oneof![
            "/[a-c/]{0,3}".prop_map(PathMatch::Prefix),
            "/[a-c/]{0,3}".prop_map(PathMatch::Exact),
            prop::sample::select(vec!["/a.*", "/[a-c]+", "/"])
                .prop_map(|p| PathMatch::Regex(Regex::new(p).unwrap())),
        ]
    }

    fn arb_route_match() -> impl Strategy<Value = RouteMatch> {
        prop_oneof![
            4 => (
                prop::option::of(arb_path_match()),
                prop::collection::vec(arb_header_match(), 0..3),
                prop::collection::vec(
                    ("[a-c]{1,2}", prop::option::of("[a-c%0-9]{0,3}"))
                        .prop_map(|(name, exact)| QueryMatch { name, exact }),
                    0..2,
                ),
                prop::option::of(prop::sample::select(vec![80u16, 81])),
            )
                .prop_map(|(path, headers, query, port)| RouteMatch::Http(HttpMatch {
                    path,
                    headers,
                    query,
                    port,
                    ..HttpMatch::default()
                })),
            1 => (
                prop::option::of("[a-c]{1,2}"),
                prop::option::of("[a-c]{1,2}"),
                prop::collection::vec(arb_header_match(), 0..2),
            )
                .prop_map(|(service_name, method_name, metadata)| RouteMatch::Grpc(GrpcMatch {
                    service_name,
                    method_name,
                    metadata,
                    ..GrpcMatch::default()
                })),
            1 => prop::option::of(any::<u16>())
                .prop_map(|port| RouteMatch::Tcp(TcpMatch { port })),
        ]
    }

    fn arb_routes() -> impl Strategy<Value = Vec<Route<usize>>> {
        prop::collection::vec((prop::option::of(0u16..4), arb_route_match()), 0..12).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (priority, matcher))| Route {
                    name: i.to_string().into(),
                    priority,
                    matcher,
                    action: i,
                })
                .collect()
        })
    }

    fn arb_headers() -> impl Strategy<Value = HeaderMap> {
        prop::collection::vec(
            (
                prop::sample::select(vec!["x-a", "x-b", "cookie"]),
                prop::collection::vec(any::<u8>(), 0..6),
            ),
            0..4,
        )
        .prop_map(|pairs| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                if let Ok(v) = HeaderValue::from_bytes(&v) {
                    h.append(HeaderName::from_static(n), v);
                }
            }
            h
        })
    }

    proptest! {
        #[test]
        fn select_is_first_matching_route(
            routes in arb_routes(),
            path in "[a-c/%?]{0,6}",
            query in prop::option::of("[a-c=&%0-9]{0,8}"),
            headers in arb_headers(),
            port in prop::sample::select(vec![80u16, 81]),
        ) {
            let t = RouteTable::new(routes);
            let r = RequestParts {
                method: &Method::GET,
                scheme: "http",
                host: "h",
                port,
                path: &path,
                query: query.as_deref(),
                headers: &headers,
            };
            let chosen = t.select(&r);
            if let Some(route) = chosen {
                prop_assert!(route.matcher.matches(&r));
                prop_assert!(!matches!(route.matcher, RouteMatch::Tcp(_)));
            }
            // Nothing before the chosen route matches.
            let stop = chosen.map_or(t.len(), |c| {
                t.routes().iter().position(|x| x.action == c.action).unwrap_or(t.len())
            });
            for earlier in &t.routes()[..stop] {
                prop_assert!(!earlier.matcher.matches(&r));
            }
        }

        #[test]
        fn order_respects_priority_and_is_a_permutation(routes in arb_routes()) {
            let n = routes.len();
            let t = RouteTable::new(routes);
            prop_assert_eq!(t.len(), n);
            let mut seen: Vec<usize> = t.routes().iter().map(|r| r.action).collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..n).collect::<Vec<_>>());
            for pair in t.routes().windows(2) {
                match (pair[0].priority, pair[1].priority) {
                    (Some(a), Some(b)) => {
                        prop_assert!(a <= b);
                        if a == b { prop_assert!(pair[0].action < pair[1].action); }
                    }
                    (None, Some(_)) => prop_assert!(false, "unprioritised before prioritised"),
                    (None, None) => {
                        let (a, b) = (
                            Specificity::of(&pair[0].matcher),
                            Specificity::of(&pair[1].matcher),
                        );
                        prop_assert!(a >= b);
                        if a == b { prop_assert!(pair[0].action < pair[1].action); }
                    }
                    (Some(_), None) => {}
                }
            }
        }

        #[test]
        fn select_never_panics_on_arbitrary_input(
            routes in arb_routes(),
            path in ".{0,12}",
            query in prop::option::of(".{0,12}"),
            host in ".{0,8}",
            headers in arb_headers(),
            port in any::<u16>(),
        ) {
            let t = RouteTable::new(routes);
            let r = RequestParts {
                method: &Method::POST,
                scheme: "https",
                host: &host,
                port,
                path: &path,
                query: query.as_deref(),
                headers: &headers,
            };
            let _ = t.select(&r);
            let _ = t.select_tcp(port);
        }
    }
}
