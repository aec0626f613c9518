//! The open-model load generator: raw HTTP/1.1 over keep-alive TCP connections, requests
//! pre-encoded from a template (only `ce-id` and `ce-benchts` change per event).
//!
//! Event `seq` is *scheduled* at `start + seq / rate`. Each connection has a worker that
//! claims the next unclaimed slot, sleeps until its scheduled time, sends, and reads the
//! answer; a slow answer only holds up its own connection, and the others keep to the
//! schedule. Every latency is measured from the scheduled time, not from when the request
//! actually went out, so a stall of the system under test (or of the generator) shows up in
//! the figures instead of silently lowering the offered load (no coordinated omission). The
//! timer has 1 ms resolution, so a send leaves up to ~1 ms after its slot; that lag is in
//! every figure, the direct baseline's included, and is reported separately as "send lag".

use crate::proc::now_ns;
use crate::stats::{histogram, send_status};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and what to send.
#[derive(Debug, Clone)]
pub struct Load {
    pub addr: SocketAddr,
    pub path: String,
    /// The `ce-type` of every event.
    pub ty: String,
    /// Bytes of data per event.
    pub size: usize,
    /// Events per second.
    pub rate: u64,
    pub duration: Duration,
    pub connections: usize,
    /// Goes into every `ce-id` (`s<step>-<seq>`) so late arrivals from another step are told
    /// apart.
    pub step: u32,
}

impl Load {
    pub fn events(&self) -> usize {
        (self.rate as u128 * self.duration.as_millis() / 1000) as usize
    }
}

/// What the producer side saw.
pub struct LoadResult {
    /// Per event: [`send_status`].
    pub status: Vec<u8>,
    /// Response time of 2xx answers, µs from the scheduled time.
    pub accepted: Histogram<u64>,
    /// Response time of 503 answers, µs from the scheduled time.
    pub refused: Histogram<u64>,
    /// Response time of 503 answers, µs from when the request was written.
    pub refused_service: Histogram<u64>,
    /// How late requests went out, µs after their scheduled time.
    pub send_lag: Histogram<u64>,
    /// Statuses other than 2xx and 503.
    pub other_status: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    /// Wall time from the first slot to the last answer.
    pub elapsed: Duration,
}

struct Shared {
    next: AtomicU64,
    total: u64,
    start: Instant,
    /// Scheduled offset of event `seq` is `seq * 1e9 / rate` ns.
    rate: u64,
    status: Vec<AtomicU8>,
    head: Vec<u8>,
    body: Vec<u8>,
    addr: SocketAddr,
    /// One set of histograms for all workers (a histogram is ~0.5 MB: one per worker would
    /// cost more to allocate than the step to run). The lock is held only to record.
    rec: Mutex<Local>,
}

/// The request up to and including `ce-id: s<step>-`; the sequence number, `ce-benchts` and
/// the body follow per event.
fn request_head(l: &Load) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/octet-stream\r\n\
         content-length: {len}\r\nce-specversion: 1.0\r\nce-source: /sluice-bench\r\n\
         ce-type: {ty}\r\nce-id: s{step}-",
        path = l.path,
        addr = l.addr,
        len = l.size,
        ty = l.ty,
        step = l.step
    )
    .into_bytes()
}

/// Event data: printable bytes (any content works; nothing parses it).
pub fn body(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Writes one full request for event `seq` scheduled at `ts` into `buf`.
pub fn encode(buf: &mut Vec<u8>, head: &[u8], seq: u64, ts: u64, body: &[u8]) {
    buf.clear();
    buf.extend_from_slice(head);
    let _ = write!(buf, "{seq}\r\nce-benchts: {ts}\r\n\r\n");
    buf.extend_from_slice(body);
}

/// Runs the load to completion on the current runtime.
pub async fn run(l: Load) -> LoadResult {
    let total = l.events() as u64;
    // Connect first, so connection set-up is not part of the measured latency.
    let mut conns = Vec::with_capacity(l.connections);
    for _ in 0..l.connections.max(1) {
        conns.push(connect(l.addr).await.ok());
    }
    let shared = Arc::new(Shared {
        next: AtomicU64::new(0),
        total,
        start: Instant::now() + Duration::from_millis(20),
        rate: l.rate.max(1),
        status: (0..total)
            .map(|_| AtomicU8::new(send_status::NOT_SENT))
            .collect(),
        head: request_head(&l),
        body: body(l.size),
        addr: l.addr,
        rec: Mutex::new(Local::new()),
    });
    let workers: Vec<_> = conns
        .into_iter()
        .map(|c| tokio::spawn(worker(shared.clone(), c)))
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let local = std::mem::replace(
        &mut *shared.rec.lock().unwrap_or_else(|e| e.into_inner()),
        Local::new(),
    );
    let mut result = LoadResult {
        status: Vec::new(),
        accepted: local.accepted,
        refused: local.refused,
        refused_service: local.refused_service,
        send_lag: local.send_lag,
        other_status: local.other_status,
        transport_errors: local.transport_errors,
        elapsed: Duration::ZERO,
    };
    result.elapsed = shared.start.elapsed();
    result.status = shared
        .status
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .collect();
    result
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

struct Local {
    accepted: Histogram<u64>,
    refused: Histogram<u64>,
    refused_service: Histogram<u64>,
    send_lag: Histogram<u64>,
    other_status: BTreeMap<u16, u64>,
    transport_errors: u64,
}

impl Local {
    fn new() -> Self {
        Local {
            accepted: histogram(),
            refused: histogram(),
            refused_service: histogram(),
            send_lag: histogram(),
            other_status: BTreeMap::new(),
            transport_errors: 0,
        }
    }
}

async fn worker(shared: Arc<Shared>, mut conn: Option<TcpStream>) {
    let mut req = Vec::with_capacity(shared.head.len() + shared.body.len() + 64);
    let mut resp = Vec::with_capacity(4096);
    let origin = crate::proc::origin();
    let start_ns = (shared.start - origin).as_nanos() as u64;
    loop {
        let seq = shared.next.fetch_add(1, Ordering::Relaxed);
        if seq >= shared.total {
            break;
        }
        let offset = (seq as u128 * 1_000_000_000 / shared.rate as u128) as u64;
        let due = shared.start + Duration::from_nanos(offset);
        if Instant::now() < due {
            tokio::time::sleep_until(due).await;
        }
        let scheduled = start_ns + offset;
        encode(&mut req, &shared.head, seq, scheduled, &shared.body);
        let sent_at = now_ns();
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async {
            if conn.is_none() {
                conn = Some(connect(shared.addr).await?);
            }
            let c = conn.as_mut().expect("connected above");
            c.write_all(&req).await?;
            read_response(c, &mut resp).await
        })
        .await;
        let done = now_ns();
        let from_schedule = (done.saturating_sub(scheduled) / 1000).max(1);
        let mut local = shared.rec.lock().unwrap_or_else(|e| e.into_inner());
        local
            .send_lag
            .saturating_record((sent_at.saturating_sub(scheduled) / 1000).max(1));
        let status = match outcome {
            Ok(Ok((status, close))) => {
                if close {
                    conn = None;
                }
                status
            }
            _ => {
                conn = None;
                local.transport_errors += 1;
                drop(local);
                shared.status[seq as usize].store(send_status::FAILED, Ordering::Relaxed);
                continue;
            }
        };
        let st = match status {
            200..=299 => {
                local.accepted.saturating_record(from_schedule);
                send_status::ACCEPTED
            }
            503 => {
                local.refused.saturating_record(from_schedule);
                local
                    .refused_service
                    .saturating_record((done.saturating_sub(sent_at) / 1000).max(1));
                send_status::REFUSED
            }
            other => {
                *local.other_status.entry(other).or_default() += 1;
                send_status::FAILED
            }
        };
        drop(local);
        shared.status[seq as usize].store(st, Ordering::Relaxed);
    }
}

/// Reads one HTTP/1.1 response (Content-Length bodies only, which is what axum and hyper
/// send for these answers). Returns the status and whether the server will close.
pub async fn read_response(c: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<(u16, bool)> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = c.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_head(buf)? {
            None => continue,
            Some(head) => {
                while buf.len() < head.len + head.content_length {
                    let n = c.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                return Ok((head.status, head.close));
            }
        }
    }
}

/// A parsed response head.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of the head, including the blank line.
    pub len: usize,
    pub content_length: usize,
    pub close: bool,
}

/// Parses a response head; `None` until it is complete.
pub fn parse_head(buf: &[u8]) -> std::io::Result<Option<Head>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let len = match r.parse(buf).map_err(|e| bad(&e.to_string()))? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(n) => n,
    };
    let mut content_length = 0;
    let mut close = false;
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            content_length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| bad("bad content-length"))?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad(
                "chunked responses are not supported by the load generator",
            ));
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        }
    }
    Ok(Some(Head {
        status: r.code.unwrap_or(0),
        len,
        content_length,
        close,
    }))
}

/// One request on a fresh connection (for readiness polls and the cold-start probe).
pub async fn one_shot(addr: SocketAddr, request: &[u8]) -> std::io::Result<u16> {
    let mut c = connect(addr).await?;
    c.write_all(request).await?;
    let mut buf = Vec::new();
    Ok(read_response(&mut c, &mut buf).await?.0)
}

/// `GET path` on a fresh connection; the status and the body.
pub async fn get_text(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    let mut c = connect(addr).await?;
    c.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let (status, _) = read_response(&mut c, &mut buf).await?;
    let len = parse_head(&buf)?.map_or(0, |h| h.len);
    Ok((status, String::from_utf8_lossy(&buf[len..]).into_owned()))
}

/// A complete binary-mode request for event `s<step>-<seq>`, closing the connection.
pub fn single_event(addr: SocketAddr, path: &str, step: u32, seq: u64, ts: u64) -> Vec<u8> {
    let l = Load {
        addr,
        path: path.into(),
        ty: "bench.event".into(),
        size: 16,
        rate: 1,
        duration: Duration::ZERO,
        connections: 1,
        step,
    };
    let mut head = request_head(&l);
    // Insert `connection: close` before the per-event part.
    let pos = head.windows(6).position(|w| w == b"ce-id:").unwrap_or(0);
    head.splice(pos..pos, b"connection: close\r\n".iter().copied());
    let mut buf = Vec::new();
    encode(&mut buf, &head, seq, ts, &body(16));
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_binary_mode_request() {
        let l = Load {
            addr: "127.0.0.1:8080".parse().unwrap(),
            path: "/default/bench".into(),
            ty: "bench.event".into(),
            size: 5,
            rate: 1000,
            duration: Duration::from_secs(2),
            connections: 1,
            step: 7,
        };
        assert_eq!(l.events(), 2000);
        let mut buf = Vec::new();
        encode(&mut buf, &request_head(&l), 42, 123456, &body(5));
        let text = String::from_utf8(buf).unwrap();
        assert!(text.starts_with("POST /default/bench HTTP/1.1\r\n"));
        assert!(text.contains("\r\ncontent-length: 5\r\n"));
        assert!(text.contains("\r\nce-id: s7-42\r\nce-benchts: 123456\r\n\r\nabcde"));
        assert!(text.ends_with("\r\n\r\nabcde"));

        let one = String::from_utf8(single_event(l.addr, "/x/y", 1, 2, 3)).unwrap();
        assert!(one.contains("connection: close\r\nce-id: s1-2\r\n"));
    }

    #[test]
    fn parses_response_heads() {
        assert_eq!(
            parse_head(b"HTTP/1.1 202 Accepted\r\ncontent-le").unwrap(),
            None
        );
        let h = parse_head(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 12\r\nretry-after: 1\r\n\r\n{\"error\":1}")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.content_length, h.close), (503, 12, false));
        let h = parse_head(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.close);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
    }
}
