//! The PostgreSQL metadata backend, for a region of several Ferry nodes (docs/SCALE-OUT.md,
//! issue "Scale-out region"). Built in steps; this module holds what is done:
//!
//! - [`PgMeta::open`]: a connection pool (deadpool-postgres over tokio-postgres), the
//!   durability check, and the schema, created or migrated in one transaction.
//! - [`Durability`]: `fsync`, `synchronous_commit` and `full_page_writes` as the server reports
//!   them. A server that can lose an acknowledged commit (fsync off, asynchronous commit, torn
//!   pages) is refused unless the operator says so: Ferry acknowledges a write only after its
//!   commit, and that promise is only as good as the database's.
//!
//! - [`nodes`]: joining, fencing and closed timestamps (the region's committed clock across
//!   nodes), with [`ferry_core::time::NodeClock`] on each node.
//!
//! - [`heartbeat`]: the worker that publishes a node's closed timestamp, moves its clock past
//!   the region's, and fences the nodes that stopped beating.
//! - [`keys`]: the per-key row a write transaction locks (its sequence number, and the time its
//!   commit time must follow), so a key's versions order the same way on every node.
//! - [`leases`]: replication jobs claimed by lease (`FOR UPDATE SKIP LOCKED`), renewed, and
//!   completed only under the claimer's token.
//!
//! - [`PgStore`] (`store.rs`, `reads.rs`, `writes.rs`): the [`crate::meta::MetaStore`] of a
//!   node, passing the same conformance suite as SQLite, plus its own tests of two nodes on
//!   one database (a key's order across skewed clocks, fencing, racing job records and
//!   completions, counter compaction, a bucket deleted under a write).
//!
//! # Schema (PostgreSQL-wire only)
//! The SQLite tables with PostgreSQL types: keys are `bytea`, whose order is byte order, the
//! order S3 lists in; times are `bigint` microseconds; JSON columns stay `text` (the serde
//! form, as in SQLite). And the tables of a region of several nodes:
//! - `nodes(node_id, epoch, state, joined_us)`: membership; `epoch` is bumped to fence a node;
//! - `node_slots(node_id, slot, epoch)`: one row per writer connection, locked by every write
//!   transaction of that connection, so a fenced node cannot commit;
//! - `node_clocks(node_id, closed_us, heartbeat_us)`: each node's closed timestamp (no commit
//!   of its own will be at or below it); the region's committed clock is their minimum;
//! - `key_heads(bucket, key, seq, latest_mtime_us)`: the per-key row a write locks and whose
//!   sequence orders the key's versions and jobs across nodes;
//! - `blob_intents(id, node_id, epoch, created_us)`: bodies being written to the blob backend,
//!   swept when their node is fenced and they are old;
//! - `repl_jobs` gains `key_seq`, `lease_owner`, `lease_token`, `lease_until_us` (leases are not
//!   indexed, so renewing them stays a HOT update);
//! - `bucket_usage_deltas` and `repl_dest_deltas`: counter changes appended by writes (no
//!   writer waits on a shared counter row), summed with their base rows by reads, folded into
//!   them by compaction;
//! - `node_slots.high_us`: the highest commit time each writer slot sealed.
//!
//! Integers are all `bigint` (the row readers are shared with SQLite, whose integers are
//! 64-bit).
//!
//! No advisory locks, no `LISTEN`/`NOTIFY` in write transactions, no `xid8` snapshot
//! functions: CockroachDB and YugabyteDB speak the same protocol and can follow.

mod conn;
pub mod heartbeat;
pub mod intents;
pub mod keys;
pub mod leases;
pub mod nodes;
mod reads;
mod store;
#[cfg(any(test, feature = "testing"))]
pub mod test_cluster;
mod writes;

pub use store::{PgOptions, PgStore};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::error::{Error, Result};

/// A transaction left idle this long by a node (cut off, paused) is ended by the server, which
/// frees the rows it holds (ms).
pub const IDLE_IN_TRANSACTION_MS: u64 = 5_000;

/// How long a statement may take before the node gives up its connection (the server may be
/// unreachable): the caller gets [`Error::Unavailable`].
pub const STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// How long a node's lease on a replication job lasts unless its heartbeat renews it (µs).
pub const JOB_LEASE_US: i64 = 30_000_000;

/// The schema this build writes. 3: versions and buckets may carry encryption at rest and
/// Object Lock settings in their JSON columns (no table changes); older nodes must refuse the
/// database rather than serve ciphertext or drop wrapped data keys.
pub const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = r"
CREATE TABLE IF NOT EXISTS settings (k text PRIMARY KEY, v text NOT NULL);
CREATE TABLE IF NOT EXISTS buckets (
    name text PRIMARY KEY, fmt bigint NOT NULL, created_us bigint NOT NULL, owner text NOT NULL,
    versioning bigint NOT NULL, acl text NOT NULL, tagging text, replication text, replica_sources text, config text
);
-- Schema 2: the bucket's access settings (a database created at schema 1 gains the column).
ALTER TABLE buckets ADD COLUMN IF NOT EXISTS config text;
CREATE TABLE IF NOT EXISTS bucket_usage (bucket text PRIMARY KEY, versions bigint NOT NULL, bytes bigint NOT NULL);
CREATE TABLE IF NOT EXISTS bucket_usage_deltas (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, bucket text NOT NULL, versions bigint NOT NULL, bytes bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS bucket_usage_deltas_bucket ON bucket_usage_deltas (bucket);
CREATE TABLE IF NOT EXISTS versions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bucket text NOT NULL, key bytea NOT NULL, version_id text NOT NULL,
    fmt bigint NOT NULL, mtime_us bigint NOT NULL, is_latest boolean NOT NULL, is_dm boolean NOT NULL,
    size bigint NOT NULL, etag text NOT NULL, storage_class text, owner text NOT NULL, repl_status text,
    parts text, multipart boolean NOT NULL, attrs text NOT NULL, inline_data bytea
);
CREATE UNIQUE INDEX IF NOT EXISTS versions_id ON versions (bucket, key, version_id);
CREATE INDEX IF NOT EXISTS versions_by_age ON versions (bucket, key, mtime_us DESC, version_id DESC);
CREATE INDEX IF NOT EXISTS versions_current ON versions (bucket, key) WHERE is_latest AND NOT is_dm;
CREATE TABLE IF NOT EXISTS key_heads (
    bucket text NOT NULL, key bytea NOT NULL, seq bigint NOT NULL, latest_mtime_us bigint NOT NULL,
    PRIMARY KEY (bucket, key)
);
CREATE TABLE IF NOT EXISTS uploads (
    upload_id text PRIMARY KEY, fmt bigint NOT NULL, bucket text NOT NULL, key bytea NOT NULL,
    initiated_us bigint NOT NULL, owner text NOT NULL, storage_class text, checksum_algorithm text,
    attrs text NOT NULL
);
CREATE INDEX IF NOT EXISTS uploads_by_key ON uploads (bucket, key, initiated_us, upload_id);
CREATE TABLE IF NOT EXISTS parts (
    upload_id text NOT NULL, part_number bigint NOT NULL, fmt bigint NOT NULL, mtime_us bigint NOT NULL,
    part text NOT NULL, PRIMARY KEY (upload_id, part_number)
);
CREATE TABLE IF NOT EXISTS blobs (id text PRIMARY KEY);
CREATE TABLE IF NOT EXISTS blob_intents (
    id text PRIMARY KEY, node_id text NOT NULL, epoch bigint NOT NULL, created_us bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS garbage (id text PRIMARY KEY, due_us bigint NOT NULL);
CREATE INDEX IF NOT EXISTS garbage_due ON garbage (due_us);
CREATE SEQUENCE IF NOT EXISTS lease_tokens;
CREATE TABLE IF NOT EXISTS repl_jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, fmt bigint NOT NULL,
    bucket text NOT NULL, key bytea NOT NULL, version_id text NOT NULL, op bigint NOT NULL,
    peer text NOT NULL, dest_bucket text NOT NULL, rule_id text NOT NULL, created_us bigint NOT NULL,
    size bigint NOT NULL, state bigint NOT NULL, attempts bigint NOT NULL, next_attempt_us bigint NOT NULL,
    last_error text, progress text, backfill_id bigint, priority bigint NOT NULL,
    blocked boolean NOT NULL DEFAULT false, live boolean NOT NULL DEFAULT true, since_us bigint, opts text,
    key_seq bigint NOT NULL DEFAULT 0, lease_owner text, lease_token bigint, lease_until_us bigint
) WITH (fillfactor = 80);
CREATE INDEX IF NOT EXISTS repl_jobs_run ON repl_jobs (peer, dest_bucket, state, blocked, priority, next_attempt_us, id);
CREATE INDEX IF NOT EXISTS repl_jobs_key ON repl_jobs (peer, dest_bucket, bucket, key, state, id);
CREATE INDEX IF NOT EXISTS repl_jobs_live ON repl_jobs (bucket, peer, dest_bucket, live, created_us);
CREATE INDEX IF NOT EXISTS repl_jobs_version ON repl_jobs (bucket, key, version_id);
CREATE INDEX IF NOT EXISTS repl_jobs_backfill ON repl_jobs (backfill_id, state);
CREATE TABLE IF NOT EXISTS repl_delivered (vrow bigint NOT NULL, dest text NOT NULL, PRIMARY KEY (vrow, dest));
CREATE TABLE IF NOT EXISTS repl_dests (
    bucket text NOT NULL, peer text NOT NULL, dest_bucket text NOT NULL,
    pending_ops bigint NOT NULL, pending_bytes bigint NOT NULL, failed_ops bigint NOT NULL, last_error text,
    PRIMARY KEY (bucket, peer, dest_bucket)
);
CREATE TABLE IF NOT EXISTS repl_dest_deltas (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, bucket text NOT NULL, peer text NOT NULL, dest_bucket text NOT NULL,
    pending_ops bigint NOT NULL, pending_bytes bigint NOT NULL, failed_ops bigint NOT NULL, last_error text
);
CREATE INDEX IF NOT EXISTS repl_dest_deltas_dest ON repl_dest_deltas (bucket, peer, dest_bucket);
CREATE INDEX IF NOT EXISTS repl_dest_deltas_peer ON repl_dest_deltas (peer);
CREATE TABLE IF NOT EXISTS backfills (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, fmt bigint NOT NULL, bucket text NOT NULL, rule_id text,
    prefix text NOT NULL, status_filter text NOT NULL, older_than_us bigint, state text NOT NULL,
    cursor_key bytea, cursor_mtime bigint, cursor_vid text,
    total_versions bigint NOT NULL, total_bytes bigint NOT NULL,
    scanned_versions bigint NOT NULL, scanned_bytes bigint NOT NULL, enqueued_versions bigint NOT NULL,
    done_versions bigint NOT NULL, done_bytes bigint NOT NULL, failed_versions bigint NOT NULL,
    created_us bigint NOT NULL, updated_us bigint NOT NULL, finished_us bigint,
    lease_owner text, lease_token bigint, lease_until_us bigint
);
CREATE INDEX IF NOT EXISTS backfills_bucket ON backfills (bucket, id);
CREATE TABLE IF NOT EXISTS events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, fmt bigint NOT NULL, time_us bigint NOT NULL,
    bucket text NOT NULL, rule_id text NOT NULL, kind text NOT NULL, detail text NOT NULL
);
CREATE INDEX IF NOT EXISTS events_bucket ON events (bucket, id);
CREATE TABLE IF NOT EXISTS nodes (
    node_id text PRIMARY KEY, epoch bigint NOT NULL, state text NOT NULL, joined_us bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS node_slots (
    node_id text NOT NULL, slot integer NOT NULL, epoch bigint NOT NULL, high_us bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (node_id, slot)
);
CREATE TABLE IF NOT EXISTS node_clocks (
    node_id text PRIMARY KEY, closed_us bigint NOT NULL, heartbeat_us bigint NOT NULL
);
";

/// A PostgreSQL error as a store error.
pub(crate) fn pg(e: impl std::error::Error) -> Error {
    Error::Other(format!("postgresql: {}", chain(&e)))
}

/// An error with its causes: a server's answer is the source of tokio-postgres's "db error",
/// and an operator needs it (the SQLSTATE and message), not the wrapper.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// One connection to `url`, without the pool, the durability check or migrations: for tools
/// that only read (`ferry region nodes`).
///
/// # Errors
/// A bad URL or an unreachable server.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(pg)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgresql connection ended");
        }
    });
    Ok(client)
}

/// The server's durability settings, as `SHOW` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durability {
    pub fsync: String,
    pub synchronous_commit: String,
    pub full_page_writes: String,
}

impl Durability {
    /// What makes an acknowledged commit losable, each with the setting to change; empty when
    /// the server is safe. `synchronous_commit = local` is safe on one server (a commit waits
    /// for its local flush); `off` is not (a crash loses the last commits).
    #[must_use]
    pub fn unsafe_settings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.fsync != "on" {
            out.push(format!("fsync = {} (set fsync = on: a crash can corrupt the database)", self.fsync));
        }
        if self.synchronous_commit == "off" {
            out.push("synchronous_commit = off (set it to on: a crash loses acknowledged commits)".to_owned());
        }
        if self.full_page_writes != "on" {
            out.push(format!(
                "full_page_writes = {} (set full_page_writes = on: a crash can leave torn pages)",
                self.full_page_writes
            ));
        }
        out
    }
}

/// The PostgreSQL metadata store of a region.
pub struct PgMeta {
    pool: Pool,
    durability: Durability,
    /// The server's address and user, for connections outside the pool.
    config: std::sync::Arc<tokio_postgres::Config>,
}

impl PgMeta {
    /// Connects to `url` (`postgres://USER@HOST:PORT/DB`) with at most `connections`
    /// connections, checks the server's durability (refusing an unsafe server unless
    /// `allow_unsafe`), and creates or migrates the schema.
    ///
    /// # Errors
    /// A bad URL, an unreachable server, unsafe settings, a database written by a newer build.
    pub async fn open(url: &str, connections: usize, allow_unsafe: bool) -> Result<Self> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| Error::InvalidArgument(format!("meta URL: {e}")))?;
        // A node cut off from the server (a blackholed link) must not hold its locks for ever:
        // the server ends a transaction left idle this long, and TCP keepalives find the
        // dead connection.
        if config.get_options().is_none() {
            config.options(format!("-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"));
        }
        config.keepalives(true).keepalives_idle(std::time::Duration::from_secs(10));
        let manager = Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(connections.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(std::time::Duration::from_secs(5)))
            .wait_timeout(Some(STATEMENT_TIMEOUT))
            .build()
            .map_err(pg)?;
        let client = pool.get().await.map_err(pg)?;
        let durability = durability(&client).await?;
        let unsafe_settings = durability.unsafe_settings();
        if !unsafe_settings.is_empty() && !allow_unsafe {
            return Err(Error::InvalidArgument(format!(
                "the PostgreSQL server can lose acknowledged writes: {} (or start with meta_allow_unsafe = true)",
                unsafe_settings.join("; ")
            )));
        }
        if !unsafe_settings.is_empty() {
            tracing::warn!(settings = %unsafe_settings.join("; "), "PostgreSQL durability settings allow lost writes");
        }
        migrate(&client).await?;
        drop(client);
        Ok(Self { pool, durability, config: std::sync::Arc::new(config) })
    }

    /// A connection of the pool.
    ///
    /// # Errors
    /// The server cannot be reached.
    pub async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| Error::Unavailable(format!("postgresql: {e}")))
    }

    /// The server's durability settings, as read at open.
    #[must_use]
    pub fn durability(&self) -> &Durability {
        &self.durability
    }

    /// The schema version of the database.
    ///
    /// # Errors
    /// Database errors.
    pub async fn schema_version(&self) -> Result<i64> {
        let client = self.pool.get().await.map_err(pg)?;
        schema_of(&**client).await
    }
}

/// The schema version the database says it is at.
///
/// # Errors
/// Database errors, or a version that is not a number.
pub(super) async fn schema_of(client: &impl tokio_postgres::GenericClient) -> Result<i64> {
    let row = client.query_one("SELECT v FROM settings WHERE k = 'schema'", &[]).await.map_err(pg)?;
    let v: String = row.get(0);
    v.parse().map_err(|_| Error::Other("settings.schema is not a number".into()))
}

async fn durability(client: &tokio_postgres::Client) -> Result<Durability> {
    let show = |name: &'static str| async move {
        let row = client.query_one(&format!("SHOW {name}"), &[]).await.map_err(pg)?;
        Ok::<String, Error>(row.get(0))
    };
    Ok(Durability {
        fsync: show("fsync").await?,
        synchronous_commit: show("synchronous_commit").await?,
        full_page_writes: show("full_page_writes").await?,
    })
}

/// Creates the tables of a new database in one transaction, or checks an existing one's
/// version (a newer one is refused, never guessed at).
async fn migrate(client: &tokio_postgres::Client) -> Result<()> {
    // A database already at this schema is left alone: the DDL below locks every table it
    // names, so running it while other nodes write would stall them (their writes queue behind
    // its locks) or deadlock with them. A new region's first nodes may both run it: the
    // second waits for the first's transaction.
    let exists: bool = client.query_one("SELECT to_regclass('settings') IS NOT NULL", &[]).await.map_err(pg)?.get(0);
    if exists {
        let row = client.query_opt("SELECT v FROM settings WHERE k = 'schema'", &[]).await.map_err(pg)?;
        match row.map(|r| r.get::<_, String>(0).parse::<i64>()) {
            Some(Ok(v)) if v == SCHEMA_VERSION => return Ok(()),
            Some(Ok(v)) if v > SCHEMA_VERSION => return Err(Error::unknown("metadata schema", v)),
            // 2 to 3 changes no table: only the version moves (no DDL, so no table locks).
            Some(Ok(2)) => {
                client
                    .execute(
                        "UPDATE settings SET v = $1 WHERE k = 'schema' AND v = '2'",
                        &[&SCHEMA_VERSION.to_string()],
                    )
                    .await
                    .map_err(pg)?;
                tracing::info!(schema = SCHEMA_VERSION, "metadata database migrated");
                return Ok(());
            }
            _ => {}
        }
    }
    // `IF NOT EXISTS` on a database already created would log a NOTICE per table.
    client.batch_execute(&format!("SET client_min_messages = warning; BEGIN; {SCHEMA}")).await.map_err(pg)?;
    let done = async {
        let row = client.query_opt("SELECT v FROM settings WHERE k = 'schema'", &[]).await.map_err(pg)?;
        match row.map(|r| r.get::<_, String>(0)) {
            None => {
                client
                    .execute("INSERT INTO settings (k, v) VALUES ('schema', $1)", &[&SCHEMA_VERSION.to_string()])
                    .await
                    .map_err(pg)?;
            }
            Some(v) => match v.parse::<i64>() {
                Ok(v) if v == SCHEMA_VERSION => {}
                Ok(v) if v < SCHEMA_VERSION => {
                    client
                        .execute("UPDATE settings SET v = $1 WHERE k = 'schema'", &[&SCHEMA_VERSION.to_string()])
                        .await
                        .map_err(pg)?;
                }
                Ok(v) => return Err(Error::unknown("metadata schema", v)),
                Err(_) => return Err(Error::Other("settings.schema is not a number".into())),
            },
        }
        client.batch_execute("COMMIT").await.map_err(pg)
    }
    .await;
    if done.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    done
}

#[cfg(test)]
mod conformance {
    use super::test_cluster::TestCluster;
    use super::{PgOptions, PgStore};

    crate::meta::conformance::conformance_tests!(
        fixture: TestCluster::start(&[]),
        open: |pg: &TestCluster| {
            let url = pg.url();
            async move |_: &std::path::Path| {
                let options =
                    PgOptions { node_id: "n1".into(), writers: 4, readers: 4, allow_unsafe: false, staging_dir: None, blob_intents: false };
                PgStore::open(&url, &options).await.unwrap()
            }
        }
    );
}

#[cfg(test)]
mod tests {
    use super::test_cluster::TestCluster;
    use super::*;

    #[test]
    fn unsafe_settings_are_named() {
        let safe = Durability { fsync: "on".into(), synchronous_commit: "on".into(), full_page_writes: "on".into() };
        assert!(safe.unsafe_settings().is_empty());
        let local = Durability { synchronous_commit: "local".into(), ..safe.clone() };
        assert!(local.unsafe_settings().is_empty(), "local waits for the local flush");
        let bad = Durability { fsync: "off".into(), synchronous_commit: "off".into(), full_page_writes: "off".into() };
        let said = bad.unsafe_settings();
        assert_eq!(said.len(), 3);
        assert!(said[0].starts_with("fsync = off") && said[1].starts_with("synchronous_commit = off"));
    }

    /// A node opening a database already at this schema runs no DDL: the `IF NOT EXISTS`
    /// statements take a lock on every table, which would wait for (and stall, or deadlock
    /// with) the writes of the nodes already running.
    #[tokio::test]
    async fn opening_a_database_at_this_schema_waits_for_no_writer() {
        let Some(pg) = TestCluster::start(&[]) else { return };
        drop(PgMeta::open(&pg.url(), 4, false).await.unwrap());
        let (mut writer, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let busy = writer.transaction().await.unwrap();
        busy.batch_execute("LOCK TABLE repl_jobs, versions IN ROW EXCLUSIVE MODE").await.unwrap();
        let opened = tokio::time::timeout(std::time::Duration::from_secs(30), PgMeta::open(&pg.url(), 4, false))
            .await
            .expect("opening waits for no writer")
            .unwrap();
        assert_eq!(opened.schema_version().await.unwrap(), SCHEMA_VERSION);
        busy.rollback().await.unwrap();
    }

    /// A database at schema 2 moves to 3 without DDL (no table changed), so it waits for no
    /// writer of the nodes still running either.
    #[tokio::test]
    async fn a_schema_2_database_moves_to_3_without_locking_tables() {
        let Some(pg) = TestCluster::start(&[]) else { return };
        let meta = PgMeta::open(&pg.url(), 2, false).await.unwrap();
        meta.pool.get().await.unwrap().execute("UPDATE settings SET v = '2' WHERE k = 'schema'", &[]).await.unwrap();
        drop(meta);
        let (mut writer, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let busy = writer.transaction().await.unwrap();
        busy.batch_execute("LOCK TABLE buckets, repl_jobs, versions IN ROW EXCLUSIVE MODE").await.unwrap();
        let opened = tokio::time::timeout(std::time::Duration::from_secs(30), PgMeta::open(&pg.url(), 2, false))
            .await
            .expect("the move to 3 waits for no writer")
            .unwrap();
        assert_eq!(opened.schema_version().await.unwrap(), SCHEMA_VERSION);
        busy.rollback().await.unwrap();
    }

    /// A real server: its settings are read, the schema created once (opening again keeps it),
    /// keys sort bytewise as S3 lists them.
    #[tokio::test]
    async fn a_safe_server_is_opened_and_its_schema_created() {
        let Some(pg) = TestCluster::start(&[]) else { return };
        let meta = PgMeta::open(&pg.url(), 4, false).await.unwrap();
        assert_eq!(meta.durability().fsync, "on");
        assert_eq!(meta.schema_version().await.unwrap(), SCHEMA_VERSION);
        drop(meta);
        let again = PgMeta::open(&pg.url(), 4, false).await.unwrap();
        assert_eq!(again.schema_version().await.unwrap(), SCHEMA_VERSION);
        let client = again.pool.get().await.unwrap();
        for key in [&b"a"[..], b"B", b"a/", "é".as_bytes(), b"\xff", b"\x00z"] {
            client
                .execute(
                    "INSERT INTO key_heads (bucket, key, seq, latest_mtime_us) VALUES ('b', $1, 0, 0)",
                    &[&key],
                )
                .await
                .unwrap();
        }
        let rows = client.query("SELECT key FROM key_heads WHERE bucket = 'b' ORDER BY key", &[]).await.unwrap();
        let keys: Vec<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
        let mut want: Vec<Vec<u8>> = keys.clone();
        want.sort();
        assert_eq!(keys, want, "bytea orders as bytes");
    }

    /// A server that can lose acknowledged commits is refused with the settings named, unless
    /// the operator allows it.
    #[tokio::test]
    async fn an_unsafe_server_is_refused() {
        let Some(pg) = TestCluster::start(&[("fsync", "off"), ("synchronous_commit", "off")]) else { return };
        let err = PgMeta::open(&pg.url(), 2, false).await.err().expect("refused");
        let text = err.to_string();
        assert!(text.contains("fsync = off") && text.contains("synchronous_commit = off"), "{text}");
        let meta = PgMeta::open(&pg.url(), 2, true).await.expect("allowed when told");
        assert_eq!(meta.durability().synchronous_commit, "off");
    }

    /// A database at schema 1 (buckets without their access settings) is migrated: the column
    /// is added and the version moves to this one; a bucket written before reads with none.
    #[tokio::test]
    async fn a_schema_1_database_is_migrated() {
        let Some(pg) = TestCluster::start(&[]) else { return };
        let meta = PgMeta::open(&pg.url(), 2, false).await.unwrap();
        let client = meta.pool.get().await.unwrap();
        client
            .batch_execute(
                "ALTER TABLE buckets DROP COLUMN config; UPDATE settings SET v = '1' WHERE k = 'schema'; \
                 INSERT INTO buckets (name, fmt, created_us, owner, versioning, acl) \
                 VALUES ('old', 1, 1, '{\"id\": \"u\", \"display_name\": \"u\"}', 1, '{\"grants\": []}')",
            )
            .await
            .unwrap();
        drop((client, meta));
        let meta = PgMeta::open(&pg.url(), 2, false).await.unwrap();
        assert_eq!(meta.schema_version().await.unwrap(), SCHEMA_VERSION);
        let client = meta.pool.get().await.unwrap();
        let row = client.query_one("SELECT config FROM buckets WHERE name = 'old'", &[]).await.unwrap();
        assert_eq!(row.get::<_, Option<String>>(0), None);
    }

    /// A database written by a newer build is refused.
    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let Some(pg) = TestCluster::start(&[]) else { return };
        let meta = PgMeta::open(&pg.url(), 2, false).await.unwrap();
        let client = meta.pool.get().await.unwrap();
        client.execute("UPDATE settings SET v = '99' WHERE k = 'schema'", &[]).await.unwrap();
        drop(client);
        let err = PgMeta::open(&pg.url(), 2, false).await.err().expect("refused");
        assert!(matches!(err, Error::UnknownFormat { .. }), "{err}");
    }
}
