#!/usr/bin/env python3
"""make bench, attach part: the attach path (a device served through FUSE + a loop device by our
runtime) against a raw loop device on the same local file, with fio, in alternating rounds.

  raw loop         losetup --direct-io=on FILE                       the kernel alone
  attach (file)    FILE,direct through attach_driver → FUSE → loop   the same file through our path
  attach (memory)  memory:SIZE through attach_driver → FUSE → loop   our path with no disk under it

Workloads (fio, libaio, O_DIRECT on the block device): 1 MiB sequential read and write at QD 4,
4 KiB random read and write at QD 32. docs/dataspaces.md ("Attach") records figures and how to read them.

Settings (environment, as for run_bench.py): BENCH_ROUNDS (default 3), BENCH_SECONDS (default 5),
BENCH_SIZE (default 1G), BENCH_QUICK=1 (1 round of 2 s on 256 MiB), BENCH_DIR (default /var/tmp),
BENCH_OUT (default bench/results: attach-latest.json goes there).

Usage: attach_bench.py --build BUILD_DIR
Exit status: 0 done, or skipped (not root, no FUSE or loop devices, no fio, attach_driver not built:
it says why); 1 a run failed.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "system"))
import attach_testlib as at  # noqa: E402

MIB = 1 << 20
WORKLOADS = [  # name, fio rw, block size, queue depth
    ("seq read 1M QD4", "read", "1M", 4),
    ("seq write 1M QD4", "write", "1M", 4),
    ("rand read 4K QD32", "randread", "4k", 32),
    ("rand write 4K QD32", "randwrite", "4k", 32),
]


def size_of(text):
    units = {"K": 1 << 10, "M": MIB, "G": 1 << 30}
    t = text.strip().upper()
    return int(t[:-1]) * units[t[-1]] if t[-1:] in units else int(t)


def settings(quick_size="256M", full_size="1G"):
    """make bench's settings from the environment (BENCH_QUICK, BENCH_ROUNDS, ...); the data-space
    bench (space_bench.py) shares them with its own default sizes."""
    quick = os.environ.get("BENCH_QUICK", "").strip() not in ("", "0", "no", "false")
    return {
        "rounds": int(os.environ.get("BENCH_ROUNDS") or (1 if quick else 3)),
        "seconds": int(os.environ.get("BENCH_SECONDS") or (2 if quick else 5)),
        "size": size_of(os.environ.get("BENCH_SIZE") or (quick_size if quick else full_size)),
        "dir": os.environ.get("BENCH_DIR") or "/var/tmp",
        "out": os.environ.get("BENCH_OUT") or os.path.join(HERE, "results"),
        "quick": quick,
    }


def fio(device, rw, bs, qd, seconds):
    """(MB/s, IOPS) of one fio run on the block device."""
    r = subprocess.run(["fio", "--name=bench", f"--filename={device}", "--direct=1", "--ioengine=libaio",
                        f"--rw={rw}", f"--bs={bs}", f"--iodepth={qd}", f"--runtime={seconds}", "--time_based",
                        "--randrepeat=0", "--norandommap", "--output-format=json"],
                       capture_output=True, text=True, timeout=seconds * 10 + 60)
    if r.returncode != 0:
        raise RuntimeError(f"fio on {device}: {r.stderr.strip()}")
    job = json.loads(r.stdout)["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    return side["bw_bytes"] / 1e6, side["iops"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", default="build")
    args = parser.parse_args()
    s = settings()
    driver_bin = os.path.join(args.build, "tests", "system", "attach_driver")
    if not os.access(driver_bin, os.X_OK):
        why = f"{driver_bin} is not built (the tests are part of the build: ISPACE_TESTS=ON)"
    else:
        why = at.why_not_runnable(driver_bin, ("fio", "losetup"))
    if why:
        print(f"attach bench: skipped: {why}")
        return 0
    scratch = tempfile.mkdtemp(prefix="ispace-attach-bench-", dir=s["dir"])
    image = os.path.join(scratch, "disk.img")
    print(f"attach bench: {s['rounds']} round(s) of {s['seconds']} s per run, {s['size'] >> 20} MiB file in "
          f"{scratch}", flush=True)
    # Written, not sparse: reads of a hole would cost the raw loop device no disk I/O at all.
    subprocess.run(["dd", "if=/dev/zero", f"of={image}", "bs=1M", f"count={s['size'] // MIB}", "oflag=direct",
                    "status=none"], check=True)
    raw = None
    driver = None
    results = {}  # (workload, path) -> [(MB/s, IOPS)]
    failed = None
    try:
        raw = subprocess.run(["losetup", "--direct-io=on", "--show", "-f", image], capture_output=True, text=True,
                             check=True).stdout.strip()
        driver = at.AttachDriver(driver_bin, ["--attach", f"{image},direct", "--attach",
                                              f"memory:{s['size'] >> 20}M", "--reactors", "1",
                                              "--run-dir", os.path.join(scratch, "run")],
                                 os.path.join(scratch, "driver.log")).start()
        (attached_file, _), (attached_memory, _) = driver.attached
        # A memory device allocates on first write: fill it, so that its rounds measure the path.
        subprocess.run(["dd", "if=/dev/zero", f"of={attached_memory}", "bs=1M", f"count={s['size'] // MIB}",
                        "oflag=direct", "status=none"], check=True)
        paths = [("raw loop", raw), ("attach (file)", attached_file), ("attach (memory)", attached_memory)]
        for round_ in range(s["rounds"]):
            # raw, file, memory; then memory, file, raw: the two runs over the file stay side by side, and
            # neither always follows the run that leaves the disk idle (the host's cache and other guests
            # move this VM's disk by a factor of three from one minute to the next).
            order = paths if round_ % 2 == 0 else list(reversed(paths))
            for name, rw, bs, qd in WORKLOADS:
                for label, device in order:
                    results.setdefault((name, label), []).append(fio(device, rw, bs, qd, s["seconds"]))
            print(f"round {round_ + 1} done", flush=True)
    except (RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        failed = str(e)
    finally:
        if driver:
            driver.quit()
            driver.kill()
        if raw:
            subprocess.run(["losetup", "-d", raw])
        shutil.rmtree(scratch, ignore_errors=True)

    if failed:
        print(f"attach bench: failed: {failed}")
        return 1

    def median(name, label):
        runs = results[(name, label)]
        return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)

    # ratio: of the medians; paired: the median of each round's own ratio (a round's two runs over the file
    # share the disk's state of that minute, so it is the steadier figure when the disk's speed moves).
    header = (f"{'workload':22} {'raw loop':>20} {'attach (file)':>20} {'ratio':>7} {'paired':>7} "
              f"{'attach (memory)':>20}")
    print("\n" + header + "\n" + "-" * len(header))
    table = []
    for name, rw, bs, qd in WORKLOADS:
        raw_bw, raw_iops = median(name, "raw loop")
        file_bw, file_iops = median(name, "attach (file)")
        mem_bw, mem_iops = median(name, "attach (memory)")
        ratio = file_bw / raw_bw if raw_bw else 0.0
        rounds = [f[0] / r[0] for r, f in zip(results[(name, "raw loop")], results[(name, "attach (file)")]) if r[0]]
        paired = statistics.median(rounds) if rounds else 0.0
        cell = lambda bw, iops: f"{bw:8.0f} MB/s {iops / 1000:5.1f}k"  # noqa: E731
        print(f"{name:22} {cell(raw_bw, raw_iops):>20} {cell(file_bw, file_iops):>20} {ratio:6.0%} "
              f"{paired:6.0%} {cell(mem_bw, mem_iops):>20}")
        table.append({"workload": name, "raw_MBps": raw_bw, "raw_iops": raw_iops, "attach_file_MBps": file_bw,
                      "attach_file_iops": file_iops, "ratio": ratio, "ratio_paired": paired,
                      "round_ratios": rounds, "raw_MBps_rounds": [r[0] for r in results[(name, "raw loop")]],
                      "attach_file_MBps_rounds": [r[0] for r in results[(name, "attach (file)")]],
                      "attach_memory_MBps": mem_bw, "attach_memory_iops": mem_iops})
    os.makedirs(s["out"], exist_ok=True)
    with open(os.path.join(s["out"], "attach-latest.json"), "w") as f:
        json.dump({"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
                   "kernel": platform.release(), "cpus": os.cpu_count(), "settings": s, "results": table}, f,
                  indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
