//! DNS wire format (RFC 1035): query encoding and bounded, hostile-input-safe response parsing.
//!
//! Pure functions with no I/O so the parser can be tested and fuzzed on its own.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Size of the fixed DNS header.
const HEADER_LEN: usize = 12;
/// Longest name on the wire, length octets included (RFC 1035 §2.3.4).
const MAX_NAME_WIRE_LEN: usize = 255;
/// Longest single label (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;
/// Compression pointers followed while reading one name; a loop hits this long before it matters.
const MAX_POINTER_JUMPS: usize = 32;
/// CNAME links followed inside one answer; longer chains are treated as broken.
const MAX_CNAME_CHAIN: usize = 8;
/// Resource records looked at in one answer section; bounds work on a hostile response.
const MAX_ANSWERS: usize = 256;

const CLASS_IN: u16 = 1;
const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;

const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const OPCODE_MASK: u16 = 0x7800;
const RCODE_MASK: u16 = 0x000f;

const RCODE_NOERROR: u8 = 0;
const RCODE_NXDOMAIN: u8 = 3;

/// The address record type asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueryType {
    A,
    Aaaa,
}

/// What a well-formed response that matched our query says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The server answered; the name resolved to these addresses (possibly none, e.g. NXDOMAIN).
    Addresses(Vec<IpAddr>),
    /// The TC bit was set: the answer did not fit in the datagram and must be asked over TCP.
    Truncated,
    /// The server reported an error such as SERVFAIL or REFUSED.
    ServerError(u8),
}

/// Why a response was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The message ended before a field it announced.
    #[error("DNS message is truncated")]
    ShortMessage,
    /// The response id is not the id of our query.
    #[error("DNS response id does not match the query")]
    IdMismatch,
    /// The message is not a standard-query response.
    #[error("DNS message is not a standard query response")]
    NotAResponse,
    /// The question section does not repeat our question.
    #[error("DNS response question does not match the query")]
    QuestionMismatch,
    /// A name is malformed: bad label type, too long, or a compression pointer loop.
    #[error("DNS response contains a malformed name")]
    BadName,
    /// An address record has the wrong data length.
    #[error("DNS response contains a malformed address record")]
    BadRecord,
}

/// A hostname that is valid to put on the wire, lowercased, without the trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Name(String);

impl QueryType {
    fn code(self) -> u16 {
        match self {
            QueryType::A => TYPE_A,
            QueryType::Aaaa => TYPE_AAAA,
        }
    }
}

impl Name {
    /// Validates a hostname: labels of 1–63 octets, at most 255 octets on the wire.
    pub(crate) fn parse(host: &str) -> Option<Name> {
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.is_empty() || host.len() + 2 > MAX_NAME_WIRE_LEN {
            return None;
        }
        let valid = host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL_LEN
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        valid.then(|| Name(host.to_ascii_lowercase()))
    }
}

/// Encodes a recursive query for one name and type.
pub(crate) fn encode_query(id: u16, name: &Name, qtype: QueryType) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + name.0.len() + 6);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&FLAG_RD.to_be_bytes());
    // One question, no other records.
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.0.split('.') {
        // Name::parse bounded every label to 63 octets, so the cast cannot truncate.
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.code().to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// Parses a response to the query `(id, name, qtype)`.
///
/// Only records on the CNAME chain that starts at `name` count, so unrelated records a server
/// (or a spoofer) adds are ignored.
pub(crate) fn parse_response(
    buf: &[u8],
    id: u16,
    name: &Name,
    qtype: QueryType,
) -> Result<Answer, WireError> {
    let mut r = Reader { buf, pos: 0 };
    if r.u16()? != id {
        return Err(WireError::IdMismatch);
    }
    let flags = r.u16()?;
    if flags & FLAG_QR == 0 || flags & OPCODE_MASK != 0 {
        return Err(WireError::NotAResponse);
    }
    let qdcount = r.u16()?;
    let ancount = r.u16()?;
    // Authority and additional sections are never needed.
    r.skip(4)?;
    if qdcount != 1 {
        return Err(WireError::QuestionMismatch);
    }
    let qname = r.name()?;
    let (qt, qc) = (r.u16()?, r.u16()?);
    if qname != name.0 || qt != qtype.code() || qc != CLASS_IN {
        return Err(WireError::QuestionMismatch);
    }
    if flags & FLAG_TC != 0 {
        return Ok(Answer::Truncated);
    }
    // The mask keeps four bits, so the cast cannot truncate.
    match (flags & RCODE_MASK) as u8 {
        RCODE_NOERROR => {}
        RCODE_NXDOMAIN => return Ok(Answer::Addresses(Vec::new())),
        other => return Ok(Answer::ServerError(other)),
    }

    let mut cnames: Vec<(String, String)> = Vec::new();
    let mut addrs: Vec<(String, IpAddr)> = Vec::new();
    for _ in 0..usize::from(ancount).min(MAX_ANSWERS) {
        let owner = r.name()?;
        let rtype = r.u16()?;
        let class = r.u16()?;
        r.skip(4)?; // TTL: refresh is driven by the watch interval instead.
        let rdlen = usize::from(r.u16()?);
        let rdata_start = r.pos;
        let rdata = r.take(rdlen)?;
        if class != CLASS_IN {
            continue;
        }
        match rtype {
            TYPE_A if qtype == QueryType::A => {
                let octets: [u8; 4] = rdata.try_into().map_err(|_| WireError::BadRecord)?;
                addrs.push((owner, IpAddr::V4(Ipv4Addr::from(octets))));
            }
            TYPE_AAAA if qtype == QueryType::Aaaa => {
                let octets: [u8; 16] = rdata.try_into().map_err(|_| WireError::BadRecord)?;
                addrs.push((owner, IpAddr::V6(Ipv6Addr::from(octets))));
            }
            TYPE_CNAME => {
                // The target may use compression pointers into the whole message.
                let mut sub = Reader {
                    buf,
                    pos: rdata_start,
                };
                let target = sub.name()?;
                if sub.pos > rdata_start + rdlen {
                    return Err(WireError::BadRecord);
                }
                cnames.push((owner, target));
            }
            _ => {}
        }
    }

    let mut current = name.0.clone();
    for _ in 0..=MAX_CNAME_CHAIN {
        let found: Vec<IpAddr> = addrs
            .iter()
            .filter(|(owner, _)| *owner == current)
            .map(|(_, ip)| *ip)
            .collect();
        if !found.is_empty() {
            return Ok(Answer::Addresses(found));
        }
        match cnames.iter().find(|(owner, _)| *owner == current) {
            Some((_, target)) => current = target.clone(),
            None => break,
        }
    }
    Ok(Answer::Addresses(Vec::new()))
}

/// A bounds-checked cursor over a message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::ShortMessage)?;
        let bytes = self.buf.get(self.pos..end).ok_or(WireError::ShortMessage)?;
        self.pos = end;
        Ok(bytes)
    }

    fn skip(&mut self, n: usize) -> Result<(), WireError> {
        self.take(n).map(|_| ())
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Reads a possibly compressed name, lowercased and dot-separated, leaving the cursor after
    /// the name's first encoding (not after any pointer target).
    fn name(&mut self) -> Result<String, WireError> {
        let mut out = String::new();
        let mut wire_len = 0usize;
        let mut jumps = 0usize;
        // Where reading continues once the name is done: set at the first pointer.
        let mut resume: Option<usize> = None;
        let mut pos = self.pos;
        loop {
            let len = *self.buf.get(pos).ok_or(WireError::ShortMessage)?;
            match len & 0xc0 {
                0x00 => {
                    pos += 1;
                    if len == 0 {
                        break;
                    }
                    let len = usize::from(len);
                    wire_len += len + 1;
                    if wire_len + 1 > MAX_NAME_WIRE_LEN {
                        return Err(WireError::BadName);
                    }
                    let label = self
                        .buf
                        .get(pos..pos + len)
                        .ok_or(WireError::ShortMessage)?;
                    if !out.is_empty() {
                        out.push('.');
                    }
                    // Octets outside hostname syntax (including a '.' inside a label) never
                    // match a name we asked for; a placeholder keeps them from aliasing one.
                    out.extend(label.iter().map(|&b| {
                        if b.is_ascii_graphic() && b != b'.' {
                            char::from(b.to_ascii_lowercase())
                        } else {
                            '\u{fffd}'
                        }
                    }));
                    pos += len;
                }
                0xc0 => {
                    let low = *self.buf.get(pos + 1).ok_or(WireError::ShortMessage)?;
                    let target = usize::from(len & 0x3f) << 8 | usize::from(low);
                    jumps += 1;
                    // Pointers must go strictly backwards: together with the jump cap this
                    // makes loops impossible.
                    if jumps > MAX_POINTER_JUMPS || target >= pos {
                        return Err(WireError::BadName);
                    }
                    resume.get_or_insert(pos + 2);
                    pos = target;
                }
                // 0x40 and 0x80 are extended / reserved label types.
                _ => return Err(WireError::BadName),
            }
        }
        self.pos = resume.unwrap_or(pos);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    /// Builds a response by hand: header, echoed question, then raw answer bytes.
    fn response(
        id: u16,
        flags: u16,
        q: &Name,
        qtype: QueryType,
        an: u16,
        answers: &[u8],
    ) -> Vec<u8> {
        let query = encode_query(id, q, qtype);
        let mut out = query.clone();
        out[2..4].copy_from_slice(&flags.to_be_bytes());
        out[6..8].copy_from_slice(&an.to_be_bytes());
        out.extend_from_slice(answers);
        out
    }

    fn rr(owner: &[u8], rtype: u16, rdata: &[u8]) -> Vec<u8> {
        let mut out = owner.to_vec();
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&60u32.to_be_bytes());
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(rdata);
        out
    }

    const PTR_QNAME: [u8; 2] = [0xc0, 12];

    #[test]
    fn name_validation() {
        assert_eq!(name("Foo.Example.").0, "foo.example");
        assert!(Name::parse("").is_none());
        assert!(Name::parse(".").is_none());
        assert!(Name::parse("a..b").is_none());
        assert!(Name::parse(&"a".repeat(64)).is_none());
        assert!(Name::parse("bad name").is_none());
        assert!(Name::parse(&["abc"; 70].join(".")).is_none());
        assert!(Name::parse("svc_1.ns-2.local").is_some());
    }

    #[test]
    fn query_layout() {
        let q = encode_query(0xabcd, &name("a.bc"), QueryType::Aaaa);
        assert_eq!(
            q,
            [
                0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 2, b'b', b'c', 0, 0, 28,
                0, 1
            ]
        );
    }

    #[test]
    fn parses_a_records_with_compression() {
        let q = name("svc.local");
        let mut ans = rr(&PTR_QNAME, TYPE_A, &[10, 0, 0, 1]);
        ans.extend(rr(&PTR_QNAME, TYPE_A, &[10, 0, 0, 2]));
        let msg = response(7, 0x8180, &q, QueryType::A, 2, &ans);
        let got = parse_response(&msg, 7, &q, QueryType::A).unwrap();
        assert_eq!(
            got,
            Answer::Addresses(vec![
                "10.0.0.1".parse().unwrap(),
                "10.0.0.2".parse().unwrap()
            ])
        );
    }

    #[test]
    fn follows_cname_chain_and_ignores_strangers() {
        let q = name("www.example");
        // www.example CNAME b.example ("b" label + pointer to "example" at offset 16).
        let mut ans = rr(&PTR_QNAME, TYPE_CNAME, &[1, b'b', 0xc0, 16]);
        // A record for an unrelated name must be ignored.
        ans.extend(rr(&[1, b'z', 0], TYPE_A, &[9, 9, 9, 9]));
        let b_offset = (12 + 13 + 4 + 10 + 2) as u8;
        ans.extend(rr(&[0xc0, b_offset], TYPE_A, &[10, 1, 1, 1]));
        let msg = response(1, 0x8180, &q, QueryType::A, 3, &ans);
        let got = parse_response(&msg, 1, &q, QueryType::A).unwrap();
        assert_eq!(got, Answer::Addresses(vec!["10.1.1.1".parse().unwrap()]));
    }

    #[test]
    fn rejects_mismatches_and_reports_status() {
        let q = name("a.b");
        let msg = response(1, 0x8180, &q, QueryType::A, 0, &[]);
        assert_eq!(
            parse_response(&msg, 2, &q, QueryType::A),
            Err(WireError::IdMismatch)
        );
        assert_eq!(
            parse_response(&msg, 1, &name("a.c"), QueryType::A),
            Err(WireError::QuestionMismatch)
        );
        assert_eq!(
            parse_response(&msg, 1, &q, QueryType::Aaaa),
            Err(WireError::QuestionMismatch)
        );
        let not_resp = response(1, 0x0100, &q, QueryType::A, 0, &[]);
        assert_eq!(
            parse_response(&not_resp, 1, &q, QueryType::A),
            Err(WireError::NotAResponse)
        );
        let nx = response(1, 0x8183, &q, QueryType::A, 0, &[]);
        assert_eq!(
            parse_response(&nx, 1, &q, QueryType::A),
            Ok(Answer::Addresses(vec![]))
        );
        let fail = response(1, 0x8182, &q, QueryType::A, 0, &[]);
        assert_eq!(
            parse_response(&fail, 1, &q, QueryType::A),
            Ok(Answer::ServerError(2))
        );
        let tc = response(1, 0x8380, &q, QueryType::A, 0, &[]);
        assert_eq!(
            parse_response(&tc, 1, &q, QueryType::A),
            Ok(Answer::Truncated)
        );
    }

    #[test]
    fn pointer_loops_are_rejected() {
        let q = name("a.b");
        // A record whose owner points at itself.
        let self_ptr_at = (12 + 5 + 4) as u8;
        let msg = response(
            1,
            0x8180,
            &q,
            QueryType::A,
            1,
            &rr(&[0xc0, self_ptr_at], TYPE_A, &[1, 2, 3, 4]),
        );
        assert_eq!(
            parse_response(&msg, 1, &q, QueryType::A),
            Err(WireError::BadName)
        );
        // A forward pointer is rejected as well.
        let msg = response(
            1,
            0x8180,
            &q,
            QueryType::A,
            1,
            &rr(&[0xc0, 0xff], TYPE_A, &[1, 2, 3, 4]),
        );
        assert_eq!(
            parse_response(&msg, 1, &q, QueryType::A),
            Err(WireError::BadName)
        );
    }

    #[test]
    fn bad_address_length_is_rejected() {
        let q = name("a.b");
        let msg = response(
            1,
            0x8180,
            &q,
            QueryType::A,
            1,
            &rr(&PTR_QNAME, TYPE_A, &[1, 2, 3]),
        );
        assert_eq!(
            parse_response(&msg, 1, &q, QueryType::A),
            Err(WireError::BadRecord)
        );
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let q = name("svc.local");
        let mut ans = rr(&PTR_QNAME, TYPE_CNAME, &[1, b'x', 0xc0, 16]);
        ans.extend(rr(&PTR_QNAME, TYPE_A, &[10, 0, 0, 1]));
        ans.extend(rr(&PTR_QNAME, TYPE_AAAA, &[0; 16]));
        let valid = response(9, 0x8180, &q, QueryType::A, 3, &ans);
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        for i in 0..20_000 {
            let msg: Vec<u8> = if i % 2 == 0 {
                let len = rng.usize(0..600);
                let mut m: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
                // Keep a valid header prefix half the time so parsing gets past the id check.
                if i % 4 == 0 && m.len() >= 4 {
                    m[..4].copy_from_slice(&valid[..4]);
                }
                m
            } else {
                let mut m = valid.clone();
                for _ in 0..rng.usize(1..8) {
                    let at = rng.usize(..m.len());
                    m[at] = rng.u8(..);
                }
                m.truncate(rng.usize(0..=m.len()));
                m
            };
            let _ = parse_response(&msg, 9, &q, QueryType::A);
            let _ = parse_response(&msg, 9, &q, QueryType::Aaaa);
        }
    }
}
