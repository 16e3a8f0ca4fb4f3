#!/usr/bin/env python3
"""SIGTERM at any instant is a clean exit: ispaced is started and stopped ROUNDS times (default 50)
while clients log in, read and write, and log out in a loop; each time it must exit 0, and its log must
hold no sanitizer report (under `make asan` this is what catches a teardown that touches freed state).

Usage: test_shutdown_stress.py ISPACED_BINARY [ROUNDS]
"""
import os
import random
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iscsi_raw  # noqa: E402
import ispace_testlib  # noqa: E402

IQN = "iqn.2026-11.org.ispace:shutdown"
check = ispace_testlib.Checks()
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "ThreadSanitizer")


def read10(lba, blocks):
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def write10(lba, blocks):
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)


def client_loop(port, index, stop):
    """Logs in, does a little I/O, logs out, again, until `stop` or the target goes away."""
    rng = random.Random(index)
    while not stop.is_set():
        c = None
        try:
            c = iscsi_raw.Client("127.0.0.1", port, initiator=f"iqn.2026-11.org.ispace:stress{index}", timeout=2.0)
            if c.login(IQN) != (0, 0):
                continue
            c.test_unit_ready()  # the power-on unit attention
            for _ in range(rng.randint(1, 8)):
                lba = rng.randrange(0, 2048)
                if rng.random() < 0.5:
                    c.wait_status(c.scsi(read10(lba, 8), read_length=4096))
                else:
                    c.wait_status(c.scsi(write10(lba, 8), data=os.urandom(4096)))
            if rng.random() < 0.7:
                c.logout()
        except (OSError, ConnectionError, RuntimeError, struct.error):
            time.sleep(0.01)
        finally:
            if c:
                c.close()


def main():
    binary = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    scratch = ispace_testlib.scratch_dir("shutdown")
    rng = random.Random(7)
    failures_before = 0
    for round_index in range(rounds):
        log_path = os.path.join(scratch, f"ispaced-{round_index}.log")
        args = ["--listen", "127.0.0.1:0", "--iqn", IQN, "--reactors", os.environ.get("STRESS_REACTORS", "2"),
                "--lun", "memory:16M", "--lun", os.path.join(scratch, "lun1.img") + ",size=16M,thin"]
        daemon = ispace_testlib.Ispaced(binary, args, log_path=log_path).start()
        stop = threading.Event()
        clients = [threading.Thread(target=client_loop, args=(daemon.port, i, stop), daemon=True) for i in range(6)]
        for t in clients:
            t.start()
        time.sleep(rng.uniform(0.0, 0.4))
        rc = daemon.stop(timeout=30)
        stop.set()
        for t in clients:
            t.join(5)
        with open(log_path, errors="replace") as f:
            log = f.read()
        reports = [m for m in SANITIZER_MARKS if m in log]
        ok = check(rc == 0 and not reports,
                   f"round {round_index + 1}: exit {rc}" + (f", sanitizer report: {reports}" if reports else ""))
        if not ok and len(check.failures) > failures_before:
            print(log[-4000:])
            failures_before = len(check.failures)
    return check.finish(scratch)


if __name__ == "__main__":
    sys.exit(main())
