//! The `GET /BUCKET?replicationProgress` answer (computation in `ferry_store::replication::progress`).

pub use ferry_core::time::rfc3339_us;
pub use ferry_store::replication::progress::{BucketProgress, RuleProgress, bucket_progress};

use crate::dto::xml_escape;

/// The `GET /BUCKET?replicationProgress` answer, in the shape of Alibaba OSS's
/// GetBucketReplicationProgress, with Ferry's figures as extra elements.
#[must_use]
pub fn progress_xml(p: &BucketProgress, rule_id: Option<&str>) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ReplicationProgress>");
    for r in p.rules.iter().filter(|r| rule_id.is_none_or(|id| id == r.id)) {
        x.push_str("<Rule>");
        x.push_str(&format!("<ID>{}</ID>", xml_escape(&r.id)));
        x.push_str(&format!("<PrefixSet><Prefix>{}</Prefix></PrefixSet>", xml_escape(&r.prefix)));
        x.push_str(&format!("<Action>{}</Action>", if r.delete_markers { "ALL" } else { "PUT" }));
        x.push_str(&format!(
            "<Destination><Bucket>{}</Bucket><Location>{}</Location><TransferType>internal</TransferType></Destination>",
            xml_escape(&r.destination_bucket),
            xml_escape(&r.destination_region)
        ));
        x.push_str(&format!("<Status>{}</Status>", if r.enabled { "doing" } else { "closing" }));
        x.push_str(&format!(
            "<HistoricalObjectReplication>{}</HistoricalObjectReplication>",
            if r.existing_objects { "enabled" } else { "disabled" }
        ));
        x.push_str("<Progress>");
        if r.existing_objects || r.historical_ratio.is_some() {
            x.push_str(&format!("<HistoricalObject>{:.4}</HistoricalObject>", r.historical_ratio.unwrap_or(0.0)));
        }
        x.push_str(&format!("<NewObject>{}</NewObject>", r.replicated_up_to));
        x.push_str("</Progress>");
        x.push_str(&format!(
            "<FerryState>{}</FerryState><FerryPendingOperations>{}</FerryPendingOperations><FerryPendingBytes>{}</FerryPendingBytes>\
             <FerryFailedOperations>{}</FerryFailedOperations><FerryLagSeconds>{:.3}</FerryLagSeconds>",
            r.state.as_str(), r.pending_ops, r.pending_bytes, r.failed_ops, r.lag_seconds
        ));
        if let Some(e) = &r.last_error {
            x.push_str(&format!("<FerryLastError>{}</FerryLastError>", xml_escape(e)));
        }
        x.push_str("</Rule>");
    }
    x.push_str("</ReplicationProgress>");
    x
}
