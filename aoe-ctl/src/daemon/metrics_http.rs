//! The Prometheus endpoint (`metrics = "ADDR:PORT"`): a minimal HTTP/1.1 server answering
//! GET /metrics with the text format, 404 elsewhere, one request per connection. Requests
//! are bounded in size, time and number at once, and so is the whole exchange (a client that
//! asks and never reads the answer holds its connection 10 s at most), so a scanner or a
//! stuck client costs a few descriptors for a while at most and never delays the data path
//! (which runs on other threads).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::prometheus::{self, Family};

/// How the endpoint (and the control socket) ask the daemon's thread for fresh metrics.
pub type Asker = mpsc::Sender<oneshot::Sender<Vec<Family>>>;

/// The request line and headers of a scrape fit in this many bytes.
const MAX_REQUEST: usize = 8 << 10;
/// A client has this long to send its request.
const REQUEST_WITHIN: Duration = Duration::from_secs(5);
/// A whole exchange, from accepting the connection to the last byte of the answer.
const EXCHANGE_WITHIN: Duration = Duration::from_secs(10);
/// Connections answered at once; more are closed at once.
const MAX_CONNECTIONS: usize = 32;

pub struct MetricsServer {
    pub addr: SocketAddr,
    listener: TcpListener,
    slots: Arc<Semaphore>,
}

impl MetricsServer {
    /// Listen on `addr` (needs a tokio runtime).
    pub fn bind(addr: SocketAddr) -> Result<MetricsServer> {
        let std = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| anyhow!("metrics: cannot listen on {addr}: {e}"))?;
        let listener = TcpListener::from_std(std)
            .map_err(|e| anyhow!("metrics: cannot listen on {addr}: {e}"))?;
        Ok(MetricsServer {
            addr,
            listener,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        })
    }

    /// Take the next connection and answer it in a task of its own.
    pub async fn serve_next(&self, asker: &Asker) {
        let stream = match self.listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
        };
        // Closing the connection is the answer to one too many.
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return;
        };
        let asker = asker.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(EXCHANGE_WITHIN, answer(stream, &asker)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::debug!("metrics: {e:#}"),
                Err(_) => log::debug!("metrics: a client took more than {EXCHANGE_WITHIN:?}"),
            }
            drop(slot);
        });
    }
}

/// Fresh families from the daemon's thread.
pub async fn ask(asker: &Asker) -> Result<Vec<Family>> {
    let (tx, rx) = oneshot::channel();
    asker
        .send(tx)
        .await
        .map_err(|_| anyhow!("the daemon is stopping"))?;
    rx.await.map_err(|_| anyhow!("the daemon is stopping"))
}

/// What a request asks for: the status line and body of the answer, or None for metrics.
fn route(head: &str) -> Option<(&'static str, &'static str)> {
    let mut words = head.lines().next().unwrap_or("").split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if !words.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Some(("400 Bad Request", "bad request line\n"));
    }
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => None,
        (_, "/metrics") => Some(("405 Method Not Allowed", "only GET\n")),
        _ => Some(("404 Not Found", "metrics are at /metrics\n")),
    }
}

async fn answer(mut stream: TcpStream, asker: &Asker) -> Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(REQUEST_WITHIN, async {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(Some(end));
            }
            if buf.len() >= MAX_REQUEST {
                return Ok(None);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(anyhow!("the client closed before its request ended"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .map_err(|_| anyhow!("a client sent no request within {REQUEST_WITHIN:?}"))??;
    let (status, content_type, body) = match head {
        None => (
            "431 Request Header Fields Too Large",
            "text/plain",
            "request too large\n".to_string(),
        ),
        Some(end) => match route(&String::from_utf8_lossy(&buf[..end])) {
            Some((status, body)) => (status, "text/plain", body.to_string()),
            None => (
                "200 OK",
                prometheus::CONTENT_TYPE,
                prometheus::render(&ask(asker).await?),
            ),
        },
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn only_get_metrics_is_answered_with_metrics() {
        assert_eq!(route("GET /metrics HTTP/1.1\r\nHost: x"), None);
        assert_eq!(route("GET /metrics?x=1 HTTP/1.0"), None);
        assert_eq!(route("GET / HTTP/1.1").unwrap().0, "404 Not Found");
        assert_eq!(
            route("POST /metrics HTTP/1.1").unwrap().0,
            "405 Method Not Allowed"
        );
        assert_eq!(route("GET /metrics").unwrap().0, "400 Bad Request");
        assert_eq!(route("\u{0}\u{ff}").unwrap().0, "400 Bad Request");
        assert_eq!(route("").unwrap().0, "400 Bad Request");
    }
}
