"""Where the CPU of replication goes: two regions as `ferry serve` (us-east-1 replicating to
eu-west-1 through the delay proxy of examples/lag_probe.rs, 25 ms each way), `lag_probe put
--no-watch` at 500 PUT/s of 4 KiB, `perf record` (DWARF call graphs) on both regions while it
runs, then flame graphs (inferno) and a coarse split of each profile by subsystem.

usage: scripts/profile-lag [plain|replicated|syscalls|pages] [COUNT]
  plain       the same PUTs to a bucket without a replication rule (the source's baseline)
  replicated  (default) the PUTs replicate; the destination is profiled too
  syscalls    the PUTs replicate; no profile: each region's fsyncs and pwrites per object
              (`perf stat` on the syscall tracepoints), and its CPU per object
  pages       the PUTs replicate; no profile: what each region's commits write, per commit
              and by table or index (its WAL, copied during the load, read against the
              database's `dbstat`)
Writes docs/bench/flame-*.svg and prints the split. Needs perf and inferno-flamegraph
(`cargo install inferno`).
"""

import atexit
import collections
import re
import shutil
import sqlite3
import struct
import threading
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from suite import (PLOTS, PROBE, DelayProxy, Region, cpu_seconds, log, replicate, run_measured, stop_all,  # noqa: E402
                   versioned_bucket, wait_caught_up)

# Coarse subsystems, first match wins, by frames in a folded stack.
SPLIT = [
    ("SQLite writer thread: commit (WAL frames, fsync)",
     lambda s: "writer_loop" in s and ("execute_batch" in s or "sqlite3VdbeHalt" in s)),
    ("SQLite writer thread: statements", lambda s: "writer_loop" in s),
    ("SQLite reads (blocking pool)", lambda s: "meta::sqlite::{impl#0}::read" in s),
    ("replication engine, lean client (outside SigV4 and the SDK)", lambda s: "ferry_replication" in s and "aws_" not in s),
    ("SigV4 signing and aws-sdk-s3 (sending replicas)", lambda s: "aws_smithy" in s or "aws_sdk" in s or "aws_sigv4" in s),
    ("S3 request handling (hyper, s3s, Ferry)", lambda s: "S3Service" in s or "FerryService" in s),
    ("tokio scheduling, wake-ups, idle", lambda s: "tokio::runtime" in s),
]


def split(folded):
    total, parts = 0, {name: 0 for name, _ in SPLIT}
    parts["other"] = 0
    for line in folded.splitlines():
        stack, n = line.rsplit(" ", 1)
        total += int(n)
        name = next((name for name, rule in SPLIT if rule(stack)), "other")
        parts[name] += int(n)
    return {k: 100 * v / max(total, 1) for k, v in parts.items()}


def under_load(work, mode, count, attach):
    """Two regions (the source alone for `plain`), 500 PUT/s of 4 KiB for `count` objects, and
    `attach(name, pid)` (a process, stopped with SIGINT after) on each region meanwhile.
    Returns each region's CPU µs per object, by name."""
    eu = Region(work, "eu-west-1")
    link = DelayProxy(work, eu.port, "25ms")
    us = Region(work, "us-east-1", peers=[("eu-west-1", link.url)])
    b, replicated = f"profile-{mode}", mode != "plain"
    if replicated:
        replicate(us, eu, b, b + "-dr")
    else:
        versioned_bucket(us, b)
    regions = [("source", us), ("destination", eu)] if replicated else [("source", us)]
    attached = [attach(name, r.proc.p.pid) for name, r in regions]
    time.sleep(1)
    cpu0 = {name: cpu_seconds(r.proc.p.pid) for name, r in regions}
    run_measured([str(PROBE), "put", "--endpoint", us.url, "--dest-endpoint", eu.url, "--bucket", b, "--dest-bucket",
                  b, "--rate", "500", "--count", str(count), "--size", "4096", "--no-watch"])
    if replicated:
        wait_caught_up(us, b)
    cpu1 = {name: cpu_seconds(r.proc.p.pid) for name, r in regions}
    for p in attached:
        p.send_signal(2)
        p.wait()
    for p in (us, eu, link):
        p.stop()
    return {name: (cpu1[name] - cpu0[name]) / count * 1e6 for name, _ in regions}


def syscalls(work, count):
    """Fsyncs and pwrites per object in each region (the WAL's frames are pwrites, its commits
    fsyncs), and CPU per object, without perf's sampling cost."""
    events = "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync,syscalls:sys_enter_pwrite64"
    out = {}

    def attach(name, pid):
        out[name] = Path(work) / f"{name}.txt"
        return subprocess.Popen(["perf", "stat", "-e", events, "-o", str(out[name]), "-p", str(pid)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    cpu = under_load(work, "syscalls", count, attach)
    for name, us in cpu.items():
        counts = {m.group(2).rsplit("_", 1)[-1]: int(m.group(1).replace(",", "")) / count
                  for m in re.finditer(r"^\s*([\d,]+)\s+(\S+)", out[name].read_text(), re.M)}
        log(f"{name}: {us:.0f} µs CPU per object; per object: "
            + ", ".join(f"{n:.2f} {call}" for call, n in counts.items()))


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "replicated"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    atexit.register(stop_all)
    with tempfile.TemporaryDirectory() as work:
        if mode == "syscalls":
            return syscalls(work, count)
        if mode == "pages":
            return pages(work, count)
        data = {}

        def attach(name, pid):
            data[name] = Path(work) / f"{name}.data"
            return subprocess.Popen(["perf", "record", "-F", "997", "--call-graph", "dwarf,16384", "-o", str(data[name]),
                                     "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        cpu = under_load(work, mode, count, attach)
        for name, path in data.items():
            script = subprocess.run(["perf", "script", "-i", str(path)], check=True, capture_output=True).stdout
            folded = subprocess.run(["inferno-collapse-perf"], input=script, check=True, capture_output=True).stdout
            # The folded stacks too, to search by function (target/bench-results/, not committed).
            results = PLOTS.parent.parent / "target" / "bench-results"
            results.mkdir(parents=True, exist_ok=True)
            (results / f"flame-{mode}-{name}.folded").write_bytes(folded)
            title = f"{name} region, 500 PUT/s of 4 KiB, {mode}"
            svg = subprocess.run(["inferno-flamegraph", "--title", title, "--minwidth", "0.5"], input=folded, check=True,
                                 capture_output=True).stdout
            out = PLOTS / f"flame-{mode}-{name}.svg"
            out.write_bytes(svg)
            log(f"{name}: {cpu[name]:.0f} µs CPU per object (with perf attached); "
                f"{out.relative_to(PLOTS.parent.parent)}")
            for part, pct in split(folded.decode()).items():
                log(f"  {pct:5.1f} %  {part}")


def pages(work, count):
    """The pages each region's commits write, by table or index. During the load, copies of the
    metadata database and its WAL, every half second; the copy whose WAL holds the most frames
    since its last checkpoint is read: each frame is one page written by one commit (a commit's
    last frame says so), attributed to the b-tree that holds that page in the copy (`dbstat`).
    A page in none is on the freelist: freed since (outbox pages empty as jobs complete), or the
    freelist's own."""
    best = {}

    def frames_of(wal):
        page_size, salts = struct.unpack(">I", wal[8:12])[0], wal[16:24]
        frames, commits, offset = [], 0, 32
        while offset + 24 + page_size <= len(wal) and wal[offset + 8:offset + 16] == salts:
            page, commit = struct.unpack(">II", wal[offset:offset + 8])
            frames.append(page)
            commits += commit != 0
            offset += 24 + page_size
        return frames, commits

    class Copies:
        """Copies `region`'s database and WAL while the load runs (an `attach` for under_load)."""

        def __init__(self, name, region):
            self.done = threading.Event()
            self.thread = threading.Thread(target=self.take, args=(name, region))
            self.thread.start()

        def take(self, name, region):
            time.sleep(2)  # under_load starts the load 1 s after attaching
            db = next((Path(work) / region / "data").rglob("meta.db"))
            for i in range(int(count / 500 * 2)):
                if self.done.wait(0.5):
                    break
                out = Path(work) / f"{name}-copy{i}"
                out.mkdir()
                shutil.copy(db.with_name("meta.db-wal"), out / "meta.db-wal")
                shutil.copy(db, out / "meta.db")
                frames, commits = frames_of((out / "meta.db-wal").read_bytes())
                if commits > best.get(name, (None, [], 0))[2]:
                    best[name] = (out, frames, commits)

        def send_signal(self, _):
            self.done.set()

        def wait(self):
            self.thread.join()

    regions = {"source": "us-east-1", "destination": "eu-west-1"}
    under_load(work, "pages", count, lambda name, _pid: Copies(name, regions[name]))
    for name, (copy, frames, commits) in best.items():
        db = sqlite3.connect(f"file:{copy / 'meta.db'}?mode=ro", uri=True)
        owner = {page: name + (" (overflow)" if kind == "overflow" else "")
                 for name, page, kind in db.execute("SELECT name, pageno, pagetype FROM dbstat")}
        db.close()
        by = collections.Counter(owner.get(p, "freelist") for p in frames)
        log(f"{name}: {len(frames)} frames in {commits} commits, {len(frames) / max(commits, 1):.1f} pages per commit")
        for tree, n in by.most_common():
            log(f"  {n / max(commits, 1):5.2f} per commit  {tree}")


if __name__ == "__main__":
    main()
