//! A model-based test of the replication outbox, in the manner of Vector's disk buffer and
//! redb's storage tests: seeded random sequences of operations against two real regions (two
//! `ferry serve` processes, an emulated link between them), checked against a simple model of
//! what each destination must hold.
//!
//! Operations: PUT and overwrite (single and multipart), delete markers, permanent version
//! deletes, tag and ACL changes, the replication configuration put (rules to one or two
//! destinations, prefix filters, priorities, delete-marker, delete and existing-object
//! replication) or removed, link outages, and kill -9 of either region. The model records, per
//! (version, destination), whether the destination **must** hold the version, **may** hold it
//! (timing decides: a version deleted at the source without DeleteReplication, jobs dropped by
//! DeleteBucketReplication or a backfill cut short by a configuration change, as documented),
//! or **must not** (never selected, or deleted under DeleteReplication). After the sequence the
//! link heals, the replication drains (`status --wait` semantics: nothing pending, no backfill
//! running, nothing failed), and each destination is compared with the model: versions, delete
//! markers, ETags, and the tags and ACL of every version whose last change a rule carried.
//!
//! `FERRY_MODEL_SEQUENCES` (default 10) and `FERRY_MODEL_SEED` (default: from the clock) choose
//! the run; a failure prints the seed of its sequence, and `FERRY_MODEL_SEED=<seed>
//! FERRY_MODEL_SEQUENCES=1` replays it.

use std::time::Duration;

use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ObjectCannedAcl, Tag, Tagging};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use crate::common::*;

const KEYS: [&str; 4] = ["a/1", "a/2", "b/1", "b/2"];
const DESTS: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// No rule ever selected it for this destination.
    Never,
    Must,
    May,
    /// Deleted at the source under DeleteReplication.
    Gone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Marker,
    DeleteVersion,
    Meta,
}

#[derive(Debug, Clone)]
struct MRule {
    id: String,
    dest: usize,
    prefix: &'static str,
    priority: i32,
    markers: bool,
    deletes: bool,
    existing: bool,
}

#[derive(Debug, Clone)]
struct MVersion {
    key: &'static str,
    vid: String,
    marker: bool,
    etag: String,
    deleted: bool,
    expect: [Expect; DESTS],
    /// The `Must` comes from a backfill only (a configuration change mid-scan can cut it short).
    from_backfill: [bool; DESTS],
    /// The last tag/ACL change (or the creation) was carried by a rule to this destination.
    meta_sync: [bool; DESTS],
}

#[derive(Default)]
struct Model {
    rules: Vec<MRule>,
    versions: Vec<MVersion>,
    /// Rules whose backfill may still run: it scans with the configuration current when it
    /// scans, so a configuration put meanwhile decides what it still sends.
    backfills: std::collections::HashSet<String>,
}

impl Model {
    /// The rule that records a change of `key` for destination `d`, as Ferry chooses it: the
    /// matching rule with the highest priority, if it replicates this kind of change.
    fn chosen(&self, d: usize, key: &str, op: Op) -> Option<&MRule> {
        let best = self.rules.iter().filter(|r| r.dest == d && key.starts_with(r.prefix)).max_by_key(|r| r.priority)?;
        match op {
            Op::Put | Op::Meta => Some(best),
            Op::Marker => best.markers.then_some(best),
            Op::DeleteVersion => best.deletes.then_some(best),
        }
    }

    fn created(&mut self, key: &'static str, vid: String, marker: bool, etag: String) {
        let op = if marker { Op::Marker } else { Op::Put };
        let mut v = MVersion {
            key,
            vid,
            marker,
            etag,
            deleted: false,
            expect: [Expect::Never; DESTS],
            from_backfill: [false; DESTS],
            meta_sync: [true; DESTS],
        };
        for d in 0..DESTS {
            if self.chosen(d, key, op).is_some() {
                v.expect[d] = Expect::Must;
            }
        }
        self.versions.push(v);
    }

    fn meta_changed(&mut self, i: usize) {
        for d in 0..DESTS {
            let carried = self.chosen(d, self.versions[i].key, Op::Meta).is_some();
            let v = &mut self.versions[i];
            if carried {
                // Delivered already, or sent whole now (a change of a version the destination
                // never received sends the version).
                if v.expect[d] != Expect::Must {
                    v.from_backfill[d] = false;
                }
                v.expect[d] = Expect::Must;
            }
            v.meta_sync[d] = carried;
        }
    }

    fn version_deleted(&mut self, i: usize) {
        for d in 0..DESTS {
            let replicated = self.chosen(d, self.versions[i].key, Op::DeleteVersion).is_some();
            let v = &mut self.versions[i];
            if replicated {
                v.expect[d] = Expect::Gone;
            } else if v.expect[d] == Expect::Must {
                // Sent before the delete, or skipped after it: timing decides.
                v.expect[d] = Expect::May;
            }
        }
        self.versions[i].deleted = true;
    }

    fn configured(&mut self, rules: Vec<MRule>, backfill_running: bool) {
        if !backfill_running {
            self.backfills.clear();
        }
        let started: Vec<MRule> =
            rules.iter().filter(|r| r.existing && !self.rules.iter().any(|o| o.id == r.id && o.existing)).cloned().collect();
        self.rules = rules;
        if backfill_running {
            // A running backfill may be cut short, or send under the new rules what they select.
            for i in 0..self.versions.len() {
                for d in 0..DESTS {
                    let v = &self.versions[i];
                    let op = if v.marker { Op::Marker } else { Op::Put };
                    let may_send = !v.deleted && self.chosen(d, v.key, op).is_some_and(|c| self.backfills.contains(&c.id));
                    let v = &mut self.versions[i];
                    if v.from_backfill[d] && v.expect[d] == Expect::Must || may_send && v.expect[d] == Expect::Never {
                        v.expect[d] = Expect::May;
                    }
                }
            }
        }
        self.backfills.extend(started.iter().map(|r| r.id.clone()));
        for r in started {
            for i in 0..self.versions.len() {
                let v = &self.versions[i];
                let op = if v.marker { Op::Marker } else { Op::Put };
                if v.deleted || self.chosen(r.dest, v.key, op).is_none_or(|c| c.id != r.id) {
                    continue;
                }
                let v = &mut self.versions[i];
                if v.expect[r.dest] != Expect::Must {
                    v.from_backfill[r.dest] = true;
                }
                // A version never sent there goes whole, with its current tags and ACL; one that
                // may have been delivered before is skipped (`status none`) and keeps what it had.
                if v.expect[r.dest] == Expect::Never {
                    v.meta_sync[r.dest] = true;
                }
                v.expect[r.dest] = Expect::Must;
            }
        }
    }

    /// DeleteBucketReplication: undelivered jobs are dropped (`drained`: there were none).
    fn unconfigured(&mut self, drained: bool) {
        self.rules.clear();
        // Its backfills are cancelled.
        self.backfills.clear();
        if drained {
            return;
        }
        // Dropped jobs: versions not sent yet, and deletions not sent yet.
        for v in &mut self.versions {
            for d in 0..DESTS {
                if matches!(v.expect[d], Expect::Must | Expect::Gone) {
                    v.expect[d] = Expect::May;
                }
                v.meta_sync[d] = false;
            }
        }
    }
}

/// The regions and the clients of one run.
struct Rig {
    t: TwoProcesses,
    us_p: Option<FerryProcess>,
    eu_p: Option<FerryProcess>,
    /// The log lines of processes killed so far (for a failure's report).
    old_logs: Vec<std::sync::Arc<std::sync::Mutex<Vec<String>>>>,
}

impl Rig {
    fn us(&self) -> aws_sdk_s3::Client {
        self.t.us()
    }

    fn eu(&self) -> aws_sdk_s3::Client {
        self.t.eu()
    }

    async fn status(&self, bucket: &str) -> serde_json::Value {
        let admin = ferry_server::cli::admin_client::AdminClient::new(
            ferry_server::cli::client::Endpoint {
                url: self.t.us_url(),
                access_key: MAIN_AK.into(),
                secret_key: MAIN_SK.into(),
                region: "us-east-1".into(),
            },
            None,
        )
        .unwrap();
        admin.request("GET", &format!("/{bucket}?ferry-replication-status"), bytes::Bytes::new()).await.unwrap().json().unwrap()
    }

    /// True when nothing is pending for any destination and no backfill runs.
    async fn drained(&self, bucket: &str) -> bool {
        let s = self.status(bucket).await;
        let pending: u64 =
            s["destinations"].as_array().map_or(0, |a| a.iter().map(|d| d["pending_ops"].as_u64().unwrap_or(0)).sum());
        pending == 0 && !backfill_running(&s)
    }
}

fn backfill_running(status: &serde_json::Value) -> bool {
    status["backfills"].as_array().is_some_and(|a| a.iter().any(|b| matches!(b["state"].as_str(), Some("counting" | "running"))))
}

fn rules_xml(rules: &[MRule], dests: &[String]) -> String {
    let mut x = String::from("<ReplicationConfiguration><Role></Role>");
    for r in rules {
        let on = |b: bool| if b { "Enabled" } else { "Disabled" };
        x.push_str(&format!(
            "<Rule><ID>{}</ID><Priority>{}</Priority><Status>Enabled</Status><Filter><Prefix>{}</Prefix></Filter>\
             <DeleteMarkerReplication><Status>{}</Status></DeleteMarkerReplication>\
             <DeleteReplication><Status>{}</Status></DeleteReplication>",
            r.id,
            r.priority,
            r.prefix,
            on(r.markers),
            on(r.deletes)
        ));
        if r.existing {
            x.push_str("<ExistingObjectReplication><Status>Enabled</Status></ExistingObjectReplication>");
        }
        x.push_str(&format!(
            "<Destination><Bucket>arn:aws:s3:eu-west-1::{}</Bucket></Destination></Rule>",
            dests[r.dest]
        ));
    }
    x.push_str("</ReplicationConfiguration>");
    x
}

fn random_rules(rng: &mut StdRng) -> Vec<MRule> {
    let mut rules = Vec::new();
    for d in 0..DESTS {
        if rng.random_bool(0.3) {
            continue;
        }
        // Per destination: a rule for everything, sometimes a narrower one with another priority.
        for (n, prefix) in [(0, ""), (1, "a/")] {
            if n == 1 && rng.random_bool(0.6) {
                continue;
            }
            rules.push(MRule {
                id: format!("d{d}-{n}"),
                dest: d,
                prefix,
                priority: i32::try_from(d * 10 + n + if rng.random_bool(0.5) { 5 } else { 0 }).unwrap(),
                markers: rng.random_bool(0.7),
                deletes: rng.random_bool(0.5),
                existing: rng.random_bool(0.5),
            });
        }
    }
    rules
}

/// One random sequence; returns what it did, for the failure message.
async fn sequence(rig: &mut Rig, n: usize, seed: u64) -> Result<Vec<String>, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = Vec::new();
    let src = format!("m{n}-src");
    let dests: Vec<String> = (0..DESTS).map(|d| format!("m{n}-d{d}")).collect();
    create_versioned_bucket(&rig.us(), &src).await;
    for d in &dests {
        create_versioned_bucket(&rig.eu(), d).await;
    }
    let mut model = Model::default();
    let mut outage = 0u32;
    let ops = rng.random_range(15..40);
    for _ in 0..ops {
        let (us, roll) = (rig.us(), rng.random_range(0..100));
        let live: Vec<usize> = (0..model.versions.len()).filter(|i| !model.versions[*i].deleted).collect();
        let objects: Vec<usize> = live.iter().copied().filter(|i| !model.versions[*i].marker).collect();
        match roll {
            0..=29 => {
                let key = KEYS[rng.random_range(0..KEYS.len())];
                let body = format!("{seed}-{}", rng.random::<u32>());
                let out = put(&us, &src, key, body.as_bytes()).await;
                log.push(format!("put {key}"));
                model.created(
                    key,
                    out.version_id().unwrap().to_owned(),
                    false,
                    out.e_tag().unwrap().trim_matches('"').to_owned(),
                );
            }
            30..=34 => {
                let key = KEYS[rng.random_range(0..KEYS.len())];
                let up = us.create_multipart_upload().bucket(&src).key(key).send().await.unwrap();
                let id = up.upload_id().unwrap();
                let p = us
                    .upload_part()
                    .bucket(&src)
                    .key(key)
                    .upload_id(id)
                    .part_number(1)
                    .body(b"part".to_vec().into())
                    .send()
                    .await
                    .unwrap();
                let done = CompletedMultipartUpload::builder()
                    .parts(CompletedPart::builder().part_number(1).e_tag(p.e_tag().unwrap()).build())
                    .build();
                let out = us
                    .complete_multipart_upload()
                    .bucket(&src)
                    .key(key)
                    .upload_id(id)
                    .multipart_upload(done)
                    .send()
                    .await
                    .unwrap();
                log.push(format!("multipart {key}"));
                model.created(
                    key,
                    out.version_id().unwrap().to_owned(),
                    false,
                    out.e_tag().unwrap().trim_matches('"').to_owned(),
                );
            }
            35..=44 => {
                let key = KEYS[rng.random_range(0..KEYS.len())];
                let out = us.delete_object().bucket(&src).key(key).send().await.unwrap();
                log.push(format!("delete {key}"));
                model.created(key, out.version_id().unwrap().to_owned(), true, String::new());
            }
            45..=52 if !live.is_empty() => {
                let i = live[rng.random_range(0..live.len())];
                let (key, vid) = (model.versions[i].key, model.versions[i].vid.clone());
                us.delete_object().bucket(&src).key(key).version_id(&vid).send().await.unwrap();
                log.push(format!("delete version {key} {vid}"));
                model.version_deleted(i);
            }
            53..=64 if !objects.is_empty() => {
                let i = objects[rng.random_range(0..objects.len())];
                let (key, vid) = (model.versions[i].key, model.versions[i].vid.clone());
                let tag = Tag::builder().key("t").value(rng.random::<u16>().to_string()).build().unwrap();
                us.put_object_tagging()
                    .bucket(&src)
                    .key(key)
                    .version_id(&vid)
                    .tagging(Tagging::builder().tag_set(tag).build().unwrap())
                    .send()
                    .await
                    .unwrap();
                log.push(format!("tag {key} {vid}"));
                model.meta_changed(i);
            }
            65..=69 if !objects.is_empty() => {
                let i = objects[rng.random_range(0..objects.len())];
                let (key, vid) = (model.versions[i].key, model.versions[i].vid.clone());
                let acl = if rng.random_bool(0.5) { ObjectCannedAcl::PublicRead } else { ObjectCannedAcl::Private };
                us.put_object_acl().bucket(&src).key(key).version_id(&vid).acl(acl.clone()).send().await.unwrap();
                log.push(format!("acl {key} {vid} {acl:?}"));
                model.meta_changed(i);
            }
            70..=79 => {
                let rules = random_rules(&mut rng);
                let running = backfill_running(&rig.status(&src).await);
                let r = if rules.is_empty() {
                    let drained = rig.drained(&src).await;
                    let r = us.delete_bucket_replication().bucket(&src).send().await.map(|_| ()).map_err(|e| code(&e));
                    if r.is_ok() {
                        model.unconfigured(drained);
                    }
                    r
                } else {
                    let r = put_replication_xml(&us, &src, &rules_xml(&rules, &dests)).await;
                    if r.is_ok() {
                        model.configured(rules.clone(), running);
                    }
                    r
                };
                log.push(format!(
                    "configure {:?}: {r:?}",
                    rules.iter().map(|r| (&r.id, r.prefix, r.markers, r.deletes, r.existing)).collect::<Vec<_>>()
                ));
            }
            80..=83 if !model.rules.is_empty() => {
                let drained = rig.drained(&src).await;
                us.delete_bucket_replication().bucket(&src).send().await.unwrap();
                log.push(format!("remove the configuration (drained: {drained})"));
                model.unconfigured(drained);
            }
            84..=93 if outage == 0 => {
                rig.t.link().set_partition(Partition::Reset);
                outage = rng.random_range(1..6);
                log.push(format!("link down for {outage} operations"));
            }
            94..=96 => {
                if let Some(p) = rig.us_p.take() {
                    rig.old_logs.push(p.stderr.clone());
                    p.kill9();
                }
                rig.us_p = Some(rig.t.spawn_us());
                log.push("kill -9 us-east-1, restart".into());
            }
            97..=99 => {
                if let Some(p) = rig.eu_p.take() {
                    rig.old_logs.push(p.stderr.clone());
                    p.kill9();
                }
                rig.eu_p = Some(rig.t.spawn_eu());
                log.push("kill -9 eu-west-1, restart".into());
            }
            _ => {}
        }
        if outage > 0 {
            outage -= 1;
            if outage == 0 {
                rig.t.link().set_partition(Partition::None);
                log.push("link up".into());
            }
        }
    }
    rig.t.link().set_partition(Partition::None);
    check(rig, &model, &src, &dests, &log).await?;
    Ok(log)
}

async fn check(rig: &Rig, model: &Model, src: &str, dests: &[String], log: &[String]) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        if rig.drained(src).await {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("did not drain: {}", rig.status(src).await));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = rig.status(src).await;
    for d in status["destinations"].as_array().cloned().unwrap_or_default() {
        if d["failed_ops"].as_u64() != Some(0) {
            return Err(format!("failed operations: {d}"));
        }
    }
    for r in status["rules"].as_array().cloned().unwrap_or_default() {
        if r["state"] != "caught-up" {
            return Err(format!("rule not caught up after draining: {r}"));
        }
    }
    let (us, eu) = (rig.us(), rig.eu());
    let mut problems = Vec::new();
    for (d, dest) in dests.iter().enumerate() {
        let there = all_versions(&eu, dest).await;
        for l in &there {
            match model.versions.iter().find(|v| v.vid == l.version_id) {
                None => problems.push(format!("{dest}: {} {} is no source version", l.key, l.version_id)),
                Some(v) if matches!(v.expect[d], Expect::Never | Expect::Gone) => {
                    problems.push(format!("{dest}: {} {} must not be there ({:?})", l.key, l.version_id, v.expect[d]));
                }
                Some(v) if v.marker != l.delete_marker || (!v.marker && format!("\"{}\"", v.etag) != l.etag) => {
                    problems.push(format!("{dest}: {} {} differs: {l:?}", l.key, l.version_id));
                }
                Some(_) => {}
            }
        }
        for v in model.versions.iter().filter(|v| v.expect[d] == Expect::Must) {
            if !there.iter().any(|l| l.version_id == v.vid) {
                problems.push(format!("{dest}: {} {} is missing", v.key, v.vid));
                continue;
            }
            if v.marker || v.deleted || !v.meta_sync[d] {
                continue;
            }
            let tags = |c: &aws_sdk_s3::Client, b: &str| {
                let (c, b, k, id) = (c.clone(), b.to_owned(), v.key, v.vid.clone());
                async move {
                    let t = c.get_object_tagging().bucket(b).key(k).version_id(id).send().await.unwrap();
                    t.tag_set().iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect::<Vec<_>>()
                }
            };
            let acl = |c: &aws_sdk_s3::Client, b: &str| {
                let (c, b, k, id) = (c.clone(), b.to_owned(), v.key, v.vid.clone());
                async move { format!("{:?}", c.get_object_acl().bucket(b).key(k).version_id(id).send().await.unwrap().grants()) }
            };
            if tags(&us, src).await != tags(&eu, dest).await {
                problems.push(format!("{dest}: tags of {} {} differ", v.key, v.vid));
            }
            if acl(&us, src).await != acl(&eu, dest).await {
                problems.push(format!("{dest}: ACL of {} {} differs", v.key, v.vid));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        let mut logs = Vec::new();
        let running = [&rig.us_p, &rig.eu_p].into_iter().flatten().map(|p| p.stderr.clone());
        for p in rig.old_logs.iter().cloned().chain(running) {
            logs.extend(
                p.lock()
                    .unwrap()
                    .iter()
                    .filter(|l| problems.iter().flat_map(|p| p.split(' ')).any(|v| v.len() == 32 && l.contains(v)))
                    .cloned(),
            );
        }
        Err(format!(
            "{}\noperations:\n  {}\nlogs:\n  {}",
            problems.join("\n"),
            log.join("\n  "),
            logs.join("\n  ")
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sequences_match_the_model() {
    let sequences: usize = std::env::var("FERRY_MODEL_SEQUENCES").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let base: u64 = std::env::var("FERRY_MODEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_007)
            .unwrap()
    });
    let t = TwoProcesses::configure(Link::Wan(LinkSpec::default()), "").await;
    let mut rig = Rig { us_p: Some(t.spawn_us()), eu_p: Some(t.spawn_eu()), t, old_logs: Vec::new() };
    let mut ops = 0;
    for n in 0..sequences {
        let seed = base.wrapping_add(n as u64);
        match sequence(&mut rig, n, seed).await {
            Ok(log) => ops += log.len(),
            Err(e) => panic!("model sequence {n} (FERRY_MODEL_SEED={seed} FERRY_MODEL_SEQUENCES=1) failed:\n{e}"),
        }
    }
    eprintln!("model: {sequences} sequences, {ops} operations, first seed {base}: all matched");
}
