//! The response cache behind `cached` fallbacks and aggressive caching: the last good answer
//! to a GET or HEAD, keyed on method, path and query and on the request headers its `Vary`
//! names, capped in bytes with the least recently used evicted first.
//!
//! It is a shared cache, so it stores only what a shared cache may (RFC 9111 §3): 2xx answers
//! (not 206) to requests without `Authorization`, without `Set-Cookie`, `Cache-Control:
//! no-store` or `private`, and not `Vary: *`. Entries carry the time they were stored; the
//! caller says how old an answer it accepts.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use lru::LruCache;

/// Headers of one hop, never stored or replayed.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// Fixed bookkeeping charged per entry on top of its body and headers.
const ENTRY_OVERHEAD: u64 = 256;

/// A stored answer.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Status.
    pub status: StatusCode,
    /// End-to-end headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body, byte for byte.
    pub body: Bytes,
    /// When it was stored (clock time).
    pub stored_at: Duration,
}

#[derive(Debug)]
struct Variant {
    /// The request's values of the headers `Vary` names.
    vary: Vec<(HeaderName, Option<HeaderValue>)>,
    answer: Stored,
    bytes: u64,
}

#[derive(Debug)]
struct Inner {
    lru: LruCache<(Method, String), Vec<Variant>>,
    bytes: u64,
    evictions: u64,
}

/// Counts for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Bytes charged.
    pub bytes: u64,
    /// Keys held.
    pub entries: u64,
    /// Entries evicted for room so far.
    pub evictions: u64,
}

/// The cache.
#[derive(Debug)]
pub struct ResponseCache {
    inner: Mutex<Inner>,
    max_bytes: u64,
    max_entry_bytes: u64,
}

/// True when a request may be answered from, or its answer stored in, the cache.
pub fn request_cacheable(method: &Method, headers: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && !headers.contains_key(http::header::AUTHORIZATION)
}

fn cache_control_forbids(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| {
            d.trim()
                .split('=')
                .next()
                .unwrap_or("")
                .to_ascii_lowercase()
        })
        .any(|d| d == "no-store" || d == "private")
}

fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for v in headers.get_all(http::header::VARY) {
        for name in v.to_str().ok()?.split(',') {
            let name = name.trim();
            if name == "*" {
                return None;
            }
            if !name.is_empty() {
                names.push(HeaderName::from_bytes(name.as_bytes()).ok()?);
            }
        }
    }
    Some(names)
}

impl ResponseCache {
    /// An empty cache of at most `max_bytes`, entries of at most `max_entry_bytes`.
    pub fn new(max_bytes: u64, max_entry_bytes: u64) -> Self {
        Self {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
                evictions: 0,
            }),
            max_bytes,
            max_entry_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The limits it was made with.
    pub fn limits(&self) -> (u64, u64) {
        (self.max_bytes, self.max_entry_bytes)
    }

    /// True when an answer with these headers may be stored (status and request checked
    /// separately); lets the caller skip collecting a body that would be refused.
    pub fn storable(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        status.is_success()
            && status != StatusCode::PARTIAL_CONTENT
            && !headers.contains_key(http::header::SET_COOKIE)
            && !cache_control_forbids(headers)
            && vary_names(headers).is_some()
            && headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_none_or(|n| n <= self.max_entry_bytes)
    }

    /// Largest body worth collecting.
    pub fn max_entry_bytes(&self) -> u64 {
        self.max_entry_bytes
    }

    /// Stores the answer to `method uri` (replacing the one with the same `Vary` values).
    /// Returns false when it may not or does not fit.
    #[allow(clippy::too_many_arguments)]
    pub fn store(
        &self,
        method: &Method,
        uri: &str,
        request: &HeaderMap,
        status: StatusCode,
        response: &HeaderMap,
        body: Bytes,
        now: Duration,
    ) -> bool {
        if !request_cacheable(method, request) || !self.storable(status, response) {
            return false;
        }
        let Some(names) = vary_names(response) else {
            return false;
        };
        let headers: Vec<(HeaderName, HeaderValue)> = response
            .iter()
            .filter(|(n, _)| !HOP_BY_HOP.contains(&n.as_str()))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        let bytes = body.len() as u64
            + headers
                .iter()
                .map(|(n, v)| (n.as_str().len() + v.len()) as u64)
                .sum::<u64>()
            + uri.len() as u64
            + ENTRY_OVERHEAD;
        if bytes > self.max_entry_bytes {
            return false;
        }
        let vary = names
            .into_iter()
            .map(|n| {
                let v = request.get(&n).cloned();
                (n, v)
            })
            .collect::<Vec<_>>();
        let variant = Variant {
            vary,
            answer: Stored {
                status,
                headers,
                body,
                stored_at: now,
            },
            bytes,
        };
        let mut inner = self.lock();
        let key = (method.clone(), uri.to_string());
        let mut variants = inner.lru.pop(&key).unwrap_or_default();
        if let Some(i) = variants.iter().position(|v| v.vary == variant.vary) {
            inner.bytes -= variants.swap_remove(i).bytes;
        }
        inner.bytes += bytes;
        variants.push(variant);
        inner.lru.push(key.clone(), variants);
        while inner.bytes > self.max_bytes {
            let Some((k, mut old)) = inner.lru.pop_lru() else {
                break;
            };
            if k == key {
                // The newest entry is all that is left over the cap: keep only its last variant.
                let keep = old.pop();
                inner.bytes -= old.iter().map(|v| v.bytes).sum::<u64>();
                inner.evictions += old.len() as u64;
                if let Some(v) = keep {
                    inner.lru.push(k, vec![v]);
                }
                break;
            }
            inner.bytes -= old.iter().map(|v| v.bytes).sum::<u64>();
            inner.evictions += old.len() as u64;
        }
        true
    }

    /// The stored answer to `method uri` for a request with these headers, if stored no
    /// longer than `max_age` before `now`.
    pub fn get(
        &self,
        method: &Method,
        uri: &str,
        request: &HeaderMap,
        max_age: Duration,
        now: Duration,
    ) -> Option<Stored> {
        if !request_cacheable(method, request) {
            return None;
        }
        let mut inner = self.lock();
        // Borrowed key lookup would need an owned Method anyway; methods are cheap to clone.
        let variants = inner.lru.get(&(method.clone(), uri.to_string()))?;
        variants
            .iter()
            .find(|v| v.vary.iter().all(|(n, val)| request.get(n) == val.as_ref()))
            .filter(|v| now.saturating_sub(v.answer.stored_at) <= max_age)
            .map(|v| v.answer.clone())
    }

    /// Counts for metrics.
    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            bytes: inner.bytes,
            entries: inner.lru.len() as u64,
            evictions: inner.evictions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    const S: Duration = Duration::from_secs(1);

    fn store(
        c: &ResponseCache,
        uri: &str,
        req: &HeaderMap,
        resp: &HeaderMap,
        body: &'static [u8],
        at: Duration,
    ) -> bool {
        c.store(
            &Method::GET,
            uri,
            req,
            StatusCode::OK,
            resp,
            Bytes::from_static(body),
            at,
        )
    }

    #[test]
    fn serves_the_stored_body_byte_for_byte_within_its_age() {
        let c = ResponseCache::new(1 << 20, 1 << 16);
        let none = HeaderMap::new();
        let resp = headers(&[
            ("content-type", "application/json"),
            ("transfer-encoding", "chunked"),
        ]);
        assert!(store(&c, "/a?x=1", &none, &resp, b"{\"items\":[1,2]}", S));
        let hit = c
            .get(&Method::GET, "/a?x=1", &none, 10 * S, 11 * S)
            .unwrap();
        assert_eq!(&hit.body[..], b"{\"items\":[1,2]}");
        assert_eq!(hit.status, StatusCode::OK);
        assert!(hit.headers.iter().any(|(n, _)| n == "content-type"));
        assert!(!hit.headers.iter().any(|(n, _)| n == "transfer-encoding"));
        assert!(
            c.get(&Method::GET, "/a?x=1", &none, 10 * S, 12 * S)
                .is_none(),
            "too old"
        );
        assert!(
            c.get(&Method::GET, "/a?x=2", &none, 10 * S, 2 * S)
                .is_none(),
            "other query"
        );
        assert!(
            c.get(&Method::HEAD, "/a?x=1", &none, 10 * S, 2 * S)
                .is_none(),
            "other method"
        );
    }

    #[test]
    fn vary_keeps_one_answer_per_header_value() {
        let c = ResponseCache::new(1 << 20, 1 << 16);
        let resp = headers(&[("vary", "Accept-Language")]);
        let en = headers(&[("accept-language", "en")]);
        let de = headers(&[("accept-language", "de")]);
        assert!(store(&c, "/v", &en, &resp, b"hello", S));
        assert!(store(&c, "/v", &de, &resp, b"hallo", S));
        assert_eq!(
            &c.get(&Method::GET, "/v", &en, S, S).unwrap().body[..],
            b"hello"
        );
        assert_eq!(
            &c.get(&Method::GET, "/v", &de, S, S).unwrap().body[..],
            b"hallo"
        );
        assert!(c.get(&Method::GET, "/v", &HeaderMap::new(), S, S).is_none());
        assert_eq!(c.stats().entries, 1);
    }

    #[test]
    fn refuses_what_a_shared_cache_must_not_store() {
        let c = ResponseCache::new(1 << 20, 1 << 16);
        let none = HeaderMap::new();
        let auth = headers(&[("authorization", "Bearer x")]);
        assert!(!store(&c, "/p", &auth, &none, b"mine", S));
        for resp in [
            headers(&[("set-cookie", "s=1")]),
            headers(&[("cache-control", "private, max-age=60")]),
            headers(&[("cache-control", "no-store")]),
            headers(&[("vary", "*")]),
        ] {
            assert!(!store(&c, "/p", &none, &resp, b"x", S), "{resp:?}");
        }
        assert!(!c.store(
            &Method::GET,
            "/p",
            &none,
            StatusCode::INTERNAL_SERVER_ERROR,
            &none,
            Bytes::new(),
            S
        ));
        assert!(!c.store(
            &Method::POST,
            "/p",
            &none,
            StatusCode::OK,
            &none,
            Bytes::new(),
            S
        ));
        assert_eq!(c.stats().entries, 0);
    }

    #[test]
    fn evicts_least_recently_used_to_stay_under_the_byte_cap() {
        let c = ResponseCache::new(3 * 1100, 2000);
        let none = HeaderMap::new();
        static BODY: [u8; 800] = [b'x'; 800];
        for uri in ["/1", "/2", "/3"] {
            assert!(store(&c, uri, &none, &none, &BODY, S));
        }
        // Touch /1 so /2 is the least recently used.
        assert!(c.get(&Method::GET, "/1", &none, S, S).is_some());
        assert!(store(&c, "/4", &none, &none, &BODY, S));
        let s = c.stats();
        assert!(s.bytes <= 3 * 1100, "{s:?}");
        assert_eq!(s.evictions, 1);
        assert!(c.get(&Method::GET, "/2", &none, S, S).is_none());
        assert!(c.get(&Method::GET, "/1", &none, S, S).is_some());
        // Larger than an entry may be: refused.
        static BIG: [u8; 2000] = [b'x'; 2000];
        assert!(!store(&c, "/big", &none, &none, &BIG, S));
    }
}
