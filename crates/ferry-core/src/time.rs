//! Time.
//!
//! All persisted times are microseconds since the Unix epoch (`i64`). Each region's metadata writer
//! owns a [`CommitClock`]: every committed change gets a timestamp strictly greater than the one
//! before it, even if the wall clock steps back, so "later commit" always means "larger timestamp"
//! within a region. The clock's high-water mark is persisted by the writer, so this also holds
//! across restarts.
//!
//! The clock is a hybrid logical clock: it also moves past times observed in replicas from other
//! regions, so a write made after seeing a change orders after it. What it observes is bounded:
//! never more than [`MAX_OBSERVED_AHEAD_US`] past the wall clock, so no input, however forged,
//! can push the region's clock (and with it every later Last-Modified) into the future. The
//! S3 layer refuses replicas further ahead than its configured skew, which is at most this.

use std::time::{SystemTime, UNIX_EPOCH};

/// How far past the wall clock an observed time may move the commit clock (15 minutes, the
/// clock skew SigV4 tolerates).
pub const MAX_OBSERVED_AHEAD_US: i64 = 15 * 60 * 1_000_000;

/// Wall-clock time in microseconds since the Unix epoch.
#[must_use]
pub fn now_micros() -> i64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Converts microseconds since the epoch to an `OffsetDateTime` (UTC).
#[must_use]
pub fn micros_to_datetime(us: i64) -> ::time::OffsetDateTime {
    let nanos = i128::from(us) * 1000;
    ::time::OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(::time::OffsetDateTime::UNIX_EPOCH)
}

/// RFC 3339 UTC with microseconds (`2023-11-14T22:13:20.123456Z`).
#[must_use]
pub fn rfc3339_us(us: i64) -> String {
    let t = micros_to_datetime(us);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// Converts an `OffsetDateTime` to microseconds since the epoch (saturating).
#[must_use]
pub fn datetime_to_micros(t: ::time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(if t.unix_timestamp() < 0 { i64::MIN } else { i64::MAX })
}

/// A strictly monotone clock: `tick()` never returns the same value twice and never goes back.
#[derive(Debug, Clone)]
pub struct CommitClock {
    last: i64,
}

impl CommitClock {
    /// Starts a clock that will only return values above `high_water` (the last persisted tick).
    #[must_use]
    pub fn new(high_water: i64) -> Self {
        Self { last: high_water }
    }

    /// The next timestamp: the wall clock, or one microsecond past the previous tick if the wall
    /// clock has not moved on (or stepped back).
    pub fn tick(&mut self) -> i64 {
        self.last = now_micros().max(self.last.saturating_add(1));
        self.last
    }

    /// Moves the clock past `seen` (a timestamp observed from elsewhere, e.g. a replica), so the
    /// next local change orders after it; but never more than [`MAX_OBSERVED_AHEAD_US`] past
    /// the wall clock.
    pub fn observe(&mut self, seen: i64) {
        let bound = now_micros().saturating_add(MAX_OBSERVED_AHEAD_US);
        self.last = self.last.max(seen.min(bound));
    }

    /// The last value returned by [`tick`](Self::tick) (or the starting high-water mark).
    #[must_use]
    pub fn last(&self) -> i64 {
        self.last
    }
}

/// A node's commit clock in a region of several nodes: [`CommitClock`] plus the commit times
/// handed out whose transactions have not ended, from which the node's **closed timestamp**
/// follows: no commit of this node will ever be at or below it. Nodes publish it; the region's
/// committed clock is the minimum over its live nodes, which makes "replicated up to T" exact
/// across nodes whatever their clock skew.
///
/// Hand out times with [`start_commit`](Self::start_commit) and end them with
/// [`end_commit`](Self::end_commit) once the transaction's outcome is known (committed, rolled
/// back, or its node fenced); read [`closed`](Self::closed) under the same lock, so a time being
/// handed out is never missed.
#[derive(Debug, Clone)]
pub struct NodeClock {
    clock: CommitClock,
    /// Times in flight (a count per time: a closure may be retried with the same time).
    in_flight: std::collections::BTreeMap<i64, u32>,
    /// The highest closed timestamp returned: it never goes back.
    closed: i64,
}

impl NodeClock {
    /// A clock whose times will all be above `floor` (given by the region when the node joins:
    /// above every closed timestamp published so far).
    #[must_use]
    pub fn new(floor: i64) -> Self {
        Self { clock: CommitClock::new(floor), in_flight: std::collections::BTreeMap::new(), closed: floor }
    }

    /// A commit time after `after` (the key's latest version time, so a key's versions order
    /// by time on every node) and after every time this node handed out or observed.
    pub fn start_commit(&mut self, after: i64) -> i64 {
        self.clock.observe(after);
        let t = self.clock.tick();
        *self.in_flight.entry(t).or_insert(0) += 1;
        t
    }

    /// The transaction that took `t` has ended, one way or the other.
    pub fn end_commit(&mut self, t: i64) {
        if let Some(n) = self.in_flight.get_mut(&t) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(&t);
            }
        }
    }

    /// Moves the clock past a time seen elsewhere (the highest closed timestamp of the other
    /// nodes: a node whose wall clock lags catches up within one heartbeat).
    pub fn observe(&mut self, seen: i64) {
        self.clock.observe(seen);
    }

    /// No commit of this node will be at or below this: one below the oldest time in flight;
    /// when none is, the wall clock (the clock moves there first, so later times are above it),
    /// so an idle node does not hold the region's clock back. Never goes back.
    pub fn closed(&mut self) -> i64 {
        let c = match self.in_flight.keys().next() {
            Some(t) => t - 1,
            None => {
                self.clock.observe(now_micros());
                self.clock.last()
            }
        };
        self.closed = self.closed.max(c);
        self.closed
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_with_microseconds() {
        assert_eq!(super::rfc3339_us(1_700_000_000_123_456), "2023-11-14T22:13:20.123456Z");
    }

    use super::*;

    #[test]
    fn ticks_are_strictly_increasing_even_from_the_future() {
        let future = now_micros() + 10_000_000;
        let mut c = CommitClock::new(future);
        let a = c.tick();
        let b = c.tick();
        assert_eq!(a, future + 1);
        assert_eq!(b, future + 2);
        c.observe(future + 100);
        assert_eq!(c.tick(), future + 101);
    }

    #[test]
    fn observed_times_cannot_push_the_clock_into_the_future() {
        let mut c = CommitClock::new(0);
        c.observe(i64::MAX);
        let t = c.tick();
        assert!(t <= now_micros() + MAX_OBSERVED_AHEAD_US + 1_000_000, "clock moved to {t}");
        c.observe(now_micros() + 1_000_000);
        assert!(c.tick() > now_micros());
    }

    #[test]
    fn a_node_closes_only_what_it_will_never_commit_below() {
        let base = now_micros() + 60_000_000;
        let mut c = NodeClock::new(base);
        assert_eq!(c.closed(), base, "nothing handed out: the floor");
        let a = c.start_commit(0);
        let b = c.start_commit(0);
        assert!(base < a && a < b);
        assert_eq!(c.closed(), a - 1, "a is in flight");
        c.end_commit(b);
        assert_eq!(c.closed(), a - 1, "b ended, a has not");
        c.end_commit(a);
        assert_eq!(c.closed(), b, "nothing in flight: the last time handed out");
        let k = c.start_commit(b + 1_000);
        assert!(k > b + 1_000, "after the key's latest time");
        assert_eq!(c.closed(), k - 1);
        c.end_commit(k);
        // Observing the others' closed time moves this node past it; closed never goes back.
        c.observe(k + 5_000);
        assert_eq!(c.closed(), k + 5_000);
        let next = c.start_commit(0);
        assert!(next > k + 5_000);
        assert_eq!(c.closed(), k + 5_000, "never back below what was published");
    }

    #[test]
    fn an_idle_node_closes_up_to_the_wall_clock() {
        let mut c = NodeClock::new(0);
        let before = now_micros();
        let closed = c.closed();
        assert!(closed >= before, "idle: the wall clock, not the floor");
        assert!(c.start_commit(0) > closed, "and no later commit at or below it");
    }

    #[test]
    fn datetime_roundtrip() {
        let us = 1_700_000_000_123_456;
        assert_eq!(datetime_to_micros(micros_to_datetime(us)), us);
    }
}
