#!/usr/bin/env python3
"""make bench: ispaced side by side with Debian's tgt (and istgt where it is installed), driven by the
same clients on the same kind of LUN file, in alternating rounds, beside the loopback limits measured in
the same run. docs/performance.md says what runs, how, and how to read the output.

Settings (environment, or make variables of the same names):
  BENCH_ROUNDS    alternating rounds per workload (default 5)
  BENCH_SECONDS   seconds per client run (default 5)
  BENCH_SIZE      size of each LUN file (default 1G)
  BENCH_QUICK=1   a smoke run of about two minutes: 1 round of 1 s, 256 MiB LUNs, 5 block sizes
  BENCH_BASELINE  another ispaced binary, run as one more alternating target (before/after a change)
  BENCH_DIR       where the LUN files go: a regular filesystem, never tmpfs (default /var/tmp)
  BENCH_OUT       where latest.json and latest.png go (default bench/results)

Usage: run_bench.py --build BUILD_DIR
Exit status: 0 all runs of ispaced (and the baseline) and of the limits succeeded; 1 some failed (the
table says FAILED there); 2 the bench refused to start (setup failed: it says why).
"""
import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_clients as clients  # noqa: E402
from bench_peers import (IspacedTarget, IstgtTarget, Iperf3Server, Procs, SetupError, TgtTarget,  # noqa: E402
                         proc_cpu_seconds, proc_rss_kib)
import bench_report as report  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
IQN_BASE = "iqn.2026-11.org.ispace"


# ---- settings ----


def parse_size(text):
    units = {"": 1, "K": KIB, "M": MIB, "G": GIB, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in units else ""
    try:
        return int(float(t[: len(t) - len(unit)]) * units[unit])
    except ValueError:
        raise SetupError(f"BENCH_SIZE={text}: expected a size such as 1G or 512M") from None


def env_int(name, default, minimum):
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < minimum:
        raise SetupError(f"{name}={text}: expected a whole number of at least {minimum}")
    return int(text)


def settings():
    quick = os.environ.get("BENCH_QUICK", "").strip() not in ("", "0", "no", "false")
    s = {
        "quick": quick,
        "rounds": env_int("BENCH_ROUNDS", 1 if quick else 5, 1),
        "seconds": env_int("BENCH_SECONDS", 1 if quick else 5, 1),
        "size": parse_size(os.environ.get("BENCH_SIZE") or ("256M" if quick else "1G")),
        "baseline": os.environ.get("BENCH_BASELINE", "").strip() or None,
        "dir": os.environ.get("BENCH_DIR", "").strip() or "/var/tmp",
        "out": os.environ.get("BENCH_OUT", "").strip() or os.path.join(HERE, "results"),
        "qd_sweep": [1, 2, 4, 8, 16, 32, 64],
        "bs_sweep": [4 * KIB << i for i in range(0, 9, 2 if quick else 1)],
        "idle_sessions": 64,
        "idle_connections": 1000,
    }
    if s["size"] < 64 * MIB or s["size"] % MIB:
        raise SetupError(f"BENCH_SIZE: {s['size']} bytes; expected a whole number of MiB, at least 64M")
    if s["baseline"] and not os.access(s["baseline"], os.X_OK):
        raise SetupError(f"BENCH_BASELINE={s['baseline']}: not an executable file")
    return s


# ---- workloads ----


def workloads(s):
    """Every distinct client run, in the order they run: the limits, the reads, then the writes (so the
    reads meet no dirty pages). A workload's rounds run back to back, the targets alternating."""
    w = [
        dict(key="limit_iperf3", label="iperf3, 1 stream", client="iperf3", metric="mibs", limit=True),
        dict(key="limit_pingpong", label="ping-pong 48 B / 4,144 B", client="pingpong", metric="rate", limit=True),
    ]
    for qd in s["qd_sweep"] + ([] if 1 in s["qd_sweep"] else [1]):
        w.append(dict(key=f"perf_rand_4k_qd{qd}", label=f"4K rand read QD{qd}", client="iscsi-perf", bs=4 * KIB,
                      qd=qd, random=True, metric="iops"))
    for bs in s["bs_sweep"] + ([] if MIB in s["bs_sweep"] else [MIB]):
        w.append(dict(key=f"perf_seq_{bs // KIB}k_qd16", label=f"{report.size_name(bs)} seq read QD16",
                      client="iscsi-perf", bs=bs, qd=16, random=False, metric="mibs"))
    for conns in (1, 2, 4):
        w.append(dict(key=f"ispace_rand_4k_qd32_c{conns}", label=f"4K rand read QD32, {conns} conn", client="ispace",
                      rw="randread", bs=4 * KIB, qd=32, connections=conns, sessions=1, metric="iops"))
    w.append(dict(key="ispace_rand_4k_qd32_s4", label="4K rand read, 4 sessions x QD32", client="ispace",
                  rw="randread", bs=4 * KIB, qd=32, connections=1, sessions=4, metric="iops"))
    w.append(dict(key="ispace_mix70_4k_qd32", label="4K 70/30 rand read/write QD32", client="ispace", rw="randrw",
                  rwmixread=70, bs=4 * KIB, qd=32, connections=1, sessions=1, metric="iops", writes=True))
    w.append(dict(key="qemu_rand_4k_qd32", label="4K rand write QD32", client="qemu-img", bs=4 * KIB, qd=32,
                  scattered=True, metric="iops", writes=True))
    w.append(dict(key="qemu_seq_1m_qd8", label="1M seq write QD8", client="qemu-img", bs=MIB, qd=8, scattered=False,
                  metric="mibs", writes=True))
    return w


CPU_WORKLOAD = "perf_rand_4k_qd32"  # the fixed read run whose target CPU time is divided by its I/Os


class Bench:
    def __init__(self, s, build):
        self.s = s
        self.procs = Procs()
        self.ispaced = os.path.join(build, "tools", "ispaced")
        self.ispace = os.path.join(build, "tools", "ispace")
        self.pingpong = os.path.join(build, "bench", "tcp_pingpong")
        self.targets = []
        self.notes = []
        self.results = {}  # workload key -> {target name or "limit": [Run, ...]}
        self.calibration = {}
        self.cycles = False
        self.scratch = None
        self.iperf = None
        self.page_cache = {}
        self.rss = {}
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.load = {"start": os.getloadavg()}

    # ---- setup: refuse to run, with a clear message, when anything is not as it must be ----

    def check_tools(self):
        for path in (self.ispaced, self.ispace, self.pingpong):
            if not os.access(path, os.X_OK):
                raise SetupError(f"{path} is not built (make build first)")
        for tool in ("tgtd", "tgtadm", "iscsi-perf", "qemu-img", "iperf3", "fincore"):
            if shutil.which(tool) is None:
                raise SetupError(f"{tool} is not installed (scripts/install-deps.sh installs it)")
        if shutil.which("gnuplot") is None:
            self.notes.append("gnuplot is not installed: no plot (scripts/install-deps.sh installs gnuplot-nox)")
        if shutil.which("istgt") is None:
            self.notes.append("istgt is not installed (Debian's istgt package): compared with tgt only")

    def check_dir(self):
        d = self.s["dir"]
        if not os.path.isdir(d):
            raise SetupError(f"BENCH_DIR={d}: no such directory")
        fstype = subprocess.run(["stat", "-f", "-c", "%T", d], capture_output=True, text=True).stdout.strip()
        if fstype in ("tmpfs", "ramfs"):
            raise SetupError(f"BENCH_DIR={d} is {fstype}: io_uring hands every tmpfs read to a kernel worker, "
                             "which measures tmpfs rather than the target (docs/configuration.md); use a "
                             "regular filesystem such as /var/tmp")
        self.fstype = fstype
        n = 3 + (1 if self.s["baseline"] else 0)
        need = n * self.s["size"] + GIB
        free = shutil.disk_usage(d).free
        if free < need:
            raise SetupError(f"BENCH_DIR={d} has {free / GIB:.1f} GiB free; {n} LUN files of "
                             f"{self.s['size'] / GIB:.2f} GiB and 1 GiB to spare need {need / GIB:.1f} GiB")

    def make_lun(self, name):
        """A regular file, filled with data (one random MiB, repeated) so reads find cached pages, not
        holes, then written back (fsync) so that no writeback runs while the first targets are measured."""
        path = os.path.join(self.scratch, f"{name}.img")
        block = os.urandom(MIB)
        try:
            with open(path, "wb") as f:
                for _ in range(self.s["size"] // MIB):
                    f.write(block)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise SetupError(f"cannot write the LUN file {path}: {e}") from None
        return path

    def cached_fraction(self, path):
        r = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", path],
                           capture_output=True, text=True)
        try:
            return int(r.stdout.split()[0]) / os.path.getsize(path)
        except (ValueError, IndexError, OSError):
            return None

    def setup(self):
        self.check_tools()
        self.check_dir()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = self.s["idle_connections"] + 512
        if soft < want:
            if hard != resource.RLIM_INFINITY and hard < want:
                raise SetupError(f"the open-file limit ({hard}) is below the {want} the idle-connection test needs")
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        self.scratch = tempfile.mkdtemp(prefix="ispace-bench-", dir=self.s["dir"])
        self.cycles = clients.perf_cycles_supported() if shutil.which("perf") else False
        if not self.cycles:
            self.notes.append("perf stat -e cycles is not supported here (no PMU in this VM, or no perf): CPU per "
                              "I/O is the target's task-clock time (utime + stime from /proc/PID/stat)")

        specs = [("ispaced", "ispaced"), ("tgt", "tgt")]
        if shutil.which("istgt"):
            specs.append(("istgt", "istgt"))
        if self.s["baseline"]:
            specs.append(("baseline", "baseline"))
        for name, kind in specs:
            lun = self.make_lun(name)
            iqn = f"{IQN_BASE}:bench-{name}"
            if kind == "ispaced":
                t = IspacedTarget(self.procs, name, self.ispaced, lun, self.scratch, iqn)
            elif kind == "baseline":
                t = IspacedTarget(self.procs, name, os.path.abspath(self.s["baseline"]), lun, self.scratch, iqn)
            elif kind == "tgt":
                t = TgtTarget(self.procs, name, lun, self.scratch, iqn)
            else:
                t = IstgtTarget(self.procs, name, lun, self.scratch, iqn)
            try:
                t.start()
                t.block_size, t.lun_bytes = clients.ispace_readcap(self.ispace, t.url)
            except (SetupError, RuntimeError, OSError) as e:
                if kind != "istgt":
                    raise SetupError(f"{name}: {e}") from None
                # istgt is a wanted third peer, not a needed one.
                self.notes.append(f"istgt did not start or serve its LUN, so it is left out: {e}")
                t.stop()
                os.unlink(lun)
                continue
            if t.lun_bytes != self.s["size"]:
                raise SetupError(f"{name} serves {t.lun_bytes} bytes, not the {self.s['size']} of its file")
            self.targets.append(t)
        self.iperf = Iperf3Server(self.procs, self.scratch)
        for t in self.targets:
            self.page_cache[t.name] = {"start": self.cached_fraction(t.lun_path)}
            if (self.page_cache[t.name]["start"] or 0) < 0.95:
                self.notes.append(f"{t.name}'s LUN file is only {100 * (self.page_cache[t.name]['start'] or 0):.0f}% "
                                  "in the page cache after the fill (memory pressure?): reads may hit the disk")

    # ---- the runs ----

    def run_one(self, w, t, round_no):
        """One client run of workload w against target t (or a limit when t is None)."""
        s = self.s
        if t is None:
            if w["client"] == "iperf3":
                return clients.iperf3(self.procs, self.iperf.port, s["seconds"])
            return clients.pingpong(self.procs, self.pingpong, s["seconds"])
        if not t.alive():
            return clients.Run.failed(t.exit_note())
        counter = clients.CyclesCounter(self.procs, t.pid) if self.cycles and w["key"] == CPU_WORKLOAD else None
        cpu0 = proc_cpu_seconds(t.pid)
        if w["client"] == "iscsi-perf":
            r = clients.iscsi_perf(self.procs, t.url, t.block_size, w["bs"], w["qd"], w["random"], s["seconds"])
        elif w["client"] == "qemu-img":
            count = self.calibration[w["key"]].get(t.name, {}).get("count")
            if count is None:
                return clients.Run.failed(f"{t.name} was not running when the write count was calibrated")
            r = clients.qemu_bench_write(self.procs, t.url, t.lun_bytes, w["bs"], w["qd"], w["scattered"], count)
        else:
            r = clients.ispace_bench(self.procs, self.ispace, t.url, w["rw"], w["bs"], w["qd"], s["seconds"],
                                     w["connections"], w["sessions"], w.get("rwmixread"))
        if t.alive():
            r["target_cpu_s"] = proc_cpu_seconds(t.pid) - cpu0
        if counter is not None:
            r["target_cycles"] = counter.stop()
        if not t.alive():
            return clients.Run.failed(f"{t.exit_note()} during the run", **{k: v for k, v in r.items() if k != "ok"})
        if r["ok"] and w["client"] == "ispace" and r.get("connections", 1) < w["connections"]:
            return clients.Run(ok=False, na=True, error=f"{t.name} allows {r['connections']} connection(s) per session")
        if w.get("writes"):
            # Written back before the next target runs, so that no run pays for another's dirty pages.
            r["writeback_s"] = self.writeback(t)
        return r

    def calibrate(self, w):
        """qemu-img bench runs a count, not a time: a short trial on each target sets the count that
        makes one of its runs last about BENCH_SECONDS (one count for all would make a target ten times
        slower run ten times longer). The rate is count / qemu-img's own elapsed time either way."""
        trial = 2000 if w["bs"] <= 64 * KIB else 64
        cal = self.calibration[w["key"]] = {}
        for t in self.targets:
            if not t.alive():
                continue
            r = clients.qemu_bench_write(self.procs, t.url, t.lun_bytes, w["bs"], w["qd"], w["scattered"], trial)
            self.writeback(t)
            if r["ok"]:
                cal[t.name] = {"trial_count": trial, "trial_iops": r["iops"],
                               "count": max(trial, int(r["iops"] * self.s["seconds"]))}
            else:
                # The runs themselves then fail or succeed on their own; the trial's count is as good as any.
                cal[t.name] = {"trial_count": trial, "count": trial, "trial_error": r["error"]}

    def writeback(self, t):
        """fsync a target's LUN file, so that the next run (another target's) meets no dirty pages."""
        t0 = time.time()
        fd = os.open(t.lun_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return round(time.time() - t0, 3)

    def run(self):
        works = workloads(self.s)
        total = sum(self.s["rounds"] * (1 if w.get("limit") else len(self.targets)) for w in works)
        done = 0
        t_start = time.time()
        for w in works:
            if w["client"] == "qemu-img":
                self.calibrate(w)
            runs = self.results.setdefault(w["key"], {})
            for rnd in range(self.s["rounds"]):
                for t in [None] if w.get("limit") else self.targets:
                    name = "limit" if t is None else t.name
                    prev = runs.get(name, [])
                    if prev and prev[-1].get("na"):
                        r = clients.Run(ok=False, na=True, error=prev[-1]["error"])  # not asked again
                    else:
                        try:
                            r = self.run_one(w, t, rnd)
                        except (OSError, RuntimeError, ValueError, KeyError) as e:
                            # A fault of the harness around one run (a /proc file gone with its
                            # process, say) fails that run, not the bench.
                            r = clients.Run.failed(f"harness: {type(e).__name__}: {e}")
                    r["round"] = rnd + 1
                    runs.setdefault(name, []).append(r)
                    done += 1
                    eta = (time.time() - t_start) / done * (total - done)
                    print(f"[{done}/{total}, ~{eta / 60:.0f} min left] {w['label']:<34} {name:<9} round {rnd + 1}: "
                          f"{report.run_summary(w, r)}", file=sys.stderr, flush=True)

    # ---- memory of idle sessions and connections (ispaced and the baseline) ----

    def measure_rss(self):
        for t in [t for t in self.targets if t.kind == "ispaced"]:
            t.stop()
        for t in [t for t in self.targets if t.kind == "ispaced"]:
            self.rss[t.name] = out = {}
            for label, count, per_initiator, read_once in (
                    ("sessions", self.s["idle_sessions"], self.s["idle_sessions"], True),
                    ("connections", self.s["idle_connections"], 64, False)):
                fresh = IspacedTarget(self.procs, f"{t.name}-rss-{label}", t.binary, t.lun_path, self.scratch, t.iqn)
                idle = []
                try:
                    fresh.start()
                    time.sleep(0.5)
                    base = proc_rss_kib(fresh.pid)
                    t0 = time.time()
                    idle = clients.open_idle_sessions("127.0.0.1", fresh.port, fresh.iqn, count, per_initiator,
                                                      read_once, t.block_size)
                    login_s = time.time() - t0
                    time.sleep(1.0)
                    rss = proc_rss_kib(fresh.pid)
                    alive = clients.still_open(idle)
                    if alive != count:
                        out[label] = {"ok": False, "error": f"{count - alive} of {count} connections were closed"}
                    else:
                        out[label] = {"ok": True, "count": count, "rss_idle_kib": base, "rss_kib": rss,
                                      "per_kib": (rss - base) / count, "login_s": round(login_s, 2)}
                except (SetupError, RuntimeError, OSError) as e:
                    out[label] = {"ok": False, "error": str(e)}
                finally:
                    clients.close_all(idle)
                    fresh.stop()
                print(f"RSS {t.name}, {count} idle {label}: {report.rss_summary(out[label])}", file=sys.stderr,
                      flush=True)

    # ---- what the run was, for the JSON ----

    def machine(self):
        def cmd(*argv):
            try:
                return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=ROOT).stdout.strip()
            except (OSError, subprocess.TimeoutExpired):
                return None

        model = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        versions = {}
        for pkg in ("tgt", "istgt", "libiscsi-bin", "qemu-utils", "iperf3", "linux-perf"):
            versions[pkg] = cmd("dpkg-query", "-W", "-f", "${Version}", pkg) or None
        return {
            "cpu_model": model,
            "cores": os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
            "kernel": platform.release(),
            "date": self.started.isoformat(timespec="seconds"),
            "git_commit": cmd("git", "rev-parse", "HEAD"),
            "git_dirty": bool(cmd("git", "status", "--porcelain", "--untracked-files=no")),
            "loadavg_start": self.load["start"],
            "loadavg_end": os.getloadavg(),
            "lun_dir": self.s["dir"],
            "lun_dir_fstype": getattr(self, "fstype", None),
            "packages": versions,
            "cpu_per_io_source": "perf stat -e cycles" if self.cycles else "task-clock (/proc/PID/stat utime+stime)",
        }

    def json_doc(self, interrupted):
        works = {w["key"]: w for w in workloads(self.s)}
        doc = {
            "machine": self.machine(),
            "settings": {k: v for k, v in self.s.items()},
            "interrupted": interrupted,
            "targets": [{"name": t.name, "kind": t.kind, "url": t.url, "block_size": t.block_size,
                         "binary": getattr(t, "binary", None) or t.kind, "lun_file_bytes": t.lun_bytes}
                        for t in self.targets],
            "notes": self.notes,
            "page_cache_resident": self.page_cache,
            "qemu_img_counts": self.calibration,
            "workloads": {},
            "rss": self.rss,
        }
        for key, runs in self.results.items():
            w = works[key]
            doc["workloads"][key] = {
                "label": w["label"], "client": w["client"], "metric": w["metric"],
                "params": {k: v for k, v in w.items() if k not in ("key", "label", "client", "metric")},
                "median": {name: report.median(rs, w["metric"]) for name, rs in runs.items()},
                "runs": runs,
            }
        doc["summary"] = report.summary(doc, CPU_WORKLOAD)
        return doc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"), help="the build directory (default build/)")
    args = ap.parse_args()

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    try:
        s = settings()
    except SetupError as e:
        print(f"make bench: refusing to run: {e}", file=sys.stderr)
        return 2
    bench = Bench(s, os.path.abspath(args.build))
    interrupted = False
    status = 0
    try:
        bench.setup()
        peers = ", ".join(t.name for t in bench.targets)
        print(f"make bench: {peers}; {s['rounds']} round(s) x {s['seconds']} s per workload; LUN files of "
              f"{report.size_name(s['size'])} in {bench.scratch} ({bench.fstype})" +
              ("; QUICK (a smoke run)" if s["quick"] else ""), file=sys.stderr, flush=True)
        for note in bench.notes:
            print(f"note: {note}", file=sys.stderr)
        bench.run()
        for t in bench.targets:
            bench.page_cache[t.name]["end"] = bench.cached_fraction(t.lun_path)
        bench.measure_rss()
    except SetupError as e:
        print(f"make bench: refusing to run: {e}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt as e:
        print(f"make bench: interrupted ({e or 'Ctrl-C'}); stopping every process it started", file=sys.stderr)
        interrupted = True
        status = 130
    finally:
        # A second Ctrl-C must not cut the cleanup short (setpriv's pdeathsig would still end the
        # servers, but without tgtd's orderly exit).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.procs.cleanup()
        if bench.scratch:
            logs = os.path.join(s["out"], "logs")
            shutil.rmtree(logs, ignore_errors=True)  # this run's logs only
            os.makedirs(logs)
            for name in os.listdir(bench.scratch):
                if name.endswith(".log") or name.endswith(".conf"):
                    shutil.copy(os.path.join(bench.scratch, name), os.path.join(logs, name))
            shutil.rmtree(bench.scratch, ignore_errors=True)
    if status == 2 or not bench.results:
        return status
    doc = bench.json_doc(interrupted)
    os.makedirs(s["out"], exist_ok=True)
    json_path = os.path.join(s["out"], "latest.json")
    with open(json_path, "w") as f:
        json.dump(doc, f, indent=1)
    print(report.table(doc))
    png = report.plot(doc, s["out"], os.path.join(HERE, "plot.gp"))
    print(f"\nraw figures and machine info: {json_path}" + (f"\nplot: {png}" if png else ""))
    if status == 0 and doc["summary"]["own_failures"]:
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
