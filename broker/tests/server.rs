//! The ingress server on real sockets: what clients see at the TCP level (issue 9 items 2
//! and 8, and the shutdown answer).

use sluice_broker::{serve_with, BrokerEntry, Ingress, ServeOptions};
use sluice_channels::memory::MemoryChannel;
use sluice_channels::{Channel, Subscription, SubscriptionSpec};
use sluice_core::metrics::Metrics;
use sluice_core::topology::{Key, StartFrom};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Server {
    addr: SocketAddr,
    ingress: Arc<Ingress>,
    channel: Arc<MemoryChannel>,
    _sub: Box<dyn Subscription>,
}

async fn start(capacity: usize, max_body: usize, options: ServeOptions) -> Server {
    let metrics = Arc::new(Metrics::new());
    let ingress = Arc::new(Ingress::new(metrics.clone(), max_body));
    let channel = Arc::new(MemoryChannel::new(capacity));
    let sub = channel
        .subscribe(SubscriptionSpec {
            id: "t".into(),
            start_from: StartFrom::Latest,
            ordered: false,
        })
        .await
        .unwrap();
    let key = Key::new("ns", "b");
    let mut brokers = HashMap::new();
    brokers.insert(
        key.clone(),
        BrokerEntry::new(&key, channel.clone(), &metrics),
    );
    ingress.set_brokers(brokers);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_with(
        listener,
        ingress.clone(),
        options,
        std::future::pending(),
    ));
    Server {
        addr,
        ingress,
        channel,
        _sub: sub,
    }
}

/// Reads until the server closes the connection (or `limit` passes) and returns what came.
async fn read_all(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

fn batch_body(n: usize) -> String {
    let events: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"specversion":"1.0","id":"{i}","source":"s","type":"t"}}"#))
        .collect();
    format!("[{}]", events.join(","))
}

async fn post(addr: SocketAddr, headers: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /ns/b HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    read_all(&mut s, Duration::from_secs(10)).await.0
}

/// Issue 9 item 8: 3 000 half-open connections were held for over 35 s. A connection that
/// sends nothing, or an incomplete head, or goes idle after a request, is closed after the
/// header read timeout.
#[tokio::test]
async fn silent_slow_and_idle_connections_are_closed() {
    let options = ServeOptions {
        header_read_timeout: Duration::from_millis(300),
        ..ServeOptions::default()
    };
    let srv = start(10, 1024, options).await;

    let mut silent = TcpStream::connect(srv.addr).await.unwrap();
    let mut partial = TcpStream::connect(srv.addr).await.unwrap();
    partial
        .write_all(b"POST /ns/b HTTP/1.1\r\nhos")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(srv.addr).await.unwrap();
    idle.write_all(b"OPTIONS /ns/b HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();

    for (name, s) in [
        ("silent", &mut silent),
        ("partial", &mut partial),
        ("idle", &mut idle),
    ] {
        let (got, closed) = read_all(s, Duration::from_secs(5)).await;
        assert!(closed, "the {name} connection was not closed");
        if name == "idle" {
            assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        }
    }
}

/// Issue 9 item 8: a client that writes its whole body before reading (Python's urllib)
/// saw a broken pipe instead of the 413 and its explanation.
#[tokio::test]
async fn an_oversized_body_is_answered_413_after_it_is_read() {
    let srv = start(10, 1024, ServeOptions::default()).await;
    let body = vec![b'x'; 1024 * 1024];
    let got = post(
        srv.addr,
        "ce-specversion: 1.0\r\nce-id: 1\r\nce-source: s\r\nce-type: t\r\n",
        &body,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    assert!(got.contains("larger than the 1024-byte limit"), "{got}");

    // With `Expect: 100-continue` the body is never sent: the answer comes at once.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"POST /ns/b HTTP/1.1\r\nhost: x\r\ncontent-length: 99999999\r\nexpect: 100-continue\r\nce-specversion: 1.0\r\n\r\n")
        .await
        .unwrap();
    let (got, _) = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
}

/// Issue 9 item 2: a batch is accepted or refused whole.
#[tokio::test]
async fn a_batch_that_does_not_fit_is_refused_whole() {
    let srv = start(2, 1 << 20, ServeOptions::default()).await;
    let ct = "content-type: application/cloudevents-batch+json\r\n";
    let got = post(srv.addr, ct, batch_body(3).as_bytes()).await;
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert!(got.to_ascii_lowercase().contains("retry-after"), "{got}");
    assert_eq!(
        srv.channel.backlog("t"),
        0,
        "nothing of a refused batch is kept"
    );
    let got = post(srv.addr, ct, batch_body(2).as_bytes()).await;
    assert!(got.starts_with("HTTP/1.1 202"), "{got}");
    assert_eq!(srv.channel.backlog("t"), 2);
}

/// While shutting down, producers are told to go elsewhere (503 + Retry-After); replies
/// of deliveries still draining are published as usual.
#[tokio::test]
async fn a_closing_ingress_answers_503_but_takes_replies() {
    let srv = start(10, 1 << 20, ServeOptions::default()).await;
    srv.ingress.close();
    let got = post(
        srv.addr,
        "ce-specversion: 1.0\r\nce-id: 1\r\nce-source: s\r\nce-type: t\r\n",
        b"",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert!(got.contains("shutting down"), "{got}");
    let reply = sluice_core::Event::new(sluice_core::SpecVersion::V10, "r", "s", "t");
    srv.ingress
        .publish(&Key::new("ns", "b"), vec![reply], vec![])
        .await
        .unwrap();
    assert_eq!(srv.channel.backlog("t"), 1);
    assert_eq!(srv.channel.pending(), Some(1));
}
