//! Trace context propagation, pure: W3C `traceparent`/`tracestate`, B3 (single `b3` header and
//! multi `X-B3-*` headers) and AWS X-Ray `X-Amzn-Trace-Id`.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// W3C trace context header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C vendor state header.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// B3 single header.
pub const B3: HeaderName = HeaderName::from_static("b3");
/// B3 multi: the trace id (16 or 32 hex digits).
pub const X_B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// B3 multi: the span id.
pub const X_B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// B3 multi: the parent span id.
pub const X_B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// B3 multi: the sampling decision, `1` or `0`.
pub const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// B3 multi: `1` forces sampling (debug).
pub const X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
/// AWS X-Ray header.
pub const X_AMZN_TRACE_ID: HeaderName = HeaderName::from_static("x-amzn-trace-id");

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Room for the longest value written: the X-Ray header, 74 bytes with `;Sampled=`.
const MAX_VALUE_LEN: usize = 80;

/// Headers `inject` may add: traceparent, b3, four X-B3 headers, X-Amzn-Trace-Id.
const MAX_INJECTED: usize = 7;

/// Bytes of every value `inject` writes (traceparent 55, b3 68, X-B3 ids 32 + 16 + 16, X-Ray 74).
const INJECT_ARENA_BYTES: usize = 264;

/// The trace a request belongs to and the span that sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 128-bit trace id; never all zero. 64-bit B3 ids are left-padded with zeros.
    pub trace_id: [u8; 16],
    /// The current span; never all zero.
    pub span_id: [u8; 8],
    /// The span this one is a child of, when known (B3 `X-B3-ParentSpanId`).
    pub parent_span_id: Option<[u8; 8]>,
    /// The sampling decision; `None` defers it downstream.
    pub sampled: Option<bool>,
    /// W3C `tracestate`, passed through unchanged.
    pub tracestate: Option<String>,
}

/// Which header formats `inject` writes. Default is W3C, B3 multi and X-Ray.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceFormats {
    /// `traceparent` (and `tracestate` when present).
    pub w3c: bool,
    /// `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-ParentSpanId`, `X-B3-Sampled`.
    pub b3_multi: bool,
    /// The single `b3` header.
    pub b3_single: bool,
    /// `X-Amzn-Trace-Id`.
    pub xray: bool,
}

impl TraceFormats {
    /// Every supported format.
    pub const ALL: TraceFormats = TraceFormats {
        w3c: true,
        b3_multi: true,
        b3_single: true,
        xray: true,
    };
}

impl Default for TraceFormats {
    fn default() -> Self {
        TraceFormats {
            w3c: true,
            b3_multi: true,
            b3_single: false,
            xray: true,
        }
    }
}

impl TraceContext {
    /// A new trace. The first four bytes of the trace id are the current Unix time so that the
    /// id is also a valid X-Ray id; the rest is random. Sampled with probability `sample_rate`
    /// (clamped to 0..=1; NaN never samples).
    pub fn new_root(sample_rate: f64) -> TraceContext {
        let mut trace_id = [0u8; 16];
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        trace_id[..4].copy_from_slice(&secs.to_be_bytes());
        trace_id[4..12].copy_from_slice(&fastrand::u64(..).to_be_bytes());
        trace_id[12..].copy_from_slice(&fastrand::u32(1..).to_be_bytes());
        let sampled = sample_rate >= 1.0 || (sample_rate > 0.0 && fastrand::f64() < sample_rate);
        TraceContext {
            trace_id,
            span_id: random_span_id(),
            parent_span_id: None,
            sampled: Some(sampled),
            tracestate: None,
        }
    }

    /// A child span: same trace, sampling and state, a new random span id whose parent is this one.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id,
            span_id: random_span_id(),
            parent_span_id: Some(self.span_id),
            sampled: self.sampled,
            tracestate: self.tracestate.clone(),
        }
    }

    /// `00-<trace>-<span>-<flags>`.
    pub fn traceparent(&self) -> String {
        let mut b = ValueBuf::new();
        self.write_traceparent(&mut b);
        b.as_str().to_string()
    }

    /// `<trace>-<span>[-<1|0>[-<parent>]]`.
    pub fn b3_single(&self) -> String {
        let mut b = ValueBuf::new();
        self.write_b3_single(&mut b);
        b.as_str().to_string()
    }

    /// `Root=1-<8 hex>-<24 hex>;Parent=<16 hex>[;Sampled=<1|0>]`.
    pub fn xray(&self) -> String {
        let mut b = ValueBuf::new();
        self.write_xray(&mut b);
        b.as_str().to_string()
    }

    fn write_traceparent(&self, b: &mut ValueBuf) {
        b.push(b"00-");
        b.push_hex(&self.trace_id);
        b.push(b"-");
        b.push_hex(&self.span_id);
        b.push(if self.sampled == Some(true) {
            b"-01"
        } else {
            b"-00"
        });
    }

    fn write_b3_single(&self, b: &mut ValueBuf) {
        b.push_hex(&self.trace_id);
        b.push(b"-");
        b.push_hex(&self.span_id);
        if let Some(sampled) = self.sampled {
            b.push(if sampled { b"-1" } else { b"-0" });
            if let Some(parent) = &self.parent_span_id {
                b.push(b"-");
                b.push_hex(parent);
            }
        }
    }

    fn write_xray(&self, b: &mut ValueBuf) {
        b.push(b"Root=1-");
        b.push_hex(&self.trace_id[..4]);
        b.push(b"-");
        b.push_hex(&self.trace_id[4..]);
        b.push(b";Parent=");
        b.push_hex(&self.span_id);
        match self.sampled {
            Some(true) => b.push(b";Sampled=1"),
            Some(false) => b.push(b";Sampled=0"),
            None => {}
        }
    }
}

/// A header value formatted on the stack, so writing trace headers allocates only the
/// `HeaderValue` itself.
struct ValueBuf {
    bytes: [u8; MAX_VALUE_LEN],
    len: usize,
}

impl ValueBuf {
    fn new() -> Self {
        ValueBuf {
            bytes: [0; MAX_VALUE_LEN],
            len: 0,
        }
    }

    fn clear(&mut self) -> &mut Self {
        self.len = 0;
        self
    }

    /// Appends what fits; every value written here is shorter than the buffer by construction.
    fn push(&mut self, s: &[u8]) {
        let end = (self.len + s.len()).min(MAX_VALUE_LEN);
        let n = end - self.len;
        self.bytes[self.len..end].copy_from_slice(&s[..n]);
        self.len = end;
    }

    fn push_hex(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.push(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0x0f)]]);
        }
    }

    fn as_str(&self) -> &str {
        // Only ASCII is ever pushed.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }

    /// The value, carved out of `arena` so the values of one `inject` share an allocation.
    fn value(&self, arena: &mut BytesMut) -> Option<HeaderValue> {
        arena.extend_from_slice(&self.bytes[..self.len]);
        HeaderValue::from_maybe_shared(arena.split().freeze()).ok()
    }
}

/// Reads the incoming context: W3C first, then B3 (single, then multi), then X-Ray. Malformed
/// headers are ignored, as if absent.
pub fn extract(headers: &HeaderMap) -> Option<TraceContext> {
    w3c(headers)
        .or_else(|| b3(headers))
        .or_else(|| xray(headers))
}

/// Writes `ctx` in each configured format, replacing any previous values of those headers.
pub fn inject(ctx: &TraceContext, headers: &mut HeaderMap, formats: TraceFormats) {
    let mut buf = ValueBuf::new();
    let mut arena = BytesMut::with_capacity(INJECT_ARENA_BYTES);
    // One growth of the map at most, instead of one per header added.
    headers.reserve(MAX_INJECTED);
    let mut set = |name: HeaderName, value: Option<HeaderValue>| {
        // Hex and fixed punctuation are always valid header bytes.
        if let Some(v) = value {
            headers.insert(name, v);
        }
    };
    if formats.w3c {
        ctx.write_traceparent(buf.clear());
        set(TRACEPARENT, buf.value(&mut arena));
        if let Some(state) = &ctx.tracestate {
            set(TRACESTATE, HeaderValue::from_str(state).ok());
        }
    }
    if formats.b3_single {
        ctx.write_b3_single(buf.clear());
        set(B3, buf.value(&mut arena));
    }
    if formats.b3_multi {
        buf.clear().push_hex(&ctx.trace_id);
        set(X_B3_TRACE_ID, buf.value(&mut arena));
        buf.clear().push_hex(&ctx.span_id);
        set(X_B3_SPAN_ID, buf.value(&mut arena));
        if let Some(p) = &ctx.parent_span_id {
            buf.clear().push_hex(p);
            set(X_B3_PARENT_SPAN_ID, buf.value(&mut arena));
        }
        if let Some(s) = ctx.sampled {
            let v = HeaderValue::from_static(if s { "1" } else { "0" });
            set(X_B3_SAMPLED, Some(v));
        }
    }
    if formats.xray {
        ctx.write_xray(buf.clear());
        set(X_AMZN_TRACE_ID, buf.value(&mut arena));
    }
    if formats.b3_multi {
        // A stale parent or debug flag would contradict the new span.
        if ctx.parent_span_id.is_none() {
            headers.remove(X_B3_PARENT_SPAN_ID);
        }
        headers.remove(X_B3_FLAGS);
        if ctx.sampled.is_none() {
            headers.remove(X_B3_SAMPLED);
        }
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

fn w3c(headers: &HeaderMap) -> Option<TraceContext> {
    let tp = header(headers, &TRACEPARENT)?;
    let mut parts = tp.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || !is_lower_hex(version) || version == "ff" {
        return None;
    }
    // Version 00 has exactly four fields; later versions may append more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if !is_lower_hex(trace) || !is_lower_hex(span) || !is_lower_hex(flags) || flags.len() != 2 {
        return None;
    }
    let trace_id = parse_hex::<16>(trace)?;
    let span_id = parse_hex::<8>(span)?;
    let flags = parse_hex::<1>(flags)?[0];
    let states: Vec<&str> = headers
        .get_all(&TRACESTATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    valid(TraceContext {
        trace_id,
        span_id,
        parent_span_id: None,
        sampled: Some(flags & 1 == 1),
        tracestate: (!states.is_empty()).then(|| states.join(",")),
    })
}

fn b3(headers: &HeaderMap) -> Option<TraceContext> {
    if let Some(single) = header(headers, &B3) {
        let mut parts = single.split('-');
        let trace = parts.next()?;
        // A sampling-only header (`0`, `1`, `d`) carries no ids.
        if let Some(span) = parts.next() {
            let sampled = match parts.next() {
                None => None,
                Some(s) => Some(b3_sampling(s)?),
            };
            let parent = match parts.next() {
                None => None,
                Some(p) => Some(parse_hex::<8>(p)?),
            };
            return valid(TraceContext {
                trace_id: b3_trace_id(trace)?,
                span_id: parse_hex::<8>(span)?,
                parent_span_id: parent,
                sampled,
                tracestate: None,
            });
        }
    }
    let trace = header(headers, &X_B3_TRACE_ID)?;
    let span = header(headers, &X_B3_SPAN_ID)?;
    let debug = header(headers, &X_B3_FLAGS) == Some("1");
    let sampled = match header(headers, &X_B3_SAMPLED) {
        _ if debug => Some(true),
        None => None,
        Some(s) => match s {
            "1" | "true" => Some(true),
            "0" | "false" => Some(false),
            _ => None,
        },
    };
    let parent = header(headers, &X_B3_PARENT_SPAN_ID).and_then(parse_hex::<8>);
    valid(TraceContext {
        trace_id: b3_trace_id(trace)?,
        span_id: parse_hex::<8>(span)?,
        parent_span_id: parent,
        sampled,
        tracestate: None,
    })
}

fn b3_sampling(s: &str) -> Option<bool> {
    match s {
        "1" | "d" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// 128-bit, or 64-bit left-padded with zeros.
fn b3_trace_id(s: &str) -> Option<[u8; 16]> {
    match s.len() {
        32 => parse_hex::<16>(s),
        16 => {
            let low = parse_hex::<8>(s)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            Some(id)
        }
        _ => None,
    }
}

fn xray(headers: &HeaderMap) -> Option<TraceContext> {
    let value = header(headers, &X_AMZN_TRACE_ID)?;
    let mut root = None;
    let mut parent = None;
    let mut sampled = None;
    for field in value.split(';') {
        let Some((k, v)) = field.trim().split_once('=') else {
            continue;
        };
        match k.trim() {
            "Root" => root = Some(v.trim()),
            "Parent" => parent = Some(parse_hex::<8>(v.trim())?),
            "Sampled" => {
                sampled = match v.trim() {
                    "1" => Some(true),
                    "0" => Some(false),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    let root = root?;
    let mut parts = root.split('-');
    let (version, time, id) = (parts.next()?, parts.next()?, parts.next()?);
    if version != "1" || time.len() != 8 || id.len() != 24 || parts.next().is_some() {
        return None;
    }
    let mut trace_id = [0u8; 16];
    trace_id[..4].copy_from_slice(&parse_hex::<4>(time)?);
    trace_id[4..].copy_from_slice(&parse_hex::<12>(id)?);
    valid(TraceContext {
        trace_id,
        // Without a Parent (a load balancer started the trace) there is no span to continue;
        // a fresh id stands in for it.
        span_id: parent.unwrap_or_else(random_span_id),
        parent_span_id: None,
        sampled,
        tracestate: None,
    })
}

fn valid(ctx: TraceContext) -> Option<TraceContext> {
    (ctx.trace_id != [0; 16] && ctx.span_id != [0; 8]).then_some(ctx)
}

fn random_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Exactly `2 * N` hex digits (either case) into bytes.
fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        let hi = (b[2 * i] as char).to_digit(16)?;
        let lo = (b[2 * i + 1] as char).to_digit(16)?;
        *o = (hi * 16 + lo) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_string(bytes: &[u8]) -> String {
        let mut b = ValueBuf::new();
        b.push_hex(bytes);
        b.as_str().to_string()
    }

    fn map(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    fn hex<const N: usize>(s: &str) -> [u8; N] {
        parse_hex::<N>(s).unwrap()
    }

    #[test]
    fn w3c_vector_round_trips() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let h = map(&[
            ("traceparent", tp),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("tracestate", "rojo=00f067aa0ba902b7"),
        ]);
        let ctx = extract(&h).unwrap();
        assert_eq!(ctx.trace_id, hex::<16>("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(ctx.span_id, hex::<8>("00f067aa0ba902b7"));
        assert_eq!(ctx.sampled, Some(true));
        assert_eq!(
            ctx.tracestate.as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        assert_eq!(ctx.traceparent(), tp);
        let mut out = HeaderMap::new();
        inject(
            &ctx,
            &mut out,
            TraceFormats {
                w3c: true,
                b3_multi: false,
                b3_single: false,
                xray: false,
            },
        );
        assert_eq!(out["traceparent"], tp);
        assert_eq!(out["tracestate"], "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn w3c_rejects_invalid() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert_eq!(extract(&map(&[("traceparent", bad)])), None, "{bad}");
        }
        // A future version may carry more fields.
        let ok = extract(&map(&[(
            "traceparent",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more",
        )]))
        .unwrap();
        assert_eq!(ok.sampled, Some(false));
    }

    #[test]
    fn b3_single_vectors() {
        let h = map(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]);
        let ctx = extract(&h).unwrap();
        assert_eq!(ctx.trace_id, hex::<16>("80f198ee56343ba864fe8b2a57d3eff7"));
        assert_eq!(ctx.span_id, hex::<8>("e457b5a2e4d86bd1"));
        assert_eq!(ctx.parent_span_id, Some(hex::<8>("05e3ac9a4f6e3b90")));
        assert_eq!(ctx.sampled, Some(true));
        assert_eq!(
            ctx.b3_single(),
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"
        );
        let short = extract(&map(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-d")])).unwrap();
        assert_eq!(
            short.trace_id,
            hex::<16>("0000000000000000a3ce929d0e0e4736")
        );
        assert_eq!(short.sampled, Some(true));
        let deferred = extract(&map(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7")])).unwrap();
        assert_eq!(deferred.sampled, None);
        assert_eq!(extract(&map(&[("b3", "0")])), None);
        assert_eq!(
            extract(&map(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-x")])),
            None
        );
    }

    #[test]
    fn b3_multi_vectors() {
        let h = map(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-parentspanid", "0020000000000001"),
            ("x-b3-sampled", "0"),
        ]);
        let ctx = extract(&h).unwrap();
        assert_eq!(ctx.trace_id, hex::<16>("463ac35c9f6413ad48485a3953bb6124"));
        assert_eq!(ctx.span_id, hex::<8>("a2fb4a1d1a96d312"));
        assert_eq!(ctx.parent_span_id, Some(hex::<8>("0020000000000001")));
        assert_eq!(ctx.sampled, Some(false));
        let debug = map(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-flags", "1"),
        ]);
        assert_eq!(extract(&debug).unwrap().sampled, Some(true));
        assert_eq!(extract(&map(&[("x-b3-traceid", "463ac35c9f6413ad")])), None);
    }

    #[test]
    fn xray_vectors() {
        let v = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
        let ctx = extract(&map(&[("x-amzn-trace-id", v)])).unwrap();
        assert_eq!(ctx.trace_id, hex::<16>("5759e988bd862e3fe1be46a994272793"));
        assert_eq!(ctx.span_id, hex::<8>("53995c3f42cd8ad8"));
        assert_eq!(ctx.sampled, Some(true));
        assert_eq!(ctx.xray(), v);
        let lb = extract(&map(&[(
            "x-amzn-trace-id",
            "Self=1-67891234-12456789abcdef012345678;Root=1-67891233-abcdef012345678912345678",
        )]))
        .unwrap();
        assert_eq!(lb.trace_id, hex::<16>("67891233abcdef012345678912345678"));
        assert_eq!(lb.sampled, None);
        assert_ne!(lb.span_id, [0; 8]);
        assert_eq!(
            extract(&map(&[(
                "x-amzn-trace-id",
                "Root=2-5759e988-bd862e3fe1be46a994272793"
            )])),
            None
        );
    }

    #[test]
    fn w3c_wins_then_b3_then_xray() {
        let h = map(&[
            (
                "x-amzn-trace-id",
                "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
            ),
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ]);
        assert_eq!(extract(&h).unwrap().trace_id[0], 0x4b);
        let mut h = h;
        h.remove("traceparent");
        assert_eq!(extract(&h).unwrap().trace_id[0], 0x46);
        h.remove("x-b3-traceid");
        assert_eq!(extract(&h).unwrap().trace_id[0], 0x57);
        assert_eq!(extract(&HeaderMap::new()), None);
    }

    #[test]
    fn inject_all_formats_round_trip() {
        let root = TraceContext::new_root(1.0);
        let ctx = root.child();
        assert_eq!(ctx.trace_id, root.trace_id);
        assert_ne!(ctx.span_id, root.span_id);
        assert_eq!(ctx.parent_span_id, Some(root.span_id));
        let mut h = map(&[("x-b3-flags", "1"), ("x-b3-sampled", "0")]);
        inject(&ctx, &mut h, TraceFormats::ALL);
        assert_eq!(h["x-b3-sampled"], "1");
        assert!(h.get("x-b3-flags").is_none());
        assert_eq!(h["x-b3-parentspanid"], hex_string(&root.span_id).as_str());
        for name in ["traceparent", "b3", "x-b3-traceid", "x-amzn-trace-id"] {
            let mut only = HeaderMap::new();
            only.insert(HeaderName::from_static(name), h[name].clone());
            if name == "x-b3-traceid" {
                only.insert("x-b3-spanid", h["x-b3-spanid"].clone());
                only.insert("x-b3-sampled", h["x-b3-sampled"].clone());
            }
            let back = extract(&only).unwrap();
            assert_eq!(back.trace_id, ctx.trace_id, "{name}");
            assert_eq!(back.span_id, ctx.span_id, "{name}");
            assert_eq!(back.sampled, Some(true), "{name}");
        }
        // Default formats skip the single b3 header.
        let mut d = HeaderMap::new();
        inject(&ctx, &mut d, TraceFormats::default());
        assert!(d.get("b3").is_none() && d.get("traceparent").is_some());
    }

    #[test]
    fn new_root_sampling_and_xray_compatible_ids() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as u32;
        let root = TraceContext::new_root(0.0);
        assert_eq!(root.sampled, Some(false));
        let secs = u32::from_be_bytes(root.trace_id[..4].try_into().unwrap());
        assert!(secs.abs_diff(now) <= 2);
        assert_eq!(TraceContext::new_root(f64::NAN).sampled, Some(false));
        let sampled = (0..1000)
            .filter(|_| TraceContext::new_root(0.5).sampled == Some(true))
            .count();
        assert!((300..700).contains(&sampled), "{sampled}");
        let deferred = TraceContext {
            sampled: None,
            ..root
        };
        assert_eq!(deferred.traceparent().len(), 55);
        assert!(deferred.traceparent().ends_with("-00"));
        assert!(!deferred.xray().contains("Sampled"));
    }
}
