//! Bearer-key authentication.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// The keys that open the API.
#[derive(Clone)]
pub struct ApiKeys(Arc<Vec<Vec<u8>>>);

impl ApiKeys {
    pub fn new(keys: &[String]) -> Self {
        Self(Arc::new(
            keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
        ))
    }

    /// Compares against every key, each in constant time, without stopping at a match: the
    /// time taken does not tell how much of a key was right, nor which key matched.
    fn admits(&self, presented: &[u8]) -> bool {
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |found, key| {
                found | key.as_slice().ct_eq(presented)
            })
            .into()
    }
}

/// The key of an `Authorization: Bearer <key>` header.
fn bearer(req: &Request) -> Option<&[u8]> {
    let value = req.headers().get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, key) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(key)
}

/// Refuses requests without a valid key with 401; with no keys configured, admits all.
pub async fn require_api_key(
    State(keys): State<Option<ApiKeys>>,
    req: Request,
    next: Next,
) -> Response {
    match &keys {
        None => next.run(req).await,
        Some(keys) if bearer(&req).is_some_and(|key| keys.admits(key)) => next.run(req).await,
        Some(_) => ApiError::Unauthorized.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The time to refuse a key does not depend on how much of it was right: a wrong first
    /// byte, a wrong middle and a wrong last byte take the same time, within noise.
    #[test]
    fn refusal_time_does_not_depend_on_how_much_of_the_key_matches() {
        use std::hint::black_box;
        use std::time::Instant;

        let key = "k".repeat(256);
        let keys = ApiKeys::new(std::slice::from_ref(&key));
        let wrong_at = |i: usize| {
            let mut bytes = key.clone().into_bytes();
            bytes[i] = b'x';
            bytes
        };
        let cases = [wrong_at(0), wrong_at(128), wrong_at(255)];
        let mut samples: Vec<Vec<u128>> = vec![Vec::new(); cases.len()];
        for round in 0..200 {
            // Interleaved, in a rotating order, so drift on a shared machine hits every case.
            for offset in 0..cases.len() {
                let case = (round + offset) % cases.len();
                let started = Instant::now();
                for _ in 0..200 {
                    black_box(keys.admits(black_box(&cases[case])));
                }
                samples[case].push(started.elapsed().as_nanos());
            }
        }
        let medians: Vec<u128> = samples
            .iter_mut()
            .map(|s| {
                s.sort_unstable();
                s[s.len() / 2]
            })
            .collect();
        let (fastest, slowest) = (medians.iter().min().unwrap(), medians.iter().max().unwrap());
        let ratio = *slowest as f64 / *fastest as f64;
        println!("refusal time medians (ns per 200 calls) by first wrong byte 0/128/255: {medians:?}, ratio {ratio:.3}");
        assert!(
            ratio < 1.25,
            "refusal time depends on the matching prefix: {medians:?}"
        );
    }

    #[test]
    fn admits_exactly_the_configured_keys() {
        let keys = ApiKeys::new(&[
            "first-key-0123456789".to_owned(),
            "second-key-0123456789".to_owned(),
        ]);
        assert!(keys.admits(b"first-key-0123456789"));
        assert!(keys.admits(b"second-key-0123456789"));
        for wrong in [
            &b""[..],
            b"first-key-012345678",
            b"first-key-01234567890",
            b"FIRST-KEY-0123456789",
        ] {
            assert!(!keys.admits(wrong));
        }
    }
}
