#!/usr/bin/env python3
"""The cost of block checksums on 1 MiB sequential reads (issue 14's aim: <= 5 %).

Two 2-way mirrors over local member files, one plain and one made with --checksum, exported by one ispaced
(--lun space:p --lun space:c), filled through the export (so that every block of the checksummed one has a
checksum and every read is verified), then read whole with `ispace cp --qd 8 --bs 1M LUN /dev/null` in
alternating rounds. Prints MB/s of each and the ratio (median of the rounds).

Usage: checksum_bench.py ISPACE ISPACED [SIZE_MIB] [ROUNDS]
"""
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "system"))
import ispace_testlib  # noqa: E402

MiB = 1 << 20
IQN = "iqn.2026-11.org.ispace.bench:checksum"


def run(args, env):
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {(r.stdout + r.stderr).strip()[-800:]}")
    return r


def main():
    ispace, ispaced = sys.argv[1], sys.argv[2]
    size = int(sys.argv[3]) * MiB if len(sys.argv) > 3 else 256 * MiB
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    scratch = ispace_testlib.scratch_dir("checksum-bench")
    home = os.path.join(scratch, "home")
    env = dict(os.environ, ISPACE_HOME=home, ISPACED=ispaced)
    files = [os.path.join(scratch, f"{n}.img") for n in ("p0", "p1", "c0", "c1")]
    for f in files:
        with open(f, "wb") as out:
            out.truncate(size + 8 * MiB)
    run([ispace, "space", "create", "p", "--size", str(size), "--member", files[0], "--member", files[1]], env)
    run([ispace, "space", "create", "c", "--checksum", "--size", str(size), "--member", files[2], "--member",
         files[3]], env)
    data = os.path.join(scratch, "data.bin")
    with open(data, "wb") as out:
        for _ in range(size // MiB):
            out.write(os.urandom(MiB))
    daemon = ispace_testlib.Ispaced(ispaced, ["--home", home, "--listen", "127.0.0.1:0", "--iqn", IQN, "--lun",
                                              "space:p", "--lun", "space:c"], env=env,
                                    log_path=os.path.join(scratch, "ispaced.log")).start()
    try:
        url = f"iscsi://{daemon.host}:{daemon.port}/{IQN}"
        for lun in (0, 1):
            run([ispace, "cp", "--no-progress", data, f"{url}/{lun}"], env)
        figures = {0: [], 1: []}
        for _ in range(rounds):
            for lun in (0, 1):
                t0 = time.monotonic()
                run([ispace, "cp", "--qd", "8", "--bs", "1M", "--no-progress", f"{url}/{lun}", "/dev/null"], env)
                figures[lun].append(size / (time.monotonic() - t0) / 1e6)
        plain, sums = statistics.median(figures[0]), statistics.median(figures[1])
        print(f"1 MiB sequential reads, QD 8, {size // MiB} MiB, {rounds} rounds, load {os.getloadavg()[0]:.1f}: "
              f"plain {plain:.0f} MB/s, checksummed {sums:.0f} MB/s ({100 * sums / plain:.1f} %)")
        print(f"  rounds plain {[round(x) for x in figures[0]]}, checksummed {[round(x) for x in figures[1]]}")
    finally:
        daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
