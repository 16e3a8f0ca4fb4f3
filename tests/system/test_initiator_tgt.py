#!/usr/bin/env python3
"""The `ispace` CLI against an independent target, Debian's tgt (tgtd), started here on a free port.

Checks: `ispace ls` shows the target with its LUNs (type, size, block size); `ispace cp --digest crc32c`
of 128 MiB to the LUN reads back identical through qemu-img (libiscsi); `ispace cp` from the LUN to a
file is identical; strict digests work once tgt is configured for CRC32C; inq, readcap and a short
bench run.

Usage: test_initiator_tgt.py ISPACE_BINARY        (exit 77 = skipped: tgtd/tgtadm/qemu-img missing)
"""
import hashlib
import os
import random
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ispace_testlib  # noqa: E402

IQN = "iqn.2026-11.org.ispace.test:tgt"
SIZE = 128 << 20
check = ispace_testlib.Checks()


def run(cmd, timeout=300, **kw):
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


class Tgtd:
    """A private tgtd: its own portal port and management (control) port, killed by pid at the end."""

    def __init__(self, scratch):
        self.port = ispace_testlib.free_port()
        # tgtd's management socket is /var/run/tgtd/socket.N: pick an N nobody uses.
        for _ in range(100):
            self.control = random.randint(1000, 32000)  # tgtd refuses 32768 and above
            if not os.path.exists(f"/var/run/tgtd/socket.{self.control}"):
                break
        self.log = open(os.path.join(scratch, "tgtd.log"), "w")
        self.proc = subprocess.Popen(["tgtd", "-f", "-C", str(self.control), "--iscsi",
                                      f"portal=127.0.0.1:{self.port}"], stdout=self.log, stderr=self.log)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.adm("--op", "show", "--mode", "target", check_ok=False).returncode == 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError("tgtd did not start")

    def adm(self, *args, check_ok=True):
        r = subprocess.run(["tgtadm", "-C", str(self.control), "--lld", "iscsi"] + list(args),
                           capture_output=True, text=True, timeout=30)
        if check_ok and r.returncode != 0:
            raise RuntimeError(f"tgtadm {' '.join(args)}: {r.stderr}")
        return r

    def stop(self):
        # tgtd ignores SIGTERM; it leaves when told to through its management channel.
        if self.proc.poll() is None:
            self.adm("--op", "delete", "--mode", "system", "--force", check_ok=False)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def main():
    ispace = sys.argv[1]
    for tool in ("tgtd", "tgtadm", "qemu-img"):
        if shutil.which(tool) is None:
            print(f"SKIP: {tool} not installed")
            return 77
    scratch = ispace_testlib.scratch_dir("initiator-tgt")
    lun_file = os.path.join(scratch, "lun1.img")
    with open(lun_file, "wb") as f:
        f.truncate(SIZE)
    src = os.path.join(scratch, "src.bin")
    with open(src, "wb") as f:
        f.write(os.urandom(SIZE))
    tgt = Tgtd(scratch)
    try:
        tgt.adm("--op", "new", "--mode", "target", "--tid", "1", "-T", IQN)
        tgt.adm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", lun_file)
        tgt.adm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        portal = f"127.0.0.1:{tgt.port}"
        url = f"iscsi://{portal}/{IQN}/1"

        r = run([ispace, "ls", f"iscsi://{portal}"], timeout=60)
        print(r.stdout + r.stderr)
        check(r.returncode == 0, "ls exits 0")
        check(IQN in r.stdout, "ls shows the target")
        lun1 = [line for line in r.stdout.splitlines() if line.strip().startswith("lun 1 ")]
        check(len(lun1) == 1 and "disk" in lun1[0] and str(SIZE) in lun1[0] and "block size 512" in lun1[0],
              "ls shows LUN 1 as a disk with its size and block size")
        check(any(line.strip().startswith("lun 0 ") and "controller" in line for line in r.stdout.splitlines()),
              "ls shows tgt's controller LUN 0")
        r = run([ispace, "ls", "-i", "iqn.2026-11.org.ispace.test:other-host", f"iscsi://{portal}"], timeout=60)
        check(r.returncode == 0 and IQN in r.stdout, "ls -i INITIATOR works")

        r = run([ispace, "cp", "--digest", "crc32c", src, url])
        print(r.stdout + r.stderr)
        check(r.returncode == 0, "cp --digest crc32c FILE -> tgt LUN exits 0")
        back = os.path.join(scratch, "back.raw")
        q = run(["qemu-img", "convert", "-O", "raw", url, back])
        check(q.returncode == 0, "qemu-img convert reads the LUN back" + (": " + q.stderr if q.returncode else ""))
        check(q.returncode == 0 and ispace_testlib.sha256_file(back) == ispace_testlib.sha256_file(src), "qemu-img's copy equals the source")
        os.unlink(back)

        out = os.path.join(scratch, "out.raw")
        r = run([ispace, "cp", url, out])
        print(r.stdout + r.stderr)
        check(r.returncode == 0, "cp tgt LUN -> FILE exits 0")
        check(os.path.exists(out) and os.path.getsize(out) == SIZE and ispace_testlib.sha256_file(out) == ispace_testlib.sha256_file(src),
              "the file equals the source")
        os.unlink(out)

        # With tgt configured for digests, insist on them (and copy the other way round again).
        tgt.adm("--op", "update", "--mode", "target", "--tid", "1", "-n", "HeaderDigest", "-v", "CRC32C,None")
        tgt.adm("--op", "update", "--mode", "target", "--tid", "1", "-n", "DataDigest", "-v", "CRC32C,None")
        half = os.path.join(scratch, "half.bin")
        with open(half, "wb") as f:
            f.write(os.urandom(SIZE // 2))
        r = run([ispace, "cp", "--digest", "crc32c-only", "--qd", "4", half, url])
        print(r.stdout + r.stderr)
        check(r.returncode == 0 and "warning" not in r.stderr, "cp --digest crc32c-only succeeds once tgt does CRC32C")
        r = run([ispace, "cp", "--digest", "crc32c-only", url, out])
        with open(out, "rb") as f:
            got = f.read(SIZE // 2)
        with open(half, "rb") as f:
            want = f.read()
        check(r.returncode == 0 and got == want, "and reads it back with digests")

        r = run([ispace, "inq", url], timeout=60)
        check(r.returncode == 0 and "VIRTUAL-DISK" in r.stdout and "disk" in r.stdout, "inq shows the LUN")
        r = run([ispace, "readcap", url], timeout=60)
        check(r.returncode == 0 and f"{SIZE} bytes" in r.stdout and "block size:    512" in r.stdout,
              "readcap shows size and block size")
        for rw in ("randread", "randwrite", "randrw"):
            r = run([ispace, "bench", url, "--rw", rw, "--bs", "4k", "--qd", "16", "--time", "1"], timeout=60)
            print(r.stdout + r.stderr)
            check(r.returncode == 0 and "IOPS" in r.stdout and "p99.9" in r.stdout, f"bench --rw {rw} reports")

        r = run([ispace, "cp", src, f"iscsi://{portal}/iqn.2026-11.org.ispace.test:nobody/1"], timeout=60)
        check(r.returncode != 0 and "02/03" in r.stderr, "cp to an unknown target fails with the login status")
        r = run([ispace, "cp", "/nonexistent/file", url], timeout=60)
        check(r.returncode != 0 and "No such file" in r.stderr, "cp from a missing file fails clearly")
    finally:
        tgt.stop()
    if not check.failures:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{len(check.failures)} failure(s)")
    return 1 if check.failures else 0


if __name__ == "__main__":
    sys.exit(main())
