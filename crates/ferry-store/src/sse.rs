//! Encryption at rest (server-side encryption): the format of an encrypted body and its keys.
//! This module seals and opens bytes; it never touches storage. The write and read paths that
//! use it decide which bodies are encrypted (SSE-S3, SSE-C) and keep the wrapped keys with the
//! version.
//!
//! # Format
//! - A body (a blob file, or an inline body in the database) is its plaintext cut into chunks of
//!   [`CHUNK`] bytes (the last one shorter), each sealed with AES-256-GCM: [`CHUNK`] + [`TAG`]
//!   bytes each. An empty body is one empty chunk (its tag alone). A range read opens only the
//!   chunks it covers ([`ChunkSpan`]), so neither reads nor writes hold more than a chunk.
//! - Each body has its own key, derived with HKDF-SHA256 from the version's data key and a
//!   name unique to the body (its blob id): a part uploaded again is a new blob, so a new key.
//!   Under one key, chunk `i` uses the nonce `i`: no (key, nonce) pair is ever used twice.
//! - A chunk's associated data is its index and whether it is the body's last chunk: a body
//!   cut short, or with chunks moved, fails to open instead of reading as another body.
//! - The data key (32 random bytes) is stored only wrapped ([`WrappedKey`]): sealed with
//!   AES-256-GCM under a key-encryption key (the region's master key for SSE-S3, the
//!   customer's key for SSE-C) and a random nonce. A wrong key-encryption key fails to unwrap,
//!   so a wrong customer key is detected without storing anything derived from it. Random
//!   96-bit nonces stay safe up to about 2^32 wraps under one master key (one wrap per write):
//!   a busy region rotates its master key well before that.
//!
//! # Invariants
//! 1. A data key is drawn fresh for every write that makes a body (PUT, copy, POST, each
//!    multipart upload) and never reused, not even when a write replaces the `null` version:
//!    the names under one data key (blob ids, [`INLINE`] once) are then all different.
//! 2. Plaintext and unwrapped keys live only in memory, one chunk of plaintext at a time per
//!    body being read or written; keys (and the ciphers' key schedules) are zeroed when
//!    dropped.
//! 3. Every byte read back is authenticated: a changed, truncated or reordered body is an
//!    error ([`SseError::Corrupt`]), never plaintext that was not written.
//! 4. The master key is never written by Ferry: it comes from a file or the environment, and
//!    versions record its id ([`MasterKey::id`]) so a rotated key is recognised.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Nonce, Payload};

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
/// Bytes an AES-GCM tag adds to each chunk.
pub const TAG: usize = 16;
/// The name of an inline body's key (a body in the database has no blob id).
pub const INLINE: &str = "inline";

/// Why sealing or opening failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// The key-encryption key is not the one the data key was wrapped with.
    #[error("the key does not open this object's data key")]
    WrongKey,
    /// A chunk failed authentication: the stored bytes are not what was written.
    #[error("encrypted data failed authentication at chunk {0}")]
    Corrupt(u64),
    /// A master key that is not 32 bytes in hex or base64.
    #[error("bad master key: {0}")]
    BadKey(String),
    /// More than AES-GCM can seal in one message (never a key or a chunk).
    #[error("AES-GCM refused to seal {0} bytes")]
    TooLong(usize),
    /// A range outside the body.
    #[error("bytes {0}..{1} are outside a body of {2} bytes")]
    OutOfRange(u64, u64, u64),
}

/// A 256-bit key, zeroed when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// 32 fresh random bytes.
    #[must_use]
    pub fn random() -> Self {
        let mut k = Self([0u8; 32]);
        rand::fill(&mut k.0);
        k
    }

    /// A key given as 32 bytes (an SSE-C customer key, once its base64 is decoded).
    #[must_use]
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    fn cipher(&self) -> Aes256Gcm {
        // A 32-byte key is always a valid AES-256 key.
        Aes256Gcm::new(&self.0.into())
    }

    /// Wraps `data` (a data key) under this key with a fresh random nonce.
    ///
    /// # Errors
    /// Never in practice ([`SseError::TooLong`] is for messages beyond 64 GiB).
    pub fn wrap_key(&self, data: &Key) -> Result<WrappedKey, SseError> {
        let mut nonce = [0u8; 12];
        rand::fill(&mut nonce);
        let sealed = self
            .cipher()
            .encrypt(&Nonce::<Aes256Gcm>::from(nonce), data.0.as_slice())
            .map_err(|_| SseError::TooLong(data.0.len()))?;
        Ok(WrappedKey { format: FORMAT, nonce, sealed })
    }

    /// The data key `w` wraps, if this is the key it was wrapped with.
    ///
    /// # Errors
    /// [`SseError::WrongKey`] for any other key (or a damaged wrapped key).
    pub fn unwrap_key(&self, w: &WrappedKey) -> Result<Key, SseError> {
        let plain = Zeroizing::new(
            self.cipher().decrypt(&Nonce::<Aes256Gcm>::from(w.nonce), w.sealed.as_slice()).map_err(|_| SseError::WrongKey)?,
        );
        let mut key = Self([0u8; 32]);
        if plain.len() != key.0.len() {
            return Err(SseError::WrongKey);
        }
        key.0.copy_from_slice(&plain);
        Ok(key)
    }

    /// The cipher of one body: its key derived from this data key and the body's name (its
    /// blob id, or [`INLINE`]).
    #[must_use]
    pub fn body(&self, name: &str) -> BodyCipher {
        let mut derived = Self([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's limit (255 blocks): expand cannot fail.
        let _ = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"ferry sse body"), &self.0).expand(name.as_bytes(), &mut derived.0);
        BodyCipher { cipher: derived.cipher() }
    }
}

/// The format of the bodies and wrapped keys this build writes.
pub const FORMAT: u32 = 1;

/// A data key sealed under a key-encryption key, as stored with a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// [`FORMAT`] when written: a reader refuses a newer one.
    pub format: u32,
    #[serde(with = "b64_array")]
    nonce: [u8; 12],
    #[serde(with = "b64_vec")]
    sealed: Vec<u8>,
}

/// The region's master key (SSE-S3's key-encryption key), with its id.
#[derive(Clone)]
pub struct MasterKey {
    key: Key,
    id: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl MasterKey {
    /// A master key from its text: 64 hex digits or the base64 of 32 bytes (surrounding
    /// whitespace ignored), as a key file or `FERRY_MASTER_KEY` holds it.
    ///
    /// # Errors
    /// [`SseError::BadKey`] for anything else.
    pub fn from_text(text: &str) -> Result<Self, SseError> {
        use base64::Engine as _;
        let t = text.trim();
        let mut bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).map_err(|e| SseError::BadKey(e.to_string()))?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .map_err(|_| SseError::BadKey("expected 64 hex digits or the base64 of 32 bytes".into()))?
        };
        let mut key = Key([0u8; 32]);
        if bytes.len() != key.0.len() {
            let n = bytes.len();
            bytes.zeroize();
            return Err(SseError::BadKey(format!("{n} bytes, 32 are needed")));
        }
        key.0.copy_from_slice(&bytes);
        bytes.zeroize();
        use sha2::Digest as _;
        let id = hex::encode(&sha2::Sha256::digest(key.0)[..8]);
        Ok(Self { key, id })
    }

    /// The key's id: the first 8 bytes of its SHA-256, in hex (recorded with each version).
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key itself, to wrap and unwrap data keys.
    #[must_use]
    pub fn key(&self) -> &Key {
        &self.key
    }
}

/// The cipher of one body.
pub struct BodyCipher {
    cipher: Aes256Gcm,
}

/// A chunk's nonce: its index, big-endian, in 96 bits.
fn nonce(index: u64) -> Nonce<Aes256Gcm> {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&index.to_be_bytes());
    Nonce::<Aes256Gcm>::from(n)
}

/// A chunk's associated data: its index and whether it is the last.
fn aad(index: u64, last: bool) -> [u8; 9] {
    let mut a = [0u8; 9];
    a[..8].copy_from_slice(&index.to_be_bytes());
    a[8] = u8::from(last);
    a
}

impl BodyCipher {
    /// Seals chunk `index` (`last`: the body's last chunk).
    ///
    /// # Errors
    /// Never for a chunk ([`SseError::TooLong`] is for messages beyond 64 GiB).
    pub fn seal(&self, index: u64, last: bool, plain: &[u8]) -> Result<Vec<u8>, SseError> {
        self.cipher
            .encrypt(&nonce(index), Payload { msg: plain, aad: &aad(index, last) })
            .map_err(|_| SseError::TooLong(plain.len()))
    }

    /// Opens chunk `index`.
    ///
    /// # Errors
    /// [`SseError::Corrupt`] when it fails authentication.
    pub fn open(&self, index: u64, last: bool, sealed: &[u8]) -> Result<Vec<u8>, SseError> {
        self.cipher.decrypt(&nonce(index), Payload { msg: sealed, aad: &aad(index, last) }).map_err(|_| SseError::Corrupt(index))
    }
}

/// How many chunks a body of `plain_len` bytes has (an empty body has one).
#[must_use]
pub fn chunks(plain_len: u64) -> u64 {
    plain_len.div_ceil(CHUNK as u64).max(1)
}

/// The stored size of a body of `plain_len` bytes.
#[must_use]
pub fn sealed_len(plain_len: u64) -> u64 {
    plain_len.saturating_add(chunks(plain_len) * TAG as u64)
}

/// The plaintext size of a body stored in `sealed` bytes ([`sealed_len`]'s inverse; a stored
/// size no body has gives a size that fails to open).
#[must_use]
pub fn plain_len(sealed: u64) -> u64 {
    let chunks = sealed.div_ceil((CHUNK + TAG) as u64).max(1);
    sealed.saturating_sub(chunks * TAG as u64)
}

/// The chunks a plaintext range of a body covers, and where they are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSpan {
    /// The first chunk's index.
    pub first: u64,
    /// The stored bytes to read: `[offset, offset + len)`.
    pub offset: u64,
    pub len: u64,
    /// Plaintext bytes to drop from the first chunk opened.
    pub skip: u64,
}

impl ChunkSpan {
    /// The chunks after the last one it covers.
    #[must_use]
    pub fn end(&self) -> u64 {
        self.first + self.len.div_ceil((CHUNK + TAG) as u64)
    }
}

/// The whole of a body of `plain_len` bytes.
#[must_use]
pub fn whole(plain_len: u64) -> ChunkSpan {
    ChunkSpan { first: 0, offset: 0, len: sealed_len(plain_len), skip: 0 }
}

/// The chunks of a body of `plain_len` bytes that hold its plaintext bytes `[start, end)`.
///
/// # Errors
/// [`SseError::OutOfRange`] unless `start < end <= plain_len`.
pub fn span(plain_len: u64, start: u64, end: u64) -> Result<ChunkSpan, SseError> {
    let c = CHUNK as u64;
    if start >= end || end > plain_len {
        return Err(SseError::OutOfRange(start, end, plain_len));
    }
    let first = start / c;
    let last = end.saturating_sub(1) / c;
    // Beyond any body Ferry stores (5 TiB), a size whose sealed offsets overflow is no body.
    let too_big = || SseError::OutOfRange(start, end, plain_len);
    let offset = first.checked_mul(c + TAG as u64).ok_or_else(too_big)?;
    let stored_end = (last + 1).checked_mul(c + TAG as u64).ok_or_else(too_big)?;
    let sealed = plain_len.checked_add(chunks(plain_len) * TAG as u64).ok_or_else(too_big)?;
    Ok(ChunkSpan { first, offset, len: stored_end.min(sealed) - offset, skip: start - first * c })
}

/// Seals a body given in pieces of any size, one chunk in memory at a time. A full chunk is
/// sealed only once a byte after it arrives (it is then known not to be the last).
pub struct Sealer {
    cipher: BodyCipher,
    buf: Vec<u8>,
    index: u64,
}

impl Sealer {
    #[must_use]
    pub fn new(cipher: BodyCipher) -> Self {
        Self { cipher, buf: Vec::with_capacity(CHUNK), index: 0 }
    }

    /// Adds plaintext; returns the sealed chunks it completed (often none).
    ///
    /// # Errors
    /// Never in practice ([`BodyCipher::seal`]).
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<Vec<u8>>, SseError> {
        let mut out = Vec::new();
        while !data.is_empty() {
            if self.buf.len() == CHUNK {
                out.push(self.cipher.seal(self.index, false, &self.buf)?);
                self.index += 1;
                self.buf.clear();
            }
            let take = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(out)
    }

    /// Seals the last chunk.
    ///
    /// # Errors
    /// Never in practice ([`BodyCipher::seal`]).
    pub fn finish(self) -> Result<Vec<u8>, SseError> {
        self.cipher.seal(self.index, true, &self.buf)
    }
}

/// Opens the stored bytes of a span of a body ([`span`], [`whole`]), given in pieces of any
/// size, one chunk in memory at a time. Every chunk of the span must arrive, whole.
pub struct Opener {
    cipher: BodyCipher,
    buf: Vec<u8>,
    index: u64,
    /// The span's end (chunk index).
    end: u64,
    /// The body's chunk count (from its plaintext size, which the version records).
    chunks: u64,
}

impl Opener {
    #[must_use]
    pub fn new(cipher: BodyCipher, plain_len: u64, span: &ChunkSpan) -> Self {
        let chunks = chunks(plain_len);
        Self { cipher, buf: Vec::with_capacity(CHUNK + TAG), index: span.first, end: span.end().min(chunks), chunks }
    }

    /// Adds stored bytes; returns the plaintext of the chunks they completed.
    ///
    /// # Errors
    /// [`SseError::Corrupt`] for a chunk that fails authentication, or bytes beyond the body.
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<u8>, SseError> {
        let mut out = Vec::new();
        while !data.is_empty() {
            if self.index >= self.end {
                return Err(SseError::Corrupt(self.index));
            }
            let take = (CHUNK + TAG - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK + TAG {
                let last = self.index + 1 == self.chunks;
                out.extend(self.cipher.open(self.index, last, &self.buf)?);
                self.index += 1;
                self.buf.clear();
            }
        }
        Ok(out)
    }

    /// Opens what is left: the body's last chunk if it is shorter than a full one. The span
    /// must be complete: stored bytes that end early are an error.
    ///
    /// # Errors
    /// [`SseError::Corrupt`] when the stored bytes end early or fail authentication.
    pub fn finish(mut self) -> Result<Vec<u8>, SseError> {
        if self.buf.is_empty() && self.index == self.end {
            return Ok(Vec::new());
        }
        if self.index + 1 != self.chunks || self.index + 1 != self.end {
            return Err(SseError::Corrupt(self.index));
        }
        let out = self.cipher.open(self.index, true, &self.buf)?;
        self.buf.clear();
        Ok(out)
    }
}

/// Which key-encryption key a version's data key is wrapped under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SseKind {
    /// SSE-S3: the region's master key (`AES256` in S3's headers).
    #[serde(rename = "AES256")]
    S3,
    /// SSE-KMS: a key of the region's key-file KMS (`aws:kms`).
    #[serde(rename = "aws:kms")]
    Kms,
    /// SSE-C: the key the client sends with every request; never stored.
    #[serde(rename = "SSE-C")]
    Customer,
}

impl SseKind {
    /// The value of `x-amz-server-side-encryption` for this kind (SSE-C has none: it answers
    /// `x-amz-server-side-encryption-customer-algorithm: AES256`).
    #[must_use]
    pub fn header(self) -> Option<&'static str> {
        match self {
            Self::S3 => Some("AES256"),
            Self::Kms => Some("aws:kms"),
            Self::Customer => None,
        }
    }
}

/// How a version (or a multipart upload) is encrypted, as stored with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    pub kind: SseKind,
    /// The data key, wrapped.
    pub key: WrappedKey,
    /// The id of the key it is wrapped under: the master key's [`MasterKey::id`] (SSE-S3), the
    /// KMS key's name (SSE-KMS); none for SSE-C (nothing about the customer's key is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek: Option<String>,
    /// SSE-KMS: the [`MasterKey::id`] of the key behind the name when the data key was wrapped,
    /// so a key file replaced under the same name is recognised rather than tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek_fingerprint: Option<String>,
}

/// A bucket's default encryption: the kind writes that ask for none get (SSE-S3 or SSE-KMS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultEncryption {
    pub kind: SseKind,
    /// The KMS key of `aws:kms` (none: the region's default KMS key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key: Option<String>,
    /// S3 Bucket Keys, as configured: stored and answered; every write still gets its own data
    /// key (a bucket key only saves KMS calls, which a key-file KMS does not make).
    #[serde(default)]
    pub bucket_key: bool,
}

/// Why a data key could not be made or opened with the keys a region has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("SSE-S3 needs a region master key: set `master_key_file` in [region.encryption], or FERRY_MASTER_KEY")]
    NoMasterKey,
    #[error("the master key {0} this object was encrypted under is not configured")]
    MasterKeyGone(String),
    #[error("no KMS key is configured under the id {0:?}")]
    NoKmsKey(String),
    #[error("the KMS key {0:?} is not the one this object was encrypted under (its key file was replaced)")]
    KmsKeyReplaced(String),
    #[error("aws:kms without a key id needs `default_kms_key` in [region.encryption]")]
    NoDefaultKmsKey,
    #[error("this object is encrypted with a customer key: the request must give it")]
    CustomerKeyNeeded,
    #[error("{0}")]
    Sse(#[from] SseError),
}

/// The key-encryption keys of a region: the master key (new writes), the master keys of before
/// a rotation (they only open what they wrapped), and the keys of its key-file KMS, by name.
/// Built from the region's configuration; nothing in it is ever written by Ferry.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    pub master: Option<MasterKey>,
    pub old_masters: Vec<MasterKey>,
    pub kms: std::collections::BTreeMap<String, MasterKey>,
    pub default_kms: Option<String>,
}

impl Keyring {
    /// The KMS key id a write asking for `aws:kms` with `id` (or none) uses.
    ///
    /// # Errors
    /// [`KeyError::NoKmsKey`], [`KeyError::NoDefaultKmsKey`].
    pub fn kms_id(&self, id: Option<&str>) -> Result<String, KeyError> {
        let id = match id {
            Some(id) => id.to_owned(),
            None => self.default_kms.clone().ok_or(KeyError::NoDefaultKmsKey)?,
        };
        // A full ARN names the key by its last path segment, as the key-file KMS is configured.
        let short = id.rsplit_once(":key/").map_or(id.as_str(), |(_, k)| k);
        if self.kms.contains_key(short) { Ok(short.to_owned()) } else { Err(KeyError::NoKmsKey(id)) }
    }

    /// A fresh data key for one write, and its stored form: wrapped under the master key
    /// (`S3`), KMS key `kms` (`Kms`), or `customer` (`Customer`).
    ///
    /// # Errors
    /// When the region lacks the key asked for.
    pub fn new_key(&self, kind: SseKind, kms: Option<&str>, customer: Option<&Key>) -> Result<(Encryption, Key), KeyError> {
        let data = Key::random();
        let (kek, id, fingerprint) = match kind {
            SseKind::S3 => {
                let m = self.master.as_ref().ok_or(KeyError::NoMasterKey)?;
                (m.key(), Some(m.id().to_owned()), None)
            }
            SseKind::Kms => {
                let id = self.kms_id(kms)?;
                let k = self.kms.get(&id).ok_or_else(|| KeyError::NoKmsKey(id.clone()))?;
                (k.key(), Some(id), Some(k.id().to_owned()))
            }
            SseKind::Customer => (customer.ok_or(KeyError::CustomerKeyNeeded)?, None, None),
        };
        Ok((
            Encryption { kind, key: kek.wrap_key(&data)?, kek: id, kek_fingerprint: fingerprint },
            data,
        ))
    }

    /// The data key of `enc`, unwrapped with the region's key (or `customer`'s for SSE-C).
    ///
    /// # Errors
    /// [`KeyError::CustomerKeyNeeded`], a key the region no longer has, or
    /// [`SseError::WrongKey`] (a wrong customer key).
    pub fn open(&self, enc: &Encryption, customer: Option<&Key>) -> Result<Key, KeyError> {
        let id = enc.kek.clone().unwrap_or_default();
        let kek = match enc.kind {
            SseKind::S3 => {
                let mut all = self.master.iter().chain(&self.old_masters);
                all.find(|m| m.id() == id).ok_or(KeyError::MasterKeyGone(id))?.key()
            }
            SseKind::Kms => {
                let k = self.kms.get(&id).ok_or_else(|| KeyError::NoKmsKey(id.clone()))?;
                if enc.kek_fingerprint.as_deref().is_some_and(|f| f != k.id()) {
                    return Err(KeyError::KmsKeyReplaced(id));
                }
                k.key()
            }
            SseKind::Customer => customer.ok_or(KeyError::CustomerKeyNeeded)?,
        };
        Ok(kek.unwrap_key(&enc.key)?)
    }
}

/// Plaintext bytes of one stored body, from a stream of its stored bytes ([`span`]'s
/// `offset..offset + len`): opens each chunk, drops the span's `skip` bytes, and ends after
/// `take` bytes. One chunk in memory at a time.
pub struct OpenStream<S> {
    inner: S,
    opener: Option<Opener>,
    skip: u64,
    take: u64,
}

impl<S> OpenStream<S> {
    #[must_use]
    pub fn new(inner: S, cipher: BodyCipher, plain_len: u64, span: &ChunkSpan, take: u64) -> Self {
        Self { inner, opener: Some(Opener::new(cipher, plain_len, span)), skip: span.skip, take }
    }

    /// The part of `plain` the range wants.
    fn cut(&mut self, plain: Vec<u8>) -> Option<bytes::Bytes> {
        let mut b = bytes::Bytes::from(plain);
        let skip = usize::try_from(self.skip).unwrap_or(usize::MAX).min(b.len());
        self.skip -= skip as u64;
        let _ = b.split_to(skip);
        b.truncate(usize::try_from(self.take).unwrap_or(usize::MAX));
        self.take -= b.len() as u64;
        (!b.is_empty()).then_some(b)
    }
}

/// An authentication failure as the I/O error a body stream ends with (`InvalidData`,
/// carrying the [`SseError`], by which callers tell it from a client's broken body).
pub(crate) fn corrupt(e: SseError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

/// Whether a body stream's error is a stored body failing authentication ([`corrupt`]), not
/// a read that failed (a disk, a blob store, a connection).
#[must_use]
pub fn is_corrupt(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::InvalidData && e.get_ref().is_some_and(|x| x.is::<SseError>())
}

impl<S> futures::Stream for OpenStream<S>
where
    S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
{
    type Item = std::io::Result<bytes::Bytes>;

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            let Some(opener) = this.opener.as_mut() else { return Poll::Ready(None) };
            match std::pin::Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.opener = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(stored))) => match opener.push(&stored) {
                    Ok(plain) => {
                        if let Some(b) = this.cut(plain) {
                            return Poll::Ready(Some(Ok(b)));
                        }
                    }
                    Err(e) => {
                        this.opener = None;
                        return Poll::Ready(Some(Err(corrupt(e))));
                    }
                },
                Poll::Ready(None) => {
                    let Some(opener) = this.opener.take() else { return Poll::Ready(None) };
                    match opener.finish() {
                        Ok(plain) => {
                            let last = this.cut(plain);
                            // The stored bytes ended before the range did.
                            if this.take > 0 {
                                return Poll::Ready(Some(Err(corrupt(SseError::Corrupt(0)))));
                            }
                            return Poll::Ready(last.map(Ok));
                        }
                        Err(e) => return Poll::Ready(Some(Err(corrupt(e)))),
                    }
                }
            }
        }
    }
}

mod b64_vec {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

mod b64_array {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 12], s: S) -> Result<S::Ok, S::Error> {
        super::b64_vec::serialize(v, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 12], D::Error> {
        let v = super::b64_vec::deserialize(d)?;
        <[u8; 12]>::try_from(v.as_slice()).map_err(|_| serde::de::Error::custom("a nonce is 12 bytes"))
    }
}

#[cfg(test)]
// Test data: byte patterns cut to u8 on purpose; offsets of bodies held in memory.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn body(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Seals `plain` in pieces of `piece` bytes.
    fn seal(key: &Key, name: &str, plain: &[u8], piece: usize) -> Vec<u8> {
        let mut s = Sealer::new(key.body(name));
        let mut out = Vec::new();
        for p in plain.chunks(piece.max(1)) {
            out.extend(s.push(p).unwrap().concat());
        }
        out.extend(s.finish().unwrap());
        out
    }

    fn open(key: &Key, name: &str, plain_len: u64, span: &ChunkSpan, stored: &[u8], piece: usize) -> Result<Vec<u8>, SseError> {
        let mut o = Opener::new(key.body(name), plain_len, span);
        let mut out = Vec::new();
        for p in stored.chunks(piece.max(1)) {
            out.extend(o.push(p)?);
        }
        out.extend(o.finish()?);
        Ok(out)
    }

    /// Every size around the chunk boundaries, fed and read in pieces of several sizes, comes
    /// back as it went in, at the size `sealed_len` says.
    #[test]
    fn bodies_round_trip_whatever_their_size_and_pieces() {
        let key = Key::random();
        for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 7] {
            let plain = body(n);
            for piece in [1000, CHUNK, CHUNK + TAG, 3 * CHUNK] {
                let stored = seal(&key, "blob-1", &plain, piece);
                assert_eq!(stored.len() as u64, sealed_len(n as u64), "size {n}");
                if n > 0 {
                    assert_ne!(&stored[..n.min(16)], &plain[..n.min(16)]);
                }
                let opened = open(&key, "blob-1", n as u64, &whole(n as u64), &stored, piece + 3);
                assert_eq!(opened.unwrap(), plain, "size {n} piece {piece}");
            }
        }
    }

    /// A range opens from its first chunk, reading only the chunks it covers.
    #[test]
    fn ranges_open_only_their_chunks() {
        let key = Key::random();
        let n = 3 * CHUNK + 100;
        let plain = body(n);
        let stored = seal(&key, "b", &plain, 4096);
        for (start, end) in [(0, 1), (5, CHUNK + 10), (CHUNK, CHUNK + 1), (2 * CHUNK + 3, n), (n - 1, n), (0, n)] {
            let s = span(n as u64, start as u64, end as u64).unwrap();
            let bytes = &stored[s.offset as usize..(s.offset + s.len) as usize];
            let opened = open(&key, "b", n as u64, &s, bytes, 777).unwrap();
            let skip = s.skip as usize;
            assert_eq!(&opened[skip..skip + (end - start)], &plain[start..end], "{start}..{end}");
            assert!(s.len as usize <= (end - start) + 2 * (CHUNK + TAG), "{start}..{end} reads {s:?}");
        }
    }

    /// Changed, cut, reordered or misattributed bytes fail to open; nothing is returned as if
    /// it were the body.
    #[test]
    fn tampered_bodies_fail_to_open() {
        let key = Key::random();
        let n = 2 * CHUNK + 10;
        let plain = body(n);
        let stored = seal(&key, "b", &plain, CHUNK);
        let len = n as u64;
        let mut flipped = stored.clone();
        flipped[CHUNK + TAG + 5] ^= 1;
        assert_eq!(open(&key, "b", len, &whole(len), &flipped, CHUNK), Err(SseError::Corrupt(1)));
        // Cut after two whole chunks: the second is not the last one written.
        let cut = &stored[..2 * (CHUNK + TAG)];
        assert!(open(&key, "b", 2 * CHUNK as u64, &whole(2 * CHUNK as u64), cut, CHUNK).is_err());
        assert!(open(&key, "b", len, &whole(len), cut, CHUNK).is_err());
        // Two chunks swapped.
        let mut swapped = stored[CHUNK + TAG..2 * (CHUNK + TAG)].to_vec();
        swapped.extend(&stored[..CHUNK + TAG]);
        swapped.extend(&stored[2 * (CHUNK + TAG)..]);
        assert!(open(&key, "b", len, &whole(len), &swapped, CHUNK).is_err());
        // Another body's key, another data key.
        assert!(open(&key, "other-blob", len, &whole(len), &stored, CHUNK).is_err());
        assert!(open(&Key::random(), "b", len, &whole(len), &stored, CHUNK).is_err());
        // A range whose stored bytes end early.
        let s = span(len, 10, (CHUNK + 20) as u64).unwrap();
        let short = &stored[s.offset as usize..(s.offset + s.len - 1) as usize];
        assert!(open(&key, "b", len, &s, short, CHUNK).is_err());
        // A span fed the genuine chunk after its end: refused, not opened beyond the span.
        let s = span(len, 0, 10).unwrap();
        assert_eq!(s.len as usize, CHUNK + TAG);
        let beyond = &stored[..2 * (CHUNK + TAG)];
        assert_eq!(open(&key, "b", len, &s, beyond, CHUNK + TAG), Err(SseError::Corrupt(1)));
        // Ranges outside the body are refused, not read as another range.
        assert_eq!(span(len, 5, 5), Err(SseError::OutOfRange(5, 5, len)));
        assert!(span(len, 0, len + 1).is_err());
        // The last chunk of a body that is a whole number of chunks.
        let whole_chunks = seal(&key, "w", &plain[..2 * CHUNK], CHUNK);
        let s = span(2 * CHUNK as u64, CHUNK as u64, 2 * CHUNK as u64).unwrap();
        let bytes = &whole_chunks[s.offset as usize..(s.offset + s.len) as usize];
        assert_eq!(open(&key, "w", 2 * CHUNK as u64, &s, bytes, 100).unwrap(), &plain[CHUNK..2 * CHUNK]);
        // An empty body: one tag; nothing stored, or a changed tag, does not open.
        let empty = seal(&key, "e", b"", 1);
        assert_eq!(empty.len(), TAG);
        assert_eq!(open(&key, "e", 0, &whole(0), &empty, 7).unwrap(), b"");
        assert!(open(&key, "e", 0, &whole(0), b"", 7).is_err());
        let mut bad_tag = empty.clone();
        bad_tag[3] ^= 0x80;
        assert!(open(&key, "e", 0, &whole(0), &bad_tag, 7).is_err());
        // Bytes beyond the body.
        let mut longer = stored.clone();
        longer.extend([0u8; 20]);
        assert!(open(&key, "b", len, &whole(len), &longer, CHUNK).is_err());
    }

    /// A data key comes back only with the key that wrapped it; the same plaintext under two
    /// bodies' keys is sealed differently.
    #[test]
    fn data_keys_unwrap_only_with_their_key() {
        let master = MasterKey::from_text(&"ab".repeat(32)).unwrap();
        let data = Key::random();
        let w = master.key().wrap_key(&data).unwrap();
        let text = serde_json::to_string(&w).unwrap();
        let back: WrappedKey = serde_json::from_str(&text).unwrap();
        let again = master.key().unwrap_key(&back).unwrap();
        assert_eq!(again.0, data.0);
        assert_eq!(Key::random().unwrap_key(&back).unwrap_err(), SseError::WrongKey);
        assert_ne!(
            data.body("a").seal(0, true, b"same").unwrap(),
            data.body("b").seal(0, true, b"same").unwrap()
        );
        assert_ne!(master.key().wrap_key(&data).unwrap(), w, "a fresh nonce per wrap");
        assert!(text.contains("\"format\":1"), "{text}");
        let short_nonce = text.replacen(
            &serde_json::to_value(&w).unwrap()["nonce"].as_str().unwrap().to_owned(),
            "AAAAAAAAAAAAAAA=",
            1,
        );
        assert!(serde_json::from_str::<WrappedKey>(&short_nonce).is_err(), "an 11-byte nonce");
    }

    #[test]
    fn master_keys_are_read_from_hex_or_base64() {
        let hex_key = MasterKey::from_text(&format!("  {}\n", "0f".repeat(32))).unwrap();
        let b64 = MasterKey::from_text("Dw8PDw8PDw8PDw8PDw8PDw8PDw8PDw8PDw8PDw8PDw8=").unwrap();
        assert_eq!(hex_key.id(), b64.id());
        assert_eq!(hex_key.id().len(), 16);
        assert!(matches!(MasterKey::from_text("short"), Err(SseError::BadKey(_))));
        assert!(matches!(MasterKey::from_text(&"0f".repeat(31)), Err(SseError::BadKey(_))));
        assert!(!format!("{hex_key:?}").contains("0f0f"), "a key never shows in logs");
    }

    /// The keyring wraps under the current master key, opens under any it still has (a
    /// rotation), names KMS keys by id or ARN, and needs the customer's key for SSE-C.
    #[test]
    fn keyring_rotation_kms_ids_and_customer_keys() {
        let master = |b: u8| MasterKey::from_text(&hex::encode([b; 32])).unwrap();
        let mut ring = Keyring { master: Some(master(1)), ..Keyring::default() };
        let (old, old_data) = ring.new_key(SseKind::S3, None, None).unwrap();
        assert_eq!(old.kek.as_deref(), Some(master(1).id()));
        // Rotated: a new current key, the old one kept to open what it wrapped.
        (ring.master, ring.old_masters) = (Some(master(2)), vec![master(1)]);
        assert_eq!(ring.open(&old, None).unwrap().0, old_data.0);
        let (new, _) = ring.new_key(SseKind::S3, None, None).unwrap();
        assert_eq!(new.kek.as_deref(), Some(master(2).id()));
        // The old key dropped: its versions can no longer be opened, and say why.
        ring.old_masters.clear();
        assert_eq!(ring.open(&old, None).unwrap_err(), KeyError::MasterKeyGone(master(1).id().to_owned()));
        assert_eq!(Keyring::default().new_key(SseKind::S3, None, None).unwrap_err(), KeyError::NoMasterKey);

        ring.kms.insert("k1".into(), master(3));
        assert_eq!(ring.kms_id(Some("arn:aws:kms:us-east-1:123:key/k1")).unwrap(), "k1");
        assert_eq!(ring.kms_id(None).unwrap_err(), KeyError::NoDefaultKmsKey);
        assert_eq!(ring.kms_id(Some("k2")).unwrap_err(), KeyError::NoKmsKey("k2".into()));
        ring.default_kms = Some("k1".into());
        let (kms, data) = ring.new_key(SseKind::Kms, None, None).unwrap();
        assert_eq!(kms.kek.as_deref(), Some("k1"));
        assert_eq!(ring.open(&kms, None).unwrap().0, data.0);
        // A key file replaced under the same id is recognised, not tried.
        ring.kms.insert("k1".into(), master(4));
        assert_eq!(ring.open(&kms, None).unwrap_err(), KeyError::KmsKeyReplaced("k1".into()));
        // Old keys never wrap new data keys: without a current master key, SSE-S3 is refused.
        let retired = Keyring { old_masters: vec![master(1)], ..Keyring::default() };
        assert_eq!(retired.new_key(SseKind::S3, None, None).unwrap_err(), KeyError::NoMasterKey);
        assert_eq!(retired.open(&old, None).unwrap().0, old_data.0);

        let customer = Key::from_bytes([9; 32]);
        let (c, data) = ring.new_key(SseKind::Customer, None, Some(&customer)).unwrap();
        assert_eq!(c.kek, None, "nothing about the customer key is kept");
        assert_eq!(ring.open(&c, None).unwrap_err(), KeyError::CustomerKeyNeeded);
        assert_eq!(
            ring.open(&c, Some(&Key::from_bytes([8; 32]))).unwrap_err(),
            KeyError::Sse(SseError::WrongKey)
        );
        assert_eq!(ring.open(&c, Some(&customer)).unwrap().0, data.0);
    }
}
