//! Object Lock: which versions may not be removed or have their protection weakened, decided
//! from a version's lock and the region's clock. Pure functions; the write paths in
//! [`crate::objects`] call them inside the transaction that removes or changes the version, so
//! a decision and the change it allows commit together.
//!
//! # Invariants
//! - A version under a legal hold, or under a retention whose date is later than the region's
//!   commit clock, is never removed: not by DeleteObject with its version id, not by
//!   DeleteObjects, not by a replicated delete, not by a lifecycle rule. A delete marker may
//!   always be added on top of it.
//! - COMPLIANCE retention in force is never shortened, removed or turned into GOVERNANCE, by
//!   anyone (the bucket's owner and replicas from a peer included). It may be lengthened.
//! - GOVERNANCE retention in force is shortened, removed or turned into COMPLIANCE only by a
//!   request that asks to bypass it (`x-amz-bypass-governance-retention: true`) from a
//!   principal allowed `s3:BypassGovernanceRetention`; the S3 layer decides the latter.
//! - "In force" is judged against the region's clock ([`crate::meta::WriteTx::now`]), which no
//!   client can move: a retention ends when this region's clock passes its date.
//! - Object Lock, once enabled on a bucket, stays enabled, and the bucket's versioning stays
//!   Enabled (S3's rule: a locked version must never be replaced in place).
//!
//! Lock settings are a version's attributes ([`LockAttrs`], in
//! [`crate::model::ObjectAttrs::lock`]), each with the time of its last change, so that a
//! change replicated between two regions converges by last writer wins, like tags, within the
//! limits of [`merge_replica_retention`] and [`merge_replica_legal_hold`].

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::VersionRecord;

/// Microseconds in a day (Object Lock periods are whole days or years of the calendar clock).
const DAY_US: i64 = 86_400 * 1_000_000;

/// A retention mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LockMode {
    /// Removable early by a principal allowed to bypass governance retention.
    Governance,
    /// Removable by nobody until its date.
    Compliance,
}

impl LockMode {
    /// S3's name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Governance => "GOVERNANCE",
            Self::Compliance => "COMPLIANCE",
        }
    }

    /// From S3's name (exact case, as S3 requires).
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "GOVERNANCE" => Some(Self::Governance),
            "COMPLIANCE" => Some(Self::Compliance),
            _ => None,
        }
    }
}

/// A version's retention: its mode and the time until which it holds (µs since epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Retention {
    pub mode: LockMode,
    pub until_us: i64,
}

impl Retention {
    /// Whether it still holds at `now_us`.
    #[must_use]
    pub fn in_force(&self, now_us: i64) -> bool {
        self.until_us > now_us
    }
}

/// A version's Object Lock settings, each with the time of its last change (µs, the commit
/// clock's; `None`: set with the version), so that replicated changes converge like tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LockAttrs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_us: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub legal_hold: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal_hold_us: Option<i64>,
}

impl LockAttrs {
    /// Whether any setting, or any change of one, is recorded.
    #[must_use]
    pub fn is_set(&self) -> bool {
        *self != Self::default()
    }

    /// A lock set with a write (no change times).
    #[must_use]
    pub fn new(retention: Option<Retention>, legal_hold: bool) -> Self {
        Self { retention, legal_hold, ..Self::default() }
    }
}

/// A bucket's Object Lock configuration. Its presence means Object Lock is enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ObjectLockConfig {
    /// The retention new versions get when their write names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<DefaultRetention>,
}

/// A default retention: a mode and a period of days or years.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultRetention {
    pub mode: LockMode,
    pub period: Period,
}

/// A default retention's period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Period {
    Days(u32),
    Years(u32),
}

/// The longest default period S3 accepts: 100 years (36500 days).
pub const MAX_DEFAULT_DAYS: u32 = 36_500;

impl DefaultRetention {
    /// The retention of a version written at `mtime_us`. A year is 365 days, as S3 counts it.
    #[must_use]
    pub fn from(&self, mtime_us: i64) -> Retention {
        let days = match self.period {
            Period::Days(d) => i64::from(d),
            Period::Years(y) => i64::from(y) * 365,
        };
        Retention { mode: self.mode, until_us: mtime_us.saturating_add(days.saturating_mul(DAY_US)) }
    }
}

/// [`Error::AccessDenied`] unless `v` may be removed at `now_us`. `bypass`: the request asks,
/// and may, to bypass governance retention.
///
/// # Errors
/// AccessDenied naming the hold or retention that protects the version.
pub fn check_removable(v: &VersionRecord, now_us: i64, bypass: bool) -> Result<()> {
    if v.attrs.lock.legal_hold {
        return Err(Error::AccessDenied(format!(
            "version {} of {} is under a legal hold: it cannot be deleted until the hold is removed",
            v.version_id, v.key
        )));
    }
    match v.attrs.lock.retention {
        Some(r) if r.in_force(now_us) && !(r.mode == LockMode::Governance && bypass) => Err(Error::AccessDenied(format!(
            "version {} of {} is under {} retention until {}: it cannot be deleted before then{}",
            v.version_id,
            v.key,
            r.mode.as_str(),
            ferry_core::time::rfc3339_us(r.until_us),
            if r.mode == LockMode::Governance { " without x-amz-bypass-governance-retention" } else { "" }
        ))),
        _ => Ok(()),
    }
}

/// Whether `v` is protected from removal at `now_us` (a lifecycle rule passes it by).
#[must_use]
pub fn is_protected(v: &VersionRecord, now_us: i64) -> bool {
    check_removable(v, now_us, false).is_err()
}

/// [`Error::AccessDenied`] unless a version's retention may change from `old` to `new` at
/// `now_us`. Lengthening, or keeping, is always allowed; anything else a retention in force
/// allows only in GOVERNANCE mode with `bypass`.
///
/// # Errors
/// AccessDenied saying what the retention in force forbids.
pub fn check_retention_change(old: Option<&Retention>, new: Option<&Retention>, now_us: i64, bypass: bool) -> Result<()> {
    let Some(old) = old.filter(|o| o.in_force(now_us)) else { return Ok(()) };
    let keeps = new.is_some_and(|n| n.mode == old.mode && n.until_us >= old.until_us);
    if keeps || (old.mode == LockMode::Governance && bypass) {
        return Ok(());
    }
    Err(Error::AccessDenied(match old.mode {
        LockMode::Compliance => format!(
            "COMPLIANCE retention until {} can only be lengthened",
            ferry_core::time::rfc3339_us(old.until_us)
        ),
        LockMode::Governance => format!(
            "GOVERNANCE retention until {} can be shortened, removed or changed only with x-amz-bypass-governance-retention",
            ferry_core::time::rfc3339_us(old.until_us)
        ),
    }))
}

/// The retention a version keeps when a retention set at the source arrives from a peer
/// (`incoming`, `newer` than this version's by its change time). `same_account`: the source's
/// account owns this bucket.
///
/// The newer change wins, as for tags, except where that would weaken a retention in force here
/// that the source may not weaken: COMPLIANCE retention (nobody may), and any retention when the
/// source is another account's bucket (it may not undo what this bucket's owner set). There the
/// stronger of the two is kept (COMPLIANCE over GOVERNANCE, then the later date): the same
/// answer whichever order two regions' changes arrive in, so both sides converge.
#[must_use]
pub fn merge_replica_retention(
    current: Option<Retention>,
    incoming: Option<Retention>,
    newer: bool,
    same_account: bool,
    now_us: i64,
) -> Option<Retention> {
    let in_force = |r: Option<Retention>| r.filter(|r| r.in_force(now_us));
    match in_force(current) {
        Some(c) if c.mode == LockMode::Compliance || !same_account => Some(in_force(incoming).map_or(c, |i| c.max(i))),
        _ if newer => incoming,
        _ => current,
    }
}

/// The legal hold a version keeps when a legal hold set at the source arrives from a peer: the
/// newer one, but a source of another account may only add a hold, never lift one.
#[must_use]
pub fn merge_replica_legal_hold(current: bool, incoming: bool, newer: bool, same_account: bool) -> bool {
    if same_account { if newer { incoming } else { current } } else { current || incoming }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Owner, VersionRecord};

    fn version(retention: Option<Retention>, legal_hold: bool) -> VersionRecord {
        let mut v = crate::objects::delete_marker("b", "k", "v1".into(), 10, Owner::default());
        v.delete_marker = false;
        v.attrs.lock.retention = retention;
        v.attrs.lock.legal_hold = legal_hold;
        v
    }

    const G: LockMode = LockMode::Governance;
    const C: LockMode = LockMode::Compliance;

    /// Legal holds protect whatever the bypass; retention only until its date; GOVERNANCE
    /// yields to a bypass and COMPLIANCE never does.
    #[test]
    fn removal_is_refused_while_a_lock_holds() {
        let until = |mode| Some(Retention { mode, until_us: 100 });
        assert!(check_removable(&version(None, false), 50, false).is_ok());
        assert!(check_removable(&version(None, true), 50, true).is_err());
        assert!(check_removable(&version(until(G), false), 50, false).is_err());
        assert!(check_removable(&version(until(G), false), 50, true).is_ok());
        assert!(check_removable(&version(until(C), false), 50, true).is_err());
        assert!(check_removable(&version(until(C), false), 100, false).is_ok());
        assert!(check_removable(&version(until(C), true), 200, false).is_err());
        assert!(is_protected(&version(until(C), false), 99));
        assert!(!is_protected(&version(until(G), false), 100));
    }

    #[test]
    fn retention_in_force_is_only_lengthened_without_a_bypass() {
        let r = |mode, until_us| Retention { mode, until_us };
        let now = 50;
        for (old, new, bypass, ok) in [
            (None, Some(r(C, 60)), false, true),
            (Some(r(G, 40)), None, false, true), // no longer in force
            (Some(r(G, 100)), Some(r(G, 200)), false, true),
            (Some(r(G, 100)), Some(r(G, 100)), false, true),
            (Some(r(G, 100)), Some(r(G, 90)), false, false),
            (Some(r(G, 100)), Some(r(G, 90)), true, true),
            (Some(r(G, 100)), None, false, false),
            (Some(r(G, 100)), None, true, true),
            (Some(r(G, 100)), Some(r(C, 100)), false, false),
            (Some(r(G, 100)), Some(r(C, 100)), true, true),
            (Some(r(C, 100)), Some(r(C, 200)), false, true),
            (Some(r(C, 100)), Some(r(C, 90)), true, false),
            (Some(r(C, 100)), Some(r(G, 200)), true, false),
            (Some(r(C, 100)), None, true, false),
        ] {
            assert_eq!(
                check_retention_change(old.as_ref(), new.as_ref(), now, bypass).is_ok(),
                ok,
                "{old:?} -> {new:?} bypass {bypass}"
            );
        }
    }

    /// Replicated retention: last writer wins, except that COMPLIANCE in force only grows and
    /// another account's source may not weaken anything; either order gives the same result.
    #[test]
    fn replicated_retention_never_weakens_what_it_may_not() {
        let r = |mode, until_us| Some(Retention { mode, until_us });
        let now = 50;
        // Same account, GOVERNANCE: the newer change wins, even a shorter one.
        assert_eq!(merge_replica_retention(r(G, 100), r(G, 60), true, true, now), r(G, 60));
        assert_eq!(merge_replica_retention(r(G, 100), None, true, true, now), None);
        assert_eq!(merge_replica_retention(r(G, 100), r(G, 200), false, true, now), r(G, 100));
        // COMPLIANCE in force: the stronger, whatever the times, in both orders.
        for newer in [true, false] {
            assert_eq!(merge_replica_retention(r(C, 100), r(C, 90), newer, true, now), r(C, 100));
            assert_eq!(merge_replica_retention(r(C, 100), r(C, 300), newer, true, now), r(C, 300));
            assert_eq!(merge_replica_retention(r(C, 100), r(G, 900), newer, true, now), r(C, 100));
            assert_eq!(merge_replica_retention(r(C, 100), None, newer, true, now), r(C, 100));
        }
        // Concurrent COMPLIANCE changes converge: each side keeps the later date.
        let (a, b) = (r(C, 200), r(C, 300));
        assert_eq!(
            merge_replica_retention(a, b, false, true, now),
            merge_replica_retention(b, a, true, true, now)
        );
        // Another account's source: nothing in force is weakened; the stronger is kept.
        assert_eq!(merge_replica_retention(r(G, 100), None, true, false, now), r(G, 100));
        assert_eq!(merge_replica_retention(r(G, 100), r(G, 60), true, false, now), r(G, 100));
        assert_eq!(merge_replica_retention(r(G, 100), r(C, 60), true, false, now), r(C, 60));
        // Nothing in force here: the newer wins.
        assert_eq!(merge_replica_retention(r(C, 40), None, true, false, now), None);
        assert_eq!(merge_replica_retention(None, r(G, 70), true, false, now), r(G, 70));
        // Legal holds: another account may add one, never lift one.
        assert!(!merge_replica_legal_hold(true, false, true, true));
        assert!(merge_replica_legal_hold(true, false, true, false));
        assert!(merge_replica_legal_hold(false, true, false, false));
        assert!(merge_replica_legal_hold(true, false, false, true));
    }

    #[test]
    fn default_retention_counts_days_and_years_of_365_days() {
        let d = DefaultRetention { mode: G, period: Period::Days(2) };
        assert_eq!(d.from(5).until_us, 5 + 2 * DAY_US);
        let y = DefaultRetention { mode: C, period: Period::Years(1) };
        assert_eq!(y.from(0), Retention { mode: C, until_us: 365 * DAY_US });
        let huge = DefaultRetention { mode: C, period: Period::Years(u32::MAX) };
        assert!(huge.from(i64::MAX - 1).until_us == i64::MAX);
    }
}
