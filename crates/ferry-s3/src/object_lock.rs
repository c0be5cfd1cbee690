//! Object Lock, the S3 side: the bucket's configuration (Put/GetObjectLockConfiguration), a
//! version's retention and legal hold (Put/Get ObjectRetention, ObjectLegalHold), the lock a
//! write asks for in its headers, and who may bypass governance retention. What a lock forbids
//! is decided in the store ([`ferry_store::lock`]), inside the transaction of the change.
//!
//! - Object Lock is enabled at CreateBucket (`x-amz-bucket-object-lock-enabled`, which also
//!   enables versioning) or by PutObjectLockConfiguration on a bucket whose versioning is
//!   Enabled. It is never disabled, and versioning can no longer be suspended.
//! - The four object operations need the bucket owner, or a bucket policy that allows their
//!   action (`s3:PutObjectRetention`...), as AWS grants them to the bucket's account only.
//! - Bypassing governance retention takes `x-amz-bypass-governance-retention: true` and the
//!   bucket owner, or a policy that allows `s3:BypassGovernanceRetention`. A replica from a
//!   peer never bypasses: a version locked here stays until its lock here ends.
//! - Replication: a version's lock travels with it ([`ferry_store::replication::ReplicaMeta`])
//!   and so do later changes to it. A destination refuses a locked replica unless its bucket
//!   has Object Lock; PutBucketReplication checks that beforehand.

use ferry_store::lock::{
    DefaultRetention as StoredDefault, LockAttrs, LockMode, MAX_DEFAULT_DAYS, ObjectLockConfig, Period, Retention,
};
use ferry_store::model::{BucketRecord, VersionRecord, Versioning};
use ferry_store::objects::{AttrChange, update_attrs};
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use crate::FerryS3;
use crate::dto::{custom_error, ts};
use crate::error::StoreResultExt;
use crate::perm::Perm;
use crate::policy::Policy;

/// The refusal of a lock on a bucket without Object Lock.
fn not_enabled() -> s3s::S3Error {
    s3_error!(InvalidRequest, "Bucket is missing Object Lock Configuration")
}

fn invalid_period(msg: &str) -> s3s::S3Error {
    custom_error("InvalidRetentionPeriod", http::StatusCode::BAD_REQUEST, msg)
}

/// Microseconds since the epoch of an s3s timestamp.
fn micros(t: &Timestamp) -> i64 {
    ferry_core::time::datetime_to_micros(time::OffsetDateTime::from(t.clone()))
}

/// A retention mode as S3 spells it, or `err` (S3 answers MalformedXML in a document and
/// InvalidArgument in a header).
fn mode(name: &str, err: impl FnOnce() -> s3s::S3Error) -> S3Result<LockMode> {
    LockMode::parse(name).ok_or_else(err)
}

/// A retention a client sets: its date must be in the future (the region's clock).
fn future_retention(mode: LockMode, until: &Timestamp) -> S3Result<Retention> {
    let until_us = micros(until);
    if until_us <= ferry_core::time::now_micros() {
        return Err(s3_error!(InvalidArgument, "The retain until date must be in the future!"));
    }
    Ok(Retention { mode, until_us })
}

/// The lock a write asks for in its `x-amz-object-lock-*` headers: a retention (mode and date
/// together) and a legal hold.
///
/// # Errors
/// InvalidRequest when the bucket has no Object Lock; InvalidArgument for a mode without a
/// date (or the reverse), an unknown mode or status, a date in the past.
pub(crate) fn requested(
    bucket: &BucketRecord,
    mode_header: Option<&ObjectLockMode>,
    until: Option<&Timestamp>,
    hold: Option<&ObjectLockLegalHoldStatus>,
) -> S3Result<LockAttrs> {
    if mode_header.is_none() && until.is_none() && hold.is_none() {
        return Ok(LockAttrs::default());
    }
    if !bucket.object_lock() {
        return Err(not_enabled());
    }
    let retention = match (mode_header, until) {
        (None, None) => None,
        (Some(m), Some(until)) => {
            let m = mode(m.as_str(), || s3_error!(InvalidArgument, "Unknown wormMode directive."))?;
            Some(future_retention(m, until)?)
        }
        _ => {
            return Err(s3_error!(
                InvalidArgument,
                "x-amz-object-lock-retain-until-date and x-amz-object-lock-mode must both be supplied"
            ));
        }
    };
    let legal_hold = match hold.map(ObjectLockLegalHoldStatus::as_str) {
        None | Some("OFF") => false,
        Some("ON") => true,
        Some(_) => return Err(s3_error!(InvalidArgument, "Legal Hold must be either of 'ON' or 'OFF'")),
    };
    Ok(LockAttrs::new(retention, legal_hold))
}

/// [`FerryS3::write_lock`] of a write whose input (PutObject, CopyObject,
/// CreateMultipartUpload) carries the `x-amz-object-lock-*` headers.
macro_rules! write_lock {
    ($s3:expr, $req:expr, $bucket:expr, $input:expr) => {
        $s3.write_lock(
            $req,
            $bucket,
            &$input.key,
            (
                $input.object_lock_mode.as_ref(),
                $input.object_lock_retain_until_date.as_ref(),
                $input.object_lock_legal_hold_status.as_ref(),
            ),
        )
    };
}
pub(crate) use write_lock;

/// A legal hold as S3 spells it.
fn hold_status(on: bool) -> ObjectLockLegalHoldStatus {
    ObjectLockLegalHoldStatus::from_static(if on { ObjectLockLegalHoldStatus::ON } else { ObjectLockLegalHoldStatus::OFF })
}

/// The `x-amz-object-lock-*` headers a GET or HEAD answers for `v`.
pub(crate) fn headers_of(v: &VersionRecord) -> (Option<ObjectLockMode>, Option<Timestamp>, Option<ObjectLockLegalHoldStatus>) {
    let a = &v.attrs;
    let legal_hold = (a.lock.legal_hold || a.lock.legal_hold_us.is_some()).then(|| hold_status(a.lock.legal_hold));
    match a.lock.retention {
        Some(r) => (Some(ObjectLockMode::from(r.mode.as_str().to_owned())), Some(ts(r.until_us)), legal_hold),
        None => (None, None, legal_hold),
    }
}

/// A bucket's configuration as GetObjectLockConfiguration answers it.
pub(crate) fn config_dto(cfg: &ObjectLockConfig) -> ObjectLockConfiguration {
    let rule = cfg.default.map(|d| {
        let (days, years) = match d.period {
            Period::Days(n) => (i32::try_from(n).ok(), None),
            Period::Years(n) => (None, i32::try_from(n).ok()),
        };
        ObjectLockRule {
            default_retention: Some(DefaultRetention {
                mode: Some(ObjectLockRetentionMode::from(d.mode.as_str().to_owned())),
                days,
                years,
            }),
        }
    });
    ObjectLockConfiguration { object_lock_enabled: Some(ObjectLockEnabled::from_static(ObjectLockEnabled::ENABLED)), rule }
}

/// A bucket's configuration as PutObjectLockConfiguration sends it.
pub(crate) fn parse_config(cfg: Option<ObjectLockConfiguration>) -> S3Result<ObjectLockConfig> {
    let cfg = cfg.ok_or_else(|| s3_error!(MalformedXML, "The XML you provided was not well-formed"))?;
    if cfg.object_lock_enabled.as_ref().map(ObjectLockEnabled::as_str) != Some("Enabled") {
        return Err(s3_error!(MalformedXML, "ObjectLockEnabled must be Enabled"));
    }
    let Some(rule) = cfg.rule else { return Ok(ObjectLockConfig { default: None }) };
    let d = rule.default_retention.ok_or_else(|| s3_error!(MalformedXML, "An Object Lock Rule must have a DefaultRetention"))?;
    let m = d.mode.as_ref().ok_or_else(|| s3_error!(MalformedXML, "A DefaultRetention must have a Mode"))?;
    let m = mode(m.as_str(), || s3_error!(MalformedXML, "Mode must be GOVERNANCE or COMPLIANCE"))?;
    let period = match (d.days, d.years) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(s3_error!(MalformedXML, "A DefaultRetention must have either Days or Years, not both"));
        }
        (Some(days), None) => Period::Days(
            u32::try_from(days)
                .ok()
                .filter(|d| (1..=MAX_DEFAULT_DAYS).contains(d))
                .ok_or_else(|| invalid_period("Days must be a positive number of at most 36500"))?,
        ),
        (None, Some(years)) => Period::Years(
            u32::try_from(years)
                .ok()
                .filter(|y| (1..=MAX_DEFAULT_DAYS / 365).contains(y))
                .ok_or_else(|| invalid_period("Years must be a positive number of at most 100"))?,
        ),
    };
    Ok(ObjectLockConfig { default: Some(StoredDefault { mode: m, period }) })
}

impl FerryS3 {
    /// Whether `policy` (the bucket's, parsed once by the caller), or else ownership of the
    /// bucket, lets the requester do the Object Lock action `op` on `key`: a policy Deny refuses
    /// even the owner, an Allow grants anyone it names, and without either only the bucket's
    /// owner may.
    async fn lock_action_allowed<T>(
        &self,
        req: &S3Request<T>,
        policy: Option<&Policy>,
        op: &str,
        bucket: &BucketRecord,
        key: &str,
    ) -> bool {
        let judged = match policy {
            Some(p) => {
                let asked = crate::bucket_access::asked_of(req, op, &bucket.name, Some(key), None);
                crate::bucket_access::judge(&self.store, &self.users, bucket, p, &asked).await
            }
            None => Ok(false),
        };
        match judged {
            Err(_) => false,
            Ok(true) => true,
            Ok(false) => self.user(req).is_some_and(|u| u.owner.id == bucket.owner.id),
        }
    }

    /// Whether a request that asks to bypass governance retention on `key` (`asked`) may
    /// ([`Self::lock_action_allowed`] for `s3:BypassGovernanceRetention`). A replica from a
    /// peer asks nothing here: what it may remove is decided by its source's account.
    pub(crate) async fn may_bypass<T>(
        &self,
        req: &S3Request<T>,
        policy: Option<&Policy>,
        asked: Option<bool>,
        bucket: &BucketRecord,
        key: &str,
    ) -> bool {
        asked == Some(true)
            && self.replication(req).is_none()
            && self.lock_action_allowed(req, policy, "BypassGovernanceRetention", bucket, key).await
    }

    /// The lock a write asks for ([`requested`]), refused when its requester may not set it
    /// ([`Self::check_lock_request`]). See [`write_lock!`].
    pub(crate) async fn write_lock<T>(
        &self,
        req: &S3Request<T>,
        bucket: &BucketRecord,
        key: &str,
        (mode, until, hold): (Option<&ObjectLockMode>, Option<&Timestamp>, Option<&ObjectLockLegalHoldStatus>),
    ) -> S3Result<LockAttrs> {
        let lock = requested(bucket, mode, until, hold)?;
        self.check_lock_request(req, bucket, key, &lock).await?;
        Ok(lock)
    }

    /// Refuses a write whose lock headers ask for what its requester may not set: a retention
    /// needs `s3:PutObjectRetention`, a legal hold `s3:PutObjectLegalHold` (the bucket's owner,
    /// or a policy's grant), as on S3. Write permission alone would let any writer lock a
    /// version away from the bucket's owner for good.
    pub(crate) async fn check_lock_request<T>(
        &self,
        req: &S3Request<T>,
        bucket: &BucketRecord,
        key: &str,
        lock: &LockAttrs,
    ) -> S3Result<()> {
        if lock.retention.is_none() && !lock.legal_hold {
            return Ok(());
        }
        let policy = crate::bucket_access::policy_of(bucket);
        let policy = policy.as_ref();
        if lock.retention.is_some() && !self.lock_action_allowed(req, policy, "PutObjectRetention", bucket, key).await {
            return Err(crate::perm::access_denied());
        }
        if lock.legal_hold && !self.lock_action_allowed(req, policy, "PutObjectLegalHold", bucket, key).await {
            return Err(crate::perm::access_denied());
        }
        Ok(())
    }

    /// The bucket of an object lock request (its owner's, or a policy's grant), refused when
    /// Object Lock is not enabled, and the version it names.
    async fn locked_version<T>(
        &self,
        req: &S3Request<T>,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> S3Result<(BucketRecord, VersionRecord)> {
        let b = self.bucket_for(req, bucket, Perm::Owner).await?;
        if !b.object_lock() {
            return Err(not_enabled());
        }
        let v = self.version_checked(req, bucket, key, version_id, Perm::Read, true).await?;
        Ok((b, v.record))
    }

    /// Refuses to enable Object Lock on a bucket that replicates to a destination without it:
    /// every locked version would fail there.
    async fn check_lock_destinations(&self, b: &BucketRecord) -> S3Result<()> {
        let (Some(stored), Some(engine)) = (&b.replication, &self.engine) else { return Ok(()) };
        let cfg = ferry_store::replication::ReplicationConfig::from_stored(stored).s3()?;
        let source = ferry_store::replication::SourceRef::new(&self.region, &b.name, &b.owner.id);
        for rule in &cfg.rules {
            let d = &rule.destination;
            engine
                .check_destination(&source, &d.peer, &d.bucket, true)
                .await
                .map_err(|refused| crate::replication::config::destination_refused(&rule.id, &d.bucket, &d.peer, &refused))?;
        }
        Ok(())
    }

    /// Changes a version's retention or legal hold.
    async fn change_lock(&self, b: &BucketRecord, v: &VersionRecord, change: AttrChange) -> S3Result<()> {
        let (b, k, vid) = (b.name.clone(), v.key.clone(), v.version_id.clone());
        self.store.meta.write(move |tx| update_attrs(tx, &b, &k, &vid, change, None)).await.s3()?;
        Ok(())
    }

    pub(crate) async fn put_object_lock_configuration(
        &self,
        req: S3Request<PutObjectLockConfigurationInput>,
    ) -> S3Result<S3Response<PutObjectLockConfigurationOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        let cfg = parse_config(req.input.object_lock_configuration)?;
        if !b.object_lock() {
            self.check_lock_destinations(&b).await?;
        }
        self.store
            .meta
            .write(move |tx| {
                let mut bucket = tx.lock_bucket(&b.name)?.ok_or(ferry_store::Error::NoSuchBucket)?;
                if bucket.versioning != Versioning::Enabled {
                    return Err(ferry_store::Error::InvalidBucketState(
                        "Versioning must be 'Enabled' on the bucket to apply a Object Lock configuration".into(),
                    ));
                }
                if !bucket.object_lock() && bucket.replication != b.replication {
                    return Err(ferry_store::Error::InvalidBucketState(
                        "The bucket's replication configuration changed meanwhile: put the Object Lock configuration again"
                            .into(),
                    ));
                }
                bucket.config.object_lock = Some(cfg);
                tx.put_bucket(&bucket)
            })
            .await
            .s3()?;
        Ok(S3Response::new(PutObjectLockConfigurationOutput::default()))
    }

    pub(crate) async fn get_object_lock_configuration(
        &self,
        req: S3Request<GetObjectLockConfigurationInput>,
    ) -> S3Result<S3Response<GetObjectLockConfigurationOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        let Some(cfg) = b.config.object_lock else {
            return Err(s3_error!(
                ObjectLockConfigurationNotFoundError,
                "Object Lock configuration does not exist for this bucket"
            ));
        };
        Ok(S3Response::new(GetObjectLockConfigurationOutput {
            object_lock_configuration: Some(config_dto(&cfg)),
        }))
    }

    pub(crate) async fn put_object_retention(
        &self,
        req: S3Request<PutObjectRetentionInput>,
    ) -> S3Result<S3Response<PutObjectRetentionOutput>> {
        let i = &req.input;
        let (b, v) = self.locked_version(&req, &i.bucket, &i.key, i.version_id.as_deref()).await?;
        let retention = match i.retention.as_ref().map(|r| (&r.mode, &r.retain_until_date)) {
            None | Some((None, None)) => None,
            Some((Some(m), Some(until))) => {
                let m = mode(m.as_str(), || s3_error!(MalformedXML, "Mode must be GOVERNANCE or COMPLIANCE"))?;
                Some(future_retention(m, until)?)
            }
            Some(_) => return Err(s3_error!(MalformedXML, "A Retention must have both Mode and RetainUntilDate")),
        };
        let policy = crate::bucket_access::policy_of(&b);
        let bypass = self.may_bypass(&req, policy.as_ref(), i.bypass_governance_retention, &b, &i.key).await;
        self.change_lock(&b, &v, AttrChange::Retention { retention, bypass }).await?;
        Ok(S3Response::new(PutObjectRetentionOutput::default()))
    }

    pub(crate) async fn get_object_retention(
        &self,
        req: S3Request<GetObjectRetentionInput>,
    ) -> S3Result<S3Response<GetObjectRetentionOutput>> {
        let i = &req.input;
        let (_, v) = self.locked_version(&req, &i.bucket, &i.key, i.version_id.as_deref()).await?;
        let Some(r) = v.attrs.lock.retention else {
            return Err(s3_error!(
                NoSuchObjectLockConfiguration,
                "The specified object does not have a ObjectLock configuration"
            ));
        };
        Ok(S3Response::new(GetObjectRetentionOutput {
            retention: Some(ObjectLockRetention {
                mode: Some(ObjectLockRetentionMode::from(r.mode.as_str().to_owned())),
                retain_until_date: Some(ts(r.until_us)),
            }),
        }))
    }

    pub(crate) async fn put_object_legal_hold(
        &self,
        req: S3Request<PutObjectLegalHoldInput>,
    ) -> S3Result<S3Response<PutObjectLegalHoldOutput>> {
        let i = &req.input;
        let (b, v) = self.locked_version(&req, &i.bucket, &i.key, i.version_id.as_deref()).await?;
        let on = match i.legal_hold.as_ref().and_then(|h| h.status.as_ref()).map(ObjectLockLegalHoldStatus::as_str) {
            Some("ON") => true,
            Some("OFF") => false,
            _ => return Err(s3_error!(MalformedXML, "LegalHold Status must be ON or OFF")),
        };
        self.change_lock(&b, &v, AttrChange::LegalHold(on)).await?;
        Ok(S3Response::new(PutObjectLegalHoldOutput::default()))
    }

    pub(crate) async fn get_object_legal_hold(
        &self,
        req: S3Request<GetObjectLegalHoldInput>,
    ) -> S3Result<S3Response<GetObjectLegalHoldOutput>> {
        let i = &req.input;
        let (_, v) = self.locked_version(&req, &i.bucket, &i.key, i.version_id.as_deref()).await?;
        Ok(S3Response::new(GetObjectLegalHoldOutput {
            legal_hold: Some(ObjectLockLegalHold { status: Some(hold_status(v.attrs.lock.legal_hold)) }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mode: &str, days: Option<i32>, years: Option<i32>) -> Option<ObjectLockConfiguration> {
        Some(ObjectLockConfiguration {
            object_lock_enabled: Some(ObjectLockEnabled::from_static(ObjectLockEnabled::ENABLED)),
            rule: Some(ObjectLockRule {
                default_retention: Some(DefaultRetention {
                    mode: Some(ObjectLockRetentionMode::from(mode.to_owned())),
                    days,
                    years,
                }),
            }),
        })
    }

    fn code(r: S3Result<ObjectLockConfig>) -> String {
        r.err().map(|e| e.code().as_str().to_owned()).unwrap_or_default()
    }

    /// What S3 answers each malformed configuration with.
    #[test]
    fn configurations_are_checked_as_s3_checks_them() {
        assert!(parse_config(config("GOVERNANCE", Some(1), None)).is_ok());
        assert!(parse_config(config("COMPLIANCE", None, Some(100))).is_ok());
        assert_eq!(code(parse_config(config("GOVERNANCE", Some(1), Some(1)))), "MalformedXML");
        assert_eq!(code(parse_config(config("GOVERNANCE", None, None))), "MalformedXML");
        assert_eq!(code(parse_config(config("governance", Some(1), None))), "MalformedXML");
        assert_eq!(code(parse_config(config("GOVERNANCE", Some(0), None))), "InvalidRetentionPeriod");
        assert_eq!(code(parse_config(config("GOVERNANCE", None, Some(-1)))), "InvalidRetentionPeriod");
        assert_eq!(code(parse_config(config("GOVERNANCE", Some(36_501), None))), "InvalidRetentionPeriod");
        assert_eq!(code(parse_config(config("GOVERNANCE", None, Some(101)))), "InvalidRetentionPeriod");
        let disabled = Some(ObjectLockConfiguration {
            object_lock_enabled: Some(ObjectLockEnabled::from("Disabled".to_owned())),
            rule: None,
        });
        assert_eq!(code(parse_config(disabled)), "MalformedXML");
        assert_eq!(code(parse_config(None)), "MalformedXML");
    }
}
