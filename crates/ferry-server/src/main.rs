//! `ferry`: an S3-compatible object store whose buckets replicate across regions.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ferry_core::config::{Config, DEFAULT_LISTEN, RegionConfig};
use ferry_server::server::{Server, ServerOptions};

/// Ferry: an S3-compatible object store with cross-region bucket replication.
///
/// Run `ferry serve` for a single local region, or `ferry serve --config FILE` for several
/// regions (see examples/two-regions.toml). Any S3 client works against it: aws cli, boto3,
/// the AWS SDKs, rclone, s3cmd.
#[derive(Parser, Debug)]
#[command(name = "ferry", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the S3 API for one or more regions.
    ///
    /// Without --config: one region named `local` on 127.0.0.1:9000 with data in ./ferry-data.
    /// Its credentials come from FERRY_ACCESS_KEY / FERRY_SECRET_KEY, or are generated at the
    /// first start, stored in the data directory and printed once.
    ///
    /// With --config FILE: every [[region]] of the file is served by this process, each on its own
    /// listener with its own data directory, sharing no state; [[credential]] entries are the
    /// accepted keys. Relative data_dir paths are relative to the file. Unknown keys are errors.
    ///
    /// Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change the level.
    /// SIGTERM or SIGINT stops accepting, lets in-flight requests finish (see
    /// --shutdown-timeout) and exits 0.
    Serve(ServeArgs),
    /// Load-test an S3 endpoint (Ferry or any other) and report throughput and latency.
    ///
    /// Examples:
    ///   ferry bench --endpoint http://127.0.0.1:9000 --mode put --size 4KiB --concurrency 32 --duration 10s
    ///   ferry bench --endpoint http://127.0.0.1:9000 --mode get --size 64MiB --concurrency 4 --objects 8
    ///
    /// Credentials come from --access-key/--secret-key or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.
    #[command(verbatim_doc_comment)]
    Bench(BenchArgs),
    /// Emulate a wide-area link on one machine: a TCP proxy with delay, jitter, a bandwidth cap,
    /// stalls and partitions, changeable at run time through --control.
    ///
    /// Put it between two regions by pointing a [[peer]] endpoint at its --listen address.
    /// Example, a 50 ms round trip capped at 100 MiB/s in front of the region on :9100:
    ///   ferry netem --listen 127.0.0.1:9200 --upstream 127.0.0.1:9100 --delay 25ms --rate 100MiB --control 127.0.0.1:9201
    ///   curl -X POST '127.0.0.1:9201/partition?mode=blackhole'     # or reset, 503; none heals
    ///   curl -X POST '127.0.0.1:9201/stall?for=5s'
    ///   curl -X POST '127.0.0.1:9201/link?delay=100ms&rate=none'
    ///   curl 127.0.0.1:9201/                                       # spec, partition, byte counts
    #[command(verbatim_doc_comment)]
    Netem(ferry_server::cli::netem::NetemArgs),
    /// Inspect and drive replication of a bucket on a running region.
    #[command(subcommand)]
    Replication(ferry_server::cli::replication::ReplicationCommand),
    /// See where a bucket's lifecycle rules are being carried out on a running region.
    #[command(subcommand)]
    Lifecycle(ferry_server::cli::lifecycle::LifecycleCommand),
    /// Inspect a region that runs as several nodes on PostgreSQL metadata.
    #[command(subcommand)]
    Region(ferry_server::cli::region::RegionCommand),
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Endpoint URL, e.g. http://127.0.0.1:9000.
    #[arg(long, value_name = "URL")]
    endpoint: String,
    /// Access key.
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    access_key: String,
    /// Secret key.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    secret_key: String,
    /// Signing region.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Bucket to use (created if missing).
    #[arg(long, default_value = "ferry-bench")]
    bucket: String,
    /// What to measure.
    #[arg(long, value_enum, default_value = "put")]
    mode: ferry_server::cli::bench::Mode,
    /// Object size (4096, 4KiB, 64MiB...), or a range drawn log-uniformly (4KiB-4MiB).
    #[arg(long, default_value = "4KiB", value_parser = ferry_server::cli::bench::parse_sizes)]
    size: ferry_server::cli::bench::Sizes,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// How long to run (10s, 1m...).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop after this many requests instead.
    #[arg(long)]
    count: Option<u64>,
    /// Objects written first for get, stat, delete, list, mixed and backfill runs.
    #[arg(long, default_value_t = 1000)]
    objects: u64,
    /// Replication mode: endpoint of the destination region.
    #[arg(long, value_name = "URL")]
    dest_endpoint: Option<String>,
    /// Replication mode: destination bucket. Default: BUCKET-replica.
    #[arg(long)]
    dest_bucket: Option<String>,
    /// Replication mode: PUTs per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Replication mode: create both buckets (versioned) and the replication rule first.
    #[arg(long)]
    setup: bool,
    /// Replication mode: fail (exit code 1) when the PUTs achieve less than 95 % of `--rate`
    /// (the figures would then be those of a lower rate; without it, a warning says so).
    #[arg(long)]
    strict: bool,
    /// PUTs ask for SSE-S3 (`x-amz-server-side-encryption: AES256`): the region needs a
    /// master key. Reads of what they wrote are then decrypted.
    #[arg(long)]
    sse_s3: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Configuration file (TOML) declaring regions and credentials.
    #[arg(long, short = 'c', env = "FERRY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Listen address of the single region (ignored with --config).
    #[arg(long, default_value = DEFAULT_LISTEN, value_name = "IP:PORT", conflicts_with = "config")]
    listen: String,

    /// Data directory of the single region (ignored with --config).
    #[arg(long, default_value = "ferry-data", value_name = "DIR", conflicts_with = "config")]
    data_dir: PathBuf,

    /// Access key of the single region; with FERRY_SECRET_KEY replaces the stored credentials.
    #[arg(long, env = "FERRY_ACCESS_KEY", hide_env_values = true, value_name = "KEY")]
    access_key: Option<String>,

    /// Secret key matching FERRY_ACCESS_KEY.
    #[arg(long, env = "FERRY_SECRET_KEY", hide_env_values = true, value_name = "SECRET")]
    secret_key: Option<String>,

    /// Web console of the single region (ignored with --config, which has `[console]`):
    /// IP:PORT, or `off`. If the default address is taken, Ferry serves without a console.
    #[arg(long, default_value = ferry_core::config::DEFAULT_CONSOLE_LISTEN, value_name = "IP:PORT|off", conflicts_with = "config")]
    console: String,

    /// Seconds to wait for in-flight requests when stopping.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    shutdown_timeout: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Bench(args) => bench(args).await,
            Command::Replication(cmd) => ferry_server::cli::replication::run(cmd).await,
            Command::Netem(args) => ferry_server::cli::netem::run(args, wait_for_signal()).await,
            Command::Region(cmd) => ferry_server::cli::region::run(cmd).await,
            Command::Lifecycle(cmd) => ferry_server::cli::lifecycle::run(cmd).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// `error: cause: cause` on one line.
fn one_line(e: &anyhow::Error) -> String {
    e.chain().map(ToString::to_string).collect::<Vec<_>>().join(": ")
}

fn user_from(c: &ferry_core::config::CredentialConfig) -> ferry_s3::User {
    let mut u = ferry_s3::User::new(&c.access_key, &c.secret_key, c.display_name.as_deref(), c.user_id.as_deref())
        .with_email(c.email.as_deref());
    if let Some(b) = c.public_access_block {
        u = u.with_public_access_block(ferry_store::model::PublicAccessBlock {
            block_public_acls: b.block_public_acls,
            ignore_public_acls: b.ignore_public_acls,
            block_public_policy: b.block_public_policy,
            restrict_public_buckets: b.restrict_public_buckets,
        });
    }
    if c.replication { u.replicator() } else { u }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let env_user = match (&args.access_key, &args.secret_key) {
        (Some(a), Some(s)) => Some(ferry_s3::User::new(a, s, None, None)),
        (None, None) => None,
        _ => anyhow::bail!("set both FERRY_ACCESS_KEY and FERRY_SECRET_KEY, or neither"),
    };
    let cfg = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config {
            credential: Vec::new(),
            region: vec![RegionConfig::single(&args.listen, args.data_dir.clone())],
            peer: Vec::new(),
            bucket: Vec::new(),
            replication: ferry_core::config::ReplicationSettings::default(),
            lifecycle: ferry_core::config::LifecycleSettings::default(),
            console: ferry_core::config::ConsoleConfig {
                listen: (args.console != "off").then(|| args.console.clone()),
                ..ferry_core::config::ConsoleConfig::default()
            },
        },
    };
    let regions = cfg.region.clone();
    let mut users = cfg.credential.iter().map(user_from).collect::<Vec<_>>();
    if let Some(u) = env_user {
        users.push(u);
    }
    if !users.iter().any(|u| !u.replication) {
        let dir = &regions[0].data_dir;
        let (creds, created) = ferry_server::credentials::load_or_create(dir)?;
        if created {
            eprintln!(
                "ferry: generated credentials (stored in {}):\n  access key: {}\n  secret key: {}",
                dir.join("credentials.json").display(),
                creds.access_key,
                creds.secret_key
            );
        }
        users.push(ferry_s3::User::new(&creds.access_key, &creds.secret_key, None, None));
    }
    let opts = ServerOptions {
        peers: cfg.peer.clone(),
        buckets: cfg.bucket.clone(),
        replication: cfg.replication.clone(),
        lifecycle: cfg.lifecycle.clone(),
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        console: cfg.console.listen.clone(),
        console_tls: cfg.console.tls_cert.clone().zip(cfg.console.tls_key.clone()),
        // The single region's default console address may be held by another `ferry serve`.
        console_required: args.config.is_some() || args.console != ferry_core::config::DEFAULT_CONSOLE_LISTEN,
        ..ServerOptions::new(regions, users)
    };
    let server = Server::start(opts).await.context("cannot start")?;
    for r in server.regions() {
        eprintln!("ferry: region {} serving S3 on {}", r.name, r.url);
    }
    if let Some(url) = server.console_url() {
        eprintln!("ferry: console: {url}");
    }
    let stop = server.stop_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping");
        stop.cancel();
    });
    server.wait().await;
    Ok(())
}

async fn bench(a: BenchArgs) -> anyhow::Result<()> {
    use ferry_server::cli::bench::{BenchOptions, run};
    let dest = a.dest_endpoint.map(|url| {
        let ep = ferry_server::cli::client::Endpoint {
            url,
            access_key: a.access_key.clone(),
            secret_key: a.secret_key.clone(),
            region: a.region.clone(),
        };
        (ep, a.dest_bucket.clone().unwrap_or_else(|| format!("{}-replica", a.bucket)))
    });
    let report = run(BenchOptions {
        endpoint: ferry_server::cli::client::Endpoint {
            url: a.endpoint,
            access_key: a.access_key,
            secret_key: a.secret_key,
            region: a.region,
        },
        bucket: a.bucket,
        mode: a.mode,
        size: a.size,
        concurrency: a.concurrency,
        duration: a.duration,
        count: a.count,
        objects: a.objects,
        dest,
        rate: a.rate,
        setup: a.setup,
        sse_s3: a.sse_s3,
    })
    .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    if let Some(why) = report.fell_behind() {
        anyhow::ensure!(!a.strict, "{why}");
        eprintln!("ferry bench: warning: {why}");
    }
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accounts_block_public_access_reaches_its_user() {
        let text = r#"
[[credential]]
access_key = "AK"
secret_key = "SK"
public_access_block = { ignore_public_acls = true, block_public_policy = true }

[[credential]]
access_key = "OTHER"
secret_key = "SK"

[[region]]
name = "us-east-1"
listen = "127.0.0.1:9000"
data_dir = "data"
"#;
        let cfg = ferry_core::config::Config::parse(text).unwrap();
        let blocked = user_from(&cfg.credential[0]).public_access_block;
        assert!(blocked.ignore_public_acls && blocked.block_public_policy);
        assert!(!blocked.block_public_acls && !blocked.restrict_public_buckets);
        assert_eq!(
            user_from(&cfg.credential[1]).public_access_block,
            ferry_store::model::PublicAccessBlock::default()
        );
    }
}
