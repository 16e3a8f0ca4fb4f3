#!/usr/bin/env python3
"""A data-space mirror over two ispaced targets, through volume::RemoteDevice (space_driver drives
volume::SpaceManager until the `ispace space` verbs exist):

 1. A 2-way mirror is created over a LUN of each target, opened (fenced: both LUNs reserved) and written.
 2. kill -9 of one target in the middle of 48 MiB of writes: the writes complete without an error, and
    status shows that member failed within 15 s.
 3. 464 MiB more are written while it is down (512 MiB missed in all). The target is restarted on the
    same port and (sparse) backing file: the member rejoins by itself and a delta resync brings it back
    (active) in under 2 minutes, moving no more than 1.25x the regions written while it was away (the
    first 16 MiB are swept clean before the kill, so the bitmap holds only what it missed).
 4. Everything written (528 MiB) verifies through the space, and the two backing files' data areas are identical
    byte for byte.

Usage: test_space_mirror.py SPACE_DRIVER ISPACED
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ispace_testlib  # noqa: E402

check = ispace_testlib.Checks()
MiB = 1 << 20
MISSED = 512 * MiB  # what b misses while it is down, and resyncs when it is back


class Driver:
    def __init__(self, binary, home, log_path):
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([binary, "--home", home, "--sweep-ms", "200"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        self.lock = threading.Lock()

    def cmd(self, line, timeout=120):
        with self.lock:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            out = self.proc.stdout.readline().strip()
        if not out:
            raise RuntimeError(f"space_driver died on: {line}")
        return out

    def status(self, name):
        out = self.cmd(f"status {name}")
        return json.loads(out[3:]) if out.startswith("ok ") else None

    def quit(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(30)
        except Exception:
            self.proc.kill()
        self.log.close()


def target(ispaced, scratch, name, port=0):
    args = ["--listen", f"127.0.0.1:{port}", "--iqn", f"iqn.2026-11.org.ispace.test:{name}", "--lun",
            os.path.join(scratch, f"{name}.img") + ",size=600M", "--reactors", "1"]
    return ispace_testlib.Ispaced(ispaced, args, log_path=os.path.join(scratch, f"{name}.log")).start()


def same_data(path_a, path_b, offset, length):
    """Whether the two files hold the same `length` bytes at `offset` (compared 8 MiB at a time)."""
    with open(path_a, "rb") as a, open(path_b, "rb") as b:
        a.seek(offset)
        b.seek(offset)
        while length > 0:
            n = min(length, 8 * MiB)
            if a.read(n) != b.read(n):
                return False
            length -= n
    return True


def main():
    driver_bin, ispaced = sys.argv[1], sys.argv[2]
    scratch = ispace_testlib.scratch_dir("space-mirror")
    a = target(ispaced, scratch, "a")
    b = target(ispaced, scratch, "b")
    driver = Driver(driver_bin, os.path.join(scratch, "home"), os.path.join(scratch, "driver.log"))
    restarted = None
    try:
        out = driver.cmd(f"create m mirror {a.urls[0]} {b.urls[0]}")
        check(out.startswith("ok"), f"a mirror over the two targets is created ({out[:200]})")
        check(driver.cmd("open m") == "ok", "it opens (both members fenced)")
        check(driver.cmd(f"write m 0 {16 * MiB} 1") == "ok", "16 MiB written")
        # Its regions clear once idle (two sweeps), so that the bitmap then holds only what b misses.
        deadline = time.time() + 10
        while time.time() < deadline and (driver.status("m") or {}).get("dirty_regions", 1) != 0:
            time.sleep(0.1)

        # kill -9 of target b while 48 MiB are being written.
        result = {}
        writer = threading.Thread(target=lambda: result.update(out=driver.cmd(f"write m {16 * MiB} {48 * MiB} 2")))
        writer.start()
        time.sleep(0.05)
        b_port = b.port
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait()
        killed = time.time()
        writer.join(120)
        check(result.get("out") == "ok", f"the writes go on and complete without an error ({result.get('out')})")
        failed_after = None
        while time.time() - killed < 20:
            st = driver.status("m")
            if st and st["members"][1]["state"] == "failed":
                failed_after = time.time() - killed
                break
            time.sleep(0.2)
        check(failed_after is not None and failed_after <= 15,
              f"status shows the killed member failed ({failed_after and round(failed_after, 1)} s after the kill)")
        # b misses 512 MiB in all: 464 MiB more written while it is down.
        check(driver.cmd(f"write m {64 * MiB} {MISSED - 48 * MiB} 3", timeout=300) == "ok",
              f"{(MISSED - 48 * MiB) // MiB} MiB more written with b down")
        st = driver.status("m")
        dirty = st["dirty_regions"] if st else 0
        check(st is not None and st["members"][0]["state"] == "active", "the survivor is active")
        copied_before = st["resync"]["copied_bytes"] if st else 0

        # The target comes back on the same port and file: the member rejoins and resyncs by itself.
        restarted = target(ispaced, scratch, "b", b_port)
        t_restart = time.time()
        back = None
        deadline = time.time() + 150
        while time.time() < deadline:
            st = driver.status("m")
            if st and st["members"][1]["state"] == "active" and not st["resync"]["running"]:
                back = st
                break
            time.sleep(0.3)
        took = time.time() - t_restart
        check(back is not None, f"the restarted member rejoins and is active again after a resync ({st})")
        if back:
            moved = back["resync"]["copied_bytes"] - copied_before
            # Part of the first 48 MiB may have reached b before the kill: at least the rest it missed.
            check(MISSED - 48 * MiB <= moved <= MISSED * 1.25 and moved <= dirty * MiB * 1.25,
                  f"the delta resync moved {moved // MiB} MiB for the {MISSED // MiB} MiB written while b was "
                  f"away ({dirty} dirty region(s) of 1 MiB)")
            check(took < 120, f"it resynced {moved // MiB} MiB by itself in {took:.1f} s after the restart "
                  f"(under 2 minutes)")
        check(driver.cmd(f"verify m 0 {16 * MiB} 1") == "ok" and driver.cmd(f"verify m {16 * MiB} {48 * MiB} 2") == "ok"
              and driver.cmd(f"verify m {64 * MiB} {MISSED - 48 * MiB} 3", timeout=300) == "ok",
              f"all {(16 * MiB + MISSED) // MiB} MiB read back as written")
        check(driver.cmd("close m") == "ok", "the space closes cleanly")
        # Byte for byte: the data areas of both backing files (the data area starts at 1 MiB).
        size = 16 * MiB + MISSED
        same = same_data(os.path.join(scratch, "a.img"), os.path.join(scratch, "b.img"), MiB, size)
        check(same, "the resynced member's data area equals the survivor's byte for byte")
    finally:
        driver.quit()
        a.stop()
        b.stop()
        if restarted:
            restarted.stop()
    if check.failures:
        with open(os.path.join(scratch, "driver.log")) as f:
            print(f.read()[-6000:])
    return check.finish(scratch, a)


if __name__ == "__main__":
    sys.exit(main())
