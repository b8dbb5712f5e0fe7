//! Limit keys: the parts of a request a limit counts by (`client_ip`, `route`, `method`,
//! `path`, `header:<name>`), hashed to 64 bits so a key costs 8 bytes and no allocation.
//! The hasher is keyed per process, so clients cannot aim collisions at each other; two
//! distinct keys share a bucket with probability ~n²/2⁶⁵ (1e-8 at a million keys).

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;

use floodgate_config::KeyPart;
use http::{HeaderMap, Method};

/// A request's headers as keys and routes read them: the first value of a name, as bytes.
/// Implemented for `http::HeaderMap` (pingora's parsed heads) and for a head's raw fields
/// (the HTTP/1.1 fast path, which builds no header map).
pub trait HeaderLookup: Sync {
    /// The first value of the header `name` (lowercase), if present.
    fn header(&self, name: &str) -> Option<&[u8]>;
}

impl HeaderLookup for HeaderMap {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(|v| v.as_bytes())
    }
}

/// What a key can be made of.
pub struct RequestParts<'a> {
    /// Client address (the TCP peer).
    pub client_ip: Option<IpAddr>,
    /// Matched route name.
    pub route: &'a str,
    /// Method.
    pub method: &'a Method,
    /// Path without query.
    pub path: &'a str,
    /// Headers.
    pub headers: &'a dyn HeaderLookup,
}

/// Hashes the key of `parts` as `shape` describes it. A missing header (or client address)
/// hashes differently from every present value, the empty one included: it is its own bucket.
pub fn key_hash<S: BuildHasher>(build: &S, shape: &[KeyPart], parts: &RequestParts<'_>) -> u64 {
    let mut h = build.build_hasher();
    for part in shape {
        match part {
            KeyPart::ClientIp => parts.client_ip.hash(&mut h),
            KeyPart::Route => parts.route.hash(&mut h),
            KeyPart::Method => parts.method.as_str().hash(&mut h),
            KeyPart::Path => parts.path.hash(&mut h),
            KeyPart::Header(name) => parts.headers.header(name.as_str()).hash(&mut h),
        }
    }
    h.finish()
}

/// A key hash that every sidecar computes alike, whatever its version or process: FNV-1a
/// over the same parts, for keys shared through Redis. (Not keyed, so a client could aim
/// collisions at another's bucket; global keys include the limit name and are 64 bits.)
pub fn stable_key_hash(shape: &[KeyPart], parts: &RequestParts<'_>) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(PRIME);
        }
    };
    for part in shape {
        // A tag byte before each part keeps `a`+`bc` apart from `ab`+`c`, and absent from empty.
        match part {
            KeyPart::ClientIp => match parts.client_ip {
                Some(IpAddr::V4(v4)) => {
                    eat(&[1]);
                    eat(&v4.octets());
                }
                Some(IpAddr::V6(v6)) => {
                    eat(&[2]);
                    eat(&v6.octets());
                }
                None => eat(&[0]),
            },
            KeyPart::Route => {
                eat(&[3]);
                eat(&(parts.route.len() as u64).to_le_bytes());
                eat(parts.route.as_bytes());
            }
            KeyPart::Method => {
                eat(&[4]);
                eat(&(parts.method.as_str().len() as u64).to_le_bytes());
                eat(parts.method.as_str().as_bytes());
            }
            KeyPart::Path => {
                eat(&[5]);
                eat(&(parts.path.len() as u64).to_le_bytes());
                eat(parts.path.as_bytes());
            }
            KeyPart::Header(name) => match parts.headers.header(name.as_str()) {
                Some(v) => {
                    eat(&[6]);
                    eat(&(v.len() as u64).to_le_bytes());
                    eat(v);
                }
                None => eat(&[7]),
            },
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::RandomState;

    fn parts<'a>(ip: &str, path: &'a str, headers: &'a HeaderMap) -> RequestParts<'a> {
        RequestParts {
            client_ip: ip.parse().ok(),
            route: "api",
            method: &Method::GET,
            path,
            headers,
        }
    }

    #[test]
    fn keys_follow_their_shape() {
        let s = RandomState::new();
        let h = HeaderMap::new();
        let by_ip = [KeyPart::ClientIp];
        assert_eq!(
            key_hash(&s, &by_ip, &parts("1.1.1.1", "/a", &h)),
            key_hash(&s, &by_ip, &parts("1.1.1.1", "/b", &h))
        );
        assert_ne!(
            key_hash(&s, &by_ip, &parts("1.1.1.1", "/a", &h)),
            key_hash(&s, &by_ip, &parts("2.2.2.2", "/a", &h))
        );
        let by_path = [KeyPart::Path];
        assert_ne!(
            key_hash(&s, &by_path, &parts("1.1.1.1", "/a", &h)),
            key_hash(&s, &by_path, &parts("1.1.1.1", "/b", &h))
        );
        // No parts: one bucket for everything.
        assert_eq!(
            key_hash(&s, &[], &parts("1.1.1.1", "/a", &h)),
            key_hash(&s, &[], &parts("2.2.2.2", "/b", &h))
        );
    }

    #[test]
    fn stable_hash_is_fixed_and_follows_the_shape() {
        let h = HeaderMap::new();
        let p = parts("10.1.2.3", "/a", &h);
        // Pinned: every sidecar, whatever its build, must compute the same Redis key.
        assert_eq!(stable_key_hash(&[], &p), 0xcbf2_9ce4_8422_2325);
        let ip = stable_key_hash(&[KeyPart::ClientIp], &p);
        assert_eq!(
            ip,
            stable_key_hash(&[KeyPart::ClientIp], &parts("10.1.2.3", "/b", &h))
        );
        assert_ne!(
            ip,
            stable_key_hash(&[KeyPart::ClientIp], &parts("10.1.2.4", "/a", &h))
        );
        let missing = stable_key_hash(&[KeyPart::Header("x-k".into())], &p);
        let mut e = HeaderMap::new();
        e.insert("x-k", "".parse().unwrap());
        assert_ne!(
            missing,
            stable_key_hash(
                &[KeyPart::Header("x-k".into())],
                &parts("10.1.2.3", "/a", &e)
            )
        );
    }

    #[test]
    fn missing_header_is_its_own_bucket() {
        let s = RandomState::new();
        let shape = [KeyPart::Header("x-api-key".into())];
        let none = HeaderMap::new();
        let mut empty = HeaderMap::new();
        empty.insert("x-api-key", "".parse().unwrap());
        let mut k1 = HeaderMap::new();
        k1.insert("x-api-key", "k1".parse().unwrap());
        let (a, b, c) = (
            key_hash(&s, &shape, &parts("1.1.1.1", "/", &none)),
            key_hash(&s, &shape, &parts("1.1.1.1", "/", &empty)),
            key_hash(&s, &shape, &parts("1.1.1.1", "/", &k1)),
        );
        assert!(a != b && b != c && a != c);
    }
}
