//! Limit keys: the parts of a request a limit counts by (`client_ip`, `route`, `method`,
//! `path`, `header:<name>`), hashed to 64 bits so a key costs 8 bytes and no allocation.
//! The hasher is keyed per process, so clients cannot aim collisions at each other; two
//! distinct keys share a bucket with probability ~n²/2⁶⁵ (1e-8 at a million keys).

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;

use floodgate_config::KeyPart;
use http::{HeaderMap, Method};

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
    pub headers: &'a HeaderMap,
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
            KeyPart::Header(name) => parts
                .headers
                .get(name.as_str())
                .map(|v| v.as_bytes())
                .hash(&mut h),
        }
    }
    h.finish()
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
