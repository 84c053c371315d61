//! An in-process authoritative DNS server for tests, on UDP and TCP of one loopback port.
//!
//! It answers A and AAAA questions from a table that tests change at run time, returns
//! NXDOMAIN for unknown names, and can force truncation per name to exercise TCP fallback.
//! Its wire code is deliberately separate from the client's in `outrider-discovery`, so each
//! side checks the other.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// TTL on every answer record, in seconds.
const TTL_SECS: u32 = 1;
/// Attempts to find a port free for both UDP and TCP.
const BIND_ATTEMPTS: usize = 32;
/// CNAME links the server follows when building an answer.
const MAX_CHAIN: usize = 8;
/// Classic DNS UDP payload limit; larger UDP answers are sent truncated.
const UDP_LIMIT: usize = 512;

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const RCODE_NXDOMAIN: u16 = 3;
const RCODE_FORMERR: u16 = 1;

/// A DNS server on `127.0.0.1:<port>` (UDP and TCP). Stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Default)]
struct State {
    table: Mutex<HashMap<String, Entry>>,
    queries: AtomicU64,
    silent: AtomicBool,
}

#[derive(Default, Clone)]
struct Entry {
    addrs: Vec<IpAddr>,
    cname: Option<String>,
    truncated: bool,
}

/// A parsed question: the id, the RD flag, the lowercased name, type, and where it ends.
struct Question {
    id: u16,
    rd: bool,
    name: String,
    qtype: u16,
    qclass: u16,
    end: usize,
}

impl DnsServer {
    /// Binds UDP and TCP on the same free loopback port and starts answering.
    pub async fn start() -> io::Result<DnsServer> {
        let (udp, tcp) = bind_pair().await?;
        let addr = udp.local_addr()?;
        let state = Arc::new(State::default());
        let tasks = vec![
            tokio::spawn(serve_udp(udp, state.clone())),
            tokio::spawn(serve_tcp(tcp, state.clone())),
        ];
        Ok(DnsServer { addr, state, tasks })
    }

    /// The address to send queries to (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the addresses of `name` (A and AAAA both come from this list). Clears a CNAME
    /// set for it; keeps its truncation flag.
    pub fn set(&self, name: &str, addrs: &[IpAddr]) {
        self.with_entry(name, |e| {
            e.addrs = addrs.to_vec();
            e.cname = None;
        });
    }

    /// Makes `name` an alias of `target`; answers carry the CNAME and then `target`'s records.
    pub fn set_cname(&self, name: &str, target: &str) {
        let target = normalize(target);
        self.with_entry(name, |e| {
            e.addrs.clear();
            e.cname = Some(target);
        });
    }

    /// Removes `name`, so it answers NXDOMAIN.
    pub fn remove(&self, name: &str) {
        self.lock().remove(&normalize(name));
    }

    /// When `truncated`, UDP answers for `name` carry the TC bit and no records; TCP answers
    /// stay complete.
    pub fn set_truncated(&self, name: &str, truncated: bool) {
        self.with_entry(name, |e| e.truncated = truncated);
    }

    /// When `silent`, queries are counted but never answered (a server that stopped responding).
    pub fn set_silent(&self, silent: bool) {
        self.state.silent.store(silent, Ordering::SeqCst);
    }

    /// How many queries arrived so far, over UDP and TCP.
    pub fn queries(&self) -> u64 {
        self.state.queries.load(Ordering::SeqCst)
    }

    fn with_entry(&self, name: &str, f: impl FnOnce(&mut Entry)) {
        f(self.lock().entry(normalize(name)).or_default());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.state
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl State {
    /// Builds the reply to one query message, or `None` when it is not worth answering.
    fn reply(&self, msg: &[u8], over_tcp: bool) -> Option<Vec<u8>> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        if self.silent.load(Ordering::SeqCst) {
            return None;
        }
        let Some(q) = read_question(msg) else {
            // Answer FORMERR when at least the id is readable.
            let id = msg.get(..2)?;
            let mut out = id.to_vec();
            out.extend_from_slice(&(0x8000 | RCODE_FORMERR).to_be_bytes());
            out.extend_from_slice(&[0; 8]);
            return Some(out);
        };

        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let mut records: Vec<Vec<u8>> = Vec::new();
        let mut rcode = 0u16;
        let mut truncated = false;
        match table.get(&q.name) {
            None => rcode = RCODE_NXDOMAIN,
            Some(first) => {
                truncated = first.truncated && !over_tcp;
                let mut owner = q.name.clone();
                let mut entry = Some(first);
                for _ in 0..MAX_CHAIN {
                    let Some(e) = entry else { break };
                    if let Some(target) = &e.cname {
                        records.push(record(&owner, &q.name, TYPE_CNAME, &encode_name(target)));
                        owner = target.clone();
                        entry = table.get(target);
                        continue;
                    }
                    for ip in &e.addrs {
                        match (ip, q.qtype) {
                            (IpAddr::V4(v4), TYPE_A) => {
                                records.push(record(&owner, &q.name, TYPE_A, &v4.octets()));
                            }
                            (IpAddr::V6(v6), TYPE_AAAA) => {
                                records.push(record(&owner, &q.name, TYPE_AAAA, &v6.octets()));
                            }
                            _ => {}
                        }
                    }
                    break;
                }
            }
        }
        drop(table);
        if q.qclass != CLASS_IN {
            records.clear();
        }

        let question = msg.get(12..q.end)?;
        let body: usize = records.iter().map(Vec::len).sum();
        if !over_tcp && 12 + question.len() + body > UDP_LIMIT {
            truncated = true;
        }
        if truncated {
            records.clear();
        }
        let mut flags: u16 = 0x8000 | 0x0400 | 0x0080 | rcode; // QR, AA, RA
        if q.rd {
            flags |= 0x0100;
        }
        if truncated {
            flags |= 0x0200;
        }
        let mut out = Vec::with_capacity(12 + question.len() + body);
        out.extend_from_slice(&q.id.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        let count = u16::try_from(records.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(question);
        for r in records {
            out.extend_from_slice(&r);
        }
        Some(out)
    }
}

async fn bind_pair() -> io::Result<(UdpSocket, TcpListener)> {
    let mut last = io::Error::new(io::ErrorKind::AddrInUse, "no port free for UDP and TCP");
    for _ in 0..BIND_ATTEMPTS {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn serve_udp(socket: UdpSocket, state: Arc<State>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            // ICMP errors from earlier replies surface here on some systems; keep serving.
            continue;
        };
        if let Some(reply) = state.reply(&buf[..n], false) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, state: Arc<State>) {
    // Owned here so aborting this task also stops every connection.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        conns.spawn(serve_conn(stream, state.clone()));
    }
}

async fn serve_conn(mut stream: TcpStream, state: Arc<State>) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut msg = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut msg).await.is_err() {
            return;
        }
        let Some(reply) = state.reply(&msg, true) else {
            continue;
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// Reads the single question of a query; queries never use compression.
fn read_question(msg: &[u8]) -> Option<Question> {
    let header = msg.get(..12)?;
    let id = u16::from_be_bytes([header[0], header[1]]);
    let flags = u16::from_be_bytes([header[2], header[3]]);
    let qdcount = u16::from_be_bytes([header[4], header[5]]);
    if flags & 0x8000 != 0 || qdcount != 1 {
        return None;
    }
    let mut pos = 12;
    let mut labels: Vec<String> = Vec::new();
    loop {
        let len = usize::from(*msg.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        let label = msg.get(pos..pos + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += len;
    }
    let tail = msg.get(pos..pos + 4)?;
    Some(Question {
        id,
        rd: flags & 0x0100 != 0,
        name: labels.join("."),
        qtype: u16::from_be_bytes([tail[0], tail[1]]),
        qclass: u16::from_be_bytes([tail[2], tail[3]]),
        end: pos + 4,
    })
}

/// One answer record. The owner is written as a pointer to the question when it is the
/// question's name (offset 12), so clients must handle compression.
fn record(owner: &str, qname: &str, rtype: u16, rdata: &[u8]) -> Vec<u8> {
    let mut out = if owner == qname {
        vec![0xc0, 12]
    } else {
        encode_name(owner)
    };
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&TTL_SECS.to_be_bytes());
    let len = u16::try_from(rdata.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(rdata);
    out
}

fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let bytes = &label.as_bytes()[..label.len().min(63)];
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    out.push(0);
    out
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}
