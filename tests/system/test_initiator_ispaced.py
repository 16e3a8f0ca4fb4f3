#!/usr/bin/env python3
"""The `ispace` CLI against ispaced: an MC/S copy, and a copy that survives kill -9 of the target.

 1. `ispace cp --connections 4` of 256 MiB to a file LUN reads back identical through qemu-img, and the
    target's log shows one session that grew to 4 connections.
 2. kill -9 of ispaced in the middle of a 512 MiB `ispace cp`, restarted on the same port within 2 s:
    cp exits 0 and the LUN's backing file equals the source.
 3. CHAP and mutual CHAP logins from URL credentials (user%secret@, ?target_user=&target_password=).

Usage: test_initiator_ispaced.py ISPACE_BINARY ISPACED_BINARY
"""
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ispace_testlib  # noqa: E402

IQN = "iqn.2026-11.org.ispace.test:initiator"
check = ispace_testlib.Checks()


def random_file(path, size):
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 4 << 20)
            f.write(os.urandom(n))
            left -= n


def mcs_copy(ispace, ispaced, scratch):
    size = 256 << 20
    lun = os.path.join(scratch, "mcs.img")
    src = os.path.join(scratch, "mcs-src.bin")
    random_file(src, size)
    log = os.path.join(scratch, "ispaced-mcs.log")
    daemon = ispace_testlib.Ispaced(ispaced, ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun", f"{lun},size=256M,thin",
                                              "--reactors", "2"], log_path=log).start()
    try:
        url = f"iscsi://{daemon.portal()}/{IQN}/0"
        r = subprocess.run([ispace, "--log-level", "info", "cp", "--connections", "4", src, url],
                           capture_output=True, text=True, timeout=300)
        print(r.stderr)
        check(r.returncode == 0, "cp --connections 4 exits 0")
        back = os.path.join(scratch, "mcs-back.raw")
        q = subprocess.run(["qemu-img", "convert", "-O", "raw", url, back], capture_output=True, text=True,
                           timeout=300)
        check(q.returncode == 0 and ispace_testlib.sha256_file(back) == ispace_testlib.sha256_file(src), "qemu-img reads back what cp wrote")
        os.unlink(back)
        time.sleep(0.2)
        text = daemon.log_tail(5000)
        # One session of our initiator reached 4 connections: "session 0x0003 (...): connection cid N added;
        # 4 connections".
        grown = set(re.findall(r"session (0x[0-9a-f]+) \([^)]*-> " + re.escape(IQN) + r"\): connection cid \d+ added; 4 "
                               r"connections", text))
        check(len(grown) == 1, f"the target reports one session with 4 connections ({sorted(grown)})")
    finally:
        daemon.stop()


def kill_during_copy(ispace, ispaced, scratch):
    size = 512 << 20
    lun = os.path.join(scratch, "kill.img")
    src = os.path.join(scratch, "kill-src.bin")
    random_file(src, size)
    args = ["--iqn", IQN, "--lun", f"{lun},size=512M,thin"]
    log = os.path.join(scratch, "ispaced-kill.log")
    daemon = ispace_testlib.Ispaced(ispaced, ["--listen", "127.0.0.1:0"] + args, log_path=log).start()
    port = daemon.port
    url = f"iscsi://127.0.0.1:{port}/{IQN}/0"
    cp_log = open(os.path.join(scratch, "cp-kill.log"), "w")
    cp = subprocess.Popen([ispace, "--log-level", "info", "cp", "--qd", "8", "--bs", "256k", src, url],
                          stdout=cp_log, stderr=subprocess.STDOUT)
    restarted = None
    try:
        # Let the copy get going: wait until the (thin, so sparse) LUN file has received a good part of
        # the data; the limit only matters on a filesystem that does not report allocation as it happens.
        deadline = time.time() + 20
        while time.time() < deadline and cp.poll() is None:
            if os.path.exists(lun) and os.stat(lun).st_blocks * 512 >= size // 8:
                break
            time.sleep(0.02)
        in_flight = cp.poll() is None
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait()
        killed_at = time.time()
        check(in_flight, "ispaced was killed while cp was copying")
        time.sleep(1.0)
        restarted = ispace_testlib.Ispaced(ispaced, ["--listen", f"127.0.0.1:{port}"] + args, log_path=log)
        restart_at = time.time()
        restarted.start()
        check(restart_at - killed_at < 2.0 and restarted.port == port,
              f"ispaced restarted on the same port {restart_at - killed_at:.1f} s after the kill")
        try:
            rc = cp.wait(timeout=240)
        except subprocess.TimeoutExpired:
            cp.kill()
            rc = cp.wait()
        cp_log.close()
        with open(os.path.join(scratch, "cp-kill.log")) as f:
            print(f.read()[-3000:])
        check(rc == 0, f"cp finishes with exit 0 after the target came back (exit {rc})")
        restarted.stop()
        check(ispace_testlib.sha256_file(lun, size) == ispace_testlib.sha256_file(src), "the LUN equals the source")
    finally:
        if cp.poll() is None:
            cp.kill()
            cp.wait()
        if restarted is not None:
            restarted.stop()
        daemon.stop()


def chap_logins(ispace, ispaced, scratch):
    log = os.path.join(scratch, "ispaced-chap.log")
    daemon = ispace_testlib.Ispaced(ispaced, ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun", "memory:16M",
                                              "--chap", "alice:alice-secret-123",
                                              "--mutual-chap", "target1:target-secret-456"], log_path=log).start()
    try:
        base = f"127.0.0.1:{daemon.port}/{IQN}/0"

        def readcap(url):
            return subprocess.run([ispace, "readcap", url], capture_output=True, text=True, timeout=60)

        r = readcap(f"iscsi://{base}")
        check(r.returncode != 0 and "02/01" in r.stderr, "without credentials the login is refused (02/01)")
        r = readcap(f"iscsi://alice%wrong-secret-999@{base}")
        check(r.returncode != 0 and "02/01" in r.stderr, "a wrong CHAP secret is refused")
        r = readcap(f"iscsi://alice%alice-secret-123@{base}")
        check(r.returncode == 0 and "16777216 bytes" in r.stdout, "CHAP login works")
        r = readcap(f"iscsi://alice%alice-secret-123@{base}?target_user=target1&target_password=target-secret-456")
        check(r.returncode == 0, "mutual CHAP login works")
        r = readcap(f"iscsi://alice%alice-secret-123@{base}?target_user=target1&target_password=not-the-secret-0")
        check(r.returncode != 0 and "mutual" in r.stderr, "a target failing mutual CHAP is refused")
        r = subprocess.run([ispace, "ls", f"iscsi://alice%alice-secret-123@127.0.0.1:{daemon.port}"],
                           capture_output=True, text=True, timeout=60)
        check(r.returncode == 0 and IQN in r.stdout and "16.0 MiB" in r.stdout, "ls with CHAP credentials")
    finally:
        daemon.stop()


def main():
    ispace, ispaced = sys.argv[1], sys.argv[2]
    if shutil.which("qemu-img") is None:
        print("SKIP: qemu-img not installed")
        return 77
    scratch = ispace_testlib.scratch_dir("initiator-ispaced")
    try:
        mcs_copy(ispace, ispaced, scratch)
        kill_during_copy(ispace, ispaced, scratch)
        chap_logins(ispace, ispaced, scratch)
    finally:
        if not check.failures:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"{len(check.failures)} failure(s)")
    return 1 if check.failures else 0


if __name__ == "__main__":
    sys.exit(main())
