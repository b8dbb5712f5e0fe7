//! The exact decisions' own connection to a shard's master: RESP2 over one TCP stream, every
//! call pipelined behind the ones still in flight, driven by one task on the proxy's runtime.
//!
//! Why not redis-rs's multiplexed connection, as everything else here uses: a decision is one
//! `EVALSHA` on the request path, and on redis-rs's connection it cost ~15k instructions more
//! than a request with no limit (its command and script values, the channel to its driver, a
//! second timer, its reply decoder; `bench/instructions.py`), as much as three quarters of the
//! whole proxied request. Here a call is its bytes and a oneshot for the reply, under a lock
//! that keeps commands and callers in the same order. With nothing in flight the caller
//! writes them itself, at once (one `send`, no hop); with calls in flight (a busy sidecar)
//! they wait, and once the last reply of those in flight is read the driver task writes
//! every call queued meanwhile, in one `send`. So one batch at most is in flight, and a batch
//! is what came in during one round trip. The driver reads, and hands each reply to its
//! caller in order. A failure ends the connection: every caller in flight and after is told,
//! and [`super::link::Link`] opens another. Each call carries its deadline, and the driver
//! keeps them all with one timer (`State::alarm`): a caller past its deadline is told
//! [`WireError::Timeout`] and its reply, still owed, is dropped when it comes.
//!
//! Why both: the write per call, as redis-rs's connection did it (~1 `send` per decision
//! under wrk -c32), and a turn of the runtime before every write (~0.3), each cost more than
//! this (bench/README.md): the first in system calls, the second in latency at rates below
//! saturation. Writing, while calls were in flight, what one turn of the runtime had queued
//! sent ~0.22 per decision against ~0.13 for waiting out the round trip, and cost more CPU
//! and a longer p99 (bench/README.md, the fifth pass). A call queued behind a batch waits
//! for it, at most one round trip more; the p99 measured with that wait was the lower.
//!
//! Calls may also be joined ([`Wire::join`]): a call of the same command as one queued and
//! not yet written adds one to that call's last argument, a count, and is told its reply too,
//! with its place among those sharing it. Decisions of one key that arrive during one round
//! trip of a busy sidecar are one script call this way (Redis runs the script once for all
//! of them).

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

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
    /// No reply by the call's deadline (the connection goes on: the late reply is dropped).
    #[error("no redis reply by the call's deadline")]
    Timeout,
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

/// A call waiting for its reply. `txs`: its caller, and every caller that joined it
/// ([`Wire::join`]), each told the one reply; empty once they were told the call is past its
/// deadline (its reply is still owed, and dropped when it comes).
struct Waiter {
    txs: smallvec::SmallVec<[oneshot::Sender<Answer>; 1]>,
    deadline: Instant,
}

/// A call in `State::out`, not yet written, that later calls of the same command may join.
struct Open {
    /// The caller's tag for the command (a cheap test before its bytes are compared).
    tag: u64,
    /// The call's number: its waiter is `waiting[seq - popped]`.
    seq: u64,
    /// `out[start..count_at]`: the command up to its last argument, the count of callers.
    start: usize,
    count_at: usize,
}

/// The joined callers' count, the last argument of a call others may join: a bulk string of
/// a fixed width, so that each one who joins rewrites it in place.
const COUNT_WIDTH: usize = 5;
const COUNT_HEAD: &[u8] = b"$5\r\n";
const MAX_JOINED: u32 = 99_999;

/// Most calls open to join at once: past it, calls are queued on their own.
const MAX_OPEN: usize = 64;

/// How much earlier than a caller's own deadline the call it joins may have its deadline (the
/// callers of one round trip are a fraction of a millisecond apart on a healthy server).
const JOIN_SLACK: Duration = Duration::from_millis(1);

#[derive(Default)]
struct State {
    /// Commands not yet written: queued behind the batch in flight, or left by a full
    /// socket buffer.
    out: Vec<u8>,
    /// The driver is writing `out`: callers append to it and do not write themselves.
    flushing: bool,
    /// Who waits for the next replies, in the order their commands were queued.
    waiting: VecDeque<Waiter>,
    /// How many waiters replies took off the front of `waiting`.
    popped: u64,
    /// How many calls had been queued when a write last emptied `out`: every one of them
    /// was written. While `popped < sent` a batch is in flight, and calls queued meanwhile
    /// wait in `out` for its last reply. A write that leaves bytes in `out` does not move it
    /// (it cannot tell which calls went whole); `flushing` is then set until `out` is empty,
    /// and replies may come for calls past `sent` meanwhile.
    sent: u64,
    /// The calls in `out` others may join: only while their bytes are not written, so it is
    /// emptied whenever any of `out` is.
    open: Vec<Open>,
    /// The driver's timer is set for this instant, no later than any waiting caller's
    /// deadline (`None`: not set). One timer for every call: a timer per call cost ~0.8k
    /// instructions, and, being earlier than tokio's time driver was to wake, a write to the
    /// runtime's eventfd to unpark it (0.19 per decision under wrk -c32, 0.46 at -c4; `perf
    /// stat`). It is not moved as calls are answered: it fires at the deadline it was set
    /// for, and is then set for the earliest of the calls still waiting (one wake-up and one
    /// scan of `waiting` per `redis.timeout_ms` while the connection is busy).
    alarm: Option<Instant>,
    /// A call came with a deadline before `alarm` (or with none set): the driver sets it anew.
    rearm: bool,
    /// The driver, parked.
    driver: Option<Waker>,
    /// The connection is over: calls fail with this at once.
    over: Option<WireError>,
    /// No [`Wire`] is left: the driver ends once the calls in flight are answered.
    dropped: bool,
}

impl State {
    /// The first `n` bytes of `out` were written.
    fn wrote(&mut self, n: usize) {
        if n == self.out.len() {
            self.out.clear();
            self.sent = self.popped + self.waiting.len() as u64;
        } else {
            self.out.drain(..n);
        }
        self.open.clear();
    }
}

struct Shared {
    state: Mutex<State>,
    stream: TcpStream,
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
            stream,
        });
        tokio::spawn(drive(Arc::clone(&shared)));
        Some(Ok(Wire { shared }))
    }

    /// Queues the command of the `count` arguments `args`; its reply (or why there is none:
    /// [`WireError::Timeout`] past `deadline`) comes on the receiver. An error: the
    /// connection is over.
    pub fn call<'a>(
        &self,
        count: usize,
        args: impl Iterator<Item = Arg<'a>>,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<Answer>, WireError> {
        self.queue(None, |out| encode(out, count, args), deadline)
            .map(|(rx, _)| rx)
    }

    /// Like [`Wire::call`], for a command of the `count` arguments `args` followed by one
    /// more: how many callers share it. A call of the very same command (and `tag`) queued
    /// and not yet written is joined instead: its count goes up by one, and this caller is told
    /// its reply too. Returns the receiver and this caller's place among those sharing the
    /// reply (1: the first). Calls are joined only while the connection is busy (calls are
    /// written at once while none is in flight), and only a call whose deadline is at most
    /// `JOIN_SLACK` before this caller's: the callers sharing a call are told together if it
    /// is late, at the first one's deadline.
    pub fn join<'a>(
        &self,
        tag: u64,
        count: usize,
        args: impl Iterator<Item = Arg<'a>>,
        deadline: Instant,
    ) -> Result<(oneshot::Receiver<Answer>, u32), WireError> {
        self.queue(Some(tag), |out| encode(out, count + 1, args), deadline)
    }

    /// [`Wire::join`] for a command encoded already: `write` appends all of it but the
    /// count of callers, its array's length counting that argument. A command prepared once
    /// and copied costs less than one encoded argument by argument (`super::Command`).
    pub fn join_encoded(
        &self,
        tag: u64,
        write: impl FnOnce(&mut Vec<u8>),
        deadline: Instant,
    ) -> Result<(oneshot::Receiver<Answer>, u32), WireError> {
        self.queue(Some(tag), write, deadline)
    }

    /// Queues the command `write` appends (for a `tag`, all of it but the count of callers).
    fn queue(
        &self,
        tag: Option<u64>,
        write: impl FnOnce(&mut Vec<u8>),
        deadline: Instant,
    ) -> Result<(oneshot::Receiver<Answer>, u32), WireError> {
        let (tx, rx) = oneshot::channel();
        let driver = {
            let mut st = self.shared.lock();
            if let Some(e) = &st.over {
                return Err(e.clone());
            }
            let start = st.out.len();
            write(&mut st.out);
            let tx = match tag {
                None => tx,
                Some(tag) => {
                    let tx = match join_open(&mut st, tag, start, deadline, tx) {
                        // Written with the call it joined, which arranged that already.
                        Ok(place) => return Ok((rx, place)),
                        Err(tx) => tx,
                    };
                    let count_at = st.out.len();
                    st.out.extend_from_slice(COUNT_HEAD);
                    st.out.extend_from_slice(b"00001\r\n");
                    if st.open.len() < MAX_OPEN {
                        let seq = st.popped + st.waiting.len() as u64;
                        st.open.push(Open {
                            tag,
                            seq,
                            start,
                            count_at,
                        });
                    }
                    tx
                }
            };
            self.queued(&mut st, tx, deadline)
        };
        if let Some(w) = driver {
            w.wake();
        }
        Ok((rx, 1))
    }

    /// A call's bytes are in `out`: queues its waiter, and writes them (or leaves them to the
    /// driver). Returns the driver's waker if it is to be woken.
    fn queued(
        &self,
        st: &mut State,
        tx: oneshot::Sender<Answer>,
        deadline: Instant,
    ) -> Option<Waker> {
        st.waiting.push_back(Waiter {
            txs: smallvec::smallvec![tx],
            deadline,
        });
        // Usually the timer is set already, for an earlier call's deadline: nothing to do.
        let rearm = !st.rearm && st.alarm.is_none_or(|a| deadline < a);
        st.rearm |= rearm;
        let driver = if st.flushing || st.popped < st.sent {
            // The driver is writing, or a batch is in flight: this call goes in the next
            // write, the driver's, once that batch's last reply is read (see `step`), with
            // every call queued until then; calls of the same command meanwhile join it
            // (`Wire::join`).
            None
        } else {
            // Written from here at once, under the lock that orders commands and their
            // callers: no hop to the driver, which reads, writes the calls held behind a batch,
            // and finishes what a full socket buffer left (an error is its to find, on that
            // write).
            match self.shared.stream.try_write(&st.out) {
                Ok(n) if n == st.out.len() => {
                    st.wrote(n);
                    None
                }
                Ok(n) => {
                    st.wrote(n);
                    st.flushing = true;
                    st.driver.take()
                }
                Err(_) => {
                    st.flushing = true;
                    st.driver.take()
                }
            }
        };
        match driver {
            Some(w) => Some(w),
            None if rearm => st.driver.take(),
            None => None,
        }
    }
}

/// The command just encoded at `out[start..]` (all but its count) is that of an open call of
/// `tag` this caller may join: it is dropped from `out`, that call's count goes up by one, and
/// `tx` is told its reply too. Returns the new count, this caller's place; `tx` back if there
/// is no such call. A call may be joined while it has room (`MAX_JOINED`), its callers were
/// not told it is past its deadline, and its deadline is within `JOIN_SLACK` before this
/// caller's: no caller is told it is late before its own deadline, nor much after it (a call
/// stays open for as long as a full socket holds its bytes). Calls that may no longer be
/// joined are dropped from `open`.
fn join_open(
    st: &mut State,
    tag: u64,
    start: usize,
    deadline: Instant,
    tx: oneshot::Sender<Answer>,
) -> Result<u32, oneshot::Sender<Answer>> {
    let State {
        out,
        open,
        waiting,
        popped,
        ..
    } = st;
    let (earlier, mine) = out.split_at(start);
    let mut found = None;
    let mut i = 0;
    while i < open.len() {
        let o = &open[i];
        if o.tag != tag || earlier.get(o.start..o.count_at) != Some(mine) {
            i += 1;
            continue;
        }
        let digits = o.count_at + COUNT_HEAD.len()..o.count_at + COUNT_HEAD.len() + COUNT_WIDTH;
        let joined = earlier
            .get(digits.clone())
            .map(|d| d.iter().fold(0u32, |v, b| v * 10 + u32::from(b - b'0')) + 1);
        let waiter = usize::try_from(o.seq - *popped)
            .ok()
            .and_then(|w| waiting.get(w));
        match (joined, waiter) {
            (Some(joined), Some(w)) if joined <= MAX_JOINED && !w.txs.is_empty() => {
                if w.deadline <= deadline && deadline <= w.deadline + JOIN_SLACK {
                    found = Some((o.seq, digits, joined));
                    break;
                }
                i += 1;
            }
            // Full, or its callers were told they are late: later ones are queued on their own.
            _ => {
                open.swap_remove(i);
            }
        }
    }
    let Some((seq, digits, joined)) = found else {
        return Err(tx);
    };
    let Some(waiter) = usize::try_from(seq - *popped)
        .ok()
        .and_then(|w| waiting.get_mut(w))
    else {
        return Err(tx);
    };
    let mut text = itoa::Buffer::new();
    let text = text.format(joined).as_bytes();
    let field = &mut out[digits];
    field.fill(b'0');
    field[COUNT_WIDTH - text.len()..].copy_from_slice(text);
    waiter.txs.push(tx);
    out.truncate(start);
    Ok(joined)
}

/// Reads the replies and hands them out (and writes the calls held behind a batch in flight,
/// and what a full socket left), until the
/// connection fails or every handle is gone and nothing is in flight; then fails whoever
/// still waits.
async fn drive(shared: Arc<Shared>) {
    let mut rbuf = ReadBuffer {
        bytes: vec![0; 4096],
        filled: 0,
    };
    // Not registered with the time driver until first set (see `State::alarm`).
    let mut alarm = std::pin::pin!(tokio::time::sleep_until(Instant::now()));
    let end = poll_fn(|cx| step(&shared, &mut rbuf, alarm.as_mut(), cx)).await;
    let waiting = {
        let mut st = shared.lock();
        st.over = Some(end.clone());
        st.out.clear();
        st.open.clear();
        std::mem::take(&mut st.waiting)
    };
    for tx in waiting.into_iter().flat_map(|w| w.txs) {
        let _ = tx.send(Err(end.clone()));
    }
    if !matches!(end, WireError::Lost(ref m) if m == CLOSED_HERE) {
        tracing::debug!("redis decisions connection ended: {end}");
    }
}

/// Why the driver ended a connection no one holds any more.
const CLOSED_HERE: &str = "closed by the sidecar";

/// One poll of the driver: finish a write, read, hand out replies; `Ready` only when the
/// connection ends.
fn step(
    shared: &Shared,
    rbuf: &mut ReadBuffer,
    mut alarm: std::pin::Pin<&mut Sleep>,
    cx: &mut Context<'_>,
) -> Poll<WireError> {
    loop {
        // What is left to write (a batch, or what a full socket left), until done or the
        // socket is full again.
        let mut write_waits = false;
        {
            let mut st = shared.lock();
            while st.flushing {
                if st.out.is_empty() {
                    st.flushing = false;
                    break;
                }
                match shared.stream.poll_write_ready(cx) {
                    Poll::Ready(Ok(())) => match shared.stream.try_write(&st.out) {
                        Ok(0) => return Poll::Ready(WireError::Lost("write returned 0".into())),
                        Ok(n) => st.wrote(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(WireError::lost(&e)),
                    },
                    Poll::Ready(Err(e)) => return Poll::Ready(WireError::lost(&e)),
                    Poll::Pending => {
                        write_waits = true;
                        break;
                    }
                }
            }
        }
        // Every reply that has come.
        loop {
            match shared.stream.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(WireError::lost(&e)),
                Poll::Pending => break,
            }
            if rbuf.filled == rbuf.bytes.len() {
                // A reply longer than the buffer: room for more of it. `parse` bounds one
                // string; this bounds a reply of many (an array, which no call here expects).
                let more = rbuf.bytes.len();
                if more >= MAX_REPLY {
                    return Poll::Ready(WireError::Malformed);
                }
                rbuf.bytes.resize(more * 2, 0);
            }
            match shared.stream.try_read(&mut rbuf.bytes[rbuf.filled..]) {
                Ok(0) => return Poll::Ready(WireError::Lost("closed by the server".into())),
                Ok(n) => {
                    rbuf.filled += n;
                    if let Err(e) = hand_out(shared, rbuf) {
                        return Poll::Ready(e);
                    }
                }
                // Readiness was stale; the next poll_read_ready registers for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(WireError::lost(&e)),
            }
        }
        // Deadlines: whoever is past theirs is told so; the timer is set for the next one.
        {
            let mut st = shared.lock();
            if std::mem::take(&mut st.rearm) {
                set_alarm(&mut st, alarm.as_mut());
            }
            while st.alarm.is_some() && alarm.as_mut().poll(cx).is_ready() {
                let now = Instant::now();
                let late: Vec<_> = st
                    .waiting
                    .iter_mut()
                    .filter(|w| w.deadline <= now)
                    .flat_map(|w| std::mem::take(&mut w.txs))
                    .collect();
                set_alarm(&mut st, alarm.as_mut());
                // Told outside the lock, as replies are (a wake may reach another thread).
                drop(st);
                for tx in late {
                    let _ = tx.send(Err(WireError::Timeout));
                }
                st = shared.lock();
            }
        }
        // Park, unless there is a write to make: the calls queued while the batch whose last
        // reply was just read was in flight, or a write a caller handed over meanwhile (it
        // found no waker to wake).
        let mut st = shared.lock();
        if !st.flushing && !st.out.is_empty() && st.popped >= st.sent {
            st.flushing = true;
        }
        if (st.flushing && !write_waits) || st.rearm {
            continue;
        }
        if st.dropped && st.waiting.is_empty() {
            return Poll::Ready(WireError::Lost(CLOSED_HERE.into()));
        }
        st.driver = Some(cx.waker().clone());
        return Poll::Pending;
    }
}

/// Sets `alarm` for the earliest deadline of the calls still waiting to be told anything, or
/// leaves it unset if there are none (an idle connection has no timer). Set later than
/// tokio's time driver is to wake, it does not unpark it.
fn set_alarm(st: &mut State, alarm: std::pin::Pin<&mut Sleep>) {
    st.alarm = st
        .waiting
        .iter()
        .filter(|w| !w.txs.is_empty())
        .map(|w| w.deadline)
        .min();
    if let Some(at) = st.alarm {
        alarm.reset(at);
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
        let next = {
            let mut st = shared.lock();
            // A reply to a call not yet written: the server is out of step. (While `flushing`,
            // calls past `sent` may have gone whole in a write that left bytes behind.)
            if !st.flushing && st.popped >= st.sent {
                return Err(WireError::Malformed);
            }
            st.popped += 1;
            st.waiting.pop_front()
        };
        match next {
            // Callers past their deadline were told so already; one that gave up has dropped
            // its receiver.
            Some(mut w) => {
                if let Some(last) = w.txs.pop() {
                    for tx in w.txs {
                        let _ = tx.send(reply.clone());
                    }
                    let _ = last.send(reply);
                }
            }
            None => return Err(WireError::Malformed),
        }
    }
    rbuf.bytes.copy_within(at..rbuf.filled, 0);
    rbuf.filled -= at;
    Ok(())
}

/// Appends the `count` arguments `args` as a RESP2 command.
pub fn encode<'a>(out: &mut Vec<u8>, count: usize, args: impl Iterator<Item = Arg<'a>>) {
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

/// Most bytes of replies held unparsed: a reply not complete within them is refused.
const MAX_REPLY: usize = 4 * MAX_BULK;

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

    /// A deadline no call in these tests reaches unless it is meant to.
    fn later() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    /// `answer`, or a failure if it does not come within 5 s (a lost wake-up fails the test
    /// instead of hanging it).
    async fn told(answer: oneshot::Receiver<Answer>) -> Answer {
        tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .expect("an answer within 5 s")
            .expect("the driver answers before it ends")
    }

    /// A real `redis-server` on a free loopback port, stopped when dropped.
    struct Server {
        port: u16,
        child: std::process::Child,
    }

    impl Server {
        async fn start() -> Server {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server on PATH");
            // Owned at once, so that a failed start is stopped and waited for too.
            let server = Server { port, child };
            for _ in 0..200 {
                if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    return server;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("redis-server did not start on {}", server.port);
        }

        async fn wire(&self) -> Wire {
            let info = redis::IntoConnectionInfo::into_connection_info(format!(
                "redis://127.0.0.1:{}",
                self.port
            ))
            .unwrap();
            Wire::connect(&info, Duration::from_secs(1))
                .await
                .unwrap()
                .unwrap()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// A connection to the test's own server (not Redis) on `port`.
    async fn raw_wire(port: u16) -> Wire {
        let info =
            redis::IntoConnectionInfo::into_connection_info(format!("redis://127.0.0.1:{port}"))
                .unwrap();
        Wire::connect(&info, Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap()
    }

    /// Many callers at once, on several tasks, some while others are in flight (so both the
    /// caller's own write and the driver's batched one run): each gets its own reply.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_each_get_their_own_reply() {
        let server = Server::start().await;
        let wire = Arc::new(server.wire().await);
        let tasks: Vec<_> = (0..8u64)
            .map(|t| {
                let wire = Arc::clone(&wire);
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    for i in 0..250u64 {
                        let n = t * 1000 + i;
                        let digits = n.to_string();
                        let rx = wire
                            .call(
                                2,
                                [Arg::Bytes(b"ECHO"), Arg::Bytes(digits.as_bytes())].into_iter(),
                                later(),
                            )
                            .unwrap();
                        pending.push((n, rx));
                        if i % 7 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                    for (n, rx) in pending {
                        assert_eq!(
                            rx.await.unwrap(),
                            Ok(Reply::Text(n.to_string().into_bytes()))
                        );
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let rx = wire
            .call(
                2,
                [Arg::Bytes(b"NOSUCHCOMMAND"), Arg::Int(1)].into_iter(),
                later(),
            )
            .unwrap();
        assert!(matches!(rx.await.unwrap(), Err(WireError::Server(m)) if m.starts_with("ERR")));
    }

    /// The server going away fails the call in flight and every call after it, at once.
    #[tokio::test]
    async fn a_lost_server_fails_the_calls_in_flight_and_after() {
        let mut server = Server::start().await;
        let wire = server.wire().await;
        let rx = wire
            .call(
                3,
                [Arg::Bytes(b"BLPOP"), Arg::Bytes(b"k"), Arg::Int(0)].into_iter(),
                later(),
            )
            .unwrap();
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        assert!(matches!(rx.await.unwrap(), Err(WireError::Lost(_))));
        assert!(matches!(
            wire.call(1, [Arg::Bytes(b"PING")].into_iter(), later()),
            Err(WireError::Lost(_))
        ));
    }

    /// A server that answers with an array that never ends is cut off once its reply passes
    /// MAX_REPLY, not buffered for ever: the call fails as malformed.
    #[tokio::test]
    async fn a_reply_that_never_ends_is_refused_at_its_bound() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = b"*1000000000\r\n".to_vec();
            head.extend(b":1\r\n".repeat(1 << 16));
            s.write_all(&head).await.unwrap();
            let chunk = b":1\r\n".repeat(1 << 16);
            // Until the client hangs up (then the write fails).
            while s.write_all(&chunk).await.is_ok() {}
        });
        let wire = raw_wire(port).await;
        let rx = wire
            .call(1, [Arg::Bytes(b"PING")].into_iter(), later())
            .unwrap();
        assert_eq!(rx.await.unwrap(), Err(WireError::Malformed));
        drop(wire);
        server.await.unwrap();
    }

    /// A call past its deadline is told so while its reply is still owed, a call queued after
    /// it with an earlier deadline is told at its own (not the one ahead's), and once the
    /// late replies come (and are dropped) the next call gets its own reply: the connection
    /// stays in step.
    #[tokio::test]
    async fn calls_past_their_deadline_are_told_and_the_connection_stays_in_step() {
        let server = Server::start().await;
        let wire = server.wire().await;
        let blpop = |deadline| {
            wire.call(
                3,
                [Arg::Bytes(b"BLPOP"), Arg::Bytes(b"k"), Arg::Int(0)].into_iter(),
                deadline,
            )
            .unwrap()
        };
        // Blocks until something is pushed to `k`; the PING behind it waits as long.
        let mut long = blpop(later());
        let short = wire
            .call(
                1,
                [Arg::Bytes(b"PING")].into_iter(),
                Instant::now() + Duration::from_millis(50),
            )
            .unwrap();
        assert_eq!(told(short).await, Err(WireError::Timeout));
        assert!(
            matches!(long.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
            "the call ahead, with the later deadline, still waits"
        );
        let expired = blpop(Instant::now() + Duration::from_millis(50));
        assert_eq!(told(expired).await, Err(WireError::Timeout));
        // Another client pushes twice: both BLPOPs return, the PING's reply comes between.
        let other = server.wire().await;
        let pushed = other
            .call(
                4,
                [
                    Arg::Bytes(b"RPUSH"),
                    Arg::Bytes(b"k"),
                    Arg::Bytes(b"a"),
                    Arg::Bytes(b"b"),
                ]
                .into_iter(),
                later(),
            )
            .unwrap();
        assert_eq!(told(pushed).await, Ok(Reply::Int(2)));
        assert_eq!(told(long).await, Ok(Reply::Array));
        let echo = wire
            .call(
                2,
                [Arg::Bytes(b"ECHO"), Arg::Bytes(b"mine")].into_iter(),
                later(),
            )
            .unwrap();
        assert_eq!(told(echo).await, Ok(Reply::Text(b"mine".to_vec())));
    }

    /// On a connection whose driver is parked (nothing in flight), a lone call the server
    /// holds is told at its deadline: the caller writes it itself and wakes the driver only
    /// to set the timer. And past a timeout the connection is not given up.
    #[tokio::test]
    async fn a_lone_call_on_an_idle_connection_is_told_at_its_deadline() {
        let server = Server::start().await;
        let wire = server.wire().await;
        // One round trip: on this one-thread runtime the driver has parked when it returns,
        // with its timer set for the PING's (far) deadline.
        let ping = wire
            .call(1, [Arg::Bytes(b"PING")].into_iter(), later())
            .unwrap();
        assert_eq!(told(ping).await, Ok(Reply::Text(b"PONG".to_vec())));
        let held = wire
            .call(
                3,
                [Arg::Bytes(b"BLPOP"), Arg::Bytes(b"q"), Arg::Int(0)].into_iter(),
                Instant::now() + Duration::from_millis(50),
            )
            .unwrap();
        assert_eq!(told(held).await, Err(WireError::Timeout));
        assert!(wire
            .call(1, [Arg::Bytes(b"PING")].into_iter(), later())
            .is_ok());
    }

    /// A `BLPOP k 0`, which the server holds until `k` gets an element: the connection is busy.
    fn blocked(wire: &Wire) -> oneshot::Receiver<Answer> {
        wire.call(
            3,
            [Arg::Bytes(b"BLPOP"), Arg::Bytes(b"k"), Arg::Int(0)].into_iter(),
            later(),
        )
        .unwrap()
    }

    /// `EVAL "return tonumber(ARGV[1])" 0 <count>`: the count of callers sharing the call.
    fn counted<'a>() -> impl Iterator<Item = Arg<'a>> {
        [
            Arg::Bytes(b"EVAL"),
            Arg::Bytes(b"return tonumber(ARGV[1])"),
            Arg::Int(0),
        ]
        .into_iter()
    }

    /// Calls of one command (and tag) queued while a call is in flight share one call: each
    /// caller gets its place and the one reply, which saw the count of them. A call of other
    /// bytes or another tag is not joined. Nothing queued is written until the calls in flight
    /// are answered; then all of it is, and like calls after that start a call of their own.
    #[tokio::test]
    async fn calls_of_one_command_queued_together_share_one_call() {
        let server = Server::start().await;
        let wire = server.wire().await;
        // Busy: a call in flight, which the server holds until `k` gets an element.
        let held = blocked(&wire);
        // Held behind the BLPOP, however long the test takes; one deadline for all, so that
        // `JOIN_SLACK` does not part them on a slow machine.
        let deadline = later();
        let mut joined = Vec::new();
        for _ in 0..3 {
            joined.push(wire.join(7, 3, counted(), deadline).unwrap());
        }
        let other_tag = wire.join(8, 3, counted(), deadline).unwrap();
        let other_bytes = wire
            .join(
                7,
                3,
                [
                    Arg::Bytes(b"EVAL"),
                    Arg::Bytes(b"return tonumber(ARGV[1]) + 100"),
                    Arg::Int(0),
                ]
                .into_iter(),
                deadline,
            )
            .unwrap();
        let fourth = wire.join(7, 3, counted(), deadline).unwrap();
        // Behind them, a call the server holds until `k2` gets an element.
        let held2 = wire
            .call(
                3,
                [Arg::Bytes(b"BLPOP"), Arg::Bytes(b"k2"), Arg::Int(0)].into_iter(),
                later(),
            )
            .unwrap();
        assert_eq!(
            joined.iter().map(|(_, place)| *place).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!((other_tag.1, other_bytes.1, fourth.1), (1, 1, 4));
        // Turns of the runtime go by (the driver's included): still nothing written while the
        // BLPOP is in flight, and a like call still joins.
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
        assert!(
            !wire.shared.lock().out.is_empty(),
            "held behind the call in flight"
        );
        let fifth = wire.join(7, 3, counted(), deadline).unwrap();
        assert_eq!(fifth.1, 5);
        let server = &server;
        let push = |key: &'static [u8]| async move {
            let other = server.wire().await;
            let pushed = other
                .call(
                    3,
                    [Arg::Bytes(b"RPUSH"), Arg::Bytes(key), Arg::Bytes(b"a")].into_iter(),
                    later(),
                )
                .unwrap();
            assert_eq!(told(pushed).await, Ok(Reply::Int(1)));
        };
        push(b"k").await;
        assert_eq!(told(held).await, Ok(Reply::Array));
        // Its reply read, the driver writes what waited (the second BLPOP then holds the
        // connection).
        for (rx, _) in joined.into_iter().chain([fourth, fifth]) {
            assert_eq!(told(rx).await, Ok(Reply::Int(5)));
        }
        assert_eq!(told(other_tag.0).await, Ok(Reply::Int(1)));
        assert_eq!(told(other_bytes.0).await, Ok(Reply::Int(101)));
        assert!(wire.shared.lock().out.is_empty());
        // Written: the next like calls start a call of their own.
        let deadline = later();
        let after: Vec<_> = (0..2)
            .map(|_| wire.join(7, 3, counted(), deadline).unwrap())
            .collect();
        assert_eq!(after.iter().map(|(_, p)| *p).collect::<Vec<_>>(), [1, 2]);
        push(b"k2").await;
        assert_eq!(told(held2).await, Ok(Reply::Array));
        for (rx, _) in after {
            assert_eq!(told(rx).await, Ok(Reply::Int(2)));
        }
        // Idle again: a call is written at once, and the next like it has nothing to join.
        let (first, place) = wire.join(7, 3, counted(), later()).unwrap();
        let (second, second_place) = wire.join(7, 3, counted(), later()).unwrap();
        assert_eq!((place, second_place), (1, 1));
        assert_eq!(told(first).await, Ok(Reply::Int(1)));
        assert_eq!(told(second).await, Ok(Reply::Int(1)));
    }

    /// A batch larger than the socket takes at once is written in parts, and the server
    /// answers its first calls while the rest is still being written: each caller gets its
    /// own reply (none is taken for a reply to a call not yet written).
    #[tokio::test]
    async fn a_batch_written_in_parts_is_answered_call_by_call() {
        let server = Server::start().await;
        let wire = server.wire().await;
        let held = blocked(&wire);
        // 256 calls of 64 KiB each, held behind the BLPOP: 16 MiB to write when it returns.
        let filler = "x".repeat(64 * 1024);
        let echoes: Vec<_> = (0..256)
            .map(|i| {
                let text = format!("{i:03}{filler}").into_bytes();
                let rx = wire
                    .call(
                        2,
                        [Arg::Bytes(b"ECHO"), Arg::Bytes(&text)].into_iter(),
                        later(),
                    )
                    .unwrap();
                (text, rx)
            })
            .collect();
        let other = server.wire().await;
        let pushed = other
            .call(
                3,
                [Arg::Bytes(b"RPUSH"), Arg::Bytes(b"k"), Arg::Bytes(b"a")].into_iter(),
                later(),
            )
            .unwrap();
        assert_eq!(told(pushed).await, Ok(Reply::Int(1)));
        assert_eq!(told(held).await, Ok(Reply::Array));
        for (text, rx) in echoes {
            assert_eq!(told(rx).await, Ok(Reply::Text(text)));
        }
    }

    /// A server that sends a reply more than it was asked for, while a call waits to be
    /// written: the call in flight gets its reply, and the extra one is not taken for the
    /// waiting call's (it was never sent): the connection is dropped as out of step.
    #[tokio::test]
    async fn a_reply_to_a_call_not_yet_written_is_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let mut got = Vec::new();
            while !got.ends_with(b"PING\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "the PING, before the connection closes");
                got.extend_from_slice(&buf[..n]);
            }
            // One write of 8 bytes: on loopback the client reads both replies at once (read
            // apart, the ECHO would be written in between and take the second).
            s.write_all(b":1\r\n:2\r\n").await.unwrap();
            // Held open until the client has given up on it.
            let _ = s.read(&mut buf).await;
        });
        let wire = raw_wire(port).await;
        let first = wire
            .call(1, [Arg::Bytes(b"PING")].into_iter(), later())
            .unwrap();
        let second = wire
            .call(1, [Arg::Bytes(b"ECHO")].into_iter(), later())
            .unwrap();
        assert_eq!(told(first).await, Ok(Reply::Int(1)));
        assert_eq!(told(second).await, Err(WireError::Malformed));
        drop(wire);
        server.await.unwrap();
    }

    /// `join_open` on a state built by hand: which open call a caller may join, by its bytes,
    /// tag, room, deadline and whether its callers were told they are late, after replies
    /// have taken earlier waiters off the front.
    #[test]
    fn a_caller_joins_only_a_call_it_may_share() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let mut st = State {
            popped: 3,
            ..State::default()
        };
        // Calls numbered 3 (written: no longer open) and 4, 5, 6 (open).
        let open_call = |st: &mut State, args: &[&[u8]], deadline, count: &[u8]| {
            let (tx, rx) = oneshot::channel();
            let start = st.out.len();
            encode(
                &mut st.out,
                args.len() + 1,
                args.iter().map(|a| Arg::Bytes(a)),
            );
            let count_at = st.out.len();
            st.out.extend_from_slice(COUNT_HEAD);
            st.out.extend_from_slice(count);
            st.out.extend_from_slice(b"\r\n");
            let seq = st.popped + st.waiting.len() as u64;
            st.waiting.push_back(Waiter {
                txs: smallvec::smallvec![tx],
                deadline,
            });
            st.open.push(Open {
                tag: 1,
                seq,
                start,
                count_at,
            });
            rx
        };
        let _written = open_call(&mut st, &[b"A"], now, b"00001");
        st.open.clear();
        let _a = open_call(&mut st, &[b"A"], now + ms(100), b"00001");
        let _b = open_call(&mut st, &[b"B"], now + ms(100), b"99999");
        let _c = open_call(&mut st, &[b"C"], now + ms(100), b"00001");
        let try_join = |st: &mut State, arg: &[u8], tag, deadline| {
            let start = st.out.len();
            encode(&mut st.out, 2, [Arg::Bytes(arg)].into_iter());
            let (tx, _rx) = oneshot::channel();
            let r = join_open(st, tag, start, deadline, tx).map_err(|_| ());
            if r.is_err() {
                st.out.truncate(start);
            }
            r
        };
        let len = st.out.len();
        // Another tag, an earlier deadline, one past the slack: not joined, still open.
        assert_eq!(try_join(&mut st, b"A", 2, now + ms(100)), Err(()));
        assert_eq!(try_join(&mut st, b"A", 1, now + ms(99)), Err(()));
        assert_eq!(try_join(&mut st, b"A", 1, now + ms(102)), Err(()));
        assert_eq!(st.open.len(), 3);
        // Joined: second place, the count rewritten in place, nothing added to `out`.
        assert_eq!(try_join(&mut st, b"A", 1, now + ms(100)), Ok(2));
        assert_eq!(st.out.len(), len);
        assert_eq!(st.waiting[1].txs.len(), 2);
        assert!(String::from_utf8_lossy(&st.out).contains("$1\r\nA\r\n$5\r\n00002\r\n"));
        // Full: not joined, and no longer open.
        assert_eq!(try_join(&mut st, b"B", 1, now + ms(100)), Err(()));
        assert_eq!(st.open.len(), 2);
        // Its callers told they are late: not joined, no longer open.
        st.waiting[3].txs.clear();
        assert_eq!(try_join(&mut st, b"C", 1, now + ms(100)), Err(()));
        assert_eq!(st.open.len(), 1);
        // A reply takes call 3 off the front: call 4 is still found by its number.
        st.waiting.pop_front();
        st.popped += 1;
        assert_eq!(try_join(&mut st, b"A", 1, now + ms(101)), Ok(3));
        assert_eq!(st.waiting[0].txs.len(), 3);
    }

    /// Callers that joined a call are all told, together, when it passes its deadline (no
    /// later than each one's own); a caller whose deadline is well after the call's has a call
    /// of its own, told at its own deadline.
    #[tokio::test]
    async fn joined_callers_are_told_at_the_shared_deadline() {
        let server = Server::start().await;
        let wire = server.wire().await;
        let held = blocked(&wire);
        let soon = Instant::now() + Duration::from_millis(50);
        let (a, _) = wire.join(7, 3, counted(), soon).unwrap();
        let (b, place) = wire
            .join(7, 3, counted(), soon + Duration::from_micros(500))
            .unwrap();
        assert_eq!(place, 2);
        let (c, place) = wire.join(7, 3, counted(), later()).unwrap();
        assert_eq!(
            place, 1,
            "its deadline is past the slack: a call of its own"
        );
        assert_eq!(told(a).await, Err(WireError::Timeout));
        assert_eq!(told(b).await, Err(WireError::Timeout));
        let mut c = c;
        assert!(
            matches!(c.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
            "the later call still waits"
        );
        drop(held);
    }
}
