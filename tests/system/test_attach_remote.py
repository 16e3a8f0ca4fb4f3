#!/usr/bin/env python3
"""Remote LUNs attached as local block devices, for hosts with no kernel iSCSI initiator: the initiator
library reaches the LUN, FUSE + loop make it a disk. Against ispaced, and against Debian's tgt when it
is installed:

  attach iscsi://HOST:PORT/IQN/LUN → mkfs.ext4 → mount → files written → umount → fsck.ext4 -fn clean →
  checksums verified after a remount → detach leaves no loop device and no FUSE mount → fsck.ext4 -fn
  of the target's backing file, read without us in between, is clean too.

Until the volume layer registers the iscsi:// kind, attach_driver reaches the LUN through a temporary
test-only device of its own (tests/system/attach_driver.cpp).

Usage: test_attach_remote.py ATTACH_DRIVER ISPACED    the LUN served by ispaced
       test_attach_remote.py ATTACH_DRIVER --tgt        the LUN served by Debian's tgt
Exit 77 = skipped, with the reason on stdout: not root, no FUSE or loop devices, a build
without libfuse3, or (--tgt) no tgt.
"""
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attach_testlib as at  # noqa: E402
import ispace_testlib  # noqa: E402

IQN = "iqn.2026-11.org.ispace.test:attach"
check = ispace_testlib.Checks()


def filesystem_on(driver_bin, url, backing_file, scratch, label):
    run_dir = os.path.join(scratch, f"run-{label}")
    driver = at.AttachDriver(driver_bin, ["--attach", url, "--run-dir", run_dir],
                             os.path.join(scratch, f"driver-{label}.log")).start()
    mnt = os.path.join(scratch, f"mnt-{label}")
    os.makedirs(mnt)
    try:
        (dev, _), = driver.attached
        check(at.run(["mkfs.ext4", "-q", dev]).returncode == 0, f"{label}: mkfs.ext4 on {dev}")
        check(at.run(["mount", dev, mnt]).returncode == 0, f"{label}: mount")
        sums = at.write_files(mnt, 8, 4 << 20)
        check(at.umount(mnt), f"{label}: umount")
        fsck = at.run(["fsck.ext4", "-fn", dev])
        check(fsck.returncode == 0, f"{label}: fsck.ext4 -fn is clean" + ("" if fsck.returncode == 0 else ":\n" + fsck.stdout))
        check(at.run(["mount", dev, mnt]).returncode == 0 and at.verify_files(mnt, sums),
              f"{label}: checksums verify after a remount")
        check(at.umount(mnt), f"{label}: umount again")
        check(driver.status()[dev]["errors"] == 0, f"{label}: no request failed")
        ok, message = driver.command(f"detach {dev}")
        check(ok, f"{label}: detach" + ("" if ok else ": " + message))
        check(at.wait_loop_gone(dev), f"{label}: {dev} is no longer bound")
        check(not any(run_dir in line for line in at.fuse_mounts()), f"{label}: no FUSE mount left")
        check(driver.quit() == 0, f"{label}: the holder exits 0")
        fsck = at.run(["fsck.ext4", "-fn", backing_file])
        check(fsck.returncode == 0, f"{label}: the target's backing file holds a clean filesystem")
    finally:
        if at.mounted(mnt):
            at.umount(mnt)
        driver.kill()
        print(driver.log_tail(10))


def against_ispaced(driver_bin, ispaced_bin, scratch):
    lun = os.path.join(scratch, "ispaced-lun.img")
    daemon = ispace_testlib.Ispaced(ispaced_bin, ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun",
                                                  f"{lun},size=256M,thin", "--reactors", "1"],
                                    log_path=os.path.join(scratch, "ispaced.log")).start()
    try:
        filesystem_on(driver_bin, f"iscsi://{daemon.portal()}/{IQN}/0", lun, scratch, "ispaced")
    finally:
        check(daemon.stop() == 0, "ispaced exits 0")


def against_tgt(driver_bin, scratch):
    import test_initiator_tgt  # its private tgtd helper
    lun = os.path.join(scratch, "tgt-lun.img")
    with open(lun, "wb") as f:
        f.truncate(256 << 20)
    tgt = test_initiator_tgt.Tgtd(scratch)
    try:
        tgt.adm("--op", "new", "--mode", "target", "--tid", "1", "-T", IQN)
        tgt.adm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", lun)
        tgt.adm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        filesystem_on(driver_bin, f"iscsi://127.0.0.1:{tgt.port}/{IQN}/1", lun, scratch, "tgt")
    finally:
        tgt.stop()


def main():
    driver_bin, peer = sys.argv[1], sys.argv[2]
    why = at.why_not_runnable(driver_bin)
    if why:
        print(f"SKIP: {why}")
        return at.SKIP
    if peer == "--tgt":
        if shutil.which("tgtd") is None or shutil.which("tgtadm") is None:
            print("SKIP: Debian's tgt (tgtd, tgtadm) is not installed: scripts/install-deps.sh installs it")
            return at.SKIP
        scratch = ispace_testlib.scratch_dir("attach-tgt")
        against_tgt(driver_bin, scratch)
    else:
        scratch = ispace_testlib.scratch_dir("attach-remote")
        against_ispaced(driver_bin, peer, scratch)
    return check.finish(scratch)


if __name__ == "__main__":
    sys.exit(main())
