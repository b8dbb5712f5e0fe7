//! The exact decisions' own connection to a shard's master: RESP2 over one TCP stream, every
//! call pipelined behind the ones still in flight, driven by one task on the proxy's runtime.
//!
//! Why not redis-rs's multiplexed connection, as everything else here uses: a decision is one
//! `EVALSHA` on the request path, and on redis-rs's connection it cost ~15k instructions more
//! than a request with no limit (its command and script values, the channel to its driver, a
//! second timer, its reply decoder; `bench/instructions.py`), as much as three quarters of the
//! whole proxied request. Here a call is its bytes appended to a buffer under a short lock and
//! a oneshot for the reply. The driver waits one turn of the runtime (the other requests of
//! the same burst queue theirs meanwhile), writes everything queued in one system call, and
//! hands each reply to its caller in order. A failure ends the connection: every caller in
//! flight and after is told, and [`super::link::Link`] opens another.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Why a call on the connection did not get its reply.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    /// The connection failed or was closed (by either end) before the reply came.
    #[error("redis connection lost: {0}")]
    Lost(String),
    /// The server answered with an error (`-ERR ...`, `-NOSCRIPT ...`).
    #[error("redis: {0}")]
    Server(String),
    /// The server sent something that is not RESP2: the connection is dropped.
    #[error("redis sent a malformed reply")]
    Malformed,
}

impl WireError {
    /// The server does not have the script (restarted, `SCRIPT FLUSH`).
    pub fn is_no_script(&self) -> bool {
        matches!(self, WireError::Server(m) if m.starts_with("NOSCRIPT"))
    }

    fn lost(e: &io::Error) -> Self {
        WireError::Lost(e.to_string())
    }
}

/// A reply the server sent, as far as a caller here needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A bulk or simple string.
    Text(Vec<u8>),
    /// An integer.
    Int(i64),
    /// A nil bulk string or array.
    Nil,
    /// An array (its items are not kept: no call here expects one).
    Array,
}

/// One argument of a command.
pub enum Arg<'a> {
    Bytes(&'a [u8]),
    Int(u64),
}

/// A reply, or why there is none.
pub type Answer = Result<Reply, WireError>;

#[derive(Default)]
struct State {
    /// Commands queued since the driver's last write.
    out: Vec<u8>,
    /// Who waits for the next replies, in the order their commands were queued.
    waiting: VecDeque<oneshot::Sender<Answer>>,
    /// The driver, parked with nothing to write.
    driver: Option<Waker>,
    /// The connection is over: calls fail with this at once.
    over: Option<WireError>,
    /// No [`Wire`] is left: the driver ends once the calls in flight are answered.
    dropped: bool,
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain buffers behind, still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection; dropping the last handle closes it once its calls in flight are answered.
pub struct Wire {
    shared: Arc<Shared>,
}

impl Drop for Wire {
    fn drop(&mut self) {
        let driver = {
            let mut st = self.shared.lock();
            st.dropped = true;
            st.driver.take()
        };
        if let Some(w) = driver {
            w.wake();
        }
    }
}

impl Wire {
    /// Connects to `info`'s server within `timeout`, authenticates and selects its database
    /// as `info` says, and starts the driver on the current runtime. `None`: `info` is not a
    /// plain TCP address (TLS is for redis-rs to refuse or serve).
    pub async fn connect(
        info: &ConnectionInfo,
        timeout: Duration,
    ) -> Option<Result<Wire, WireError>> {
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        let settings = info.redis_settings();
        let open = async {
            let mut stream = TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|e| WireError::lost(&e))?;
            stream.set_nodelay(true).map_err(|e| WireError::lost(&e))?;
            let mut hello = Vec::new();
            let mut replies = 0;
            if let Some(password) = settings.password() {
                match settings.username() {
                    Some(user) => encode(
                        &mut hello,
                        3,
                        [&b"AUTH"[..], user.as_bytes(), password.as_bytes()]
                            .into_iter()
                            .map(Arg::Bytes),
                    ),
                    None => encode(
                        &mut hello,
                        2,
                        [&b"AUTH"[..], password.as_bytes()]
                            .into_iter()
                            .map(Arg::Bytes),
                    ),
                }
                replies += 1;
            }
            if let Ok(db @ 1..) = u64::try_from(settings.db()) {
                encode(
                    &mut hello,
                    2,
                    [Arg::Bytes(b"SELECT"), Arg::Int(db)].into_iter(),
                );
                replies += 1;
            }
            if replies > 0 {
                stream
                    .write_all(&hello)
                    .await
                    .map_err(|e| WireError::lost(&e))?;
                let mut buf = Vec::with_capacity(256);
                let mut at = 0;
                while replies > 0 {
                    match parse(&buf[at..])? {
                        Some((reply, used)) => {
                            at += used;
                            replies -= 1;
                            reply?;
                        }
                        None => {
                            if stream
                                .read_buf(&mut buf)
                                .await
                                .map_err(|e| WireError::lost(&e))?
                                == 0
                            {
                                return Err(WireError::Lost("closed during the handshake".into()));
                            }
                        }
                    }
                }
            }
            Ok(stream)
        };
        let stream = match tokio::time::timeout(timeout, open).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Some(Err(e)),
            Err(_) => {
                return Some(Err(WireError::Lost(format!(
                    "no connection within {timeout:?}"
                ))))
            }
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
        });
        tokio::spawn(drive(Arc::clone(&shared), stream));
        Some(Ok(Wire { shared }))
    }

    /// Queues the command of the `count` arguments `args`; its reply (or why there is none)
    /// comes on the receiver. An error: the connection is over.
    pub fn call<'a>(
        &self,
        count: usize,
        args: impl Iterator<Item = Arg<'a>>,
    ) -> Result<oneshot::Receiver<Answer>, WireError> {
        let (tx, rx) = oneshot::channel();
        let driver = {
            let mut st = self.shared.lock();
            if let Some(e) = &st.over {
                return Err(e.clone());
            }
            encode(&mut st.out, count, args);
            st.waiting.push_back(tx);
            st.driver.take()
        };
        if let Some(w) = driver {
            w.wake();
        }
        Ok(rx)
    }
}

/// Writes what callers queue and reads the replies, until the connection fails or every
/// handle is gone and nothing is in flight; then fails whoever still waits.
async fn drive(shared: Arc<Shared>, mut stream: TcpStream) {
    let mut d = Driver {
        wbuf: Vec::with_capacity(1024),
        sent: 0,
        rbuf: ReadBuffer {
            bytes: vec![0; 4096],
            filled: 0,
        },
        deferred: false,
    };
    let end = poll_fn(|cx| d.step(&shared, &mut stream, cx)).await;
    let waiting = {
        let mut st = shared.lock();
        st.over = Some(end.clone());
        st.out.clear();
        std::mem::take(&mut st.waiting)
    };
    for w in waiting {
        let _ = w.send(Err(end.clone()));
    }
    if !matches!(end, WireError::Lost(ref m) if m == CLOSED_HERE) {
        tracing::debug!("redis decisions connection ended: {end}");
    }
}

/// Why the driver ended a connection no one holds any more.
const CLOSED_HERE: &str = "closed by the sidecar";

/// The driver's own buffers.
struct Driver {
    /// What is being written, `wbuf[sent..]` still to go.
    wbuf: Vec<u8>,
    sent: usize,
    rbuf: ReadBuffer,
    /// The commands queued now have waited one turn of the runtime already.
    deferred: bool,
}

impl Driver {
    /// One poll: write, read, hand out replies; `Ready` only when the connection ends.
    fn step(
        &mut self,
        shared: &Shared,
        stream: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<WireError> {
        loop {
            let mut defer = false;
            // Take what queued since the last write, once that one is all out.
            if self.sent == self.wbuf.len() {
                self.wbuf.clear();
                self.sent = 0;
                let mut st = shared.lock();
                if !st.out.is_empty() && !self.deferred {
                    defer = true;
                    // Callers append without waking this meanwhile (see below).
                    st.driver = None;
                } else {
                    std::mem::swap(&mut st.out, &mut self.wbuf);
                }
                self.deferred = defer;
            }
            while self.sent < self.wbuf.len() {
                match Pin::new(&mut *stream).poll_write(cx, &self.wbuf[self.sent..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(WireError::Lost("write returned 0".into()))
                    }
                    Poll::Ready(Ok(n)) => self.sent += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(WireError::lost(&e)),
                    Poll::Pending => break,
                }
            }
            // Read every reply that has come.
            let rbuf = &mut self.rbuf;
            loop {
                if rbuf.filled == rbuf.bytes.len() {
                    // A reply longer than the buffer: room for more of it (bounded by `parse`).
                    let more = rbuf.bytes.len();
                    rbuf.bytes.resize(more * 2, 0);
                }
                let mut rb = ReadBuf::new(&mut rbuf.bytes[rbuf.filled..]);
                match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            return Poll::Ready(WireError::Lost("closed by the server".into()));
                        }
                        rbuf.filled += n;
                        if let Err(e) = hand_out(shared, rbuf) {
                            return Poll::Ready(e);
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(WireError::lost(&e)),
                    Poll::Pending => break,
                }
            }
            if defer {
                // One turn of the runtime first: the other requests it has ready queue their
                // decisions meanwhile, and one write sends them all. tokio's yield_now wakes
                // this task once the tasks ready now have run; callers find no waker to wake
                // until then (a wake would run this at once, in tokio's LIFO slot).
                let mut turn = std::pin::pin!(tokio::task::yield_now());
                let _ = turn.as_mut().poll(cx);
                return Poll::Pending;
            }
            // Park, unless more was queued meanwhile (its caller found no waker to wake).
            let mut st = shared.lock();
            if !st.out.is_empty() && self.sent == self.wbuf.len() {
                continue;
            }
            if st.dropped && st.waiting.is_empty() {
                return Poll::Ready(WireError::Lost(CLOSED_HERE.into()));
            }
            st.driver = Some(cx.waker().clone());
            return Poll::Pending;
        }
    }
}

/// Replies read and not yet handed out: `bytes[..filled]`.
struct ReadBuffer {
    bytes: Vec<u8>,
    filled: usize,
}

/// Hands every complete reply at the front of `rbuf` to its caller and drops those bytes.
fn hand_out(shared: &Shared, rbuf: &mut ReadBuffer) -> Result<(), WireError> {
    let mut at = 0;
    while let Some((reply, used)) = parse(&rbuf.bytes[at..rbuf.filled])? {
        at += used;
        let next = shared.lock().waiting.pop_front();
        match next {
            // A caller that gave up (past its budget) has dropped its receiver.
            Some(w) => {
                let _ = w.send(reply);
            }
            None => return Err(WireError::Malformed),
        }
    }
    rbuf.bytes.copy_within(at..rbuf.filled, 0);
    rbuf.filled -= at;
    Ok(())
}

/// Appends the `count` arguments `args` as a RESP2 command.
fn encode<'a>(out: &mut Vec<u8>, count: usize, args: impl Iterator<Item = Arg<'a>>) {
    let mut num = itoa::Buffer::new();
    out.push(b'*');
    out.extend_from_slice(num.format(count).as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        let mut digits = itoa::Buffer::new();
        let bytes = match a {
            Arg::Bytes(b) => b,
            Arg::Int(i) => digits.format(i).as_bytes(),
        };
        out.push(b'$');
        out.extend_from_slice(num.format(bytes.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }
}

/// Largest bulk string accepted (a decision's reply is a few dozen bytes).
const MAX_BULK: usize = 1 << 20;

/// Parses one reply at the start of `buf`: `None` if it is not all there yet; the reply (or
/// the server's error) and the bytes it took otherwise.
fn parse(buf: &[u8]) -> Result<Option<(Answer, usize)>, WireError> {
    parse_nested(buf, 0)
}

/// Deepest array nesting read (none is expected: no call here is answered with an array).
const MAX_DEPTH: usize = 4;

fn parse_nested(buf: &[u8], depth: usize) -> Result<Option<(Answer, usize)>, WireError> {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() > MAX_BULK {
            Err(WireError::Malformed)
        } else {
            Ok(None)
        };
    };
    let (&kind, line) = buf[..line_end].split_first().ok_or(WireError::Malformed)?;
    let after = line_end + 2;
    let int = || -> Result<i64, WireError> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(WireError::Malformed)
    };
    Ok(Some(match kind {
        b'+' => (Ok(Reply::Text(line.to_vec())), after),
        b'-' => (
            Err(WireError::Server(
                String::from_utf8_lossy(line).into_owned(),
            )),
            after,
        ),
        b':' => (Ok(Reply::Int(int()?)), after),
        b'$' => {
            let n = int()?;
            if n < 0 {
                return Ok(Some((Ok(Reply::Nil), after)));
            }
            let n = usize::try_from(n).map_err(|_| WireError::Malformed)?;
            if n > MAX_BULK {
                return Err(WireError::Malformed);
            }
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            if &buf[after + n..after + n + 2] != b"\r\n" {
                return Err(WireError::Malformed);
            }
            (
                Ok(Reply::Text(buf[after..after + n].to_vec())),
                after + n + 2,
            )
        }
        b'*' if depth < MAX_DEPTH => {
            let n = int()?;
            let mut at = after;
            for _ in 0..n.max(0) {
                match parse_nested(&buf[at..], depth + 1)? {
                    Some((_, used)) => at += used,
                    None => return Ok(None),
                }
            }
            (Ok(if n < 0 { Reply::Nil } else { Reply::Array }), at)
        }
        _ => return Err(WireError::Malformed),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(args: Vec<Arg<'_>>) -> String {
        let mut out = Vec::new();
        encode(&mut out, args.len(), args.into_iter());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn commands_are_resp_arrays_of_bulk_strings() {
        assert_eq!(
            encoded(vec![Arg::Bytes(b"EVALSHA"), Arg::Int(1), Arg::Bytes(b"")]),
            "*3\r\n$7\r\nEVALSHA\r\n$1\r\n1\r\n$0\r\n\r\n"
        );
        assert_eq!(
            encoded(vec![Arg::Int(18_446_744_073_709_551_615)]),
            "*1\r\n$20\r\n18446744073709551615\r\n"
        );
    }

    #[test]
    fn each_reply_kind_parses_with_its_length() {
        let one = |b: &[u8]| parse(b).unwrap().unwrap();
        assert_eq!(one(b"+OK\r\n"), (Ok(Reply::Text(b"OK".to_vec())), 5));
        assert_eq!(one(b":-42\r\nrest"), (Ok(Reply::Int(-42)), 6));
        assert_eq!(one(b"$-1\r\n"), (Ok(Reply::Nil), 5));
        assert_eq!(
            one(b"$9\r\n1 1 9 5 0\r\n+OK\r\n"),
            (Ok(Reply::Text(b"1 1 9 5 0".to_vec())), 15)
        );
        assert_eq!(one(b"*2\r\n:1\r\n$1\r\nx\r\n"), (Ok(Reply::Array), 15));
        let (err, used) = one(b"-NOSCRIPT No matching script.\r\n");
        assert!(err.unwrap_err().is_no_script());
        assert_eq!(used, 31);
    }

    #[test]
    fn a_reply_not_all_there_waits_for_more() {
        for part in [
            &b""[..],
            b"$9\r\n1 1",
            b"$9\r\n1 1 9 5 0\r",
            b"*2\r\n:1\r\n",
            b"+O",
        ] {
            assert_eq!(
                parse(part).unwrap(),
                None,
                "{:?}",
                String::from_utf8_lossy(part)
            );
        }
    }

    #[test]
    fn what_is_not_resp2_is_refused() {
        let deep = b"*1\r\n".repeat(6);
        for bad in [
            &b"?x\r\n"[..],
            b"$x\r\n",
            b"$3\r\nabcd\r\n",
            b":1.5\r\n",
            b"\r\n",
            &deep,
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
