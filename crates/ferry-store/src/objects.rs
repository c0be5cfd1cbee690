//! S3 versioning semantics on top of a [`WriteTx`]: which version id a write gets, what happens
//! to the `null` version, delete markers, and which version is the latest. These functions run
//! inside the caller's transaction, so everything they write commits atomically with the
//! change.
//!
//! Replication: each function records the replication jobs its change needs (per the bucket's
//! rules) in the same transaction ([`crate::replication::enqueue`]). Changes that arrive from a
//! peer (replicas, with a [`ReplicaAuthority`]) record none.
//!
//! Replica authority: a replica from a source whose account owns this bucket may do what that
//! account could do here (replace the `null` version, remove any version). A replica from
//! another account, accepted by a grant of this bucket, may only add: it may not replace,
//! remove or re-tag a version it did not bring (AccessDenied). Every replica records where it
//! came from (`attrs.origin`).
//!
//! Ordering: a key's versions order by (last-modified, version id), newest first. Local writes get
//! their last-modified from the region's commit clock, which is strictly increasing, so a later
//! write is always newer. A version written with a given id and time (a replica) takes its place
//! in that order, whatever its arrival time.
//!
//! Tags and ACLs change in place and carry the time of their last change (`tags_us`, `acl_us`,
//! the commit clock's): a replicated change is applied only if it is newer (ties broken by the
//! value), so concurrent edits in two regions end the same on both sides.

use crate::error::{Error, Result};
use crate::lock::{self, Retention};
use crate::meta::WriteTx;
use crate::model::{Acl, BodyLayout, BucketRecord, ObjectAttrs, Origin, Owner, ReplStatus, VersionRecord, Versioning};
use crate::replication::{JobOp, enqueue};
use ferry_core::ids::{NULL_VERSION_ID, new_version_id};

/// Who sends a replica, and what it may change here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaAuthority {
    /// The region and bucket it comes from.
    pub origin: Origin,
    /// The source's account owns this bucket: the replica may replace or remove any version.
    /// Otherwise (a grant to another account) only the versions that came from `origin`.
    pub owner: bool,
}

impl ReplicaAuthority {
    /// True when this source may replace, remove or re-tag `v`.
    #[must_use]
    pub fn may_change(&self, v: &VersionRecord) -> bool {
        self.owner || v.attrs.origin.as_ref() == Some(&self.origin)
    }

    fn check(&self, v: &VersionRecord) -> Result<()> {
        if self.may_change(v) {
            Ok(())
        } else {
            Err(Error::AccessDenied(format!(
                "version {} of {} was not replicated from {}/{}: a source of another account may only add versions",
                v.version_id, v.key, self.origin.region, self.origin.bucket
            )))
        }
    }
}

/// A version arriving from a peer: it keeps its version id and last-modified.
#[derive(Debug, Clone)]
pub struct ReplicaIdentity {
    pub version_id: String,
    pub mtime_us: i64,
    pub authority: ReplicaAuthority,
}

/// A version about to be written.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub storage_class: Option<String>,
    pub owner: Owner,
    pub layout: BodyLayout,
    pub attrs: ObjectAttrs,
    pub repl_status: Option<ReplStatus>,
    /// For replicas: keep this version id and last-modified instead of minting new ones.
    pub replica: Option<ReplicaIdentity>,
}

/// Conditions checked against the current version inside the transaction (conditional writes).
#[derive(Debug, Clone, Default)]
pub struct WriteConditions {
    /// Succeed only if the current version's ETag matches (`*`: if any current version exists).
    pub if_match: Option<String>,
    /// Succeed only if no current version matches (`*`: if the key has no current version).
    pub if_none_match: Option<String>,
}

/// Conditions a delete checks against the version it removes: the key's newest (delete markers
/// included) without a version id, the named version with one. When there is no such version, a
/// conditional delete succeeds and does nothing (not even a delete marker).
#[derive(Debug, Clone, Default)]
pub struct DeleteConditions {
    /// The target's ETag (`*`: any target, a delete marker too).
    pub if_match: Option<String>,
    /// The target's time, in whole seconds (the precision of the `Last-Modified` a client saw).
    pub mtime_secs: Option<i64>,
    /// The target's size in bytes.
    pub size: Option<i64>,
    /// The request asks, and may, to bypass governance retention ([`crate::lock`]). Not a
    /// condition: a locked target is refused whatever the other fields say.
    pub bypass_governance: bool,
}

impl DeleteConditions {
    /// Whether the conditions hold for `target` (a delete marker has no ETag and no size).
    fn hold_for(&self, target: &VersionRecord) -> bool {
        let body = !target.delete_marker;
        self.if_match.as_deref().is_none_or(|m| m == "*" || (body && etag_matches(m, &target.etag)))
            && self.mtime_secs.is_none_or(|s| target.mtime_us.div_euclid(1_000_000) == s)
            && self.size.is_none_or(|s| body && i64::try_from(target.size).is_ok_and(|size| size == s))
    }

    /// [`Error::PreconditionFailed`] unless the conditions hold for `target` (or it is absent).
    fn check(&self, target: Option<&VersionRecord>) -> Result<()> {
        match target {
            Some(v) if !self.hold_for(v) => Err(Error::PreconditionFailed),
            _ => Ok(()),
        }
    }

    fn is_empty(&self) -> bool {
        self.if_match.is_none() && self.mtime_secs.is_none() && self.size.is_none()
    }
}

/// The bucket, or [`Error::NoSuchBucket`].
///
/// # Errors
/// NoSuchBucket, or a database error.
pub fn bucket(tx: &dyn WriteTx, name: &str) -> Result<BucketRecord> {
    tx.get_bucket(name)?.ok_or(Error::NoSuchBucket)
}

fn check_conditions(tx: &dyn WriteTx, bucket: &str, key: &str, cond: &WriteConditions) -> Result<()> {
    if cond.if_match.is_none() && cond.if_none_match.is_none() {
        return Ok(());
    }
    let current = tx.get_latest(bucket, key)?.filter(|v| !v.delete_marker);
    if let Some(m) = &cond.if_match {
        match &current {
            None => return Err(Error::NoSuchKey),
            Some(v) if m != "*" && !etag_matches(m, &v.etag) => return Err(Error::PreconditionFailed),
            Some(_) => {}
        }
    }
    if let Some(m) = &cond.if_none_match
        && let Some(v) = &current
        && (m == "*" || etag_matches(m, &v.etag))
    {
        return Err(Error::PreconditionFailed);
    }
    Ok(())
}

/// Compares an ETag from a header (quoted or not, possibly a comma-separated list) with a stored one.
#[must_use]
pub fn etag_matches(header: &str, stored: &str) -> bool {
    header.split(',').map(|t| t.trim().trim_start_matches("W/").trim_matches('"')).any(|t| t == "*" || t == stored)
}

/// Releases the blobs of a version that is being removed.
fn release_layout(tx: &mut dyn WriteTx, layout: &BodyLayout) -> Result<()> {
    for b in layout.blobs() {
        crate::gc::release_blob(tx, &b)?;
    }
    Ok(())
}

/// Removes the `null` version of a key, if any (overwritten by an unversioned/suspended write).
///
/// Only a replica replaces the `null` version of a bucket with Object Lock (whose versioning
/// stays Enabled); [`put_version`] checks its lock first.
fn remove_null(tx: &mut dyn WriteTx, bucket: &str, key: &str) -> Result<()> {
    if let Some(old) = tx.remove_version(bucket, key, NULL_VERSION_ID)? {
        release_layout(tx, &old.layout)?;
    }
    Ok(())
}

/// Writes a new object version as PutObject / CopyObject / CompleteMultipartUpload do, following
/// the bucket's versioning state. Returns the stored record.
///
/// With `identity` set (a replica), writing a version id that already exists is a no-op that
/// returns the existing record: applying the same replica twice is harmless.
///
/// # Errors
/// NoSuchBucket, NoSuchKey / PreconditionFailed from `cond`, database errors.
pub fn put_version(tx: &mut dyn WriteTx, bucket_name: &str, new: NewVersion, cond: &WriteConditions) -> Result<VersionRecord> {
    let b = bucket(tx, bucket_name)?;
    // Before the conditions are read and the commit time taken (several nodes may write it).
    tx.lock_key(bucket_name, &new.key)?;
    check_conditions(tx, bucket_name, &new.key, cond)?;
    let (version_id, mtime_us) = match &new.replica {
        Some(r) => {
            let (vid, mtime) = (&r.version_id, r.mtime_us);
            if let Some(existing) = tx.get_version(bucket_name, &new.key, vid)? {
                // The same version again: only its tags and ACL may be newer. Two different
                // `null` versions (written on both sides while versioning was off): the later
                // one wins, on both sides.
                if vid != NULL_VERSION_ID || existing.mtime_us >= mtime {
                    return merge_replica_attrs(tx, &b, existing, &new, r);
                }
                r.authority.check(&existing)?;
            }
            check_replica_target(&b)?;
            if new.attrs.lock.is_set() && !b.object_lock() {
                return Err(no_lock_for_replica(&b));
            }
            // The times of its tag, ACL and lock changes too: a later change here must be later.
            let a = &new.attrs;
            tx.observe_time(
                [a.tags_us, a.acl_us, a.lock.retention_us, a.lock.legal_hold_us].into_iter().flatten().fold(mtime, i64::max),
            );
            if vid == NULL_VERSION_ID {
                if let Some(old) = tx.get_version(bucket_name, &new.key, NULL_VERSION_ID)? {
                    let now = tx.now();
                    lock::check_removable(&old, now, false)?;
                }
                remove_null(tx, bucket_name, &new.key)?;
            }
            (vid.clone(), mtime)
        }
        None => {
            let now = tx.now();
            if b.versioning.is_enabled() {
                (new_version_id(), now)
            } else {
                remove_null(tx, bucket_name, &new.key)?;
                (NULL_VERSION_ID.to_owned(), now)
            }
        }
    };
    for blob in new.layout.blobs() {
        tx.add_blob(&blob)?;
    }
    let mut attrs = new.attrs;
    if let Some(r) = &new.replica {
        attrs.origin = Some(r.authority.origin.clone());
    } else if attrs.lock.retention.is_none()
        && let Some(default) = b.config.object_lock.and_then(|l| l.default)
    {
        // A replica keeps its source's lock as it is; a write here gets the bucket's default.
        attrs.lock.retention = Some(default.from(mtime_us));
    }
    let record = VersionRecord {
        bucket: bucket_name.to_owned(),
        key: new.key,
        version_id,
        mtime_us,
        is_latest: false,
        delete_marker: false,
        size: new.size,
        etag: new.etag,
        storage_class: new.storage_class,
        owner: new.owner,
        repl_status: new.repl_status,
        layout: new.layout,
        attrs,
    };
    tx.put_version(&record)?;
    tx.refresh_latest(bucket_name, &record.key)?;
    if new.replica.is_none() {
        let jobs = enqueue(tx, &b, &record, JobOp::Put)?;
        // Known without reading it back: a client's version is the key's latest (its time
        // follows every version of the key), and PENDING when it has jobs.
        let repl_status = if jobs > 0 { Some(ReplStatus::Pending) } else { record.repl_status };
        return Ok(VersionRecord { is_latest: true, repl_status, ..record });
    }
    let stored = tx.get_version(bucket_name, &record.key, &record.version_id)?.unwrap_or(record);
    Ok(stored)
}

/// The refusal of a locked replica by a bucket without Object Lock (it could not keep the lock).
fn no_lock_for_replica(b: &BucketRecord) -> Error {
    Error::InvalidRequest(format!(
        "the version is locked and bucket {} has no Object Lock: a locked version can only be replicated into a bucket with Object Lock enabled",
        b.name
    ))
}

/// Replicas go only into buckets with versioning enabled (they carry their version ids).
fn check_replica_target(b: &BucketRecord) -> Result<()> {
    if b.versioning.is_enabled() {
        Ok(())
    } else {
        Err(Error::InvalidBucketState(format!(
            "versioning is not enabled on bucket {}: replicas need a versioned destination",
            b.name
        )))
    }
}

/// Writes a delete marker that arrived from a peer, with its version id and time. Idempotent:
/// a marker (or version) with that id already there is left as is.
///
/// # Errors
/// NoSuchBucket, InvalidBucketState (versioning not enabled), database errors.
pub fn put_replica_delete_marker(
    tx: &mut dyn WriteTx,
    bucket_name: &str,
    key: &str,
    r: &ReplicaIdentity,
    owner: Owner,
) -> Result<VersionRecord> {
    let b = bucket(tx, bucket_name)?;
    if let Some(existing) = tx.get_version(bucket_name, key, &r.version_id)? {
        return Ok(existing);
    }
    check_replica_target(&b)?;
    tx.observe_time(r.mtime_us);
    let mut marker = VersionRecord {
        repl_status: Some(ReplStatus::Replica),
        ..delete_marker(bucket_name, key, r.version_id.clone(), r.mtime_us, owner)
    };
    marker.attrs.origin = Some(r.authority.origin.clone());
    let version_id = &r.version_id;
    tx.put_version(&marker)?;
    tx.refresh_latest(bucket_name, key)?;
    Ok(tx.get_version(bucket_name, key, version_id)?.unwrap_or(marker))
}

/// What a DeleteObject without a version id did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteOutcome {
    /// The delete marker created, if any (its version id and time).
    pub marker: Option<VersionRecord>,
}

/// DeleteObject without a version id: a delete marker in a versioned bucket (replacing the `null`
/// version when suspended), removal of the `null` version in an unversioned one.
///
/// # Errors
/// NoSuchBucket, PreconditionFailed from `cond`, database errors.
pub fn delete_current(
    tx: &mut dyn WriteTx,
    bucket_name: &str,
    key: &str,
    owner: &Owner,
    cond: &DeleteConditions,
) -> Result<DeleteOutcome> {
    let b = bucket(tx, bucket_name)?;
    tx.lock_key(bucket_name, key)?;
    if !cond.is_empty() {
        let Some(latest) = tx.get_latest(bucket_name, key)? else {
            return Ok(DeleteOutcome { marker: None });
        };
        cond.check(Some(&latest))?;
    }
    let Some(marker) = hide_current(tx, &b, key, owner, false)? else { return Ok(DeleteOutcome { marker: None }) };
    enqueue(tx, &b, &marker, JobOp::DeleteMarker)?;
    Ok(DeleteOutcome { marker: Some(VersionRecord { is_latest: true, ..marker }) })
}

/// What a DeleteObject without a version id does to `key`, as the bucket's versioning says: a
/// delete marker (returned) in a versioned bucket, replacing the `null` version when suspended;
/// removal of the `null` version in an unversioned one. `lifecycle`: the marker is a lifecycle
/// rule's. Records no replication job.
fn hide_current(
    tx: &mut dyn WriteTx,
    b: &BucketRecord,
    key: &str,
    owner: &Owner,
    lifecycle: bool,
) -> Result<Option<VersionRecord>> {
    let now = tx.now();
    let version_id = match b.versioning {
        Versioning::Unversioned => {
            remove_null(tx, &b.name, key)?;
            tx.refresh_latest(&b.name, key)?;
            return Ok(None);
        }
        Versioning::Enabled => new_version_id(),
        Versioning::Suspended => {
            remove_null(tx, &b.name, key)?;
            NULL_VERSION_ID.to_owned()
        }
    };
    let mut marker = delete_marker(&b.name, key, version_id, now, owner.clone());
    marker.attrs.lifecycle = lifecycle;
    tx.put_version(&marker)?;
    tx.refresh_latest(&b.name, key)?;
    Ok(Some(marker))
}

/// A delete-marker record.
#[must_use]
pub fn delete_marker(bucket: &str, key: &str, version_id: String, mtime_us: i64, owner: Owner) -> VersionRecord {
    VersionRecord {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        version_id,
        mtime_us,
        is_latest: false,
        delete_marker: true,
        size: 0,
        etag: String::new(),
        storage_class: None,
        owner,
        repl_status: None,
        layout: BodyLayout::Inline(Vec::new()),
        attrs: ObjectAttrs::default(),
    }
}

/// DeleteObject with a version id: removes that version (or delete marker) for good.
/// Returns the removed record; `None` when it did not exist (S3 answers success anyway).
/// `from`: the deletion was replicated here (it is not replicated further), by this source.
///
/// # Errors
/// NoSuchBucket, AccessDenied (a replica removing a version its source may not change),
/// PreconditionFailed from `cond`, database errors.
pub fn delete_version(
    tx: &mut dyn WriteTx,
    bucket_name: &str,
    key: &str,
    version_id: &str,
    from: Option<&ReplicaAuthority>,
    cond: &DeleteConditions,
) -> Result<Option<VersionRecord>> {
    let b = bucket(tx, bucket_name)?;
    if from.is_some() || !cond.is_empty() || b.object_lock() {
        let target = tx.get_version(bucket_name, key, version_id)?;
        cond.check(target.as_ref())?;
        if let (Some(a), Some(v)) = (from, &target) {
            a.check(v)?;
        }
        if let Some(v) = &target {
            let now = tx.now();
            lock::check_removable(v, now, cond.bypass_governance)?;
        }
    }
    let removed = tx.remove_version(bucket_name, key, version_id)?;
    if let Some(v) = &removed {
        release_layout(tx, &v.layout)?;
        tx.refresh_latest(bucket_name, key)?;
        if from.is_none() {
            enqueue(tx, &b, v, JobOp::DeleteVersion)?;
        }
    }
    Ok(removed)
}

/// What a lifecycle rule did to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A delete marker now hides the current version (a versioned bucket).
    Marked,
    /// A version or delete marker was removed for good.
    Removed,
    /// Nothing: the version is no longer what the rule decided about.
    Unchanged,
    /// Nothing: the version is under a legal hold or a retention in force ([`crate::lock`]).
    Locked,
    /// The version's storage class was changed (a transition).
    Moved,
}

/// A lifecycle expiration of the current version `version_id` of `key`: a delete marker in a
/// versioned bucket (replacing the `null` version when suspended), removal in an unversioned
/// one. Nothing happens unless the version `version_id` written at `mtime_us` is still the
/// key's current version (not a delete marker): a `null` version overwritten since it was
/// judged has the same id but not the same time. Never replicated: lifecycle actions are each
/// region's own (the marker says so, for backfills).
///
/// # Errors
/// NoSuchBucket, database errors.
pub fn expire_current(tx: &mut dyn WriteTx, bucket_name: &str, key: &str, version_id: &str, mtime_us: i64) -> Result<Expired> {
    let b = bucket(tx, bucket_name)?;
    tx.lock_key(bucket_name, key)?;
    match tx.get_latest(bucket_name, key)? {
        Some(v) if v.version_id == version_id && v.mtime_us == mtime_us && !v.delete_marker => {}
        _ => return Ok(Expired::Unchanged),
    }
    Ok(match hide_current(tx, &b, key, &b.owner, true)? {
        Some(_) => Expired::Marked,
        None => Expired::Removed,
    })
}

/// A lifecycle removal of a noncurrent version, or of a delete marker that is its key's only
/// version (`lone_marker`), as judged when it was written at `mtime_us`. Nothing happens unless
/// that is still what it is. Never replicated.
///
/// # Errors
/// NoSuchBucket, database errors.
pub fn expire_version(
    tx: &mut dyn WriteTx,
    bucket_name: &str,
    key: &str,
    version_id: &str,
    mtime_us: i64,
    lone_marker: bool,
) -> Result<Expired> {
    bucket(tx, bucket_name)?;
    tx.lock_key(bucket_name, key)?;
    let Some(v) = tx.get_version(bucket_name, key, version_id)?.filter(|v| v.mtime_us == mtime_us) else {
        return Ok(Expired::Unchanged);
    };
    let latest = tx.get_latest(bucket_name, key)?.is_some_and(|l| l.version_id == v.version_id);
    let still = if lone_marker {
        // The key's first two versions (keys it prefixes sort after it).
        let end = crate::meta::prefix_end(key.as_bytes());
        let versions =
            tx.scan_versions(bucket_name, key.as_bytes(), &crate::meta::VersionCursor::default(), end.as_deref(), 2)?;
        latest && v.delete_marker && versions.iter().filter(|e| e.key == key).count() == 1
    } else {
        !latest
    };
    if !still {
        return Ok(Expired::Unchanged);
    }
    let now = tx.now();
    if lock::is_protected(&v, now) {
        return Ok(Expired::Locked);
    }
    if let Some(removed) = tx.remove_version(bucket_name, key, version_id)? {
        release_layout(tx, &removed.layout)?;
        tx.refresh_latest(bucket_name, key)?;
    }
    Ok(Expired::Removed)
}

/// A lifecycle transition of the version `version_id` of `key`, written at `mtime_us`, to
/// `class`: its storage class changes, nothing else (every class is on the same disks). Nothing
/// happens unless the version is still what the rule judged (current or not, as `current`
/// says; not a delete marker) and `class` is further down S3's order than its class now
/// ([`crate::lifecycle::class_rank`]). A lock does not stop it, as on S3. Never replicated.
///
/// # Errors
/// NoSuchBucket, database errors.
pub fn transition_version(
    tx: &mut dyn WriteTx,
    bucket_name: &str,
    key: &str,
    version_id: &str,
    mtime_us: i64,
    current: bool,
    class: &str,
) -> Result<Expired> {
    use crate::lifecycle::class_rank;
    bucket(tx, bucket_name)?;
    tx.lock_key(bucket_name, key)?;
    let still = tx.get_version(bucket_name, key, version_id)?.filter(|v| {
        v.mtime_us == mtime_us
            && !v.delete_marker
            && v.is_latest == current
            && class_rank(Some(class)) > class_rank(v.storage_class.as_deref())
    });
    if still.is_none() {
        return Ok(Expired::Unchanged);
    }
    tx.set_storage_class(bucket_name, key, version_id, class)?;
    Ok(Expired::Moved)
}

/// Aborts a multipart upload: its parts are released, the upload forgotten.
///
/// # Errors
/// NoSuchUpload, database errors.
pub fn abort_upload(tx: &mut dyn WriteTx, upload_id: &str) -> Result<()> {
    if tx.get_upload(upload_id)?.is_none() {
        return Err(Error::NoSuchUpload);
    }
    for p in tx.take_parts(upload_id)? {
        crate::gc::release_blob(tx, &p.part.blob)?;
    }
    tx.delete_upload(upload_id)
}

/// A change of a version's attributes in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrChange {
    Tags(Vec<(String, String)>),
    Acl(Acl),
    /// A new Object Lock retention (`None`: removed). `bypass`: the request asks, and may, to
    /// bypass governance retention.
    Retention {
        retention: Option<Retention>,
        bypass: bool,
    },
    LegalHold(bool),
}

/// A tag or ACL change that arrived from a peer: who sent it, and when it was made there.
#[derive(Debug, Clone)]
pub struct ReplicaChange {
    pub authority: ReplicaAuthority,
    pub changed_us: i64,
}

/// Changes a version's tags or ACL in place. A local change is stamped with a fresh commit
/// time and records the replication jobs it needs. A change from a peer (`from`) is applied
/// only if it is newer than what is here (last writer wins, ties broken by the value), and is
/// not replicated further. Returns the version as it now is.
///
/// # Errors
/// NoSuchBucket, NoSuchVersion, AccessDenied (a replica changing a version its source may not
/// change), database errors.
pub fn update_attrs(
    tx: &mut dyn WriteTx,
    bucket_name: &str,
    key: &str,
    version_id: &str,
    change: AttrChange,
    from: Option<&ReplicaChange>,
) -> Result<VersionRecord> {
    let b = bucket(tx, bucket_name)?;
    if matches!(change, AttrChange::Retention { .. } | AttrChange::LegalHold(_)) && !b.object_lock() {
        return Err(Error::InvalidRequest(format!("bucket {} has no Object Lock configuration", b.name)));
    }
    let mut v = tx.get_version(bucket_name, key, version_id)?.ok_or(Error::NoSuchVersion)?;
    if let Some(r) = from {
        r.authority.check(&v)?;
        tx.observe_time(r.changed_us);
    }
    // A change made here is stamped with the commit clock, and judged against it too.
    let now = tx.now();
    let stamp = from.map_or(now, |r| r.changed_us);
    if !apply_change(&mut v, change, stamp, from.map(|r| &r.authority), now)? {
        return Ok(v);
    }
    tx.set_version_attrs(bucket_name, key, version_id, &v.attrs)?;
    if from.is_none() {
        enqueue(tx, &b, &v, JobOp::Metadata)?;
    }
    Ok(v)
}

/// Applies a change made at `stamp` to `v`: a change made here always, one that arrived from a
/// peer (`from`) if it is newer than what `v` holds (ties broken by the value). Returns whether
/// `v` changed.
///
/// Object Lock: a change made here must be one the retention in force at `now_us` allows
/// ([`lock::check_retention_change`]). One from a peer is merged so that it never weakens what
/// its source may not weaken here ([`lock::merge_replica_retention`],
/// [`lock::merge_replica_legal_hold`]).
///
/// # Errors
/// AccessDenied for a retention change made here that the retention in force forbids.
fn apply_change(
    v: &mut VersionRecord,
    change: AttrChange,
    stamp: i64,
    from: Option<&ReplicaAuthority>,
    now_us: i64,
) -> Result<bool> {
    let local = from.is_none();
    let same_account = from.is_some_and(|a| a.owner);
    let a = &mut v.attrs;
    let written_us = v.mtime_us;
    let newer = match &change {
        AttrChange::Tags(tags) => (stamp, tags) > (a.tags_us.unwrap_or(written_us), &a.tags),
        AttrChange::Acl(acl) => {
            let text = |a: &Acl| serde_json::to_string(a).unwrap_or_default();
            (stamp, text(acl)) > (a.acl_us.unwrap_or(written_us), text(&a.acl))
        }
        AttrChange::Retention { retention, .. } => {
            (stamp, retention) > (a.lock.retention_us.unwrap_or(written_us), &a.lock.retention)
        }
        AttrChange::LegalHold(on) => (stamp, *on) > (a.lock.legal_hold_us.unwrap_or(written_us), a.lock.legal_hold),
    };
    let l = &mut a.lock;
    Ok(match change {
        AttrChange::Retention { retention, bypass } if local => {
            lock::check_retention_change(l.retention.as_ref(), retention.as_ref(), now_us, bypass)?;
            set_stamped(&mut l.retention, &mut l.retention_us, retention, stamp)
        }
        AttrChange::LegalHold(on) if local => set_stamped(&mut l.legal_hold, &mut l.legal_hold_us, on, stamp),
        AttrChange::Retention { retention, .. } => {
            let kept = lock::merge_replica_retention(l.retention, retention, newer, same_account, now_us);
            merge_stamped(&mut l.retention, &mut l.retention_us, kept, stamp, written_us)
        }
        AttrChange::LegalHold(on) => {
            let kept = lock::merge_replica_legal_hold(l.legal_hold, on, newer, same_account);
            merge_stamped(&mut l.legal_hold, &mut l.legal_hold_us, kept, stamp, written_us)
        }
        _ if !local && !newer => false,
        AttrChange::Tags(tags) => set_stamped(&mut a.tags, &mut a.tags_us, tags, stamp),
        AttrChange::Acl(acl) => set_stamped(&mut a.acl, &mut a.acl_us, acl, stamp),
    })
}

/// Sets an attribute and the time of its change; true (the version changed).
fn set_stamped<T>(value: &mut T, at: &mut Option<i64>, new: T, stamp: i64) -> bool {
    (*value, *at) = (new, Some(stamp));
    true
}

/// Keeps `kept` (a lock setting merged from a peer's) with the later of the two change times;
/// whether anything changed. `written_us`: the version's time, the change time of a setting
/// never changed since.
fn merge_stamped<T: PartialEq>(value: &mut T, at: &mut Option<i64>, kept: T, stamp: i64, written_us: i64) -> bool {
    let before = at.unwrap_or(written_us);
    let after = before.max(stamp);
    if kept == *value && after == before {
        return false;
    }
    (*value, *at) = (kept, Some(after));
    true
}

/// A replica of a version that is here already (a duplicate delivery, or a whole version sent
/// again for a tag or ACL change): its tags, ACL and lock are the source's current ones, each
/// applied if newer, as a metadata replica would be.
fn merge_replica_attrs(
    tx: &mut dyn WriteTx,
    b: &BucketRecord,
    existing: VersionRecord,
    new: &NewVersion,
    r: &ReplicaIdentity,
) -> Result<VersionRecord> {
    if existing.delete_marker || !r.authority.may_change(&existing) {
        return Ok(existing);
    }
    let mut v = existing;
    let a = &new.attrs;
    let at = |stamp: Option<i64>| stamp.unwrap_or(r.mtime_us);
    let mut changes = vec![(AttrChange::Tags(a.tags.clone()), at(a.tags_us)), (AttrChange::Acl(a.acl.clone()), at(a.acl_us))];
    if b.object_lock() {
        changes.push((
            AttrChange::Retention { retention: a.lock.retention, bypass: false },
            at(a.lock.retention_us),
        ));
        changes.push((AttrChange::LegalHold(a.lock.legal_hold), at(a.lock.legal_hold_us)));
    } else if a.lock.is_set() {
        return Err(no_lock_for_replica(b));
    }
    tx.observe_time(changes.iter().map(|c| c.1).max().unwrap_or(r.mtime_us));
    let now = tx.now();
    let mut changed = false;
    for (change, stamp) in changes {
        changed |= apply_change(&mut v, change, stamp, Some(&r.authority), now)?;
    }
    if changed {
        tx.set_version_attrs(&v.bucket, &v.key, &v.version_id, &v.attrs)?;
    }
    Ok(v)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::meta::VersionCursor;
    use crate::meta::sqlite::SqliteMeta;
    use crate::model::Acl;

    fn owner() -> Owner {
        Owner { id: "u1".into(), display_name: "one".into() }
    }

    fn new_bucket(name: &str, versioning: Versioning) -> BucketRecord {
        BucketRecord {
            name: name.into(),
            created_us: 1,
            owner: owner(),
            versioning,
            acl: Acl::private(&owner()),
            tagging: None,
            replication: None,
            replica_sources: Vec::new(),
            config: Default::default(),
        }
    }

    fn obj(key: &str, body: &[u8]) -> NewVersion {
        NewVersion {
            key: key.into(),
            size: body.len() as u64,
            etag: format!("etag-{}", String::from_utf8_lossy(body)),
            storage_class: None,
            owner: owner(),
            layout: BodyLayout::Inline(body.to_vec()),
            attrs: ObjectAttrs::default(),
            repl_status: None,
            replica: None,
        }
    }

    pub(crate) fn replica_identity(version_id: &str, mtime_us: i64) -> ReplicaIdentity {
        ReplicaIdentity {
            version_id: version_id.into(),
            mtime_us,
            authority: ReplicaAuthority { origin: Origin { region: "eu".into(), bucket: "o".into() }, owner: true },
        }
    }

    async fn setup(versioning: Versioning) -> (tempfile::TempDir, SqliteMeta) {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(&dir.path().join("meta.db"), None).unwrap();
        meta.write(move |tx| tx.put_bucket(&new_bucket("b", versioning))).await.unwrap();
        (dir, meta)
    }

    /// Object Lock in the write paths: a locked version cannot be removed by a version delete
    /// (not even a replica's `null` version replacing it), a replicated change never weakens
    /// COMPLIANCE retention (and fails nothing), another account's source may not lift a hold,
    /// and a replica carrying a lock is refused by a bucket without Object Lock.
    #[tokio::test]
    async fn locks_hold_in_every_write_path() {
        use crate::lock::{LockMode, ObjectLockConfig, Retention};
        let (_d, meta) = setup(Versioning::Enabled).await;
        let far = ferry_core::time::now_micros() + 3_600_000_000;
        meta.write(|tx| {
            let mut b = bucket(tx, "b")?;
            b.config.object_lock = Some(ObjectLockConfig::default());
            tx.put_bucket(&b)
        })
        .await
        .unwrap();
        let compliance = |until_us| Some(Retention { mode: LockMode::Compliance, until_us });
        // A replica `null` version, locked, then another replica `null` version over it.
        let mut locked = obj("n", b"first");
        locked.attrs.lock.retention = compliance(far);
        locked.replica = Some(replica_identity(NULL_VERSION_ID, 10));
        meta.write(move |tx| put_version(tx, "b", locked, &WriteConditions::default())).await.unwrap();
        let mut over = obj("n", b"second");
        over.replica = Some(replica_identity(NULL_VERSION_ID, 20));
        let e = meta.write(move |tx| put_version(tx, "b", over, &WriteConditions::default())).await.unwrap_err();
        assert!(matches!(e, Error::AccessDenied(_)), "{e:?}");
        let e =
            meta.write(|tx| delete_version(tx, "b", "n", NULL_VERSION_ID, None, &DeleteConditions::default())).await.unwrap_err();
        assert!(matches!(e, Error::AccessDenied(_)), "{e:?}");
        // A newer replicated change to a shorter COMPLIANCE date keeps the longer one.
        let change = |authority: ReplicaAuthority, changed_us| ReplicaChange { authority, changed_us };
        let same = replica_identity("x", 0).authority;
        let shorter = AttrChange::Retention { retention: compliance(far - 1_000_000), bypass: false };
        let v =
            meta.write(move |tx| update_attrs(tx, "b", "n", NULL_VERSION_ID, shorter, Some(&change(same, far)))).await.unwrap();
        assert_eq!(v.attrs.lock.retention, compliance(far));
        // Another account's source: may add a hold, never lift one.
        let other = ReplicaAuthority { origin: Origin { region: "eu".into(), bucket: "o".into() }, owner: false };
        let (o1, o2) = (other.clone(), other);
        let v = meta
            .write(move |tx| update_attrs(tx, "b", "n", NULL_VERSION_ID, AttrChange::LegalHold(true), Some(&change(o1, 30))))
            .await
            .unwrap();
        assert!(v.attrs.lock.legal_hold);
        let v = meta
            .write(move |tx| update_attrs(tx, "b", "n", NULL_VERSION_ID, AttrChange::LegalHold(false), Some(&change(o2, 40))))
            .await
            .unwrap();
        assert!(v.attrs.lock.legal_hold, "another account lifted a hold");
        // A bucket without Object Lock refuses a locked replica.
        meta.write(|tx| tx.put_bucket(&new_bucket("plain", Versioning::Enabled))).await.unwrap();
        let mut held = obj("k", b"held");
        held.attrs.lock.legal_hold = true;
        held.replica = Some(replica_identity("v1", 50));
        let e = meta.write(move |tx| put_version(tx, "plain", held, &WriteConditions::default())).await.unwrap_err();
        assert!(matches!(e, Error::InvalidRequest(_)), "{e:?}");
    }

    /// hyper drops a request's future when its client disconnects; if that happens while the
    /// write is in the metadata writer's hands, the row commits anyway, and its blob file must
    /// survive (it once was deleted by the dropped future's guard: a committed version without
    /// data).
    #[tokio::test]
    async fn a_caller_that_goes_away_mid_commit_leaves_no_version_without_data() {
        use futures::FutureExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(dir.path(), 0).unwrap();
        store.meta.write(|tx| tx.put_bucket(&new_bucket("b", Versioning::Enabled))).await.unwrap();
        let mut dropped = 0;
        for i in 0..20 {
            let body = bytes::Bytes::from(format!("body {i}"));
            let stream = futures::stream::iter([Ok::<_, std::io::Error>(body.clone())]);
            let (ingested, digest) = store.ingest(stream, &[], Some(body.len() as u64), 1 << 20, false, None).await.unwrap();
            let new = NewVersion { layout: ingested.layout(digest.len, &digest.md5_hex()), ..obj("k", &body) };
            let write = store.write_with_body(ingested, move |tx| put_version(tx, "b", new, &WriteConditions::default()));
            // One poll hands the transaction to the writer; then the caller goes away.
            if write.now_or_never().is_none() {
                dropped += 1;
            }
        }
        assert!(dropped > 0, "every write finished within its first poll: nothing was dropped mid-commit");
        // The writer is FIFO: once this commits, so have the abandoned writes.
        store.meta.write(|_| Ok(())).await.unwrap();
        let versions = store.meta.read(|r| r.scan_versions("b", b"", &VersionCursor::default(), None, 100)).await.unwrap();
        assert_eq!(versions.len(), 20);
        for v in versions {
            let rec = store.meta.read(move |r| r.get_version("b", "k", &v.version_id)).await.unwrap().unwrap();
            for blob in rec.layout.blobs() {
                assert!(
                    store.blobs.exists(&blob).await.unwrap(),
                    "version {} lost its data file {blob}",
                    rec.version_id
                );
            }
        }
    }

    /// A lifecycle expiration judged on one `null` version never removes the one that replaced
    /// it (same id, later time): an acknowledged overwrite made between the worker's scan and
    /// its action stays.
    #[tokio::test]
    async fn an_expiration_spares_a_null_version_written_since_it_was_judged() {
        for versioning in [Versioning::Unversioned, Versioning::Suspended] {
            let (_d, meta) = setup(versioning).await;
            let judged = meta.write(|tx| put_version(tx, "b", obj("k", b"old"), &WriteConditions::default())).await.unwrap();
            let newer = meta.write(|tx| put_version(tx, "b", obj("k", b"new"), &WriteConditions::default())).await.unwrap();
            assert_eq!(judged.version_id, newer.version_id, "both are the null version");
            let (vid, at) = (judged.version_id.clone(), judged.mtime_us);
            let out = meta.write(move |tx| expire_current(tx, "b", "k", &vid, at)).await.unwrap();
            assert_eq!(out, Expired::Unchanged);
            let (vid, at) = (judged.version_id.clone(), judged.mtime_us);
            let out = meta.write(move |tx| expire_version(tx, "b", "k", &vid, at, true)).await.unwrap();
            assert_eq!(out, Expired::Unchanged);
            let latest = meta.read(|r| r.get_latest("b", "k")).await.unwrap().unwrap();
            assert_eq!((latest.etag.as_str(), latest.delete_marker), ("etag-new", false), "{versioning:?}");
            // Judged on what is there now, it expires; in a suspended bucket the marker is
            // marked as lifecycle's own.
            let (vid, at) = (newer.version_id.clone(), newer.mtime_us);
            let out = meta.write(move |tx| expire_current(tx, "b", "k", &vid, at)).await.unwrap();
            let latest = meta.read(|r| r.get_latest("b", "k")).await.unwrap();
            match versioning {
                Versioning::Unversioned => assert_eq!((out, latest), (Expired::Removed, None)),
                _ => {
                    assert_eq!(out, Expired::Marked);
                    let m = latest.unwrap();
                    assert!(m.delete_marker && m.attrs.lifecycle, "{m:?}");
                }
            }
        }
    }

    #[tokio::test]
    async fn versioned_puts_keep_history_and_latest() {
        let (_d, meta) = setup(Versioning::Enabled).await;
        let v1 = meta.write(|tx| put_version(tx, "b", obj("k", b"one"), &WriteConditions::default())).await.unwrap();
        let v2 = meta.write(|tx| put_version(tx, "b", obj("k", b"two"), &WriteConditions::default())).await.unwrap();
        assert_ne!(v1.version_id, v2.version_id);
        assert!(v2.mtime_us > v1.mtime_us);
        assert!(v2.is_latest);
        let dm =
            meta.write(|tx| delete_current(tx, "b", "k", &owner(), &DeleteConditions::default())).await.unwrap().marker.unwrap();
        let versions = meta.read(|r| r.scan_versions("b", b"", &VersionCursor::default(), None, 100)).await.unwrap();
        let ids: Vec<_> = versions.iter().map(|v| (v.version_id.clone(), v.is_latest, v.delete_marker)).collect();
        assert_eq!(
            ids,
            vec![
                (dm.version_id.clone(), true, true),
                (v2.version_id.clone(), false, false),
                (v1.version_id.clone(), false, false)
            ]
        );
        assert!(
            meta.read(|r| r.scan_latest("b", b"", false, None, 10)).await.unwrap().is_empty(),
            "deleted key is not listed"
        );
        // Removing the delete marker brings v2 back.
        let dmid = dm.version_id.clone();
        meta.write(move |tx| delete_version(tx, "b", "k", &dmid, None, &DeleteConditions::default())).await.unwrap();
        let latest = meta.read(|r| r.get_latest("b", "k")).await.unwrap().unwrap();
        assert_eq!(latest.version_id, v2.version_id);
        assert!(latest.is_latest);
        // Cursor continues after a given version.
        let cur = VersionCursor { after_key: Some("k".into()), after_version: Some((v2.mtime_us, v2.version_id.clone())) };
        let rest = meta.read(move |r| r.scan_versions("b", b"", &cur, None, 10)).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].version_id, v1.version_id);
    }

    #[tokio::test]
    async fn suspended_and_unversioned_writes_replace_the_null_version() {
        let (_d, meta) = setup(Versioning::Unversioned).await;
        meta.write(|tx| put_version(tx, "b", obj("k", b"one"), &WriteConditions::default())).await.unwrap();
        let v = meta.write(|tx| put_version(tx, "b", obj("k", b"two"), &WriteConditions::default())).await.unwrap();
        assert_eq!(v.version_id, "null");
        let all = meta.read(|r| r.scan_versions("b", b"", &VersionCursor::default(), None, 10)).await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].etag, "etag-two");
        let out = meta.write(|tx| delete_current(tx, "b", "k", &owner(), &DeleteConditions::default())).await.unwrap();
        assert!(out.marker.is_none());
        assert!(!meta.read(|r| r.bucket_has_versions("b")).await.unwrap());

        // Enabled, then suspended: the versioned one stays, the null one is replaced by a null marker.
        meta.write(|tx| {
            let mut b = bucket(tx, "b")?;
            b.versioning = Versioning::Enabled;
            tx.put_bucket(&b)
        })
        .await
        .unwrap();
        let kept = meta.write(|tx| put_version(tx, "b", obj("k", b"v"), &WriteConditions::default())).await.unwrap();
        meta.write(|tx| {
            let mut b = bucket(tx, "b")?;
            b.versioning = Versioning::Suspended;
            tx.put_bucket(&b)
        })
        .await
        .unwrap();
        meta.write(|tx| put_version(tx, "b", obj("k", b"n1"), &WriteConditions::default())).await.unwrap();
        meta.write(|tx| put_version(tx, "b", obj("k", b"n2"), &WriteConditions::default())).await.unwrap();
        let dm =
            meta.write(|tx| delete_current(tx, "b", "k", &owner(), &DeleteConditions::default())).await.unwrap().marker.unwrap();
        assert_eq!(dm.version_id, "null");
        let all = meta.read(|r| r.scan_versions("b", b"", &VersionCursor::default(), None, 10)).await.unwrap();
        let ids: Vec<_> = all.iter().map(|v| (v.version_id.as_str(), v.delete_marker)).collect();
        assert_eq!(ids, vec![("null", true), (kept.version_id.as_str(), false)]);
    }

    #[tokio::test]
    async fn conditions_and_failed_closures_roll_back() {
        let (_d, meta) = setup(Versioning::Enabled).await;
        let cond = WriteConditions { if_none_match: Some("*".into()), ..Default::default() };
        let c2 = cond.clone();
        meta.write(move |tx| put_version(tx, "b", obj("k", b"one"), &c2)).await.unwrap();
        let c3 = cond.clone();
        let err = meta.write(move |tx| put_version(tx, "b", obj("k", b"two"), &c3)).await.unwrap_err();
        assert!(matches!(err, Error::PreconditionFailed));
        // A closure that writes and then fails leaves nothing behind, while a concurrent one commits.
        let failing = meta.write(|tx| {
            put_version(tx, "b", obj("x", b"lost"), &WriteConditions::default())?;
            Err::<(), _>(Error::Other("nope".into()))
        });
        let ok = meta.write(|tx| put_version(tx, "b", obj("y", b"kept"), &WriteConditions::default()));
        let (f, o) = tokio::join!(failing, ok);
        assert!(f.is_err() && o.is_ok());
        assert!(meta.read(|r| r.get_latest("b", "x")).await.unwrap().is_none());
        assert!(meta.read(|r| r.get_latest("b", "y")).await.unwrap().is_some());
        let m = WriteConditions { if_match: Some("\"etag-one\"".into()), ..Default::default() };
        meta.write(move |tx| put_version(tx, "b", obj("k", b"three"), &m)).await.unwrap();
    }

    #[tokio::test]
    async fn replica_identity_is_idempotent_and_ordered_by_time() {
        let (_d, meta) = setup(Versioning::Enabled).await;
        let local = meta.write(|tx| put_version(tx, "b", obj("k", b"local"), &WriteConditions::default())).await.unwrap();
        // An older replica arrives later: it must not become the latest.
        let mut old = obj("k", b"old");
        old.replica = Some(replica_identity("0000aaaa", local.mtime_us - 1000));
        let o2 = old.clone();
        let r1 = meta.write(move |tx| put_version(tx, "b", o2, &WriteConditions::default())).await.unwrap();
        assert!(!r1.is_latest);
        let r2 = meta.write(move |tx| put_version(tx, "b", old, &WriteConditions::default())).await.unwrap();
        assert_eq!(r1.version_id, r2.version_id);
        let n = meta.read(|r| r.scan_versions("b", b"", &VersionCursor::default(), None, 10)).await.unwrap().len();
        assert_eq!(n, 2, "applying the same replica twice creates one version");
        // A newer replica becomes the latest, and the clock moves past it.
        let mut newer = obj("k", b"new");
        let future = local.mtime_us + 60_000_000;
        newer.replica = Some(replica_identity("ffff0000", future));
        meta.write(move |tx| put_version(tx, "b", newer, &WriteConditions::default())).await.unwrap();
        let after = meta.write(|tx| put_version(tx, "b", obj("z", b"z"), &WriteConditions::default())).await.unwrap();
        assert!(after.mtime_us > future);
    }

    #[tokio::test]
    async fn committed_writes_survive_reopen_and_clock_stays_monotone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let last = {
            let meta = SqliteMeta::open(&path, None).unwrap();
            meta.write(|tx| tx.put_bucket(&new_bucket("b", Versioning::Enabled))).await.unwrap();
            let mut handles = Vec::new();
            let meta = std::sync::Arc::new(meta);
            for i in 0..50 {
                let m = meta.clone();
                handles.push(tokio::spawn(async move {
                    m.write(move |tx| put_version(tx, "b", obj(&format!("k{i:02}"), b"x"), &WriteConditions::default())).await
                }));
            }
            let mut last = 0;
            for h in handles {
                last = last.max(h.await.unwrap().unwrap().mtime_us);
            }
            last
        };
        let meta = SqliteMeta::open(&path, None).unwrap();
        let all = meta.read(|r| r.scan_latest("b", b"", false, None, 1000)).await.unwrap();
        assert_eq!(all.len(), 50);
        let v = meta.write(|tx| put_version(tx, "b", obj("later", b"x"), &WriteConditions::default())).await.unwrap();
        assert!(v.mtime_us > last);
    }
}
