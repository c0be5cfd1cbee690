//! The peers a region replicates to: the other regions of the same process, `[[peer]]`
//! entries, and the region itself (same-region replication). Each region has its own set, as
//! if it ran alone; they reach each other only over HTTP(S). Listings and HEADs of a peer's
//! versions (for verify) are here too.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use ferry_core::config::PeerKind;
use ferry_store::replication::{SOURCE_HEADER, SourceRef};

use crate::client::{ClientSettings, build};
use crate::error::{Error, Result};

/// One peer.
pub struct Peer {
    /// Region name.
    pub name: String,
    /// Ferry (full fidelity) or any S3 service.
    pub kind: PeerKind,
    /// Endpoint URL (for logs and status).
    pub url: String,
    /// The client, signed with the peer's credentials.
    pub client: Client,
    /// Ferry peers: the lean client for small PUTs ([`crate::lean`]).
    pub lean: Option<Arc<crate::lean::LeanClient>>,
    /// Ferry peers: batches of small replicas ([`crate::batch`]), through the lean client.
    pub batch: Option<crate::batch::Batcher>,
    /// S3 peers: the accounts (user ids) whose buckets may replicate there.
    pub accounts: Vec<String>,
}

impl Peer {
    /// True for another Ferry region (which decides itself whom it accepts).
    #[must_use]
    pub fn is_ferry(&self) -> bool {
        self.kind == PeerKind::Ferry
    }
}

/// A version as a peer lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteVersion {
    pub key: String,
    pub version_id: String,
    pub is_latest: bool,
    pub delete_marker: bool,
    pub etag: String,
    pub size: u64,
    /// Last-modified, milliseconds since the epoch (listings have millisecond precision).
    pub mtime_ms: i64,
}

/// What a HEAD on a peer tells.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RemoteHead {
    pub etag: String,
    pub size: u64,
    pub content_type: Option<String>,
    pub user_metadata: std::collections::BTreeMap<String, String>,
    pub tags: Vec<(String, String)>,
}

/// A peer to set up.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    pub name: String,
    pub kind: PeerKind,
    pub settings: ClientSettings,
    /// S3 peers: the accounts (user ids) whose buckets may replicate there.
    pub accounts: Vec<String>,
}

/// A request customizer that adds the [`SOURCE_HEADER`] naming `source` (for Ferry peers;
/// signed with the rest of the request).
pub fn source_header(source: &SourceRef) -> impl Fn(&mut aws_sdk_s3::config::http::HttpRequest) + Send + Sync + 'static {
    let value = source.encode().ok();
    move |r| {
        if let Some(v) = &value {
            r.headers_mut().insert(SOURCE_HEADER, v.clone());
        }
    }
}

/// The peers of one region, by name.
pub struct PeerSet {
    local: String,
    peers: BTreeMap<String, Arc<Peer>>,
}

impl PeerSet {
    /// Builds clients for `specs` (which include the local region itself).
    ///
    /// # Errors
    /// When a client cannot be built (bad CA file).
    pub fn new(local: &str, specs: &[PeerSpec]) -> Result<Self> {
        let mut peers = BTreeMap::new();
        for s in specs {
            let client = build(&s.settings).map_err(|e| Error::Client(format!("peer `{}`: {e}", s.name)))?;
            let lean = match s.kind {
                PeerKind::Ferry => Some(Arc::new(
                    crate::lean::LeanClient::new(&s.settings).map_err(|e| Error::Client(format!("peer `{}`: {e}", s.name)))?,
                )),
                PeerKind::S3 => None,
            };
            let batch = lean.clone().map(crate::batch::Batcher::new);
            peers.insert(
                s.name.clone(),
                Arc::new(Peer {
                    name: s.name.clone(),
                    kind: s.kind,
                    url: s.settings.url.clone(),
                    client,
                    lean,
                    batch,
                    accounts: s.accounts.clone(),
                }),
            );
        }
        Ok(Self { local: local.to_owned(), peers })
    }

    /// The local region's name.
    #[must_use]
    pub fn local(&self) -> &str {
        &self.local
    }

    /// A peer by name.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<Arc<Peer>> {
        self.peers.get(name).cloned()
    }

    /// Every peer (the local region included).
    pub fn all(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.peers.values()
    }

    /// True when `name` is this region or a known peer.
    #[must_use]
    pub fn knows(&self, name: &str) -> bool {
        self.peers.contains_key(name)
    }

    /// True when `name` is a Ferry peer (version ids are kept there).
    #[must_use]
    pub fn is_ferry(&self, name: &str) -> bool {
        self.get(name).is_some_and(|p| p.kind == PeerKind::Ferry)
    }

    /// One page of the versions of `bucket` on `peer` under `prefix`, after the marker; and the
    /// marker of the next page.
    ///
    /// # Errors
    /// An unknown peer, or the peer's error.
    pub async fn list_versions(
        &self,
        source: &SourceRef,
        peer: &str,
        bucket: &str,
        prefix: &str,
        after: Option<(String, String)>,
    ) -> Result<(Vec<RemoteVersion>, Option<(String, String)>)> {
        let p = self.get(peer).ok_or_else(|| Error::UnknownPeer(peer.to_owned()))?;
        let (km, vm) = after.unzip();
        let page = p
            .client
            .list_object_versions()
            .bucket(bucket)
            .prefix(prefix)
            .set_key_marker(km)
            .set_version_id_marker(vm)
            .max_keys(1000)
            .customize()
            .mutate_request(source_header(source))
            .send()
            .await
            .map_err(|e| Error::peer(peer, &e))?;
        let ms = |t: Option<&aws_sdk_s3::primitives::DateTime>| t.and_then(|t| t.to_millis().ok()).unwrap_or(0);
        let mut out: Vec<RemoteVersion> = page
            .versions()
            .iter()
            .map(|v| RemoteVersion {
                key: v.key().unwrap_or_default().to_owned(),
                version_id: v.version_id().unwrap_or_default().to_owned(),
                is_latest: v.is_latest().unwrap_or(false),
                delete_marker: false,
                etag: v.e_tag().unwrap_or_default().trim_matches('"').to_owned(),
                size: u64::try_from(v.size().unwrap_or(0)).unwrap_or(0),
                mtime_ms: ms(v.last_modified()),
            })
            .collect();
        out.extend(page.delete_markers().iter().map(|d| RemoteVersion {
            key: d.key().unwrap_or_default().to_owned(),
            version_id: d.version_id().unwrap_or_default().to_owned(),
            is_latest: d.is_latest().unwrap_or(false),
            delete_marker: true,
            etag: String::new(),
            size: 0,
            mtime_ms: ms(d.last_modified()),
        }));
        let next = if page.is_truncated() == Some(true) {
            page.next_key_marker().map(|k| (k.to_owned(), page.next_version_id_marker().unwrap_or_default().to_owned()))
        } else {
            None
        };
        Ok((out, next))
    }

    /// Metadata of one version on `peer` (`version_id` `None`: the latest), `None` if absent.
    ///
    /// # Errors
    /// An unknown peer, or the peer's error.
    pub async fn head(
        &self,
        source: &SourceRef,
        peer: &str,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<Option<RemoteHead>> {
        let p = self.get(peer).ok_or_else(|| Error::UnknownPeer(peer.to_owned()))?;
        let vid = version_id.map(str::to_owned);
        let head = match p
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .set_version_id(vid.clone())
            .customize()
            .mutate_request(source_header(source))
            .send()
            .await
        {
            Ok(h) => h,
            Err(e) if matches!(&e, SdkError::ServiceError(s) if s.raw().status().as_u16() == 404) => return Ok(None),
            Err(e) => return Err(Error::peer(peer, &e)),
        };
        let tags = if head.tag_count().unwrap_or(0) > 0 {
            match p
                .client
                .get_object_tagging()
                .bucket(bucket)
                .key(key)
                .set_version_id(vid)
                .customize()
                .mutate_request(source_header(source))
                .send()
                .await
            {
                Ok(t) => t.tag_set().iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect(),
                Err(e) => return Err(Error::peer(peer, &e)),
            }
        } else {
            Vec::new()
        };
        Ok(Some(RemoteHead {
            etag: head.e_tag().unwrap_or_default().trim_matches('"').to_owned(),
            size: u64::try_from(head.content_length().unwrap_or(0)).unwrap_or(0),
            content_type: head.content_type().map(str::to_owned),
            user_metadata: head.metadata().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default(),
            tags,
        }))
    }
}

/// A short description of an SDK error: the S3 code and message, or the transport failure.
pub fn describe<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(e: &SdkError<E, R>) -> String {
    match e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            match (err.code(), err.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.to_owned(),
                _ => format!("{err:?}"),
            }
        }
        SdkError::TimeoutError(_) => "timeout".to_owned(),
        SdkError::DispatchFailure(d) => {
            let mut s = format!("connection failed: {d:?}");
            s.truncate(300);
            s
        }
        other => {
            let mut s = format!("{other:?}");
            s.truncate(300);
            s
        }
    }
}

/// A service error's HTTP status.
pub fn http_status<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    match e {
        SdkError::ServiceError(s) => Some(s.raw().status().as_u16()),
        _ => None,
    }
}
