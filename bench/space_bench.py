#!/usr/bin/env python3
"""make bench, data-space part: a 2-way mirror over two ispaced targets, attached (FUSE + loop) and driven
with fio, against `ispace cp` over the same kind of targets. Four comparisons (docs/dataspaces.md,
"Performance", says what each aims at and records figures):

  mirror writes      fio 1 MiB sequential writes, QD 8, to the attached mirror    vs  `ispace cp` of the
                     same bytes (1 MiB, --qd 8) to a third target's LUN            (aim: >= 80 %)
  bitmap cost        fio 4 KiB random writes, QD 32, on the mirror with 1 MiB bitmap regions (every
                     region marked on first write, cleared once idle) vs a mirror of the same targets
                     whose one region covers the whole space (marked once: no bitmap cost) (aim: <= 5 %)
  degraded writes    the 1 MiB writes again with member B stopped (SIGSTOP: it stops answering and is
                     marked failed) vs healthy writes just before, in the same rounds (aim: >= 95 %)
  resync             B continued (SIGCONT): the delta resync of what it missed, timed from the holder's
                     log lines (start, "in sync again") vs `ispace cp` from member A's LUN to member B's
                     LUN, the space detached (the same two targets and LUNs)           (aim: >= 80 %)
  checksum reads     fio 1 MiB sequential reads, QD 8, BENCH_SECONDS each, of a mirror made with --checksum
                     vs a plain one made beside it on the same targets (both filled the same way first,
                     so that every block read of the first is verified), in alternating rounds (at least
                     15 of each: a round's noise on this machine is as large as the cost; the order within
                     a round alternates too), with the CPU-seconds per GB read of every process summed
                     for each side beside the MB/s: the steadier figure of the cost  (aim: >= 95 %)

Every target: ispaced, one reactor, memory LUNs (no disk under it), on 127.0.0.1. Settings (environment,
as for attach_bench.py): BENCH_ROUNDS (default 3), BENCH_SECONDS (default 5: the random-write runs),
BENCH_SIZE (default 512M: bytes per write run and per LUN), BENCH_QUICK=1 (1 round, 2 s, 128 MiB),
BENCH_DIR (default /var/tmp), BENCH_OUT (default bench/results: space-latest.json goes there).
BENCH_ONLY=mirror runs only the first comparison (mirror writes vs cp), and says besides how many CPU-seconds
per GB written each process took (user + system, from /proc and the children's rusage: a steadier measure
than MB/s on a shared machine; the loop device's kernel threads are not counted), and per run the CPU-seconds
per GB that the rest of the machine used meanwhile (/proc/stat: kernel threads, and anything else running;
a round measured beside another busy process shows there). BENCH_ONLY=checksum runs only the checksum-reads
comparison (at least 15 alternating rounds), with the CPU figures per GB read of each process and the median
of each round's own ratio beside the ratio of the medians (a round's pair shares the machine's state of that
moment, so its ratio is steadier than either figure).

Usage: space_bench.py --build BUILD_DIR
Exit status: 0 done, or skipped (not root, no FUSE or loop devices, no fio, binaries not built: it says
why); 1 a run failed.
"""
import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
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


def settings():
    return attach_bench.settings(quick_size="128M", full_size="512M")


def cpu_seconds(pid):
    """User + system CPU-seconds of process `pid` so far (0.0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_busy_cpu():
    """CPU-seconds the whole machine has been busy (every CPU; /proc/stat, idle and iowait left out)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def print_cpu(cpu, other):
    """The medians of `cpu` (side -> process -> [CPU-seconds per GB, one per round]), a line per side, with
    what `other` (side -> [CPU-seconds per GB of the rest of the machine, per round]) has for it."""
    for side, procs in cpu.items():
        total = statistics.median([sum(v[i] for v in procs.values()) for i in range(len(procs["client"]))])
        rest = f"; rest of the machine, per run: {', '.join(f'{x:.2f}' for x in other[side])}" \
            if side in other else ""
        print(f"  CPU-s per GB, {side}: total {total:.3f}; " +
              ", ".join(f"{p} {statistics.median(v):.3f}" for p, v in procs.items() if max(v) > 0.0005) + rest)


def cpu_cost(cpu, side, against):
    """The median over rounds of (CPU-seconds per GB of `side`) / (the same of `against`), every process
    summed: on this machine, where the processes share two CPUs and MB/s moves with what else runs, the
    steadier figure of what one side costs more than the other. None when either side was not timed."""
    if side not in cpu or against not in cpu:
        return None
    totals = [[sum(v[i] for v in cpu[x].values()) for i in range(len(cpu[x]["client"]))] for x in (side, against)]
    return statistics.median([a / b for a, b in zip(*totals) if b > 0])


def fio(device, rw, bs, qd, size=None, seconds=None):
    """MB/s of one fio run on the block device: `size` bytes, or `seconds` of it."""
    args = ["fio", "--name=bench", f"--filename={device}", "--direct=1", "--ioengine=libaio", f"--rw={rw}",
            f"--bs={bs}", f"--iodepth={qd}", "--randrepeat=0", "--norandommap", "--output-format=json"]
    args += [f"--size={size}"] if size else [f"--runtime={seconds}", "--time_based"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"fio on {device}: {r.stderr.strip()}")
    job = json.loads(r.stdout)["jobs"][0]
    return (job["read"] if "read" in rw else job["write"])["bw_bytes"] / 1e6


class Bench:
    def __init__(self, build, s, scratch):
        self.ispace = os.path.join(build, "tools", "ispace")
        self.ispaced = os.path.join(build, "tools", "ispaced")
        self.s = s
        self.scratch = scratch
        self.home = os.path.join(scratch, "home")
        self.env = dict(os.environ, ISPACE_HOME=self.home, ISPACED=self.ispaced)
        self.targets = {}
        lun = f"memory:{(s['size'] >> 20) + 8}M"
        for name in ("a", "b", "c"):
            self.targets[name] = ispace_testlib.Ispaced(
                self.ispaced, ["--listen", "127.0.0.1:0", "--iqn", f"iqn.2026-12.org.ispace.bench:{name}",
                               "--lun", lun, "--lun", lun, "--lun", lun, "--lun", lun, "--reactors", "1"],
                log_path=os.path.join(scratch, f"{name}.log")).start()
        self.devices = {}

    def url(self, target, lun):
        return self.targets[target].urls[lun]

    def space(self, *args, check=True):
        r = subprocess.run([self.ispace, "space"] + list(args), capture_output=True, text=True, env=self.env,
                           timeout=300)
        if check and r.returncode != 0:
            raise RuntimeError(f"ispace space {' '.join(args)}: {r.stderr.strip()}")
        return r

    def status(self, name):
        return json.loads(self.space("status", name, "--json").stdout)

    def cp(self, src, dst, length):
        """MB/s of `ispace cp` (1 MiB chunks, 8 in flight) of `src` (`length` bytes) to `dst`."""
        t0 = time.monotonic()
        r = subprocess.run([self.ispace, "cp", "--qd", "8", "--bs", "1M", "--no-progress", src, dst],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"ispace cp {src} {dst}: {r.stderr.strip()}")
        return length / (time.monotonic() - t0) / 1e6

    def attach(self, name, members, region=None, checksum=False):
        extra = (["--region", region] if region else []) + (["--checksum"] if checksum else [])
        self.space("create", name, "--layout", "mirror", *sum((["--member", m] for m in members), []), "--size",
                   str(self.s["size"]), *extra)
        out = self.space("attach", name).stdout.strip().splitlines()
        self.devices[name] = out[-1]
        return out[-1]

    def wait(self, name, predicate, timeout, what):
        deadline = time.time() + timeout
        while time.time() < deadline:
            st = self.status(name)
            if predicate(st):
                return st
            time.sleep(0.2)
        raise RuntimeError(f"space {name}: {what} did not happen within {timeout} s")

    def resync_rate(self, since):
        """MB/s of the last delta resync in the holder's log after line `since`: from its start line to its
        'in sync again' line (millisecond timestamps), the bytes it says it copied."""
        stamp = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})")
        start = end = None
        copied = 0
        with open(os.path.join(self.home, "ispaced.log")) as f:
            lines = f.readlines()[since:]
        for line in lines:
            m = stamp.match(line)
            if not m:
                continue
            t = datetime.datetime.fromisoformat(m.group(1)).timestamp()
            if "space m: resync of" in line and "(delta)" in line:
                start = t
            elif "space m:" in line and "is in sync again" in line and start is not None:
                end = t
                copied = int(re.search(r"\((\d+) MiB copied\)", line).group(1)) * MIB
        if start is None or end is None or end <= start:
            raise RuntimeError("the holder's log has no complete resync")
        return copied / (end - start) / 1e6, copied

    def holder_pid(self):
        """The ispaced that holds the attached spaces (started by `ispace space attach`)."""
        targets = {t.proc.pid for t in self.targets.values()}
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in targets:
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv0 = f.read().split(b"\0")[0]
                with open(f"/proc/{entry}/environ", "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if os.path.basename(argv0) == b"ispaced" and f"ISPACE_HOME={self.home}".encode() in env:
                return int(entry)
        return None

    def cpu_snapshot(self, holder):
        snap = {name: cpu_seconds(t.proc.pid) for name, t in self.targets.items()}
        snap["holder"] = cpu_seconds(holder) if holder else 0.0
        snap["client"] = children_cpu()
        return snap

    def log_length(self):
        try:
            with open(os.path.join(self.home, "ispaced.log")) as f:
                return len(f.readlines())
        except OSError:
            return 0

    def close(self):
        for name in list(self.devices):
            self.space("detach", name, check=False)
        for t in self.targets.values():
            if t.proc and t.proc.poll() is None:
                t.proc.send_signal(signal.SIGCONT)
            t.stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", default="build")
    args = parser.parse_args()
    s = settings()
    driver_bin = os.path.join(args.build, "tests", "system", "attach_driver")
    why = None
    for binary in (os.path.join(args.build, "tools", "ispace"), os.path.join(args.build, "tools", "ispaced")):
        if not os.access(binary, os.X_OK):
            why = f"{binary} is not built"
    if why is None and not os.access(driver_bin, os.X_OK):
        why = f"{driver_bin} is not built (the tests are part of the build: ISPACE_TESTS=ON)"
    if why is None:
        why = at.why_not_runnable(driver_bin, ("fio",))
    if why:
        print(f"space bench: skipped: {why}")
        return 0
    scratch = tempfile.mkdtemp(prefix="ispace-space-bench-", dir=s["dir"])
    size = s["size"]
    print(f"space bench: {s['rounds']} round(s), {size >> 20} MiB per write run, {s['seconds']} s per random "
          f"run, in {scratch}", flush=True)
    src = os.path.join(scratch, "src.bin")
    with open(src, "wb") as f:
        for _ in range(size // MIB):
            f.write(os.urandom(MIB))
    runs = {}  # name -> [MB/s]
    failed = None
    bench = None
    only_mirror = os.environ.get("BENCH_ONLY", "") == "mirror"
    only_checksum = os.environ.get("BENCH_ONLY", "") == "checksum"
    cpu = {}  # side -> process -> [CPU-seconds per GB]
    other = {}  # side -> [CPU-seconds per GB of the rest of the machine]
    try:
        bench = Bench(args.build, s, scratch)
        holder = None  # known once a space is attached

        def timed(side, run, seconds=None):
            """One run (MB/s) with the CPU it took per GB: `size` bytes, or `seconds` of the rate."""
            before = bench.cpu_snapshot(holder)
            busy = machine_busy_cpu()
            mbps = run()
            runs.setdefault(side, []).append(mbps)
            busy = machine_busy_cpu() - busy
            after = bench.cpu_snapshot(holder)
            gb = mbps * seconds / 1e3 if seconds else size / 1e9
            ours = 0.0
            for proc in after:
                ours += after[proc] - before[proc]
                cpu.setdefault(side, {}).setdefault(proc, []).append((after[proc] - before[proc]) / gb)
            # Everything else the machine did meanwhile: kernel threads (the loop device's, softirqs
            # run outside our processes) and whatever else runs on the machine. A round where this
            # is large was measured beside something else: `ispace cp` runs at about half its rate
            # when another process takes one of the two CPUs.
            other.setdefault(side, []).append(max(0.0, busy - ours) / gb)

        def checksum_rounds(k, p):
            """Checksum verification: the same reads of a plain mirror p and a checksummed one k, both written
            once in full (every block of k has its checksum, so every block read is checked). The order
            within a round alternates (p k, k p, ...): a machine that slows or speeds up over a pair then
            favours neither side."""
            for round_ in range(max(15, 5 * s["rounds"])):
                pair = [("read, plain mirror", p), ("read, --checksum mirror", k)]
                for side, dev in (pair if round_ % 2 == 0 else reversed(pair)):
                    timed(side, lambda: fio(dev, "read", "1M", 8, seconds=s["seconds"]), s["seconds"])
            if any(member["checksum_errors"] for member in bench.status("k")["members"]):
                raise RuntimeError("space k: checksum errors on a healthy mirror")

        if only_mirror:
            m = bench.attach("m", [bench.url("a", 0), bench.url("b", 0)])
            fio(m, "write", "1M", 8, size=size)
            bench.cp(src, bench.url("c", 0), size)
            holder = bench.holder_pid()
            for _ in range(s["rounds"]):
                timed("cp to one target", lambda: bench.cp(src, bench.url("c", 0), size))
                timed("mirror write", lambda: fio(m, "write", "1M", 8, size=size))
        elif only_checksum:
            k = bench.attach("k", [bench.url("a", 2), bench.url("b", 2)], checksum=True)
            p = bench.attach("p", [bench.url("a", 3), bench.url("b", 3)])
            for dev in (k, p):
                fio(dev, "write", "1M", 8, size=size)
            holder = bench.holder_pid()
            checksum_rounds(k, p)
        else:
            m = bench.attach("m", [bench.url("a", 0), bench.url("b", 0)])
            w = bench.attach("w", [bench.url("a", 1), bench.url("b", 1)], region="1G")
            k = bench.attach("k", [bench.url("a", 2), bench.url("b", 2)], checksum=True)
            p = bench.attach("p", [bench.url("a", 3), bench.url("b", 3)])
            for dev in (m, w, k, p):  # memory LUNs allocate on first write: fill them once
                fio(dev, "write", "1M", 8, size=size)
            # The same for the LUN `ispace cp` writes to: otherwise its first round pays the allocation
            # (a quarter of the speed of the others, measured), and the mirror's LUNs do not.
            bench.cp(src, bench.url("c", 0), size)
            holder = bench.holder_pid()
            # Healthy: the mirror against cp, and the bitmap's cost, in alternating rounds.
            for _ in range(s["rounds"]):
                timed("cp to one target", lambda: bench.cp(src, bench.url("c", 0), size))
                timed("mirror write", lambda: fio(m, "write", "1M", 8, size=size))
                for label, name, dev in (("rand write, 1 MiB regions", "m", m), ("rand write, one region", "w", w)):
                    # From clean regions, so that the run pays for marking them.
                    bench.wait(name, lambda st: st["dirty_regions"] == 0, 30, "the sweep clearing its regions")
                    runs.setdefault(label, []).append(fio(dev, "randwrite", "4k", 32, seconds=s["seconds"]))
            checksum_rounds(k, p)
            # Spaces w, k and p have members on B too: they go before B is stopped, so that nothing of theirs
            # meets the stopped target (no resync of theirs beside m's, no region locked by a whole-space window
            # later).
            for name in ("w", "k", "p"):
                bench.space("detach", name)
                del bench.devices[name]
            for round_ in range(s["rounds"]):
                runs.setdefault("healthy write", []).append(fio(m, "write", "1M", 8, size=size))
                # Degraded: B stops answering; a write finds out, the member is failed, then the timed run.
                b = bench.targets["b"]
                b.proc.send_signal(signal.SIGSTOP)
                subprocess.run(["dd", "if=/dev/zero", f"of={m}", "bs=4k", "count=1", "oflag=direct", "status=none"],
                               timeout=60)
                bench.wait("m", lambda st: st["members"][1]["state"] == "failed", 30, "member B failing")
                runs.setdefault("degraded write", []).append(fio(m, "write", "1M", 8, size=size))
                since = bench.log_length()
                b.proc.send_signal(signal.SIGCONT)
                bench.wait("m", lambda st: st["members"][1]["state"] == "active" and not st["resync"]["running"], 120,
                           "member B resyncing")
                rate, copied = bench.resync_rate(since)
                runs.setdefault("resync", []).append(rate)
                print(f"round {round_ + 1} done (resync moved {copied >> 20} MiB)", flush=True)
            bench.space("detach", "m")
            bench.devices.clear()
            for _ in range(s["rounds"]):
                lun_bytes = size + 8 * MIB
                runs.setdefault("cp member A to member B", []).append(
                    bench.cp(bench.url("a", 0), bench.url("b", 0), lun_bytes))
    except (RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError, KeyError) as e:
        failed = str(e)
    finally:
        if bench:
            bench.close()
        if failed and os.environ.get("BENCH_KEEP"):
            print(f"space bench: kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    if failed:
        print(f"space bench: failed: {failed}")
        return 1

    med = {k: statistics.median(v) for k, v in runs.items()}
    if only_checksum:
        a, b = runs["read, --checksum mirror"], runs["read, plain mirror"]
        paired = statistics.median([x / y for x, y in zip(a, b)])
        print(f"1M reads: --checksum {med['read, --checksum mirror']:.0f} MB/s {[round(x) for x in a]}, plain "
              f"{med['read, plain mirror']:.0f} MB/s {[round(x) for x in b]}: ratio of medians "
              f"{med['read, --checksum mirror'] / med['read, plain mirror']:.1%}, median of the rounds' ratios "
              f"{paired:.1%} (aim >= 95 %), load {os.getloadavg()[0]:.2f}")
        print_cpu(cpu, other)
        print(f"  CPU per GB read, --checksum / plain (median of the rounds' ratios): "
              f"{cpu_cost(cpu, 'read, --checksum mirror', 'read, plain mirror'):.1%}")
        return 0
    if only_mirror:
        ratio = med["mirror write"] / med["cp to one target"]
        print(f"mirror write {med['mirror write']:.0f} MB/s {[round(x) for x in runs['mirror write']]}, cp to one "
              f"target {med['cp to one target']:.0f} MB/s {[round(x) for x in runs['cp to one target']]}: "
              f"{ratio:.0%} (aim >= 80 %), load {os.getloadavg()[0]:.2f}")
        print_cpu(cpu, other)
        return 0
    rows = [
        ("mirror write vs cp to one target", "mirror write", "cp to one target", ">= 80 %"),
        ("degraded vs healthy mirror write", "degraded write", "healthy write", ">= 95 %"),
        ("4K random writes, 1 MiB regions vs one", "rand write, 1 MiB regions", "rand write, one region",
         ">= 95 % (cost <= 5 %)"),
        ("resync vs cp member A to member B", "resync", "cp member A to member B", ">= 80 %"),
        ("1M reads, --checksum vs plain mirror", "read, --checksum mirror", "read, plain mirror",
         ">= 95 % (cost <= 5 %)"),
    ]
    # "paired": the median of each round's own ratio, for the comparisons whose two sides run in the same
    # rounds one after the other (all but the resync, whose cp runs come after every round): a round's pair
    # shares the machine's state of that moment, so on a busy machine it moves less than either median.
    header = f"{'comparison':42} {'measured':>12} {'against':>12} {'ratio':>7} {'paired':>7}  aim"
    print("\n" + header + "\n" + "-" * len(header))
    table = []
    for title, a, b, aim in rows:
        ratio = med[a] / med[b] if med[b] else 0.0
        paired = None
        if a != "resync" and len(runs[a]) == len(runs[b]) and all(runs[b]):
            paired = statistics.median([x / y for x, y in zip(runs[a], runs[b])])
        shown = f"{paired:6.0%}" if paired is not None else "     -"
        print(f"{title:42} {med[a]:7.0f} MB/s {med[b]:7.0f} MB/s {ratio:6.0%} {shown}  {aim}")
        table.append({"comparison": title, "measured": a, "measured_MBps": med[a], "against": b,
                      "against_MBps": med[b], "ratio": ratio, "paired_ratio": paired, "aim": aim,
                      "runs": {a: runs[a], b: runs[b]}})
    print_cpu(cpu, other)
    checksum_cpu = cpu_cost(cpu, "read, --checksum mirror", "read, plain mirror")
    print(f"  CPU per GB read, --checksum / plain (median of the rounds' ratios): {checksum_cpu:.1%}")
    os.makedirs(s["out"], exist_ok=True)
    with open(os.path.join(s["out"], "space-latest.json"), "w") as f:
        json.dump({"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
                   "kernel": platform.release(), "cpus": os.cpu_count(), "load": os.getloadavg(), "settings": s,
                   "results": table, "checksum_read_cpu_ratio": checksum_cpu,
                   "cpu_s_per_gb": cpu, "rest_of_machine_cpu_s_per_gb": other}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
