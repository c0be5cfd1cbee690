//! Body digests: the MD5 behind ETags and S3's flexible checksums (CRC32, CRC32C, CRC64NVME,
//! SHA1, SHA256), computed while a body streams through.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use md5::Digest as _;

/// A flexible-checksum algorithm. Stored by its S3 name; a name this build does not know is
/// refused when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Algorithm {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

impl Algorithm {
    /// All algorithms.
    pub const ALL: [Self; 5] = [Self::Crc32, Self::Crc32c, Self::Crc64Nvme, Self::Sha1, Self::Sha256];

    /// The S3 name (`CRC32`, `CRC32C`, `CRC64NVME`, `SHA1`, `SHA256`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Crc32 => "CRC32",
            Self::Crc32c => "CRC32C",
            Self::Crc64Nvme => "CRC64NVME",
            Self::Sha1 => "SHA1",
            Self::Sha256 => "SHA256",
        }
    }

    /// Parses an S3 algorithm name (case-insensitive).
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(s))
    }

    /// The `x-amz-checksum-*` header name.
    #[must_use]
    pub fn header(self) -> &'static str {
        match self {
            Self::Crc32 => "x-amz-checksum-crc32",
            Self::Crc32c => "x-amz-checksum-crc32c",
            Self::Crc64Nvme => "x-amz-checksum-crc64nvme",
            Self::Sha1 => "x-amz-checksum-sha1",
            Self::Sha256 => "x-amz-checksum-sha256",
        }
    }

    /// Length of the raw digest in bytes.
    #[must_use]
    pub fn digest_len(self) -> usize {
        match self {
            Self::Crc32 | Self::Crc32c => 4,
            Self::Crc64Nvme => 8,
            Self::Sha1 => 20,
            Self::Sha256 => 32,
        }
    }
}

enum State {
    Crc(crc_fast::Digest, usize),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

/// One running checksum.
pub struct Checksum {
    algorithm: Algorithm,
    state: State,
}

impl Checksum {
    /// A fresh checksum of `algorithm`.
    #[must_use]
    pub fn new(algorithm: Algorithm) -> Self {
        use crc_fast::CrcAlgorithm as C;
        let state = match algorithm {
            Algorithm::Crc32 => State::Crc(crc_fast::Digest::new(C::Crc32IsoHdlc), 4),
            Algorithm::Crc32c => State::Crc(crc_fast::Digest::new(C::Crc32Iscsi), 4),
            Algorithm::Crc64Nvme => State::Crc(crc_fast::Digest::new(C::Crc64Nvme), 8),
            Algorithm::Sha1 => State::Sha1(sha1::Sha1::new()),
            Algorithm::Sha256 => State::Sha256(sha2::Sha256::new()),
        };
        Self { algorithm, state }
    }

    /// The algorithm.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            State::Crc(d, _) => d.update(data),
            State::Sha1(h) => h.update(data),
            State::Sha256(h) => h.update(data),
        }
    }

    /// The raw digest.
    #[must_use]
    pub fn finish_raw(self) -> Vec<u8> {
        match self.state {
            State::Crc(d, 4) => u32::try_from(d.finalize() & 0xffff_ffff).unwrap_or(0).to_be_bytes().to_vec(),
            State::Crc(d, _) => d.finalize().to_be_bytes().to_vec(),
            State::Sha1(h) => h.finalize().to_vec(),
            State::Sha256(h) => h.finalize().to_vec(),
        }
    }

    /// The digest in base64, as S3 headers carry it.
    #[must_use]
    pub fn finish(self) -> String {
        B64.encode(self.finish_raw())
    }
}

/// Checksum of `data` in base64.
#[must_use]
pub fn checksum_of(algorithm: Algorithm, data: &[u8]) -> String {
    let mut c = Checksum::new(algorithm);
    c.update(data);
    c.finish()
}

/// Everything computed over a body as it streams: its length, MD5, and any requested checksums.
pub struct BodyDigest {
    len: u64,
    /// `None` when the caller has the ETag already (a replica verified by a checksum).
    md5: Option<md5::Md5>,
    checksums: Vec<Checksum>,
}

impl BodyDigest {
    /// Computes MD5 plus the given checksums.
    #[must_use]
    pub fn new(algorithms: &[Algorithm]) -> Self {
        Self::with_md5(algorithms, true)
    }

    /// Computes the given checksums, and MD5 if `md5` (MD5 is the slowest of them all, about
    /// 0.6 GB/s per core; CRC64NVME is over ten times faster).
    #[must_use]
    pub fn with_md5(algorithms: &[Algorithm], md5: bool) -> Self {
        let mut checksums: Vec<Checksum> = Vec::new();
        for a in algorithms {
            if !checksums.iter().any(|c| c.algorithm == *a) {
                checksums.push(Checksum::new(*a));
            }
        }
        Self { len: 0, md5: md5.then(md5::Md5::new), checksums }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        if let Some(m) = &mut self.md5 {
            m.update(data);
        }
        for c in &mut self.checksums {
            c.update(data);
        }
    }

    /// Bytes seen so far.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was fed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Finishes: (length, raw MD5, [(algorithm, base64 checksum)]).
    #[must_use]
    pub fn finish(self) -> DigestResult {
        DigestResult {
            len: self.len,
            md5: self.md5.map(|m| m.finalize().to_vec()).unwrap_or_default(),
            checksums: self.checksums.into_iter().map(|c| (c.algorithm, c.finish())).collect(),
        }
    }
}

/// The result of a [`BodyDigest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestResult {
    /// Body length.
    pub len: u64,
    /// Raw MD5 (16 bytes), or empty when it was not computed.
    pub md5: Vec<u8>,
    /// Requested checksums, base64.
    pub checksums: Vec<(Algorithm, String)>,
}

impl DigestResult {
    /// MD5 in lowercase hex (an ETag without quotes).
    #[must_use]
    pub fn md5_hex(&self) -> String {
        hex::encode(&self.md5)
    }

    /// MD5 in base64 (the `Content-MD5` form).
    #[must_use]
    pub fn md5_base64(&self) -> String {
        B64.encode(&self.md5)
    }

    /// The checksum computed for `a`, if it was requested.
    #[must_use]
    pub fn checksum(&self, a: Algorithm) -> Option<&str> {
        self.checksums.iter().find(|(x, _)| *x == a).map(|(_, v)| v.as_str())
    }
}

/// The ETag of a multipart object: MD5 of the concatenated raw part MD5s, then `-<count>`.
/// `None` when a part ETag is not hex.
#[must_use]
pub fn multipart_etag(part_md5_hex: &[&str]) -> Option<String> {
    let mut h = md5::Md5::new();
    for p in part_md5_hex {
        h.update(hex::decode(p).ok()?);
    }
    Some(format!("{}-{}", hex::encode(h.finalize()), part_md5_hex.len()))
}

/// The composite checksum of a multipart object: the checksum of the concatenated raw part
/// checksums, then `-<count>`. `None` when a part checksum is not valid base64.
#[must_use]
pub fn composite_checksum(algorithm: Algorithm, parts_b64: &[&str]) -> Option<String> {
    let mut c = Checksum::new(algorithm);
    for p in parts_b64 {
        c.update(&B64.decode(p).ok()?);
    }
    Some(format!("{}-{}", c.finish(), parts_b64.len()))
}

/// The full-object CRC of a body from the CRCs of its consecutive pieces (base64, with each
/// piece's length), without reading the bytes again: how a multipart replica is checked against
/// the source object's stored full-object checksum. `None` for a SHA algorithm, an empty list,
/// or a value that is not a CRC of this algorithm.
#[must_use]
pub fn combine_crcs(algorithm: Algorithm, pieces: &[(&str, u64)]) -> Option<String> {
    use crc_fast::CrcAlgorithm as C;
    let crc = match algorithm {
        Algorithm::Crc32 => C::Crc32IsoHdlc,
        Algorithm::Crc32c => C::Crc32Iscsi,
        Algorithm::Crc64Nvme => C::Crc64Nvme,
        Algorithm::Sha1 | Algorithm::Sha256 => return None,
    };
    let width = algorithm.digest_len();
    let value = |b64: &str| -> Option<u64> {
        let raw = B64.decode(b64).ok().filter(|r| r.len() == width)?;
        Some(raw.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    };
    let (first, rest) = pieces.split_first()?;
    let mut acc = value(first.0)?;
    for (b64, len) in rest {
        acc = crc_fast::checksum_combine(crc, acc, value(b64)?, *len);
    }
    Some(B64.encode(&acc.to_be_bytes()[8 - width..]))
}

/// Decodes a base64 checksum value and checks its length for `a`.
#[must_use]
pub fn is_valid_checksum_value(a: Algorithm, value: &str) -> bool {
    B64.decode(value).is_ok_and(|raw| raw.len() == a.digest_len())
}

/// Base64 decode helper for `Content-MD5`: `None` unless 16 bytes.
#[must_use]
pub fn decode_content_md5(value: &str) -> Option<Vec<u8>> {
    B64.decode(value.trim()).ok().filter(|v| v.len() == 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // Standard check values for "123456789".
        let data = b"123456789";
        let raw = |a| {
            let mut c = Checksum::new(a);
            c.update(data);
            hex::encode(c.finish_raw())
        };
        assert_eq!(raw(Algorithm::Crc32), "cbf43926");
        assert_eq!(raw(Algorithm::Crc32c), "e3069283");
        assert_eq!(raw(Algorithm::Crc64Nvme), "ae8b14860a799888");
        assert_eq!(raw(Algorithm::Sha1), "f7c3bc1d808e04732adf679965ccc34ca7ae3441");
        let mut d = BodyDigest::new(&[Algorithm::Sha256]);
        d.update(b"1234");
        d.update(b"56789");
        let r = d.finish();
        assert_eq!(r.len, 9);
        assert_eq!(r.md5_hex(), "25f9e794323b453885f5181f1b624d0b");
        assert_eq!(r.checksum(Algorithm::Sha256), Some("FeKw08M4keuw8e9gnsQZQgwg4yDOlMZfvIwzEkSOsiU="));
    }

    #[test]
    fn multipart_etag_shape() {
        let e = multipart_etag(&["25f9e794323b453885f5181f1b624d0b", "25f9e794323b453885f5181f1b624d0b"]).unwrap();
        assert!(e.ends_with("-2") && e.len() == 34);
        assert!(multipart_etag(&["zz"]).is_none());
    }

    #[test]
    fn crcs_of_pieces_combine_into_the_crc_of_the_whole() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for a in [Algorithm::Crc32, Algorithm::Crc32c, Algorithm::Crc64Nvme] {
            let pieces: Vec<(String, u64)> = data.chunks(30_000).map(|c| (checksum_of(a, c), c.len() as u64)).collect();
            let refs: Vec<(&str, u64)> = pieces.iter().map(|(v, l)| (v.as_str(), *l)).collect();
            assert_eq!(combine_crcs(a, &refs), Some(checksum_of(a, &data)), "{a:?}");
            // The same pieces in another order are another body.
            let swapped = [refs[1], refs[0], refs[2], refs[3]];
            assert_ne!(combine_crcs(a, &swapped), Some(checksum_of(a, &data)), "{a:?}");
        }
        assert_eq!(combine_crcs(Algorithm::Sha256, &[("x", 1)]), None);
        assert_eq!(combine_crcs(Algorithm::Crc32, &[]), None);
    }

    #[test]
    fn parse_names() {
        assert_eq!(Algorithm::parse("crc64nvme"), Some(Algorithm::Crc64Nvme));
        assert_eq!(Algorithm::parse("md5"), None);
        assert!(is_valid_checksum_value(Algorithm::Crc32, &checksum_of(Algorithm::Crc32, b"x")));
        assert!(!is_valid_checksum_value(Algorithm::Sha256, &checksum_of(Algorithm::Crc32, b"x")));
    }
}
