//! The request hash of the consistent-hash policies (Istio
//! `consistentHash`, Envoy `RouteAction.hash_policy`).
//!
//! Hashing reads borrowed bytes of the request and allocates nothing. The
//! hash is 64-bit FNV-1a finished with MurmurHash3's `fmix64` so that
//! short, similar keys spread over the whole ring; it is stable across
//! processes and releases, as a consistent hash must be.

use http::{HeaderMap, Uri};

use crate::model::HashKey;

/// A stable 64-bit hash of `bytes`.
pub fn hash64(bytes: &[u8]) -> u64 {
    hash64_seeded(bytes, 0xcbf2_9ce4_8422_2325)
}

/// A stable 64-bit hash of `bytes` from `seed` (Maglev needs two).
pub fn hash64_seeded(bytes: &[u8], seed: u64) -> u64 {
    let mut h = seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    fmix64(h)
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let (k, v) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
            (k == name.as_bytes()).then(|| &v[1..])
        })
}

/// The value of query parameter `name` (as written, not percent-decoded).
pub fn query_param<'u>(uri: &'u Uri, name: &str) -> Option<&'u str> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// The hash of a request under `key`, or `None` when the request lacks
/// what the key names (the balancer then picks at random, as Envoy does;
/// for a cookie the mesh also sets one on the response).
///
/// `useSourceIp` hashes the first `X-Forwarded-For` address: a client
/// library's own address is the same for every request it sends, so the
/// original client as an ingress recorded it is the useful source.
pub fn request_hash(key: &HashKey, uri: &Uri, headers: &HeaderMap) -> Option<u64> {
    match key {
        HashKey::Header(name) => headers.get(name).map(|v| hash64(v.as_bytes())),
        HashKey::Cookie { name, .. } => cookie(headers, name).map(hash64),
        HashKey::QueryParameter(name) => query_param(uri, name).map(|v| hash64(v.as_bytes())),
        HashKey::SourceIp => headers
            .get("x-forwarded-for")
            .and_then(|v| v.as_bytes().split(|&b| b == b',').next())
            .map(|ip| hash64(ip.trim_ascii())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_and_spread() {
        assert_eq!(hash64(b"user-1"), hash64(b"user-1"));
        assert_ne!(hash64(b"user-1"), hash64(b"user-2"));
        assert_ne!(hash64_seeded(b"a", 1), hash64_seeded(b"a", 2));
    }

    #[test]
    fn keys_are_read_from_the_request() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "alice".parse().unwrap());
        headers.append(http::header::COOKIE, "a=1; session=abc".parse().unwrap());
        headers.insert("x-forwarded-for", "10.1.2.3, 10.0.0.1".parse().unwrap());
        let uri: Uri = "http://svc/path?x=1&user=bob".parse().unwrap();
        let h = |k: HashKey| request_hash(&k, &uri, &headers);
        assert_eq!(
            h(HashKey::Header("x-user".parse().unwrap())),
            Some(hash64(b"alice"))
        );
        assert_eq!(h(HashKey::Header("x-none".parse().unwrap())), None);
        let cookie = |name: &str| HashKey::Cookie {
            name: name.into(),
            path: None,
            ttl: None,
        };
        assert_eq!(h(cookie("session")), Some(hash64(b"abc")));
        assert_eq!(h(cookie("sess")), None);
        assert_eq!(
            h(HashKey::QueryParameter("user".into())),
            Some(hash64(b"bob"))
        );
        assert_eq!(h(HashKey::QueryParameter("us".into())), None);
        assert_eq!(h(HashKey::SourceIp), Some(hash64(b"10.1.2.3")));
    }
}
