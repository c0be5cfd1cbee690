//! `ferry replication ...`: inspect and drive the replication of a bucket on a running region,
//! through Ferry's admin API (SigV4-signed like any S3 request; the bucket owner's keys).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::Value;

use crate::admin_client::AdminClient;
use crate::client::Endpoint;
use ferry_store::replication::BackfillRequest;

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

fn admin_client(c: &ConnArgs) -> anyhow::Result<AdminClient> {
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
                let v = client
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
            let v = client.request("GET", &q, bytes::Bytes::new()).await?.json()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", render_explain(&v));
            }
            Ok(())
        }
        ReplicationCommand::Retry(b) => {
            let client = admin_client(&b.conn)?;
            let out =
                client.request("POST", &format!("/{}?ferry-replication-retry", b.bucket), bytes::Bytes::new()).await?.json()?;
            println!("{} failed job(s) of bucket {} will be retried", out["retried"], b.bucket);
            Ok(())
        }
        ReplicationCommand::Resync { b, rule, prefix, status, older_than, wait } => {
            let client = admin_client(&b.conn)?;
            let body = BackfillRequest {
                rule,
                prefix,
                status: status.parse()?,
                older_than_secs: older_than.map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            };
            let out = client
                .request(
                    "POST",
                    &format!("/{}?ferry-backfill", b.bucket),
                    bytes::Bytes::from(serde_json::to_vec(&body)?),
                )
                .await?
                .json()?;
            let id = out["id"].as_i64().unwrap_or(0);
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
fn source_entry(text: &str) -> anyhow::Result<Value> {
    let (account, rest) = text.split_once('@').map_or((text, None), |(a, r)| (a, Some(r)));
    let (region, bucket) = match rest {
        None => (None, None),
        Some(r) => r.split_once('/').map_or((Some(r), None), |(r, b)| (Some(r), Some(b))),
    };
    if account.is_empty() || region == Some("") || bucket == Some("") {
        anyhow::bail!("`{text}`: write ACCOUNT, ACCOUNT@REGION or ACCOUNT@REGION/BUCKET");
    }
    Ok(serde_json::json!({ "account": account, "region": region, "bucket": bucket }))
}

async fn sources(b: &BucketArgs, add: &[String], remove: &[String]) -> anyhow::Result<()> {
    let client = admin_client(&b.conn)?;
    let path = format!("/{}?ferry-replication-sources", b.bucket);
    let mut current =
        client.request("GET", &path, bytes::Bytes::new()).await?.json()?["sources"].as_array().cloned().unwrap_or_default();
    if !add.is_empty() || !remove.is_empty() {
        let same = |a: &Value, b: &Value| ["account", "region", "bucket"].iter().all(|k| a[k] == b[k]);
        for r in remove {
            let e = source_entry(r)?;
            current.retain(|c| !same(c, &e));
        }
        for a in add {
            let e = source_entry(a)?;
            if !current.iter().any(|c| same(c, &e)) {
                current.push(e);
            }
        }
        let body = serde_json::json!({ "sources": current });
        current = client.request("PUT", &path, bytes::Bytes::from(body.to_string())).await?.json()?["sources"]
            .as_array()
            .cloned()
            .unwrap_or_default();
    }
    if current.is_empty() {
        println!("bucket {} accepts replicas only from its owner's buckets", b.bucket);
    }
    for c in current {
        println!(
            "account {}: {} in {}",
            c["account"].as_str().unwrap_or("?"),
            c["bucket"].as_str().map_or_else(|| "any bucket".to_owned(), |b| format!("bucket {b}")),
            c["region"].as_str().unwrap_or("any region")
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
            let v: Value = serde_json::from_str(line).context("a line of the answer is not JSON")?;
            match v["type"].as_str() {
                Some("progress") => spinner.set_message(format!(
                    "rule {}: {} versions checked, {} missing, {} extra, {} mismatched",
                    v["rule"].as_str().unwrap_or("?"),
                    v["checked"],
                    v["missing"],
                    v["extra"],
                    v["mismatched"]
                )),
                Some("missing" | "extra" | "mismatch") => {
                    differences += 1;
                    if !json {
                        let what = match v["type"].as_str() {
                            Some("mismatch") => format!(
                                "{} differs (source {}, destination {})",
                                v["field"].as_str().unwrap_or("?"),
                                v["source"],
                                v["destination"]
                            ),
                            Some("missing") => "missing at the destination".to_owned(),
                            _ => "at the destination only (extra)".to_owned(),
                        };
                        spinner.suspend(|| {
                            println!(
                                "{} {} (version {}): {what}",
                                v["rule"].as_str().unwrap_or("?"),
                                v["key"].as_str().unwrap_or("?"),
                                v["version_id"].as_str().unwrap_or("-")
                            )
                        });
                    }
                }
                Some("summary") if !json => {
                    spinner.suspend(|| {
                        println!(
                            "rule {} -> {}: {} versions checked, {} missing, {} extra, {} mismatched: {}",
                            v["rule"].as_str().unwrap_or("?"),
                            v["destination"].as_str().unwrap_or("?"),
                            v["checked"],
                            v["missing"],
                            v["extra"],
                            v["mismatched"],
                            if v["clean"].as_bool() == Some(true) { "in sync" } else { "DIFFERENCES" }
                        );
                    });
                }
                Some("error") => error = Some(v["error"].as_str().unwrap_or("?").to_owned()),
                _ => {}
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
    let v = client
        .request(
            "POST",
            &format!("/{}?ferry-backfill-control&id={}&action={action}", a.b.bucket, a.id),
            bytes::Bytes::new(),
        )
        .await?
        .json()?;
    println!("backfill {} of bucket {} is {}", a.id, a.b.bucket, v["state"].as_str().unwrap_or("?"));
    Ok(())
}

/// `status --wait`: polls until every rule has nothing pending and no backfill is active.
async fn wait_caught_up(client: &AdminClient, bucket: &str, json: bool) -> anyhow::Result<()> {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(120));
    let v = loop {
        let asked = std::time::Instant::now();
        let v = client.request("GET", &format!("/{bucket}?ferry-replication-status"), bytes::Bytes::new()).await?.json()?;
        let took = asked.elapsed();
        // Per destination: every job counts, whatever rule (current or removed) recorded it.
        let dests = v["destinations"].as_array().cloned().unwrap_or_default();
        let pending: u64 = dests.iter().map(|d| d["pending_ops"].as_u64().unwrap_or(0)).sum();
        let active = v["backfills"].as_array().map_or(0, |a| {
            a.iter().filter(|b| matches!(b["state"].as_str(), Some("counting" | "running"))).count()
        });
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
    let failed: u64 = v["destinations"].as_array().map_or(0, |a| a.iter().map(|d| d["failed_ops"].as_u64().unwrap_or(0)).sum());
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
        let v = client.request("GET", &format!("/{bucket}?ferry-replication-status"), bytes::Bytes::new()).await?.json()?;
        let b = v["backfills"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["id"].as_i64() == Some(id)))
            .cloned()
            .unwrap_or(Value::Null);
        bar.set_length(b["total_versions"].as_u64().unwrap_or(0));
        bar.set_position(b["done_versions"].as_u64().unwrap_or(0));
        bar.set_message(format!("({})", b["state"].as_str().unwrap_or("?")));
        match b["state"].as_str() {
            Some("done" | "cancelled") | None => {
                bar.finish();
                println!("backfill {id}: {}", b["state"].as_str().unwrap_or("gone"));
                return Ok(());
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
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
fn render_status(v: &Value) -> String {
    let mut out = format!(
        "bucket {} in {}\n",
        v["bucket"].as_str().unwrap_or("?"),
        v["region"].as_str().unwrap_or("?")
    );
    let rules = v["rules"].as_array().cloned().unwrap_or_default();
    if rules.is_empty() {
        out.push_str("  no replication configuration\n");
    }
    if !rules.is_empty() {
        out.push_str("  (figures are per destination, over every rule that sends there)\n");
    }
    for r in &rules {
        out.push_str(&format!(
            "\nrule {} -> {}/{}  [{}]\n",
            r["id"].as_str().unwrap_or("?"),
            r["destination_region"].as_str().unwrap_or("?"),
            r["destination_bucket"].as_str().unwrap_or("?"),
            r["state"].as_str().unwrap_or("?")
        ));
        out.push_str(&format!("  replicated up to  {}\n", r["replicated_up_to"].as_str().unwrap_or("?")));
        let lag = r["lag_seconds"].as_f64().unwrap_or(0.0);
        let rpo = r["rpo_seconds"].as_u64().unwrap_or(0);
        #[allow(clippy::cast_precision_loss)] // display
        let over = if lag > rpo as f64 { "  (over the RPO!)" } else { "" };
        out.push_str(&format!("  lag               {lag:.3} s (RPO {rpo} s){over}\n"));
        out.push_str(&format!(
            "  pending           {} ops, {}\n",
            r["pending_ops"].as_u64().unwrap_or(0),
            human_bytes(r["pending_bytes"].as_u64().unwrap_or(0))
        ));
        let failed = r["failed_ops"].as_u64().unwrap_or(0);
        out.push_str(&format!("  failed            {failed}"));
        if let Some(e) = r["last_error"].as_str() {
            out.push_str(&format!("  (last error: {e})"));
        }
        out.push('\n');
        if let Some(h) = r["historical_ratio"].as_f64() {
            out.push_str(&format!("  historical        {}\n", bar(h, 30)));
        }
        // "In sync" is only ever said of a verify's result, with its time.
        let v = &r["last_verify"];
        let when = rfc3339(v["time_us"].as_i64().unwrap_or(0));
        match v["kind"].as_str() {
            Some("VerifyClean") => out.push_str(&format!(
                "  last verify       in sync at {when} ({})\n",
                v["detail"].as_str().unwrap_or("")
            )),
            Some(_) => out.push_str(&format!(
                "  last verify       DIFFERENCES at {when} ({})\n",
                v["detail"].as_str().unwrap_or("")
            )),
            None => out.push_str("  last verify       never (ferry replication verify compares the buckets)\n"),
        }
    }
    // Jobs recorded by rules that were removed or changed since are still delivered.
    let orphans: Vec<&Value> = v["destinations"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|d| d["pending_ops"].as_u64().unwrap_or(0) + d["failed_ops"].as_u64().unwrap_or(0) > 0)
                .filter(|d| {
                    !rules.iter().any(|r| r["destination_region"] == d["region"] && r["destination_bucket"] == d["bucket"])
                })
                .collect()
        })
        .unwrap_or_default();
    for d in orphans {
        out.push_str(&format!(
            "\nno rule -> {}/{} (jobs of an earlier configuration)\n  replicated up to  {}\n  pending           {} ops, failed {}{}\n",
            d["region"].as_str().unwrap_or("?"),
            d["bucket"].as_str().unwrap_or("?"),
            d["replicated_up_to"].as_str().unwrap_or("?"),
            d["pending_ops"].as_u64().unwrap_or(0),
            d["failed_ops"].as_u64().unwrap_or(0),
            d["last_error"].as_str().map(|e| format!("  (last error: {e})")).unwrap_or_default()
        ));
    }
    let backfills = v["backfills"].as_array().cloned().unwrap_or_default();
    if !backfills.is_empty() {
        out.push_str("\nbackfills\n");
        let now = v["now_us"].as_i64().unwrap_or(0);
        for b in backfills.iter().take(5) {
            let (done, total) = (b["done_versions"].as_u64().unwrap_or(0), b["total_versions"].as_u64().unwrap_or(0));
            let created = b["created_us"].as_i64().unwrap_or(now);
            #[allow(clippy::cast_precision_loss)] // display
            let secs = ((b["finished_us"].as_i64().unwrap_or(now) - created) as f64 / 1e6).max(0.001);
            #[allow(clippy::cast_precision_loss)] // display
            let rate = done as f64 / secs;
            #[allow(clippy::cast_precision_loss)] // display
            let eta = if rate > 0.0 && done < total { format!("{:.0} s", (total - done) as f64 / rate) } else { "-".to_owned() };
            #[allow(clippy::cast_precision_loss)] // display
            let ratio = if total == 0 { 0.0 } else { done as f64 / total as f64 };
            out.push_str(&format!(
                "  #{} {:<9} {} {done}/{total} objects, {} of {}, {rate:.0} obj/s, ETA {eta}, {} failed, scanned {}/{}\n",
                b["id"],
                b["state"].as_str().unwrap_or("?"),
                bar(ratio, 20),
                human_bytes(b["done_bytes"].as_u64().unwrap_or(0)),
                human_bytes(b["total_bytes"].as_u64().unwrap_or(0)),
                b["failed_versions"].as_u64().unwrap_or(0),
                b["scanned_versions"].as_u64().unwrap_or(0),
                total,
            ));
        }
    }
    let events = v["events"].as_array().cloned().unwrap_or_default();
    if !events.is_empty() {
        out.push_str("\nrecent events\n");
        for e in events.iter().take(10) {
            out.push_str(&format!(
                "  {} {} rule {}: {}\n",
                crate::cli_replication::rfc3339(e["time_us"].as_i64().unwrap_or(0)),
                e["kind"].as_str().unwrap_or("?"),
                e["rule_id"].as_str().unwrap_or("?"),
                e["detail"].as_str().unwrap_or("")
            ));
        }
    }
    out
}

pub(crate) fn rfc3339(us: i64) -> String {
    ferry_s3::progress::rfc3339_us(us)
}

fn render_explain(v: &Value) -> String {
    let mut out = format!(
        "{}/{} version {} ({})\n  status: {}\n  {}\n\nrules\n",
        v["bucket"].as_str().unwrap_or("?"),
        v["key"].as_str().unwrap_or("?"),
        v["version_id"].as_str().unwrap_or("-"),
        if v["delete_marker"].as_bool() == Some(true) { "delete marker" } else { "object" },
        v["status"].as_str().unwrap_or("none"),
        v["summary"].as_str().unwrap_or(""),
    );
    for r in v["rules"].as_array().cloned().unwrap_or_default() {
        out.push_str(&format!(
            "  {} {} -> {}: {}\n",
            if r["matches"].as_bool() == Some(true) { "+" } else { "-" },
            r["rule"].as_str().unwrap_or("?"),
            r["destination"].as_str().unwrap_or("?"),
            r["why"].as_str().unwrap_or("")
        ));
    }
    let delivered: Vec<&str> =
        v["delivered_to"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    if !delivered.is_empty() {
        out.push_str(&format!("\ndelivered to\n  {}\n", delivered.join("\n  ")));
    }
    let jobs = v["jobs"].as_array().cloned().unwrap_or_default();
    if !jobs.is_empty() {
        out.push_str("\njobs\n");
        for j in jobs {
            out.push_str(&format!(
                "  {} {} to {}: {} after {} attempt(s){}\n",
                j["op"].as_str().unwrap_or("?"),
                j["rule"].as_str().unwrap_or("?"),
                j["destination"].as_str().unwrap_or("?"),
                j["state"].as_str().unwrap_or("?"),
                j["attempts"],
                j["last_error"].as_str().map(|e| format!(", last error: {e}")).unwrap_or_default()
            ));
        }
    }
    out
}
