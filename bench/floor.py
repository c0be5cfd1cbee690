"""The machine's floor for a replicated object: what the work no design can skip costs on this
machine, without Ferry. Run by `scripts/bench-all floor` (bench/suite.py), one case per process:

    python bench/floor.py CASE K [RATE] [SECONDS]
    python bench/floor.py sync|checkpoint

writes one JSON line: CPU (user and system) per object of this process, and of the receiving
process for `exchange`. Objects are 4 KiB, arriving at RATE per second (default 500), K to a
group (a destination commit, or a batch on the wire), for SECONDS (default 8).

Cases:
- `pace`: the loop alone (sleep until the next group is due): the wake-ups every case pays.
- `append`: each group appended to a file and made durable (`write` + `fdatasync`): the least a
  destination does before it acknowledges a replica (invariant 1).
- `sqlite`: each group inserted into a table shaped like Ferry's `versions` (its three indexes,
  the body inline) and the usage counter, in one transaction, WAL, `synchronous=FULL`.
- `exchange`: each group sent over loopback TCP to a receiving process that reads it and answers
  100 bytes, as a batch of replicas and its answer (no HTTP, no signature).

Two more cases time single operations instead, with no K:
- `sync`: 300 appends of 4 KiB, each followed by `fdatasync`: the median and p99 of the pair, ms.
- `checkpoint`: 4,000 commits of 3 rows of 4 KiB, one a millisecond, into a WAL database with
  `synchronous=FULL`, with SQLite's automatic checkpoints (every 1,000 pages, its default) and
  without: commit times, ms. A commit that checkpoints waits for the copy and its fsync.

The kernel splits one exact total into user and system time by sampling, so only their sum is
exact. It includes the Python interpreter's own work, a few µs per call.
"""

import json
import os
import resource
import socket
import sqlite3
import sys
import tempfile
import time

BODY = os.urandom(4096)


def paced(step, k, rate, seconds):
    """Calls step(first_index, k) for every group, each when it is due; returns (user, system)
    microseconds per object of this process."""
    n = rate * seconds
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    i = 0
    while i < n:
        step(i, k)
        i += k
        wait = t0 + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return (r1.ru_utime - r0.ru_utime) / n * 1e6, (r1.ru_stime - r0.ru_stime) / n * 1e6


def append(work):
    fd = os.open(os.path.join(work, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def step(_i, k):
        os.write(fd, BODY * k)
        os.fdatasync(fd)

    return step


SCHEMA = """
CREATE TABLE versions (
    id INTEGER PRIMARY KEY, bucket TEXT NOT NULL, key BLOB NOT NULL, version_id TEXT NOT NULL,
    fmt INTEGER NOT NULL, mtime_us INTEGER NOT NULL, is_latest INTEGER NOT NULL, is_dm INTEGER NOT NULL,
    size INTEGER NOT NULL, etag TEXT NOT NULL, storage_class TEXT, owner TEXT NOT NULL, repl_status TEXT,
    parts TEXT, multipart INTEGER NOT NULL, attrs TEXT NOT NULL, inline_data BLOB);
CREATE UNIQUE INDEX versions_id ON versions (bucket, key, version_id);
CREATE INDEX versions_by_age ON versions (bucket, key, mtime_us DESC, version_id DESC);
CREATE INDEX versions_current ON versions (bucket, key) WHERE is_latest = 1 AND is_dm = 0;
CREATE TABLE bucket_usage (bucket TEXT PRIMARY KEY, versions INTEGER NOT NULL, bytes INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO bucket_usage VALUES ('dst', 0, 0);
"""


def sqlite(work):
    db = sqlite3.connect(os.path.join(work, "meta.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA cache_size=-16000")
    db.executescript(SCHEMA)

    def step(i, k):
        db.execute("BEGIN IMMEDIATE")
        for j in range(i, i + k):
            key = f"bench/{j:08d}".encode()
            db.execute("UPDATE versions SET is_latest = 0 WHERE bucket = 'dst' AND key = ? AND is_latest = 1", (key,))
            db.execute(
                "INSERT INTO versions (bucket, key, version_id, fmt, mtime_us, is_latest, is_dm, size, etag, owner,"
                " repl_status, multipart, attrs, inline_data)"
                " VALUES ('dst', ?, ?, 1, ?, 1, 0, 4096, ?, 'owner', 'REPLICA  ', 0, '{}', ?)",
                (key, f"{j:032x}", time.time_ns() // 1000, "0" * 32, BODY))
            db.execute("UPDATE bucket_usage SET versions = versions + 1, bytes = bytes + 4096 WHERE bucket = 'dst'")
        db.execute("COMMIT")

    return step


def receive(listener):
    """The receiving process of `exchange`: reads length-prefixed groups, answers each; at the
    end writes its own CPU per object to the connection."""
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    objects = 0
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    while True:
        head = conn.recv(4, socket.MSG_WAITALL)
        if len(head) < 4 or head == b"\0\0\0\0":
            break
        size = int.from_bytes(head, "big")
        got = 0
        while got < size:
            chunk = conn.recv(min(size - got, 1 << 16))
            if not chunk:
                os._exit(1)
            got += len(chunk)
        objects += size // len(BODY)
        conn.sendall(b"x" * 100)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    n = max(objects, 1)
    conn.sendall(json.dumps([(r1.ru_utime - r0.ru_utime) / n * 1e6, (r1.ru_stime - r0.ru_stime) / n * 1e6]).encode())
    conn.close()
    os._exit(0)


def percentiles(times_ms):
    times_ms = sorted(times_ms)
    at = lambda q: round(times_ms[min(len(times_ms) - 1, int(q * len(times_ms)))], 3)  # noqa: E731
    return {"p50_ms": at(0.5), "p99_ms": at(0.99), "p999_ms": at(0.999), "max_ms": round(times_ms[-1], 3)}


def sync_latency(work):
    fd = os.open(os.path.join(work, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    times = []
    for _ in range(300):
        t = time.perf_counter()
        os.write(fd, BODY)
        os.fdatasync(fd)
        times.append((time.perf_counter() - t) * 1e3)
    return percentiles(times)


def checkpoint_latency(work, autocheckpoint):
    db = sqlite3.connect(os.path.join(work, f"cp{autocheckpoint}.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(f"PRAGMA wal_autocheckpoint={autocheckpoint}")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)")
    times = []

    def commit(_i, _k):
        t = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        for _ in range(3):
            db.execute("INSERT INTO t (b) VALUES (?)", (BODY,))
        db.execute("COMMIT")
        times.append((time.perf_counter() - t) * 1e3)

    paced(commit, 1, 1000, 4)  # 4,000 commits, one a millisecond
    return percentiles(times)


def main():
    case = sys.argv[1]
    if case in ("sync", "checkpoint"):
        with tempfile.TemporaryDirectory() as work:
            if case == "sync":
                print(json.dumps({"case": case, **sync_latency(work)}))
            else:
                print(json.dumps({"case": case, "checkpoints": checkpoint_latency(work, 1000),
                                  "no_checkpoints": checkpoint_latency(work, 0)}))
        return
    k = int(sys.argv[2])
    rate = int(sys.argv[3]) if len(sys.argv) > 3 else 500
    seconds = int(sys.argv[4]) if len(sys.argv) > 4 else 8
    out = {"case": case, "k": k, "rate": rate}
    with tempfile.TemporaryDirectory() as work:
        if case == "pace":
            out["user_us"], out["sys_us"] = paced(lambda _i, _k: None, k, rate, seconds)
        elif case == "append":
            out["user_us"], out["sys_us"] = paced(append(work), k, rate, seconds)
        elif case == "sqlite":
            out["user_us"], out["sys_us"] = paced(sqlite(work), k, rate, seconds)
        elif case == "exchange":
            listener = socket.create_server(("127.0.0.1", 0))
            if os.fork() == 0:
                receive(listener)
            conn = socket.create_connection(listener.getsockname())
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def step(_i, k):
                group = BODY * k
                conn.sendall(len(group).to_bytes(4, "big") + group)
                conn.recv(100, socket.MSG_WAITALL)

            out["user_us"], out["sys_us"] = paced(step, k, rate, seconds)
            conn.sendall(b"\0\0\0\0")
            answer = b""
            while chunk := conn.recv(1024):
                answer += chunk
            out["receiver_user_us"], out["receiver_sys_us"] = json.loads(answer)
            os.wait()
        else:
            sys.exit(f"unknown case {case}: pace append sqlite exchange sync checkpoint")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
