#!/usr/bin/env python3
"""Runs libiscsi's iscsi-test-cu against a fresh ispaced and reports every test's result.

One iscsi-test-cu run per suite: a hung or crashed suite is then confined to itself, and the
"[SKIPPED] ... not implemented" lines it prints (which CUnit counts as passes) can be attributed to
their suite. Results come from CUnit's XML (-x), never from the exit code.

The run fails when any test fails, when a suite prints a "not implemented" skip (unless
--allow-not-implemented), when a suite times out, or when ispaced dies or does not stop cleanly.

Example:
  libiscsi_suite.py --ispaced build/tools/ispaced --suites Inquiry,Read10 --lun FILE,size=256M,thin
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "system"))
import ispace_testlib  # noqa: E402

IQN = "iqn.2026-11.org.ispace:conformance"
INITIATOR1 = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test"
INITIATOR2 = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2"
NOT_IMPLEMENTED_RE = re.compile(r"\[SKIPPED\].*not implemented", re.IGNORECASE)


def all_suites():
    out = subprocess.run(["iscsi-test-cu", "--list"], capture_output=True, text=True).stdout
    suites = []
    for line in out.splitlines():
        parts = line.strip().split(".")
        if len(parts) == 2 and parts[0] == "ALL":
            suites.append(parts[1])
    return suites


def parse_results(xml_path):
    """[(suite, test, passed, failure_text)] from CUnitAutomated-Results.xml."""
    results = []
    # CUnit writes a DOCTYPE naming a DTD that is not there; ElementTree ignores it.
    root = ET.parse(xml_path).getroot()
    for suite_node in root.iter():
        if suite_node.tag not in ("CUNIT_RUN_SUITE_SUCCESS", "CUNIT_RUN_SUITE_FAILURE"):
            continue
        suite = (suite_node.findtext("SUITE_NAME") or "").strip()
        for rec in suite_node.findall("CUNIT_RUN_TEST_RECORD"):
            for res in rec:
                name = (res.findtext("TEST_NAME") or "").strip()
                if res.tag == "CUNIT_RUN_TEST_SUCCESS":
                    results.append((suite, name, True, ""))
                elif res.tag == "CUNIT_RUN_TEST_FAILURE":
                    detail = "{}:{} {}".format((res.findtext("FILE_NAME") or "").strip(),
                                               (res.findtext("LINE_NUMBER") or "").strip(),
                                               (res.findtext("CONDITION") or "").strip())
                    results.append((suite, name, False, detail))
    return results


def merge(results):
    """CUnit lists a test once per failed assertion; fold to one row per test."""
    merged = {}
    order = []
    for suite, test, passed, detail in results:
        key = (suite, test)
        if key not in merged:
            merged[key] = [True, []]
            order.append(key)
        if not passed:
            merged[key][0] = False
            merged[key][1].append(detail)
    return [(s, t, merged[(s, t)][0], merged[(s, t)][1]) for (s, t) in order]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ispaced", required=True, help="path to the ispaced binary")
    ap.add_argument("--suites", default="ALL", help="comma-separated suite names, or ALL")
    ap.add_argument("--lun", default="lun.img,size=256M,thin",
                    help="--lun spec; a relative path is made inside the scratch directory")
    ap.add_argument("--multipath", action="store_true", help="serve two portals and pass both URLs")
    ap.add_argument("--sanitize", action="store_true", help="pass -S (allow SANITIZE tests)")
    ap.add_argument("--allow-not-implemented", action="store_true",
                    help="report 'not implemented' skips without failing")
    ap.add_argument("--suite-timeout", type=int, default=600)
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--label", default="", help="a name for this run in the report")
    args = ap.parse_args()

    scratch = ispace_testlib.scratch_dir("conformance")
    lun = args.lun
    if not (lun.startswith("memory:") or lun.startswith("null:") or lun.startswith("/")):
        lun = os.path.join(scratch, lun)
    daemon_args = ["--listen", "127.0.0.1:0"]
    if args.multipath:
        daemon_args += ["--listen", "127.0.0.1:0"]
    daemon_args += ["--iqn", IQN, "--lun", lun]
    daemon = ispace_testlib.Ispaced(args.ispaced, daemon_args, log_path=os.path.join(scratch, "ispaced.log"))
    daemon.start()
    urls = sorted({u.rsplit("/", 1)[0] + "/0" for u in daemon.urls})
    url = urls[0]
    print(f"conformance {args.label}: ispaced {' '.join(daemon_args)}; url {url}", flush=True)

    suites = all_suites() if args.suites == "ALL" else [s for s in args.suites.split(",") if s]
    rows = []
    not_implemented = []
    problems = []
    started = time.time()
    for suite in suites:
        workdir = os.path.join(scratch, suite)
        os.makedirs(workdir, exist_ok=True)
        cmd = ["iscsi-test-cu", "-d", "-x", "-i", INITIATOR1, "-I", INITIATOR2, "-t", f"ALL.{suite}"]
        if args.sanitize:
            cmd.insert(1, "-S")
        cmd.append(url)
        if args.multipath and len(urls) > 1:
            cmd.append(urls[1])
        try:
            proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=args.suite_timeout)
            output = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as e:
            output = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            problems.append(f"{suite}: timed out after {args.suite_timeout}s")
        with open(os.path.join(workdir, "output.txt"), "w") as f:
            f.write(output)
        for line in output.splitlines():
            if NOT_IMPLEMENTED_RE.search(line):
                not_implemented.append(f"{suite}: {line.strip()}")
        xml_path = os.path.join(workdir, "CUnitAutomated-Results.xml")
        if os.path.exists(xml_path):
            try:
                suite_rows = merge(parse_results(xml_path))
            except ET.ParseError as e:
                suite_rows = []
                problems.append(f"{suite}: unreadable CUnit XML ({e})")
            if not suite_rows:
                problems.append(f"{suite}: no test results in the CUnit XML")
            rows += suite_rows
        else:
            problems.append(f"{suite}: iscsi-test-cu wrote no CUnit XML")
        if not daemon.alive():
            problems.append(f"ispaced died during suite {suite}:\n{daemon.log_tail()}")
            break

    rc = daemon.stop()
    if rc not in (0, None):
        problems.append(f"ispaced exited with {rc} on SIGTERM (expected a clean exit 0)")

    width = max([len(f"{s}.{t}") for s, t, _, _ in rows] + [10])
    print(f"\n{'test':<{width}}  result")
    for suite, test, passed, details in rows:
        print(f"{suite + '.' + test:<{width}}  {'PASS' if passed else 'FAIL'}")
        for d in details[:5]:
            print(f"{'':<{width}}    {d}")
    failed = [r for r in rows if not r[2]]
    print(f"\nconformance {args.label}: {len(rows)} tests, {len(rows) - len(failed)} passed, "
          f"{len(failed)} failed, {len(not_implemented)} not-implemented skips, "
          f"{time.time() - started:.0f}s")
    for line in not_implemented:
        print(f"  not implemented: {line}")
    for p in problems:
        print(f"  problem: {p}")

    ok = not failed and not problems and (args.allow_not_implemented or not not_implemented)
    if ok and not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        print(f"  scratch directory kept: {scratch}")
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
