//! Matchers for one route: path, headers, method, scheme, query, port, host, cookies, gRPC.
//!
//! Every `matches` method borrows the request and allocates nothing: header values, cookies and
//! query parameters are scanned in place, and percent-decoding is done byte by byte while
//! comparing.

use http::{HeaderMap, HeaderName, Method, header::COOKIE};
use regex::Regex;

use crate::table::RequestParts;

/// Separates `name=value` pairs in one `Cookie` header (RFC 6265 §4.2.1).
const COOKIE_PAIR_SEPARATOR: char = ';';
/// Separates `name=value` pairs in a query string.
const QUERY_PAIR_SEPARATOR: char = '&';
/// Separates a name from its value in a cookie pair or a query parameter.
const NAME_VALUE_SEPARATOR: char = '=';

/// How one string (a header value, a cookie value, gRPC metadata) is matched.
///
/// Matching is case-sensitive except where a matcher says otherwise.
#[derive(Debug, Clone)]
pub enum StringMatch {
    /// The whole value equals this.
    Exact(String),
    /// The value starts with this.
    Prefix(String),
    /// The value ends with this.
    Suffix(String),
    /// The whole value matches this pattern (anchored at both ends, as Envoy does).
    ///
    /// Any pattern may be given: a value matches when the pattern's leftmost match spans the
    /// whole value. For exact full-match semantics with top-level alternations (`a|ab`), compile
    /// the pattern wrapped as `^(?:...)$`, as the config compiler does.
    Regex(Regex),
    /// The value parses as an integer `n` with `start <= n < end` (Envoy's `range_match`).
    Range {
        /// Inclusive lower bound.
        start: i64,
        /// Exclusive upper bound.
        end: i64,
    },
}

/// A header (or gRPC metadata) matcher. `matcher: None` means "the header is present".
#[derive(Debug, Clone)]
pub struct HeaderMatch {
    /// The header name (lower case, as `http` stores it).
    pub name: HeaderName,
    /// How a value is matched; `None` means the header only has to be present. Default is none.
    pub matcher: Option<StringMatch>,
    /// Negates the result (a missing header matches an inverted matcher).
    pub invert: bool,
}

/// A path matcher. Paths are compared without the query string.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// The path starts with this (plain string prefix: `/` matches every path).
    Prefix(String),
    /// The whole path equals this.
    Exact(String),
    /// Anchored at both ends: see [`StringMatch::Regex`].
    Regex(Regex),
}

/// Host (authority without port) matcher, compared case-insensitively. Extension to App Mesh
/// routes, in the shape GatewayRoute uses.
#[derive(Debug, Clone)]
pub enum HostMatch {
    /// The whole host equals this, ignoring ASCII case.
    Exact(String),
    /// The host ends with this, ignoring ASCII case (`.example.com`).
    Suffix(String),
}

/// A query parameter matcher: `exact: None` means "the parameter is present".
///
/// Names and values are percent-decoded before comparison (`+` stays a literal `+`). A parameter
/// given several times matches if any occurrence does.
#[derive(Debug, Clone)]
pub struct QueryMatch {
    /// The decoded parameter name.
    pub name: String,
    /// The decoded value it must equal; `None` means present with any value. Default is none.
    pub exact: Option<String>,
}

/// A cookie matcher (extension to App Mesh routes): `matcher: None` means "present".
///
/// Cookies are read from every `cookie` header; a cookie given several times matches if any
/// occurrence does.
#[derive(Debug, Clone)]
pub struct CookieMatch {
    /// The cookie name, case-sensitive.
    pub name: String,
    /// How the value is matched; `None` means the cookie only has to be present.
    pub matcher: Option<StringMatch>,
    /// Negates the result (a missing cookie matches an inverted matcher).
    pub invert: bool,
}

/// The match of an `httpRoute` or `http2Route`. Every field that is set must match; the default
/// (nothing set) matches every HTTP request.
#[derive(Debug, Clone, Default)]
pub struct HttpMatch {
    /// `prefix` or `path.exact`/`path.regex`. Default is none (any path).
    pub path: Option<PathMatch>,
    /// The request method. Default is none (any method).
    pub method: Option<Method>,
    /// `http` or `https`, compared ignoring ASCII case. Default is none (any scheme).
    pub scheme: Option<String>,
    /// Header matchers; all must match.
    pub headers: Vec<HeaderMatch>,
    /// Query parameter matchers; all must match.
    pub query: Vec<QueryMatch>,
    /// The destination port ([`RequestParts::port`]). Default is none (any port).
    pub port: Option<u16>,
    /// Host matcher (extension). Default is none (any host).
    pub hostname: Option<HostMatch>,
    /// Cookie matchers (extension); all must match.
    pub cookies: Vec<CookieMatch>,
}

/// The match of a `grpcRoute`. The request path is `/<service>/<method>`.
///
/// Only the path is looked at, not `content-type`, as App Mesh does. Every field that is set must
/// match; the default matches every request.
#[derive(Debug, Clone, Default)]
pub struct GrpcMatch {
    /// The fully qualified service (`pkg.Service`), exact. Default is none (any service).
    pub service_name: Option<String>,
    /// The method, exact. Default is none (any method).
    pub method_name: Option<String>,
    /// Metadata (header) matchers; all must match.
    pub metadata: Vec<HeaderMatch>,
    /// The destination port. Default is none (any port).
    pub port: Option<u16>,
    /// Host matcher (extension). Default is none (any host).
    pub hostname: Option<HostMatch>,
    /// Cookie matchers (extension); all must match.
    pub cookies: Vec<CookieMatch>,
}

/// The match of a `tcpRoute`.
#[derive(Debug, Clone, Default)]
pub struct TcpMatch {
    /// The destination port. Default is none (any port).
    pub port: Option<u16>,
}

/// One route's match, by route kind.
#[derive(Debug, Clone)]
pub enum RouteMatch {
    /// `httpRoute` / `http2Route`.
    Http(HttpMatch),
    /// `grpcRoute`.
    Grpc(GrpcMatch),
    /// `tcpRoute`: never matches an HTTP request.
    Tcp(TcpMatch),
}

/// Yields the bytes of a string with `%XX` sequences decoded; malformed escapes stay literal.
struct PercentDecoded<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl StringMatch {
    /// Whether `value` matches. A [`StringMatch::Range`] never matches a value that is not an
    /// integer.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value == s,
            Self::Prefix(s) => value.starts_with(s.as_str()),
            Self::Suffix(s) => value.ends_with(s.as_str()),
            Self::Regex(re) => full_match(re, value),
            Self::Range { start, end } => {
                value.parse::<i64>().is_ok_and(|n| *start <= n && n < *end)
            }
        }
    }
}

impl HeaderMatch {
    /// Whether the headers satisfy this matcher: some value of the header (there may be several)
    /// matches, or it is present when there is no value matcher; then `invert` negates. Values
    /// that are not UTF-8 never match a value matcher.
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let found = match &self.matcher {
            None => headers.contains_key(&self.name),
            Some(m) => headers
                .get_all(&self.name)
                .iter()
                .any(|v| std::str::from_utf8(v.as_bytes()).is_ok_and(|s| m.matches(s))),
        };
        found != self.invert
    }
}

impl PathMatch {
    /// Whether `path` (without its query string) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Prefix(p) => path.starts_with(p.as_str()),
            Self::Exact(p) => path == p,
            Self::Regex(re) => full_match(re, path),
        }
    }
}

impl HostMatch {
    /// Whether `host` (without port) matches, ignoring ASCII case.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => host.eq_ignore_ascii_case(h),
            Self::Suffix(s) => host
                .len()
                .checked_sub(s.len())
                .and_then(|at| host.as_bytes().get(at..))
                .is_some_and(|tail| tail.eq_ignore_ascii_case(s.as_bytes())),
        }
    }
}

impl QueryMatch {
    /// Whether the raw query string (without `?`) has this parameter with the wanted value.
    /// No query string never matches.
    pub fn matches(&self, query: Option<&str>) -> bool {
        let Some(query) = query else {
            return false;
        };
        query
            .split(QUERY_PAIR_SEPARATOR)
            .filter(|pair| !pair.is_empty())
            .any(|pair| {
                let (name, value) = pair.split_once(NAME_VALUE_SEPARATOR).unwrap_or((pair, ""));
                decoded_eq(name, &self.name)
                    && self
                        .exact
                        .as_ref()
                        .is_none_or(|want| decoded_eq(value, want))
            })
    }
}

impl CookieMatch {
    /// Whether the cookies in every `cookie` header satisfy this matcher: some cookie with this
    /// name matches (or exists, when there is no value matcher); then `invert` negates. Pairs
    /// without `=` are ignored, as RFC 6265 says.
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let found = headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
            .flat_map(|v| v.split(COOKIE_PAIR_SEPARATOR))
            .filter_map(|pair| pair.trim().split_once(NAME_VALUE_SEPARATOR))
            .any(|(name, value)| {
                name.trim() == self.name
                    && self
                        .matcher
                        .as_ref()
                        .is_none_or(|m| m.matches(value.trim()))
            });
        found != self.invert
    }
}

impl HttpMatch {
    /// Whether the request satisfies every constraint that is set.
    pub fn matches(&self, req: &RequestParts<'_>) -> bool {
        // Cheapest checks first: most requests are rejected by port, method or path.
        self.port.is_none_or(|p| p == req.port)
            && self.method.as_ref().is_none_or(|m| m == req.method)
            && self
                .scheme
                .as_ref()
                .is_none_or(|s| s.eq_ignore_ascii_case(req.scheme))
            && self
                .path
                .as_ref()
                .is_none_or(|p| p.matches(strip_query(req.path)))
            && self.hostname.as_ref().is_none_or(|h| h.matches(req.host))
            && self.headers.iter().all(|h| h.matches(req.headers))
            && self.query.iter().all(|q| q.matches(req.query))
            && self.cookies.iter().all(|c| c.matches(req.headers))
    }

    /// How many constraints besides the path are set (for specificity ordering).
    pub(crate) fn constraint_count(&self) -> usize {
        usize::from(self.method.is_some())
            + usize::from(self.scheme.is_some())
            + usize::from(self.port.is_some())
            + usize::from(self.hostname.is_some())
            + self.headers.len()
            + self.query.len()
            + self.cookies.len()
    }
}

impl GrpcMatch {
    /// Whether the request satisfies every constraint that is set. The path is split at its
    /// last `/` into `/<service>` and `<method>`; a path without a second `/` only matches when
    /// neither name is set.
    pub fn matches(&self, req: &RequestParts<'_>) -> bool {
        self.port.is_none_or(|p| p == req.port)
            && self.names_match(strip_query(req.path))
            && self.hostname.as_ref().is_none_or(|h| h.matches(req.host))
            && self.metadata.iter().all(|h| h.matches(req.headers))
            && self.cookies.iter().all(|c| c.matches(req.headers))
    }

    fn names_match(&self, path: &str) -> bool {
        if self.service_name.is_none() && self.method_name.is_none() {
            return true;
        }
        let Some((service, method)) = path
            .strip_prefix('/')
            .and_then(|rest| rest.rsplit_once('/'))
        else {
            return false;
        };
        self.service_name.as_deref().is_none_or(|s| s == service)
            && self.method_name.as_deref().is_none_or(|m| m == method)
    }

    /// How many constraints besides service and method are set (for specificity ordering).
    pub(crate) fn constraint_count(&self) -> usize {
        usize::from(self.port.is_some())
            + usize::from(self.hostname.is_some())
            + self.metadata.len()
            + self.cookies.len()
    }
}

impl TcpMatch {
    /// Whether a connection to `port` matches.
    pub fn matches(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }
}

impl RouteMatch {
    /// Whether an HTTP request matches. A [`RouteMatch::Tcp`] never does.
    pub fn matches(&self, req: &RequestParts<'_>) -> bool {
        match self {
            Self::Http(m) => m.matches(req),
            Self::Grpc(m) => m.matches(req),
            Self::Tcp(_) => false,
        }
    }
}

impl<'a> PercentDecoded<'a> {
    fn new(s: &'a str) -> Self {
        Self {
            bytes: s.as_bytes(),
            pos: 0,
        }
    }
}

impl Iterator for PercentDecoded<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        if b == b'%'
            && let Some(&[hi, lo]) = self.bytes.get(self.pos + 1..self.pos + 3)
            && let (Some(hi), Some(lo)) = (hex_value(hi), hex_value(lo))
        {
            self.pos += 3;
            return Some(hi << 4 | lo);
        }
        self.pos += 1;
        Some(b)
    }
}

/// Whether `re`'s leftmost match covers all of `value`.
fn full_match(re: &Regex, value: &str) -> bool {
    re.find(value)
        .is_some_and(|m| m.start() == 0 && m.end() == value.len())
}

/// Whether `raw`, percent-decoded, equals `want`.
fn decoded_eq(raw: &str, want: &str) -> bool {
    // Fast path: nothing to decode.
    if !raw.contains('%') {
        return raw == want;
    }
    PercentDecoded::new(raw).eq(want.bytes())
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The path before any `?`: [`RequestParts::path`] should already be without it, but a caller
/// that passes a full path-and-query must not make exact and regex paths fail.
fn strip_query(path: &str) -> &str {
    path.split_once('?').map_or(path, |(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn parts<'a>(
        method: &'a Method,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
    ) -> RequestParts<'a> {
        RequestParts {
            method,
            scheme: "http",
            host: "svc.local",
            port: 8080,
            path,
            query,
            headers,
        }
    }

    fn re(p: &str) -> Regex {
        Regex::new(p).unwrap()
    }

    fn hm(name: &str, matcher: Option<StringMatch>, invert: bool) -> HeaderMatch {
        HeaderMatch {
            name: HeaderName::from_bytes(name.as_bytes()).unwrap(),
            matcher,
            invert,
        }
    }

    #[test]
    fn string_exact_prefix_suffix() {
        assert!(StringMatch::Exact("abc".into()).matches("abc"));
        assert!(!StringMatch::Exact("abc".into()).matches("abcd"));
        assert!(StringMatch::Prefix("ab".into()).matches("abc"));
        assert!(!StringMatch::Prefix("bc".into()).matches("abc"));
        assert!(StringMatch::Suffix("bc".into()).matches("abc"));
        assert!(!StringMatch::Suffix("ab".into()).matches("abc"));
        assert!(StringMatch::Prefix(String::new()).matches(""));
    }

    #[test]
    fn string_regex_is_anchored() {
        let m = StringMatch::Regex(re("v[0-9]+"));
        assert!(m.matches("v12"));
        assert!(!m.matches("xv12"));
        assert!(!m.matches("v12x"));
        let wrapped = StringMatch::Regex(re("^(?:a|ab)$"));
        assert!(wrapped.matches("ab"));
        assert!(wrapped.matches("a"));
        assert!(!wrapped.matches("abc"));
    }

    #[test]
    fn string_range_is_half_open() {
        let m = StringMatch::Range { start: -5, end: 10 };
        assert!(m.matches("-5"));
        assert!(m.matches("9"));
        assert!(!m.matches("10"));
        assert!(!m.matches("-6"));
        assert!(!m.matches("abc"));
        assert!(!m.matches(""));
        assert!(!m.matches("99999999999999999999999"));
    }

    #[test]
    fn header_present_and_invert() {
        let h = headers(&[("x-a", "1")]);
        assert!(hm("x-a", None, false).matches(&h));
        assert!(!hm("x-b", None, false).matches(&h));
        assert!(!hm("x-a", None, true).matches(&h));
        assert!(hm("x-b", None, true).matches(&h));
    }

    #[test]
    fn header_missing_matches_inverted_value_matcher() {
        let h = headers(&[]);
        for m in [
            StringMatch::Exact("x".into()),
            StringMatch::Prefix("x".into()),
            StringMatch::Suffix("x".into()),
            StringMatch::Regex(re("x")),
            StringMatch::Range { start: 0, end: 1 },
        ] {
            assert!(!hm("x-a", Some(m.clone()), false).matches(&h));
            assert!(hm("x-a", Some(m), true).matches(&h));
        }
    }

    #[test]
    fn header_any_value_of_multi_valued() {
        let h = headers(&[("x-v", "blue"), ("x-v", "green")]);
        assert!(hm("x-v", Some(StringMatch::Exact("green".into())), false).matches(&h));
        assert!(!hm("x-v", Some(StringMatch::Exact("green".into())), true).matches(&h));
        assert!(!hm("x-v", Some(StringMatch::Exact("red".into())), false).matches(&h));
        assert!(hm("x-v", Some(StringMatch::Exact("red".into())), true).matches(&h));
    }

    #[test]
    fn header_non_utf8_value_never_matches_value() {
        let mut h = HeaderMap::new();
        h.insert("x-b", HeaderValue::from_bytes(&[0xff, b'a']).unwrap());
        assert!(!hm("x-b", Some(StringMatch::Suffix("a".into())), false).matches(&h));
        assert!(hm("x-b", None, false).matches(&h));
    }

    #[test]
    fn path_matchers() {
        assert!(PathMatch::Prefix("/".into()).matches("/anything"));
        assert!(PathMatch::Prefix("/foo".into()).matches("/foobar"));
        assert!(!PathMatch::Prefix("/foo".into()).matches("/fo"));
        assert!(PathMatch::Exact("/a".into()).matches("/a"));
        assert!(!PathMatch::Exact("/a".into()).matches("/a/"));
        assert!(PathMatch::Regex(re("/users/[0-9]+")).matches("/users/42"));
        assert!(!PathMatch::Regex(re("/users/[0-9]+")).matches("/users/42/x"));
    }

    #[test]
    fn host_matchers_ignore_case() {
        assert!(HostMatch::Exact("Api.Example.com".into()).matches("api.example.COM"));
        assert!(!HostMatch::Exact("api.example.com".into()).matches("x.api.example.com"));
        assert!(HostMatch::Suffix(".example.com".into()).matches("API.Example.Com"));
        assert!(!HostMatch::Suffix(".example.com".into()).matches("example.com"));
        assert!(!HostMatch::Suffix("long.example.com".into()).matches("a.com"));
        // Multi-byte host: the suffix boundary may fall inside a character.
        assert!(!HostMatch::Suffix("b".into()).matches("é"));
    }

    #[test]
    fn query_matchers() {
        let q = |name: &str, exact: Option<&str>| QueryMatch {
            name: name.into(),
            exact: exact.map(Into::into),
        };
        assert!(q("a", None).matches(Some("a=1&b=2")));
        assert!(q("b", Some("2")).matches(Some("a=1&b=2")));
        assert!(!q("b", Some("3")).matches(Some("a=1&b=2")));
        assert!(q("flag", None).matches(Some("x=1&flag")));
        assert!(q("flag", Some("")).matches(Some("flag")));
        assert!(!q("a", None).matches(None));
        assert!(!q("a", None).matches(Some("")));
        assert!(!q("a", None).matches(Some("ab=1")));
        assert!(q("name", Some("a b/c")).matches(Some("name=a%20b%2Fc")));
        assert!(q("na me", Some("x")).matches(Some("na%20me=x")));
        assert!(q("p", Some("100%")).matches(Some("p=100%")));
        assert!(q("p", Some("%zz")).matches(Some("p=%zz")));
        assert!(q("p", Some("a+b")).matches(Some("p=a+b")));
        assert!(q("v", Some("2")).matches(Some("v=1&v=2")));
        assert!(q("v", Some("x=y")).matches(Some("v=x=y")));
    }

    #[test]
    fn cookie_matchers() {
        let c = |name: &str, m: Option<StringMatch>, invert: bool| CookieMatch {
            name: name.into(),
            matcher: m,
            invert,
        };
        let h = headers(&[("cookie", "a=1; b=beta"), ("cookie", "c=3;d=4")]);
        assert!(c("a", None, false).matches(&h));
        assert!(c("d", Some(StringMatch::Exact("4".into())), false).matches(&h));
        assert!(c("b", Some(StringMatch::Prefix("be".into())), false).matches(&h));
        assert!(!c("b", Some(StringMatch::Exact("be".into())), false).matches(&h));
        assert!(c("b", Some(StringMatch::Exact("be".into())), true).matches(&h));
        assert!(!c("z", None, false).matches(&h));
        assert!(c("z", None, true).matches(&h));
        assert!(c("z", Some(StringMatch::Exact("1".into())), true).matches(&headers(&[])));
        let odd = headers(&[("cookie", "novalue; ;=x; e=")]);
        assert!(!c("novalue", None, false).matches(&odd));
        assert!(c("e", Some(StringMatch::Exact(String::new())), false).matches(&odd));
    }

    #[test]
    fn http_match_every_field() {
        let h = headers(&[("x-env", "canary"), ("cookie", "user=7")]);
        let get = Method::GET;
        let req = parts(&get, "/api/v1", Some("debug=1"), &h);
        let full = HttpMatch {
            path: Some(PathMatch::Prefix("/api".into())),
            method: Some(Method::GET),
            scheme: Some("HTTP".into()),
            headers: vec![hm(
                "x-env",
                Some(StringMatch::Exact("canary".into())),
                false,
            )],
            query: vec![QueryMatch {
                name: "debug".into(),
                exact: Some("1".into()),
            }],
            port: Some(8080),
            hostname: Some(HostMatch::Exact("svc.local".into())),
            cookies: vec![CookieMatch {
                name: "user".into(),
                matcher: Some(StringMatch::Range { start: 0, end: 10 }),
                invert: false,
            }],
        };
        assert!(full.matches(&req));
        assert!(HttpMatch::default().matches(&req));

        let reject: [fn(&mut HttpMatch); 8] = [
            |m| m.path = Some(PathMatch::Exact("/api".into())),
            |m| m.method = Some(Method::POST),
            |m| m.scheme = Some("https".into()),
            |m| m.headers[0].invert = true,
            |m| m.query[0].exact = Some("2".into()),
            |m| m.port = Some(80),
            |m| m.hostname = Some(HostMatch::Suffix(".other".into())),
            |m| m.cookies[0].invert = true,
        ];
        for change in reject {
            let mut m = full.clone();
            change(&mut m);
            assert!(!m.matches(&req), "{m:?}");
        }
    }

    #[test]
    fn http_path_ignores_query_string() {
        let h = HeaderMap::new();
        let get = Method::GET;
        let req = parts(&get, "/exact?x=1", None, &h);
        let m = HttpMatch {
            path: Some(PathMatch::Exact("/exact".into())),
            ..HttpMatch::default()
        };
        assert!(m.matches(&req));
    }

    #[test]
    fn grpc_service_and_method() {
        let h = headers(&[("x-tenant", "a")]);
        let post = Method::POST;
        let req = parts(&post, "/pkg.Greeter/SayHello", None, &h);
        let g = |s: Option<&str>, m: Option<&str>| GrpcMatch {
            service_name: s.map(Into::into),
            method_name: m.map(Into::into),
            ..GrpcMatch::default()
        };
        assert!(g(None, None).matches(&req));
        assert!(g(Some("pkg.Greeter"), None).matches(&req));
        assert!(g(Some("pkg.Greeter"), Some("SayHello")).matches(&req));
        assert!(g(None, Some("SayHello")).matches(&req));
        assert!(!g(Some("pkg.Greeter"), Some("SayBye")).matches(&req));
        assert!(!g(Some("pkg"), None).matches(&req));

        let mut with_meta = g(Some("pkg.Greeter"), None);
        with_meta.metadata = vec![hm("x-tenant", Some(StringMatch::Exact("a".into())), false)];
        assert!(with_meta.matches(&req));
        with_meta.metadata[0].invert = true;
        assert!(!with_meta.matches(&req));

        let bare = parts(&post, "/nomethod", None, &h);
        assert!(!g(Some("nomethod"), None).matches(&bare));
        assert!(g(None, None).matches(&bare));
        let nested = parts(&post, "/a/b/C", None, &h);
        assert!(g(Some("a/b"), Some("C")).matches(&nested));
    }

    #[test]
    fn tcp_never_matches_http() {
        let h = HeaderMap::new();
        let get = Method::GET;
        let req = parts(&get, "/", None, &h);
        assert!(!RouteMatch::Tcp(TcpMatch::default()).matches(&req));
        assert!(TcpMatch { port: None }.matches(1));
        assert!(TcpMatch { port: Some(1) }.matches(1));
        assert!(!TcpMatch { port: Some(1) }.matches(2));
    }
}
