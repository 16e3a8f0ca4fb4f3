#!/usr/bin/env python3
"""ispaced as a service: the systemd unit verifies, `make install` (cmake --install) puts binaries, unit,
completion and man pages under a prefix, and SIGHUP re-reads the configuration file and applies the
difference without dropping a session; a holder's threads leave SIGTERM, SIGINT and SIGHUP to main().

`systemd-analyze verify` checks that ExecStart names an executable, so the committed unit is checked
as the installed copy (ExecStart pointing at the installed ispaced) and as committed with its
/usr/sbin/ispaced replaced by the built binary; every other line is checked as written.

Usage: test_service.py ISPACED BUILD_DIR SOURCE_DIR
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iscsi_raw  # noqa: E402
import ispace_testlib  # noqa: E402

IQN = "iqn.2026-11.org.ispace:service"
check = ispace_testlib.Checks()


def verify(unit):
    p = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True, text=True, timeout=60)
    return p.returncode == 0 and not p.stderr.strip(), (p.stdout + p.stderr).strip()


def main():
    ispaced, build, source = sys.argv[1], sys.argv[2], sys.argv[3]
    scratch = ispace_testlib.scratch_dir("service")

    if shutil.which("systemd-analyze"):
        unit = open(os.path.join(source, "packaging", "ispaced.service")).read()
        check("/usr/sbin/ispaced" in unit and "Type=notify" in unit, "the committed unit is Type=notify")
        local = os.path.join(scratch, "ispaced.service")
        open(local, "w").write(unit.replace("/usr/sbin/ispaced", os.path.abspath(ispaced)))
        ok, out = verify(local)
        check(ok, f"systemd-analyze verify packaging/ispaced.service (ExecStart at the built binary) {out}")
    else:
        print("SKIP systemd-analyze is not installed")

    prefix = os.path.join(scratch, "prefix")
    p = subprocess.run(["cmake", "--install", build, "--prefix", prefix], capture_output=True, text=True, timeout=120)
    check(p.returncode == 0, f"cmake --install (make install) succeeds {p.stderr.strip()[-300:]}")
    for path in ("sbin/ispaced", "bin/ispace", "lib/systemd/system/ispaced.service",
                 "share/bash-completion/completions/ispace", "share/bash-completion/completions/ispaced"):
        check(os.path.exists(os.path.join(prefix, path)), f"installs {path}")
    if shutil.which("help2man"):
        for path in ("share/man/man8/ispaced.8", "share/man/man1/ispace.1"):
            full = os.path.join(prefix, path)
            check(os.path.exists(full) and "control" in open(full).read(), f"installs the man page {path}")
    installed_unit = os.path.join(prefix, "lib/systemd/system/ispaced.service")
    if shutil.which("systemd-analyze") and os.path.exists(installed_unit):
        check(f"ExecStart={prefix}/sbin/ispaced " in open(installed_unit).read(), "the installed unit names the installed ispaced")
        ok, out = verify(installed_unit)
        check(ok, f"systemd-analyze verify of the installed unit {out}")
    p = subprocess.run(["bash", "-n", os.path.join(source, "packaging/bash-completion/ispace")], capture_output=True)
    check(p.returncode == 0, "the bash completion parses")

    # SIGHUP: the file is read again and the difference applied; the session stays.
    config = os.path.join(scratch, "ispaced.json")
    json.dump({"targets": [{"iqn": IQN, "luns": [{"lun": 0, "spec": "memory:16M"}]}]}, open(config, "w"))
    daemon = ispace_testlib.Ispaced(ispaced, ["--config", config, "--listen", "127.0.0.1:0", "--reactors", "1", "--control",
                                                        os.path.join(scratch, "control.sock")],
                                    log_path=os.path.join(scratch, "ispaced.log")).start()
    try:
        client = iscsi_raw.Client("127.0.0.1", daemon.port, initiator="iqn.2026-11.org.ispace:hup")
        check(client.login(IQN) == (0, 0), "an initiator logs in")
        while client.test_unit_ready(0) != 0:
            pass
        json.dump({"targets": [{"iqn": IQN, "luns": [{"lun": 0, "spec": "memory:16M"}, {"lun": 1, "spec": "memory:8M"}]}]},
                  open(config, "w"))
        daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while time.time() < deadline and "config.reloaded" not in daemon.log_tail(200):
            time.sleep(0.1)
        check("config.reloaded" in daemon.log_tail(200) and "lun 1 added" in daemon.log_tail(200),
              "SIGHUP applies the file's new LUN")
        status = None
        while status is None or status == 2:
            status = client.test_unit_ready(1)
            if status == 2:
                continue
        check(status == 0, "the new LUN answers on the session that stayed logged in")
        client.close()
    finally:
        rc = daemon.stop()
    check(rc == 0, f"ispaced stops cleanly (exit {rc})")

    holder_signals(ispaced, scratch)
    return check.finish(scratch, daemon)


def blocked_signals(pid):
    """{thread id: the set of signal numbers it blocks}, from /proc/PID/task/*/status (SigBlk)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            for line in open(f"/proc/{pid}/task/{tid}/status"):
                if line.startswith("SigBlk:"):
                    mask = int(line.split()[1], 16)
                    out[tid] = {n + 1 for n in range(64) if mask >> n & 1}
        except OSError:
            pass  # the thread ended meanwhile
    return out


def holder_signals(ispaced, scratch):
    """A holder (`ispaced --holder`, what `ispace space attach` starts) runs reactors and its socket's
    thread from startup on: each must block SIGTERM, SIGINT and SIGHUP, which only main()'s sigwait() takes.
    A thread that did not took such a signal whenever main() was busy (a reload, startup) and the default
    action ended the holder, and with it every device it had attached."""
    home = os.path.join(scratch, "holder-home")
    socket_path = os.path.join(home, "holder.sock")
    holder = ispace_testlib.Ispaced(ispaced, ["--holder", "--reactors", "2"],
                                    log_path=os.path.join(scratch, "holder.log"),
                                    env=dict(os.environ, ISPACE_HOME=home))
    try:
        holder.start(ready=lambda: os.path.exists(socket_path))
    except RuntimeError as e:
        check(False, f"a holder starts and listens on holder.sock: {e}")
        return
    check(True, "a holder starts and listens on holder.sock")
    pid = holder.proc.pid
    try:
        # main() itself is left out: waiting in sigwait(), it unblocks them for the wait.
        threads = {tid: sigs for tid, sigs in blocked_signals(pid).items() if tid != str(pid)}
        open_to = sorted(tid for tid, sigs in threads.items()
                         if not {signal.SIGTERM, signal.SIGINT, signal.SIGHUP} <= sigs)
        check(len(threads) >= 2 and not open_to,
              f"every thread of the holder but main ({len(threads)}) blocks SIGTERM, SIGINT and SIGHUP "
              f"(not: {open_to})")
        # Two at once: the second comes while main() handles the first (nothing to reload; it says so).
        holder.proc.send_signal(signal.SIGHUP)
        holder.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        check(holder.alive(), f"the holder lives through two SIGHUPs in a row (exit {holder.proc.poll()})")
    finally:
        rc = holder.stop(timeout=30)
    check(rc == 0, f"the holder stops cleanly on SIGTERM (exit {rc})")


if __name__ == "__main__":
    sys.exit(main())
