//! GetObjectAttributes: a version's ETag, checksums, parts, storage class and size, without its
//! body. Permission and the answers for missing keys, versions and delete markers are those of
//! a HEAD (`get.rs`).

use ferry_store::model::{BodyLayout, Checksums};
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result};

use crate::FerryS3;
use crate::checksums::ChecksumFields;
use crate::dto::ts;
use crate::perm::Perm;
use crate::sse::customer_key_of;

/// Parts listed per answer unless `MaxParts` says otherwise (S3's default).
const DEFAULT_MAX_PARTS: i32 = 1000;

/// The `Checksum` element of stored checksums (`None` when there are none).
fn checksum(c: &Checksums) -> Option<Checksum> {
    let f = ChecksumFields::of(c);
    f.any().then(|| Checksum {
        checksum_crc32: f.crc32,
        checksum_crc32c: f.crc32c,
        checksum_crc64nvme: f.crc64nvme,
        checksum_sha1: f.sha1,
        checksum_sha256: f.sha256,
        checksum_type: c.kind.map(|k| ChecksumType::from(k.as_str().to_owned())),
    })
}

impl FerryS3 {
    pub(crate) async fn get_object_attributes(
        &self,
        req: S3Request<GetObjectAttributesInput>,
    ) -> S3Result<S3Response<GetObjectAttributesOutput>> {
        let i = &req.input;
        let customer = customer_key_of!(self, &req, i)?;
        let src = self.source_version(&req, &i.bucket, &i.key, i.version_id.as_deref(), Perm::Read).await?;
        // An SSE-C object's attributes are answered only to a request with its key, as its body.
        if src.record.attrs.sse.as_ref().is_some_and(|e| e.kind == ferry_store::sse::SseKind::Customer) || customer.is_some() {
            self.data_key(src.record.attrs.sse.as_ref(), customer.as_ref())?;
        }
        // One header, comma-separated (botocore), or one value per header (other SDKs).
        let asked = |name: &str| i.object_attributes.iter().flat_map(|a| a.as_str().split(',')).any(|a| a.trim() == name);
        let v = &src.record;
        let mut out = GetObjectAttributesOutput {
            last_modified: Some(ts(v.mtime_us)),
            version_id: src.versioned.then(|| v.version_id.clone()),
            ..Default::default()
        };
        if asked(ObjectAttributes::ETAG) {
            out.e_tag = Some(ETag::Strong(v.etag.clone()));
        }
        if asked(ObjectAttributes::STORAGE_CLASS) {
            out.storage_class = Some(StorageClass::from(v.storage_class.clone().unwrap_or_else(|| "STANDARD".to_owned())));
        }
        if asked(ObjectAttributes::OBJECT_SIZE) {
            out.object_size = Some(i64::try_from(v.size).unwrap_or(i64::MAX));
        }
        if asked(ObjectAttributes::CHECKSUM) {
            out.checksum = checksum(&v.attrs.checksums);
        }
        if asked(ObjectAttributes::OBJECT_PARTS)
            && let BodyLayout::Parts { parts, multipart: true } = &v.layout
        {
            let max = i.max_parts.unwrap_or(DEFAULT_MAX_PARTS).clamp(0, DEFAULT_MAX_PARTS);
            let marker = i.part_number_marker.unwrap_or(0).max(0);
            let start = usize::try_from(marker).unwrap_or(usize::MAX).min(parts.len());
            let page: Vec<ObjectPart> = parts
                .iter()
                .enumerate()
                .skip(start)
                .take(usize::try_from(max).unwrap_or(0))
                .map(|(n, p)| {
                    let f = p.checksums.as_ref().map(ChecksumFields::of).unwrap_or_default();
                    ObjectPart {
                        part_number: i32::try_from(n + 1).ok(),
                        size: i64::try_from(p.size).ok(),
                        checksum_crc32: f.crc32,
                        checksum_crc32c: f.crc32c,
                        checksum_crc64nvme: f.crc64nvme,
                        checksum_sha1: f.sha1,
                        checksum_sha256: f.sha256,
                    }
                })
                .collect();
            let last = page.last().and_then(|p| p.part_number);
            let truncated = start + page.len() < parts.len();
            out.object_parts = Some(GetObjectAttributesParts {
                is_truncated: Some(truncated),
                max_parts: Some(max),
                next_part_number_marker: if truncated { last } else { None },
                part_number_marker: Some(marker),
                parts: Some(page),
                total_parts_count: i32::try_from(parts.len()).ok(),
            });
        }
        Ok(S3Response::new(out))
    }
}
