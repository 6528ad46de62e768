//! The HTTP server every node runs: hyper's HTTP/1 server with the limits a long-running service
//! needs and axum's `serve` does not set.
//!
//! - At most [`ServerLimits::max_connections`] connections are open at once; further clients
//!   wait in the kernel's accept queue instead of using up the file descriptors that RocksDB,
//!   Raft replication and peons need. [`raise_fd_limit`] lifts the soft descriptor limit to the
//!   hard one at start, and [`ServerLimits::for_fd_limit`] keeps a reserve below it.
//! - A connection that does not send a whole request head within
//!   [`ServerLimits::header_read_timeout`] is closed: both a slow client trickling its headers
//!   and an idle keep-alive connection (hyper starts that clock when it waits for the next
//!   request). A request being answered is never cut: long polls and blocking lock waits have
//!   their own server-side maximums.
//! - Stopping finishes the requests in flight, then closes every connection.
//! - With a TLS config ([`raftlord_raft::tls`]) every connection is HTTPS: a client that does
//!   not finish the handshake within the header timeout, or speaks plain HTTP, is dropped.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Connection limits of a node's HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// File descriptors kept free for everything but client connections (RocksDB's files, Raft
/// peers, peon pipes and logs).
const FD_RESERVE: u64 = 512;

impl ServerLimits {
    /// Limits that leave [`FD_RESERVE`] descriptors of `fd_limit` free (at least 64
    /// connections).
    pub fn for_fd_limit(fd_limit: u64) -> ServerLimits {
        ServerLimits {
            max_connections: fd_limit.saturating_sub(FD_RESERVE).clamp(64, 1 << 20) as usize,
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Raises the soft limit on open files to the hard limit; returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

/// Serves `app` on `listener` until `stop` is cancelled, then finishes the requests in flight
/// and closes every connection.
pub fn serve(
    listener: TcpListener,
    app: axum::Router,
    stop: CancellationToken,
    limits: ServerLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> JoinHandle<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let (open_tx, open_rx) = watch::channel(());
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = stop.cancelled() => break,
            };
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors or a connection reset before it was accepted:
                        // back off briefly rather than spin on the error.
                        warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => break,
            };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(app.clone());
            let stop = stop.clone();
            let open = open_rx.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    None => serve_connection(stream, service, limits, &stop).await,
                    Some(acceptor) => {
                        // A client that does not complete the handshake in time (or speaks
                        // plain HTTP) is dropped like one that does not send its headers.
                        let shake = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream));
                        if let Ok(Ok(tls)) = shake.await {
                            serve_connection(tls, service, limits, &stop).await;
                        }
                    }
                }
                drop(permit);
                drop(open);
            });
        }
        drop(open_rx);
        open_tx.closed().await;
    })
}

/// Serves one connection until the client closes it or `stop` asks every connection to finish.
async fn serve_connection<S, T>(stream: T, service: S, limits: ServerLimits, stop: &CancellationToken)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_keeps_a_reserve_of_descriptors() {
        assert_eq!(ServerLimits::for_fd_limit(1024).max_connections, 512);
        assert_eq!(ServerLimits::for_fd_limit(100).max_connections, 64);
        assert_eq!(ServerLimits::for_fd_limit(1 << 20).max_connections, (1 << 20) - 512);
    }

    #[test]
    fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
        let now = raise_fd_limit();
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct passed by pointer.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!((lim.rlim_cur, now), (lim.rlim_max, lim.rlim_max));
    }
}
