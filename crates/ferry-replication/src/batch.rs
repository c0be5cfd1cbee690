//! Batches of small replicas to a Ferry peer: the replicas of versions held inline that wait
//! for a request go together in one `POST /BUCKET?ferry-replicas` (the layout is
//! `ferry_store::replication::wire::batch`; the peer's side is `ferry_s3`'s
//! `replication/batch.rs`), so a busy source pays one HTTP exchange and one signature for
//! several replicas, and the peer commits them together.
//!
//! When batches go: at most `in_flight` are on the way to a peer at once, and batches leave at
//! least a pace apart: the peer's round trip (an average of the last batches') divided by
//! `in_flight`, at most [`MAX_PACE`]. A replica that finds a free slot and the pace passed goes
//! at once, alone; one that does not waits, and goes in the next batch with every replica that
//! arrived meanwhile (up to [`MAX_BATCH_ENTRIES`] and [`SOFT_BATCH_BYTES`]). So a quiet peer
//! gets batches of one and no added lag, and under load a replica waits at most about one pace
//! (round trip / `in_flight`) while each request carries several.
//!
//! Why the pace: without it, batches that left together come back together; the first free
//! slot takes every replica waiting, the next ones leave with one replica each as replicas
//! arrive, and all slots are busy again within a few milliseconds, to come back together once
//! more. The replicas that arrive in the rest of the round trip wait for it: measured at 500
//! replicas/s over a 50 ms round trip, lag p50 went from 30 to 46 ms. Pacing spreads the
//! batches over the round trip.
//!
//! # Invariants
//! 1. Each replica's result is its own: the peer's answer for its entry; or, when the whole
//!    request is refused in a way each replica alone would be too (403, 404), or the peer
//!    cannot be reached at all ([`Failure::Unreachable`]: no connection), that answer; or
//!    [`Failure::Unsendable`] for anything else that fails a batch as a whole (no answer on
//!    a connection made, a 5xx, a 400 to the request): the caller then sends the replica
//!    alone, so a failed batch costs what failed single requests cost, never a failure for a
//!    replica that is fine, and an attempt at a peer that is down fails once, not twice.
//! 2. One batch, one destination bucket, one source ([`SOURCE_HEADER`], signed): replicas of
//!    other buckets or sources wait for their own batch, in arrival order.
//! 3. Bounded: a batch is at most [`MAX_BATCH_ENTRIES`] entries and about [`SOFT_BATCH_BYTES`]
//!    (an entry is at most [`MAX_ENTRY_BYTES`]); the replicas waiting are those whose transfers
//!    wait on them (at most the worker's concurrency).
//! 4. A peer that does not take batches (an older Ferry: 501 NotImplemented to the request)
//!    is remembered ([`Batcher::takes`] says no from then on, and batches already waiting are
//!    not sent); their replicas are answered [`Failure::Unsendable`], for the caller to send
//!    alone.
//! 5. What goes in a batch is what the lean client would send alone: a header it cannot
//!    carry keeps the replica out of batches (the SDK sends it).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ferry_store::replication::SOURCE_HEADER;
use ferry_store::replication::wire::batch::{
    BATCH_MAGIC, BatchAnswer, BatchEntryHead, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES, MAX_HEAD_BYTES, push_entry,
};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::lean::{Failure, LeanClient};

/// A batch stops taking replicas past about this many bytes (bodies, keys and headers).
pub const SOFT_BATCH_BYTES: usize = 1 << 20;
/// The largest body that goes in a batch; larger ones go alone. With [`SOFT_BATCH_BYTES`], it
/// keeps a batch well under what a peer reads (`MAX_BATCH_BYTES`).
pub const MAX_ENTRY_BYTES: usize = 256 << 10;
// The largest batch (the soft limit crossed by one largest entry) leaves half of what a peer
// reads for keys and headers, which S3's own limits keep to a few KiB per entry.
const _: () = assert!(SOFT_BATCH_BYTES + MAX_ENTRY_BYTES <= MAX_BATCH_BYTES / 2);

/// The most batches on the way to one peer, whatever `batches_in_flight` says.
pub const MAX_IN_FLIGHT: usize = 1024;

/// The most a replica waits for the pace (on a long round trip, batches leave at least this
/// often while a slot is free).
pub const MAX_PACE: Duration = Duration::from_millis(10);

/// The pace batches to one peer leave at: its round trip, averaged, over the batches allowed
/// on the way.
#[derive(Default)]
struct Pace {
    /// Exponentially weighted average of the batches' round trips, µs; 0 before the first.
    round_trip_us: AtomicU64,
}

impl Pace {
    /// Counts one batch's round trip.
    fn record(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).min(10_000_000);
        let old = self.round_trip_us.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { (old * 7 + sample) / 8 };
        self.round_trip_us.store(new, Ordering::Relaxed);
    }

    /// How far apart batches leave, with `in_flight` allowed on the way.
    fn gap(&self, in_flight: usize) -> Duration {
        let per = self.round_trip_us.load(Ordering::Relaxed) / u64::try_from(in_flight.max(1)).unwrap_or(1);
        Duration::from_micros(per).min(MAX_PACE)
    }
}

/// One replica waiting for its batch.
struct Waiting {
    bucket: String,
    source: String,
    head: BatchEntryHead,
    body: Bytes,
    /// At most what the entry adds to a batch ([`entry_size`]).
    size: usize,
    done: oneshot::Sender<Result<(), Failure>>,
}

/// At most what an entry adds to a batch: its body, and its head as JSON (which at most
/// doubles visible ASCII, `"` and `\` escaped; a key's control characters take 6 bytes each).
fn entry_size(key: &str, headers: &[(String, String)], body_len: usize) -> usize {
    body_len + 64 + key.len() * 6 + headers.iter().map(|(k, v)| 2 * (k.len() + v.len()) + 8).sum::<usize>()
}

/// The batches of one peer.
pub struct Batcher {
    lean: Arc<LeanClient>,
    /// Started with the first replica (inside the runtime): the queue to the batching task.
    queue: std::sync::OnceLock<mpsc::UnboundedSender<Waiting>>,
    /// The peer answered that it does not take batches.
    refused: Arc<AtomicBool>,
}

impl Batcher {
    #[must_use]
    pub fn new(lean: Arc<LeanClient>) -> Self {
        Self { lean, queue: std::sync::OnceLock::new(), refused: Arc::new(AtomicBool::new(false)) }
    }

    /// True when a replica with this key, headers and body may go in a batch: the peer takes
    /// batches (as far as is known), the body is at most [`MAX_ENTRY_BYTES`], its head is
    /// surely under what a peer reads (an ACL of many grants can make it large), and the lean
    /// client sends its headers.
    #[must_use]
    pub fn takes(&self, key: &str, headers: &[(String, String)], body_len: usize) -> bool {
        self.admit(key, headers, body_len).is_some()
    }

    /// [`Self::takes`], with the entry's size when it may go.
    fn admit(&self, key: &str, headers: &[(String, String)], body_len: usize) -> Option<usize> {
        let size = entry_size(key, headers, body_len);
        let fits = body_len <= MAX_ENTRY_BYTES && size - body_len <= MAX_HEAD_BYTES;
        (fits && !self.refused.load(Ordering::Relaxed) && crate::lean::sendable(headers).is_ok()).then_some(size)
    }

    /// Sends one replica (PutObject `headers` of `key` in `bucket`, on behalf of `source`, the
    /// encoded [`SOURCE_HEADER`]) in a batch; at most `in_flight` batches go at once.
    ///
    /// # Errors
    /// The peer's answer for this entry, or what the whole batch was answered when each entry
    /// alone would be too (403, 404); [`Failure::Unsendable`] when it may not go in a batch
    /// ([`Self::takes`]) or its batch failed as a whole: the caller sends it alone.
    pub async fn put(
        &self,
        in_flight: usize,
        bucket: &str,
        source: &str,
        key: &str,
        headers: Vec<(String, String)>,
        body: Bytes,
    ) -> Result<(), Failure> {
        let Some(size) = self.admit(key, &headers, body.len()) else {
            return Err(Failure::Unsendable("not for a replica batch".to_owned()));
        };
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(self.lean.clone(), rx, in_flight.clamp(1, MAX_IN_FLIGHT), self.refused.clone()));
            tx
        });
        let (done, result) = oneshot::channel();
        let head = BatchEntryHead { key: key.to_owned(), headers };
        let waiting = Waiting { bucket: bucket.to_owned(), source: source.to_owned(), head, body, size, done };
        queue.send(waiting).map_err(|_| Failure::Transport("replica batching stopped".to_owned()))?;
        result.await.unwrap_or_else(|_| Err(Failure::Transport("replica batching stopped".to_owned())))
    }
}

/// The batching task of one peer: ends when its [`Batcher`] is dropped.
async fn run(lean: Arc<LeanClient>, mut rx: mpsc::UnboundedReceiver<Waiting>, in_flight: usize, refused: Arc<AtomicBool>) {
    let slots = Arc::new(Semaphore::new(in_flight));
    let pace = Arc::new(Pace::default());
    let mut waiting = VecDeque::new();
    let mut last_left: Option<tokio::time::Instant> = None;
    loop {
        if waiting.is_empty() {
            match rx.recv().await {
                Some(w) => waiting.push_back(w),
                None => return,
            }
        }
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        if let Some(last) = last_left {
            tokio::time::sleep_until(last + pace.gap(in_flight)).await;
        }
        while let Ok(w) = rx.try_recv() {
            waiting.push_back(w);
        }
        let batch = next_batch(&mut waiting);
        let (lean, refused, pace) = (lean.clone(), refused.clone(), pace.clone());
        let left = tokio::time::Instant::now();
        last_left = Some(left);
        tokio::spawn(async move {
            send(&lean, batch, &refused).await;
            pace.record(left.elapsed());
            drop(slot);
        });
    }
}

/// The oldest replica waiting and those after it with the same bucket and source, up to the
/// limits (invariant 2).
fn next_batch(waiting: &mut VecDeque<Waiting>) -> Vec<Waiting> {
    let Some(first) = waiting.pop_front() else { return Vec::new() };
    let mut bytes = first.size;
    let mut batch = vec![first];
    let mut i = 0;
    while i < waiting.len() && batch.len() < MAX_BATCH_ENTRIES && bytes < SOFT_BATCH_BYTES {
        if waiting[i].bucket == batch[0].bucket && waiting[i].source == batch[0].source {
            if let Some(w) = waiting.remove(i) {
                bytes += w.size;
                batch.push(w);
            }
        } else {
            i += 1;
        }
    }
    batch
}

/// Sends one batch and answers each of its replicas (invariant 1).
async fn send(lean: &LeanClient, batch: Vec<Waiting>, refused: &AtomicBool) {
    let Some(first) = batch.first() else { return };
    if refused.load(Ordering::Relaxed) {
        // Found out while this batch waited: its replicas go alone.
        return answer_all(batch, &Failure::Unsendable("the peer does not take replica batches".to_owned()));
    }
    let mut body = BATCH_MAGIC.to_vec();
    for w in &batch {
        if let Err(e) = push_entry(&mut body, &w.head, &w.body) {
            return answer_all(batch, &Failure::Unsendable(format!("batch entry: {e}")));
        }
    }
    let headers = [
        ("content-length".to_owned(), body.len().to_string()),
        ("content-type".to_owned(), "application/octet-stream".to_owned()),
        (SOURCE_HEADER.to_owned(), first.source.clone()),
    ];
    let bucket = first.bucket.clone();
    let answer = match lean.post_batch(&bucket, &headers, Bytes::from(body)).await {
        Ok(text) => text,
        // An older Ferry: no such operation.
        Err(Failure::Answer { status: 501, .. }) => {
            refused.store(true, Ordering::Relaxed);
            return answer_all(batch, &Failure::Unsendable("the peer does not take replica batches".to_owned()));
        }
        // What each replica alone would be answered too: the credential is refused, the
        // bucket is not there, no connection can be made (alone, each would wait for its own
        // connect to fail: against a peer that drops packets, a connect timeout more).
        Err(f @ (Failure::Answer { status: 403 | 404, .. } | Failure::Unreachable(_))) => return answer_all(batch, &f),
        // Anything else is the batch's, not its replicas': no answer (a reset, a timeout), a
        // refusal of the request as a whole, a 5xx. Each replica goes alone then, so one
        // batch's failure counts as one per replica that fails alone, as before batches.
        Err(f) => return answer_all(batch, &Failure::Unsendable(format!("the batch failed ({f}): sent alone"))),
    };
    let results = match serde_json::from_slice::<BatchAnswer>(&answer) {
        Ok(a) if a.results.len() == batch.len() => a.results,
        Ok(a) => {
            let why = format!("the peer answered {} results for {} replicas: sent alone", a.results.len(), batch.len());
            return answer_all(batch, &Failure::Unsendable(why));
        }
        Err(e) => return answer_all(batch, &Failure::Unsendable(format!("unreadable batch answer ({e}): sent alone"))),
    };
    for (w, r) in batch.into_iter().zip(results) {
        let out = if (200..300).contains(&r.status) {
            Ok(())
        } else {
            Err(Failure::Answer { status: r.status, code: r.code, message: r.message })
        };
        // The transfer may have gone (its job cancelled): nothing to tell then.
        let _ = w.done.send(out);
    }
}

fn answer_all(batch: Vec<Waiting>, failure: &Failure) {
    for w in batch {
        let _ = w.done.send(Err(failure.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(bucket: &str, source: &str, key: &str, size: usize) -> Waiting {
        let head = BatchEntryHead { key: key.to_owned(), headers: Vec::new() };
        let (done, _) = oneshot::channel();
        let body = Bytes::from(vec![0; size]);
        let size = entry_size(key, &head.headers, body.len());
        Waiting { bucket: bucket.into(), source: source.into(), head, body, size, done }
    }

    fn keys(batch: &[Waiting]) -> Vec<&str> {
        batch.iter().map(|w| w.head.key.as_str()).collect()
    }

    #[test]
    fn a_batch_is_one_bucket_and_source_in_arrival_order_within_its_limits() {
        let mut q: VecDeque<Waiting> =
            [waiting("b1", "s", "1", 10), waiting("b2", "s", "2", 10), waiting("b1", "t", "3", 10), waiting("b1", "s", "4", 10)]
                .into();
        assert_eq!(keys(&next_batch(&mut q)), ["1", "4"]);
        assert_eq!(keys(&next_batch(&mut q)), ["2"]);
        assert_eq!(keys(&next_batch(&mut q)), ["3"]);
        assert!(next_batch(&mut q).is_empty());
        // At most MAX_BATCH_ENTRIES entries...
        let mut q: VecDeque<Waiting> = (0..MAX_BATCH_ENTRIES + 3).map(|i| waiting("b", "s", &i.to_string(), 1)).collect();
        assert_eq!(next_batch(&mut q).len(), MAX_BATCH_ENTRIES);
        assert_eq!(q.len(), 3);
        // ...and about SOFT_BATCH_BYTES: the entry that crosses it is the last.
        let mut q: VecDeque<Waiting> = (0..8).map(|i| waiting("b", "s", &i.to_string(), MAX_ENTRY_BYTES)).collect();
        assert_eq!(next_batch(&mut q).len(), SOFT_BATCH_BYTES / MAX_ENTRY_BYTES);
    }

    #[test]
    fn the_pace_is_the_round_trip_over_the_batches_in_flight_and_bounded() {
        let p = Pace::default();
        assert_eq!(p.gap(8), Duration::ZERO, "no pace before a round trip is known");
        p.record(Duration::from_millis(40));
        assert_eq!(p.gap(8), Duration::from_millis(5));
        assert_eq!(p.gap(0), MAX_PACE, "at most MAX_PACE");
        // An average: one slow batch moves it by an eighth of the difference.
        p.record(Duration::from_millis(120));
        assert_eq!(p.gap(8), Duration::from_millis(6250) / 1000);
        // A batch that hung (a timeout) does not stop batches for long.
        p.record(Duration::from_secs(3600));
        assert_eq!(p.gap(1), MAX_PACE);
    }

    /// A peer on 127.0.0.1 that records how many entries each batch holds. It holds the first
    /// batch until `release`, then answers every entry 200; with `refuse`, it answers every
    /// batch that status and code (501 NotImplemented: a Ferry without batches).
    struct TestPeer {
        batches: Arc<std::sync::Mutex<Vec<usize>>>,
        first: Arc<tokio::sync::Notify>,
        release: Arc<tokio::sync::Notify>,
        batcher: Arc<Batcher>,
    }

    async fn test_peer(refuse: Option<(u16, &'static str)>) -> TestPeer {
        use http_body_util::BodyExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (first, release) = (Arc::new(tokio::sync::Notify::new()), Arc::new(tokio::sync::Notify::new()));
        let (b, f, r) = (batches.clone(), first.clone(), release.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (b, f, r) = (b.clone(), f.clone(), r.clone());
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (b, f, r) = (b.clone(), f.clone(), r.clone());
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let n = ferry_store::replication::wire::batch::decode(&body).unwrap().len();
                        let count = {
                            let mut b = b.lock().unwrap();
                            b.push(n);
                            b.len()
                        };
                        if let Some((status, code)) = refuse {
                            let xml = format!("<Error><Code>{code}</Code><Message>no</Message></Error>");
                            return http::Response::builder().status(status).body(http_body_util::Full::new(Bytes::from(xml)));
                        }
                        if count == 1 {
                            f.notify_one();
                            r.notified().await;
                        }
                        let ok = ferry_store::replication::wire::batch::BatchResult {
                            status: 200,
                            code: String::new(),
                            message: String::new(),
                        };
                        let text = serde_json::to_vec(&BatchAnswer { results: vec![ok; n] }).unwrap();
                        http::Response::builder().status(200).body(http_body_util::Full::new(Bytes::from(text)))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
            }
        });
        TestPeer { batches, first, release, batcher: batcher_for(url) }
    }

    fn batcher_for(url: String) -> Arc<Batcher> {
        let settings = crate::client::ClientSettings {
            url,
            access_key: "a".into(),
            secret_key: "s".into(),
            region: "r".into(),
            ca_pem: None,
        };
        Arc::new(Batcher::new(Arc::new(LeanClient::new(&settings).unwrap())))
    }

    fn put(b: &Arc<Batcher>, key: &str) -> impl std::future::Future<Output = Result<(), Failure>> + use<> {
        let (b, key) = (b.clone(), key.to_owned());
        async move {
            b.put(
                1,
                "bucket",
                "source",
                &key,
                vec![("content-length".into(), "1".into())],
                Bytes::from_static(b"x"),
            )
            .await
        }
    }

    /// With one batch allowed on the way, the replicas that arrive while it is go together in
    /// the next one, and each hears its own result.
    #[tokio::test]
    async fn replicas_that_wait_for_a_batch_go_together_in_the_next() {
        let p = test_peer(None).await;
        let first = tokio::spawn(put(&p.batcher, "k0"));
        p.first.notified().await;
        let mut rest = Box::pin(futures::future::join_all((1..=5).map(|i| put(&p.batcher, &format!("k{i}")))));
        // One poll queues all five (a replica is queued before its first wait).
        assert!(futures::poll!(rest.as_mut()).is_pending());
        p.release.notify_one();
        assert_eq!(first.await.unwrap(), Ok(()));
        assert!(rest.await.iter().all(Result::is_ok));
        assert_eq!(*p.batches.lock().unwrap(), [1, 5]);
    }

    /// A peer that answers 501 to a batch is not sent batches again: its replicas are handed
    /// back for single PUTs.
    #[tokio::test]
    async fn a_peer_without_batches_is_remembered_and_its_replicas_handed_back() {
        let p = test_peer(Some((501, "NotImplemented"))).await;
        let headers = [("content-length".to_owned(), "1".to_owned())];
        assert!(p.batcher.takes("k", &headers, 1));
        assert!(matches!(put(&p.batcher, "k0").await, Err(Failure::Unsendable(_))));
        assert!(!p.batcher.takes("k", &headers, 1));
        assert!(matches!(put(&p.batcher, "k1").await, Err(Failure::Unsendable(_))));
        assert_eq!(*p.batches.lock().unwrap(), [1]);
    }

    /// A batch refused as a whole fails none of its replicas for good: they go alone (every
    /// status but those a replica alone would get too, which each replica gets), and the peer
    /// still takes batches.
    #[tokio::test]
    async fn a_batch_refused_as_a_whole_hands_its_replicas_back_unless_each_would_be_refused() {
        let headers = [("content-length".to_owned(), "1".to_owned())];
        for (status, code) in [(400, "InvalidRequest"), (503, "SlowDown"), (500, "InternalError")] {
            let p = test_peer(Some((status, code))).await;
            assert!(matches!(put(&p.batcher, "k0").await, Err(Failure::Unsendable(_))), "{status}");
            assert!(p.batcher.takes("k", &headers, 1), "{status}: batches go on");
        }
        let p = test_peer(Some((404, "NoSuchBucket"))).await;
        let out = put(&p.batcher, "k0").await;
        assert!(
            matches!(&out, Err(Failure::Answer { status: 404, code, .. }) if code == "NoSuchBucket"),
            "{out:?}"
        );
        assert!(p.batcher.takes("k", &headers, 1), "a missing bucket is not a peer without batches");
    }

    /// A peer no connection can be made to: each replica of the batch hears so, and is not
    /// sent alone as well (that would wait for a second connection to fail: against a peer
    /// that drops packets, a second connect timeout per attempt). A connection the peer closes
    /// without answering is the batch's failure: its replicas go alone.
    #[tokio::test]
    async fn an_unreachable_peer_fails_each_replica_once_and_a_dropped_batch_is_handed_back() {
        let headers = [("content-length".to_owned(), "1".to_owned())];
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let batcher = batcher_for(url);
        let out = put(&batcher, "k0").await;
        assert!(matches!(out, Err(Failure::Unreachable(_))), "{out:?}");
        assert!(batcher.takes("k", &headers, 1), "a peer that is down is not one without batches");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        let out = put(&batcher_for(url), "k0").await;
        assert!(matches!(out, Err(Failure::Unsendable(_))), "{out:?}");
    }

    /// A replica whose head could pass what a peer reads of one (an ACL of many grants) is
    /// kept out of batches.
    #[test]
    fn a_replica_with_a_large_head_is_kept_out_of_batches() {
        let settings = crate::client::ClientSettings {
            url: "http://127.0.0.1:9".into(),
            access_key: "a".into(),
            secret_key: "s".into(),
            region: "r".into(),
            ca_pem: None,
        };
        let b = Batcher::new(Arc::new(LeanClient::new(&settings).unwrap()));
        let small = [("x-ferry-replica".to_owned(), "a".repeat(1000))];
        let large = [("x-ferry-replica".to_owned(), "a".repeat(MAX_HEAD_BYTES / 2))];
        assert!(b.takes("k", &small, 1));
        assert!(!b.takes("k", &large, 1));
        assert!(!b.takes("k", &small, MAX_ENTRY_BYTES + 1), "nor a large body");
    }
}
