//! Header hygiene: hop-by-hop removal (RFC 9110 §7.6.1), forwarding headers, request ids.

use std::cell::RefCell;
use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `x-request-id`, generated when a request arrives without one (as Envoy does).
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-forwarded-for`: the downstream address is appended.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`: set to the downstream scheme when absent.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// How many fields [`add_forwarding`] may add to a request (`x-forwarded-for`,
/// `x-forwarded-proto`, `x-request-id`). A parser that builds a request's header map sizes it
/// with this much room, so adding them does not grow (rehash and reallocate) the map: without
/// it, a request with two fields grew twice.
pub const FORWARDING_FIELDS: usize = 3;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// True when a request asks for an HTTP/1.1 upgrade (`Connection: upgrade` plus `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Removes hop-by-hop headers: those named by `Connection`, and the fixed set. With `upgrade`,
/// `Connection: upgrade` and `Upgrade` are kept so the upgrade reaches the next hop. `TE` is kept
/// only as `trailers` (gRPC needs it).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most requests and responses carry none of these: one pass over the names (cheap
    // comparisons, no hashing) saves a handful of hashed removals per message.
    if !upgrade && !headers.keys().any(is_hop_by_hop_name) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| !(upgrade && *n == header::UPGRADE))
            .collect();
        for name in named {
            headers.remove(&name);
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
    if let Some(te) = headers.get(header::TE) {
        let trailers = te.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

fn is_hop_by_hop_name(name: &HeaderName) -> bool {
    // Dispatch on the length first: most names differ in length from all six, so a typical
    // header costs one table lookup and one compare instead of six name comparisons.
    let s = name.as_str();
    match s.len() {
        2 => s == "te",
        7 => s == "upgrade",
        10 => s == "connection" || s == "keep-alive",
        16 => s == "proxy-connection",
        17 => s == "transfer-encoding",
        _ => false,
    }
}

/// Writes `ip` as text into `out` and returns the length. IPv4 (the common case) is written
/// digit by digit; `fmt` machinery costs over a thousand instructions per address.
fn format_ip(ip: IpAddr, out: &mut [u8; 64]) -> usize {
    use std::io::Write as _;

    match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    out[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    out[len] = b'0' + (octet / 10) % 10;
                    len += 1;
                }
                out[len] = b'0' + octet % 10;
                len += 1;
            }
            len
        }
        IpAddr::V6(_) => {
            // An IPv6 address is at most 45 characters; format it without a heap String.
            let mut cursor = std::io::Cursor::new(&mut out[..]);
            let _ = write!(cursor, "{ip}");
            cursor.position() as usize
        }
    }
}

/// Appends the downstream address to `x-forwarded-for`, sets `x-forwarded-proto` when absent and
/// adds an `x-request-id` when absent. One hashed lookup per header, one allocation for the
/// address.
pub fn add_forwarding(headers: &mut HeaderMap, peer: IpAddr, scheme: &'static str) {
    use http::header::Entry;

    let mut text = [0u8; 64];
    let len = format_ip(peer, &mut text);
    let peer_text = &text[..len];
    match headers.entry(X_FORWARDED_FOR.clone()) {
        Entry::Occupied(mut e) => {
            let prev = e.get().as_bytes();
            let value = if prev.is_empty() {
                HeaderValue::from_bytes(peer_text)
            } else {
                let mut joined = Vec::with_capacity(prev.len() + 1 + len);
                joined.extend_from_slice(prev);
                joined.push(b',');
                joined.extend_from_slice(peer_text);
                HeaderValue::from_bytes(&joined)
            };
            if let Ok(v) = value {
                e.insert(v);
            }
        }
        Entry::Vacant(e) => {
            if let Some(v) = peer_value(peer, peer_text) {
                e.insert(v);
            }
        }
    }
    if let Entry::Vacant(e) = headers.entry(X_FORWARDED_PROTO.clone()) {
        e.insert(HeaderValue::from_static(scheme));
    }
    if let Entry::Vacant(e) = headers.entry(X_REQUEST_ID.clone()) {
        e.insert(request_id());
    }
}

thread_local! {
    /// The last peer address written as a header value on this thread. A sidecar's peers are
    /// few (egress: the local app on loopback), so one entry saves formatting and allocating the
    /// same value per request; clones of it only count references.
    static LAST_PEER: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
}

/// `peer` (already formatted as `text`) as a header value, shared with earlier requests from
/// the same address.
fn peer_value(peer: IpAddr, text: &[u8]) -> Option<HeaderValue> {
    LAST_PEER
        .with(|last| {
            let mut last = last.try_borrow_mut().ok()?;
            if let Some((ip, v)) = last.as_ref()
                && *ip == peer
            {
                return Some(v.clone());
            }
            let v = HeaderValue::from_maybe_shared(Bytes::copy_from_slice(text)).ok()?;
            *last = Some((peer, v.clone()));
            Some(v)
        })
        .or_else(|| HeaderValue::from_bytes(text).ok())
}

/// A random UUID v4, the shape Envoy generates for `x-request-id`.
pub fn request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    // Version 4, variant 10xx.
    n = (n & !(0xf << 76)) | (0x4 << 76);
    n = (n & !(0x3 << 62)) | (0x2 << 62);
    // Byte by byte, two hex digits each, a dash before bytes 4, 6, 8 and 10 (8-4-4-4-12).
    let mut out = [0u8; 36];
    let mut at = 0;
    for (i, byte) in n.to_be_bytes().into_iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[at] = b'-';
            at += 1;
        }
        out[at] = HEX[usize::from(byte >> 4)];
        out[at + 1] = HEX[usize::from(byte & 0xf)];
        at += 2;
    }
    // The bytes are ASCII hex and dashes, always a valid header value. Owned by a shared
    // buffer so that cloning the header map for a retry does not copy it again.
    HeaderValue::from_maybe_shared(Bytes::from_owner(out))
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Splits an authority into host and port, handling `[v6]:port`. The host keeps its case.
pub fn split_authority(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (host, Some(p)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key("x-secret"));
        assert!(!h.contains_key(header::CONNECTION));
        assert!(!h.contains_key("keep-alive"));
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn keeps_upgrade_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn forwarding_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarding(&mut h, "127.0.0.1".parse().unwrap(), "http");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1,127.0.0.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        let id = h.get("x-request-id").unwrap().to_str().unwrap().to_string();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        let dashes: Vec<usize> = id.match_indices('-').map(|(i, _)| i).collect();
        assert_eq!(dashes, [8, 13, 18, 23]);
        assert!(id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
        let mut h2 = HeaderMap::new();
        h2.insert("x-request-id", HeaderValue::from_static("abc"));
        add_forwarding(&mut h2, "::1".parse().unwrap(), "http");
        assert_eq!(h2.get("x-request-id").unwrap(), "abc");
    }

    #[test]
    fn formats_addresses_like_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.255.9",
            "192.168.100.1",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = [0u8; 64];
            let len = format_ip(ip, &mut out);
            assert_eq!(std::str::from_utf8(&out[..len]).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn hop_by_hop_names() {
        for n in [
            "te",
            "upgrade",
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
        ] {
            assert!(is_hop_by_hop_name(&HeaderName::from_static(n)), "{n}");
        }
        for n in ["tt", "content-length", "host", "x-request-id", "trailer"] {
            assert!(!is_hop_by_hop_name(&HeaderName::from_static(n)), "{n}");
        }
    }

    #[test]
    fn authority_split() {
        assert_eq!(split_authority("svc.local:8080"), ("svc.local", Some(8080)));
        assert_eq!(split_authority("svc.local"), ("svc.local", None));
        assert_eq!(split_authority("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_authority("[::1]"), ("::1", None));
        assert_eq!(split_authority("host:notaport"), ("host:notaport", None));
    }
}
