//! Identifiers.
//!
//! Version ids are UUIDv7 rendered as 32 lowercase hex characters: time-ordered (the first 48 bits
//! are milliseconds since the epoch) with 74 random bits, so ids minted independently in two regions
//! never collide. Clients treat them as opaque strings. The literal `null` is the id of the version
//! written while versioning is off or suspended (S3's "null version").
//!
//! Blob and upload ids are random UUIDv4 in hex: they name files and multipart uploads and carry
//! no meaning.

/// The version id S3 uses for objects written while versioning is unset or suspended.
pub const NULL_VERSION_ID: &str = "null";

/// Mints a new version id (UUIDv7, 32 hex characters).
#[must_use]
pub fn new_version_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Mints a new blob id (UUIDv4, 32 hex characters).
#[must_use]
pub fn new_blob_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Mints a new multipart upload id.
#[must_use]
pub fn new_upload_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// True when `s` has the shape of an id minted by this module (32 lowercase hex characters).
/// Blob ids found on disk are checked with this before being trusted as file names.
#[must_use]
pub fn is_hex_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// True when `s` is acceptable as a version id supplied by a client or a peer: `null` or
/// 1..=1024 printable ASCII characters without spaces.
#[must_use]
pub fn is_valid_version_id(s: &str) -> bool {
    s == NULL_VERSION_ID || (!s.is_empty() && s.len() <= 1024 && s.bytes().all(|b| b.is_ascii_graphic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_ids_are_unique_hex_and_time_ordered() {
        let a = new_version_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_version_id();
        assert!(is_hex_id(&a) && is_hex_id(&b));
        assert_ne!(a, b);
        assert!(a < b, "UUIDv7 ids sort by creation time");
    }

    #[test]
    fn version_id_validation() {
        assert!(is_valid_version_id("null"));
        assert!(is_valid_version_id(&new_version_id()));
        assert!(!is_valid_version_id(""));
        assert!(!is_valid_version_id("a b"));
        assert!(!is_valid_version_id(&"x".repeat(1025)));
    }
}
