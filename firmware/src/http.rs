//! The operations endpoint: `/metrics` (Prometheus text), `/healthz`
//! (process alive) and `/readyz` (receiving: spool writable and below its
//! disk watermark). A deliberately tiny HTTP/1.1 responder: GET only, one
//! request per connection, bounded request size and time.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::spool::Spool;

#[derive(Clone)]
pub struct OpsState {
    pub metrics: Arc<Metrics>,
    pub spool: Spool,
}

pub async fn run(listener: TcpListener, state: OpsState, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (socket, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), handle(socket, &state)).await;
        });
    }
}

async fn handle(mut socket: TcpStream, state: &OpsState) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let request_line = String::from_utf8_lossy(&buf)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = route(method, path, state);
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        socket.write_all(body.as_bytes()).await?;
    }
    socket.shutdown().await
}

fn route(method: &str, path: &str, state: &OpsState) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", TEXT, "GET only\n".into());
    }
    match path {
        "/metrics" => {
            refresh_spool_gauges(state);
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                state.metrics.render(),
            )
        }
        "/healthz" => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" => match readiness(state) {
            Ok(()) => ("200 OK", TEXT, "ready\n".into()),
            Err(why) => ("503 Service Unavailable", TEXT, format!("not ready: {why}\n")),
        },
        _ => ("404 Not Found", TEXT, "not found\n".into()),
    }
}

fn refresh_spool_gauges(state: &OpsState) {
    if let Ok(u) = state.spool.disk_usage() {
        state.metrics.spool_filesystem_used_ratio.set(u.used_percent() / 100.0);
        state
            .metrics
            .spool_filesystem_available_bytes
            .set(u.available_bytes as i64);
    }
}

fn readiness(state: &OpsState) -> Result<(), String> {
    if state.spool.over_watermark() {
        return Err("spool disk above high watermark".into());
    }
    let probe = state.spool.root().join("incoming").join(".ready-probe.tmp");
    std::fs::write(&probe, b"ok").map_err(|e| format!("spool not writable: {e}"))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
