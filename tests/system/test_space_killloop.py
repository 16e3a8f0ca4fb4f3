#!/usr/bin/env python3
"""Issue 14's kill loop: kill -9 of the process holding a thin data-space, at random instants while files
are written, synced and deleted on the ext4 it holds and snapshots of the space are taken and deleted,
again and again. After each kill the space is attached again (its labels and its map assembled from the
members), the filesystem mounts (its journal replayed, as after any crash), fsck.ext4 -fn is clean, every
file whose fsync returned before the kill reads back byte for byte, every snapshot whose `ispace space
snapshot` returned is listed and none whose `snapshot-delete` returned is.

The writer is a child process that prints a file's name and digest only once its fsync (and the fsync of
its directory) returned, and forgets a file before it starts deleting it: what it printed is exactly what
the space acknowledged as durable. Deletes keep the filesystem's use bounded, so the thin pool is written,
freed (the filesystem discards what it frees: mount -o discard) and allocated again.

Usage: test_space_killloop.py ISPACE ISPACED ATTACH_DRIVER [KILLS]     (skipped, exit 77, without
                                                                       root/FUSE/loop)
"""
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attach_testlib  # noqa: E402
import ispace_testlib  # noqa: E402

check = ispace_testlib.Checks()
MiB = 1 << 20

# The writer: files of 16 KiB .. 1 MiB, each fsynced with its directory before it is reported; beyond 24
# live files (earlier writers' included) the oldest is forgotten, then deleted.
WRITER = r"""
import hashlib, os, random, sys
d = sys.argv[1]
n = int(sys.argv[2])
# What earlier writers left (synced or not), oldest first.
live = sorted((f for f in os.listdir(d) if f.startswith("w") and f.endswith(".bin")), key=lambda f: int(f[1:-4]))
while True:
    name = f"w{n}.bin"
    data = os.urandom(random.choice((16, 64, 256, 1024)) * 1024)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(d, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    print("synced", name, hashlib.sha256(data).hexdigest(), len(data), flush=True)
    live.append(name)
    n += 1
    while len(live) > 24:
        old = live.pop(0)
        print("forget", old, flush=True)
        os.remove(os.path.join(d, old))
"""


def space(ispace, env, *args, timeout=120):
    r = attach_testlib.run([ispace, "space"] + list(args), env=env, timeout=timeout)
    if r.returncode != 0:
        print((r.stdout + r.stderr).strip()[-1500:])
    return r


def status(ispace, env):
    r = subprocess.run([ispace, "space", "status", "k", "--json"], env=env, capture_output=True, text=True,
                       timeout=120)
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else {}


def attach(ispace, env):
    r = space(ispace, env, "attach", "k")
    dev = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else ""
    return dev if dev.startswith("/dev/") else None


class Snapshotter(threading.Thread):
    """Takes snapshots of the space and deletes the oldest beyond two, until told to stop; remembers which
    creates and deletes returned success (what the space acknowledged)."""

    def __init__(self, ispace, env, first, live):
        super().__init__(daemon=True)
        self.ispace, self.env, self.n, self.live = ispace, env, first, live
        self.stop = threading.Event()
        self.in_flight = None  # the snapshot being created or deleted when the holder died: either way

    def run(self):
        while not self.stop.is_set():
            name = f"k@s{self.n}"
            self.n += 1
            self.in_flight = name
            r = subprocess.run([self.ispace, "space", "snapshot", "k", name[2:]], env=self.env,
                               capture_output=True, timeout=60)
            if r.returncode != 0:
                return  # the holder is gone
            self.live.append(name)
            self.in_flight = None
            while len(self.live) > 2:
                self.in_flight = self.live.pop(0)
                r = subprocess.run([self.ispace, "space", "snapshot-delete", self.in_flight], env=self.env,
                                   capture_output=True, timeout=60)
                if r.returncode != 0:
                    return
                self.in_flight = None
            self.stop.wait(0.05)


def verify(directory, synced):
    """The names of synced files that are missing or differ."""
    bad = []
    for name, digest in synced.items():
        try:
            with open(os.path.join(directory, name), "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != digest:
                    bad.append(name)
        except OSError:
            bad.append(name)
    return bad


def main():
    ispace, ispaced, driver = sys.argv[1], sys.argv[2], sys.argv[3]
    kills = int(sys.argv[4]) if len(sys.argv) > 4 else 50
    why = attach_testlib.why_not_runnable(driver)
    if why:
        print(f"SKIP: {why}")
        return attach_testlib.SKIP
    scratch = ispace_testlib.scratch_dir("space-kill")
    home = os.path.join(scratch, "home")
    env = dict(os.environ, ISPACE_HOME=home, ISPACED=ispaced)
    mnt = os.path.join(scratch, "mnt")
    os.makedirs(mnt)
    members = [os.path.join(scratch, n) for n in ("a.img", "b.img")]
    for m in members:
        with open(m, "wb") as f:
            f.truncate(160 * MiB)
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    try:
        r = space(ispace, env, "create", "k", "--thin", "--size", "256M", "--member", members[0], "--member",
                  members[1])
        check(r.returncode == 0, "a 256 MiB thin mirror over two 160 MiB files")
        dev = attach(ispace, env)
        check(dev is not None, f"attached at {dev}")
        if dev is None:
            return check.finish(scratch)
        check(attach_testlib.run(["mkfs.ext4", "-q", "-F", "-J", "size=4", dev]).returncode == 0, "mkfs.ext4")
        base = status(ispace, env).get("allocated_bytes") or 0
        synced = {}
        counter = 0
        sizes = {}  # of the synced files
        snapshots = []  # snapshots the space acknowledged and did not delete, oldest first
        snap_counter = 0
        taken = 0  # kills after which a snapshot was listed
        total = 0  # bytes synced over the whole loop
        failures = []
        t0 = time.monotonic()
        for i in range(kills):
            if attach_testlib.run(["mount", "-o", "discard", dev, mnt]).returncode != 0:
                failures.append(f"kill {i}: the filesystem does not mount")
                break
            bad = verify(mnt, synced)
            if bad:
                failures.append(f"kill {i}: {len(bad)} synced file(s) missing or different: {bad[:5]}")
                break
            pid = attach_testlib.holder_pid(home)
            snapper = Snapshotter(ispace, env, snap_counter, snapshots)
            snapper.start()
            writer = subprocess.Popen([sys.executable, "-c", WRITER, mnt, str(counter)], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True)
            time.sleep(rng.uniform(0.05, 0.6))
            if pid:
                os.kill(pid, signal.SIGKILL)
            snapper.stop.set()
            snapper.join(60)
            snap_counter = snapper.n
            try:
                out, _ = writer.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                writer.kill()
                out, _ = writer.communicate()
            for line in out.splitlines():
                words = line.split()
                if len(words) == 4 and words[0] == "synced":
                    synced[words[1]] = words[2]
                    sizes[words[1]] = int(words[3])
                    total += int(words[3])
                    counter = max(counter, int(words[1][1:-4]) + 1)
                elif len(words) == 2 and words[0] == "forget":
                    synced.pop(words[1], None)
            attach_testlib.run(["umount", "-l", mnt])
            for _ in range(100):  # the lock goes with the process; the loop device clears once the file is gone
                if attach_testlib.holder_pid(home) is None:
                    break
                time.sleep(0.05)
            if pid is None or attach_testlib.holder_pid(home) is not None:
                failures.append(f"kill {i}: the holder (pid {pid}) did not go")
                break
            dev = None
            for _ in range(20):
                dev = attach(ispace, env)
                if dev:
                    break
                time.sleep(0.25)
            if dev is None:
                failures.append(f"kill {i}: the space does not attach again")
                break
            # Replay the journal, then check the filesystem unmounted.
            if attach_testlib.run(["mount", dev, mnt]).returncode != 0 or not attach_testlib.umount(mnt):
                failures.append(f"kill {i}: the filesystem does not mount after the kill")
                break
            r = attach_testlib.run(["fsck.ext4", "-fn", dev])
            if r.returncode != 0:
                failures.append(f"kill {i}: fsck.ext4 -fn: {r.stdout[-600:]}")
                break
            # Acknowledged snapshots are there, acknowledged deletes are gone; the one create or delete the
            # kill cut may have happened or not.
            listed = set(x["name"] for x in status(ispace, env).get("snapshots", []))
            acknowledged = set(snapshots)
            either = {snapper.in_flight} if snapper.in_flight else set()
            if listed - either != acknowledged - either:
                failures.append(f"kill {i}: snapshots acknowledged {sorted(acknowledged)} (in flight: {either}), "
                                f"listed {sorted(listed)}")
                break
            snapshots[:] = sorted(set(listed), key=lambda x: int(x.split("@s")[1]))
            taken += 1 if snapshots else 0
        elapsed = time.monotonic() - t0
        check(not failures, f"{kills} kills of the holder during writes, deletes and snapshots, each followed "
              f"by a clean fsck, every synced file intact and the snapshots as acknowledged ({len(synced)} live, "
              f"{counter} written, {snap_counter} snapshots taken, {elapsed:.0f} s)"
              + (f": {failures[0]}" if failures else ""))
        if not failures:
            check(attach_testlib.run(["mount", dev, mnt]).returncode == 0 and not verify(mnt, synced)
                  and attach_testlib.umount(mnt), "the last state mounts and verifies")
        check(taken >= kills // 2, f"snapshots were live at most kills ({taken} of {kills})")
        for name in snapshots:
            space(ispace, env, "snapshot-delete", name)
        st = status(ispace, env)
        pool = st.get("pool_bytes") or 0
        allocated = st.get("allocated_bytes") or 0
        live = sum(sizes.get(name, 0) for name in synced)
        # Slack: ext4 spreads small files over its groups, and a cluster stays while any block of it is in use.
        check(st.get("thin") and allocated <= base + live + 32 * MiB and not st.get("pool_full"),
              f"deleted files and snapshots were freed: {total // MiB} MiB synced through a pool of "
              f"{pool // MiB} MiB; {allocated // MiB} MiB allocated at the end, for {live // MiB} MiB of live "
              f"files and {base // MiB} MiB of an empty filesystem")
    finally:
        if attach_testlib.mounted(mnt):
            attach_testlib.run(["umount", "-l", mnt])
        subprocess.run([ispace, "space", "detach", "k"], env=env, capture_output=True, timeout=60)
        pid = attach_testlib.holder_pid(home)
        if pid:
            os.kill(pid, signal.SIGTERM)
    return check.finish(scratch)


if __name__ == "__main__":
    sys.exit(main())
