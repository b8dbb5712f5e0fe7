//! `X-Forwarded-For` / `-Proto` values, built without `format!`: this runs on every request,
//! and formatting an IP through `core::fmt` cost more than the rest of the header work.

use std::net::IpAddr;

use bytes::{BufMut, BytesMut};
use http::{HeaderName, HeaderValue};

/// `x-forwarded-for`, pre-parsed.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`, pre-parsed.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The only scheme the sidecar accepts (no TLS on the data port).
pub const PROTO_HTTP: HeaderValue = HeaderValue::from_static("http");

/// Appends `ip` to an existing `X-Forwarded-For` value (`prev, ip`), or starts one.
pub fn append_for(prev: Option<&HeaderValue>, ip: IpAddr) -> Option<HeaderValue> {
    let mut buf = BytesMut::with_capacity(prev.map_or(0, |p| p.len() + 2) + 39);
    if let Some(p) = prev {
        buf.put_slice(p.as_bytes());
        buf.put_slice(b", ");
    }
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.put_u8(b'.');
                }
                put_u8_decimal(&mut buf, octet);
            }
        }
        // Rare on a pod's loopback/cluster network; the general formatter is fine here.
        IpAddr::V6(v6) => buf.put_slice(v6.to_string().as_bytes()),
    }
    HeaderValue::from_maybe_shared(buf.freeze()).ok()
}

fn put_u8_decimal(buf: &mut BytesMut, n: u8) {
    if n >= 100 {
        buf.put_u8(b'0' + n / 100);
    }
    if n >= 10 {
        buf.put_u8(b'0' + (n / 10) % 10);
    }
    buf.put_u8(b'0' + n % 10);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_display() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "127.0.0.1",
            "255.255.255.255",
            "192.168.100.9",
            "::1",
            "2001:db8::7",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(append_for(None, parsed).unwrap(), ip);
        }
    }

    #[test]
    fn appends_to_an_existing_chain() {
        let prev = HeaderValue::from_static("203.0.113.7, 10.0.0.1");
        let v = append_for(Some(&prev), "127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(v, "203.0.113.7, 10.0.0.1, 127.0.0.1");
    }
}
