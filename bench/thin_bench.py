#!/usr/bin/env python3
"""make bench, thin part: a thin 2-way mirror over two ispaced targets (memory LUNs, 127.0.0.1), attached
(FUSE + loop), measured for issue 14's snapshot aims (docs/dataspaces.md, "Performance", records figures):

  snapshot create     `ispace space snapshot` while fio writes 4 KiB at QD 8 (into 32 MiB): the I/O pause
                      and the create (+ commit) the holder reports               (aims: < 100 ms, < 10 ms)
  reads at depth 32   fio 4 KiB random reads, QD 32, over a written 256 MiB, with 32 snapshots of it (four
                      1 MiB random writes between two snapshots, so that their trees differ) vs the same
                      data with all but one of them deleted, right after: pairs on one layout, two per
                      round, the ratio of the medians and the median of the pairs' ratios  (aim: >= 95 %)
  first write after   the mean latency of one 4 KiB O_DIRECT write (QD 1) into each of 64 fully written
  a snapshot          clusters just after a snapshot (copy-on-write) vs the same writes with no snapshot
                      since the last ones (in place)                             (aim: <= 2x)

Settings as for the other benches: BENCH_ROUNDS (default 3), BENCH_SECONDS (default 5), BENCH_QUICK=1 (1
round, 2 s, 8 snapshots for the depth run), BENCH_DIR, BENCH_OUT (thin-latest.json goes there).

Usage: thin_bench.py --build BUILD_DIR
Exit status: 0 done, or skipped (not root, no FUSE or loop devices, no fio, not built: it says why);
1 a run failed.
"""
import argparse
import datetime
import json
import mmap
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "system"))
import attach_testlib as at  # noqa: E402
import attach_bench  # noqa: E402
import ispace_testlib  # noqa: E402

MIB = 1 << 20
RANGE = 256 * MIB  # the written range the reads and writes use
CLUSTERS = 64      # clusters the first-write test writes into
PAIRS = 2          # depth-N/depth-1 read pairs per round


def fio(device, rw, bs, qd, seconds=None, size=None, io_size=None):
    """IOPS of one fio run on the first `size` bytes of the device."""
    args = ["fio", "--name=bench", f"--filename={device}", "--direct=1", "--ioengine=libaio", f"--rw={rw}",
            f"--bs={bs}", f"--iodepth={qd}", "--randrepeat=0", "--norandommap", "--output-format=json"]
    args += [f"--size={size}"] if size else []
    args += [f"--io_size={io_size}"] if io_size else []
    args += [f"--runtime={seconds}", "--time_based"] if seconds else []
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"fio on {device}: {r.stderr.strip()}")
    job = json.loads(r.stdout)["jobs"][0]
    return (job["read"] if "read" in rw else job["write"])["iops"]


class Thin:
    def __init__(self, build, scratch):
        self.ispace = os.path.join(build, "tools", "ispace")
        ispaced = os.path.join(build, "tools", "ispaced")
        self.env = dict(os.environ, ISPACE_HOME=os.path.join(scratch, "home"), ISPACED=ispaced)
        self.targets = []
        for name in ("a", "b"):
            self.targets.append(ispace_testlib.Ispaced(
                ispaced, ["--listen", "127.0.0.1:0", "--iqn", f"iqn.2026-12.org.ispace.bench:thin-{name}", "--lun",
                          f"memory:{(RANGE >> 20) * 4}M", "--reactors", "1"],
                log_path=os.path.join(scratch, f"{name}.log")).start())
        self.space("create", "t", "--thin", "--size", "1G", "--member", self.targets[0].urls[0], "--member",
                   self.targets[1].urls[0])
        self.device = self.space("attach", "t").stdout.strip().splitlines()[-1]

    def space(self, *args):
        r = subprocess.run([self.ispace, "space"] + list(args), capture_output=True, text=True, env=self.env,
                           timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"ispace space {' '.join(args)}: {r.stderr.strip()}")
        return r

    def snapshot(self, name):
        """(I/O pause ms, create ms) the holder reports for one snapshot."""
        r = self.space("snapshot", "t", name)
        m = re.search(r"I/O paused ([\d.]+) ms, created and committed in ([\d.]+) ms", r.stdout + r.stderr)
        if not m:
            raise RuntimeError(f"snapshot {name}: no timing in {(r.stdout + r.stderr).strip()!r}")
        return float(m.group(1)), float(m.group(2))

    def delete(self, name):
        self.space("snapshot-delete", f"t@{name}")

    def settle(self, limit=30):
        """Until the background copier has nothing left (deferred copies of earlier first writes), so that
        a read run does not share the holder with it."""
        deadline = time.monotonic() + limit
        while json.loads(self.space("status", "t", "--json").stdout).get("deferred_copies", 0) != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"deferred copies still pending after {limit} s")
            time.sleep(0.05)

    def close(self):
        try:
            self.space("detach", "t")
        except RuntimeError:
            pass
        for t in self.targets:
            t.stop()


def write_latency(device, offsets):
    """Mean seconds of one 4 KiB O_DIRECT write at each offset, one at a time."""
    buf = mmap.mmap(-1, 4096)
    buf.write(os.urandom(4096))
    fd = os.open(device, os.O_WRONLY | os.O_DIRECT)
    try:
        t0 = time.perf_counter()
        for off in offsets:
            os.pwrite(fd, buf, off)
        return (time.perf_counter() - t0) / len(offsets)
    finally:
        os.close(fd)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", default="build")
    args = parser.parse_args()
    s = attach_bench.settings()
    driver_bin = os.path.join(args.build, "tests", "system", "attach_driver")
    why = None
    for binary in (os.path.join(args.build, "tools", "ispace"), os.path.join(args.build, "tools", "ispaced"),
                   driver_bin):
        if why is None and not os.access(binary, os.X_OK):
            why = f"{binary} is not built"
    why = why or at.why_not_runnable(driver_bin, ("fio",))
    if why:
        print(f"thin bench: skipped: {why}")
        return 0
    depth = 8 if s["quick"] else 32
    pairs = 1 if s["quick"] else PAIRS
    scratch = tempfile.mkdtemp(prefix="ispace-thin-bench-", dir=s["dir"])
    print(f"thin bench: {s['rounds']} round(s), {s['seconds']} s per read run, depth {depth}, in {scratch}",
          flush=True)
    runs = {}
    failed = None
    thin = None
    rng = random.Random(14)
    try:
        thin = Thin(args.build, scratch)
        dev = thin.device
        fio(dev, "write", "1M", 8, size=RANGE)  # the range written once: every cluster mapped and full
        n = 0
        for round_ in range(s["rounds"]):
            # Snapshot create under writes.
            writer = subprocess.Popen(["fio", "--name=load", f"--filename={dev}", "--direct=1", "--ioengine=libaio",
                                       "--rw=randwrite", "--bs=4k", "--iodepth=8", "--size=32M",
                                       "--runtime=60", "--time_based", "--norandommap", "--output-format=json"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
            names = []
            for _ in range(5):
                n += 1
                names.append(f"c{n}")
                pause, create = thin.snapshot(names[-1])
                runs.setdefault("pause ms", []).append(pause)
                runs.setdefault("create ms", []).append(create)
                time.sleep(0.3)
            writer.terminate()
            writer.wait(60)
            for name in names:
                thin.delete(name)
            # Reads at depth `depth`, then at depth 1 over the same data: `depth` snapshots whose trees differ
            # (four 1 MiB random writes between two), read; all but the first deleted, read again. Both runs
            # read one layout (the same clusters, written the same way), so the depth is all that differs
            # between them; they follow each other within seconds, so the pair's ratio is steadier than
            # either figure (rounds of this machine differ by a third). PAIRS pairs per round.
            for _ in range(pairs):
                thin.snapshot("d0")
                for d in range(1, depth):
                    fio(dev, "randwrite", "1M", 4, size=RANGE, io_size=4 * MIB)
                    thin.snapshot(f"d{d}")
                thin.settle()
                runs.setdefault(f"reads, depth {depth}", []).append(
                    fio(dev, "randread", "4k", 32, seconds=s["seconds"], size=RANGE))
                for d in range(1, depth):
                    thin.delete(f"d{d}")
                thin.settle()
                runs.setdefault("reads, depth 1", []).append(fio(dev, "randread", "4k", 32, seconds=s["seconds"],
                                                                 size=RANGE))
                thin.delete("d0")
            # First 4 KiB writes: in place, then into clusters a snapshot shares.
            clusters = rng.sample(range(RANGE // MIB), CLUSTERS)
            offsets = [c * MIB + rng.randrange(256) * 4096 for c in clusters]
            runs.setdefault("write in place us", []).append(write_latency(dev, offsets) * 1e6)
            thin.snapshot("w")
            offsets = [c * MIB + rng.randrange(256) * 4096 for c in clusters]
            runs.setdefault("first write after snapshot us", []).append(write_latency(dev, offsets) * 1e6)
            thin.delete("w")
            print(f"round {round_ + 1} done", flush=True)
    except (RuntimeError, subprocess.SubprocessError, OSError, KeyError) as e:
        failed = str(e)
    finally:
        if thin:
            thin.close()
        shutil.rmtree(scratch, ignore_errors=True)
    if failed:
        print(f"thin bench: failed: {failed}")
        return 1

    med = {k: statistics.median(v) for k, v in runs.items()}
    # The median of each pair's own ratio: the pair shares the machine's state of its moment.
    paired = statistics.median([x / y for x, y in zip(runs[f"reads, depth {depth}"], runs["reads, depth 1"])])
    rows = [
        ("snapshot: I/O pause (median; max)", f"{med['pause ms']:.1f} ms; {max(runs['pause ms']):.1f} ms",
         "< 100 ms"),
        ("snapshot: create + commit (median; max)", f"{med['create ms']:.1f} ms; {max(runs['create ms']):.1f} ms",
         "< 10 ms"),
        (f"4K random reads, depth {depth} vs 1",
         f"{med[f'reads, depth {depth}']:.0f} vs {med['reads, depth 1']:.0f} IOPS "
         f"({med[f'reads, depth {depth}'] / med['reads, depth 1']:.0%}; paired {paired:.0%})", ">= 95 %"),
        ("first 4K write after a snapshot vs in place",
         f"{med['first write after snapshot us']:.0f} vs {med['write in place us']:.0f} us "
         f"({med['first write after snapshot us'] / med['write in place us']:.2f}x)", "<= 2x"),
    ]
    print()
    for title, value, aim in rows:
        print(f"{title:44} {value:34} aim {aim}")
    os.makedirs(s["out"], exist_ok=True)
    with open(os.path.join(s["out"], "thin-latest.json"), "w") as f:
        json.dump({"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
                   "kernel": platform.release(), "cpus": os.cpu_count(), "load": os.getloadavg(), "settings": s,
                   "depth": depth, "runs": runs, "medians": med, "depth_paired_ratio": paired}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
