//! [`SyncConn`]: a pooled PostgreSQL connection driven from a blocking thread, and its
//! pipeline: statements whose answer nobody needs (an insert of a counter delta, the seal,
//! `BEGIN`) are queued and sent together with the next statement that needs one.
//!
//! Each wait for the server costs a round trip and, on a busy machine, a wake-up of the
//! server's backend, of the connection task and of the blocking thread. A write transaction
//! waits only where it needs a row back (the bucket, the key's head, a job's id) and at
//! `COMMIT`.
//!
//! # Invariants
//! 1. Statements reach the server in the order they were issued: the queued ones are prepared
//!    first (once per connection), then each request is written by its future's first poll,
//!    and the futures are polled in order, the queued ones before the statement being run.
//! 2. A queued statement's error is returned by the next statement that waits (whose own
//!    error would only be "the transaction is aborted"): errors come later, never lost.
//! 3. [`SyncConn::discard`] sends nothing: a transaction given up before its `BEGIN` left
//!    costs no round trip, and one that sent it is rolled back by the caller.
//! 4. Every wait, with whatever it flushes, ends within [`super::STATEMENT_TIMEOUT`]; past it
//!    the connection is dropped, never returned to the pool (it may still wait on a cut link).
//! 5. A queue with a statement that cannot be prepared sends nothing, not even the statement
//!    behind it (whose `BEGIN` may be in the queue), and the connection is dropped: closing it
//!    ends whatever transaction it held.
//!
//! # Crash behaviour
//! Nothing is kept here: a queued statement not yet sent when the process dies belongs to a
//! transaction that never committed.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use deadpool_postgres::Object;
use futures::future::{BoxFuture, FutureExt as _, MaybeDone, maybe_done};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::error::{Error, Result};

/// A statement's parameters, borrowed (run now).
pub(super) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// A driver result.
type PgResult<T> = std::result::Result<T, tokio_postgres::Error>;

/// A parameter owned by the queue (sent later).
pub(super) type Value = Box<dyn ToSql + Sync + Send>;

/// Owned parameters as a statement borrows them.
pub(super) fn borrowed(values: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect()
}

/// A parameter that can be copied into the queue.
pub(super) trait Own {
    type Owned: ToSql + Sync + Send + 'static;
    fn own(&self) -> Self::Owned;
}

macro_rules! own_as_self {
    ($($t:ty),*) => {$(
        impl Own for $t {
            type Owned = $t;
            fn own(&self) -> $t {
                self.clone()
            }
        }
    )*};
}
own_as_self!(String, Vec<u8>, Vec<String>, i64, i32, bool);

impl Own for str {
    type Owned = String;
    fn own(&self) -> String {
        self.to_owned()
    }
}

impl Own for [u8] {
    type Owned = Vec<u8>;
    fn own(&self) -> Vec<u8> {
        self.to_vec()
    }
}

impl<T: Own + ?Sized> Own for &T {
    type Owned = T::Owned;
    fn own(&self) -> T::Owned {
        (**self).own()
    }
}

impl<T: Own> Own for Option<T> {
    type Owned = Option<T::Owned>;
    fn own(&self) -> Self::Owned {
        self.as_ref().map(Own::own)
    }
}

/// The parameters of a queued statement: `values![a, b, ...]` copies each.
macro_rules! values {
    ($($v:expr),* $(,)?) => {
        vec![$(Box::new($crate::meta::pg::conn::Own::own(&$v)) as $crate::meta::pg::conn::Value),*]
    };
}
pub(super) use values;

/// A statement waiting in the queue.
enum Queued {
    /// Simple protocol, no parameters (`BEGIN`).
    Batch(&'static str),
    /// Extended protocol, prepared once per connection.
    Exec(String, Vec<Value>),
}

/// How a transaction's `COMMIT` ended.
pub(super) enum Committed {
    /// Committed.
    Yes,
    /// A statement sent with it failed: the server answered the `COMMIT` with a rollback.
    RolledBack(tokio_postgres::Error),
    /// No answer: the transaction may or may not have committed.
    Unknown(Error),
}

/// A pooled connection used from a blocking thread: each statement is prepared once per
/// connection and run through the runtime's handle.
pub(super) struct SyncConn {
    /// `None` once given up: a statement timed out, and a connection that may still wait on a
    /// cut link is dropped, never returned to the pool.
    client: RefCell<Option<Object>>,
    pub(super) rt: tokio::runtime::Handle,
    /// How to open a fresh connection to the same server.
    pub(super) config: Arc<tokio_postgres::Config>,
    queue: RefCell<Vec<Queued>>,
    /// Waits for the server so far.
    trips: Cell<u64>,
}

impl SyncConn {
    pub(super) fn new(client: Object, config: Arc<tokio_postgres::Config>) -> Self {
        Self {
            client: RefCell::new(Some(client)),
            rt: tokio::runtime::Handle::current(),
            config,
            queue: RefCell::default(),
            trips: Cell::new(0),
        }
    }

    /// How many times this connection waited for the server.
    pub(super) fn round_trips(&self) -> u64 {
        self.trips.get()
    }

    /// Queues a statement without parameters for the next wait (`BEGIN`).
    pub(super) fn queue_batch(&self, sql: &'static str) {
        self.queue.borrow_mut().push(Queued::Batch(sql));
    }

    /// Queues a statement whose answer is not needed; its error comes with the next wait.
    pub(super) fn queue(&self, sql: impl Into<String>, params: Vec<Value>) {
        self.queue.borrow_mut().push(Queued::Exec(sql.into(), params));
    }

    /// Drops the queue unsent; true when it held the transaction's `BEGIN` (so nothing of the
    /// transaction reached the server and there is nothing to roll back).
    pub(super) fn discard(&self) -> bool {
        let queue = std::mem::take(&mut *self.queue.borrow_mut());
        queue.first().is_some_and(|q| matches!(q, Queued::Batch(sql) if sql.starts_with("BEGIN")))
    }

    /// Sends the queue and `f`'s statement, waits for all, within [`super::STATEMENT_TIMEOUT`];
    /// the queue's first error, else `f`'s outcome. Past the timeout the connection is given up
    /// and the caller told the database is unavailable.
    fn run<T>(&self, f: impl AsyncFnOnce(&Object) -> PgResult<T>) -> Result<T> {
        let (sent, out) = self.run_split(f)?;
        sent.and(out).map_err(db)
    }

    /// [`Self::run`], with the queue's outcome and `f`'s apart. When a queued statement cannot
    /// be prepared, nothing is sent (not `f`'s statement either: its transaction's `BEGIN` may
    /// be in the queue), and the connection is given up: it may hold a transaction its caller
    /// can no longer end, and closing it ends it.
    fn run_split<T>(&self, f: impl AsyncFnOnce(&Object) -> PgResult<T>) -> Result<(PgResult<()>, PgResult<T>)> {
        let queue = std::mem::take(&mut *self.queue.borrow_mut());
        self.trips.set(self.trips.get() + 1);
        let out = {
            let guard = self.client.borrow();
            let Some(client) = guard.as_ref() else {
                return Err(Error::Unavailable("postgresql: a statement timed out on this connection".into()));
            };
            self.rt.block_on(async {
                tokio::time::timeout(super::STATEMENT_TIMEOUT, async {
                    let steps = prepare(client, &queue).await?;
                    let sends = steps.iter().map(|s| match s {
                        Step::Batch(sql) => client.batch_execute(sql).boxed(),
                        Step::Exec(stmt, params) => client.execute(stmt, params).map(|r| r.map(drop)).boxed(),
                    });
                    Ok(futures::future::join(in_order(sends.collect()), f(client)).await)
                })
                .await
            })
        };
        match out {
            Ok(Ok(both)) => Ok(both),
            Ok(Err(unprepared)) => {
                self.give_up();
                Err(db(unprepared))
            }
            Err(_) => {
                self.give_up();
                Err(Error::Unavailable(format!("postgresql: no answer in {:?}", super::STATEMENT_TIMEOUT)))
            }
        }
    }

    /// Drops the connection instead of returning it to the pool.
    fn give_up(&self) {
        if let Some(c) = self.client.borrow_mut().take() {
            drop(Object::take(c));
        }
    }

    pub(super) fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>> {
        self.run(async |c| {
            let stmt = c.prepare_cached(sql).await?;
            c.query(&stmt, params).await
        })
    }

    pub(super) fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>> {
        self.run(async |c| {
            let stmt = c.prepare_cached(sql).await?;
            c.query_opt(&stmt, params).await
        })
    }

    pub(super) fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64> {
        self.run(async |c| {
            let stmt = c.prepare_cached(sql).await?;
            c.execute(&stmt, params).await
        })
    }

    pub(super) fn batch(&self, sql: &str) -> Result<()> {
        self.run(async |c| c.batch_execute(sql).await)
    }

    /// Sends the queue and `COMMIT` in one round trip.
    pub(super) fn commit(&self) -> Committed {
        match self.run_split(async |c| c.batch_execute("COMMIT").await) {
            Ok((Ok(()), Ok(()))) => Committed::Yes,
            // The server answered the COMMIT: an aborted transaction is rolled back.
            Ok((Err(e), Ok(()))) => Committed::RolledBack(e),
            Ok((_, Err(e))) => Committed::Unknown(db(e)),
            Err(e) => Committed::Unknown(e),
        }
    }
}

/// A queued statement ready to send.
enum Step<'q> {
    Batch(&'static str),
    Exec(tokio_postgres::Statement, Vec<&'q (dyn ToSql + Sync)>),
}

/// The queued statements prepared, in order; statements are cached per connection, so only a
/// statement's first use on a connection waits here.
async fn prepare<'q>(client: &Object, queue: &'q [Queued]) -> std::result::Result<Vec<Step<'q>>, tokio_postgres::Error> {
    let mut out = Vec::with_capacity(queue.len());
    for q in queue {
        out.push(match q {
            Queued::Exec(sql, params) => Step::Exec(client.prepare_cached(sql).await?, borrowed(params)),
            Queued::Batch(sql) => Step::Batch(sql),
        });
    }
    Ok(out)
}

/// Waits for every future, polling them in order each time: the first poll of each writes
/// its request, so the requests leave in this order. The first error, if any (later ones
/// follow from it: the transaction is aborted).
async fn in_order(
    futs: Vec<BoxFuture<'_, std::result::Result<(), tokio_postgres::Error>>>,
) -> std::result::Result<(), tokio_postgres::Error> {
    let mut futs: Vec<Pin<Box<MaybeDone<_>>>> = futs.into_iter().map(|f| Box::pin(maybe_done(f))).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for f in &mut futs {
            done &= f.as_mut().poll(cx).is_ready();
        }
        if done { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    for f in &mut futs {
        if let Some(Err(e)) = f.as_mut().take_output() {
            return Err(e);
        }
    }
    Ok(())
}

/// A database error as a store error: deadlocks and serialization failures are
/// [`Error::Busy`] (try again), a server that cannot be reached [`Error::Unavailable`], the
/// rest internal.
pub(super) fn db(e: tokio_postgres::Error) -> Error {
    use tokio_postgres::error::SqlState;
    let text = format!("postgresql: {}", super::chain(&e));
    match e.code() {
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE => Error::Busy(text),
        Some(c) if *c == SqlState::DISK_FULL => Error::StorageFull(text),
        // No answer from the server (connection refused or broken, server shutting down).
        Some(c) if c.code().starts_with("57P") || c.code().starts_with("08") => Error::Unavailable(text),
        None => Error::Unavailable(text),
        _ => Error::Other(text),
    }
}

#[cfg(test)]
mod tests {
    use super::super::PgMeta;
    use super::super::test_cluster::TestCluster;
    use super::*;

    async fn conn() -> Option<(TestCluster, SyncConn)> {
        let pg = TestCluster::start(&[])?;
        let meta = PgMeta::open(&pg.url(), 2, false).await.unwrap();
        let client = meta.client().await.unwrap();
        client.batch_execute("CREATE TABLE t (n bigint PRIMARY KEY)").await.unwrap();
        Some((pg, SyncConn::new(client, meta.config.clone())))
    }

    /// Queued statements run before the statement that flushes them, in order, in one wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_statements_run_in_order_with_the_next_wait() {
        let Some((_pg, conn)) = conn().await else { return };
        tokio::task::spawn_blocking(move || {
            conn.queue_batch("BEGIN");
            conn.queue("INSERT INTO t (n) VALUES ($1)", values![1_i64]);
            conn.queue("UPDATE t SET n = n + 1 WHERE n = $1", values![1_i64]);
            conn.queue("INSERT INTO t (n) VALUES ($1)", values![1_i64]);
            assert_eq!(conn.round_trips(), 0, "nothing sent yet");
            let rows = conn.query("SELECT n FROM t ORDER BY n", &[]).unwrap();
            let ns: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            assert_eq!(ns, [1, 2], "the insert, the update, then the second insert");
            assert_eq!(conn.round_trips(), 1);
            assert!(matches!(conn.commit(), Committed::Yes));
            assert_eq!(conn.round_trips(), 2);
        })
        .await
        .unwrap();
    }

    /// A queued statement's own error comes back from the next wait (not the "transaction is
    /// aborted" of the statements behind it), and the `COMMIT` behind a failed statement rolls
    /// back: nothing of the transaction stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queued_error_comes_back_and_its_commit_rolls_back() {
        let Some((_pg, conn)) = conn().await else { return };
        tokio::task::spawn_blocking(move || {
            conn.queue_batch("BEGIN");
            conn.queue("INSERT INTO t (n) VALUES ($1)", values![7_i64]);
            conn.queue("INSERT INTO t (n) VALUES ($1)", values![7_i64]);
            let err = conn.query("SELECT n FROM t", &[]).expect_err("a duplicate key");
            assert!(err.to_string().contains("duplicate key"), "{err}");
            assert!(
                matches!(conn.commit(), Committed::Yes),
                "the server answered the COMMIT (with a rollback)"
            );

            conn.queue_batch("BEGIN");
            conn.queue("INSERT INTO t (n) VALUES ($1)", values![8_i64]);
            conn.queue("INSERT INTO t (n) VALUES ($1)", values![8_i64]);
            match conn.commit() {
                Committed::RolledBack(e) => assert!(super::super::chain(&e).contains("duplicate key"), "{e}"),
                _ => panic!("a commit behind a failed statement is a rollback"),
            }
            let rows = conn.query("SELECT count(*) FROM t", &[]).unwrap();
            assert_eq!(rows[0].get::<_, i64>(0), 0, "nothing of either transaction stays");
        })
        .await
        .unwrap();
    }

    /// A transaction given up before anything was sent sends nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_discarded_queue_sends_nothing() {
        let Some((_pg, conn)) = conn().await else { return };
        tokio::task::spawn_blocking(move || {
            conn.queue_batch("BEGIN");
            conn.queue("INSERT INTO t (n) VALUES ($1)", values![1_i64]);
            assert!(conn.discard(), "BEGIN was never sent");
            conn.batch("SELECT 1").unwrap();
            assert!(!conn.discard(), "an empty queue");
            let rows = conn.query("SELECT count(*) FROM t", &[]).unwrap();
            assert_eq!(rows[0].get::<_, i64>(0), 0);
            assert_eq!(conn.round_trips(), 2);
        })
        .await
        .unwrap();
    }

    /// A queued statement that cannot be prepared fails the wait, and the statement behind it
    /// does not run on its own, outside the transaction whose `BEGIN` was never sent; the
    /// connection is not reused (it may hold a transaction the caller can no longer end).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queued_statement_that_cannot_be_prepared_runs_nothing_after_it() {
        let Some(pg) = TestCluster::start(&[]) else { return };
        let meta = PgMeta::open(&pg.url(), 2, false).await.unwrap();
        let setup = meta.client().await.unwrap();
        setup.batch_execute("CREATE TABLE t (n bigint PRIMARY KEY)").await.unwrap();
        let conn = SyncConn::new(meta.client().await.unwrap(), meta.config.clone());
        tokio::task::spawn_blocking(move || {
            conn.queue_batch("BEGIN");
            conn.queue("INSERT INTO no_such_table (n) VALUES ($1)", values![1_i64]);
            let err = conn.execute("INSERT INTO t (n) VALUES ($1)", &[&5_i64]).expect_err("the queue fails");
            assert!(err.to_string().contains("no_such_table"), "{err}");
            assert!(conn.execute("SELECT 1", &[]).is_err(), "the connection is given up");
        })
        .await
        .unwrap();
        let rows = setup.query("SELECT count(*) FROM t", &[]).await.unwrap();
        assert_eq!(rows[0].get::<_, i64>(0), 0, "nothing ran outside the transaction");
    }
}
