#!/usr/bin/env python3
"""Local devices attached as block devices (FUSE + loop), held by attach_driver:

 1. memory:256M: mkfs.ext4, mount, files written and synced, fstrim reaches the device as discards,
    fsck.ext4 -fn clean, checksums verified after a remount; detach is refused while mounted (naming the
    mount point) and afterwards leaves no loop device, no FUSE mount and no mount file.
 2. A file device with 4 KiB blocks, set up with the pre-5.8 loop ioctls: the loop device shows 4096-byte
    logical blocks and direct I/O, data written to the block device is in the backing file byte for
    byte, a resize of the device reaches the block device, and SIGTERM detaches and exits 0.
 3. kill -9 of the holder while a filesystem on the device is being written: the writer gets an I/O
    error instead of hanging, reads fail the same way, the filesystem unmounts, and then the loop
    device is gone by itself (autoclear); no FUSE mount is left.

Usage: test_attach.py ATTACH_DRIVER        (exit 77 = skipped: not root, no /dev/fuse or loop devices,
                                           a build without libfuse3; the reason is printed)
"""
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attach_testlib as at  # noqa: E402
import ispace_testlib  # noqa: E402

check = ispace_testlib.Checks()


def nothing_left(path, run_dir, what):
    check(at.wait_loop_gone(path), f"{what}: {path} is no longer bound")
    check(not any(run_dir in line for line in at.fuse_mounts()), f"{what}: no FUSE mount left")
    check(os.listdir(run_dir) == [], f"{what}: no mount file left in the run directory")


def filesystem_round_trip(driver_bin, scratch):
    run_dir = os.path.join(scratch, "run1")
    driver = at.AttachDriver(driver_bin, ["--attach", "memory:256M", "--run-dir", run_dir],
                             os.path.join(scratch, "driver1.log")).start()
    mnt = os.path.join(scratch, "mnt1")
    os.makedirs(mnt)
    try:
        (dev, _), = driver.attached
        status = driver.status()[dev]
        check(status["direct_io"] and status["block_size"] == 512 and status["bytes"] == 256 << 20,
              f"{dev}: 256 MiB of 512-byte blocks, loop direct I/O on")
        check(at.sysfs_queue(dev, "logical_block_size") == "512", "the kernel shows 512-byte logical blocks")
        check(int(at.sysfs_queue(dev, "discard_max_bytes")) > 0, "the loop device offers discard")
        check(at.run(["mkfs.ext4", "-q", dev]).returncode == 0, "mkfs.ext4 on the attached device")
        check(at.run(["mount", dev, mnt]).returncode == 0, "mount")
        sums = at.write_files(mnt, 8, 4 << 20)
        os.sync()
        before = driver.status()[dev]
        trim = at.run(["fstrim", "-v", mnt])
        after = driver.status()[dev]
        check(trim.returncode == 0 and after["discards"] > before["discards"],
              f"fstrim reaches the device as discards ({after['discards'] - before['discards']}): {trim.stdout.strip()}")
        ok, message = driver.command(f"detach {dev}")
        check(not ok and "mounted on" in message and os.path.realpath(mnt) in message,
              "detach is refused while mounted, naming the mount point")
        check(at.umount(mnt), "umount")
        fsck = at.run(["fsck.ext4", "-fn", dev])
        check(fsck.returncode == 0, "fsck.ext4 -fn is clean" + ("" if fsck.returncode == 0 else ":\n" + fsck.stdout))
        check(at.run(["mount", dev, mnt]).returncode == 0, "mount again")
        check(at.verify_files(mnt, sums), "every file's checksum verifies after the remount")
        check(at.umount(mnt), "umount again")
        check(driver.status()[dev]["errors"] == 0, "no request failed")
        ok, message = driver.command(f"detach {dev}")
        check(ok, "detach once unmounted" + ("" if ok else ": " + message))
        nothing_left(dev, run_dir, "after detach")
        check(driver.quit() == 0, "the holder exits 0")
    finally:
        if at.mounted(mnt):
            at.umount(mnt)
        driver.kill()


def file_device_legacy_resize_sigterm(driver_bin, scratch):
    run_dir = os.path.join(scratch, "run2")
    image = os.path.join(scratch, "disk.img")
    driver = at.AttachDriver(driver_bin, ["--attach", f"{image},size=64M,block=4096", "--legacy-loop",
                                          "--run-dir", run_dir], os.path.join(scratch, "driver2.log")).start()
    try:
        (dev, _), = driver.attached
        check(at.sysfs_queue(dev, "logical_block_size") == "4096",
              "LOOP_SET_BLOCK_SIZE path: the kernel shows the device's 4096-byte blocks")
        check(driver.status()[dev]["direct_io"], "LOOP_SET_DIRECT_IO path: direct I/O on")
        data = os.urandom(8 << 20)
        src = os.path.join(scratch, "data.bin")
        with open(src, "wb") as f:
            f.write(data)
        r = at.run(["dd", f"if={src}", f"of={dev}", "bs=1M", "seek=3", "oflag=direct", "conv=fsync", "status=none"])
        check(r.returncode == 0, "dd of 8 MiB to the block device" + ("" if r.returncode == 0 else ": " + r.stderr))
        with open(image, "rb") as f:
            f.seek(3 << 20)
            check(f.read(len(data)) == data, "the backing file holds the bytes written to the block device")
        ok, _ = driver.command(f"resize {dev} 96M")
        check(ok, "resize the device to 96 MiB")
        size = 0
        deadline = time.time() + 10
        while time.time() < deadline:
            size = int(at.run(["blockdev", "--getsize64", dev]).stdout.strip() or 0)
            if size == 96 << 20:
                break
            time.sleep(0.1)
        check(size == 96 << 20, f"the block device grew to 96 MiB ({size})")
        driver.proc.send_signal(signal.SIGTERM)
        check(driver.wait(30) == 0, "SIGTERM: the holder detaches and exits 0")
        nothing_left(dev, run_dir, "after SIGTERM")
    finally:
        driver.kill()


def kill_9_while_writing(driver_bin, scratch):
    run_dir = os.path.join(scratch, "run3")
    driver = at.AttachDriver(driver_bin, ["--attach", "memory:128M", "--run-dir", run_dir],
                             os.path.join(scratch, "driver3.log")).start()
    mnt = os.path.join(scratch, "mnt3")
    os.makedirs(mnt)
    writer = None
    try:
        (dev, _), = driver.attached
        check(at.run(["mkfs.ext4", "-q", dev]).returncode == 0 and at.run(["mount", dev, mnt]).returncode == 0,
              "mkfs.ext4 and mount")
        at.write_files(mnt, 1, 1 << 20)
        os.sync()
        # Small synchronous writes, so that the kill lands while the writer is still writing: on a quiet
        # machine 100 MiB of 1 MiB direct writes to a memory device finished inside a fixed 0.3 s.
        big = os.path.join(mnt, "big")
        writer = subprocess.Popen(["dd", "if=/dev/zero", f"of={big}", "bs=4k", "count=25600", "oflag=direct,dsync"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 10
        while writer.poll() is None and time.time() < deadline:
            if os.path.exists(big) and os.path.getsize(big) >= 1 << 20:
                break
            time.sleep(0.01)
        check(writer.poll() is None, "the writer is still writing when the holder is killed")
        driver.kill()  # SIGKILL
        try:
            _, err = writer.communicate(timeout=30)
            check(writer.returncode != 0, f"the writer gets an error, not a hang ({err.strip()})")
        except subprocess.TimeoutExpired:
            check(False, "the writer gets an error, not a hang (it hung)")
            writer.kill()
        r = at.run(["dd", f"if={mnt}/file0.bin", "of=/dev/null", "bs=4096", "iflag=direct"], timeout=30)
        check(r.returncode != 0 and "Input/output error" in r.stderr, "reads fail with EIO")
        check(at.umount(mnt, timeout=30), "the filesystem unmounts")
        nothing_left(dev, run_dir, "after kill -9 and umount")
    finally:
        if writer and writer.poll() is None:
            writer.kill()
        if at.mounted(mnt):
            at.umount(mnt)
        driver.kill()


def main():
    driver_bin = sys.argv[1]
    why = at.why_not_runnable(driver_bin, ("mkfs.ext4", "fsck.ext4", "fstrim", "blockdev"))
    if why:
        print(f"SKIP: {why}")
        return at.SKIP
    scratch = ispace_testlib.scratch_dir("attach")
    filesystem_round_trip(driver_bin, scratch)
    file_device_legacy_resize_sigterm(driver_bin, scratch)
    kill_9_while_writing(driver_bin, scratch)
    return check.finish(scratch)


if __name__ == "__main__":
    sys.exit(main())
