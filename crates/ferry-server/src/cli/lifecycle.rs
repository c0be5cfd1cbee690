//! `ferry lifecycle status`: where the region's lifecycle worker is for one bucket, over the
//! admin API (`GET /BUCKET?ferry-lifecycle-status`; the answer is
//! `ferry_store::lifecycle::BucketLifecycleStatus`, read from the worker's saved record).

use clap::Subcommand;
use ferry_store::lifecycle::BucketLifecycleStatus;

use crate::cli::replication::{BucketArgs, admin_client};

#[derive(Subcommand, Debug)]
pub enum LifecycleCommand {
    /// Show the bucket's lifecycle rules at work: whether the current pass is in the bucket
    /// (and at which key), queued for it or done with it, when the last pass ended and when the
    /// next one is due. What the passes did is in /metrics (ferry_lifecycle_actions_total).
    ///
    /// Example:
    ///   ferry lifecycle status --endpoint http://127.0.0.1:9000 --bucket logs
    #[command(verbatim_doc_comment)]
    Status {
        #[command(flatten)]
        b: BucketArgs,
        /// Print the raw JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `ferry lifecycle` command.
///
/// # Errors
/// Connection, signing or server errors, with the server's message.
pub async fn run(cmd: LifecycleCommand) -> anyhow::Result<()> {
    match cmd {
        LifecycleCommand::Status { b, json } => {
            let client = admin_client(&b.conn)?;
            let path = format!("/{}?ferry-lifecycle-status", b.bucket);
            let v: BucketLifecycleStatus = client.request("GET", &path, bytes::Bytes::new()).await?.json()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", render(&v, ferry_core::time::now_micros()));
            }
            Ok(())
        }
    }
}

/// A time, and how long ago (or from now) it is.
fn when(us: i64, now_us: i64) -> String {
    let secs = (now_us - us) / 1_000_000;
    let rel = if secs >= 0 { format!("{secs} s ago") } else { format!("in {} s", -secs) };
    format!("{} ({rel})", ferry_core::time::rfc3339_us(us))
}

fn render(v: &BucketLifecycleStatus, now_us: i64) -> String {
    let mut out = format!("bucket {}: {} enabled lifecycle rule(s)\n", v.bucket, v.rules);
    match (v.state.as_str(), v.pass_started_us) {
        ("scanning", Some(t)) => {
            let at = v.position.as_deref().map_or_else(|| "its start".to_owned(), |k| format!("key {k:?}"));
            out += &format!("pass started {}: in this bucket, at {at}\n", when(t, now_us));
        }
        ("queued", Some(t)) => out += &format!("pass started {}: this bucket is still to come\n", when(t, now_us)),
        (_, Some(t)) => out += &format!("pass started {}: done with this bucket\n", when(t, now_us)),
        _ => out += "no pass running\n",
    }
    out += &match v.last_pass_end_us {
        Some(t) => format!("last complete pass ended {} ({} passes)\n", when(t, now_us), v.passes),
        None => "no pass has completed yet\n".to_owned(),
    };
    if let Some(t) = v.next_pass_us {
        out += &format!("next pass due {}\n", when(t, now_us));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_says_where_the_pass_is() {
        let v = BucketLifecycleStatus {
            bucket: "logs".into(),
            rules: 2,
            state: "scanning".into(),
            position: Some("2026/12/01/x".into()),
            pass_started_us: Some(10_000_000),
            last_pass_end_us: None,
            next_pass_us: None,
            passes: 0,
        };
        let text = render(&v, 15_000_000);
        assert!(text.contains("2 enabled lifecycle rule(s)"), "{text}");
        assert!(text.contains("(5 s ago): in this bucket, at key \"2026/12/01/x\""), "{text}");
        assert!(text.contains("no pass has completed yet"), "{text}");
        let idle = BucketLifecycleStatus {
            state: "done".into(),
            position: None,
            pass_started_us: None,
            last_pass_end_us: Some(12_000_000),
            next_pass_us: Some(20_000_000),
            passes: 3,
            ..v
        };
        let text = render(&idle, 15_000_000);
        assert!(text.contains("no pass running"), "{text}");
        assert!(text.contains("(3 s ago) (3 passes)"), "{text}");
        assert!(text.contains("next pass due") && text.contains("(in 5 s)"), "{text}");
    }
}
