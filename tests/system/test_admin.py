#!/usr/bin/env python3
"""ispaced and ispace as an administrator meets them: no silent surprise on bad input, interruption or
misuse. Each check reproduces a reported case (docs/robustness.md lists them all):

  conventions  --version on both tools; exit 2 for usage errors (not CLI11's 105/109/114); JSON
               configuration errors with line and column; an empty "targets" list is not given the
               quick-mode hint
  secrets      a URL that does not parse is not echoed with its CHAP secret; secrets from a file
               (--chap-file, "secret_file") or the environment (ISPACE_CHAP_SECRET); `ps` does not
               show a secret given on the command line once it is parsed

Usage: test_admin.py ISPACE_BINARY ISPACED_BINARY
"""
import json
import os
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
                       ([ispace, "frobnicate"], "ispace frobnicate")):
        rc, out, err = run(args)
        check(rc == 2 and err.strip() != "", f"{what}: exit 2 with a message ({rc}: {err.strip()[:80]!r})")

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
        bench = subprocess.Popen([ispace, "bench", "--time", "2", url], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        time.sleep(0.7)
        shown = cmdline(bench.pid) if bench.poll() is None else ""
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


def main():
    ispace, ispaced = sys.argv[1], sys.argv[2]
    scratch = ispace_testlib.scratch_dir("admin")
    for section in (conventions, secrets):
        print(f"--- {section.__name__}", flush=True)
        section(ispace, ispaced, scratch)
    return check.finish(scratch)


if __name__ == "__main__":
    sys.exit(main())
