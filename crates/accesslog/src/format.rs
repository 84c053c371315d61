//! Envoy command operators compiled once into a list of pieces, rendered per record into a
//! caller-owned `String` without further allocation.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::{HeaderMap, HeaderName};

use crate::record::Record;
use crate::time::{self, Digits, TimePiece};

/// Envoy's default text format, used when a virtual node enables file logging without a format.
pub const ENVOY_DEFAULT_TEXT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// What Envoy prints for a value it does not have.
const MISSING: &str = "-";

/// Where the host name comes from for `%HOSTNAME%`.
const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

/// A format string that Envoy would reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// A well-formed `%NAME%` that is not a supported command operator.
    #[error("unknown command operator %{operator}% at position {position}")]
    Unknown { operator: String, position: usize },
    /// A `%` that does not start a well-formed operator (unterminated, bad argument, bad length).
    #[error("malformed command operator {operator:?} at position {position}: {reason}")]
    Malformed {
        operator: String,
        position: usize,
        reason: &'static str,
    },
    /// An error inside the value of one JSON key.
    #[error("json key {key:?}: {inner}")]
    InJsonKey {
        key: String,
        inner: Box<FormatError>,
    },
}

/// A compiled access log format: Envoy text, or App Mesh JSON key/value pairs. Compile once at
/// configuration time; `write` is then allocation-free apart from growing the output.
#[derive(Debug, Clone)]
pub struct Format {
    kind: Kind,
    /// Read once at compile time, only when `%HOSTNAME%` is used.
    hostname: String,
}

#[derive(Debug, Clone)]
enum Kind {
    Text(Vec<Piece>),
    Json(Vec<JsonField>),
}

#[derive(Debug, Clone)]
struct JsonField {
    /// The escaped, quoted key followed by `:`.
    key: String,
    value: JsonValue,
}

#[derive(Debug, Clone)]
enum JsonValue {
    /// The value is exactly one operator, so it keeps its type (number, string or null).
    Single(Op),
    /// Anything else renders as a string.
    Template(Vec<Piece>),
}

#[derive(Debug, Clone)]
enum Piece {
    Lit(String),
    Op(Op),
}

#[derive(Debug, Clone)]
enum Op {
    StartTime(Vec<TimePiece>),
    Req(HeaderOp),
    Resp(HeaderOp),
    Trailer(HeaderOp),
    Protocol,
    ResponseCode,
    ResponseFlags,
    BytesReceived,
    BytesSent,
    Duration,
    RequestDuration,
    ResponseDuration,
    UpstreamHost,
    UpstreamCluster,
    DownstreamRemote,
    DownstreamRemoteWithoutPort,
    DownstreamLocal,
    ReqId,
    RouteName,
    UpstreamTransportFailureReason,
    ConnectionId,
    Hostname,
}

#[derive(Debug, Clone)]
struct HeaderOp {
    main: HeaderRef,
    alt: Option<HeaderRef>,
    max_len: Option<usize>,
}

#[derive(Debug, Clone)]
enum HeaderRef {
    Path,
    Method,
    Authority,
    Scheme,
    Name(HeaderName),
}

/// A resolved operator value, borrowed from the record or the format.
enum Val<'r> {
    Missing,
    Text(Cow<'r, str>),
    Num(u64),
    Addr(SocketAddr),
    Ip(SocketAddr),
    Time(&'r [TimePiece], std::time::SystemTime),
}

/// The output with optional JSON string escaping, so every value renders through one path.
struct Out<'o> {
    buf: &'o mut String,
    escape: bool,
}

impl Format {
    /// Compiles an Envoy text format. The rendered record always ends with one newline (added
    /// when the pattern does not end with one) so that records stay one per line.
    pub fn text(pattern: &str) -> Result<Format, FormatError> {
        let pieces = parse_pieces(pattern)?;
        let hostname = hostname_if(&pieces);
        Ok(Format {
            kind: Kind::Text(pieces),
            hostname,
        })
    }

    /// Compiles App Mesh `format.json`: each value is a format string; a value that is exactly
    /// one operator keeps Envoy's type (numbers for `%RESPONSE_CODE%`, byte counts, durations and
    /// `%CONNECTION_ID%`; `null` when missing). Keys keep their order.
    pub fn json(fields: &[(String, String)]) -> Result<Format, FormatError> {
        let mut out = Vec::with_capacity(fields.len());
        let mut all = Vec::new();
        for (key, value) in fields {
            let mut pieces = parse_pieces(value).map_err(|e| FormatError::InJsonKey {
                key: key.clone(),
                inner: Box::new(e),
            })?;
            let mut quoted = String::with_capacity(key.len() + 3);
            quoted.push('"');
            Out {
                buf: &mut quoted,
                escape: true,
            }
            .str(key);
            quoted.push_str("\":");
            let value = if pieces.len() == 1 && matches!(pieces[0], Piece::Op(_)) {
                match pieces.pop() {
                    Some(Piece::Op(op)) => JsonValue::Single(op),
                    _ => JsonValue::Template(pieces),
                }
            } else {
                JsonValue::Template(pieces)
            };
            match &value {
                JsonValue::Single(op) => all.push(Piece::Op(op.clone())),
                JsonValue::Template(p) => all.extend(p.iter().cloned()),
            }
            out.push(JsonField { key: quoted, value });
        }
        let hostname = hostname_if(&all);
        Ok(Format {
            kind: Kind::Json(out),
            hostname,
        })
    }

    /// Envoy's default text format (`ENVOY_DEFAULT_TEXT`).
    pub fn envoy_default() -> Format {
        match Format::text(ENVOY_DEFAULT_TEXT) {
            Ok(f) => f,
            // The constant uses only supported operators (a test proves it); an empty format is
            // the harmless fallback the type system asks for.
            Err(_) => Format {
                kind: Kind::Text(Vec::new()),
                hostname: String::new(),
            },
        }
    }

    /// True for a JSON format.
    pub fn is_json(&self) -> bool {
        matches!(self.kind, Kind::Json(_))
    }

    /// Appends one rendered record, ending with a newline, to `out`.
    pub fn write(&self, rec: &Record<'_>, out: &mut String) {
        match &self.kind {
            Kind::Text(pieces) => {
                let mut o = Out {
                    buf: out,
                    escape: false,
                };
                self.write_pieces(pieces, rec, &mut o);
                if !out.ends_with('\n') {
                    out.push('\n');
                }
            }
            Kind::Json(fields) => {
                out.push('{');
                for (i, field) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&field.key);
                    let mut o = Out {
                        buf: out,
                        escape: true,
                    };
                    match &field.value {
                        JsonValue::Single(op) => self.write_typed(op, rec, &mut o),
                        JsonValue::Template(pieces) => {
                            o.buf.push('"');
                            self.write_pieces(pieces, rec, &mut o);
                            o.buf.push('"');
                        }
                    }
                }
                out.push_str("}\n");
            }
        }
    }

    fn write_pieces(&self, pieces: &[Piece], rec: &Record<'_>, o: &mut Out<'_>) {
        for piece in pieces {
            match piece {
                Piece::Lit(s) => o.str(s),
                Piece::Op(op) => match self.resolve(op, rec) {
                    Val::Missing => o.str(MISSING),
                    v => o.val(v),
                },
            }
        }
    }

    fn write_typed(&self, op: &Op, rec: &Record<'_>, o: &mut Out<'_>) {
        match self.resolve(op, rec) {
            Val::Missing => o.buf.push_str("null"),
            Val::Num(n) => o.buf.push_str(Digits::new(n, 1).as_str()),
            v => {
                o.buf.push('"');
                o.val(v);
                o.buf.push('"');
            }
        }
    }

    fn resolve<'r>(&'r self, op: &'r Op, rec: &'r Record<'_>) -> Val<'r> {
        let text = |s: Option<&'r str>| match s {
            Some(s) if !s.is_empty() => Val::Text(Cow::Borrowed(s)),
            _ => Val::Missing,
        };
        let millis =
            |d: Option<Duration>| d.map_or(Val::Missing, |d| Val::Num(d.as_millis() as u64));
        match op {
            Op::StartTime(fmt) => Val::Time(fmt, rec.start),
            Op::Req(h) => header_op(h, rec, Some(rec.request_headers)),
            Op::Resp(h) => header_op(h, rec, rec.response_headers),
            Op::Trailer(h) => header_op(h, rec, rec.response_trailers),
            Op::Protocol => text(rec.protocol),
            Op::ResponseCode => Val::Num(u64::from(rec.response_code)),
            Op::ResponseFlags => text(Some(rec.response_flags)),
            Op::BytesReceived => Val::Num(rec.bytes_received),
            Op::BytesSent => Val::Num(rec.bytes_sent),
            Op::Duration => millis(Some(rec.duration)),
            Op::RequestDuration => millis(rec.request_duration),
            Op::ResponseDuration => millis(rec.response_duration),
            Op::UpstreamHost => rec.upstream_host.map_or(Val::Missing, Val::Addr),
            Op::UpstreamCluster => text(rec.upstream_cluster),
            Op::DownstreamRemote => rec.downstream_remote.map_or(Val::Missing, Val::Addr),
            Op::DownstreamRemoteWithoutPort => rec.downstream_remote.map_or(Val::Missing, Val::Ip),
            Op::DownstreamLocal => rec.downstream_local.map_or(Val::Missing, Val::Addr),
            Op::ReqId => header_value(rec.request_headers.get("x-request-id")),
            Op::RouteName => text(rec.route_name),
            Op::UpstreamTransportFailureReason => text(rec.upstream_transport_failure_reason),
            Op::ConnectionId => Val::Num(rec.connection_id),
            Op::Hostname => text(Some(&self.hostname)),
        }
    }
}

impl Out<'_> {
    fn val(&mut self, v: Val<'_>) {
        match v {
            Val::Missing => self.str(MISSING),
            Val::Text(s) => self.str(&s),
            Val::Num(n) => self.buf.push_str(Digits::new(n, 1).as_str()),
            // IPv4 by hand: `Display` for addresses goes through padding support and costs
            // several times more. IPv6 is rare on these paths.
            Val::Addr(SocketAddr::V4(a)) => {
                self.ipv4(a.ip().octets());
                self.buf.push(':');
                self.buf
                    .push_str(Digits::new(u64::from(a.port()), 1).as_str());
            }
            Val::Addr(a) => {
                let _ = write!(self, "{a}");
            }
            Val::Ip(a) => match a.ip() {
                IpAddr::V4(ip) => self.ipv4(ip.octets()),
                ip => {
                    let _ = write!(self, "{ip}");
                }
            },
            Val::Time(fmt, at) => {
                // The layout's literals come from configuration and may need escaping.
                time::render(fmt, at, self);
            }
        }
    }

    /// Dotted quad; digits never need escaping.
    fn ipv4(&mut self, octets: [u8; 4]) {
        for (i, o) in octets.into_iter().enumerate() {
            if i > 0 {
                self.buf.push('.');
            }
            self.buf.push_str(Digits::new(u64::from(o), 1).as_str());
        }
    }

    fn str(&mut self, s: &str) {
        if !self.escape {
            self.buf.push_str(s);
            return;
        }
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let esc: &str = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.buf.push_str(&s[start..i]);
            if esc.is_empty() {
                let _ = write!(self.buf, "\\u{b:04x}");
            } else {
                self.buf.push_str(esc);
            }
            start = i + 1;
        }
        self.buf.push_str(&s[start..]);
    }
}

impl std::fmt::Write for Out<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.str(s);
        Ok(())
    }
}

fn header_op<'r>(h: &'r HeaderOp, rec: &'r Record<'_>, map: Option<&'r HeaderMap>) -> Val<'r> {
    let v = match lookup(&h.main, rec, map) {
        Val::Missing => match &h.alt {
            Some(alt) => lookup(alt, rec, map),
            None => Val::Missing,
        },
        v => v,
    };
    match (v, h.max_len) {
        (Val::Text(s), Some(max)) => Val::Text(truncate(s, max)),
        (v, _) => v,
    }
}

fn lookup<'r>(h: &'r HeaderRef, rec: &'r Record<'_>, map: Option<&'r HeaderMap>) -> Val<'r> {
    let text = |s: Option<&'r str>| match s {
        Some(s) if !s.is_empty() => Val::Text(Cow::Borrowed(s)),
        _ => Val::Missing,
    };
    match h {
        HeaderRef::Path => text(rec.path),
        HeaderRef::Method => text(rec.method),
        HeaderRef::Authority => text(rec.authority),
        HeaderRef::Scheme => text(rec.scheme),
        HeaderRef::Name(name) => header_value(map.and_then(|m| m.get(name))),
    }
}

fn header_value(v: Option<&http::HeaderValue>) -> Val<'_> {
    match v {
        // Header bytes may be obs-text; lossy decoding only allocates in that rare case.
        Some(v) if !v.is_empty() => Val::Text(String::from_utf8_lossy(v.as_bytes())),
        _ => Val::Missing,
    }
}

fn truncate(s: Cow<'_, str>, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => s,
        Some((end, _)) => match s {
            Cow::Borrowed(b) => Cow::Borrowed(&b[..end]),
            Cow::Owned(mut o) => {
                o.truncate(end);
                Cow::Owned(o)
            }
        },
    }
}

fn hostname_if(pieces: &[Piece]) -> String {
    let used = pieces.iter().any(|p| matches!(p, Piece::Op(Op::Hostname)));
    if !used {
        return String::new();
    }
    std::fs::read_to_string(HOSTNAME_FILE)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Splits a pattern into literals and operators. Positions in errors are byte offsets of the
/// operator's opening `%`.
fn parse_pieces(pattern: &str) -> Result<Vec<Piece>, FormatError> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let bytes = pattern.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let Some(rel) = pattern[i..].find('%') else {
            lit.push_str(&pattern[i..]);
            break;
        };
        lit.push_str(&pattern[i..i + rel]);
        let start = i + rel;
        if bytes.get(start + 1) == Some(&b'%') {
            lit.push('%');
            i = start + 2;
            continue;
        }
        let (op, end) = parse_op(pattern, start)?;
        if !lit.is_empty() {
            pieces.push(Piece::Lit(std::mem::take(&mut lit)));
        }
        pieces.push(Piece::Op(op));
        i = end;
    }
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    Ok(pieces)
}

/// Parses `%NAME%`, `%NAME(ARG)%` or `%NAME(ARG):N%` starting at the `%` at `start`; returns the
/// operator and the index just past its closing `%`.
fn parse_op(pattern: &str, start: usize) -> Result<(Op, usize), FormatError> {
    let bytes = pattern.as_bytes();
    let malformed = |end: usize, reason: &'static str| {
        // The excerpt must end on a character boundary: the byte after '%' may start a
        // multi-byte character.
        let mut end = end.min(pattern.len());
        while !pattern.is_char_boundary(end) {
            end += 1;
        }
        FormatError::Malformed {
            operator: pattern[start..end].to_string(),
            position: start,
            reason,
        }
    };
    let mut i = start + 1;
    while i < bytes.len()
        && (bytes[i].is_ascii_uppercase() || bytes[i].is_ascii_digit() || bytes[i] == b'_')
    {
        i += 1;
    }
    let name = &pattern[start + 1..i];
    if name.is_empty() {
        return Err(malformed(i + 1, "expected an operator name after '%'"));
    }
    let mut arg = None;
    if bytes.get(i) == Some(&b'(') {
        let Some(close) = pattern[i..].find(')') else {
            return Err(malformed(pattern.len(), "missing ')'"));
        };
        arg = Some(&pattern[i + 1..i + close]);
        i += close + 1;
    }
    let mut max_len = None;
    if bytes.get(i) == Some(&b':') {
        let digits_start = i + 1;
        let mut j = digits_start;
        while j < bytes.len() && bytes[j].is_ascii_digit() {
            j += 1;
        }
        let n = pattern[digits_start..j]
            .parse::<usize>()
            .map_err(|_| malformed(j + 1, "expected a length after ':'"))?;
        max_len = Some(n);
        i = j;
    }
    if bytes.get(i) != Some(&b'%') {
        return Err(malformed(i + 1, "missing closing '%'"));
    }
    let end = i + 1;
    let simple = |op: Op| {
        if arg.is_some() {
            Err(malformed(end, "operator takes no argument"))
        } else if max_len.is_some() {
            Err(malformed(end, "operator takes no length"))
        } else {
            Ok(op)
        }
    };
    let headers = |pseudo: bool| -> Result<HeaderOp, FormatError> {
        let Some(arg) = arg else {
            return Err(malformed(end, "expected a header name in parentheses"));
        };
        let (main, alt) = match arg.split_once('?') {
            Some((m, a)) => (m, Some(a)),
            None => (arg, None),
        };
        let parse =
            |n: &str| header_ref(n, pseudo).ok_or_else(|| malformed(end, "invalid header name"));
        Ok(HeaderOp {
            main: parse(main)?,
            alt: alt.map(parse).transpose()?,
            max_len,
        })
    };
    let op = match name {
        "START_TIME" => {
            if max_len.is_some() {
                return Err(malformed(end, "operator takes no length"));
            }
            match arg {
                None => Op::StartTime(time::default_format()),
                Some(fmt) => Op::StartTime(
                    time::parse(fmt).map_err(|_| malformed(end, "unsupported time specifier"))?,
                ),
            }
        }
        "REQ" => Op::Req(headers(true)?),
        "RESP" => Op::Resp(headers(false)?),
        "TRAILER" => Op::Trailer(headers(false)?),
        "PROTOCOL" => simple(Op::Protocol)?,
        "RESPONSE_CODE" => simple(Op::ResponseCode)?,
        "RESPONSE_FLAGS" => simple(Op::ResponseFlags)?,
        "BYTES_RECEIVED" => simple(Op::BytesReceived)?,
        "BYTES_SENT" => simple(Op::BytesSent)?,
        "DURATION" => simple(Op::Duration)?,
        "REQUEST_DURATION" => simple(Op::RequestDuration)?,
        "RESPONSE_DURATION" => simple(Op::ResponseDuration)?,
        "UPSTREAM_HOST" => simple(Op::UpstreamHost)?,
        "UPSTREAM_CLUSTER" => simple(Op::UpstreamCluster)?,
        "DOWNSTREAM_REMOTE_ADDRESS" => simple(Op::DownstreamRemote)?,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => simple(Op::DownstreamRemoteWithoutPort)?,
        "DOWNSTREAM_LOCAL_ADDRESS" => simple(Op::DownstreamLocal)?,
        "REQ_ID" => simple(Op::ReqId)?,
        "ROUTE_NAME" => simple(Op::RouteName)?,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => simple(Op::UpstreamTransportFailureReason)?,
        "CONNECTION_ID" => simple(Op::ConnectionId)?,
        "HOSTNAME" => simple(Op::Hostname)?,
        _ => {
            return Err(FormatError::Unknown {
                operator: name.to_string(),
                position: start,
            });
        }
    };
    Ok((op, end))
}

fn header_ref(name: &str, pseudo: bool) -> Option<HeaderRef> {
    if let Some(p) = name.strip_prefix(':') {
        if !pseudo {
            return None;
        }
        return match p.to_ascii_lowercase().as_str() {
            "path" => Some(HeaderRef::Path),
            "method" => Some(HeaderRef::Method),
            "authority" => Some(HeaderRef::Authority),
            "scheme" => Some(HeaderRef::Scheme),
            _ => None,
        };
    }
    // Envoy treats `host` and `:authority` as one header.
    if pseudo && name.eq_ignore_ascii_case("host") {
        return Some(HeaderRef::Authority);
    }
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .ok()
        .map(HeaderRef::Name)
}
