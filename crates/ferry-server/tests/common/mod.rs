//! The integration tests' harness: real servers on 127.0.0.1 in temp dirs (in-process or as
//! `ferry` child processes), real aws-sdk-s3 clients, raw HTTP for requests the SDK will not
//! send, and the replication, disk and third-party helpers the tests share. Test modules
//! `use crate::common::*`; this module re-exports every part, and holds the test accounts and
//! the polling helper that all parts use.

mod client;
mod disk;
mod moto;
mod post_form;
mod process;
mod proxy;
mod raw_http;
mod replication;
mod s3;
mod scale_out;
mod server;
mod tls;

use std::time::Duration;

pub use client::*;
pub use disk::*;
pub use moto::*;
pub use post_form::*;
pub use process::*;
pub use proxy::*;
pub use raw_http::*;
pub use replication::*;
pub use s3::*;
pub use scale_out::*;
pub use server::*;
pub use tls::*;

/// The main test user: owns the buckets of most tests.
pub const MAIN_AK: &str = "AKIAMAINTESTKEY";
pub const MAIN_SK: &str = "main-secret-key";
/// A second user, in another account.
pub const ALT_AK: &str = "AKIAALTTESTKEY00";
pub const ALT_SK: &str = "alt-secret-key";
/// A replication credential (what peers in other processes sign replicas with).
pub const REPL_AK: &str = "AKIAREPLTESTKEY0";
pub const REPL_SK: &str = "repl-secret-key";

/// The users of an in-process region: main, alt, and the replication credential.
pub fn users() -> Vec<ferry_s3::User> {
    vec![
        ferry_s3::User::new(MAIN_AK, MAIN_SK, Some("main"), None).with_email(Some("main@example.com")),
        ferry_s3::User::new(ALT_AK, ALT_SK, Some("alt"), None).with_email(Some("alt@example.com")),
        ferry_s3::User::new(REPL_AK, REPL_SK, Some("replication"), None).replicator(),
    ]
}

/// The account (user id) of an access key of [`users`].
pub fn account_of(access_key: &str) -> String {
    users().into_iter().find(|u| u.access_key == access_key).expect("a test user").owner.id
}

/// Polls `check` until it returns true or `secs` pass; panics with `what` on timeout.
pub async fn wait_until<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if check().await {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "timed out after {secs}s waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
