//! The replication view of a bucket: its rules, the wizard that adds or edits one, the rule
//! actions (enable, disable, delete, verify, retry), and the live dashboard's page.
//!
//! # The wizard
//! One form with AWS's and OSS's fields: destination region (the process's peers) and bucket
//! (picked from the account's buckets there, or created with versioning on), scope (prefixes
//! and tags, all or any), delete policy, existing objects, owner override, storage class, RPO,
//! priority. As the form changes, the page shows the pre-flight checks and the exact
//! `PutBucketReplication` XML `Save` will send (htmx, `POST .../replication/preview`);
//! `Save` runs the checks again and shows each failure in place, or sends the XML.
//!
//! S3 has no "or" inside a rule and one prefix per rule, so a wizard rule with several
//! prefixes, or tags matched by "any", is stored as a group of S3 rules with ids `ID`,
//! `ID~2`, `ID~3`, ...; the rule list and the wizard show the group as one rule, and editing
//! re-opens it with every field kept.
//!
//! Every change is an S3 or admin API request signed as the signed-in account (the same
//! checks as any client's); nothing here writes the store.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use bytes::Bytes;
use ferry_store::model::{BucketRecord, Versioning};
use ferry_store::replication::{ReplicationConfig, Rule, RuleDestination, RuleFilter};
use serde::Deserialize;

use super::live::{self, VerifyRun};
use super::session::Session;
use super::{
    Console, ConsolePeer, ConsoleRegion, checked, editable_config, enc, message, no_such_bucket, page, s3_error, stored_config,
    to_sign_in, unreadable_config,
};
use crate::cli::admin_client::AdminClient;
use crate::cli::client::Endpoint;

/// Storage classes a rule may set for its replicas (empty: the source's).
const STORAGE_CLASSES: &[&str] =
    &["", "STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR", "REDUCED_REDUNDANCY"];

/// A bucket of `region` owned by the signed-in account, or `None` (missing, or another's: the
/// same answer, so a page does not tell which buckets exist).
pub(super) async fn owned<'c>(
    c: &'c Console,
    s: &Session,
    region: &str,
    name: &str,
) -> Option<(&'c ConsoleRegion, BucketRecord)> {
    let owner = c.owner_id(&s.access_key)?;
    let r = c.region(region)?;
    let n = name.to_owned();
    let b = r.store.meta.read(move |tx| tx.get_bucket(&n)).await.ok()??;
    (b.owner.id == owner).then_some((r, b))
}

/// For a state change on a bucket: the session (its CSRF token checked), and the bucket with
/// its region when the account owns it.
async fn acting_on<'c>(
    c: &'c Console,
    headers: &HeaderMap,
    csrf: &str,
    region: &str,
    name: &str,
) -> Result<(Session, &'c ConsoleRegion, BucketRecord), Box<Response>> {
    let (_, s) = checked(c, headers, csrf)?;
    let (r, b) = owned(c, &s, region, name).await.ok_or_else(|| Box::new(no_such_bucket()))?;
    Ok((s, r, b))
}

fn rules_page(region: &str, name: &str) -> String {
    format!("/buckets/{}/{}/replication", enc(region), enc(name))
}

/// The group a stored rule belongs to: its id without a `~N` suffix.
fn group_of(id: &str) -> &str {
    match id.rsplit_once('~') {
        Some((base, n)) if !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => id,
    }
}

/// The wizard's fields (also the form it posts).
#[derive(Deserialize, Default, Clone)]
pub(super) struct RuleForm {
    #[serde(default)]
    csrf: String,
    /// The group being edited (empty: a new rule).
    #[serde(default)]
    original: String,
    #[serde(default)]
    id: String,
    /// Checkboxes: present when ticked.
    enabled: Option<String>,
    #[serde(default)]
    dest_region: String,
    #[serde(default)]
    dest_bucket: String,
    create_dest: Option<String>,
    /// One per line.
    #[serde(default)]
    prefixes: String,
    /// `key=value`, one per line.
    #[serde(default)]
    tags: String,
    /// `all` or `any`.
    #[serde(default)]
    tag_match: String,
    /// `add-change` or `add-delete-change`.
    #[serde(default)]
    deletes: String,
    existing: Option<String>,
    owner_override: Option<String>,
    #[serde(default)]
    storage_class: String,
    #[serde(default)]
    rpo_minutes: String,
    #[serde(default)]
    priority: String,
}

impl RuleForm {
    /// A new rule's defaults: enabled, whole bucket, delete markers replicated.
    fn new(id: String, dest_region: String) -> Self {
        Self {
            id,
            enabled: Some("on".into()),
            dest_region,
            tag_match: "all".into(),
            deletes: "add-delete-change".into(),
            priority: "1".into(),
            ..Self::default()
        }
    }

    /// The form of a stored group of rules.
    fn of_group(group: &str, rules: &[&Rule]) -> Option<Self> {
        let first = rules.first()?;
        let d = &first.destination;
        let mut prefixes: Vec<&str> = Vec::new();
        let mut tags: Vec<String> = Vec::new();
        for r in rules {
            if !prefixes.contains(&r.filter.prefix.as_str()) {
                prefixes.push(&r.filter.prefix);
            }
            for (k, v) in &r.filter.tags {
                let t = format!("{k}={v}");
                if !tags.contains(&t) {
                    tags.push(t);
                }
            }
        }
        // Several rules with one tag each, differing by tag: "any".
        let any = rules.len() > 1 && rules.iter().all(|r| r.filter.tags.len() == 1) && tags.len() > 1;
        let on = |b: bool| b.then(|| "on".to_owned());
        Some(Self {
            csrf: String::new(),
            original: group.to_owned(),
            id: group.to_owned(),
            enabled: on(first.enabled),
            dest_region: d.peer.clone(),
            dest_bucket: d.bucket.clone(),
            create_dest: None,
            prefixes: prefixes.into_iter().filter(|p| !p.is_empty()).collect::<Vec<_>>().join("\n"),
            tags: tags.join("\n"),
            tag_match: if any { "any" } else { "all" }.to_owned(),
            deletes: if first.delete_markers || first.deletes { "add-delete-change" } else { "add-change" }.to_owned(),
            existing: on(first.existing_objects),
            owner_override: on(d.owner_override),
            storage_class: d.storage_class.clone().unwrap_or_default(),
            rpo_minutes: d.rpo_minutes.map(|m| m.to_string()).unwrap_or_default(),
            priority: first.priority.to_string(),
        })
    }

    /// The S3 rules of this form, or what is wrong with it.
    fn rules(&self) -> Result<Vec<Rule>, String> {
        let id = self.id.trim();
        if id.is_empty() || id.len() > 200 || id.contains('~') {
            return Err("Give the rule a name of 1 to 200 characters, without `~`.".into());
        }
        if self.dest_bucket.trim().is_empty() {
            return Err("Choose a destination bucket.".into());
        }
        let priority: i32 = if self.priority.trim().is_empty() {
            0
        } else {
            self.priority.trim().parse().map_err(|_| "Priority is a whole number.")?
        };
        let rpo_minutes = match self.rpo_minutes.trim() {
            "" => None,
            m => Some(
                m.parse::<u32>().ok().filter(|m| (1..=10_080).contains(m)).ok_or("RPO is a number of minutes, 1 to 10080.")?,
            ),
        };
        let mut tags = Vec::new();
        for line in self.tags.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (k, v) = line.split_once('=').ok_or_else(|| format!("Tag `{line}`: write tags as key=value."))?;
            tags.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        let mut prefixes: Vec<String> =
            self.prefixes.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
        if prefixes.is_empty() {
            prefixes.push(String::new());
        }
        let tag_sets: Vec<Vec<(String, String)>> =
            if self.tag_match == "any" && tags.len() > 1 { tags.into_iter().map(|t| vec![t]).collect() } else { vec![tags] };
        let deletes = self.deletes == "add-delete-change";
        let destination = RuleDestination {
            peer: self.dest_region.clone(),
            bucket: self.dest_bucket.trim().to_owned(),
            storage_class: Some(self.storage_class.clone()).filter(|s| !s.is_empty()),
            account: None,
            owner_override: self.owner_override.is_some(),
            rpo_minutes,
            metrics: rpo_minutes.is_some(),
        };
        let mut out = Vec::new();
        for prefix in &prefixes {
            for tags in &tag_sets {
                let n = out.len();
                out.push(Rule {
                    id: if n == 0 { id.to_owned() } else { format!("{id}~{}", n + 1) },
                    priority: priority.saturating_add(i32::try_from(n).unwrap_or(i32::MAX)),
                    enabled: self.enabled.is_some(),
                    v2: true,
                    filter: RuleFilter { prefix: prefix.clone(), tags: tags.clone() },
                    // S3 does not replicate delete markers for rules with tag filters.
                    delete_markers: deletes && tags.is_empty(),
                    deletes,
                    existing_objects: self.existing.is_some(),
                    replica_modifications: false,
                    destination: destination.clone(),
                });
            }
        }
        Ok(out)
    }
}

/// The configuration after replacing group `original` (if any) with `rules`.
fn replaced(current: &ReplicationConfig, original: &str, rules: Vec<Rule>) -> ReplicationConfig {
    let mut out: Vec<Rule> =
        current.rules.iter().filter(|r| original.is_empty() || group_of(&r.id) != original).cloned().collect();
    out.extend(rules);
    ReplicationConfig { role: current.role.clone(), rules: out }
}

/// One pre-flight check: what, whether it passed, and what to do when not.
pub(super) struct Check {
    what: String,
    ok: bool,
    detail: String,
}

fn pass(what: String, detail: impl Into<String>) -> Check {
    Check { what, ok: true, detail: detail.into() }
}

fn fail(what: String, detail: impl Into<String>) -> Check {
    Check { what, ok: false, detail: detail.into() }
}

/// An S3 client of peer `p` signing as `access_key`, for a Ferry peer (the account's keys mean
/// nothing to another S3 service).
fn peer_as(c: &Console, p: &ConsolePeer, access_key: &str) -> Option<aws_sdk_s3::Client> {
    if !p.ferry {
        return None;
    }
    c.client_as(&p.s3, access_key)
}

/// The pre-flight checks of a form, before `Save`: the source is versioned; the destination
/// region is a peer, answers, holds the bucket (or it will be created) and has versioning on.
/// Cycles and the destination's consent are checked by PutBucketReplication itself at `Save`.
async fn preflight(c: &Console, s: &Session, b: &BucketRecord, f: &RuleForm) -> Vec<Check> {
    let mut checks = Vec::new();
    let what = format!("Versioning on {}", b.name);
    checks.push(if b.versioning == Versioning::Enabled {
        pass(what, "enabled")
    } else {
        fail(
            what,
            "Versioning must be enabled on the source: use Enable versioning on the bucket's page.",
        )
    });
    let dest = format!("{} / {}", f.dest_region, f.dest_bucket.trim());
    let Some(p) = c.peers.iter().find(|p| p.name == f.dest_region) else {
        checks.push(fail(
            format!("Region {}", f.dest_region),
            "Not a region this server replicates to: choose one of the list.",
        ));
        return checks;
    };
    let Some(client) = peer_as(c, p, &s.access_key) else {
        checks.push(pass(
            format!("Destination {dest}"),
            "an S3 service outside Ferry: checked with the region's own credentials at Save",
        ));
        return checks;
    };
    let bucket = f.dest_bucket.trim();
    if bucket.is_empty() {
        checks.push(fail(
            "Destination bucket".to_owned(),
            "Choose a destination bucket, or name a new one and tick Create it.",
        ));
        return checks;
    }
    let head = tokio::time::timeout(std::time::Duration::from_secs(5), client.head_bucket().bucket(bucket).send()).await;
    let reach = format!("Region {} reachable", p.name);
    match head {
        Err(_) => {
            checks.push(fail(reach, "No answer in 5 s: is the region up? Its health is on the buckets page."));
            return checks;
        }
        Ok(Err(e)) if !matches!(e, aws_sdk_s3::error::SdkError::ServiceError(_)) => {
            checks.push(fail(reach, format!("{}: is the region up?", s3_error(&e))));
            return checks;
        }
        Ok(Err(e)) => {
            checks.push(pass(reach, "answers"));
            let status = ferry_replication::peers::http_status(&e);
            let what = format!("Destination bucket {dest}");
            if status == Some(404) {
                checks.push(if f.create_dest.is_some() {
                    pass(what, "will be created, with versioning on")
                } else {
                    fail(what, "No such bucket: pick one of the list, or tick Create it.")
                });
            } else {
                checks.push(pass(
                    what,
                    "exists and belongs to another account: its owner must accept this bucket's replicas (checked at Save)",
                ));
            }
            return checks;
        }
        Ok(Ok(_)) => checks.push(pass(reach, "answers")),
    }
    checks.push(pass(format!("Destination bucket {dest}"), "exists, and is yours"));
    let versioned = client.get_bucket_versioning().bucket(bucket).send().await;
    let what = format!("Versioning on {dest}");
    checks.push(match versioned {
        Ok(v) if v.status().is_some_and(|s| s.as_str() == "Enabled") => pass(what, "enabled"),
        Ok(_) => fail(
            what,
            format!("Enable versioning on {bucket} in {} (its bucket page has the button).", p.name),
        ),
        Err(e) => fail(what, s3_error(&e)),
    });
    checks
}

/// A rule group of the rule list.
struct RuleRow {
    id: String,
    enabled: bool,
    destination: String,
    scope: String,
    policy: &'static str,
    existing: bool,
    priority: i32,
}

fn rule_rows(cfg: &ReplicationConfig) -> Vec<RuleRow> {
    let mut rows: Vec<RuleRow> = Vec::new();
    for r in &cfg.rules {
        let group = group_of(&r.id);
        if rows.iter().any(|row| row.id == group) {
            continue;
        }
        let members: Vec<&Rule> = cfg.rules.iter().filter(|m| group_of(&m.id) == group).collect();
        let Some(f) = RuleForm::of_group(group, &members) else { continue };
        let mut scope = Vec::new();
        if !f.prefixes.is_empty() {
            scope.push(format!("prefixes {}", f.prefixes.lines().collect::<Vec<_>>().join(", ")));
        }
        if !f.tags.is_empty() {
            scope.push(format!("tags ({}) {}", f.tag_match, f.tags.lines().collect::<Vec<_>>().join(", ")));
        }
        rows.push(RuleRow {
            id: group.to_owned(),
            enabled: r.enabled,
            destination: format!("{} / {}", r.destination.peer, r.destination.bucket),
            scope: if scope.is_empty() { "whole bucket".to_owned() } else { scope.join("; ") },
            policy: if f.deletes == "add-delete-change" { "Add/Delete/Change" } else { "Add/Change" },
            existing: r.existing_objects,
            priority: r.priority,
        });
    }
    rows
}

#[derive(Template)]
#[template(path = "replication.html")]
struct ReplicationPage {
    user: String,
    csrf: String,
    region: String,
    name: String,
    versioned: bool,
    rules: Vec<RuleRow>,
    progress: String,
    failures: String,
    charts: String,
    notice: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct NoticeQuery {
    notice: Option<String>,
}

/// `GET /buckets/REGION/BUCKET/replication`.
pub(super) async fn view(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path((region, name)): Path<(String, String)>,
    Query(q): Query<NoticeQuery>,
) -> Response {
    let Some((_, s)) = c.session(&headers) else { return to_sign_in() };
    let Some((r, b)) = owned(&c, &s, &region, &name).await else { return no_such_bucket() };
    let (progress, failures, charts) = live::render(&c, r, &name, &s.csrf).await.unwrap_or_default();
    page(
        &ReplicationPage {
            user: s.access_key,
            csrf: s.csrf,
            versioned: b.versioning == Versioning::Enabled,
            rules: rule_rows(&stored_config(&b)),
            notice: unreadable_config(&b).or(q.notice),
            region,
            name,
            progress,
            failures,
            charts,
        },
        StatusCode::OK,
    )
}

#[derive(Template)]
#[template(path = "wizard.html")]
struct Wizard {
    user: String,
    csrf: String,
    region: String,
    name: String,
    form: RuleForm,
    /// Destination regions, and the account's buckets in them (for the picker).
    regions: Vec<String>,
    buckets: Vec<String>,
    storage_classes: &'static [&'static str],
    preview: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "preview.html")]
struct Preview {
    checks: Vec<Check>,
    xml: String,
    error: Option<String>,
}

impl Preview {
    fn ready(&self) -> bool {
        self.error.is_none() && self.checks.iter().all(|c| c.ok)
    }
}

/// The checks and the XML of a form. When the checks made here pass, the region checks the
/// whole configuration as `Save` would send it (a dry run of PutBucketReplication: the
/// destination accepts this account's replicas, no cycle, priorities), stores nothing, and
/// its answer is the last check.
async fn preview_of(c: &Console, s: &Session, r: &ConsoleRegion, b: &BucketRecord, f: &RuleForm) -> Preview {
    let rules = match f.rules() {
        Ok(rules) => rules,
        Err(why) => return Preview { checks: Vec::new(), xml: String::new(), error: Some(why) },
    };
    if let Some(why) = unreadable_config(b) {
        return Preview { checks: Vec::new(), xml: String::new(), error: Some(why) };
    }
    let cfg = replaced(&stored_config(b), &f.original, rules);
    let mut checks = preflight(c, s, b, f).await;
    let creating = f.create_dest.is_some() && checks.iter().any(|c| c.detail.starts_with("will be created"));
    if checks.iter().all(|c| c.ok) && !creating {
        let what = "Replication allowed (destination's consent, no cycle, priorities)".to_owned();
        checks.push(match put_config(c, r, s, &b.name, &cfg, true).await {
            Ok(()) => pass(what, "the region accepts this configuration"),
            Err(why) => fail(what, why),
        });
    }
    Preview { checks, xml: ferry_s3::replication::config::replication_xml(&cfg), error: None }
}

/// The account's buckets in every Ferry peer region (for the destination picker); a region
/// that does not answer in 3 s lists none.
async fn destination_buckets(c: &Console, access_key: &str) -> Vec<String> {
    let mut out = Vec::new();
    for p in &c.peers {
        let Some(client) = peer_as(c, p, access_key) else { continue };
        if let Ok(Ok(l)) = tokio::time::timeout(std::time::Duration::from_secs(3), client.list_buckets().send()).await {
            out.extend(l.buckets().iter().filter_map(|b| b.name()).map(str::to_owned));
        }
    }
    out.sort();
    out.dedup();
    out
}

async fn wizard_page(
    c: &Console,
    s: Session,
    region: String,
    b: &BucketRecord,
    form: RuleForm,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let preview = match c.region(&region) {
        Some(r) => preview_of(c, &s, r, b, &form).await.render().unwrap_or_default(),
        None => String::new(),
    };
    let buckets = destination_buckets(c, &s.access_key).await;
    page(
        &Wizard {
            user: s.access_key,
            csrf: s.csrf,
            region,
            name: b.name.clone(),
            form,
            regions: c.peers.iter().map(|p| p.name.clone()).collect(),
            buckets,
            storage_classes: STORAGE_CLASSES,
            preview,
            error,
        },
        status,
    )
}

#[derive(Deserialize)]
pub(super) struct RuleQuery {
    rule: Option<String>,
}

/// `GET /buckets/REGION/BUCKET/replication/rule[?rule=ID]`: the wizard, empty or for a rule.
pub(super) async fn wizard(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path((region, name)): Path<(String, String)>,
    Query(q): Query<RuleQuery>,
) -> Response {
    let Some((_, s)) = c.session(&headers) else { return to_sign_in() };
    let Some((_, b)) = owned(&c, &s, &region, &name).await else { return no_such_bucket() };
    let cfg = stored_config(&b);
    let form = match q.rule {
        Some(id) => {
            let members: Vec<&Rule> = cfg.rules.iter().filter(|r| group_of(&r.id) == id).collect();
            match RuleForm::of_group(&id, &members) {
                Some(f) => f,
                None => return message(StatusCode::NOT_FOUND, "No such rule", "This bucket has no such rule."),
            }
        }
        None => {
            let mut n = cfg.rules.len() + 1;
            while cfg.rules.iter().any(|r| group_of(&r.id) == format!("rule-{n}")) {
                n += 1;
            }
            let other = c.peers.iter().find(|p| p.name != region).or(c.peers.first()).map(|p| p.name.clone()).unwrap_or_default();
            RuleForm::new(format!("rule-{n}"), other)
        }
    };
    wizard_page(&c, s, region, &b, form, None, StatusCode::OK).await
}

/// `POST /buckets/REGION/BUCKET/replication/preview`: the checks and XML of the form (htmx).
pub(super) async fn preview(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path((region, name)): Path<(String, String)>,
    Form(f): Form<RuleForm>,
) -> Response {
    let (s, r, b) = match acting_on(&c, &headers, &f.csrf, &region, &name).await {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    page(&preview_of(&c, &s, r, &b, &f).await, StatusCode::OK)
}

/// An admin API client of `r` signing as `access_key`.
fn admin_as(c: &Console, r: &ConsoleRegion, access_key: &str) -> Option<AdminClient> {
    let user = c.users.account(access_key)?;
    let endpoint = Endpoint {
        url: r.s3.url.clone(),
        access_key: user.access_key.clone(),
        secret_key: user.secret_key.clone(),
        region: r.name.clone(),
    };
    AdminClient::new(endpoint, r.s3.ca_pem.as_deref()).ok()
}

/// Sends `cfg` as the bucket's configuration (or deletes it when it has no rule left); with
/// `dry_run`, the region checks it in full and stores nothing.
async fn put_config(
    c: &Console,
    r: &ConsoleRegion,
    s: &Session,
    bucket: &str,
    cfg: &ReplicationConfig,
    dry_run: bool,
) -> Result<(), String> {
    use ferry_s3::replication::config::{DRY_RUN_QUERY, replication_xml};
    let admin = admin_as(c, r, &s.access_key).ok_or("the account is gone")?;
    let path = format!("/{}?replication", enc(bucket));
    let resp = if cfg.rules.is_empty() {
        admin.request("DELETE", &path, Bytes::new()).await
    } else {
        let path = if dry_run { format!("{path}&{DRY_RUN_QUERY}") } else { path };
        admin.request("PUT", &path, Bytes::from(replication_xml(cfg))).await
    };
    let resp = resp.map_err(|e| format!("{e:#}"))?;
    if resp.status.is_success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&resp.body);
    let field =
        |tag: &str| text.split(&format!("<{tag}>")).nth(1).and_then(|t| t.split(&format!("</{tag}>")).next()).unwrap_or("");
    Err(format!("{} {}", field("Code"), field("Message")))
}

/// Creates the destination bucket of a form in its region, with versioning on, as the account.
async fn create_destination(c: &Console, s: &Session, f: &RuleForm) -> Result<(), String> {
    let p = c.peers.iter().find(|p| p.name == f.dest_region).ok_or("no such region")?;
    let client = peer_as(c, p, &s.access_key).ok_or("buckets outside Ferry are created there, not here")?;
    let bucket = f.dest_bucket.trim();
    if client.head_bucket().bucket(bucket).send().await.is_ok() {
        return Ok(());
    }
    let constraint = aws_sdk_s3::types::CreateBucketConfiguration::builder()
        .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(p.name.as_str()))
        .build();
    client.create_bucket().bucket(bucket).create_bucket_configuration(constraint).send().await.map_err(|e| s3_error(&e))?;
    super::put_versioning(&client, bucket, true).await.map_err(|e| s3_error(&e))
}

/// `POST /buckets/REGION/BUCKET/replication/rules`: `Save`.
pub(super) async fn save(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path((region, name)): Path<(String, String)>,
    Form(f): Form<RuleForm>,
) -> Response {
    let (s, r, b) = match acting_on(&c, &headers, &f.csrf, &region, &name).await {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let stored = match editable_config(&b) {
        Ok(cfg) => cfg,
        Err(refused) => return *refused,
    };
    let rules = match f.rules() {
        Ok(rules) => rules,
        Err(why) => return wizard_page(&c, s, region, &b, f, Some(why), StatusCode::BAD_REQUEST).await,
    };
    if f.create_dest.is_some()
        && let Err(why) = create_destination(&c, &s, &f).await
    {
        let why = format!("The destination bucket could not be created: {why}");
        return wizard_page(&c, s, region, &b, f, Some(why), StatusCode::BAD_REQUEST).await;
    }
    if preflight(&c, &s, &b, &f).await.iter().any(|check| !check.ok) {
        let why = "A pre-flight check failed: see below.".to_owned();
        return wizard_page(&c, s, region, &b, f, Some(why), StatusCode::BAD_REQUEST).await;
    }
    let cfg = replaced(&stored, &f.original, rules);
    if let Err(why) = put_config(&c, r, &s, &name, &cfg, false).await {
        let why = format!("Not saved: {why}");
        return wizard_page(&c, s, region, &b, f, Some(why), StatusCode::BAD_REQUEST).await;
    }
    Redirect::to(&rules_page(&region, &name)).into_response()
}

#[derive(Deserialize)]
pub(super) struct RuleAction {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    rule: String,
    #[serde(default)]
    action: String,
}

/// `POST /buckets/REGION/BUCKET/replication/rule-action`: enable, disable or delete a rule.
pub(super) async fn rule_action(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path((region, name)): Path<(String, String)>,
    Form(f): Form<RuleAction>,
) -> Response {
    let (s, r, b) = match acting_on(&c, &headers, &f.csrf, &region, &name).await {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let mut cfg = match editable_config(&b) {
        Ok(cfg) => cfg,
        Err(refused) => return *refused,
    };
    if !cfg.rules.iter().any(|r| group_of(&r.id) == f.rule) {
        return message(StatusCode::NOT_FOUND, "No such rule", "This bucket has no such rule.");
    }
    match f.action.as_str() {
        "enable" | "disable" => {
            for rule in cfg.rules.iter_mut().filter(|r| group_of(&r.id) == f.rule) {
                rule.enabled = f.action == "enable";
            }
        }
        "delete" => cfg.rules.retain(|r| group_of(&r.id) != f.rule),
        _ => return message(StatusCode::BAD_REQUEST, "Unknown action", "Use enable, disable or delete."),
    }
    match put_config(&c, r, &s, &name, &cfg, false).await {
        Ok(()) => Redirect::to(&rules_page(&region, &name)).into_response(),
        Err(why) => message(StatusCode::BAD_REQUEST, "Rule not changed", &why),
    }
}

#[derive(Deserialize)]
pub(super) struct RetryForm {
    #[serde(default)]
    csrf: String,
    job: Option<i64>,
}

/// `POST /buckets/REGION/BUCKET/replication/retry`: one failed operation, or all of them, are
/// sent again (the admin API's retry, as the account).
pub(super) async fn retry(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path((region, name)): Path<(String, String)>,
    Form(f): Form<RetryForm>,
) -> Response {
    let (s, r, _) = match acting_on(&c, &headers, &f.csrf, &region, &name).await {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let Some(admin) = admin_as(&c, r, &s.access_key) else { return to_sign_in() };
    let job = f.job.map(|j| format!("&job={j}")).unwrap_or_default();
    let sent = admin.request("POST", &format!("/{}?ferry-replication-retry{job}", enc(&name)), Bytes::new()).await;
    match sent.and_then(|r| r.json::<ferry_store::replication::api::Retried>()) {
        Ok(n) => Redirect::to(&format!(
            "{}?notice={}",
            rules_page(&region, &name),
            enc(&format!("{} sent again", n.retried))
        ))
        .into_response(),
        Err(e) => message(StatusCode::BAD_REQUEST, "Not retried", &format!("{e:#}")),
    }
}

#[derive(Deserialize)]
pub(super) struct VerifyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    rule: String,
}

/// `POST /buckets/REGION/BUCKET/replication/verify`: starts verify for a rule (its group's
/// first S3 rule); the dashboard shows its count as it runs and its result.
pub(super) async fn verify(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path((region, name)): Path<(String, String)>,
    Form(f): Form<VerifyForm>,
) -> Response {
    let (s, r, b) = match acting_on(&c, &headers, &f.csrf, &region, &name).await {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let members: Vec<String> = stored_config(&b).rules.into_iter().filter(|r| group_of(&r.id) == f.rule).map(|r| r.id).collect();
    if members.is_empty() {
        return message(StatusCode::NOT_FOUND, "No such rule", "This bucket has no such rule.");
    }
    let Some(admin) = admin_as(&c, r, &s.access_key) else { return to_sign_in() };
    let live_c = c.clone();
    let (region2, name2, group) = (region.clone(), name.clone(), f.rule.clone());
    // One verify per rule at a time: pressing Verify again while it runs starts nothing.
    if !c.live.start_verify(&region, &name, &group) {
        let notice = enc(&format!("verify of {group} is already running"));
        return Redirect::to(&format!("{}?notice={notice}", rules_page(&region, &name))).into_response();
    }
    tokio::spawn(async move {
        let mut run = VerifyRun { running: true, ..VerifyRun::default() };
        let mut clean = true;
        let mut failure = None;
        for id in members {
            let path = format!("/{}?ferry-replication-verify&rule-id={}", enc(&name2), enc(&id));
            let base = run.clone();
            let mut counted = base.clone();
            let read = admin
                .lines(&path, |line| {
                    use ferry_store::replication::api::VerifyLine;
                    if let Ok(VerifyLine::Progress { counts, .. } | VerifyLine::Summary { counts, .. }) =
                        serde_json::from_str(line)
                    {
                        counted.checked = base.checked + counts.checked;
                        counted.differences = base.differences + counts.missing + counts.extra + counts.mismatched;
                        live_c.live.verify(&region2, &name2, &group, counted.clone());
                    }
                    Ok(())
                })
                .await;
            run = counted;
            clean &= run.differences == 0;
            if let Err(e) = read {
                failure = Some(format!("verify could not run: {e:#}"));
                break;
            }
        }
        run.running = false;
        run.result = Some(match failure {
            Some(why) => why,
            None if clean => format!("in sync: {} versions checked, no difference", run.checked),
            None => format!(
                "{} differences in {} versions checked: see ferry replication verify",
                run.differences, run.checked
            ),
        });
        live_c.live.verify(&region2, &name2, &group, run);
    });
    Redirect::to(&rules_page(&region, &name)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_named_by_their_first_rule() {
        assert_eq!(group_of("to-eu"), "to-eu");
        assert_eq!(group_of("to-eu~2"), "to-eu");
        assert_eq!(group_of("to-eu~x"), "to-eu~x");
        assert_eq!(group_of("~2"), "~2");
        assert_eq!(group_of("a~"), "a~");
    }

    #[test]
    fn a_form_survives_being_stored_and_reopened() {
        let form = RuleForm {
            id: "r".into(),
            enabled: Some("on".into()),
            dest_region: "eu".into(),
            dest_bucket: "b".into(),
            prefixes: "x/\ny/".into(),
            tags: "a=1\nb=2".into(),
            tag_match: "any".into(),
            deletes: "add-delete-change".into(),
            existing: Some("on".into()),
            owner_override: Some("on".into()),
            storage_class: "STANDARD_IA".into(),
            rpo_minutes: "15".into(),
            priority: "3".into(),
            ..RuleForm::default()
        };
        let rules = form.rules().unwrap();
        let ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["r", "r~2", "r~3", "r~4"]);
        assert!(
            rules.iter().all(|r| r.filter.tags.len() == 1 && !r.delete_markers && r.deletes),
            "tag rules carry no delete markers"
        );
        let priorities: Vec<i32> = rules.iter().map(|r| r.priority).collect();
        assert_eq!(priorities, [3, 4, 5, 6], "overlapping rules need distinct priorities");
        let refs: Vec<&Rule> = rules.iter().collect();
        let back = RuleForm::of_group("r", &refs).unwrap();
        for (a, b) in [
            (&back.prefixes, &form.prefixes),
            (&back.tags, &form.tags),
            (&back.tag_match, &form.tag_match),
            (&back.storage_class, &form.storage_class),
            (&back.rpo_minutes, &form.rpo_minutes),
            (&back.priority, &form.priority),
            (&back.deletes, &form.deletes),
        ] {
            assert_eq!(a, b);
        }
        assert!(back.existing.is_some() && back.owner_override.is_some() && back.enabled.is_some());
        // A second save of the reopened form replaces the group, and only it.
        let other = Rule { id: "other".into(), ..rules[0].clone() };
        let cfg = ReplicationConfig { role: String::new(), rules: [rules.clone(), vec![other]].concat() };
        let again = replaced(&cfg, "r", back.rules().unwrap());
        let ids: Vec<&str> = again.rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["other", "r", "r~2", "r~3", "r~4"]);
    }

    #[test]
    fn bad_fields_are_named() {
        let base = RuleForm { id: "r".into(), dest_bucket: "b".into(), ..RuleForm::default() };
        for (form, says) in [
            (RuleForm { id: String::new(), ..base.clone() }, "name"),
            (RuleForm { id: "a~b".into(), ..base.clone() }, "~"),
            (RuleForm { dest_bucket: " ".into(), ..base.clone() }, "destination bucket"),
            (RuleForm { priority: "high".into(), ..base.clone() }, "Priority"),
            (RuleForm { rpo_minutes: "0".into(), ..base.clone() }, "RPO"),
            (RuleForm { tags: "novalue".into(), ..base.clone() }, "key=value"),
        ] {
            let err = form.rules().unwrap_err();
            assert!(err.contains(says), "{err} should name {says}");
        }
    }
}
