#!/usr/bin/env python3
"""LUs added, resized and removed through mgmt::Runtime while clients run: iscsi-perf reads LUN 1 of
the same target throughout and never errors; a second initiator sees REPORTED LUNS DATA HAS CHANGED
after an add and a remove, and CAPACITY DATA HAS CHANGED after a resize; iscsi-ls and
iscsi-readcapacity16 see the new LUN and the new size; a removed LUN answers LOGICAL UNIT NOT
SUPPORTED. Targets and portals come and go too.

Usage: test_live_catalog.py RUNTIME_DRIVER_BINARY
"""
import os
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iscsi_raw  # noqa: E402
import ispace_testlib  # noqa: E402

IQN = "iqn.2026-11.org.ispace:live"
check = ispace_testlib.Checks()


class Driver(ispace_testlib.Ispaced):
    """The runtime driver: an ispaced-like process that takes catalog commands on stdin."""

    def start(self, timeout=20):
        self.proc = subprocess.Popen([self.binary] + self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(timeout):
            self.proc.kill()
            raise RuntimeError("runtime_driver did not become ready:\n" + "".join(self._log_lines[-40:]))
        return self

    def command(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        print(f"  > {line}\n  < {answer}", flush=True)
        return answer

    def stop(self, timeout=15):
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                self.proc.kill()
                self.proc.wait()
                return -9
        return self.proc.returncode if self.proc else None


def main():
    driver_binary = sys.argv[1]
    scratch = ispace_testlib.scratch_dir("live")
    args = ["--listen", "127.0.0.1:0", "--iqn", IQN, "--reactors", "2",
            "--lun", "memory:256M", "--lun", os.path.join(scratch, "lun1.img") + ",size=64M,thin"]
    driver = Driver(driver_binary, args, log_path=os.path.join(scratch, "driver.log")).start()
    portal = driver.portal()
    try:
        perf = subprocess.Popen(["iscsi-perf", "-i", "iqn.2026-11.org.ispace:perf", "-m", "16", "-b", "8", "-t", "10",
                                 "-r", f"iscsi://{portal}/{IQN}/1"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        perf_output = ispace_testlib.ProcessOutput(perf)
        # Reading before anything changes: a unit attention that meets iscsi-perf's READ CAPACITY at its
        # start ends it ("failed to send readcapacity command"; seen on a loaded CI machine), while its
        # reads re-send one. It prints "performing RANDOM READ ..." once it has the capacity.
        check(perf_output.wait_for("performing", 60), f"iscsi-perf is reading ({perf_output.text[-300:]!r})")
        watcher = iscsi_raw.Client("127.0.0.1", driver.port, initiator="iqn.2026-11.org.ispace:watcher")
        check(watcher.login(IQN) == (0, 0), "a second initiator logs in")
        for lun in (0, 1):
            while iscsi_raw.sense_of(watcher, lun)[0] != 0:  # its power-on unit attentions
                pass

        answer = driver.command("add-lun " + IQN + " memory:64M")
        check(answer == "ok 2", f"a LUN is added while iscsi-perf runs ({answer})")
        check(iscsi_raw.sense_of(watcher, 0)[1:] == (6, 0x3F, 0x0E), "the other initiator sees REPORTED LUNS DATA HAS CHANGED")
        ls = subprocess.run(["iscsi-ls", "-s", f"iscsi://{portal}"], capture_output=True, text=True, timeout=60).stdout
        check("Lun:2" in ls, "iscsi-ls -s lists the new LUN")

        answer = driver.command("resize-lun " + IQN + " 0 512M")
        check(answer == "ok", f"LUN 0 is resized to 512M ({answer})")
        check(iscsi_raw.sense_of(watcher, 0)[1:] == (6, 0x2A, 0x09), "the other initiator sees CAPACITY DATA HAS CHANGED")
        cap = subprocess.run(["iscsi-readcapacity16", f"iscsi://{portal}/{IQN}/0"], capture_output=True, text=True,
                             timeout=60).stdout
        m = re.search(r"Total size:(\d+)", cap)
        check(m is not None and int(m.group(1)) == 512 << 20, f"iscsi-readcapacity16 shows 536870912 bytes ({cap.strip()})")
        answer = driver.command("resize-lun " + IQN + " 0 128M")
        check(answer.startswith("error") and "asked for explicitly" in answer, "a shrink without permission is refused")

        answer = driver.command("remove-lun " + IQN + " 2")
        check(answer == "ok", f"the added LUN is removed while iscsi-perf runs ({answer})")
        check(iscsi_raw.sense_of(watcher, 0)[1:] == (6, 0x3F, 0x0E), "the other initiator sees REPORTED LUNS DATA HAS CHANGED again")
        check(iscsi_raw.sense_of(watcher, 2)[1:] == (5, 0x25, 0x00), "the removed LUN answers LOGICAL UNIT NOT SUPPORTED")
        check(driver.command(f"remove-lun {IQN} 2").startswith("error"), "removing it twice is an error")

        # Targets and portals come and go too.
        other = "iqn.2026-11.org.ispace:live-other"
        check(driver.command(f"add-target {other}") == "ok", "a target is added")
        check(driver.command(f"add-lun {other} memory:16M") == "ok 0", "it gets a LUN")
        answer = driver.command("add-portal 127.0.0.1:0")
        check(answer.startswith("ok 127.0.0.1:"), f"a portal is added ({answer})")
        new_portal = answer.split()[1] if answer.startswith("ok") else ""
        inq = subprocess.run(["iscsi-inq", f"iscsi://{new_portal}/{other}/0"], capture_output=True, text=True,
                             timeout=60)
        check(inq.returncode == 0, "the new target answers on the new portal")
        check(driver.command(f"remove-target {other}") == "ok", "the target is removed")
        inq = subprocess.run(["iscsi-inq", f"iscsi://{portal}/{other}/0"], capture_output=True, text=True, timeout=60)
        check(inq.returncode != 0, "a removed target refuses logins")
        check(driver.command(f"remove-portal {new_portal}") == "ok", "the portal is removed")

        # iscsi-perf (libiscsi 1.19) re-sends a read that met a unit attention but also counts the first
        # attempt as done (cb() falls through to `out:`), so its in_flight ends at -1 per unit attention
        # and, after its final "iops average" line, it waits for in_flight == 0 forever. We judge it by
        # what it printed up to that line: no error, and reads throughout. Then we stop it.
        out = perf_output.wait_final(timeout=120)
        perf.kill()
        perf.wait()
        iops = [int(x) for x in re.findall(r"iops average (\d+)", out)]
        # The final line may be followed by "finished." when no unit attention upset its count.
        final = re.search(r"iops average (\d+) \(\d+ MB/s\)\s*(finished\.\s*)?$", out.split("\r")[-1] if out else "")
        errors = [w for w in ("failed", "retries reached", "ABORT") if w in out]
        check(final is not None and not errors and bool(iops) and min(iops) > 0,
              f"iscsi-perf never errors (final average {final.group(1) if final else None} IOPS, errors {errors})")
        if not final or errors:
            print(out[-2000:])
        watcher.close()
    finally:
        rc = driver.stop()
        check(rc == 0, f"the runtime stops cleanly (exit {rc})")
    return check.finish(scratch, driver)


if __name__ == "__main__":
    sys.exit(main())
