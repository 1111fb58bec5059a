//! Slow and numerous clients cannot exhaust the service: headers and bodies that trickle in
//! are cut off, and connections past the limit are closed at once.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_app_with, Backend, TestApp};

/// How an HTTP/2 client with prior knowledge starts: the preface, then an empty SETTINGS
/// frame.
const HTTP2_START: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

fn address(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection or `within` passes; returns what came and
/// whether it closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&received).into_owned(), true)
            }
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => return (String::from_utf8_lossy(&received).into_owned(), false),
        }
    }
}

mod memory_only {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slowloris_connections_are_cut_off_while_others_are_served() {
        let app = spawn_app_with(Backend::Memory, |c| {
            c.header_read_timeout = Duration::from_secs(1)
        })
        .await;
        let mut slow = Vec::new();
        for _ in 0..50 {
            let mut stream = TcpStream::connect(address(&app)).await.unwrap();
            stream
                .write_all(b"POST /sessions HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            slow.push(stream);
        }
        let trickle = tokio::spawn(async move {
            let started = Instant::now();
            let mut cut_off = 0;
            for stream in &mut slow {
                // One more header byte now and then, never the end of the headers.
                let _ = stream.write_all(b"X").await;
            }
            for stream in &mut slow {
                let (_, closed) = read_until_closed(stream, Duration::from_secs(5)).await;
                if closed {
                    cut_off += 1;
                }
            }
            (cut_off, started.elapsed())
        });
        let started = Instant::now();
        let (status, _) = app.get("/healthz").await;
        assert_eq!(status, reqwest::StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "a normal request waited"
        );
        let (cut_off, elapsed) = trickle.await.unwrap();
        assert_eq!(cut_off, 50, "every slow connection is closed");
        assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
    }

    /// A connection that never sends a byte (a client gone quiet, a proxy that opens
    /// connections ahead of need), or stops within the HTTP/2 preface, is closed like a
    /// slow one, and its slot is freed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_connections_are_closed_and_free_their_slots() {
        let app = spawn_app_with(Backend::Memory, |c| {
            c.header_read_timeout = Duration::from_secs(1);
            c.max_connections = 3;
        })
        .await;
        let mut silent = Vec::new();
        // Nothing at all, or the start of the HTTP/2 preface, which leaves the protocol open.
        for start in [&b""[..], b"P", b"PRI * HTTP/2.0\r\n"] {
            let mut stream = TcpStream::connect(address(&app)).await.unwrap();
            stream.write_all(start).await.unwrap();
            silent.push(stream);
        }
        let started = Instant::now();
        for stream in &mut silent {
            let (reply, closed) = read_until_closed(stream, Duration::from_secs(5)).await;
            assert!(closed && reply.is_empty(), "still open: {reply}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        let (status, _) = app.get("/healthz").await;
        assert_eq!(status, reqwest::StatusCode::OK);
    }

    /// HTTP/2 in cleartext with prior knowledge gets through the accept loop's wait for the
    /// protocol: a GET /healthz in one HEADERS frame is answered 200.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_http2_request_with_prior_knowledge_is_served() {
        let app = spawn_app_with(Backend::Memory, |_| {}).await;
        let mut stream = TcpStream::connect(address(&app)).await.unwrap();
        // HPACK: :method GET (static 2), :scheme http (6), :path and :authority as literals
        // with static names (4, 1).
        let mut block = vec![0x82, 0x86, 0x04, 8];
        block.extend_from_slice(b"/healthz");
        block.extend_from_slice(&[0x01, 1, b'x']);
        let mut request = HTTP2_START.to_vec();
        // HEADERS on stream 1, END_STREAM | END_HEADERS.
        request.extend_from_slice(&[0, 0, block.len() as u8, 0x01, 0x05, 0, 0, 0, 1]);
        request.extend_from_slice(&block);
        stream.write_all(&request).await.unwrap();
        let status = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let mut head = [0u8; 9];
                stream.read_exact(&mut head).await.unwrap();
                let length =
                    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
                let mut payload = vec![0u8; length];
                stream.read_exact(&mut payload).await.unwrap();
                if head[3] == 0x01 && head[5..9] == [0, 0, 0, 1] {
                    return payload[0];
                }
            }
        })
        .await
        .expect("a response within 5 s");
        // HPACK static entry 8 is ":status: 200".
        assert_eq!(status, 0x88);
    }

    /// An HTTP/2 connection (cleartext, prior knowledge) whose peer stops answering is
    /// closed once a ping goes unanswered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_http2_peer_that_does_not_answer_pings_is_closed() {
        let app = spawn_app_with(Backend::Memory, |c| {
            c.header_read_timeout = Duration::from_secs(1)
        })
        .await;
        let mut stream = TcpStream::connect(address(&app)).await.unwrap();
        // The client preface and an empty SETTINGS frame; then silence, no ACKs.
        stream.write_all(HTTP2_START).await.unwrap();
        let started = Instant::now();
        let (reply, closed) = read_until_closed(&mut stream, Duration::from_secs(6)).await;
        let frame_type = reply.as_bytes().get(3).copied();
        assert_eq!(
            frame_type,
            Some(4),
            "the server's SETTINGS frame comes first"
        );
        assert!(closed, "still open after {:?}", started.elapsed());
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_that_stops_arriving_gets_408() {
        let app = spawn_app_with(Backend::Memory, |c| {
            c.body_read_timeout = Duration::from_secs(1)
        })
        .await;
        let mut stream = TcpStream::connect(address(&app)).await.unwrap();
        stream
            .write_all(b"POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"sessionId\"")
            .await
            .unwrap();
        let started = Instant::now();
        let (reply, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
        assert!(reply.contains("request_timeout"), "{reply}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_with_broken_chunks_gets_400_not_408() {
        let app = spawn_app_with(Backend::Memory, |_| {}).await;
        let mut stream = TcpStream::connect(address(&app)).await.unwrap();
        stream
            .write_all(b"POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n")
            .await
            .unwrap();
        let (reply, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
        assert!(reply.contains("invalid_body"), "{reply}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_past_the_limit_are_closed_and_a_freed_slot_is_reused() {
        let app = spawn_app_with(Backend::Memory, |c| c.max_connections = 5).await;
        let mut held = Vec::new();
        for _ in 0..5 {
            let mut stream = TcpStream::connect(address(&app)).await.unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buffer = [0u8; 1024];
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
            held.push(stream);
        }
        let mut extra = TcpStream::connect(address(&app)).await.unwrap();
        let _ = extra
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let (reply, closed) = read_until_closed(&mut extra, Duration::from_secs(2)).await;
        assert!(
            closed && reply.is_empty(),
            "the sixth connection was served: {reply}"
        );
        drop(held.pop());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut stream = TcpStream::connect(address(&app)).await.unwrap();
            let _ = stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let (reply, _) = read_until_closed(&mut stream, Duration::from_secs(2)).await;
            if reply.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(Instant::now() < deadline, "the freed slot was never reused");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
