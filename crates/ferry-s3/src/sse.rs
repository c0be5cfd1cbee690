//! Server-side encryption at the S3 surface: which writes are encrypted and how (request
//! headers, else the bucket's default encryption), the SSE-C key checks, the data key of a
//! version being read, the answer headers, and Put/Get/DeleteBucketEncryption. The stored
//! format and the key wrapping are `ferry_store::sse`.
//!
//! # Invariants
//! 1. Every write that stores a body (PUT, POST, copy, each multipart upload) draws a fresh
//!    data key ([`FerryS3::new_encryption`]); a copy never takes its source's.
//! 2. An SSE-C key is checked against its MD5, used to wrap or unwrap the data key, and
//!    dropped with the request: neither it nor anything derived from it is stored. A wrong key
//!    fails to unwrap the data key (403), a missing one is refused (400) before any byte is
//!    read.
//! 3. SSE-S3 and SSE-KMS are refused (501, with the configuration to set) where the region
//!    has no key for them, never written in plaintext while claiming encryption.

use ferry_store::model::BucketRecord;
use ferry_store::sse::{DefaultEncryption, Encryption, Key, KeyError, SseError, SseKind};
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use crate::FerryS3;
use crate::perm::Perm;

/// A customer key (SSE-C) as a request gives it, checked against its MD5.
pub(crate) struct CustomerKey {
    pub key: Key,
    /// The key's MD5 as the request gave it (base64), answered back.
    pub md5: String,
}

/// The SSE-C key of a request's three headers (algorithm, key, key MD5), if it gives one.
///
/// # Errors
/// S3's answers for a bad algorithm, key or MD5.
pub(crate) fn customer_key(alg: Option<&str>, key: Option<&str>, md5: Option<&str>) -> S3Result<Option<CustomerKey>> {
    use base64::Engine as _;
    use md5::Digest as _;
    if alg.is_none() && key.is_none() && md5.is_none() {
        return Ok(None);
    }
    match alg {
        Some("AES256") => {}
        Some(_) => {
            return Err(s3_error!(
                InvalidEncryptionAlgorithmError,
                "The encryption algorithm specified is not valid."
            ));
        }
        None => {
            return Err(s3_error!(
                InvalidArgument,
                "Requests specifying Server Side Encryption with Customer provided keys must provide a valid encryption algorithm."
            ));
        }
    }
    let Some(text) = key else {
        return Err(s3_error!(
            InvalidArgument,
            "Requests specifying Server Side Encryption with Customer provided keys must provide an appropriate secret key."
        ));
    };
    let raw = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(text).unwrap_or_default());
    let Ok(bytes) = <[u8; 32]>::try_from(raw.as_slice()) else {
        return Err(s3_error!(InvalidArgument, "The secret key was invalid for the specified algorithm."));
    };
    let Some(md5) = md5 else {
        return Err(s3_error!(
            InvalidArgument,
            "Requests specifying Server Side Encryption with Customer provided keys must provide the client calculated MD5 of the secret key."
        ));
    };
    let digest = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(bytes));
    if digest != md5 {
        return Err(s3_error!(
            InvalidArgument,
            "The calculated MD5 hash of the key did not match the hash that was provided."
        ));
    }
    Ok(Some(CustomerKey { key: Key::from_bytes(bytes), md5: md5.to_owned() }))
}

/// The encryption a write asks for in its headers.
pub(crate) enum Asked {
    /// Nothing: the bucket's default, if any.
    Default,
    S3,
    Kms(Option<String>),
    Customer(CustomerKey),
}

impl Asked {
    /// What `x-amz-server-side-encryption`, its KMS key id and the SSE-C headers ask for.
    ///
    /// # Errors
    /// InvalidArgument for an unknown method or headers that contradict each other.
    pub(crate) fn of(sse: Option<&ServerSideEncryption>, kms_key: Option<&str>, customer: Option<CustomerKey>) -> S3Result<Self> {
        let asked = match (sse.map(ServerSideEncryption::as_str), customer) {
            (Some(_), Some(_)) => {
                return Err(s3_error!(
                    InvalidArgument,
                    "Server Side Encryption with Customer provided key is incompatible with the encryption method specified"
                ));
            }
            (None, Some(c)) => Self::Customer(c),
            (None, None) => Self::Default,
            (Some("AES256"), None) => Self::S3,
            (Some("aws:kms"), None) => return Ok(Self::Kms(kms_key.map(str::to_owned))),
            (Some(other), None) => {
                return Err(s3_error!(InvalidArgument, "The encryption method specified is not supported: {other}"));
            }
        };
        if kms_key.is_some() {
            return Err(s3_error!(
                InvalidArgument,
                "x-amz-server-side-encryption-aws-kms-key-id is only valid with x-amz-server-side-encryption: aws:kms"
            ));
        }
        Ok(asked)
    }
}

/// A new write's encryption: its stored record, its data key, and the SSE-C key's MD5.
pub(crate) struct NewEncryption {
    pub record: Encryption,
    pub key: Key,
    pub customer_md5: Option<String>,
}

/// The S3 error of a new write asking for a key the region lacks.
fn write_key_error(e: KeyError) -> s3s::S3Error {
    match e {
        KeyError::NoMasterKey => s3_error!(NotImplemented, "{e}"),
        // The request may name a key: its own mistake to fix.
        KeyError::NoKmsKey(_) | KeyError::NoDefaultKmsKey => s3_error!(InvalidArgument, "{e}"),
        other => read_key_error(SseKind::S3, other),
    }
}

/// The S3 error of a stored data key that does not open: the client's (a missing or wrong
/// SSE-C key), else the region's (a key gone from its configuration), logged.
fn read_key_error(kind: SseKind, e: KeyError) -> s3s::S3Error {
    match e {
        KeyError::CustomerKeyNeeded => s3_error!(
            InvalidRequest,
            "The object was stored using a form of Server Side Encryption. The correct parameters must be provided to retrieve the object."
        ),
        KeyError::Sse(SseError::WrongKey) if kind == SseKind::Customer => {
            s3_error!(AccessDenied, "The provided customer key does not open this object.")
        }
        other => {
            // The key ids and the reason are the operator's, in the log.
            tracing::error!(error = %other, "cannot open an object's data key");
            s3_error!(
                InternalError,
                "The region cannot open this object's encryption key; its operator has the reason in the log."
            )
        }
    }
}

/// The SSE-C key of an input's `x-amz-server-side-encryption-customer-*` headers
/// ([`FerryS3::customer_key`]); with `copy_source`, of its
/// `x-amz-copy-source-server-side-encryption-customer-*` headers.
macro_rules! customer_key_of {
    ($s3:expr, $req:expr, $i:expr) => {
        $s3.customer_key(
            $req,
            $i.sse_customer_algorithm.as_deref(),
            $i.sse_customer_key.as_deref(),
            $i.sse_customer_key_md5.as_deref(),
        )
    };
    ($s3:expr, $req:expr, $i:expr, copy_source) => {
        $s3.customer_key(
            $req,
            $i.copy_source_sse_customer_algorithm.as_deref(),
            $i.copy_source_sse_customer_key.as_deref(),
            $i.copy_source_sse_customer_key_md5.as_deref(),
        )
    };
}
pub(crate) use customer_key_of;

/// The answer headers of an encrypted version, the same fields in every output.
macro_rules! sse_headers {
    ($out:expr, $enc:expr, $customer_md5:expr) => {{
        let mut out = $out;
        if let Some(enc) = $enc {
            let enc: &ferry_store::sse::Encryption = enc;
            out.server_side_encryption = enc.kind.header().map(|h| s3s::dto::ServerSideEncryption::from(h.to_owned()));
            if enc.kind == ferry_store::sse::SseKind::Kms {
                out.ssekms_key_id = enc.kek.clone();
            }
            if enc.kind == ferry_store::sse::SseKind::Customer {
                out.sse_customer_algorithm = Some("AES256".to_owned());
                out.sse_customer_key_md5 = $customer_md5;
            }
        }
        out
    }};
}
pub(crate) use sse_headers;

impl FerryS3 {
    /// [`customer_key`], refused on a plain-HTTP request (the key would have crossed the
    /// network in clear) unless the region allows it.
    ///
    /// # Errors
    /// Those of [`customer_key`]; InvalidRequest over plain HTTP.
    pub(crate) fn customer_key<T>(
        &self,
        req: &S3Request<T>,
        alg: Option<&str>,
        key: Option<&str>,
        md5: Option<&str>,
    ) -> S3Result<Option<CustomerKey>> {
        let found = customer_key(alg, key, md5)?;
        // A request that does not say how it came is taken as plain HTTP.
        let secure = req.extensions.get::<crate::ClientInfo>().is_some_and(|c| c.secure);
        if found.is_some() && !secure && !self.sse_c_over_http {
            return Err(s3_error!(
                InvalidRequest,
                "Requests specifying Server Side Encryption with Customer provided keys must be made over a secure connection."
            ));
        }
        Ok(found)
    }

    /// The encryption of a new write to `bucket`: what it asks for, else the bucket's default,
    /// else none. Draws a fresh data key.
    ///
    /// # Errors
    /// When the region has no key for what is asked.
    pub(crate) fn new_encryption(&self, bucket: &BucketRecord, asked: Asked) -> S3Result<Option<NewEncryption>> {
        let keys = &self.store.keys;
        let from_default = matches!(asked, Asked::Default);
        let (kind, kms, customer) = match asked {
            Asked::Default => match &bucket.config.encryption {
                None => return Ok(None),
                Some(d) => (d.kind, d.kms_key.clone(), None),
            },
            Asked::S3 => (SseKind::S3, None, None),
            Asked::Kms(id) => (SseKind::Kms, id, None),
            Asked::Customer(c) => (SseKind::Customer, None, Some(c)),
        };
        let (record, key) = keys.new_key(kind, kms.as_deref(), customer.as_ref().map(|c| &c.key)).map_err(|e| {
            // A bucket default the region can no longer honour is the region's fault, not the
            // writer's (who asked for nothing).
            if from_default { read_key_error(kind, e) } else { write_key_error(e) }
        })?;
        Ok(Some(NewEncryption { record, key, customer_md5: customer.map(|c| c.md5) }))
    }

    /// The data key of a stored version (or upload) encrypted with `enc`, opened with the
    /// request's customer key for SSE-C.
    ///
    /// # Errors
    /// 400 when SSE-C headers are missing or given for an object that is not SSE-C, 403 for a
    /// wrong customer key, 500 when the region lost the key.
    pub(crate) fn data_key(&self, enc: Option<&Encryption>, customer: Option<&CustomerKey>) -> S3Result<Option<Key>> {
        match (enc, customer) {
            (None, None) => Ok(None),
            (Some(e), Some(_)) if e.kind != SseKind::Customer => {
                Err(s3_error!(InvalidRequest, "The encryption parameters are not applicable to this object."))
            }
            (None, Some(_)) => Err(s3_error!(InvalidRequest, "The encryption parameters are not applicable to this object.")),
            (Some(e), c) => self.store.keys.open(e, c.map(|c| &c.key)).map(Some).map_err(|err| read_key_error(e.kind, err)),
        }
    }

    /// The data key of a multipart upload, for one of its parts: as [`FerryS3::data_key`], but an
    /// SSE-C key other than the upload's is the request's mistake (400), as S3 answers it.
    ///
    /// # Errors
    /// Those of [`FerryS3::data_key`].
    pub(crate) fn upload_key(&self, enc: Option<&Encryption>, customer: Option<&CustomerKey>) -> S3Result<Option<Key>> {
        match (enc, customer) {
            (Some(e), Some(c)) if e.kind == SseKind::Customer => {
                self.store.keys.open(e, Some(&c.key)).map(Some).map_err(|err| match err {
                    KeyError::Sse(SseError::WrongKey) => {
                        s3_error!(InvalidRequest, "The provided encryption parameters do not match those of the upload.")
                    }
                    other => read_key_error(e.kind, other),
                })
            }
            _ => self.data_key(enc, customer),
        }
    }

    pub(crate) async fn put_bucket_encryption(
        &self,
        req: S3Request<PutBucketEncryptionInput>,
    ) -> S3Result<S3Response<PutBucketEncryptionOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        let rules = req.input.server_side_encryption_configuration.rules;
        let [rule] = rules.as_slice() else {
            return Err(s3_error!(MalformedXML, "Give exactly one encryption rule"));
        };
        let Some(by_default) = &rule.apply_server_side_encryption_by_default else {
            return Err(s3_error!(MalformedXML, "The rule has no ApplyServerSideEncryptionByDefault"));
        };
        let kms_key = by_default.kms_master_key_id.clone();
        let kind = match Asked::of(Some(&by_default.sse_algorithm), kms_key.as_deref(), None)? {
            Asked::S3 => SseKind::S3,
            _ => SseKind::Kms,
        };
        // A default nothing can be written under would turn every plain PUT into an error.
        let keys = &self.store.keys;
        match kind {
            SseKind::S3 if keys.master.is_none() => return Err(write_key_error(KeyError::NoMasterKey)),
            SseKind::Kms => {
                keys.kms_id(kms_key.as_deref()).map_err(write_key_error)?;
            }
            _ => {}
        }
        let d = DefaultEncryption { kind, kms_key, bucket_key: rule.bucket_key_enabled.unwrap_or(false) };
        self.update_bucket(b.name, move |bucket| bucket.config.encryption = Some(d)).await?;
        Ok(S3Response::new(PutBucketEncryptionOutput::default()))
    }

    pub(crate) async fn get_bucket_encryption(
        &self,
        req: S3Request<GetBucketEncryptionInput>,
    ) -> S3Result<S3Response<GetBucketEncryptionOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        let Some(d) = b.config.encryption else {
            return Err(s3_error!(
                ServerSideEncryptionConfigurationNotFoundError,
                "The server side encryption configuration was not found"
            ));
        };
        let rule = ServerSideEncryptionRule {
            apply_server_side_encryption_by_default: Some(ServerSideEncryptionByDefault {
                kms_master_key_id: d.kms_key,
                sse_algorithm: ServerSideEncryption::from(d.kind.header().unwrap_or("AES256").to_owned()),
            }),
            bucket_key_enabled: Some(d.bucket_key),
        };
        Ok(S3Response::new(GetBucketEncryptionOutput {
            server_side_encryption_configuration: Some(ServerSideEncryptionConfiguration { rules: vec![rule] }),
        }))
    }

    pub(crate) async fn delete_bucket_encryption(
        &self,
        req: S3Request<DeleteBucketEncryptionInput>,
    ) -> S3Result<S3Response<DeleteBucketEncryptionOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        self.update_bucket(b.name, |bucket| bucket.config.encryption = None).await?;
        Ok(S3Response::with_status(
            DeleteBucketEncryptionOutput::default(),
            http::StatusCode::NO_CONTENT,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(b: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn customer_keys_are_checked_against_their_md5() {
        use md5::Digest as _;
        let key = [7u8; 32];
        let md5 = b64(&md5::Md5::digest(key));
        assert!(customer_key(None, None, None).unwrap().is_none());
        assert_eq!(customer_key(Some("AES256"), Some(&b64(&key)), Some(&md5)).unwrap().unwrap().md5, md5);
        let code = |r: S3Result<Option<CustomerKey>>| r.err().map(|e| e.code().as_str().to_owned());
        assert_eq!(
            code(customer_key(Some("AES256"), Some(&b64(&key)), Some(&b64(b"wrong")))).as_deref(),
            Some("InvalidArgument")
        );
        assert_eq!(
            code(customer_key(Some("AES256"), Some(&b64(&key[..16])), Some(&md5))).as_deref(),
            Some("InvalidArgument")
        );
        assert_eq!(code(customer_key(Some("AES256"), None, Some(&md5))).as_deref(), Some("InvalidArgument"));
        assert_eq!(
            code(customer_key(Some("AES256"), Some(&b64(&key)), None)).as_deref(),
            Some("InvalidArgument")
        );
        assert_eq!(
            code(customer_key(Some("AES128"), Some(&b64(&key)), Some(&md5))).as_deref(),
            Some("InvalidEncryptionAlgorithmError")
        );
        assert_eq!(code(customer_key(None, Some(&b64(&key)), Some(&md5))).as_deref(), Some("InvalidArgument"));
        assert_eq!(
            code(customer_key(Some("AES256"), Some("not base64!"), Some(&md5))).as_deref(),
            Some("InvalidArgument")
        );
    }

    #[test]
    fn contradictory_encryption_headers_are_refused() {
        let s3 = ServerSideEncryption::from("AES256".to_owned());
        let kms = ServerSideEncryption::from("aws:kms".to_owned());
        assert!(matches!(Asked::of(None, None, None), Ok(Asked::Default)));
        assert!(matches!(Asked::of(Some(&s3), None, None), Ok(Asked::S3)));
        assert!(matches!(Asked::of(Some(&kms), Some("k"), None), Ok(Asked::Kms(Some(_)))));
        assert!(Asked::of(Some(&s3), Some("k"), None).is_err());
        assert!(Asked::of(None, Some("k"), None).is_err());
        assert!(Asked::of(Some(&ServerSideEncryption::from("aws:kms:dsse".to_owned())), None, None).is_err());
        let c = CustomerKey { key: Key::random(), md5: String::new() };
        assert!(Asked::of(Some(&s3), None, Some(c)).is_err());
    }
}
