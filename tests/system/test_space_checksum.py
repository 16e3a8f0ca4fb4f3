#!/usr/bin/env python3
"""Block checksums end to end (docs/integrity.md), through `ispace space` and ispaced exporting the space,
with raw SCSI commands (iscsi_raw.py):

 1. `ispace space create c --checksum` over two 40 MiB files (a mirror); `status --json` says checksums;
    a stripe with --checksum is made too (one copy: it gets a bitmap for its checksums; destroyed again).
 2. `ispaced --lun space:c`: 256 KiB of known content written at 5 MiB of the space. The test finds where
    one of its blocks lies in a member's backing file through the space's mapping (the member's label gives
    the data area's offset; a mirror keeps space offset = data area offset) and flips one byte there.
 3. READ(16) of the content returns it intact; the member's backing file holds the good bytes again (the bad
    copy was rewritten); `status --json` counts checksum_errors 1 for that member, 0 for the other.
 4. The same block of another place flipped on both members: READ(16) fails with CHECK CONDITION, MEDIUM
    ERROR / UNRECOVERED READ ERROR (03h/11h/00h), not wrong data; the blocks around it still read.
 5. `ispace space scrub c --wait`: 20 bytes flipped at random 4 KiB blocks of one member (in 4 MiB that
    no read met) are all found and repaired; the block bad on both copies is reported (exit 1);
    `status --json` counts them (20 repaired).
 5b. A scrub at 2 MiB/s paused; ispaced restarted: `status` still shows it paused at the same position and
    the members' checksum_errors as they were (both kept in the labels); `scrub --resume --wait` finishes it
    from there (every written block checked once); after another restart the last scrub is shown, with the
    LBA of the block that had no good copy; and, the space held by no one, from its labels alone.
 5c. The members extended by 8 MiB and `space grow` run: the space is 8 MiB larger, and a scrub of it finds
    only the block known lost.
 6. (root, FUSE and loop devices) A file: a second checksummed space attached, ext4 on it, a file of known
    content written; detached, one byte of it flipped in the member that serves its reads (found through
    filefrag's physical block and the member's data offset); attached again, the file reads back intact,
    the backing file is restored, the member counts 1 checksum error. Another block of the file flipped on
    both members: `scrub --wait` reports it with no good copy and names the file (debugfs).

Usage: test_space_checksum.py ISPACE ISPACED [ATTACH_DRIVER]     (part 6 is skipped, saying why, without it
                                                                 or without root/FUSE/loop)
"""
import re
import json
import os
import random
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attach_testlib  # noqa: E402
import iscsi_raw  # noqa: E402
import ispace_testlib  # noqa: E402

check = ispace_testlib.Checks()
MiB = 1 << 20
MEMBER = 40 * MiB
BS = 512
IQN = "iqn.2026-11.org.ispace.test:checksum"
LABEL_DATA_OFFSET = 168  # the label field (docs/dataspaces.md): u64 LE, bytes from the member's start


def space(ispace, env, *args):
    r = subprocess.run([ispace, "space"] + list(args), env=env, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        print((r.stdout + r.stderr).strip()[-1500:])
    return r


def status(ispace, env, name="c"):
    r = space(ispace, env, "status", name, "--json")
    return json.loads(r.stdout) if r.returncode == 0 else {}


def write16(client, offset, data):
    """WRITE(16) in pieces of 64 KiB (the raw client sends its data immediate, within FirstBurstLength)."""
    for at in range(0, len(data), 65536):
        piece = data[at:at + 65536]
        cdb = struct.pack(">BBQIBB", 0x8A, 0, (offset + at) // BS, len(piece) // BS, 0, 0)
        result = client.command(cdb, data=piece)[0]
        if result != 0:
            return result
    return 0


def read16(client, offset, length):
    cdb = struct.pack(">BBQIBB", 0x88, 0, offset // BS, length // BS, 0, 0)
    return client.command(cdb, read_length=length)


def data_offset(member):
    """Where the member's data area starts, from its first label copy."""
    with open(member, "rb") as f:
        label = f.read(4096)
    return struct.unpack_from("<Q", label, LABEL_DATA_OFFSET)[0] if label[:8] == b"ISPACELB" else None


def pread(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def flip(path, offset):
    """One byte changed behind the space's back, on the disk (not just in the page cache)."""
    fd = os.open(path, os.O_RDWR)
    try:
        b = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([b[0] ^ 0x5A]), offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def main():
    ispace, ispaced = sys.argv[1], sys.argv[2]
    scratch = ispace_testlib.scratch_dir("space-checksum")
    members = [os.path.join(scratch, n) for n in ("a.img", "b.img")]
    for m in members:
        with open(m, "wb") as f:
            f.truncate(MEMBER)
    home = os.path.join(scratch, "home")
    env = dict(os.environ, ISPACE_HOME=home, ISPACED=ispaced)
    daemon = None
    try:
        # 1. Create.
        r = space(ispace, env, "create", "s", "--checksum", "--layout", "stripe", "--member", members[0],
                  "--member", members[1])
        check(r.returncode == 0, f"a checksummed stripe is created ({r.stderr.strip()})")
        st = status(ispace, env, "s")
        check(st.get("checksums") is True and st.get("layout") == "stripe", "status --json says a checksummed stripe")
        check(space(ispace, env, "destroy", "s", "--yes").returncode == 0, "and destroyed")
        r = space(ispace, env, "create", "c", "--checksum", "--member", members[0], "--member", members[1])
        check(r.returncode == 0, "a checksummed mirror over two 40 MiB files is created")
        st = status(ispace, env)
        check(st.get("checksums") is True, "status --json says checksums")
        offsets = [data_offset(m) for m in members]
        check(all(o is not None and o >= MiB for o in offsets), f"the members' data areas start at {offsets}")

        # 2. Known content, exported.
        def start():
            return ispace_testlib.Ispaced(ispaced, ["--home", home, "--listen", "127.0.0.1:0", "--iqn", IQN,
                                                    "--lun", "space:c", "--reactors", "1"], env=env,
                                          log_path=os.path.join(scratch, "ispaced.log")).start()

        daemon = start()
        c = iscsi_raw.Client(daemon.host, daemon.port, timeout=20)
        check(c.login(IQN) == (0, 0), "a raw session logs in")
        for _ in range(3):  # the unit attention a new nexus gets first
            if c.test_unit_ready() == 0:
                break
        content = os.urandom(256 * 1024)
        at = 5 * MiB
        check(write16(c, at, content) == 0, "256 KiB of known content written at 5 MiB")
        other = os.urandom(64 * 1024)
        check(write16(c, 7 * MiB, other) == 0, "and 64 KiB at 7 MiB")
        check(read16(c, at, len(content))[1] == content, "it reads back")

        # 3. One byte of one copy flipped. Reads of a 2-way mirror alternate copies by MiB of the space:
        #    MiB 5 is served by slot 1, so that is the copy damaged (the one the read meets).
        where = offsets[1] + at + 40960 + 123
        good = pread(members[1], where, 1)
        flip(members[1], where)
        check(pread(members[1], where, 1) != good, f"one byte flipped in {os.path.basename(members[1])} at {where}")
        st_, data, sense = read16(c, at, len(content))
        check(st_ == 0 and data == content, f"the content reads back intact (status {st_}, sense {sense})")
        check(pread(members[1], where, 1) == good, "the bad copy was rewritten: the backing file is restored")
        st = status(ispace, env)
        errs = [m.get("checksum_errors") for m in st.get("members", [])]
        check(errs == [0, 1], f"checksum_errors per member: {errs}")
        text = space(ispace, env, "status", "c").stdout
        check("checksum errors: 1" in text, "status shows the member's checksum errors")
        check(read16(c, at, len(content))[1] == content and
              [m.get("checksum_errors") for m in status(ispace, env).get("members", [])] == [0, 1],
              "read again: intact, no new error")

        # 4. The same block bad on both copies: a medium error, never wrong data.
        block = 7 * MiB + 8192
        flip(members[0], offsets[0] + block + 7)
        flip(members[1], offsets[1] + block + 2000)
        st_, data, sense = read16(c, block, 4096)
        check(st_ == 2 and sense == (3, 0x11, 0x00),
              f"both copies bad: CHECK CONDITION, MEDIUM ERROR / UNRECOVERED READ ERROR ({st_}, {sense})")
        check(not data, "and no data")
        st_, data, _ = read16(c, 7 * MiB, 8192)
        check(st_ == 0 and data == other[:8192], "the blocks before it still read")

        # 5. Scrub (issue 14's acceptance): 20 flips at random blocks of one member, inside 4 MiB written at
        #    10 MiB that no read has met since.
        bulk = os.urandom(4 * MiB)
        check(write16(c, 10 * MiB, bulk) == 0, "4 MiB written at 10 MiB")
        blocks = random.sample(range(len(bulk) // 4096), 20)
        flips = [offsets[0] + 10 * MiB + b * 4096 + random.randrange(4096) for b in blocks]
        goods = [pread(members[0], f, 1) for f in flips]
        for f in flips:
            flip(members[0], f)
        r = space(ispace, env, "scrub", "c", "--wait")
        st = status(ispace, env)
        sc = st.get("scrub", {})
        check(r.returncode == 1 and "no good copy" in r.stdout,
              f"scrub --wait: done, and it fails for the block with no good copy (exit {r.returncode})")
        check(sc.get("repaired_blocks") == 20 and sc.get("unrecoverable_blocks") == 1 and sc.get("bad_blocks") == 22
              and sc.get("done_bytes") == sc.get("total_bytes") and not sc.get("running"),
              f"status --json scrub: all 20 repaired, 1 with no good copy, 22 bad copies ({sc})")
        check(read16(c, 10 * MiB, len(bulk))[1] == bulk, "the 4 MiB read back intact")
        check([pread(members[0], f, 1) for f in flips] == goods, "the scrub restored the backing file")
        c.close()

        # 5b. What the labels keep: a paused scrub's position and the checksum error counts across a restart
        #     of the holder; resumed from there; the last scrub (with the LBA of its lost block) after the
        #     next one.
        check(space(ispace, env, "scrub", "c", "--rate", "2M").returncode == 0, "a new scrub at 2 MiB/s")
        time.sleep(0.5)
        check(space(ispace, env, "scrub", "c", "--pause").returncode == 0, "paused")
        paused = None
        for _ in range(50):
            sc = status(ispace, env).get("scrub", {})
            if paused is not None and sc.get("done_bytes") == paused:
                break
            paused = sc.get("done_bytes")
            time.sleep(0.2)
        check(sc.get("state") == "paused" and 0 < paused < 7 * MiB,
              f"status: paused at {paused} bytes, before the lost block at 7 MiB ({sc})")
        errors = [m.get("checksum_errors") for m in status(ispace, env).get("members", [])]
        daemon.stop()
        daemon = start()
        sc = status(ispace, env).get("scrub", {})
        check(sc.get("state") == "paused" and sc.get("done_bytes") == paused,
              f"after a restart of the holder: still paused at {paused} ({sc})")
        after = [m.get("checksum_errors") for m in status(ispace, env).get("members", [])]
        check(after == errors and all(after), f"checksum_errors kept across the restart: {errors} -> {after}")
        r = space(ispace, env, "scrub", "c", "--resume", "--wait")
        sc = status(ispace, env).get("scrub", {})
        written = (len(content) + len(other) + len(bulk)) // 4096
        check(r.returncode == 1 and sc.get("state") == "done" and sc.get("checked_blocks") == written,
              f"--resume finished it from the checkpoint: {written} written blocks checked once each ({sc})")
        daemon.stop()
        daemon = start()
        sc = status(ispace, env).get("scrub", {})
        lba = block // BS
        check(sc.get("state") == "done" and sc.get("finished", 0) > 0 and sc.get("unrecoverable_lbas") == [lba],
              f"after another restart the last scrub is shown, with the LBA of its lost block ({sc})")
        text = space(ispace, env, "status", "c").stdout
        check("last scrub: finished" in text and f"no good copy at LBA {lba}" in text, f"status says so:\n{text}")
        errors = [m.get("checksum_errors") for m in status(ispace, env).get("members", [])]
        daemon.stop()
        daemon = None
        st = status(ispace, env)
        check(st.get("open") is False and st.get("scrub", {}).get("state") == "done" and
              st.get("scrub", {}).get("unrecoverable_lbas") == [lba] and
              [m.get("checksum_errors") for m in st.get("members", [])] == errors,
              f"held by no one: status reads the last scrub and the counts from the labels ({st.get('scrub')})")

        # 5c. Grown: the members extended by 8 MiB, `space grow` (held by no one: opened for it), then a
        # scrub of the whole larger space finds nothing new in the range it gained.
        size = st.get("size", 0)
        for m in members:
            os.truncate(m, MEMBER + 8 * MiB)
        r = space(ispace, env, "grow", "c")
        st = status(ispace, env)
        check(r.returncode == 0 and "grew" in r.stderr and st.get("size") == size + 8 * MiB,
              f"a checksummed mirror grows ({r.stderr.strip()}; {size} -> {st.get('size')})")
        daemon = start()
        r = space(ispace, env, "scrub", "c", "--wait")
        sc = status(ispace, env).get("scrub", {})
        check(sc.get("total_bytes") == size + 8 * MiB and sc.get("unrecoverable_lbas") == [lba]
              and sc.get("bad_blocks") == 2,
              f"a scrub of the grown space: only the block known lost, bad on both copies ({sc})")
        daemon.stop()
        daemon = None

        # 6. A file on ext4.
        why = attach_testlib.why_not_runnable(sys.argv[3], tools=("mkfs.ext4", "filefrag", "debugfs")) \
            if len(sys.argv) > 3 else "no attach driver given"
        if why:
            print(f"SKIP part 6: {why}")
        else:
            a_file(ispace, env, scratch)
    finally:
        if daemon:
            daemon.stop()
        mnt = os.path.join(scratch, "mnt")
        if attach_testlib.mounted(mnt):
            attach_testlib.run(["umount", "-l", mnt])
        subprocess.run([ispace, "space", "detach", "f"], env=env, capture_output=True, timeout=60)
    return check.finish(scratch)


def attach(ispace, env):
    r = space(ispace, env, "attach", "f")
    dev = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else ""
    return dev if dev.startswith("/dev/") else None


def a_file(ispace, env, scratch):
    files = [os.path.join(scratch, n) for n in ("e.img", "f.img")]
    for m in files:
        with open(m, "wb") as f:
            f.truncate(MEMBER)
    r = space(ispace, env, "create", "f", "--checksum", "--member", files[0], "--member", files[1])
    check(r.returncode == 0, "a second checksummed mirror for a filesystem")
    dev = attach(ispace, env)
    check(dev is not None, f"attached at {dev}")
    if dev is None:
        return
    mnt = os.path.join(scratch, "mnt")
    os.makedirs(mnt, exist_ok=True)
    check(attach_testlib.run(["mkfs.ext4", "-q", "-F", "-b", "4096", dev]).returncode == 0, "mkfs.ext4 on it")
    check(attach_testlib.run(["mount", dev, mnt]).returncode == 0, "it mounts")
    content = os.urandom(3 * MiB)
    path = os.path.join(mnt, "known.bin")
    with open(path, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    # Where the file lies on the device: filefrag's first extent (physical 4 KiB blocks of the fs).
    r = attach_testlib.run(["filefrag", "-v", "-b4096", path])
    m = re.search(r"^\s*0:\s+0\.\.\s*(\d+):\s+(\d+)\.\.", r.stdout, re.M)
    check(m is not None, "filefrag gives the file's first extent")
    check(attach_testlib.umount(mnt), "it unmounts")
    check(space(ispace, env, "detach", "f").returncode == 0, "it detaches")
    if m is None:
        return
    length_blocks, physical = int(m.group(1)) + 1, int(m.group(2))
    # A block of the file's first extent that is read from slot 1 (reads alternate copies by MiB).
    block = next((physical + i for i in range(length_blocks) if ((physical + i) * 4096 >> 20) % 2 == 1), None)
    check(block is not None, f"a block of the file in an odd MiB of the space (extent at {physical}, {length_blocks})")
    if block is None:
        return
    offset = data_offset(files[1]) + block * 4096 + 777
    expected = content[(block - physical) * 4096 + 777]
    check(pread(files[1], offset, 1)[0] == expected, "the member holds the file's byte at the mapped place")
    flip(files[1], offset)
    dev = attach(ispace, env)
    check(dev is not None and attach_testlib.run(["mount", "-o", "ro", dev, mnt]).returncode == 0,
          "attached and mounted again")
    # O_DIRECT in 4 KiB reads: each reaches the space as a request of its own block (a larger read-ahead
    # starting in an even MiB would be served by the other copy, and nothing would meet the bad byte).
    r = subprocess.run(["dd", f"if={path}", "iflag=direct", "bs=4096", "status=none"], capture_output=True,
                       timeout=60)
    check(r.returncode == 0 and r.stdout == content, "the file reads back intact")
    check(pread(files[1], offset, 1)[0] == expected, "the member's backing file is restored")
    errs = [m.get("checksum_errors") for m in status(ispace, env, "f").get("members", [])]
    check(errs == [0, 1], f"checksum_errors per member: {errs}")
    # Another block of the file flipped on both members: the scrub finds no good copy, and names the file.
    lost = physical if physical != block else physical + 1
    for member in files:
        flip(member, data_offset(member) + lost * 4096 + 123)
    r = space(ispace, env, "scrub", "f", "--wait")
    lba = lost * 4096 // 512
    check(r.returncode == 1 and f"LBA {lba} is in file /known.bin" in r.stdout,
          f"scrub names the file that holds the lost block (LBA {lba}): {r.stdout.strip()[-400:]}")
    check(attach_testlib.umount(mnt), "it unmounts")
    check(space(ispace, env, "detach", "f").returncode == 0, "it detaches")


if __name__ == "__main__":
    sys.exit(main())
