#!/usr/bin/env bash
# Runs the README's client snippets (aws cli, boto3, rclone) against a live Ferry started from
# examples/two-regions.toml with a temporary data directory and free ports.
#   FERRY_BIN       ferry binary (default: target/debug/ferry)
#   CLIENTS_VENV    virtualenv for awscli/boto3 (default: target/clients-venv)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
bin="$(realpath "${FERRY_BIN:-$root/target/debug/ferry}")"
venv="${CLIENTS_VENV:-$root/target/clients-venv}"
if [ ! -x "$venv/bin/aws" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi
command -v rclone >/dev/null || { echo "rclone is required (apt-get install rclone)" >&2; exit 1; }

work="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# The example config, on free ports, with data in the temp dir.
sed -e 's/127.0.0.1:9000/127.0.0.1:0/' -e 's/127.0.0.1:9100/127.0.0.1:0/' examples/two-regions.toml > "$work/ferry.toml"
cp -r examples/keys "$work/keys"
RUST_LOG=warn "$bin" serve --config "$work/ferry.toml" 2> "$work/ferry.log" &
pid=$!
port=""
port_eu=""
for _ in $(seq 1 200); do
    port="$(sed -n 's/^ferry: region us-east-1 serving S3 on http:\/\/127.0.0.1:\([0-9]*\)$/\1/p' "$work/ferry.log")"
    port_eu="$(sed -n 's/^ferry: region eu-west-1 serving S3 on http:\/\/127.0.0.1:\([0-9]*\)$/\1/p' "$work/ferry.log")"
    [ -n "$port" ] && [ -n "$port_eu" ] && break
    sleep 0.05
done
[ -n "$port" ] && [ -n "$port_eu" ] || { cat "$work/ferry.log"; echo "ferry did not start" >&2; exit 1; }

# Extracts the code block after <!-- snippet:NAME --> in FILE (default README.md), pointed at
# the live ports.
snippet() {
    awk -v name="$1" '
        $0 == "<!-- snippet:" name " -->" { on = 1; next }
        on && /^```/ { if (in_block) exit; in_block = 1; next }
        on && in_block { print }
            ' "${2:-README.md}" | sed -e "s/127.0.0.1:9000/127.0.0.1:$port/g" -e "s/127.0.0.1:9100/127.0.0.1:$port_eu/g"
}

export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
# A CA bundle set for other tools breaks rclone's S3 client over plain http.
unset AWS_PROFILE AWS_REGION AWS_CA_BUNDLE || true
echo "-- aws cli"
( export PATH="$venv/bin:$PATH"; set -x; eval "$(snippet aws)" ) > "$work/aws.out" 2>&1 || { cat "$work/aws.out"; exit 1; }
grep -q "docs/README.md" "$work/aws.out" || { cat "$work/aws.out"; echo "aws cli: object not listed" >&2; exit 1; }
echo "-- replication demo (aws cli)"
( export PATH="$venv/bin:$PATH" AWS_ACCESS_KEY_ID=AKIAFERRYEXAMPLE AWS_SECRET_ACCESS_KEY=example-secret-key AWS_DEFAULT_REGION=us-east-1; set -x; timeout 60 bash -c "$(snippet replication)" ) > "$work/repl.out" 2>&1 || { cat "$work/repl.out"; exit 1; }
grep -q '"REPLICA"' "$work/repl.out" && grep -q '"COMPLETED"' "$work/repl.out" || { cat "$work/repl.out"; echo "replication demo: statuses not shown" >&2; exit 1; }
echo "-- boto3"
snippet boto3 > "$work/snippet.py"
out="$("$venv/bin/python" "$work/snippet.py")"
echo "$out"
[ "$out" = "$(printf 'region,total\neu,42\n\n['"'"'2026/q3.csv'"'"']')" ] || { echo "boto3: unexpected output" >&2; exit 1; }
echo "-- rclone"
( set -x; eval "$(snippet rclone)" ) > "$work/rclone.out" 2>&1 || { cat "$work/rclone.out"; exit 1; }
grep -q "0 differences found" "$work/rclone.out" || { cat "$work/rclone.out"; echo "rclone check failed" >&2; exit 1; }
echo "-- docs/REPLICATION.md setup (aws cli)"
( export PATH="$venv/bin:$PATH"; mkdir -p "$work/cwd"; cp README.md "$work/cwd/"; cd "$work/cwd"; set -x; timeout 60 bash -c "$(snippet setup "$root/docs/REPLICATION.md")" ) > "$work/setup.out" 2>&1 || { cat "$work/setup.out"; exit 1; }
grep -q '"REPLICA"' "$work/setup.out" && grep -q '"STANDARD_IA"' "$work/setup.out" && grep -q 'arn:aws:s3:eu-west-1::photos-dr' "$work/setup.out" \
    || { cat "$work/setup.out"; echo "REPLICATION.md setup: unexpected output" >&2; exit 1; }
echo "-- docs/REPLICATION.md walk-through (backfill, status, verify, explain, resync, progress API)"
( export PATH="$(dirname "$bin"):$venv/bin:$PATH"; mkdir -p "$work/cwd"; cd "$work/cwd"; set -x; timeout 120 bash -ec "$(snippet operate "$root/docs/REPLICATION.md")" ) > "$work/operate.out" 2>&1 || { cat "$work/operate.out"; exit 1; }
[ -z "${SHOW_SNIPPETS:-}" ] || cat "$work/operate.out"
for want in "in sync at" "3 versions checked" "+ all -> eu-west-1/archive-dr" "delivered" "<NewObject>" "<HistoricalObject>1.0000</HistoricalObject>" "backfill 2: done"; do
    grep -qF -- "$want" "$work/operate.out" || { cat "$work/operate.out"; echo "REPLICATION.md walk-through: '$want' not shown" >&2; exit 1; }
done
echo "client snippets: ok"
