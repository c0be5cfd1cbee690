//! Ferry's integration tests: one binary, real servers on 127.0.0.1, real clients.

// A panic is how a test fails; helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]
// Test data: byte patterns cut to u8 on purpose, small counts and sizes.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]

mod cli;
mod common;
mod console;
mod console_browser;
mod crash;
mod faults;
mod model;
mod outbox;
mod progress;
mod replica_batch;
mod replication;
mod replication_process;
mod s3_bad_input;
mod s3_buckets;
mod s3_cors;
mod s3_encryption;
mod s3_lifecycle;
mod s3_listing;
mod s3_multipart;
mod s3_object_lock;
mod s3_objects;
mod s3_policy;
mod s3_post;
mod s3_versioning;
mod scale_out;
mod trust;
