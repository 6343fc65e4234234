//! Integration tests: a real server on 127.0.0.1:0 over a real directory,
//! driven by the real Rust client and, for malformed input, by the raw
//! generated stub. One binary (links once), a module per area.

// Tests fail loudly; the no-unwrap rule is for code a request can reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

mod atomicity;
mod auth;
mod bytestream;
mod compression;
mod dirs;
mod faults;
mod files;
mod hostile;
mod http2;
mod limits;
mod metrics;
mod objects;
mod parallel;
mod proxy;
mod ranged;
mod ranged_client;
mod resume;
mod security;
mod transfer;
