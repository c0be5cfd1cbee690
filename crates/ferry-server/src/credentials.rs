//! Credentials of the single-region mode (`ferry serve` without `--config`).
//!
//! Taken from `FERRY_ACCESS_KEY` / `FERRY_SECRET_KEY` when both are set. Otherwise they are read
//! from `DATA_DIR/credentials.json`, or generated at first start, written there (mode 0600) and
//! printed once.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

/// A stored access key pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredCredentials {
    /// Format version of this file.
    pub format: u32,
    pub access_key: String,
    pub secret_key: String,
}

fn random_string(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len).map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())])).collect()
}

/// Loads or creates the credentials file of a data directory. Returns the pair and whether it
/// was just created.
///
/// # Errors
/// When the file cannot be read, parsed or written.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<(StoredCredentials, bool)> {
    let path = data_dir.join("credentials.json");
    if path.exists() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        let creds: StoredCredentials =
            serde_json::from_str(&text).with_context(|| format!("{}: invalid credentials file", path.display()))?;
        return Ok((creds, false));
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("data directory {}: cannot create", data_dir.display()))?;
    let creds = StoredCredentials {
        format: 1,
        access_key: format!("FERRY{}", random_string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 15)),
        secret_key: random_string(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/", 40),
    };
    let tmp = data_dir.join("credentials.json.tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).with_context(|| format!("{}: cannot write", tmp.display()))?;
        f.write_all(serde_json::to_string_pretty(&creds)?.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok((creds, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, new_a) = load_or_create(dir.path()).unwrap();
        let (b, new_b) = load_or_create(dir.path()).unwrap();
        assert!(new_a && !new_b);
        assert_eq!(a.access_key, b.access_key);
        assert_eq!(a.secret_key.len(), 40);
    }
}
