//! The failure harness: randomized fault schedules during a mixed load, then heal and check
//! that nothing was lost.
//!
//! Two regions run as `ferry serve` processes; `us-east-1` replicates a bucket to `eu-west-1`
//! through an emulated WAN link (`ferry-netem`). Writers put (small, large, multipart),
//! overwrite, delete and re-tag objects, keeping a log of what was acknowledged, while a
//! schedule drawn from a seed injects faults: kill -9 of either region (then restart), link
//! reset, blackhole, slow link, stall, a destination answering 503, and a full disk at the
//! destination (when the test can mount a small tmpfs; it logs why not). Then everything heals and
//! the harness asserts: every acknowledged write is at the source; source and destination hold
//! the same versions, contents, metadata and tags; `ferry replication verify` is clean; no job
//! FAILED (every fault was transient); no process panicked; peak RSS stayed under 256 MiB.
//!
//! `FERRY_FAULT_SEED` replays a schedule (each run prints its seed); `FERRY_FAULT_SCHEDULES`
//! (default 2) and `FERRY_FAULT_SECONDS` (default 10) size the run: the long mode is e.g.
//! `FERRY_FAULT_SCHEDULES=50 FERRY_FAULT_SECONDS=60`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use crate::common::*;

/// Peak RSS allowed for a region process.
const RSS_LIMIT_KIB: u64 = 256 * 1024;

/// A region process that the schedule kills and restarts.
struct Region {
    name: &'static str,
    cfg: PathBuf,
    proc: Option<FerryProcess>,
    /// stderr of every incarnation so far.
    logs: Vec<String>,
    peak_rss_kib: u64,
}

impl Region {
    fn start(name: &'static str, cfg: PathBuf) -> Self {
        let mut r = Self { name, cfg, proc: None, logs: Vec::new(), peak_rss_kib: 0 };
        r.restart();
        r
    }

    fn restart(&mut self) {
        if self.proc.is_none() {
            self.proc = Some(FerryProcess::spawn(&["serve", "--config", self.cfg.to_str().unwrap()], &[], 1));
        }
    }

    fn kill9(&mut self) {
        if let Some(p) = self.proc.take() {
            self.record(&p);
            p.kill9();
        }
    }

    /// Peak RSS and logs of the running incarnation.
    fn record(&mut self, p: &FerryProcess) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", p.child.id())).unwrap_or_default();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
        self.peak_rss_kib = self.peak_rss_kib.max(hwm);
        self.logs.extend(p.stderr.lock().unwrap().drain(..));
    }

    fn finish(&mut self) {
        if let Some(p) = self.proc.take() {
            self.record(&p);
        }
    }
}

/// What a writer was told succeeded.
#[derive(Debug, Clone)]
enum Ack {
    Put { key: String, version: String, etag: String },
    DeleteMarker { key: String, version: String },
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillSource,
    KillDestination,
    Reset,
    Blackhole,
    Slow,
    Stall,
    Unavailable,
    DiskFull,
}

async fn writer(c: aws_sdk_s3::Client, id: usize, seed: u64, stop: Arc<AtomicBool>) -> Vec<Ack> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut acks = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let key = format!("w{id}/k{:02}", rng.random_range(0..12));
        let roll = rng.random_range(0..100);
        let size = match roll {
            0..2 => 7 << 20,
            _ => rng.random_range(1..64 * 1024),
        };
        let body: Vec<u8> = (0..size).map(|i| (i as u64 ^ n ^ seed) as u8).collect();
        match roll {
            0..70 => {
                let put = c
                    .put_object()
                    .bucket("src")
                    .key(&key)
                    .content_type("application/x-ferry-test")
                    .metadata("writer", id.to_string())
                    .body(body.into())
                    .send()
                    .await;
                if let Ok(o) = put {
                    acks.push(Ack::Put {
                        key,
                        version: o.version_id().unwrap_or_default().to_owned(),
                        etag: o.e_tag().unwrap_or_default().to_owned(),
                    });
                }
            }
            70..72 => {
                if let Some((version, etag)) = multipart(&c, &key, seed ^ n).await {
                    acks.push(Ack::Put { key, version, etag });
                }
            }
            72..85 => {
                if let Ok(o) = c.delete_object().bucket("src").key(&key).send().await
                    && let Some(v) = o.version_id()
                {
                    acks.push(Ack::DeleteMarker { key, version: v.to_owned() });
                }
            }
            _ => {
                let tags = aws_sdk_s3::types::Tagging::builder()
                    .tag_set(aws_sdk_s3::types::Tag::builder().key("round").value(n.to_string()).build().unwrap())
                    .build()
                    .unwrap();
                // On the latest version; NoSuchKey after a delete marker is fine.
                let _ = c.put_object_tagging().bucket("src").key(&key).tagging(tags).send().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..30))).await;
    }
    acks
}

/// A two-part multipart upload (5 MiB + a tail); its version id and ETag when acknowledged.
async fn multipart(c: &aws_sdk_s3::Client, key: &str, seed: u64) -> Option<(String, String)> {
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let up = c.create_multipart_upload().bucket("src").key(key).send().await.ok()?;
    let id = up.upload_id()?.to_owned();
    let mut parts = Vec::new();
    for (i, size) in [(1, 5 << 20), (2, 1000 + (seed % 5000) as usize)] {
        let body: Vec<u8> = (0..size).map(|b| (b as u64 ^ seed) as u8).collect();
        let p = c.upload_part().bucket("src").key(key).upload_id(&id).part_number(i).body(body.into()).send().await.ok()?;
        parts.push(CompletedPart::builder().part_number(i).set_e_tag(p.e_tag().map(str::to_owned)).build());
    }
    let done = c
        .complete_multipart_upload()
        .bucket("src")
        .key(key)
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .ok()?;
    Some((done.version_id()?.to_owned(), done.e_tag()?.to_owned()))
}

/// One schedule: load + faults for `seconds`, heal, check. Returns the faults injected.
async fn schedule(seed: u64, seconds: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let spec = LinkSpec { delay: Duration::from_millis(2), ..LinkSpec::default() };
    let t = TwoProcesses::configure(
        Link::Wan(spec),
        // Large objects replicate in parts, so kills and cuts land mid-transfer.
        "[replication]\nmultipart_threshold = 6291456\npart_size = 5242880\n",
    )
    .await;
    let disk = SmallDisk::mount(&t.dir.path().join("eu-west-1"))
        .map_err(|why| eprintln!("fault schedule seed {seed}: no DiskFull faults, the destination has no tmpfs: {why}"))
        .ok();
    let mut us = Region::start("us-east-1", t.us_cfg.clone());
    let mut eu = Region::start("eu-west-1", t.eu_cfg.clone());
    let (src, dst) = (t.us(), t.eu());
    replicated_pair(&src, "src", &dst, "dst").await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> =
        (0..3).map(|i| tokio::spawn(writer(t.us(), i, seed.wrapping_add(i as u64 + 1), stop.clone()))).collect();
    let mut faults = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        let mut choices = vec![
            Fault::KillSource,
            Fault::KillDestination,
            Fault::Reset,
            Fault::Blackhole,
            Fault::Slow,
            Fault::Stall,
            Fault::Unavailable,
        ];
        if disk.is_some() {
            choices.push(Fault::DiskFull);
        }
        let f = choices[rng.random_range(0..choices.len())];
        let hold = Duration::from_millis(rng.random_range(300..2000));
        faults.push(format!("{f:?} {} ms", hold.as_millis()));
        match f {
            Fault::KillSource => us.kill9(),
            Fault::KillDestination => eu.kill9(),
            Fault::Reset => t.link().set_partition(Partition::Reset),
            Fault::Blackhole => t.link().set_partition(Partition::Blackhole),
            Fault::Slow => t.link().set_spec(LinkSpec { rate: Some(256 << 10), ..spec }),
            Fault::Stall => t.link().stall(hold),
            Fault::Unavailable => t.link().set_partition(Partition::ServiceUnavailable),
            Fault::DiskFull => {
                if let Some(d) = &disk {
                    d.fill();
                }
            }
        }
        tokio::time::sleep(hold).await;
        // Heal.
        match f {
            Fault::KillSource => us.restart(),
            Fault::KillDestination => eu.restart(),
            Fault::Reset | Fault::Blackhole | Fault::Unavailable => t.link().set_partition(Partition::None),
            Fault::Slow => t.link().set_spec(spec),
            Fault::Stall => {}
            Fault::DiskFull => {
                if let Some(d) = &disk {
                    d.free();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..800))).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut acks = Vec::new();
    for w in writers {
        acks.extend(w.await.unwrap());
    }
    let context = format!("seed {seed} (replay: FERRY_FAULT_SEED={seed} FERRY_FAULT_SCHEDULES=1), faults {faults:?}");
    assert!(
        acks.len() > 20,
        "too little was acknowledged to mean anything ({}): {context}",
        acks.len()
    );

    // 1. Every acknowledged write is at the source.
    let listed = all_versions(&src, "src").await;
    for a in &acks {
        let (key, version, etag, dm) = match a {
            Ack::Put { key, version, etag } => (key, version, etag.as_str(), false),
            Ack::DeleteMarker { key, version } => (key, version, "", true),
        };
        let v = listed.iter().find(|v| &v.key == key && &v.version_id == version);
        assert!(
            v.is_some_and(|v| v.delete_marker == dm && (dm || v.etag == etag)),
            "acknowledged {a:?} is not at the source as acknowledged: {context}"
        );
    }
    // 2. Everything reaches the destination, exactly.
    let convergence = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let diff = compare_buckets(&src, "src", &dst, "dst").await;
        if diff.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < convergence,
            "not replicated 240 s after healing: {} differences, first {:?}; {context}\nsource log: {:?}",
            diff.len(),
            diff.first(),
            us.proc.as_ref().map(|p| p.stderr.lock().unwrap().clone())
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // 3. Nothing FAILED (every fault was transient), and verify agrees. The source records a
    // destination's answer after the destination holds the version, so the last jobs may
    // still count as pending for a moment.
    wait_until("no job pending once the buckets match", 30, || async {
        let (code, out) = t.ferry_replication("us-east-1", "status", "src", &["--json"]).await;
        assert_eq!(code, 0, "{out}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["rules"][0]["failed_ops"], 0, "a transient fault made a job FAILED: {out}\n{context}");
        v["rules"][0]["pending_ops"] == 0
    })
    .await;
    let (code, out) = t.ferry_replication("us-east-1", "verify", "src", &[]).await;
    assert_eq!(code, 0, "verify: {out}\n{context}");
    // 4. No panic, bounded memory.
    us.finish();
    eu.finish();
    for r in [&us, &eu] {
        assert!(
            !r.logs.iter().any(|l| l.contains("panicked")),
            "{} panicked: {:?}\n{context}",
            r.name,
            r.logs.iter().filter(|l| l.contains("panicked")).collect::<Vec<_>>()
        );
        assert!(r.peak_rss_kib < RSS_LIMIT_KIB, "{} peaked at {} KiB: {context}", r.name, r.peak_rss_kib);
    }
    eprintln!(
        "fault schedule seed {seed}: {} acknowledged writes, {} versions, peak RSS us {} KiB eu {} KiB, faults {faults:?}",
        acks.len(),
        listed.len(),
        us.peak_rss_kib,
        eu.peak_rss_kib
    );
    drop((us, eu));
    drop(disk);
    faults
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_schedules_lose_nothing() {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let base = env("FERRY_FAULT_SEED").unwrap_or_else(rand::random);
    let schedules = env("FERRY_FAULT_SCHEDULES").unwrap_or(2);
    let seconds = env("FERRY_FAULT_SECONDS").unwrap_or(10);
    eprintln!("fault harness: {schedules} schedule(s) of {seconds} s from seed {base}");
    for i in 0..schedules {
        let seed = base.wrapping_add(i);
        eprintln!("fault schedule {i}: seed {seed}");
        schedule(seed, seconds).await;
    }
}
