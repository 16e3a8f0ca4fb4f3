#!/usr/bin/env python3
"""Real initiators against ispaced: discovery and INQUIRY with libiscsi's tools, with and without
digests; a 64 MiB qemu-img round trip that must land byte for byte in the backing file.

Usage: test_clients.py ISPACED_BINARY
"""
import hashlib
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ispace_testlib  # noqa: E402

IQN = "iqn.2026-11.org.ispace:clients"
check = ispace_testlib.Checks()


def run(cmd, timeout=120, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def main():
    binary = sys.argv[1]
    scratch = ispace_testlib.scratch_dir("clients")
    lun0 = os.path.join(scratch, "lun0.img")
    args = ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun", lun0 + ",size=256M,thin", "--lun", "memory:64M"]
    daemon = ispace_testlib.Ispaced(binary, args, log_path=os.path.join(scratch, "ispaced.log")).start()
    portal = daemon.portal()
    url0 = f"iscsi://{portal}/{IQN}/0"
    try:
        # Discovery: iscsi-ls lists the target and, with -s, its LUNs and sizes.
        r = run(["iscsi-ls", "-s", f"iscsi://{portal}"])
        check(r.returncode == 0 and f"Target:{IQN}" in r.stdout, "iscsi-ls lists the target")
        check("Lun:0" in r.stdout and "Lun:1" in r.stdout, "iscsi-ls -s lists both LUNs")
        # libiscsi prints sizes rounded down by a block (a 256 MiB LUN shows as 255M, for tgt too).
        check("Type:DIRECT_ACCESS (Size:255M)" in r.stdout and "(Size:63M)" in r.stdout,
              "iscsi-ls shows type and size")
        if check.failures:
            print(r.stdout, r.stderr)

        # INQUIRY without and with digests.
        for suffix, what in [("", "no digest"), ("?header_digest=crc32c", "header digest crc32c")]:
            r = run(["iscsi-inq", url0 + suffix])
            check(r.returncode == 0 and "Vendor:ISPACE" in r.stdout.replace(" ", ""), f"iscsi-inq ({what})")
            if r.returncode != 0:
                print(r.stdout, r.stderr)
        r = run(["iscsi-inq", "-e", "1", "-c", str(0x83), url0])  # iscsi-inq reads the page code in decimal
        check(r.returncode == 0 and "Designator Type:(3) NAA" in r.stdout, "iscsi-inq VPD 0x83 carries an NAA designator")

        # 64 MiB of random data through qemu-img, back again, and into the backing file.
        src = os.path.join(scratch, "random.raw")
        with open(src, "wb") as f:
            f.write(os.urandom(64 << 20))
        r = run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, url0], timeout=300)
        check(r.returncode == 0, "qemu-img writes 64 MiB to the LUN")
        if r.returncode != 0:
            print(r.stdout, r.stderr)
        back = os.path.join(scratch, "back.raw")
        r = run(["qemu-img", "convert", "-f", "raw", "-O", "raw", url0, back], timeout=300)
        check(r.returncode == 0, "qemu-img reads the LUN back")
        want = ispace_testlib.sha256_file(src)
        check(ispace_testlib.sha256_file(back, 64 << 20) == want, "the data read back equals the data written")
        check(os.path.getsize(back) == 256 << 20, "the LUN reads back at its full 256 MiB")
        check(ispace_testlib.sha256_file(lun0, 64 << 20) == want, "the backing file holds the bytes written")
    finally:
        rc = daemon.stop()
        check(rc == 0, f"ispaced exits 0 on SIGTERM (got {rc})")
    return check.finish(scratch, daemon)


if __name__ == "__main__":
    sys.exit(main())
