#!/usr/bin/env python3
"""Runs libiscsi's iscsi-test-cu against a fresh ispaced and reports every test's result.

Two ways to run it. --one-process runs the acceptance command itself, one iscsi-test-cu process for
everything (all families when every test is wanted), which is what an initiator vendor would run.
By default there is one iscsi-test-cu run per suite instead: a hung or crashed suite is then confined to itself, and the
"[SKIPPED] ... not implemented" lines it prints (which CUnit counts as passes) can be attributed to
their suite. Within a suite the tests run in one process, in order, as iscsi-test-cu runs them (some
rely on that: iSCSITMF.LUNResetSimpleAsync asserts a flag an earlier test's callback set), except in
the suites of ONE_PROCESS_PER_TEST, where a test leaves state behind that would make the next one
measure it rather than the target. Results come from CUnit's XML (-x), never from the exit code.

ispaced runs with its defaults (only the portals, IQN and LUN are given), as anyone checking it would
run it. That matters: Sanitize.Reset sleeps 60 s between TEST UNIT READYs without reading its socket,
which ispaced's default 90 s silence timeout tolerates.

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

# Suites whose tests each run in an iscsi-test-cu process of their own, and why.
ONE_PROCESS_PER_TEST = {
    # iscsi-test-cu keeps its sessions logged in for a whole suite. With two URLs,
    # Sanitize.Reservations takes an SPC-2 RESERVE on the second session (mp_sds[1], which
    # mpath_sd2_put() does not log out) and never releases it, so in the same process the SANITIZE
    # of the next test, Sanitize.Reset, meets a reservation of another I_T nexus and rightly ends in
    # RESERVATION CONFLICT, and Reset then finds no sanitize in progress.
    "Sanitize": "Sanitize.Reservations leaves an SPC-2 RESERVE held by the second session",
}


def all_tests():
    """{suite: [test, ...]} of the ALL family, in iscsi-test-cu's order."""
    out = subprocess.run(["iscsi-test-cu", "--list"], capture_output=True, text=True).stdout
    tests = {}
    for line in out.splitlines():
        parts = line.strip().split(".")
        if parts[0] != "ALL" or len(parts) not in (2, 3):
            continue
        tests.setdefault(parts[1], [])
        if len(parts) == 3:
            tests[parts[1]].append(parts[2])
    return tests


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
    ap.add_argument("--one-process", action="store_true",
                    help="run everything in one iscsi-test-cu process, exactly as the acceptance command does "
                         "(all families when --suites is ALL)")
    ap.add_argument("--suite-timeout", type=int, default=600, help="seconds for one iscsi-test-cu run")
    ap.add_argument("--report", help="also write the per-test table and summary to this file")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--space", help="serve a data-space instead of --lun: LAYOUT:MEMBERS:SIZE (that many "
                    "sparse member files of SIZE), e.g. mirror:2:260M; needs --ispace")
    ap.add_argument("--ispace", help="the ispace binary, which creates the --space")
    ap.add_argument("--label", default="", help="a name for this run in the report")
    args = ap.parse_args()

    scratch = ispace_testlib.scratch_dir("conformance")
    lun = args.lun
    if not (lun.startswith("memory:") or lun.startswith("null:") or lun.startswith("/")):
        lun = os.path.join(scratch, lun)
    daemon_args = ["--listen", "127.0.0.1:0"]
    if args.space:
        # The space's members are files here; ispaced opens (and holds) it from this home's catalog.
        layout, count, size = args.space.split(":")
        home = os.path.join(scratch, "home")
        members = []
        for i in range(int(count)):
            members += ["--member", os.path.join(scratch, f"member{i}.img")]
            subprocess.run(["truncate", "-s", size, members[-1]], check=True)
        r = subprocess.run([args.ispace, "space", "create", "conformance", "--layout", layout] + members,
                           capture_output=True, text=True, env=dict(os.environ, ISPACE_HOME=home))
        if r.returncode != 0:
            print(f"conformance {args.label}: ispace space create failed: {r.stderr}", flush=True)
            return 1
        daemon_args += ["--home", home]
        lun = "space:conformance"
    if args.multipath:
        daemon_args += ["--listen", "127.0.0.1:0"]
    daemon_args += ["--iqn", IQN, "--lun", lun]
    daemon = ispace_testlib.Ispaced(args.ispaced, daemon_args, log_path=os.path.join(scratch, "ispaced.log"))
    daemon.start()
    # start() returns at the first "ready:" line; with two portals the second may still be on its way.
    deadline = time.time() + 10
    while args.multipath and len(set(daemon.urls)) < 2 and time.time() < deadline and daemon.alive():
        time.sleep(0.05)
    urls = sorted({u.rsplit("/", 1)[0] + "/0" for u in daemon.urls})
    if args.multipath and len(urls) < 2:
        daemon.stop()
        print(f"conformance {args.label}: --multipath, but ispaced reported only {urls}", flush=True)
        return 1
    url = urls[0]
    print(f"conformance {args.label}: ispaced {' '.join(daemon_args)}; url {url}", flush=True)

    catalogue = all_tests()
    suites = list(catalogue) if args.suites == "ALL" else [s for s in args.suites.split(",") if s]
    rows = []
    not_implemented = []
    problems = []
    durations = {}
    started = time.time()
    # A batch is what one line of the duration report covers: a suite, or the whole one-process run.
    batches = []
    if args.one_process:
        # Exactly the acceptance command: no -t when all tests are wanted, so every family runs.
        selection = None if args.suites == "ALL" else ",".join(f"ALL.{s}" for s in suites)
        batches.append(("all", [("all", selection)]))
    else:
        for suite in suites:
            runs = [(suite, f"ALL.{suite}")]
            if suite in ONE_PROCESS_PER_TEST and catalogue.get(suite):
                print(f"{suite}: one process per test ({ONE_PROCESS_PER_TEST[suite]})", flush=True)
                runs = [(os.path.join(suite, t), f"ALL.{suite}.{t}") for t in catalogue[suite]]
            batches.append((suite, runs))
    for suite, runs in batches:
        suite_started = time.time()
        outputs = []
        for where, selection in runs:
            workdir = os.path.join(scratch, where)
            os.makedirs(workdir, exist_ok=True)
            cmd = ["iscsi-test-cu", "-d", "-x", "-i", INITIATOR1, "-I", INITIATOR2]
            if selection:
                cmd += ["-t", selection]
            if args.sanitize:
                cmd.insert(1, "-S")
            cmd.append(url)
            if args.multipath and len(urls) > 1:
                cmd.append(urls[1])
            try:
                proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True,
                                      timeout=args.suite_timeout)
                output = proc.stdout + proc.stderr
            except subprocess.TimeoutExpired as e:
                output = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
                problems.append(f"{selection or 'all tests'}: timed out after {args.suite_timeout}s")
            outputs.append(output)
            with open(os.path.join(workdir, "output.txt"), "w") as f:
                f.write(output)
            for line in output.splitlines():
                if NOT_IMPLEMENTED_RE.search(line):
                    not_implemented.append(f"{suite}: {line.strip()}")
            xml_path = os.path.join(workdir, "CUnitAutomated-Results.xml")
            if os.path.exists(xml_path):
                try:
                    run_rows = merge(parse_results(xml_path))
                except ET.ParseError as e:
                    run_rows = []
                    problems.append(f"{selection or 'all tests'}: unreadable CUnit XML ({e})")
                if not run_rows:
                    problems.append(f"{selection or 'all tests'}: no test results in the CUnit XML")
                rows += run_rows
            else:
                problems.append(f"{selection or 'all tests'}: iscsi-test-cu wrote no CUnit XML")
            if not daemon.alive():
                break
        durations[suite] = time.time() - suite_started
        if len(runs) > 1:
            with open(os.path.join(scratch, suite, "output.txt"), "w") as f:
                f.write("".join(outputs))
        if not daemon.alive():
            problems.append(f"ispaced died during suite {suite}:\n{daemon.log_tail()}")
            break

    # A run that stopped early writes a short XML; every test asked for must have a row.
    seen = {(s, t) for s, t, _, _ in rows}
    missing = [f"{s}.{t}" for s in suites for t in catalogue.get(s, []) if (s, t) not in seen]
    if missing:
        problems.append(f"{len(missing)} tests have no result, e.g. {', '.join(missing[:5])}")

    rc = daemon.stop()
    if rc not in (0, None):
        problems.append(f"ispaced exited with {rc} on SIGTERM (expected a clean exit 0)")

    report = []

    def emit(line=""):
        print(line)
        report.append(line)

    width = max([len(f"{s}.{t}") for s, t, _, _ in rows] + [10])
    emit(f"\nconformance {args.label}: ispaced {' '.join(daemon_args[:-1])} {args.lun}")
    emit(f"{'test':<{width}}  result")
    for suite, test, passed, details in rows:
        emit(f"{suite + '.' + test:<{width}}  {'PASS' if passed else 'FAIL'}")
        for d in details[:5]:
            emit(f"{'':<{width}}    {d}")
    failed = [r for r in rows if not r[2]]
    emit(f"conformance {args.label}: {len(rows)} tests, {len(rows) - len(failed)} passed, "
         f"{len(failed)} failed, {len(not_implemented)} not-implemented skips, "
         f"{time.time() - started:.0f}s")
    # The slow suites (SANITIZE OVERWRITE is paced; Sanitize.Reset sleeps 60 s by itself).
    slowest = sorted(durations.items(), key=lambda kv: kv[1], reverse=True)[:5]
    emit("  slowest suites: " + ", ".join(f"{s} {d:.0f}s" for s, d in slowest))
    for line in not_implemented:
        emit(f"  not implemented: {line}")
    for p in problems:
        emit(f"  problem: {p}")

    ok = not failed and not problems and (args.allow_not_implemented or not not_implemented)
    if ok and not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        emit(f"  scratch directory kept: {scratch}")
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    if args.report:
        # `make test` prints these after ctest, which shows a passing test's output only with -V.
        os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)
        with open(args.report, "w") as f:
            f.write("\n".join(report) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
