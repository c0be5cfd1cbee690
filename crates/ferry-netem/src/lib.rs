//! WAN emulation on one machine: a TCP proxy that gives the connections through it the
//! behaviour of a long-distance link between two data centers, changeable while they run.
//!
//! Ferry's tests and benchmarks put one between two regions (`ferry netem` runs it from the
//! command line). No `tc`/netem is needed: it is an ordinary process on loopback.
//!
//! # Model
//!
//! Each direction of the link is a pipe with a **bandwidth cap** (shared by every connection,
//! as the connections of two regions share one WAN link) and a **one-way delay** with **jitter**:
//! a chunk read from one side is serialized at the capped rate, then delivered to the other side
//! `delay ± jitter` later, never before the chunk ahead of it (TCP keeps order). At most
//! `window` bytes per connection and direction are in flight inside the proxy; beyond that the
//! proxy stops reading, so the sender's TCP window closes, as on a real long fat network.
//! Memory is bounded by `window` × open connections.
//!
//! Faults, switchable at run time: a **stall** (nothing moves for a while, then everything
//! resumes), and a **partition**, either `Reset` (open connections are closed and new ones
//! closed on accept: the peer sees errors at once) or `Blackhole` (nothing is forwarded and
//! nothing is closed: the peer sees silence until its own timeouts fire, like lost packets).
//! Healing a blackhole lets the held bytes flow again. For links that carry S3 there is also
//! `ServiceUnavailable`: every request is answered `503 SlowDown` by the link itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rand::Rng as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;

/// Bytes read from a socket at a time.
const CHUNK: usize = 64 * 1024;

/// The emulated link, applied to both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSpec {
    /// One-way delay (half the round trip the link adds).
    pub delay: Duration,
    /// Each chunk's delay is `delay` plus a uniform random amount in `[-jitter, +jitter]`.
    pub jitter: Duration,
    /// Bytes per second per direction, shared by all connections; `None`: unlimited.
    pub rate: Option<u64>,
    /// Bytes in flight inside the proxy per connection and direction.
    pub window: usize,
}

impl Default for LinkSpec {
    fn default() -> Self {
        Self { delay: Duration::ZERO, jitter: Duration::ZERO, rate: None, window: 6 << 20 }
    }
}

/// How a partition behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partition {
    /// The link works.
    None,
    /// Connections are closed (and new ones closed on accept).
    Reset,
    /// Nothing moves and nothing is closed.
    Blackhole,
    /// The far side looks overloaded: open connections are closed, and each new one is answered
    /// `HTTP/1.1 503` with an S3 `SlowDown` error, then closed (an HTTP-level fault, for links
    /// that carry S3).
    ServiceUnavailable,
}

/// Traffic counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Bytes delivered from the client side to the upstream.
    pub bytes_up: u64,
    /// Bytes delivered from the upstream to the client side.
    pub bytes_down: u64,
    /// Connections accepted.
    pub connections: u64,
}

/// A running link. Dropping it stops accepting and closes every connection.
pub struct Netem {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Netem {
    /// Listens on `listen` (port 0 for any) and forwards every connection to `upstream`.
    ///
    /// # Errors
    /// When `listen` cannot be bound.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr, spec: LinkSpec) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(spec));
        let task = tokio::spawn(accept_loop(listener, upstream, shared.clone()));
        Ok(Self { addr, shared, task })
    }

    /// The address clients connect to.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The current link.
    #[must_use]
    pub fn spec(&self) -> LinkSpec {
        *lock(&self.shared.spec)
    }

    /// Changes the link; chunks already scheduled keep their delivery time.
    pub fn set_spec(&self, spec: LinkSpec) {
        *lock(&self.shared.spec) = spec;
        for pipe in [&self.shared.up, &self.shared.down] {
            pipe.set_rate(spec.rate);
        }
    }

    /// Starts or ends a partition.
    pub fn set_partition(&self, p: Partition) {
        self.shared.partition.store(p as u8, Ordering::SeqCst);
        if matches!(p, Partition::Reset | Partition::ServiceUnavailable) {
            self.shared.reset_epoch.fetch_add(1, Ordering::SeqCst);
        }
        self.shared.changed.notify_waiters();
    }

    /// Shorthand: `Reset` partition on, or healed.
    pub fn set_partitioned(&self, on: bool) {
        self.set_partition(if on { Partition::Reset } else { Partition::None });
    }

    /// The current partition state.
    #[must_use]
    pub fn partition(&self) -> Partition {
        self.shared.partition()
    }

    /// Nothing moves for `d` (from now), then everything resumes.
    pub fn stall(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut s = lock(&self.shared.stall_until);
        *s = Some(s.map_or(until, |old| old.max(until)));
    }

    /// Traffic so far.
    #[must_use]
    pub fn stats(&self) -> Stats {
        Stats {
            bytes_up: self.shared.up.bytes.load(Ordering::Relaxed),
            bytes_down: self.shared.down.bytes.load(Ordering::Relaxed),
            connections: self.shared.connections.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Netem {
    fn drop(&mut self) {
        self.task.abort();
        // Connections watch this epoch and close.
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.reset_epoch.fetch_add(1, Ordering::SeqCst);
        self.shared.changed.notify_waiters();
    }
}

/// State shared by the listener and every connection.
struct Shared {
    spec: Mutex<LinkSpec>,
    partition: AtomicU8,
    /// Bumped by each `Reset` partition: connections opened before it close.
    reset_epoch: AtomicU64,
    closed: AtomicBool,
    /// Wakes connections held by a blackhole when the partition changes.
    changed: Notify,
    stall_until: Mutex<Option<Instant>>,
    up: Pipe,
    down: Pipe,
    connections: AtomicU64,
}

impl Shared {
    fn new(spec: LinkSpec) -> Self {
        Self {
            spec: Mutex::new(spec),
            partition: AtomicU8::new(Partition::None as u8),
            reset_epoch: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            changed: Notify::new(),
            stall_until: Mutex::new(None),
            up: Pipe::new(spec.rate),
            down: Pipe::new(spec.rate),
            connections: AtomicU64::new(0),
        }
    }

    fn partition(&self) -> Partition {
        match self.partition.load(Ordering::SeqCst) {
            1 => Partition::Reset,
            2 => Partition::Blackhole,
            3 => Partition::ServiceUnavailable,
            _ => Partition::None,
        }
    }

    fn spec(&self) -> LinkSpec {
        *lock(&self.spec)
    }

    /// Waits while the link is stalled or blackholed; false when the connection must close.
    async fn passable(&self, epoch: u64) -> bool {
        loop {
            if self.reset_epoch.load(Ordering::SeqCst) != epoch {
                return false;
            }
            let notified = self.changed.notified();
            let stall = *lock(&self.stall_until);
            match (self.partition(), stall) {
                (Partition::Reset | Partition::ServiceUnavailable, _) => return false,
                (Partition::Blackhole, _) => {
                    // Wake on a change, and check the stall and the epoch now and then anyway.
                    let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
                }
                (Partition::None, Some(until)) if until > Instant::now() => tokio::time::sleep_until(until).await,
                (Partition::None, _) => return true,
            }
        }
    }
}

/// One direction of the link: a token bucket shared by all connections, and a byte counter.
struct Pipe {
    /// (rate, tokens, last refill); tokens go negative: a reservation that must wait.
    bucket: Mutex<(Option<u64>, f64, Instant)>,
    bytes: AtomicU64,
}

impl Pipe {
    fn new(rate: Option<u64>) -> Self {
        Self { bucket: Mutex::new((rate, 0.0, Instant::now())), bytes: AtomicU64::new(0) }
    }

    fn set_rate(&self, rate: Option<u64>) {
        lock(&self.bucket).0 = rate;
    }

    /// Reserves `n` bytes of the link: how long until they have gone through it.
    fn reserve(&self, n: usize) -> Duration {
        // Short section, no await: a std mutex.
        let mut b = lock(&self.bucket);
        let Some(rate) = b.0.filter(|r| *r > 0) else { return Duration::ZERO };
        #[allow(clippy::cast_precision_loss)] // rates and chunk sizes are far below 2^52
        let (rate, n) = (rate as f64, n as f64);
        let now = Instant::now();
        // A burst of at most 10 ms of traffic (or one chunk).
        #[allow(clippy::cast_precision_loss)]
        let burst = (rate / 100.0).max(CHUNK as f64);
        b.1 = (b.1 + now.duration_since(b.2).as_secs_f64() * rate).min(burst);
        b.2 = now;
        b.1 -= n;
        if b.1 >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-b.1 / rate) }
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        shared.connections.fetch_add(1, Ordering::Relaxed);
        match shared.partition() {
            Partition::Reset => {
                drop(client);
                continue;
            }
            Partition::ServiceUnavailable => {
                tokio::spawn(answer_503(client));
                continue;
            }
            Partition::None | Partition::Blackhole => {}
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let epoch = shared.reset_epoch.load(Ordering::SeqCst);
            // A blackhole holds the connection attempt too.
            if !shared.passable(epoch).await {
                return;
            }
            let Ok(server) = TcpStream::connect(upstream).await else { return };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::join!(
                direction(cr, sw, shared.clone(), true, epoch),
                direction(sr, cw, shared.clone(), false, epoch)
            );
        });
    }
}

/// Reads one request's head and answers it with an S3 `SlowDown` error, then closes.
async fn answer_503(mut client: TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                <Message>Please reduce your request rate. (ferry netem: injected)</Message></Error>";
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(resp.as_bytes()).await;
    let _ = client.shutdown().await;
}

/// A chunk on its way, or the end of the stream.
struct InFlight {
    data: Option<Bytes>,
    due: Instant,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Moves one direction of a connection through the link.
async fn direction(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shared: Arc<Shared>, up: bool, epoch: u64) {
    let window = shared.spec().window.max(CHUNK);
    let room = Arc::new(Semaphore::new(window));
    // The window bounds the queue in bytes; the channel only needs room for its chunks.
    let (tx, mut rx) = mpsc::channel::<InFlight>(window / 1024 + 2);
    let reader = {
        let shared = shared.clone();
        async move {
            let mut last_due = Instant::now();
            loop {
                let mut buf = BytesMut::with_capacity(CHUNK);
                let n = match from.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => 0,
                    Ok(n) => n,
                };
                let spec = shared.spec();
                let pipe = if up { &shared.up } else { &shared.down };
                let sent = Instant::now() + pipe.reserve(n);
                let jitter = if spec.jitter.is_zero() {
                    0.0
                } else {
                    rand::rng().random_range(-spec.jitter.as_secs_f64()..=spec.jitter.as_secs_f64())
                };
                let due = (sent + Duration::from_secs_f64((spec.delay.as_secs_f64() + jitter).max(0.0))).max(last_due);
                last_due = due;
                if n == 0 {
                    let _ = tx.send(InFlight { data: None, due, _permit: None }).await;
                    return;
                }
                let Ok(permit) = room.clone().acquire_many_owned(u32::try_from(n).unwrap_or(u32::MAX)).await else { return };
                if tx.send(InFlight { data: Some(buf.freeze()), due, _permit: Some(permit) }).await.is_err() {
                    return;
                }
            }
        }
    };
    let writer = {
        let shared = shared.clone();
        async move {
            while let Some(item) = rx.recv().await {
                tokio::time::sleep_until(item.due).await;
                if !shared.passable(epoch).await {
                    break;
                }
                let Some(data) = item.data else { break };
                if to.write_all(&data).await.is_err() {
                    break;
                }
                let pipe = if up { &shared.up } else { &shared.down };
                pipe.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            let _ = to.shutdown().await;
        }
    };
    // The writer ending (reset, peer gone) ends the reader too.
    tokio::select! {
        () = async { tokio::join!(reader, writer); } => {}
        () = closed_or_reset(&shared, epoch) => {}
    }
}

/// Resolves when the link is reset or dropped.
async fn closed_or_reset(shared: &Shared, epoch: u64) {
    loop {
        let notified = shared.changed.notified();
        if shared.reset_epoch.load(Ordering::SeqCst) != epoch || shared.closed.load(Ordering::SeqCst) {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
    }
}

/// Parses byte rates like `100MiB`, `1GiB`, `12.5MB`, `800k` (per second).
///
/// # Errors
/// On anything else.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches("/s");
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a rate (examples: 100MiB, 1GiB, 500k)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => 1024.0 * 1024.0,
        "mb" => 1e6,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "gb" => 1e9,
        other => return Err(format!("unknown rate unit `{other}` (use KiB, MiB, GiB, KB, MB or GB per second)")),
    };
    let v = n * mult;
    if !(v.is_finite() && (1.0..1e18).contains(&v)) {
        return Err(format!("`{s}` is out of range"));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // checked just above
    Ok(v as u64)
}

/// Locks `m`, taking it over if a holder panicked (every section is a short, complete update
/// of plain data).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100MiB"), Ok(100 << 20));
        assert_eq!(parse_rate("1GiB/s"), Ok(1 << 30));
        assert_eq!(parse_rate("12.5MB"), Ok(12_500_000));
        assert_eq!(parse_rate("800k"), Ok(800 * 1024));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("5XB").is_err());
    }
}

#[cfg(test)]
mod link_tests {
    //! Real sockets on loopback: an echo server behind the link.

    use super::*;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        addr
    }

    async fn link(spec: LinkSpec) -> Netem {
        Netem::start("127.0.0.1:0".parse().expect("addr"), echo_server().await, spec).await.expect("start")
    }

    /// Sends `data` through the link to the echo server and reads it all back.
    async fn round_trip(n: &Netem, data: &[u8]) -> std::io::Result<Vec<u8>> {
        let s = TcpStream::connect(n.addr()).await?;
        let (mut r, mut w) = s.into_split();
        let out = data.to_vec();
        let send = tokio::spawn(async move {
            w.write_all(&out).await?;
            w.shutdown().await
        });
        let mut back = Vec::new();
        r.read_to_end(&mut back).await?;
        send.await.map_err(std::io::Error::other)??;
        Ok(back)
    }

    #[tokio::test]
    async fn delay_applies_to_each_direction() {
        let n = link(LinkSpec { delay: Duration::from_millis(30), ..LinkSpec::default() }).await;
        let t = std::time::Instant::now();
        assert_eq!(round_trip(&n, b"ping").await.expect("echo"), b"ping");
        assert!(
            t.elapsed() >= Duration::from_millis(60),
            "one round trip is two one-way delays: {:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn jitter_never_reorders_bytes() {
        let n = link(LinkSpec { delay: Duration::from_millis(2), jitter: Duration::from_millis(2), ..LinkSpec::default() }).await;
        let data: Vec<u8> = (0..4_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        assert!(round_trip(&n, &data).await.expect("echo") == data, "bytes came back changed or reordered");
        assert_eq!(n.stats().bytes_up, 4_000_000);
        assert_eq!(n.stats().bytes_down, 4_000_000);
    }

    #[tokio::test]
    async fn the_rate_cap_holds_on_average() {
        let n = link(LinkSpec { rate: Some(4 << 20), ..LinkSpec::default() }).await;
        let t = std::time::Instant::now();
        let data = vec![7u8; 2 << 20];
        assert_eq!(round_trip(&n, &data).await.expect("echo").len(), data.len());
        // 2 MiB at 4 MiB/s, less the 10 ms burst allowance.
        assert!(t.elapsed() >= Duration::from_millis(450), "{:?}", t.elapsed());
        n.set_spec(LinkSpec { rate: None, ..n.spec() });
        assert_eq!(n.spec().rate, None);
    }

    #[tokio::test]
    async fn reset_partition_closes_and_refuses_then_heals() {
        let n = link(LinkSpec::default()).await;
        let s = TcpStream::connect(n.addr()).await.expect("connect");
        let (mut r, mut w) = s.into_split();
        w.write_all(b"a").await.expect("write");
        let mut one = [0u8; 1];
        r.read_exact(&mut one).await.expect("echo before the partition");
        n.set_partitioned(true);
        assert_eq!(n.partition(), Partition::Reset);
        let mut buf = Vec::new();
        let got = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut buf)).await.expect("closed, not hung");
        assert!(got.is_err() || buf.is_empty(), "the open connection is closed");
        assert!(
            round_trip(&n, b"x").await.map(|b| b.is_empty()).unwrap_or(true),
            "new connections get nothing through"
        );
        n.set_partitioned(false);
        assert_eq!(round_trip(&n, b"healed").await.expect("echo"), b"healed");
    }

    #[tokio::test]
    async fn service_unavailable_answers_503_slowdown() {
        let n = link(LinkSpec::default()).await;
        n.set_partition(Partition::ServiceUnavailable);
        let back = round_trip(&n, b"GET /b/k HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("answered");
        let text = String::from_utf8_lossy(&back);
        assert!(text.starts_with("HTTP/1.1 503") && text.contains("<Code>SlowDown</Code>"), "{text}");
        n.set_partition(Partition::None);
        assert_eq!(round_trip(&n, b"ok").await.expect("echo"), b"ok");
    }

    #[tokio::test]
    async fn blackhole_holds_bytes_until_healed() {
        let n = link(LinkSpec::default()).await;
        n.set_partition(Partition::Blackhole);
        let s = TcpStream::connect(n.addr()).await.expect("connect");
        let (mut r, mut w) = s.into_split();
        w.write_all(b"held").await.expect("write");
        let mut buf = [0u8; 4];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), r.read_exact(&mut buf)).await.is_err(),
            "nothing gets through a blackhole"
        );
        n.set_partition(Partition::None);
        tokio::time::timeout(Duration::from_secs(5), r.read_exact(&mut buf))
            .await
            .expect("delivered after healing")
            .expect("read");
        assert_eq!(&buf, b"held");
    }

    #[tokio::test]
    async fn a_stall_delays_then_delivers() {
        let n = link(LinkSpec::default()).await;
        n.stall(Duration::from_millis(200));
        let t = std::time::Instant::now();
        assert_eq!(round_trip(&n, b"late").await.expect("echo"), b"late");
        assert!(t.elapsed() >= Duration::from_millis(190), "{:?}", t.elapsed());
    }
}
