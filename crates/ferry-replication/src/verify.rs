//! Verify: compares a bucket with each rule's destination and streams the result as
//! [`VerifyLine`]s (`progress`, `missing`, `extra`, `mismatch`, and one `summary` per rule;
//! the S3 layer serves them as JSON lines on `GET /BUCKET?ferry-replication-verify`). Each
//! rule's result is recorded as an event (`VerifyClean` / `VerifyFoundDifferences`), the only
//! source of an "in sync" claim in status.
//!
//! Both listings are walked key by key in S3 order, one page at a time, so memory stays bounded
//! whatever the bucket size (one key's versions at a time). To a Ferry peer every version is
//! compared by id: missing versions (in the rule's scope, replicas from elsewhere excepted),
//! extra ones, and differences in ETag, size, last-modified, delete-marker-ness, content type,
//! user metadata and tags (HEAD and GetObjectTagging on both sides). To an S3 peer, whose
//! version ids differ, the current objects are compared by key. A HEAD at the destination also
//! fails when the version's data file is gone, which verify reports.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use ferry_store::Store;
use ferry_store::meta::{VersionCursor, prefix_end};
use ferry_store::model::{ListEntry, ReplStatus, VersionRecord};
use ferry_store::replication::api::{VerifyCounts, VerifyLine};
use ferry_store::replication::progress::record_event;
use ferry_store::replication::{ReplicationConfig, Rule, SourceRef};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::peers::{PeerSet, RemoteVersion};

/// Versions read from the local store per query.
const PAGE: usize = 1000;

/// Lines sent before the client reads them.
const CHANNEL: usize = 64;

struct Out {
    tx: mpsc::Sender<VerifyLine>,
}

impl Out {
    /// Sends a line; false when the reader went away (the comparison stops).
    async fn send(&self, line: VerifyLine) -> bool {
        self.tx.send(line).await.is_ok()
    }
}

/// Starts the comparison of `bucket` (in the region of `peers`); the returned receiver yields
/// the lines.
pub(crate) fn start(
    store: Arc<Store>,
    peers: Arc<PeerSet>,
    bucket: String,
    rule_id: Option<String>,
) -> mpsc::Receiver<VerifyLine> {
    let (tx, rx) = mpsc::channel(CHANNEL);
    tokio::spawn(async move {
        let out = Out { tx };
        if let Err(e) = run(&store, &peers, &bucket, rule_id.as_deref(), &out).await {
            out.send(VerifyLine::Error { error: e.to_string() }).await;
        }
    });
    rx
}

async fn run(store: &Store, peers: &PeerSet, bucket: &str, rule_id: Option<&str>, out: &Out) -> Result<()> {
    let name = bucket.to_owned();
    let b = store.meta.read(move |r| r.get_bucket(&name)).await?.ok_or_else(|| Error::Invalid("no such bucket".into()))?;
    let cfg = match &b.replication {
        Some(s) => ReplicationConfig::from_stored(s)?,
        None => return Err(Error::Invalid("the bucket has no replication configuration".into())),
    };
    let rules: Vec<&Rule> = cfg.rules.iter().filter(|r| r.enabled && rule_id.is_none_or(|id| id == r.id)).collect();
    if rules.is_empty() {
        return Err(Error::Invalid(match rule_id {
            Some(id) => format!("no enabled rule {id}"),
            None => "no enabled rule".into(),
        }));
    }
    for rule in rules {
        if !verify_rule(store, peers, (peers.local(), bucket, &b.owner.id), rule, out).await? {
            break;
        }
    }
    Ok(())
}

/// A source of versions in S3 order (key, then newest first), one page at a time.
trait Pages {
    type Item;
    fn key(item: &Self::Item) -> &str;
    /// The next page; empty at the end.
    async fn next_page(&mut self) -> Result<Vec<Self::Item>>;
}

/// Groups a [`Pages`] source by key: one key's versions at a time, so memory is one page plus
/// one key's versions.
struct ByKey<P: Pages> {
    pages: P,
    buf: VecDeque<P::Item>,
    done: bool,
}

impl<P: Pages> ByKey<P> {
    fn new(pages: P) -> Self {
        Self { pages, buf: VecDeque::new(), done: false }
    }

    async fn fill(&mut self) -> Result<()> {
        if self.done || !self.buf.is_empty() {
            return Ok(());
        }
        let page = self.pages.next_page().await?;
        self.done = page.is_empty();
        self.buf.extend(page);
        Ok(())
    }

    async fn peek_key(&mut self) -> Result<Option<String>> {
        self.fill().await?;
        Ok(self.buf.front().map(|e| P::key(e).to_owned()))
    }

    /// Every version of the next key.
    async fn next_key(&mut self) -> Result<Vec<P::Item>> {
        let Some(key) = self.peek_key().await? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        loop {
            self.fill().await?;
            match self.buf.front() {
                Some(e) if P::key(e) == key => out.extend(self.buf.pop_front()),
                _ => return Ok(out),
            }
        }
    }
}

/// The local versions of `bucket` in `[from, to)`.
struct LocalPages<'a> {
    store: &'a Store,
    bucket: String,
    from: Vec<u8>,
    to: Option<Vec<u8>>,
    cursor: Option<VersionCursor>,
}

impl Pages for LocalPages<'_> {
    type Item = ListEntry;

    fn key(item: &ListEntry) -> &str {
        &item.key
    }

    async fn next_page(&mut self) -> Result<Vec<ListEntry>> {
        let Some(cur) = self.cursor.clone() else { return Ok(Vec::new()) };
        let (b, from, to) = (self.bucket.clone(), self.from.clone(), self.to.clone());
        let page = self.store.meta.read(move |r| r.scan_versions(&b, &from, &cur, to.as_deref(), PAGE)).await?;
        self.cursor = match page.last() {
            Some(last) if page.len() == PAGE => Some(VersionCursor {
                after_key: Some(last.key.clone()),
                after_version: Some((last.mtime_us, last.version_id.clone())),
            }),
            _ => None,
        };
        Ok(page)
    }
}

/// A peer's versions of `bucket` under `prefix`.
struct RemotePages<'a> {
    peers: &'a PeerSet,
    source: SourceRef,
    peer: String,
    bucket: String,
    prefix: String,
    /// The marker of the next page; `None` once the last page was read.
    next: Option<Option<(String, String)>>,
}

impl Pages for RemotePages<'_> {
    type Item = RemoteVersion;

    fn key(item: &RemoteVersion) -> &str {
        &item.key
    }

    async fn next_page(&mut self) -> Result<Vec<RemoteVersion>> {
        // An empty page that is not the last one (possible in S3) must not end the walk.
        while let Some(marker) = self.next.take() {
            let (mut page, next) = self.peers.list_versions(&self.source, &self.peer, &self.bucket, &self.prefix, marker).await?;
            self.next = next.map(Some);
            if !page.is_empty() {
                // Versions and delete markers come in two lists: put them back in S3 order.
                page.sort_by(|a, b| {
                    a.key.as_bytes().cmp(b.key.as_bytes()).then(b.mtime_ms.cmp(&a.mtime_ms)).then(b.version_id.cmp(&a.version_id))
                });
                return Ok(page);
            }
        }
        Ok(Vec::new())
    }
}

async fn verify_rule(
    store: &Store,
    peers: &PeerSet,
    (region, bucket, owner): (&str, &str, &str),
    rule: &Rule,
    out: &Out,
) -> Result<bool> {
    let (peer, dest) = (rule.destination.peer.clone(), rule.destination.bucket.clone());
    let ferry = peers.is_ferry(&peer);
    let prefix = rule.filter.prefix.clone();
    let mut local = ByKey::new(LocalPages {
        store,
        bucket: bucket.to_owned(),
        from: prefix.as_bytes().to_vec(),
        to: prefix_end(prefix.as_bytes()),
        cursor: Some(VersionCursor::default()),
    });
    let source = SourceRef::new(region, bucket, owner);
    let mut remote = ByKey::new(RemotePages {
        peers,
        source: source.clone(),
        peer: peer.clone(),
        bucket: dest.clone(),
        prefix: prefix.clone(),
        next: Some(None),
    });
    let mut c = VerifyCounts::default();
    let destination = rule.destination.key();
    loop {
        let (lk, rk) = (local.peek_key().await?, remote.peek_key().await?);
        let key = match (&lk, &rk) {
            (None, None) => break,
            (Some(a), Some(b)) => {
                if a.as_bytes() <= b.as_bytes() {
                    a.clone()
                } else {
                    b.clone()
                }
            }
            (Some(a), None) => a.clone(),
            (None, Some(b)) => b.clone(),
        };
        let l = if lk.as_deref() == Some(key.as_str()) { local.next_key().await? } else { Vec::new() };
        let r = if rk.as_deref() == Some(key.as_str()) { remote.next_key().await? } else { Vec::new() };
        let mut records = Vec::with_capacity(l.len());
        for e in &l {
            let (b, k, v) = (bucket.to_owned(), e.key.clone(), e.version_id.clone());
            if let Some(rec) = store.meta.read(move |rd| rd.get_version(&b, &k, &v)).await? {
                records.push(rec);
            }
        }
        if ferry {
            compare_versions(peers, &source, &peer, &dest, rule, &key, &records, &r, &mut c, out).await?;
        } else {
            compare_latest(rule, &key, &records, &r, &mut c, out).await;
        }
        if c.checked % 1000 < u64::try_from(records.len().max(1)).unwrap_or(1) {
            let line = VerifyLine::Progress { rule: rule.id.clone(), destination: destination.clone(), counts: c };
            if !out.send(line).await {
                return Ok(false);
            }
        }
    }
    let clean = c.clean();
    let open = out.send(VerifyLine::Summary { rule: rule.id.clone(), destination, counts: c, clean }).await;
    let (b, rid) = (bucket.to_owned(), rule.id.clone());
    let detail = format!(
        "{} versions checked: {} missing, {} extra, {} mismatched",
        c.checked, c.missing, c.extra, c.mismatched
    );
    let kind = if clean { "VerifyClean" } else { "VerifyFoundDifferences" };
    store.meta.write(move |tx| record_event(tx, &b, &rid, kind, &detail)).await?;
    Ok(open)
}

/// A version on one side only.
#[derive(Clone, Copy)]
enum Difference {
    Missing,
    Extra,
}

impl Difference {
    fn line(self, rule: &Rule, key: &str, version_id: &str, delete_marker: Option<bool>) -> VerifyLine {
        let (rule, key, version_id) = (rule.id.clone(), key.to_owned(), Some(version_id.to_owned()));
        match self {
            Self::Missing => VerifyLine::Missing { rule, key, version_id, delete_marker },
            Self::Extra => VerifyLine::Extra { rule, key, version_id, delete_marker },
        }
    }
}

/// In the rule's scope: tags match, and delete markers only when the rule replicates them.
fn in_scope(rule: &Rule, v: &VersionRecord) -> bool {
    if v.delete_marker { rule.delete_markers && rule.filter.tags.is_empty() } else { rule.filter.matches(&v.key, &v.attrs.tags) }
}

#[allow(clippy::too_many_arguments)] // one comparison, many inputs
async fn compare_versions(
    peers: &PeerSet,
    source: &SourceRef,
    peer: &str,
    dest: &str,
    rule: &Rule,
    key: &str,
    local: &[VersionRecord],
    remote: &[RemoteVersion],
    c: &mut VerifyCounts,
    out: &Out,
) -> Result<()> {
    let remote_by_id: BTreeMap<&str, &RemoteVersion> = remote.iter().map(|r| (r.version_id.as_str(), r)).collect();
    for v in local.iter().filter(|v| in_scope(rule, v)) {
        c.checked += 1;
        let Some(r) = remote_by_id.get(v.version_id.as_str()) else {
            // Replicas from a third region are not sent on (loop prevention).
            if v.repl_status != Some(ReplStatus::Replica) {
                c.missing += 1;
                out.send(Difference::Missing.line(rule, key, &v.version_id, Some(v.delete_marker))).await;
            }
            continue;
        };
        let mut diffs: Vec<(&str, Value, Value)> = Vec::new();
        if v.delete_marker != r.delete_marker {
            diffs.push(("delete_marker", json!(v.delete_marker), json!(r.delete_marker)));
        }
        if !v.delete_marker {
            if v.etag != r.etag {
                diffs.push(("etag", json!(v.etag), json!(r.etag)));
            }
            if v.size != r.size {
                diffs.push(("size", json!(v.size), json!(r.size)));
            }
        }
        if v.mtime_us / 1000 != r.mtime_ms {
            diffs.push(("last_modified_ms", json!(v.mtime_us / 1000), json!(r.mtime_ms)));
        }
        if diffs.is_empty() && !v.delete_marker {
            match peers.head(source, peer, dest, key, Some(&v.version_id)).await {
                Ok(Some(h)) => {
                    if h.content_type != v.attrs.content_type {
                        diffs.push(("content_type", json!(v.attrs.content_type), json!(h.content_type)));
                    }
                    if h.user_metadata != v.attrs.user_metadata {
                        diffs.push(("metadata", json!(v.attrs.user_metadata), json!(h.user_metadata)));
                    }
                    let (mut a, mut b) = (v.attrs.tags.clone(), h.tags.clone());
                    a.sort();
                    b.sort();
                    if a != b {
                        diffs.push(("tags", json!(a), json!(b)));
                    }
                }
                Ok(None) => diffs.push(("readable", json!(true), json!(false))),
                Err(e) => diffs.push(("readable", json!(true), json!(e.to_string()))),
            }
        }
        if !diffs.is_empty() {
            c.mismatched += 1;
            for (field, s, d) in diffs {
                let line = VerifyLine::Mismatch {
                    rule: rule.id.clone(),
                    key: key.to_owned(),
                    version_id: Some(v.version_id.clone()),
                    field: field.to_owned(),
                    source: s,
                    destination: d,
                };
                out.send(line).await;
            }
        }
    }
    for r in remote {
        if !local.iter().any(|v| v.version_id == r.version_id) {
            c.extra += 1;
            out.send(Difference::Extra.line(rule, key, &r.version_id, Some(r.delete_marker))).await;
        }
    }
    Ok(())
}

/// S3 peers: the current object of each key, compared by size (and ETag for plain MD5s).
async fn compare_latest(
    rule: &Rule,
    key: &str,
    local: &[VersionRecord],
    remote: &[RemoteVersion],
    c: &mut VerifyCounts,
    out: &Out,
) {
    let l = local.iter().find(|v| v.is_latest).filter(|v| !v.delete_marker && in_scope(rule, v));
    let r = remote.iter().find(|v| v.is_latest).filter(|v| !v.delete_marker);
    match (l, r) {
        (None, None) => {}
        (Some(v), None) => {
            c.checked += 1;
            c.missing += 1;
            out.send(Difference::Missing.line(rule, key, &v.version_id, None)).await;
        }
        (None, Some(r)) => {
            c.extra += 1;
            out.send(Difference::Extra.line(rule, key, &r.version_id, None)).await;
        }
        (Some(v), Some(r)) => {
            c.checked += 1;
            let plain = |e: &str| !e.contains('-');
            if v.size != r.size || (plain(&v.etag) && plain(&r.etag) && v.etag != r.etag) {
                c.mismatched += 1;
                let line = VerifyLine::Mismatch {
                    rule: rule.id.clone(),
                    key: key.to_owned(),
                    version_id: None,
                    field: "content".to_owned(),
                    source: json!(v.etag),
                    destination: json!(r.etag),
                };
                out.send(line).await;
            }
        }
    }
}
