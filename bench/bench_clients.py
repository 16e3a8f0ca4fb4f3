"""The clients make bench drives every target with, and what each run's output is taken to mean.

A run either succeeds — the client exited 0, printed its result, and did a non-zero number of I/Os —
and gives a figure, or fails and gives none: its `error` says why, and the report prints FAILED.
"""
import json
import math
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "system"))
import iscsi_raw  # noqa: E402  (the system tests' raw-PDU initiator: independent of our own codec)

MIB = 1 << 20


class Run(dict):
    """One client run's result: ok, and then iops / mibs / p99_us / ios / seconds, or error."""

    @staticmethod
    def failed(error, **extra):
        return Run(ok=False, error=error, **extra)


def run_client(procs, argv, timeout):
    """Runs a client to the end (killed after `timeout` s); returns (returncode, stdout+stderr text)."""
    proc = procs.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        procs.stop(proc)
        return None, f"timed out after {timeout} s"
    procs.stop(proc)
    return proc.returncode, out


def tail(text, n=300):
    text = text.replace("\r", "\n").strip()
    return text[-n:]


# ---- iscsi-perf (libiscsi-bin): reads ----

PERF_RE = re.compile(r"iops average (\d+)")


def iscsi_perf(procs, url, block_size, bs, qd, random, seconds):
    """libiscsi's iscsi-perf: READ(16)s of `bs` bytes, `qd` in flight, random or sequential, for
    `seconds`. It prints a running "iops average"; the last one is over the whole run."""
    if bs % block_size:
        return Run.failed(f"{bs} bytes is not a multiple of the {block_size}-byte block")
    argv = ["iscsi-perf", "-t", str(seconds), "-m", str(qd), "-b", str(bs // block_size)]
    if random:
        argv.append("-r")
    rc, out = run_client(procs, argv + [url], seconds + 60)
    found = PERF_RE.findall(out)
    if rc != 0:
        return Run.failed(f"iscsi-perf exit status {rc}: {tail(out)}")
    if not found or int(found[-1]) <= 0:
        return Run.failed(f"iscsi-perf reported no I/O: {tail(out)}")
    iops = int(found[-1])
    return Run(ok=True, iops=iops, mibs=iops * bs / MIB, ios=iops * seconds, seconds=seconds)


# ---- qemu-img bench (qemu-utils + qemu-block-extra, libiscsi underneath): writes ----

QEMU_RE = re.compile(r"Run completed in ([0-9.]+) seconds")


def scattered_step(lun_bytes, bs):
    """A step for qemu-img bench, which has no random mode: it writes at offset, offset + step, ...
    modulo the image size. A step of k blocks with gcd(k, blocks) = 1, near the golden section of the
    LUN, visits every block once per pass and puts each write far from the one before it."""
    blocks = lun_bytes // bs
    k = max(1, int(blocks * 0.6180339887)) | 1
    while math.gcd(k, blocks) != 1:
        k += 2
    return k * bs


def qemu_bench_write(procs, url, lun_bytes, bs, qd, scattered, count):
    """`qemu-img bench -w`: `count` writes of `bs` bytes, `qd` in flight, sequential or scattered (see
    scattered_step). cache=none: no FUA per write, as a VM disk is usually set up."""
    argv = ["qemu-img", "bench", "-w", "-f", "raw", "-t", "none", "-c", str(count), "-d", str(qd), "-s", str(bs)]
    if scattered:
        argv += ["-S", str(scattered_step(lun_bytes, bs))]
    rc, out = run_client(procs, argv + [url], 600)
    m = QEMU_RE.search(out)
    if rc != 0:
        return Run.failed(f"qemu-img bench exit status {rc}: {tail(out)}")
    if not m or float(m.group(1)) <= 0:
        return Run.failed(f"qemu-img bench reported no run: {tail(out)}")
    secs = float(m.group(1))
    iops = count / secs
    return Run(ok=True, iops=iops, mibs=iops * bs / MIB, ios=count, seconds=secs)


# ---- ispace bench (tools/ispace): mixes, MC/S, several sessions, latency percentiles ----

ISPACE_HEAD_RE = re.compile(r"connections=(\d+) .*time=([0-9.]+)s")
ISPACE_IOPS_RE = re.compile(r"IOPS:\s+(\d+)")
ISPACE_P99_RE = re.compile(r"p99 ([0-9.]+) us")


def parse_ispace_bench(rc, out, bs):
    head, iops, p99 = ISPACE_HEAD_RE.search(out), ISPACE_IOPS_RE.search(out), ISPACE_P99_RE.search(out)
    if rc != 0:
        return Run.failed(f"ispace bench exit status {rc}: {tail(out)}")
    if not (head and iops and p99) or int(iops.group(1)) <= 0:
        return Run.failed(f"ispace bench reported no I/O: {tail(out)}")
    secs = float(head.group(2))
    n = int(iops.group(1))
    return Run(ok=True, iops=n, mibs=n * bs / MIB, ios=round(n * secs), seconds=secs, p99_us=float(p99.group(1)),
               connections=int(head.group(1)))


def ispace_bench(procs, ispace, url, rw, bs, qd, seconds, connections=1, sessions=1, rwmixread=None):
    """`ispace bench`, in `sessions` processes at once (one session each, each its own initiator name)
    when sessions > 1: their IOPS add up; the run fails if any of them fails."""
    argv_tail = ["bench", url, "--rw", rw, "--bs", str(bs), "--qd", str(qd), "--time", str(seconds),
                 "--connections", str(connections)]
    if rwmixread is not None:
        argv_tail += ["--rwmixread", str(rwmixread)]
    running = []
    for i in range(sessions):
        argv = [ispace, "--initiator", f"iqn.2026-11.org.ispace:bench-s{i}"] + argv_tail
        running.append(procs.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   errors="replace"))
    runs = []
    deadline = time.time() + seconds + 60
    for proc in running:
        try:
            out, _ = proc.communicate(timeout=max(1, deadline - time.time()))
            runs.append(parse_ispace_bench(proc.returncode, out, bs))
        except subprocess.TimeoutExpired:
            runs.append(Run.failed(f"ispace bench timed out after {seconds + 60} s"))
        procs.stop(proc)
    bad = [r for r in runs if not r["ok"]]
    if bad:
        return Run.failed(f"{len(bad)} of {sessions} session(s) failed: {bad[0]['error']}")
    if sessions == 1:
        return runs[0]
    # The sessions start and stop within a few ms of each other; each rate is over its own run.
    iops = sum(r["iops"] for r in runs)
    return Run(ok=True, iops=iops, mibs=iops * bs / MIB, ios=sum(r["ios"] for r in runs),
               seconds=max(r["seconds"] for r in runs), p99_us=max(r["p99_us"] for r in runs),
               connections=runs[0]["connections"], per_session_iops=[r["iops"] for r in runs])


def ispace_readcap(ispace, url):
    """(block size, bytes) of a LUN, through `ispace readcap`: also proves the target serves it."""
    r = subprocess.run([ispace, "readcap", url], capture_output=True, text=True, timeout=60)
    bs = re.search(r"block size:\s+(\d+)", r.stdout)
    size = re.search(r"size:\s+(\d+) bytes", r.stdout)
    if r.returncode != 0 or not bs or not size:
        raise RuntimeError(f"ispace readcap {url} failed (status {r.returncode}): {(r.stderr or r.stdout).strip()}")
    return int(bs.group(1)), int(size.group(1))


# ---- the two limits ----


def iperf3(procs, port, seconds):
    """Single-stream TCP bandwidth over loopback: what one iSCSI connection can at best carry."""
    rc, out = run_client(procs, ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"], seconds + 30)
    if rc != 0:
        return Run.failed(f"iperf3 exit status {rc}: {tail(out)}")
    try:
        bps = json.loads(out)["end"]["sum_received"]["bits_per_second"]
    except (ValueError, KeyError, TypeError):
        return Run.failed(f"iperf3 printed no result: {tail(out)}")
    if not bps > 0:
        return Run.failed("iperf3 moved no data")
    return Run(ok=True, mibs=bps / 8 / MIB, seconds=seconds)


PINGPONG_RE = re.compile(r"pingpong: (\d+) round trips in ([0-9.]+) s: (\d+) round trips/s")


def pingpong(procs, binary, seconds):
    """One 48-byte request and one 4,144-byte answer per round trip: the QD1 4K read's floor."""
    rc, out = run_client(procs, [binary, "--seconds", str(seconds)], seconds + 30)
    m = PINGPONG_RE.search(out)
    if rc != 0 or not m or int(m.group(1)) <= 0:
        return Run.failed(f"tcp_pingpong exit status {rc}: {tail(out)}")
    return Run(ok=True, rate=int(m.group(3)), us=1e6 / int(m.group(3)), seconds=float(m.group(2)))


# ---- CPU cycles inside a target ----


def perf_cycles_supported():
    """True if `perf stat -e cycles` counts here (a VM often has no PMU: perf then says <not supported>)."""
    try:
        r = subprocess.run(["perf", "stat", "-x", ",", "-e", "cycles", "true"], capture_output=True, text=True,
                           timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    line = next((l for l in r.stderr.splitlines() if ",cycles" in l), "")
    return r.returncode == 0 and line.split(",")[0].strip().isdigit()


class CyclesCounter:
    """`perf stat -e cycles -p PID` around a run; stop() returns the count or None."""

    def __init__(self, procs, pid):
        self.procs = procs
        self.proc = procs.spawn(["perf", "stat", "-x", ",", "-e", "cycles", "-p", str(pid)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(0.2)  # perf attaches to every thread before the client starts

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.procs.stop(self.proc)
            return None
        self.procs.stop(self.proc)
        line = next((l for l in err.splitlines() if ",cycles" in l), "")
        value = line.split(",")[0].strip()
        return int(value) if value.isdigit() else None


# ---- idle sessions and connections, for ispaced's memory per session ----


def open_idle_sessions(host, port, iqn, count, per_initiator, read_once, block_size=512):
    """`count` connections that each log in (a session of their own, a raw-PDU login independent of
    our initiator) and then sit. ispaced admits 64 sessions per initiator name, so names change every
    `per_initiator`. With read_once, each session reads 4 KiB first, as a real initiator's
    first commands would. Returns the sockets' clients; raises on any refused login."""
    clients = []
    try:
        for i in range(count):
            c = iscsi_raw.Client(host, port, initiator=f"iqn.2026-11.org.ispace:idle-{i // per_initiator}",
                                 isid=bytes([0x80, 0, 0x17, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF]),
                                 timeout=15)
            clients.append(c)
            status = c.login(iqn)
            if status != (0, 0):
                raise RuntimeError(f"login {i + 1} of {count} refused: status class {status[0]:#x}, "
                                   f"detail {status[1]:#x}")
            if read_once:
                # READ(10) of 4 KiB at LBA 0. A new session's first command may meet the unit attention
                # of a power-on or reset (CHECK CONDITION), which a real initiator also just retries.
                cdb = bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 4096 // block_size, 0])
                for _ in range(3):
                    st, data = c.wait_status(c.scsi(cdb, read_length=4096))
                    if st != 0x02:
                        break
                if st != 0 or len(data) != 4096:
                    raise RuntimeError(f"session {i + 1}: READ(10) status {st:#x}, {len(data)} bytes")
    except BaseException:
        close_all(clients)
        raise
    return clients


def still_open(clients):
    """How many of the connections the target has not closed (a NOP-In waiting counts as open)."""
    n = 0
    for c in clients:
        try:
            r, _, _ = select.select([c.sock], [], [], 0)
            if not r or c.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                n += 1
        except (BlockingIOError, InterruptedError):
            n += 1
        except OSError:
            pass
    return n


def close_all(clients):
    for c in clients:
        c.close()
