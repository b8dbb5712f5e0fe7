//! Where a chunked body ends (RFC 9112 §7.1), found as its bytes pass through: the fast path
//! forwards a chunked response as the upstream sent it and only needs to know when the last
//! chunk and the trailer section are over, to free the upstream's slot and reuse its
//! connection. State survives between reads, so a size line or a trailer split across two
//! reads is fine. Chunk data is skipped by length, not scanned.

/// Longest size line (size and extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a size line: the size so far, its digits, whether white space followed them (`bws`:
    /// only `;` may come next), whether an extension began.
    Size {
        size: u64,
        digits: usize,
        bws: bool,
        ext: bool,
    },
    /// The LF ending a size line.
    SizeLf {
        size: u64,
    },
    /// Chunk data still to pass.
    Data(u64),
    /// The CRLF after a chunk's data (`cr`: the CR was seen).
    DataEnd {
        cr: bool,
    },
    /// In the trailer section: bytes on the current line.
    Trailer {
        line: usize,
    },
    /// The LF ending a trailer line (`empty`: the line was empty: the body is over).
    TrailerLf {
        empty: bool,
    },
    Done,
}

const SIZE_LINE: State = State::Size {
    size: 0,
    digits: 0,
    bws: false,
    ext: false,
};

/// A chunked body seen so far.
#[derive(Debug)]
pub struct Chunked {
    state: State,
    line: usize,
}

/// The body is not valid chunked coding.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid;

impl Default for Chunked {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunked {
    pub fn new() -> Self {
        Self {
            state: SIZE_LINE,
            line: 0,
        }
    }

    /// True once the last chunk and the trailers were seen.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes the next bytes of the body; returns how many of them belong to it (all of them
    /// unless the body ended inside `buf`). Lines must end in CRLF: the bytes are forwarded
    /// as they are, so a client must not be able to read them differently.
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, Invalid> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            self.state = match self.state {
                State::Done => return Ok(i),
                State::Data(n) => {
                    let take = n.min((buf.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == n {
                        State::DataEnd { cr: false }
                    } else {
                        State::Data(n - take)
                    };
                    continue;
                }
                State::Size {
                    size,
                    digits,
                    bws,
                    ext,
                } => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(Invalid);
                    }
                    let next = |bws, ext| State::Size {
                        size,
                        digits,
                        bws,
                        ext,
                    };
                    match b {
                        b'\r' if digits > 0 => State::SizeLf { size },
                        b'\r' | b'\n' => return Err(Invalid),
                        _ if ext => next(bws, ext),
                        b';' if digits > 0 => next(bws, true),
                        b' ' | b'\t' if digits > 0 => next(true, ext),
                        _ if bws => return Err(Invalid),
                        _ => {
                            let d = (b as char).to_digit(16).ok_or(Invalid)?;
                            if digits >= 15 {
                                return Err(Invalid);
                            }
                            State::Size {
                                size: size * 16 + u64::from(d),
                                digits: digits + 1,
                                bws,
                                ext,
                            }
                        }
                    }
                }
                State::SizeLf { size } => {
                    if b != b'\n' {
                        return Err(Invalid);
                    }
                    self.line = 0;
                    if size == 0 {
                        State::Trailer { line: 0 }
                    } else {
                        State::Data(size)
                    }
                }
                State::DataEnd { cr } => match (cr, b) {
                    (false, b'\r') => State::DataEnd { cr: true },
                    (true, b'\n') => {
                        self.line = 0;
                        SIZE_LINE
                    }
                    _ => return Err(Invalid),
                },
                State::Trailer { line } => match b {
                    b'\r' => State::TrailerLf { empty: line == 0 },
                    b'\n' => return Err(Invalid),
                    _ if line >= MAX_LINE => return Err(Invalid),
                    _ => State::Trailer { line: line + 1 },
                },
                State::TrailerLf { empty } => {
                    if b != b'\n' {
                        return Err(Invalid);
                    }
                    if empty {
                        State::Done
                    } else {
                        State::Trailer { line: 0 }
                    }
                }
            };
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` split at every position; returns the length found each time.
    fn ends_at(body: &[u8]) -> Result<usize, Invalid> {
        let mut whole = Chunked::new();
        let n = whole.feed(body)?;
        assert!(whole.done(), "not done: {}", String::from_utf8_lossy(body));
        for cut in 0..body.len() {
            let mut c = Chunked::new();
            let a = c.feed(&body[..cut])?;
            assert_eq!(a, cut);
            let b = c.feed(&body[cut..])?;
            assert_eq!(a + b, n, "cut at {cut}");
            assert!(c.done());
        }
        Ok(n)
    }

    #[test]
    fn the_end_is_found_wherever_the_reads_split() {
        let body = b"5\r\nhello\r\nA ;ext=1\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(ends_at(body), Ok(body.len()));
        let trailers = b"3\r\nabc\r\n0\r\nGrpc-Status: 0\r\nX: y\r\n\r\n";
        assert_eq!(ends_at(trailers), Ok(trailers.len()));
        let mut next = body.to_vec();
        next.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let mut c = Chunked::new();
        assert_eq!(c.feed(&next), Ok(body.len()));
        assert!(c.done());
    }

    #[test]
    fn bad_coding_is_refused() {
        // Not hex; data longer than its size; no size; CR without LF; too long a size; bare
        // LF; white space inside the size; a bare LF ending a trailer.
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"5\rX",
            b"ffffffffffffffff1\r\n",
            b"5\nhello\r\n",
            b"5 6\r\n",
            b"0\r\nX: y\n\r\n",
        ] {
            assert_eq!(Chunked::new().feed(bad), Err(Invalid), "{bad:?}");
        }
        let mut c = Chunked::new();
        assert_eq!(c.feed(b"5\r\nhel"), Ok(6));
        assert!(!c.done());
    }
}
