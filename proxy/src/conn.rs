//! Bounds on client connections, in front of pingora's HTTP handling: at most
//! `server.max_connections` open, and every request head whole within
//! `server.header_read_timeout_ms` of its first byte (of accept, for a connection's first),
//! the h2c preface sniff included. pingora alone reads the 24-byte preface with no deadline
//! and a head with only a per-read timeout, so a client sending a byte a second, or fewer
//! than 24 bytes, held its connection for ever.
//!
//! [`Bounded`] wraps pingora's app: it counts the connection, sniffs the preface itself under
//! the deadline (deciding at the first byte that differs, so short HTTP/1 heads are not kept
//! waiting for 24 bytes) and hands pingora a [`Guarded`] stream, which keeps the deadline for
//! each later HTTP/1 head and, when it passes with part of a head read, answers 408. Where a
//! head ends and the next begins is pingora's to know, not the bytes': the shell tells the
//! stream ([`Guarded::head_done`] when a head was parsed, [`Guarded::response_done`] when the exchange is over
//! with the request body read), so a body streamed while the response already flows is
//! never taken for a slow head.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::state::Runtime;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The answer to a head that did not arrive in time.
pub(crate) const TIMEOUT_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\nfloodgate-reason: header_timeout\r\n\r\n";

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preface {
    /// Still a prefix of the HTTP/2 preface: read more.
    Undecided,
    /// The whole HTTP/2 preface.
    H2,
    /// Not HTTP/2 (a byte differs, or the connection ended early).
    H1,
}

/// Judges the bytes read so far.
pub fn preface(read: &[u8]) -> Preface {
    let n = read.len().min(PREFACE.len());
    if read[..n] != PREFACE[..n] {
        Preface::H1
    } else if n == PREFACE.len() {
        Preface::H2
    } else {
        Preface::Undecided
    }
}

/// pingora's app with the connection bounds in front.
pub struct Bounded<A> {
    inner: Arc<A>,
    rt: Arc<Runtime>,
}

impl<A> Bounded<A> {
    /// Bounds `inner`'s connections by the settings in `rt`'s config snapshot (read at each
    /// accept, so a reload applies to new connections).
    pub fn new(inner: A, rt: Arc<Runtime>) -> Self {
        Self {
            inner: Arc::new(inner),
            rt,
        }
    }

    /// The wrapped app (pingora's proxy), for its options.
    pub fn inner_mut(&mut self) -> Option<&mut A> {
        Arc::get_mut(&mut self.inner)
    }
}

/// Holds a place among the open connections until dropped.
struct Place<'a> {
    open: &'a AtomicU32,
    gauge: &'a prometheus::IntGauge,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Bounded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Only the two settings, not a clone of the section: this future lives as long as
        // the connection.
        let (max_connections, header_read_timeout) = {
            let snap = self.rt.current.load();
            let server = &snap.config.server;
            (server.max_connections, server.header_read_timeout)
        };
        let metrics = &self.rt.metrics;
        // One count for every listener: `server.max_connections` is the sidecar's.
        let open = self.rt.connections.fetch_add(1, Ordering::Relaxed) + 1;
        metrics.connections_open.inc();
        let _place = Place {
            open: &self.rt.connections,
            gauge: &metrics.connections_open,
        };
        if open > max_connections {
            metrics.connections_refused.inc();
            tracing::debug!(
                open,
                max = max_connections,
                "connection refused: server.max_connections are open"
            );
            return None;
        }
        let mut g = Guarded::new(stream, header_read_timeout, metrics.header_timeouts.clone());
        match g.sniff().await {
            Ok(()) => {}
            Err(Sniffed::Closed) => return None,
            Err(Sniffed::TimedOut) => {
                let partial = !g.prefix.is_empty();
                timed_out(&g.timeouts, partial);
                if partial {
                    // Best effort, briefly: a client this slow may not read either.
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        g.inner.write_all(TIMEOUT_408).await?;
                        g.inner.flush().await
                    })
                    .await;
                }
                return None;
            }
        }
        self.inner.process_new(Box::new(g), shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

pub(crate) fn timed_out(timeouts: &prometheus::IntCounterVec, partial: bool) {
    let head = if partial { "partial" } else { "idle" };
    timeouts.with_label_values(&[head]).inc();
    tracing::debug!(
        head,
        "connection closed: no whole request head within server.header_read_timeout_ms"
    );
}

/// Why the preface sniff ended a connection.
enum Sniffed {
    Closed,
    TimedOut,
}

/// Where a connection is between heads.
const HEAD: u8 = 0;
/// A head was parsed: no deadline until the exchange is over.
const EXCHANGE: u8 = 1;
/// The exchange is over: the next byte read starts a head.
const NEXT: u8 = 2;
/// HTTP/2: nothing to track.
const H2: u8 = 3;

/// A client stream that keeps the head deadline. Bytes read while sniffing are replayed
/// first. Its phase is an atomic because the shell sets it through the `&Stream` pingora
/// lends it.
pub struct Guarded {
    inner: Stream,
    /// Bytes read by the sniff, not yet handed on.
    prefix: Vec<u8>,
    timeout: Duration,
    /// When the head being read must be whole (reset for each head).
    deadline: Pin<Box<Sleep>>,
    phase: AtomicU8,
    /// Bytes of the head being read, so far.
    head_bytes: usize,
    /// `floodgate_header_timeouts_total`.
    timeouts: prometheus::IntCounterVec,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

impl Guarded {
    fn new(inner: Stream, timeout: Duration, timeouts: prometheus::IntCounterVec) -> Self {
        Self {
            inner,
            prefix: Vec::with_capacity(PREFACE.len()),
            timeout,
            // A connection's first head is due `timeout` after accept.
            deadline: Box::pin(tokio::time::sleep(timeout)),
            phase: AtomicU8::new(HEAD),
            head_bytes: 0,
            timeouts,
        }
    }

    /// Reads until the first bytes say HTTP/1 or HTTP/2, within the head deadline.
    async fn sniff(&mut self) -> Result<(), Sniffed> {
        let mut buf = [0u8; PREFACE.len()];
        let verdict = loop {
            let want = PREFACE.len() - self.prefix.len();
            let n = tokio::select! {
                r = self.inner.read(&mut buf[..want]) => r.map_err(|_| Sniffed::Closed)?,
                () = self.deadline.as_mut() => return Err(Sniffed::TimedOut),
            };
            if n == 0 {
                if self.prefix.is_empty() {
                    return Err(Sniffed::Closed);
                }
                break Preface::H1;
            }
            self.prefix.extend_from_slice(&buf[..n]);
            match preface(&self.prefix) {
                Preface::Undecided => continue,
                v => break v,
            }
        };
        if verdict == Preface::H2 {
            self.phase.store(H2, Ordering::Relaxed);
        } else {
            self.head_bytes = self.prefix.len();
        }
        Ok(())
    }

    /// pingora parsed a request head on this connection: no deadline until the exchange is
    /// over.
    pub fn head_done(&self) {
        // From NEXT too: a head pingora parsed from bytes it already held (pipelining) was
        // never read through this stream.
        if self.phase.load(Ordering::Relaxed) != H2 {
            self.phase.store(EXCHANGE, Ordering::Relaxed);
        }
    }

    /// The exchange is over and its request body was read: the next byte read starts a
    /// head, due `header_read_timeout_ms` after it. (Idle time before it is the keep-alive
    /// timeout's.)
    pub fn response_done(&self) {
        let _ = self
            .phase
            .compare_exchange(EXCHANGE, NEXT, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The connection began with the HTTP/2 preface (h2c).
    pub fn is_h2(&self) -> bool {
        self.phase.load(Ordering::Relaxed) == H2
    }

    /// The guard under a pingora HTTP/1 session's stream, if it is one of ours.
    pub fn of(stream: Option<&Stream>) -> Option<&Self> {
        stream.and_then(|s| (**s).as_any().downcast_ref::<Self>())
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.drain(..n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let phase = this.phase.load(Ordering::Relaxed);
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if phase == NEXT && n > 0 {
                    this.phase.store(HEAD, Ordering::Relaxed);
                    this.deadline.as_mut().reset(Instant::now() + this.timeout);
                    this.head_bytes = 0;
                }
                if phase == HEAD || phase == NEXT {
                    this.head_bytes += n;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if phase == HEAD => {
                if this.deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let partial = this.head_bytes > 0;
                timed_out(&this.timeouts, partial);
                if partial {
                    // One try without waiting: a 408 fits any socket buffer.
                    let inner = Pin::new(&mut this.inner);
                    if let Poll::Ready(Ok(_)) = inner.poll_write(cx, TIMEOUT_408) {
                        let _ = Pin::new(&mut this.inner).poll_flush(cx);
                    }
                }
                this.phase.store(EXCHANGE, Ordering::Relaxed);
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "request head not whole within server.header_read_timeout_ms",
                )))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(self.inner.as_mut()).await;
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, d: pingora_core::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(d);
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<pingora_core::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, d: pingora_core::protocols::SocketDigest) {
        self.inner.set_socket_digest(d);
    }
}

/// pingora's own sniff peeks the first 24 bytes: it gets what [`Guarded::sniff`] read, which
/// is the whole preface on HTTP/2 and differs from it on HTTP/1, so both sniffs agree.
#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        let n = self.prefix.len().min(buf.len());
        buf[..n].copy_from_slice(&self.prefix[..n]);
        buf[n..].fill(0);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_is_judged_at_the_first_byte_that_differs() {
        assert_eq!(preface(b""), Preface::Undecided);
        assert_eq!(preface(b"PRI * HT"), Preface::Undecided);
        assert_eq!(preface(PREFACE), Preface::H2);
        assert_eq!(preface(b"G"), Preface::H1);
        assert_eq!(preface(b"GET / HTTP/1.0\r\n\r\n"), Preface::H1);
        assert_eq!(preface(b"PRI * HTTP/1.1"), Preface::H1);
    }
}
