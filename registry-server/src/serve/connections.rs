//! Connections: how many may be open at once, how long a client may take to send a
//! request's headers (which also closes idle keep-alive connections), and how long
//! in-flight requests get at shutdown; the same for plain HTTP and HTTPS.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum_server::accept::Accept;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connection settings of `blocks serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionArgs {
    /// Most client connections open at once; further ones are closed at accept (and
    /// logged), so a flood of idle connections cannot exhaust the server's files.
    #[arg(long, env = "BLOCKS_CONNECTION_LIMIT", default_value_t = 4096)]
    pub connection_limit: usize,
    /// Seconds a client may take to send a request's headers; a keep-alive connection
    /// idle this long is closed too.
    #[arg(long, env = "BLOCKS_HEADER_READ_TIMEOUT", default_value_t = 30)]
    pub header_read_timeout: u64,
    /// Seconds in-flight requests get to finish after SIGTERM or Ctrl-C; then every
    /// connection is closed.
    #[arg(long, env = "BLOCKS_SHUTDOWN_GRACE", default_value_t = 10)]
    pub shutdown_grace: u64,
    /// Seconds one request may take, its body included; slower ones are answered 408.
    #[arg(long, env = "BLOCKS_REQUEST_TIMEOUT", default_value_t = 30)]
    pub request_timeout: u64,
}

impl Default for ConnectionArgs {
    fn default() -> Self {
        Self {
            connection_limit: 4096,
            header_read_timeout: 30,
            shutdown_grace: 10,
            request_timeout: 30,
        }
    }
}

impl ConnectionArgs {
    /// Refuses settings that would stop the server from serving anything.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        if self.connection_limit == 0 {
            anyhow::bail!("--connection-limit must be at least 1");
        }
        if self.header_read_timeout == 0 {
            anyhow::bail!("--header-read-timeout must be at least 1 second");
        }
        if self.request_timeout == 0 {
            anyhow::bail!("--request-timeout must be at least 1 second");
        }
        Ok(())
    }

    /// How long one request may take.
    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout)
    }

    /// The grace period at shutdown.
    pub(crate) fn grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace)
    }

    /// HTTP/1 and HTTP/2 settings for every connection.
    pub(crate) fn configure(&self, builder: &mut Builder<TokioExecutor>) {
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(self.header_read_timeout));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .keep_alive_interval(Duration::from_secs(self.header_read_timeout))
            .keep_alive_timeout(Duration::from_secs(10));
    }

    /// The acceptor that holds a place for each open connection.
    pub(crate) fn limit(&self) -> ConnectionLimit {
        ConnectionLimit {
            permits: Arc::new(Semaphore::new(self.connection_limit)),
            limit: self.connection_limit,
            last_warning: Arc::new(Mutex::new(None)),
        }
    }
}

/// Admits a connection while fewer than the limit are open; closes it otherwise.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimit {
    permits: Arc<Semaphore>,
    limit: usize,
    /// When the limit was last logged (once every 10 s at most, so a flood cannot flood
    /// the log).
    last_warning: Arc<Mutex<Option<Instant>>>,
}

impl ConnectionLimit {
    fn warn(&self) {
        let mut last = self.last_warning.lock();
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!(
                limit = self.limit,
                "connection limit reached: closing new connections until others end (--connection-limit)"
            );
        }
    }
}

impl<S> Accept<TcpStream, S> for ConnectionLimit {
    type Stream = Admitted;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Admitted, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        std::future::ready(match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => {
                // Answers are small: send them at once.
                let _ = stream.set_nodelay(true);
                Ok((
                    Admitted {
                        stream,
                        _permit: permit,
                    },
                    service,
                ))
            }
            Err(_) => {
                self.warn();
                Err(io::Error::other("connection limit reached"))
            }
        })
    }
}

/// An admitted connection: its place is given back when it closes.
#[derive(Debug)]
pub(crate) struct Admitted {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_would_serve_nothing_are_refused() {
        for (bad, flag) in [
            (
                ConnectionArgs {
                    connection_limit: 0,
                    ..ConnectionArgs::default()
                },
                "--connection-limit",
            ),
            (
                ConnectionArgs {
                    header_read_timeout: 0,
                    ..ConnectionArgs::default()
                },
                "--header-read-timeout",
            ),
            (
                ConnectionArgs {
                    request_timeout: 0,
                    ..ConnectionArgs::default()
                },
                "--request-timeout",
            ),
        ] {
            let err = bad.check().unwrap_err().to_string();
            assert!(err.contains(flag), "{err}");
        }
        assert!(ConnectionArgs::default().check().is_ok());
    }
}
