#!/usr/bin/env python3
"""Two iscsi-perf clients against two LUNs at once both make progress, and ispaced runs no thread per
connection: its thread count with 8 sessions open equals its thread count idle.

Usage: test_concurrency.py ISPACED_BINARY
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ispace_testlib  # noqa: E402

IQN = "iqn.2026-11.org.ispace:concurrency"
check = ispace_testlib.Checks()


def threads_of(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def main():
    binary = sys.argv[1]
    scratch = ispace_testlib.scratch_dir("concurrency")
    args = ["--listen", "127.0.0.1:0", "--iqn", IQN, "--reactors", "2",
            "--lun", os.path.join(scratch, "a.img") + ",size=128M,thin", "--lun", "memory:128M"]
    daemon = ispace_testlib.Ispaced(binary, args, log_path=os.path.join(scratch, "ispaced.log")).start()
    portal = daemon.portal()
    try:
        idle_threads = threads_of(daemon.proc.pid)
        perfs = []
        for lun in (0, 1):
            perfs.append(subprocess.Popen(
                ["iscsi-perf", "-i", f"iqn.2026-11.org.ispace:perf{lun}", "-m", "16", "-b", "8", "-t", "6", "-r",
                 f"iscsi://{portal}/{IQN}/{lun}"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        # Six more idle TCP connections sitting in login must not add threads either.
        idle_sockets = [socket.create_connection(("127.0.0.1", daemon.port)) for _ in range(6)]
        time.sleep(3)
        busy_threads = threads_of(daemon.proc.pid)
        outputs = [p.communicate(timeout=60)[0] for p in perfs]
        for s in idle_sockets:
            s.close()
        for lun, out in enumerate(outputs):
            # iscsi-perf prints "iops current N (...), iops average N" once a second, and a final average.
            iops = [int(x) for x in re.findall(r"iops average (\d+)", out)]
            check(bool(iops) and max(iops) > 0, f"iscsi-perf on LUN {lun} makes progress (max {max(iops or [0])} IOPS)")
            if not iops:
                print(out[-2000:])
        check(busy_threads == idle_threads,
              f"no thread per connection: {idle_threads} threads idle, {busy_threads} with 8 connections")
    finally:
        rc = daemon.stop()
        check(rc == 0, f"ispaced exits 0 on SIGTERM (got {rc})")
    return check.finish(scratch, daemon)


if __name__ == "__main__":
    sys.exit(main())
