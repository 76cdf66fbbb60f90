//! What authentication costs a request (`reverse --auth-issuer`), on this machine:
//!
//! - `auth/jwt-full`: an RS256 token checked in full (header, key lookup in the cached key
//!   set, signature, `iss`/`aud`/`exp`/`nbf`): what a token costs the first time it is seen;
//! - `auth/jwt-remembered`: the same token again, as every later request of a client presents
//!   it (its SHA-256 looked up among the verified tokens, `exp` checked). Target: <= 5 us;
//! - `auth/api-key`: a static API key checked against a file of 100 hashes (constant time).
//!
//! The token and the issuer's public key are in `benches/auth-fixture.json` (minted by
//! oauth2-mock-server; `exp` in 2126; no private key). Criterion prints the mean; the medians
//! are in `target/criterion/auth/*/new/estimates.json`.
//!
//! Run: `cargo bench --bench auth`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::disallowed_types,
    missing_docs
)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use shadowcat::auth::{ApiKeys, Authenticator, Jwks, keys::hash_line};
use shadowcat::config::{AuthConfig, JwksSource, OAuthConfig};

const FIXTURE: &str = include_str!("auth-fixture.json");

fn bench(c: &mut Criterion) {
    let fixture: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    let token = fixture["token"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, fixture["jwks"].to_string()).unwrap();
    let oauth = OAuthConfig {
        issuer: "https://issuer.bench.example".into(),
        audience: "https://bench.example/mcp".into(),
        jwks: JwksSource::File(jwks_file),
        leeway: Duration::from_secs(60),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let jwks = runtime.block_on(Jwks::start(&oauth)).unwrap();
    let auth = runtime
        .block_on(Authenticator::start(&AuthConfig {
            oauth: Some(oauth),
            api_keys: None,
            resource: None,
            scopes: vec!["mcp".into()],
            claims: vec![],
        }))
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    // The first request verifies the token in full; every bench iteration after it is a
    // remembered one.
    let principal = runtime.block_on(auth.authenticate(&headers)).unwrap();
    println!("principal: {}", principal.id);

    let mut group = c.benchmark_group("auth");
    group.bench_function("jwt-full", |b| {
        b.iter(|| {
            runtime
                .block_on(jwks.validate::<serde_json::Value>(black_box(&token)))
                .unwrap()
        });
    });
    group.bench_function("jwt-remembered", |b| {
        b.iter(|| {
            runtime
                .block_on(auth.authenticate(black_box(&headers)))
                .unwrap()
        });
    });
    let file = (0..100)
        .map(|i| format!("client-{i} {}", hash_line(&format!("key-{i}"))))
        .collect::<Vec<_>>()
        .join("\n");
    let keys = ApiKeys::parse(&file).unwrap();
    group.bench_function("api-key", |b| {
        b.iter(|| keys.check(black_box("key-57")).unwrap());
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
