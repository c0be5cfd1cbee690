//! `ferry replication ...`: inspect and drive the replication of a bucket on a running region,
//! through Ferry's admin API (SigV4-signed like any S3 request; the bucket owner's keys).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;

use crate::cli::admin_client::AdminClient;
use crate::cli::client::Endpoint;
use ferry_core::time::rfc3339_us as rfc3339;
use ferry_store::model::ReplicaSourceGrant;
use ferry_store::replication::api::{BackfillStarted, Explain, Retried, Sources, VerifyLine};
use ferry_store::replication::progress::BucketProgress;
use ferry_store::replication::{Backfill, BackfillRequest, BackfillState, StatusFilter};

/// Where to connect, and as whom.
#[derive(clap::Args, Debug)]
pub struct ConnArgs {
    /// Endpoint of the region holding the bucket, e.g. http://127.0.0.1:9000.
    #[arg(long, env = "FERRY_ENDPOINT", value_name = "URL")]
    pub endpoint: String,
    /// Access key (the bucket owner's).
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub access_key: String,
    /// Secret key.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub secret_key: String,
    /// Region to sign for (Ferry accepts its own name or us-east-1).
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// PEM file of a private CA to trust for an https endpoint.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

/// The bucket to act on.
#[derive(clap::Args, Debug)]
pub struct BucketArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The source bucket.
    #[arg(long)]
    pub bucket: String,
}

#[derive(Subcommand, Debug)]
pub enum ReplicationCommand {
    /// Show, per rule: destination, state, the time up to which every change is replicated,
    /// lag, pending operations and bytes, failures, backfill progress, and recent events.
    Status {
        #[command(flatten)]
        b: BucketArgs,
        /// Refresh every second until interrupted.
        #[arg(long, conflicts_with = "wait")]
        watch: bool,
        /// Wait until nothing is pending and no backfill is running (a paused one does not
        /// count), then print the status; exit code 1 if any rule has failed operations. For
        /// scripts and cutovers: "everything written so far has reached its destinations".
        #[arg(long)]
        wait: bool,
        /// Print the raw JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Explain what happens to one object: which rules match (or why none does), and the state
    /// of its replication to each destination (attempts, last error).
    Explain {
        #[command(flatten)]
        b: BucketArgs,
        /// The key.
        #[arg(long)]
        key: String,
        /// A specific version (default: the latest).
        #[arg(long)]
        version_id: Option<String>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make the bucket's FAILED replication jobs pending again (after fixing their cause:
    /// permissions, a missing destination bucket, versioning off at the destination).
    Retry(BucketArgs),
    /// Replicate existing versions (historical data): starts a backfill that walks the bucket in
    /// key order, resumable across restarts, below live replication in priority.
    Resync {
        #[command(flatten)]
        b: BucketArgs,
        /// Only this rule's destination (default: every rule).
        #[arg(long)]
        rule: Option<String>,
        /// Only keys under this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Which versions: `none` (never replicated), `failed`, or `all` (send again).
        #[arg(long, default_value = "none", value_parser = ["none", "failed", "all"])]
        status: String,
        /// Only versions last modified longer ago than this (e.g. 7d, 12h).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
        /// Wait and show a progress bar until the backfill is done.
        #[arg(long)]
        wait: bool,
    },
    /// Compare the bucket with its destinations: missing, extra and mismatched versions (ETag,
    /// size, last-modified, metadata, tags). Streams both listings (bounded memory) with a
    /// progress display. Exit code 1 when any difference is found.
    Verify {
        #[command(flatten)]
        b: BucketArgs,
        /// Only this rule.
        #[arg(long)]
        rule: Option<String>,
        /// Print the raw JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Show or change the other accounts whose buckets may replicate into this bucket (its
    /// owner's own buckets always may). A replica from such an account may only add versions:
    /// it never replaces, removes or re-tags what it did not bring.
    Sources {
        #[command(flatten)]
        b: BucketArgs,
        /// Accept replicas from this account (its user id, or the access key of an account
        /// configured in this region); `ACCOUNT@REGION` only from its buckets in that region,
        /// `ACCOUNT@REGION/BUCKET` only from that bucket.
        #[arg(long, value_name = "ACCOUNT[@REGION[/BUCKET]]")]
        add: Vec<String>,
        /// No longer accept replicas from this entry (written as for --add).
        #[arg(long, value_name = "ACCOUNT[@REGION[/BUCKET]]")]
        remove: Vec<String>,
    },
    /// Pause a running backfill.
    Pause(BackfillArgs),
    /// Resume a paused backfill.
    Resume(BackfillArgs),
    /// Cancel a backfill (jobs it already recorded still run).
    Cancel(BackfillArgs),
}

/// A backfill of a bucket.
#[derive(clap::Args, Debug)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub b: BucketArgs,
    /// The backfill id (see `ferry replication status`).
    #[arg(long)]
    pub id: i64,
}

pub(crate) fn admin_client(c: &ConnArgs) -> anyhow::Result<AdminClient> {
    let ca = match &c.ca_file {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("--ca-file: cannot read {}", p.display()))?),
        None => None,
    };
    let ep = Endpoint {
        url: c.endpoint.clone(),
        access_key: c.access_key.clone(),
        secret_key: c.secret_key.clone(),
        region: c.region.clone(),
    };
    AdminClient::new(ep, ca.as_deref())
}

fn enc(s: &str) -> String {
    percent_encoding_simple(s)
}

fn percent_encoding_simple(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// Runs a `ferry replication` command.
///
/// # Errors
/// Connection, signing or server errors, with the server's message.
pub async fn run(cmd: ReplicationCommand) -> anyhow::Result<()> {
    match cmd {
        ReplicationCommand::Status { b, watch, wait, json } => {
            let client = admin_client(&b.conn)?;
            if wait {
                return wait_caught_up(&client, &b.bucket, json).await;
            }
            loop {
                let v: BucketProgress = client
                    .request("GET", &format!("/{}?ferry-replication-status", b.bucket), bytes::Bytes::new())
                    .await?
                    .json()?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    let text = render_status(&v);
                    if watch {
                        // Clear the screen and redraw in place.
                        print!("\x1b[2J\x1b[H{text}");
                        std::io::stdout().flush()?;
                    } else {
                        print!("{text}");
                    }
                }
                if !watch {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        ReplicationCommand::Explain { b, key, version_id, json } => {
            let client = admin_client(&b.conn)?;
            let mut q = format!("/{}?ferry-replication-explain&key={}", b.bucket, enc(&key));
            if let Some(v) = version_id {
                q.push_str(&format!("&version-id={}", enc(&v)));
            }
            let v: Explain = client.request("GET", &q, bytes::Bytes::new()).await?.json()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", render_explain(&v));
            }
            Ok(())
        }
        ReplicationCommand::Retry(b) => {
            let client = admin_client(&b.conn)?;
            let out: Retried =
                client.request("POST", &format!("/{}?ferry-replication-retry", b.bucket), bytes::Bytes::new()).await?.json()?;
            println!("{} failed job(s) of bucket {} will be retried", out.retried, b.bucket);
            Ok(())
        }
        ReplicationCommand::Resync { b, rule, prefix, status, older_than, wait } => {
            let client = admin_client(&b.conn)?;
            let body = BackfillRequest {
                rule,
                prefix,
                status: status.parse::<StatusFilter>()?,
                older_than_secs: older_than.map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            };
            let BackfillStarted { id } = client
                .request(
                    "POST",
                    &format!("/{}?ferry-backfill", b.bucket),
                    bytes::Bytes::from(serde_json::to_vec(&body)?),
                )
                .await?
                .json()?;
            println!("backfill {id} of bucket {} started", b.bucket);
            if wait {
                wait_backfill(&client, &b.bucket, id).await?;
            }
            Ok(())
        }
        ReplicationCommand::Verify { b, rule, json } => verify(&b, rule.as_deref(), json).await,
        ReplicationCommand::Sources { b, add, remove } => sources(&b, &add, &remove).await,
        ReplicationCommand::Pause(a) => control(&a, "pause").await,
        ReplicationCommand::Resume(a) => control(&a, "resume").await,
        ReplicationCommand::Cancel(a) => control(&a, "cancel").await,
    }
}

/// `ACCOUNT[@REGION[/BUCKET]]` as a replica-source grant.
fn source_entry(text: &str) -> anyhow::Result<ReplicaSourceGrant> {
    let (account, rest) = text.split_once('@').map_or((text, None), |(a, r)| (a, Some(r)));
    let (region, bucket) = match rest {
        None => (None, None),
        Some(r) => r.split_once('/').map_or((Some(r), None), |(r, b)| (Some(r), Some(b))),
    };
    if account.is_empty() || region == Some("") || bucket == Some("") {
        anyhow::bail!("`{text}`: write ACCOUNT, ACCOUNT@REGION or ACCOUNT@REGION/BUCKET");
    }
    Ok(ReplicaSourceGrant { account: account.to_owned(), region: region.map(str::to_owned), bucket: bucket.map(str::to_owned) })
}

async fn sources(b: &BucketArgs, add: &[String], remove: &[String]) -> anyhow::Result<()> {
    let client = admin_client(&b.conn)?;
    let path = format!("/{}?ferry-replication-sources", b.bucket);
    let Sources { sources: mut current } = client.request("GET", &path, bytes::Bytes::new()).await?.json()?;
    if !add.is_empty() || !remove.is_empty() {
        for r in remove {
            let e = source_entry(r)?;
            current.retain(|c| *c != e);
        }
        for a in add {
            let e = source_entry(a)?;
            if !current.contains(&e) {
                current.push(e);
            }
        }
        let body = serde_json::to_vec(&Sources { sources: current })?;
        current = client.request("PUT", &path, bytes::Bytes::from(body)).await?.json::<Sources>()?.sources;
    }
    if current.is_empty() {
        println!("bucket {} accepts replicas only from its owner's buckets", b.bucket);
    }
    for c in current {
        println!(
            "account {}: {} in {}",
            c.account,
            c.bucket.map_or_else(|| "any bucket".to_owned(), |b| format!("bucket {b}")),
            c.region.as_deref().unwrap_or("any region")
        );
    }
    Ok(())
}

/// Exit status of `verify` when differences were found.
#[derive(Debug)]
pub struct DifferencesFound(pub u64);

impl std::fmt::Display for DifferencesFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} difference(s) found", self.0)
    }
}

impl std::error::Error for DifferencesFound {}

async fn verify(b: &BucketArgs, rule: Option<&str>, json: bool) -> anyhow::Result<()> {
    let client = admin_client(&b.conn)?;
    let mut q = format!("/{}?ferry-replication-verify", b.bucket);
    if let Some(r) = rule {
        q.push_str(&format!("&rule-id={}", enc(r)));
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    spinner.enable_steady_tick(Duration::from_millis(120));
    let mut differences = 0u64;
    let mut error: Option<String> = None;
    client
        .lines(&q, |line| {
            if line.trim().is_empty() {
                return Ok(());
            }
            if json {
                spinner.suspend(|| println!("{line}"));
            }
            let v: VerifyLine = serde_json::from_str(line).context("a line of the answer is not a verify line")?;
            let difference = |text: String| {
                if !json {
                    spinner.suspend(|| println!("{text}"));
                }
            };
            match v {
                VerifyLine::Progress { rule, counts: c, .. } => spinner.set_message(format!(
                    "rule {rule}: {} versions checked, {} missing, {} extra, {} mismatched",
                    c.checked, c.missing, c.extra, c.mismatched
                )),
                VerifyLine::Missing { rule, key, version_id, .. } => {
                    differences += 1;
                    let vid = version_id.unwrap_or_else(|| "-".into());
                    difference(format!("{rule} {key} (version {vid}): missing at the destination"));
                }
                VerifyLine::Extra { rule, key, version_id, .. } => {
                    differences += 1;
                    let vid = version_id.unwrap_or_else(|| "-".into());
                    difference(format!("{rule} {key} (version {vid}): at the destination only (extra)"));
                }
                VerifyLine::Mismatch { rule, key, version_id, field, source, destination } => {
                    differences += 1;
                    let vid = version_id.unwrap_or_else(|| "-".into());
                    difference(format!(
                        "{rule} {key} (version {vid}): {field} differs (source {source}, destination {destination})"
                    ));
                }
                VerifyLine::Summary { rule, destination, counts: c, clean } if !json => {
                    spinner.suspend(|| {
                        println!(
                            "rule {rule} -> {destination}: {} versions checked, {} missing, {} extra, {} mismatched: {}",
                            c.checked,
                            c.missing,
                            c.extra,
                            c.mismatched,
                            if clean { "in sync" } else { "DIFFERENCES" }
                        );
                    });
                }
                VerifyLine::Summary { .. } => {}
                VerifyLine::Error { error: e } => error = Some(e),
            }
            Ok(())
        })
        .await?;
    spinner.finish_and_clear();
    if let Some(e) = error {
        anyhow::bail!("verify failed: {e}");
    }
    if differences > 0 {
        return Err(DifferencesFound(differences).into());
    }
    Ok(())
}

async fn control(a: &BackfillArgs, action: &str) -> anyhow::Result<()> {
    let client = admin_client(&a.b.conn)?;
    let v: Backfill = client
        .request(
            "POST",
            &format!("/{}?ferry-backfill-control&id={}&action={action}", a.b.bucket, a.id),
            bytes::Bytes::new(),
        )
        .await?
        .json()?;
    println!("backfill {} of bucket {} is {}", a.id, a.b.bucket, v.state.as_str());
    Ok(())
}

/// `status --wait`: polls until every rule has nothing pending and no backfill is active.
async fn wait_caught_up(client: &AdminClient, bucket: &str, json: bool) -> anyhow::Result<()> {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(120));
    let v = loop {
        let asked = std::time::Instant::now();
        let v: BucketProgress =
            client.request("GET", &format!("/{bucket}?ferry-replication-status"), bytes::Bytes::new()).await?.json()?;
        let took = asked.elapsed();
        // Per destination: every job counts, whatever rule (current or removed) recorded it.
        let pending: u64 = v.destinations.iter().map(|d| d.pending_ops).sum();
        let active = v.backfills.iter().filter(|b| b.is_active()).count();
        if pending == 0 && active == 0 {
            break v;
        }
        spinner.set_message(format!("{pending} operation(s) pending, {active} backfill(s) running"));
        // Every 50 ms, so the moment --wait returns measures the drain, but never more than a
        // sixth of the time (a status is cheap, but the region may be busy).
        tokio::time::sleep((took * 5).max(Duration::from_millis(50))).await;
    };
    spinner.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render_status(&v));
    }
    let failed: u64 = v.destinations.iter().map(|d| d.failed_ops).sum();
    if failed > 0 {
        anyhow::bail!("{failed} operation(s) failed: see the last error above, fix the cause, then `ferry replication retry`");
    }
    Ok(())
}

/// Follows a backfill with a progress bar until it ends.
async fn wait_backfill(client: &AdminClient, bucket: &str, id: i64) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} backfill [{bar:40}] {pos}/{len} objects {msg} ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    loop {
        let v: BucketProgress =
            client.request("GET", &format!("/{bucket}?ferry-replication-status"), bytes::Bytes::new()).await?.json()?;
        let b = v.backfills.into_iter().find(|x| x.id == id);
        if let Some(b) = &b {
            bar.set_length(b.total_versions);
            bar.set_position(b.done_versions);
            bar.set_message(format!("({})", b.state.as_str()));
        }
        match b.map(|b| b.state) {
            Some(s @ (BackfillState::Done | BackfillState::Cancelled)) => {
                bar.finish();
                println!("backfill {id}: {}", s.as_str());
                return Ok(());
            }
            None => {
                bar.finish();
                println!("backfill {id}: gone");
                return Ok(());
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    #[allow(clippy::cast_precision_loss)] // display
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

fn bar(ratio: f64, width: usize) -> String {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)] // bounded display math
    let filled = ((ratio.clamp(0.0, 1.0) * width as f64).round()) as usize;
    format!("[{}{}] {:5.1}%", "#".repeat(filled), "-".repeat(width - filled), ratio * 100.0)
}

/// The status table.
fn render_status(v: &BucketProgress) -> String {
    let mut out = format!("bucket {} in {}\n", v.bucket, v.region);
    if v.rules.is_empty() {
        out.push_str("  no replication configuration\n");
    } else {
        out.push_str("  (figures are per destination, over every rule that sends there)\n");
    }
    for r in &v.rules {
        out.push_str(&format!(
            "\nrule {} -> {}/{}  [{}]\n",
            r.id,
            r.destination_region,
            r.destination_bucket,
            r.state.as_str()
        ));
        out.push_str(&format!("  replicated up to  {}\n", r.replicated_up_to));
        let (lag, rpo) = (r.lag_seconds, r.rpo_seconds);
        #[allow(clippy::cast_precision_loss)] // display
        let over = if lag > rpo as f64 { "  (over the RPO!)" } else { "" };
        out.push_str(&format!("  lag               {lag:.3} s (RPO {rpo} s){over}\n"));
        out.push_str(&format!("  pending           {} ops, {}\n", r.pending_ops, human_bytes(r.pending_bytes)));
        out.push_str(&format!("  failed            {}", r.failed_ops));
        if let Some(e) = &r.last_error {
            out.push_str(&format!("  (last error: {e})"));
        }
        out.push('\n');
        if let Some(h) = r.historical_ratio {
            out.push_str(&format!("  historical        {}\n", bar(h, 30)));
        }
        // "In sync" is only ever said of a verify's result, with its time.
        match &r.last_verify {
            Some(e) if e.kind == "VerifyClean" => {
                out.push_str(&format!("  last verify       in sync at {} ({})\n", rfc3339(e.time_us), e.detail));
            }
            Some(e) => out.push_str(&format!("  last verify       DIFFERENCES at {} ({})\n", rfc3339(e.time_us), e.detail)),
            None => out.push_str("  last verify       never (ferry replication verify compares the buckets)\n"),
        }
    }
    // Jobs recorded by rules that were removed or changed since are still delivered.
    let orphans = v
        .destinations
        .iter()
        .filter(|d| d.pending_ops + d.failed_ops > 0)
        .filter(|d| !v.rules.iter().any(|r| r.destination_region == d.region && r.destination_bucket == d.bucket));
    for d in orphans {
        out.push_str(&format!(
            "\nno rule -> {}/{} (jobs of an earlier configuration)\n  replicated up to  {}\n  pending           {} ops, failed {}{}\n",
            d.region,
            d.bucket,
            d.replicated_up_to,
            d.pending_ops,
            d.failed_ops,
            d.last_error.as_ref().map(|e| format!("  (last error: {e})")).unwrap_or_default()
        ));
    }
    if !v.backfills.is_empty() {
        out.push_str("\nbackfills\n");
        for b in v.backfills.iter().take(5) {
            out.push_str(&backfill_line(b, v.now_us));
        }
    }
    if !v.events.is_empty() {
        out.push_str("\nrecent events\n");
        for e in v.events.iter().take(10) {
            out.push_str(&format!("  {} {} rule {}: {}\n", rfc3339(e.time_us), e.kind, e.rule_id, e.detail));
        }
    }
    out
}

/// One backfill of the status table: progress, rate and ETA.
#[allow(clippy::cast_precision_loss)] // display
fn backfill_line(b: &Backfill, now_us: i64) -> String {
    let (done, total) = (b.done_versions, b.total_versions);
    let secs = ((b.finished_us.unwrap_or(now_us) - b.created_us) as f64 / 1e6).max(0.001);
    let rate = done as f64 / secs;
    let eta = if rate > 0.0 && done < total { format!("{:.0} s", (total - done) as f64 / rate) } else { "-".to_owned() };
    let ratio = if total == 0 { 0.0 } else { done as f64 / total as f64 };
    format!(
        "  #{} {:<9} {} {done}/{total} objects, {} of {}, {rate:.0} obj/s, ETA {eta}, {} failed, scanned {}/{}\n",
        b.id,
        b.state.as_str(),
        bar(ratio, 20),
        human_bytes(b.done_bytes),
        human_bytes(b.total_bytes),
        b.failed_versions,
        b.scanned_versions,
        total,
    )
}

fn render_explain(v: &Explain) -> String {
    let mut out = format!(
        "{}/{} version {} ({})\n  status: {}\n  {}\n\nrules\n",
        v.bucket,
        v.key,
        v.version_id.as_deref().unwrap_or("-"),
        if v.delete_marker { "delete marker" } else { "object" },
        v.status.map_or("none", |s| s.as_str()),
        v.summary,
    );
    for r in &v.rules {
        out.push_str(&format!(
            "  {} {} -> {}: {}\n",
            if r.matches { "+" } else { "-" },
            r.rule,
            r.destination,
            r.why
        ));
    }
    if !v.delivered_to.is_empty() {
        out.push_str(&format!("\ndelivered to\n  {}\n", v.delivered_to.join("\n  ")));
    }
    if !v.jobs.is_empty() {
        out.push_str("\njobs\n");
        for j in &v.jobs {
            out.push_str(&format!(
                "  {} {} to {}: {} after {} attempt(s){}\n",
                j.op.name(),
                j.rule,
                j.destination,
                if j.state == ferry_store::replication::JobState::Pending { "pending" } else { "failed" },
                j.attempts,
                j.last_error.as_ref().map(|e| format!(", last error: {e}")).unwrap_or_default()
            ));
        }
    }
    out
}
