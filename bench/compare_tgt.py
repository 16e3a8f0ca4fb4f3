#!/usr/bin/env python3
"""ispaced against Debian's tgt, side by side in one run.

Both targets serve a LUN file of the same size on the same filesystem (/var/tmp by default), filled
with data first so that both read what the page cache holds: the disk is not what is measured. Not
tmpfs: io_uring has no non-blocking path for tmpfs reads and hands each one to a kernel worker thread,
which measures the filesystem rather than the target (put LUN files on ext4/xfs, or use memory:SIZE).
libiscsi's iscsi-perf drives each target in turn, alternating, ROUNDS times per workload.
These machines are shared and noisy: the report gives medians and the ratio of medians, never a
single time.

Usage: compare_tgt.py --ispaced build/tools/ispaced [--rounds 5] [--seconds 5] [--dir /var/tmp]
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "system"))
import ispace_testlib  # noqa: E402

WORKLOADS = [
    # name, iscsi-perf args
    ("4k randread qd32", ["-m", "32", "-b", "8", "-r"]),
    ("4k randread qd1", ["-m", "1", "-b", "8", "-r"]),
    ("64k seqread qd8", ["-m", "8", "-b", "128"]),
]
TGT_IQN = "iqn.2026-11.org.ispace:bench-tgt"
ISP_IQN = "iqn.2026-11.org.ispace:bench-ispaced"


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Tgt:
    """A private tgtd: its own portal and its own control port, so it never meets anyone else's."""

    def __init__(self, lun_path):
        self.port = free_port()
        self.control = str(1000 + os.getpid() % 50000)
        self.proc = subprocess.Popen(["tgtd", "-f", "-C", self.control, "--iscsi", f"portal=127.0.0.1:{self.port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(50):
            if subprocess.run(["tgtadm", "-C", self.control, "--lld", "iscsi", "--op", "show", "--mode", "target"],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        adm = ["tgtadm", "-C", self.control, "--lld", "iscsi"]
        subprocess.run(adm + ["--op", "new", "--mode", "target", "--tid", "1", "-T", TGT_IQN], check=True)
        subprocess.run(adm + ["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", lun_path],
                       check=True)
        subprocess.run(adm + ["--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"], check=True)
        self.url = f"iscsi://127.0.0.1:{self.port}/{TGT_IQN}/1"

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def fill(path, size):
    """Writes `size` bytes of data (a random MiB, repeated) so reads hit cached pages, not holes."""
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size >> 20):
            f.write(block)


def perf(url, args, seconds):
    out = subprocess.run(["iscsi-perf", "-t", str(seconds)] + args + [url], capture_output=True, text=True,
                         errors="replace", timeout=seconds + 60).stdout
    found = re.findall(r"iops average (\d+) \((\d+) MB/s\)", out)
    if not found:
        raise RuntimeError(f"iscsi-perf printed no result for {url}:\n{out[-1000:]}")
    iops, mbs = found[-1]
    return int(iops), int(mbs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ispaced", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--dir", default="/var/tmp", help="where the LUN files go (a regular filesystem)")
    ap.add_argument("--size", default="1G")
    args = ap.parse_args()

    scratch = tempfile.mkdtemp(prefix="ispace-bench-", dir=args.dir)
    tgt = daemon = None
    try:
        size = int(subprocess.run(["numfmt", "--from=iec", args.size], capture_output=True, text=True,
                                  check=True).stdout)
        tgt_lun = os.path.join(scratch, "tgt.img")
        isp_lun = os.path.join(scratch, "isp.img")
        fill(tgt_lun, size)
        fill(isp_lun, size)
        tgt = Tgt(tgt_lun)
        daemon = ispace_testlib.Ispaced(args.ispaced, ["--listen", "127.0.0.1:0", "--iqn", ISP_IQN, "--log-level", "warn",
                                                       "--lun", isp_lun])
        daemon.start()
        isp_url = daemon.urls[0]
        print(f"ispaced vs tgt, {args.rounds} alternating rounds x {args.seconds} s per workload, LUNs on {args.dir}")
        print(f"{'workload':<20} {'ispaced IOPS (median)':>22} {'tgt IOPS (median)':>18} {'ratio':>7}")
        for name, wargs in WORKLOADS:
            mine, theirs = [], []
            for _ in range(args.rounds):
                mine.append(perf(isp_url, wargs, args.seconds)[0])
                theirs.append(perf(tgt.url, wargs, args.seconds)[0])
            m, t = statistics.median(mine), statistics.median(theirs)
            print(f"{name:<20} {m:>22.0f} {t:>18.0f} {m / t:>7.2f}   ispaced {mine} tgt {theirs}", flush=True)
    finally:
        if daemon:
            daemon.stop()
        if tgt:
            tgt.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
