#!/usr/bin/env python3
"""ispaced and ispace as an administrator meets them: no silent surprise on bad input, interruption or
misuse. Each check reproduces a reported case (docs/robustness.md lists them all):

  conventions  --version on both tools; exit 2 for usage errors (not CLI11's 105/109/114); JSON
               configuration errors with line and column; an empty "targets" list is not given the
               quick-mode hint
  secrets      a URL that does not parse is not echoed with its CHAP secret; secrets from a file
               (--chap-file, "secret_file") or the environment (ISPACE_CHAP_SECRET); `ps` does not
               show a secret given on the command line once it is parsed
  files        two ispaced on one backing file: the second is refused, naming the holder's PID (an
               OFD lock); a port in use creates no LUN file; size= on an existing file of another
               size is an error unless grow is given
  signals      SIGHUP is logged (and, without --config, ignored; it killed ispaced with exit 129, silently); `ispace cp`
               on SIGUSR1 prints progress, on SIGINT/SIGTERM stops with the acknowledged byte count,
               exits 130/143 and leaves no destination file that looks complete; its summary line is
               printed on a stderr that is not a terminal
  honesty      `ispace inq` of a LUN that does not exist exits 1; `ispace bench` prints no figure for
               a run whose commands failed (--bs beyond the transfer limit, writes to a read-only
               LUN) and does not count the power-on unit attention as a retry; a refused connection
               is not logged as a CHAP refusal
  listings     `ls`, `inq`, `readcap` and `bench` take --json: one JSON document on stdout, errors on
               stderr with exit 1 (2 for usage); `ls` and `readcap` say whether a LUN is read-only
               (MODE SENSE WP), for an `,ro` LUN and a read-write one; `bench` prints a one-line
               summary on a stderr that is not a terminal, and refuses a write pattern on a read-only
               LUN before running

Usage: test_admin.py ISPACE_BINARY ISPACED_BINARY
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ispace_testlib  # noqa: E402

IQN = "iqn.2026-11.org.ispace.test:admin"
SECRET = "alice-secret-123"
check = ispace_testlib.Checks()


def run(cmd, timeout=60, env=None, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)
    return r.returncode, r.stdout, r.stderr


def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def has_socket(pid):
    """True once process `pid` has a socket open (false if it has gone)."""
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    return True
            except OSError:
                pass
    except OSError:
        pass
    return False


def conventions(ispace, ispaced, scratch):
    for tool, name in ((ispace, "ispace"), (ispaced, "ispaced")):
        rc, out, err = run([tool, "--version"])
        check(rc == 0 and out.startswith(f"{name} ") and out.split()[1][0].isdigit(),
              f"{name} --version prints its version and exits 0 ({rc}: {out.strip()!r})")
    for args, what in (([ispaced, "--bogus"], "ispaced --bogus"),
                       ([ispaced, "--queue-depth", "0", "--iqn", IQN, "--lun", "memory:1M"], "ispaced --queue-depth 0"),
                       ([ispaced, "--reactors", "x"], "ispaced --reactors x"),
                       ([ispace, "inq"], "ispace inq without a URL"),
                       ([ispace, "bench", "--qd", "0", "iscsi://h/iqn.2026-11.org.x:y/0"], "ispace bench --qd 0"),
                       ([ispace, "frobnicate"], "ispace frobnicate"),
                       # Found by the sweep: each of these started (or aborted) instead of saying no.
                       ([ispaced, "--reactors", "100000", "--iqn", IQN, "--lun", "memory:1M"], "ispaced --reactors 100000"),
                       ([ispaced, "--login-timeout-ms", "0", "--iqn", IQN, "--lun", "memory:1M"], "ispaced --login-timeout-ms 0"),
                       ([ispaced, "--idle-exit", "--iqn", IQN, "--lun", "memory:1M"], "ispaced --idle-exit without --holder"),
                       ([ispace, "--threads", "100000", "readcap", "iscsi://h/iqn.2026-11.org.x:y/0"], "ispace --threads 100000"),
                       # The sweep's second pass: accepted without a word before.
                       ([ispaced, "--nop-interval-ms", "0", "--iqn", IQN, "--lun", "memory:1M"], "ispaced --nop-interval-ms 0"),
                       ([ispaced, "--alias", "a" * 300, "--iqn", IQN, "--lun", "memory:1M"], "ispaced --alias of 300 bytes"),
                       ([ispaced, "--state-dir", "/dev/null/x", "--iqn", IQN, "--lun", "memory:1M"],
                        "ispaced --state-dir under a file"),
                       ([ispace, "-i", "", "readcap", "iscsi://h/iqn.2026-11.org.x:y/0"], "ispace -i \"\""),
                       ([ispace, "cp", "iscsi://127.0.0.1:1/iqn.2026-11.org.x:y/0", "iscsi://127.0.0.1:1/IQN.2026-11.org.x:y/0"],
                        "ispace cp of a LUN onto itself")):
        rc, out, err = run(args)
        check(rc == 2 and err.strip() != "", f"{what}: exit 2 with a message ({rc}: {err.strip()[:80]!r})")

    # iSCSI names as RFC 3720 §3.2.6.3 has them; compared case-folded (RFC 3722).
    for name in ("iqn.2026-11.org.example:my_disk", "iqn.x:t", "iqn.2026-13.org.example:d", "eui.1234"):
        rc, out, err = run([ispaced, "--iqn", name, "--lun", "memory:1M"])
        check(rc == 2 and "not a valid iSCSI name" in err, f"--iqn {name} is refused with a reason ({rc}: {err.strip()[:120]!r})")
    daemon = ispace_testlib.Ispaced(ispaced, ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun", "memory:1M",
                                              "--allow", "IQN.2026-11.Org.Ispace.Test:Upper"]).start()
    try:
        url = f"iscsi://{daemon.portal()}/{IQN.upper()}/0"
        rc, out, err = run(["iscsi-inq", "-i", "iqn.2026-11.org.ispace.test:upper", url])
        check(rc == 0, f"a target named in another case is found, and the ACL matches case-folded ({rc}: {err.strip()[-120:]!r})")
    finally:
        daemon.stop()

    for key in ("max_connections", "max_login_connections", "max_sessions_per_initiator"):
        zero = os.path.join(scratch, f"zero-{key}.json")
        with open(zero, "w") as f:
            json.dump({"limits": {key: 0}, "targets": [{"iqn": IQN, "luns": ["memory:1M"]}]}, f)
        rc, out, err = run([ispaced, "--config", zero, "--listen", "127.0.0.1:0"])
        check(rc == 2 and key in err, f"limits.{key} 0 is refused, naming the key ({rc}: {err.strip()[:100]!r})")
    daemon = ispace_testlib.Ispaced(ispaced, ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun", "memory:1M",
                                              "--buffer-memory", "1T"]).start()
    try:
        check("more than this machine" in daemon.log_tail(200), "--buffer-memory beyond the RAM is served, with a warning")
    finally:
        daemon.stop()

    bad = os.path.join(scratch, "bad.json")
    with open(bad, "w") as f:
        f.write('{\n  "targets": [\n    {"iqn": "%s", "luns": ["memory:1M"],}\n  ]\n}\n' % IQN)
    rc, out, err = run([ispaced, "--config", bad])
    check(rc == 2 and f"{bad}:3:" in err, f"a JSON syntax error names line and column ({err.strip()!r})")
    empty = os.path.join(scratch, "empty.json")
    with open(empty, "w") as f:
        json.dump({"targets": []}, f)
    rc, out, err = run([ispaced, "--config", empty])
    check(rc == 2 and "--iqn" not in err and "targets" in err,
          f"an empty targets list is named, without the quick-mode hint ({err.strip()!r})")


def secrets(ispace, ispaced, scratch):
    rc, out, err = run([ispace, "inq", f"iscsi://alice%{SECRET}@127.0.0.1/{IQN}/x"])
    check(rc == 2 and SECRET not in out + err and "bad LUN" in err,
          f"a URL parse error does not echo the CHAP secret ({err.strip()!r})")
    rc, out, err = run([ispace, "inq", f"iscsi://alice%{SECRET}@127.0.0.1/{IQN}/0", "extra"])
    check(rc == 2 and SECRET not in out + err, "a usage error quoting the arguments does not echo the secret")
    rc, out, err = run([ispaced, "--chap", "alice", SECRET, "--iqn", IQN, "--lun", "memory:1M"])
    check(rc == 2 and SECRET not in out + err, f"ispaced --chap USER SECRET (a space) does not echo it ({err.strip()!r})")

    # --chap-file and the environment: a real login with the secret nowhere on a command line.
    chap_file = os.path.join(scratch, "chap")
    with open(chap_file, "w") as f:
        f.write(f"alice:{SECRET}\n")
    os.chmod(chap_file, 0o600)
    daemon = ispace_testlib.Ispaced(ispaced, ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun", "memory:16M",
                                              "--chap-file", chap_file]).start()
    try:
        check(SECRET not in cmdline(daemon.proc.pid), "--chap-file: the secret is not on ispaced's command line")
        env = dict(os.environ, ISPACE_CHAP_SECRET=SECRET)
        rc, out, err = run([ispace, "inq", f"iscsi://alice@{daemon.portal()}/{IQN}/0"], env=env)
        check(rc == 0 and "ISPACE" in out, f"ispace logs in with the secret from ISPACE_CHAP_SECRET ({err.strip()!r})")
        rc, out, err = run([ispace, "inq", f"iscsi://alice@{daemon.portal()}/{IQN}/0"])
        check(rc == 2 and "ISPACE_CHAP_SECRET" in err, "without the variable, the message names it")
        rc, out, err = run(["iscsi-inq", f"iscsi://alice%wrong-secret-1234@{daemon.portal()}/{IQN}/0"])
        check(rc != 0, "CHAP from --chap-file is enforced (a wrong secret is refused)")
    finally:
        daemon.stop()

    # A secret on the command line is scrubbed from /proc/PID/cmdline (what ps shows) once parsed.
    daemon = ispace_testlib.Ispaced(ispaced, ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun", "memory:16M",
                                              "--chap", f"alice:{SECRET}"]).start()
    try:
        check(SECRET not in cmdline(daemon.proc.pid), "ispaced --chap: ps does not show the secret once running")
        url = f"iscsi://alice%{SECRET}@{daemon.portal()}/{IQN}/0"
        bench = subprocess.Popen([ispace, "bench", "--time", "3", url], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        # Read what ps shows once bench has a socket open: by then it has parsed its arguments. A fixed
        # sleep raced a slow start (an ASan build on a busy CI machine had not parsed them after 0.7 s).
        shown = ""
        deadline = time.monotonic() + 20
        while bench.poll() is None and time.monotonic() < deadline:
            if has_socket(bench.pid):
                shown = cmdline(bench.pid)
                break
            time.sleep(0.02)
        out, err = bench.communicate(timeout=30)
        check(bench.returncode == 0 and shown and SECRET not in shown,
              f"ispace bench with user%secret: ps does not show the secret ({shown!r})")
    finally:
        daemon.stop()

    # "secret_file" in the configuration file, relative to the file's directory.
    with open(os.path.join(scratch, "alice.secret"), "w") as f:
        f.write(SECRET + "\n")
    os.chmod(os.path.join(scratch, "alice.secret"), 0o600)
    config = os.path.join(scratch, "secret.json")
    with open(config, "w") as f:
        json.dump({"listen": "127.0.0.1:0",
                   "targets": [{"iqn": IQN, "luns": ["memory:16M"],
                                "chap": {"user": "alice", "secret_file": "alice.secret"}}]}, f)
    daemon = ispace_testlib.Ispaced(ispaced, ["--config", config]).start()
    try:
        rc, out, err = run(["iscsi-inq", f"iscsi://alice%{SECRET}@{daemon.portal()}/{IQN}/0"])
        check(rc == 0, "secret_file in the configuration: the right secret logs in")
        rc, out, err = run(["iscsi-inq", f"iscsi://{daemon.portal()}/{IQN}/0"])
        check(rc != 0, "secret_file in the configuration: CHAP is required")
    finally:
        daemon.stop()


def files(ispace, ispaced, scratch):
    lun = os.path.join(scratch, "shared.img")
    first = ispace_testlib.Ispaced(ispaced, ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun",
                                             lun + ",size=16M,thin"]).start()
    try:
        rc, out, err = run([ispaced, "--listen", "127.0.0.1:0", "--iqn", IQN + "b", "--lun", lun], timeout=30)
        check(rc == 1 and "in use" in err and f"PID {first.proc.pid}" in err,
              f"a second ispaced on the same backing file is refused, naming the holder ({rc}: {err.strip()[-160:]!r})")

        fresh = os.path.join(scratch, "fresh.img")
        rc, out, err = run([ispaced, "--listen", first.portal(), "--iqn", IQN + "c", "--lun", fresh + ",size=256M"],
                           timeout=30)
        check(rc != 0 and not os.path.exists(fresh),
              f"a port in use: ispaced fails ({rc}) and creates no LUN file ({os.path.exists(fresh)})")
    finally:
        first.stop()

    small = os.path.join(scratch, "small.img")
    with open(small, "wb") as f:
        f.truncate(1 << 20)
    rc, out, err = run([ispaced, "--listen", "127.0.0.1:0", "--iqn", IQN, "--lun", small + ",size=64M"], timeout=30)
    check(rc != 0 and "add grow" in err and os.path.getsize(small) == 1 << 20,
          f"size=64M on an existing 1 MiB file is an error and leaves it alone ({rc}: {err.strip()[-120:]!r}, "
          f"{os.path.getsize(small)} bytes)")
    grown = ispace_testlib.Ispaced(ispaced, ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun",
                                             small + ",size=64M,grow,thin"]).start()
    grown.stop()
    check(os.path.getsize(small) == 64 << 20, "with grow, the file is grown to size=")


def wait_copying(cp, dst):
    """Waits until `ispace cp` to `dst` has written data into its temporary file: its signal handling
    is in place by then. (A fixed sleep raced a slow start: an ASan build on a busy machine was killed
    by the SIGUSR1 it had not yet learnt to handle.)"""
    temp = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.ispace-cp-{cp.pid}")
    deadline = time.monotonic() + 30
    while cp.poll() is None and time.monotonic() < deadline:
        try:
            if os.stat(temp).st_blocks > 0: # sized at the start; blocks once data is written
                return
        except OSError:
            pass
        time.sleep(0.02)


def signals(ispace, ispaced, scratch):
    log = os.path.join(scratch, "signals.log")
    # LUN 1 is large enough that a copy is still running when it is interrupted.
    daemon = ispace_testlib.Ispaced(ispaced, ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun", "null:256M",
                                              "--lun", "null:16G"], log_path=log).start()
    try:
        daemon.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        check(daemon.alive(), "SIGHUP does not kill ispaced")
        check("SIGHUP" in open(log).read(), "SIGHUP is logged")
        first = open(log).readline()
        check(re.match(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d\.\d{3}", first) is not None,
              f"log lines carry the date as well as the time ({first.strip()[:40]!r})")
        url = f"iscsi://{daemon.portal()}/{IQN}/0"
        big = f"iscsi://{daemon.portal()}/{IQN}/1"

        dst = os.path.join(scratch, "backup.raw")
        # Slow enough to be interrupted: one 64 KiB chunk at a time.
        cp = subprocess.Popen([ispace, "cp", "--qd", "1", "--bs", "64k", big, dst], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        wait_copying(cp, dst)
        cp.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
        cp.send_signal(signal.SIGINT)
        out, err = cp.communicate(timeout=30)
        check(cp.returncode == 130, f"cp on SIGINT exits 130 ({cp.returncode}: {err.strip()[-200:]!r})")
        check("acknowledged (" in err, "cp on SIGUSR1 prints its progress")
        check("interrupted by SIGINT" in err and "bytes were acknowledged" in err,
              "cp on SIGINT says it was interrupted and how many bytes were acknowledged")
        check(not os.path.exists(dst) and not [n for n in os.listdir(scratch) if "ispace-cp" in n],
              "an interrupted cp leaves no destination file (and no temporary one)")

        with open(dst, "wb") as f:
            f.write(b"old backup")
        cp = subprocess.Popen([ispace, "cp", "--qd", "1", "--bs", "64k", big, dst], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        wait_copying(cp, dst)
        cp.send_signal(signal.SIGTERM)
        out, err = cp.communicate(timeout=30)
        check(cp.returncode == 143, f"cp on SIGTERM exits 143 ({cp.returncode})")
        check(open(dst, "rb").read() == b"old backup", "an interrupted cp leaves an existing destination as it was")

        small = os.path.join(scratch, "small.raw")
        rc, out, err = run([ispace, "cp", "--bs", "1M", url, small], timeout=60)
        check(rc == 0 and os.path.getsize(small) == 256 << 20 and "copied" in err,
              f"a complete cp renames its file into place and prints a summary on a non-terminal stderr ({err.strip()!r})")
        os.unlink(small)

        # The signal thread ends with the copy: cp used to wait in join() for its next 100 ms tick, so
        # every copy took at least 100 ms (and a whole number of ticks: `ispace cp` looked trimodal).
        # Not under the sanitizers, where starting and ending a process alone takes longer than that.
        if os.environ.get("ISPACE_SANITIZED"):
            return
        tiny = os.path.join(scratch, "tiny.raw")
        with open(tiny, "wb") as f:
            f.write(os.urandom(4096))
        walls = []
        for _ in range(5):
            t0 = time.monotonic()
            rc, out, err = run([ispace, "cp", tiny, tiny + ".copy"], timeout=60)
            walls.append(time.monotonic() - t0)
            check(rc == 0, f"cp of a 4 KiB file succeeds ({rc}: {err.strip()[-120:]!r})")
        check(min(walls) < 0.1, f"cp of a 4 KiB file exits once it is done, not on a 100 ms tick "
                                f"(fastest of 5: {min(walls) * 1000:.0f} ms)")
    finally:
        daemon.stop()


def honesty(ispace, ispaced, scratch):
    ro = os.path.join(scratch, "ro.img")
    with open(ro, "wb") as f:
        f.truncate(64 << 20)
    daemon = ispace_testlib.Ispaced(ispaced, ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun", "memory:64M",
                                              "--lun", ro + ",ro"]).start()
    try:
        base = f"iscsi://{daemon.portal()}/{IQN}"
        rc, out, err = run([ispace, "inq", base + "/7"])
        check(rc == 1 and "no LUN 7" in err, f"inq of a LUN that does not exist exits 1 ({rc}: {err.strip()!r})")
        rc, out, err = run([ispace, "bench", "--time", "1", "--bs", "16M", base + "/0"])
        check(rc == 1 and "bandwidth" not in out and "IOPS" not in out,
              f"bench whose every command fails prints no figure ({rc}: {out.strip()!r})")
        rc, out, err = run([ispace, "bench", "--time", "1", "--rw", "randwrite", base + "/1"])
        check(rc == 1 and "IOPS" not in out, f"bench writing to a read-only LUN prints no IOPS ({rc}: {out.strip()!r})")
        rc, out, err = run([ispace, "bench", "--time", "1", base + "/0"])
        check(rc == 0 and "IOPS" in out and "retries" not in out,
              f"a healthy bench does not count the power-on unit attention as a retry ({out.strip()!r})")
        port = daemon.port
    finally:
        daemon.stop()
    rc, out, err = run([ispace, "--log-level", "info", "inq", f"iscsi://alice%{SECRET}@127.0.0.1:{port}/{IQN}/0"])
    check(rc == 1 and "CHAP login refused" not in err and "during CHAP" not in err,
          f"a refused connection is not reported as a CHAP refusal ({err.strip()[-160:]!r})")


def listings(ispace, ispaced, scratch):
    ro = os.path.join(scratch, "listing-ro.img")
    with open(ro, "wb") as f:
        f.truncate(16 << 20)
    daemon = ispace_testlib.Ispaced(ispaced, ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun", "memory:16M",
                                              "--lun", ro + ",ro"]).start()
    try:
        portal = f"iscsi://{daemon.portal()}"
        base = f"{portal}/{IQN}"

        def as_json(args, what):
            rc, out, err = run([ispace] + args)
            try:
                doc = json.loads(out)
            except ValueError:
                doc = None
            check(rc == 0 and doc is not None, f"{what}: exit 0 and one JSON document on stdout ({rc}: {out[:80]!r} {err.strip()[-120:]!r})")
            return doc or {}

        doc = as_json(["ls", "--json", portal], "ls --json")
        luns = {l.get("lun"): l for t in doc.get("targets", []) if t.get("iqn") == IQN for l in t.get("luns", [])}
        check(luns.get(0, {}).get("read_only") is False and luns.get(1, {}).get("read_only") is True,
              f"ls --json: the rw LUN has read_only false, the ,ro one true ({luns})")
        check(luns.get(0, {}).get("bytes") == 16 << 20 and luns.get(0, {}).get("block_size") == 512
              and luns.get(0, {}).get("device_type") == "disk", "ls --json: size, block size and type of each LUN")
        rc, out, err = run([ispace, "ls", portal])
        lines = {l.split()[1]: l for l in out.splitlines() if l.strip().startswith("lun ")}
        check(rc == 0 and lines.get("0", "").endswith(" rw") and lines.get("1", "").endswith(" ro"),
              f"ls shows rw and ro ({out.strip()!r})")

        doc = as_json(["readcap", "--json", base + "/1"], "readcap --json")
        check(doc.get("read_only") is True and doc.get("blocks") == 32768 and doc.get("block_size") == 512,
              f"readcap --json of the ,ro LUN: read_only true, blocks and block size ({doc})")
        doc = as_json(["readcap", "--json", base + "/0"], "readcap --json (rw)")
        check(doc.get("read_only") is False, f"readcap --json of the rw LUN: read_only false ({doc})")
        rc, out, err = run([ispace, "readcap", base + "/1"])
        check(rc == 0 and re.search(r"read-only:\s+yes", out) is not None, f"readcap says read-only ({out.strip()!r})")
        rc, out, err = run([ispace, "readcap", base + "/0"])
        check(rc == 0 and re.search(r"read-only:\s+no", out) is not None, "readcap of the rw LUN says it is not read-only")

        with open("/dev/full", "w") as full:
            r = subprocess.run([ispace, "ls", "--json", portal], stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
        check(r.returncode == 1 and "writing to stdout" in r.stderr,
              f"a listing that cannot be written (stdout on a full disk) exits 1 and says so ({r.returncode}: {r.stderr.strip()!r})")
        doc = as_json(["inq", "--json", base + "/0"], "inq --json")
        check(doc.get("lun") == 0 and doc.get("vendor") == "ISPACE" and doc.get("serial")
              and any(d.get("type") == "NAA" for d in doc.get("designators", [])),
              "inq --json: vendor, serial and the NAA designator")

        # Errors: nothing on stdout, the reason on stderr, exit 1 (failure) or 2 (usage).
        for args, code, what in ((["inq", "--json", base + "/7"], 1, "inq --json of a missing LUN"),
                                 (["readcap", "--json", f"{portal}/{IQN}x/0"], 1, "readcap --json of an unknown target"),
                                 (["ls", "--json", "iscsi://127.0.0.1:1"], 1, "ls --json of a closed port"),
                                 (["readcap", "--json", portal], 2, "readcap --json without a LUN")):
            rc, out, err = run([ispace] + args)
            check(rc == code and out == "" and err.startswith("ispace: "),
                  f"{what}: exit {code}, nothing on stdout, the reason on stderr ({rc}: {out[:60]!r} {err.strip()[:100]!r})")

        rc, out, err = run([ispace, "bench", "--time", "0.5", base + "/0"])
        check(rc == 0 and re.search(r"^bench randread: \d+ IOPS, [\d.]+ MiB/s", err, re.M) is not None,
              f"bench prints a one-line summary on a stderr that is not a terminal ({err.strip()!r})")
        doc = as_json(["bench", "--json", "--time", "0.5", base + "/0"], "bench --json")
        check(doc.get("iops", 0) > 0 and doc.get("reads", 0) > 0 and "p99" in doc.get("latency_us", {}),
              f"bench --json: iops, reads and latency percentiles ({sorted(doc)})")
        rc, out, err = run([ispace, "bench", "--time", "1", "--bs", "16M", base + "/0"])
        check(rc == 1 and "IOPS" not in out + err and "MiB/s" not in out + err,
              f"a failed bench prints no figure, on stdout or stderr ({err.strip()[-120:]!r})")
        src = os.path.join(scratch, "listing-src.img")
        with open(src, "wb") as f:
            f.truncate(1 << 20)
        rc, out, err = run([ispace, "cp", src, base + "/1"])
        check(rc == 1 and "read-only" in err and "partial copy" not in err,
              f"cp to a read-only LUN is refused before it writes, not reported as a partial copy ({err.strip()!r})")
        rc, out, err = run([ispace, "bench", "--time", "1", "--rw", "randwrite", base + "/1"])
        check(rc == 1 and "read-only" in err and "Nothing was run" in err and "IOPS" not in out + err,
              f"bench --rw randwrite on a read-only LUN is refused before it runs ({err.strip()!r})")
    finally:
        daemon.stop()


def main():
    ispace, ispaced = sys.argv[1], sys.argv[2]
    scratch = ispace_testlib.scratch_dir("admin")
    for section in (conventions, secrets, files, signals, honesty, listings):
        print(f"--- {section.__name__}", flush=True)
        section(ispace, ispaced, scratch)
    return check.finish(scratch)


if __name__ == "__main__":
    sys.exit(main())
