//! The metrics layer in a real tonic server (health service, no TLS) and the
//! `/metrics` HTTP endpoint: counters by RPC and code, histogram count, 404,
//! and robustness against garbage, slowloris and concurrent scrapes.

use std::sync::Arc;
use std::time::Duration;

use poshsm::server::metrics::{serve_metrics, Metrics, MetricsLayer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Sends `request` raw and returns the whole response (the server closes).
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may hang up before reading all of an oversized request.
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    // A reset (the server hanging up on junk it did not read) counts as closed.
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("metrics endpoint answered in time");
    String::from_utf8_lossy(&out).into_owned()
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    raw(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await
}

#[tokio::test]
async fn layer_counts_grpc_calls_and_endpoint_serves_them() {
    let metrics = Arc::new(Metrics::new());

    // A plain tonic server with just the health service, wrapped in the layer.
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = grpc_listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(MetricsLayer(metrics.clone()))
            .add_service(health_service)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(grpc_listener),
                async {
                    let _ = stop_rx.await;
                },
            ),
    );

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    for _ in 0..3 {
        client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
    }
    let err = client
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // The metrics endpoint.
    let m_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let m_addr = m_listener.local_addr().unwrap();
    let (m_stop_tx, m_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let m_server = tokio::spawn(serve_metrics(m_listener, metrics.clone(), async {
        let _ = m_stop_rx.await;
    }));

    let resp = scrape(m_addr).await;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    assert!(
        body.contains("poshsm_requests_total{rpc=\"Check\",code=\"OK\"} 3\n"),
        "{body}"
    );
    assert!(
        body.contains("poshsm_requests_total{rpc=\"Check\",code=\"NOT_FOUND\"} 1\n"),
        "{body}"
    );
    assert!(
        body.contains("poshsm_request_duration_seconds_count{rpc=\"Check\"} 4\n"),
        "{body}"
    );
    assert!(
        body.contains("poshsm_request_duration_seconds_bucket{rpc=\"Check\",le=\"+Inf\"} 4\n"),
        "{body}"
    );
    assert!(body.contains("# TYPE poshsm_requests_total counter\n"));
    assert!(body.contains("# TYPE poshsm_request_duration_seconds histogram\n"));

    // Gauges set by the server show up.
    metrics.set_gauge("poshsm_test_gauge", "A test gauge.", 7.0);
    assert!(scrape(m_addr)
        .await
        .contains("# TYPE poshsm_test_gauge gauge\nposhsm_test_gauge 7\n"));

    // Other paths: 404; garbage: 400 or a plain close; neither stops the server.
    let nf = raw(m_addr, b"GET /other HTTP/1.1\r\n\r\n").await;
    assert!(nf.starts_with("HTTP/1.1 404 "), "{nf}");
    let post = raw(m_addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
    assert!(post.starts_with("HTTP/1.1 404 "), "{post}");
    let garbage = raw(m_addr, b"\x16\x03\x01\x00\xff\x01\x00\x00\r\n\r\n").await;
    assert!(
        garbage.is_empty() || garbage.starts_with("HTTP/1.1 400 "),
        "{garbage}"
    );
    let huge = raw(m_addr, &vec![b'A'; 64 * 1024]).await;
    assert!(
        huge.is_empty() || huge.starts_with("HTTP/1.1 400 "),
        "{huge}"
    );
    {
        // Half a request, then hang up.
        let mut s = TcpStream::connect(m_addr).await.unwrap();
        s.write_all(b"GET /met").await.unwrap();
    }

    // A slowloris connection that never finishes its head does not block
    // concurrent scrapes.
    let mut slow = TcpStream::connect(m_addr).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    let scrapes: Vec<_> = (0..16).map(|_| tokio::spawn(scrape(m_addr))).collect();
    for s in scrapes {
        let r = s.await.unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("poshsm_requests_total{rpc=\"Check\",code=\"OK\"} 3\n"));
    }
    // ...and is cut off by the read timeout.
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf))
        .await
        .expect("slowloris connection closed by the server");
    assert!(
        n.is_err() || buf.is_empty(),
        "no response to an incomplete head"
    );

    let last = scrape(m_addr).await;
    assert!(last.starts_with("HTTP/1.1 200 OK\r\n"), "{last}");

    m_stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), m_server)
        .await
        .expect("metrics server stops on shutdown")
        .unwrap();
    stop_tx.send(()).unwrap();
    drop(client);
    grpc.await.unwrap().unwrap();
}
