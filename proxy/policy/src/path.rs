//! The one canonical request path that routing, feature gates, limit keys, the response cache,
//! the access log and the app all see, so a path respelled with `..`, `//` or `%61` cannot
//! walk past a route's policy while the app (normalising as nginx does) serves it.
//!
//! Canonical: RFC 3986 §5.2.4 dot-segment removal (never above `/`), empty segments merged,
//! percent-encoded unreserved characters decoded (§6.2.2.2), other escapes upper-cased
//! (§6.2.2.1), bytes outside printable ASCII percent-encoded. Refused as ambiguous: an encoded
//! `/` or `\` (`%2F`, `%5C`: apps disagree on whether they separate segments), a raw `\`, NUL
//! and control characters, raw or encoded, a raw space, a broken escape, and `.;`/`..;`
//! segments (Tomcat reads `..;` as `..`).

use std::borrow::Cow;

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// NUL, a control character, DEL or a space, raw or percent-encoded.
    Control,
    /// `%2F` or `%5C`, or a raw `\`.
    EncodedSeparator,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// A `.` or `..` segment with `;` parameters.
    DotParameters,
    /// `strict` mode: the path is not already canonical.
    NotCanonical,
}

impl PathError {
    /// What the client is told (the problem body's `detail`).
    pub fn detail(self) -> &'static str {
        match self {
            PathError::Control => "the path holds a control character, NUL or a space",
            PathError::EncodedSeparator => {
                "the path holds an encoded slash or backslash (%2F, %5C) or a raw backslash"
            }
            PathError::BadEscape => "the path holds a `%` not followed by two hex digits",
            PathError::DotParameters => "the path holds a `.;` or `..;` segment",
            PathError::NotCanonical => {
                "the path is not canonical (server.path_normalization: strict): no `.` or `..` segments, no `//`, no encoded unreserved characters"
            }
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// True when `path` needs no work: no escape, no byte outside `!`..`~`, no `\`, no `//` and
/// no segment starting with `.`. Most paths are like this, and then nothing is allocated.
fn plainly_canonical(path: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in path {
        if b == b'%' || b == b'\\' || !(0x21..=0x7e).contains(&b) {
            return false;
        }
        if prev == b'/' && (b == b'/' || b == b'.') {
            return false;
        }
        prev = b;
    }
    true
}

/// The canonical form of `path` (an origin-form path without its query, starting with `/`),
/// borrowed when it is already canonical.
pub fn canonical(path: &[u8]) -> Result<Cow<'_, str>, PathError> {
    if plainly_canonical(path) && path.first() == Some(&b'/') {
        // Only printable ASCII, checked above.
        if let Ok(s) = std::str::from_utf8(path) {
            return Ok(Cow::Borrowed(s));
        }
    }
    // Decode what may be decoded, segment by segment.
    let mut segments: Vec<Vec<u8>> = Vec::new();
    let mut seg: Vec<u8> = Vec::new();
    let mut i = 0;
    let mut dotted_end = false;
    let mut push = |seg: &mut Vec<u8>, last: bool, segments: &mut Vec<Vec<u8>>| {
        let s = std::mem::take(seg);
        let dot = s == b"." || s == b"..";
        if s.starts_with(b".;") || s.starts_with(b"..;") {
            return Err(PathError::DotParameters);
        }
        if s == b".." {
            segments.pop();
        } else if !s.is_empty() && !dot {
            segments.push(s);
        }
        if last {
            dotted_end = dot;
        }
        Ok(())
    };
    while i < path.len() {
        let b = path[i];
        match b {
            b'/' => push(&mut seg, false, &mut segments)?,
            b'%' => {
                let (Some(h), Some(l)) = (
                    path.get(i + 1).copied().and_then(hex),
                    path.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let d = h * 16 + l;
                if d == b'/' || d == b'\\' {
                    return Err(PathError::EncodedSeparator);
                }
                if is_control(d) {
                    return Err(PathError::Control);
                }
                if is_unreserved(d) {
                    seg.push(d);
                } else {
                    seg.extend_from_slice(format!("%{d:02X}").as_bytes());
                }
                i += 2;
            }
            b'\\' => return Err(PathError::EncodedSeparator),
            b if is_control(b) || b == b' ' => return Err(PathError::Control),
            b if b >= 0x80 => seg.extend_from_slice(format!("%{b:02X}").as_bytes()),
            b => seg.push(b),
        }
        i += 1;
    }
    let trailing = path.last() == Some(&b'/');
    push(&mut seg, true, &mut segments)?;
    let mut out = String::with_capacity(path.len() + 1);
    for s in &segments {
        out.push('/');
        // Only ASCII is pushed into segments: escapes are written as `%XX`.
        out.push_str(&String::from_utf8_lossy(s));
    }
    if out.is_empty() || (trailing || dotted_end) && !out.ends_with('/') {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// [`canonical`] for `strict` mode: the path itself when canonical, else an error.
pub fn strict(path: &[u8]) -> Result<&str, PathError> {
    match canonical(path)? {
        Cow::Borrowed(s) => Ok(s),
        Cow::Owned(s) if s.as_bytes() == path => {
            std::str::from_utf8(path).map_err(|_| PathError::NotCanonical)
        }
        Cow::Owned(_) => Err(PathError::NotCanonical),
    }
}

#[cfg(test)]
mod tests;
