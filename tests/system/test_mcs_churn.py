#!/usr/bin/env python3
"""MC/S under load: `ispace bench --connections-churn` against ispaced. While the load runs, the
initiator removes one connection of the live session (its commands in flight finish, then it logs out
with reason "close the connection") or adds one back (a login with the session's TSIH and a new CID),
every 100 ms, between 1 and --connections.

Checked: not one command fails (bench fails the run otherwise), connections were removed and added and
counted, no change was refused, the session was never reinstated, ispaced logged each join; and the
data: a sequential write run of one fixed 64 KiB pattern leaves every 64 KiB of the region holding exactly
that pattern (a block whose writes were all lost, or whose last one was torn or shifted, would show zeros
or a mix). The initiator's unit tests check every command's data; this checks the real target's side.

Usage: test_mcs_churn.py ISPACE ISPACED
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ispace_testlib  # noqa: E402

IQN = "iqn.2026-12.org.ispace.test:churn"
REGION = 4 << 20
BS = 64 << 10
check = ispace_testlib.Checks()


def bench(ispace, url, rw, seconds):
    r = subprocess.run([ispace, "bench", url, "--rw", rw, "--bs", "64k", "--qd", "8", "--size", str(REGION),
                        "--time", str(seconds), "--connections", "3", "--connections-churn", "0.1", "--json"],
                       capture_output=True, text=True, timeout=60)
    figures = None
    if r.returncode == 0:
        try:
            figures = json.loads(r.stdout)
        except ValueError:
            pass
    return r.returncode, figures, r.stderr


def judge(rw, rc, figures, err):
    """Checks one bench run; returns the connections it added (0 when it failed)."""
    check(rc == 0 and figures is not None,
          f"{rw}: bench with churn ran, no command failed (rc {rc}: {err.strip()[-300:]!r})")
    if figures is None:
        return 0
    removed, added = figures["connections_removed"], figures["connections_added"]
    check(removed >= 3 and added >= 2, f"{rw}: connections removed ({removed}) and added ({added}) under load")
    check(figures["churn_refusals"] == 0, f"{rw}: no add or remove refused ({figures['churn_refusals']})")
    check(figures["reconnects"] == 0 and figures["retries"] == 0,
          f"{rw}: no reinstatement, no command sent twice ({figures['reconnects']}, {figures['retries']})")
    ios = figures["reads"] + figures["writes"]
    check(ios > 100, f"{rw}: the load ran meanwhile ({ios} commands)")
    return added


def main():
    ispace, ispaced = sys.argv[1], sys.argv[2]
    scratch = ispace_testlib.scratch_dir("mcs-churn")
    lun = os.path.join(scratch, "lun.img")
    daemon = ispace_testlib.Ispaced(ispaced, ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun",
                                              lun + ",size=64M,thin", "--reactors", "2"],
                                    log_path=os.path.join(scratch, "ispaced.log")).start()
    url = f"iscsi://{daemon.portal()}/{IQN}/0"
    try:
        added = judge("write", *bench(ispace, url, "write", 1.5))
        with open(lun, "rb") as f:
            region = f.read(REGION)
        pattern = region[:BS]
        chunks = [region[i:i + BS] for i in range(0, REGION, BS)]
        wrong = [i for i, c in enumerate(chunks) if c != pattern]
        check(any(pattern) and not wrong,
              f"every 64 KiB of the {REGION >> 20} MiB region holds the written pattern (wrong: {wrong[:8]})")

        added += judge("randread", *bench(ispace, url, "randread", 1.0))
        check(daemon.alive(), "ispaced still runs")
        log = daemon.log_tail(5000)
        # Two sessions, each with CIDs 1 and 2 joining at login, then every connection the churn added.
        joined = log.count(" added; ")
        check(joined == 4 + added, f"ispaced logged each connection joining a session ({joined}, expected "
              f"4 + {added} added by the churn)")
        check("level=error" not in log, "ispaced logged no error")
    finally:
        rc = daemon.stop()
        check(rc == 0, f"ispaced stops cleanly ({rc})")
    return check.finish(scratch, daemon)


if __name__ == "__main__":
    sys.exit(main())
