#!/usr/bin/env python3
"""`ispace attach iscsi://…` of a tgt LUN (no label): the command starts the holder (ispaced --holder) by
itself and prints a block device that keeps working after it exits: mkfs.ext4, mount, write, umount,
fsck clean; `ispace detach DEV` takes it away and the holder, holding nothing, exits.

Usage: test_attach_url.py ISPACE ISPACED ATTACH_DRIVER     (exit 77 = skipped: not root, no FUSE/loop, no tgtd)
"""
import os
import random
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attach_testlib  # noqa: E402
import ispace_testlib  # noqa: E402
from test_space_cli import Cli, Tgtd, wait_for  # noqa: E402

check = ispace_testlib.Checks()
MiB = 1 << 20


def main():
    ispace, ispaced = sys.argv[1], sys.argv[2]
    why = attach_testlib.why_not_runnable(sys.argv[3])
    if why is None and shutil.which("tgtd") is None:
        why = "tgtd (Debian tgt) is not installed"
    if why:
        print(f"SKIP: {why}")
        return 77
    scratch = ispace_testlib.scratch_dir("attach-url")
    lun = os.path.join(scratch, "t.img")
    with open(lun, "wb") as f:
        f.truncate(64 * MiB)
    mnt = os.path.join(scratch, "mnt")
    os.makedirs(mnt)
    tgt = Tgtd(scratch, lun, ispace_testlib.free_port())
    cli = Cli(ispace, ispaced, os.path.join(scratch, "home"))
    mounted = False
    try:
        r = attach_testlib.run([ispace, "attach", tgt.url], env=cli.env)
        dev = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else ""
        check(dev.startswith("/dev/"), f"ispace attach prints a block device ({dev}; {r.stderr.strip()[-200:]})")
        check(cli.holder_pid() is not None, "a holder runs after the command exited")
        check(attach_testlib.run(["mkfs.ext4", "-q", "-F", dev]).returncode == 0, "mkfs.ext4")
        check(attach_testlib.run(["mount", dev, mnt]).returncode == 0, "mount")
        mounted = True
        data = random.Random(7).randbytes(8 * MiB)
        with open(os.path.join(mnt, "f"), "wb") as f:
            f.write(data)
        r = attach_testlib.run([ispace, "detach", dev], env=cli.env)
        check(r.returncode != 0 and "mounted" in r.stderr, "detach is refused while it is mounted")
        check(attach_testlib.run(["umount", mnt]).returncode == 0, "umount")
        mounted = False
        r = attach_testlib.run(["fsck.ext4", "-fn", dev])
        check(r.returncode == 0, "fsck.ext4 -fn is clean")
        check(attach_testlib.run(["mount", "-o", "ro", dev, mnt]).returncode == 0, "it mounts again")
        with open(os.path.join(mnt, "f"), "rb") as f:
            check(f.read() == data, "the file reads back")
        attach_testlib.run(["umount", mnt])
        r = attach_testlib.run([ispace, "detach", dev], env=cli.env)
        check(r.returncode == 0, "ispace detach")
        check(wait_for(lambda: cli.holder_pid() is None, 10) is not None, "the holder exits, holding nothing")
    finally:
        if mounted:
            attach_testlib.run(["umount", "-l", mnt])
        cli.stop_holder()
        tgt.stop()
    return check.finish(scratch)


if __name__ == "__main__":
    sys.exit(main())
