#!/usr/bin/env python3
"""Data-spaces through the `ispace space` verbs, with real targets: two ispaced and one Debian tgt.

 1. A 3-way mirror over an ispaced LUN, another ispaced LUN and a tgt LUN is created and attached (the
    command starts the holder, ispaced --holder, by itself), formatted with mkfs.ext4 and mounted. Files
    are written and checksummed; tgtd is killed with kill -9 in the middle of the writes: the writes go
    on, `status --json` shows that member failed, fsck.ext4 -fn is clean. A 512 MiB file more is written
    while it is down. tgtd restarted on the same port and backing file: the member resyncs by itself what
    it missed (>= 512 MiB) in under 2 minutes. Then both ispaced are killed, caches dropped, and every
    file verifies, read from the resynced tgt member alone.
 2. Fencing: another home (another host identity) assembles the space from its members' labels alone
    (an empty catalog rebuilt) and cannot attach it while the first holds it (the error names the
    holder); with --takeover it can, the first holder detaches itself and its status says it lost the
    space, and fsck on the new holder is clean.
 3. Refusals write nothing: attach of an attached space, destroy without --yes, a scrub of a space with
    no checksums, a member of another space without --force; at create, a URL with a bad LUN, an
    unreachable member, a member too small and members of different block sizes (named, and the good
    member left all zeroes).
 4. A stripe over 2 members and a concat over 3 have the summed capacity (less their labels).

Usage: test_space_cli.py ISPACE ISPACED ATTACH_DRIVER     (exit 77 = skipped: not root, no FUSE/loop, no tgtd)
"""
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attach_testlib  # noqa: E402
import ispace_testlib  # noqa: E402

check = ispace_testlib.Checks()
MiB = 1 << 20
MEMBER = 640 * MiB  # each member of the 3-way mirror: room for what the tgt member misses and more
MISSED = 512 * MiB  # the file written while the tgt member is down, on top of a few small ones
TGT_IQN = "iqn.2026-11.org.ispace.test:tgt"


class Tgtd:
    """A private tgtd serving one file as LUN 1 on `port`; kill() is kill -9."""

    def __init__(self, scratch, lun_file, port):
        self.port = port
        self.control = random.randint(1000, 32000)
        self.log = open(os.path.join(scratch, "tgtd.log"), "a")
        self.proc = subprocess.Popen(["tgtd", "-f", "-C", str(self.control), "--iscsi", f"portal=127.0.0.1:{port}"],
                                     stdout=self.log, stderr=self.log)
        deadline = time.time() + 10
        while self.adm("--op", "show", "--mode", "target").returncode != 0:
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("tgtd did not start")
            time.sleep(0.1)
        self.adm("--op", "new", "--mode", "target", "--tid", "1", "-T", TGT_IQN)
        self.adm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", lun_file)
        self.adm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        self.url = f"iscsi://127.0.0.1:{port}/{TGT_IQN}/1"

    def adm(self, *args):
        return subprocess.run(["tgtadm", "-C", str(self.control), "--lld", "iscsi"] + list(args),
                              capture_output=True, text=True, timeout=30)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.adm("--op", "delete", "--mode", "system", "--force")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


def holder_log_tail(home, lines=60):
    """The last lines of the holder's log (ispaced --holder logs to HOME/ispaced.log), for a failed check."""
    try:
        with open(os.path.join(home, "ispaced.log"), errors="replace") as f:
            return "holder log tail:\n" + "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"no holder log: {e}"


class Cli:
    def __init__(self, ispace, ispaced, home):
        self.ispace = ispace
        self.env = dict(os.environ, ISPACE_HOME=home, ISPACED=ispaced)
        self.home = home

    def __call__(self, *args, timeout=120):
        r = attach_testlib.run([self.ispace, "space"] + list(args), timeout=timeout, env=self.env)
        if r.returncode != 0:
            print(r.stderr.strip())
        return r

    def status(self, name):
        r = self("status", name, "--json")
        return json.loads(r.stdout) if r.returncode == 0 else None

    def holder_pid(self):
        return attach_testlib.holder_pid(self.home)

    def stop_holder(self):
        """The holder the CLI started for us, if it is still there (a failed test): SIGTERM, then -9."""
        pid = self.holder_pid()
        if pid:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if self.holder_pid() is None:
                    return
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)


def wait_for(predicate, seconds, step=0.2):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None


def write_files(mnt, count, size, sums, seed):
    rnd = random.Random(seed)
    for i in range(count):
        data = rnd.randbytes(size)
        path = os.path.join(mnt, f"f{seed}-{i}")
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        sums[path] = hashlib.sha256(data).hexdigest()


def write_big_file(mnt, size, sums):
    """One file of `size` bytes, 8 MiB at a time (each piece a random block with its index stamped in,
    so no two pieces are equal), synced every 64 MiB so that the page cache never holds much of it."""
    block = random.Random(7).randbytes(8 * MiB)
    digest = hashlib.sha256()
    path = os.path.join(mnt, "big")
    with open(path, "wb") as f:
        for i in range(size // len(block)):
            piece = i.to_bytes(8, "little") + block[8:]
            f.write(piece)
            digest.update(piece)
            if i % 8 == 7:
                os.fsync(f.fileno())
        os.fsync(f.fileno())
    sums[path] = digest.hexdigest()


def verify_files(sums):
    bad = []
    for path, digest in sums.items():
        try:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while piece := f.read(8 * MiB):
                    h.update(piece)
            if h.hexdigest() != digest:
                bad.append(path)
        except OSError as e:
            bad.append(f"{path} ({e})")
    return bad


def member_state(st, index):
    return st["members"][index]["state"] if st and len(st.get("members", [])) > index else None


def main():
    ispace, ispaced = sys.argv[1], sys.argv[2]
    why = attach_testlib.why_not_runnable(sys.argv[3])
    if why is None and shutil.which("tgtd") is None:
        why = "tgtd (Debian tgt) is not installed"
    if why:
        print(f"SKIP: {why}")
        return 77
    scratch = ispace_testlib.scratch_dir("space-cli")
    mnt = os.path.join(scratch, "mnt")
    os.makedirs(mnt)

    def ispaced_target(name, extra=(), port=0):
        args = ["--listen", f"127.0.0.1:{port}", "--iqn", f"iqn.2026-11.org.ispace.test:{name}", "--reactors", "1",
                "--lun", os.path.join(scratch, f"{name}0.img") + f",size={MEMBER // MiB}M"] + list(extra)
        return ispace_testlib.Ispaced(ispaced, args, log_path=os.path.join(scratch, f"{name}.log")).start()

    small = []
    for i in range(5):
        small += ["--lun", os.path.join(scratch, f"s{i}.img") + ",size=24M"]
    a = ispaced_target("a", small)
    b = ispaced_target("b")
    tgt_file = os.path.join(scratch, "t.img")
    with open(tgt_file, "wb") as f:
        f.truncate(MEMBER)
    tgt_port = ispace_testlib.free_port()
    tgt = Tgtd(scratch, tgt_file, tgt_port)
    one = Cli(ispace, ispaced, os.path.join(scratch, "h1"))
    two = Cli(ispace, ispaced, os.path.join(scratch, "h2"))
    mounted = False
    try:
        members = [a.urls[0], b.urls[0], tgt.url]
        r = one("create", "m", "--layout", "mirror", *sum((["--member", u] for u in members), []))
        check(r.returncode == 0, "a 3-way mirror over two ispaced LUNs and a tgt LUN is created")
        r = one("attach", "m")
        dev = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else ""
        check(dev.startswith("/dev/"), f"attach prints a block device ({dev}) and starts a holder")
        check(one.holder_pid() is not None, "the holder (ispaced --holder) runs after the command exited")
        check(one("attach", "m").returncode != 0, "a second attach of the attached space is refused")
        r = attach_testlib.run(["mkfs.ext4", "-q", "-F", dev])
        check(r.returncode == 0, "mkfs.ext4 on the attached space")
        check(attach_testlib.run(["mount", dev, mnt]).returncode == 0, "it mounts")
        mounted = True

        # kill -9 of tgtd in the middle of the writes.
        sums = {}
        write_files(mnt, 4, 2 * MiB, sums, 1)
        killer = threading.Timer(0.2, tgt.kill)
        killer.start()
        started = time.time()
        write_files(mnt, 12, 2 * MiB, sums, 2)
        killer.join()
        check(len(sums) == 16, f"the writes go on while tgtd is killed ({time.time() - started:.1f} s)")
        st = wait_for(lambda: (lambda s: s if member_state(s, 2) == "failed" else None)(one.status("m")), 20)
        check(st is not None, "status --json shows the tgt member failed")
        check(st is not None and member_state(st, 0) == "active" and member_state(st, 1) == "active",
              "the two ispaced members stay active")
        attach_testlib.run(["umount", mnt])
        mounted = False
        r = attach_testlib.run(["fsck.ext4", "-fn", dev])
        check(r.returncode == 0, f"fsck.ext4 -fn is clean with one member down ({r.stdout.strip()[-200:]})")
        check(attach_testlib.run(["mount", dev, mnt]).returncode == 0, "it mounts again")
        mounted = True
        write_files(mnt, 2, 2 * MiB, sums, 3)
        t0 = time.time()
        write_big_file(mnt, MISSED, sums)
        st = one.status("m")
        check(st is not None and member_state(st, 2) == "failed",
              f"{MISSED // MiB} MiB more written with the tgt member down ({time.time() - t0:.1f} s)")
        dirty_bytes = st["dirty_regions"] * st["region"] if st else 0
        copied_before = st["resync"]["copied_bytes"] if st else 0

        # tgtd back on the same port and file: the member resyncs by itself what it missed, in under 2
        # minutes (waited for a little longer, so that a slow resync is measured rather than cut short).
        tgt.stop()
        t_restart = time.time()
        tgt = Tgtd(scratch, tgt_file, tgt_port)
        st = wait_for(lambda: (lambda s: s if member_state(s, 2) == "active" and not s["resync"]["running"]
                               else None)(one.status("m")), 150, 0.5)
        took = time.time() - t_restart
        check(st is not None, "the restarted tgt member resyncs by itself and is active again")
        if st:
            moved = st["resync"]["copied_bytes"] - copied_before
            check(MISSED <= moved <= dirty_bytes * 1.25,
                  f"the tgt member's resync moved {moved // MiB} MiB: at least the {MISSED // MiB} MiB it missed, "
                  f"no more than 1.25x the {dirty_bytes // MiB} MiB of dirty regions")
            check(took < 120, f"it resynced {moved // MiB} MiB by itself in {took:.1f} s after tgtd restarted "
                  f"(under 2 minutes)")

        # Both ispaced killed, caches dropped: every file from the tgt member alone.
        a.proc.send_signal(signal.SIGKILL)
        b.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        b.proc.wait()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        bad = verify_files(sums)
        check(not bad, f"every file verifies, read from the resynced tgt member alone ({len(sums)} files; bad: {bad[:3]})")
        a = ispaced_target("a", small, a.port)
        b = ispaced_target("b", (), b.port)
        t_back = time.time()
        back = wait_for(lambda: (lambda s: s if all(m["state"] == "active" for m in s["members"])
                                 and not s["resync"]["running"] else None)(one.status("m")), 90, 0.5)
        if not check(back is not None, f"the ispaced members come back and resync ({time.time() - t_back:.1f} s)"):
            print(holder_log_tail(one.home))

        # Fencing: a second home (another host) rebuilds its catalog from the labels alone.
        r = two("assemble", *members)
        check(r.returncode == 0, "assemble into an empty ISPACE_HOME rebuilds the catalog from the labels")
        r = two("attach", "m")
        check(r.returncode != 0 and "h1" in r.stderr, f"another host cannot attach it; the error names the holder "
              f"({r.stderr.strip()[-160:]})")
        r = two("attach", "m", "--takeover")
        dev2 = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else ""
        check(dev2.startswith("/dev/"), f"with --takeover it can ({dev2})")
        # The first holder's next write fails (reservation conflict) and it lets go by itself.
        try:
            with open(os.path.join(mnt, "late"), "wb") as f:
                f.write(b"x" * MiB)
                f.flush()
                os.fsync(f.fileno())
            late_failed = False
        except OSError:
            late_failed = True
        check(late_failed, "the first holder's next write fails")
        st = wait_for(lambda: (lambda s: s if s.get("lost") else None)(one.status("m")), 20)
        check(st is not None, "the first holder's status says it lost the space")
        attach_testlib.run(["umount", "-l", mnt])
        mounted = False
        check(wait_for(lambda: one.holder_pid() is None, 20) is not None,
              "the first holder detached itself and exited")
        # For the file system, a takeover is a crash of the first holder: it was mounted there, and its
        # journal may hold committed metadata not yet written home. The new holder's mount replays it
        # (as after any crash); fsck -fn before that reports the unreplayed state as damage.
        check(attach_testlib.run(["mount", dev2, mnt]).returncode == 0, "the new holder mounts it (journal replay)")
        attach_testlib.run(["umount", mnt])
        r = attach_testlib.run(["fsck.ext4", "-fn", dev2])
        check(r.returncode == 0, f"fsck on the new holder is clean ({r.returncode}: {(r.stdout + r.stderr)[-600:]!r})")
        check(two("detach", "m").returncode == 0, "the new holder detaches")

        # Refusals.
        r = two("destroy", "m")
        check(r.returncode != 0 and "--yes" in r.stderr, "destroy without --yes is refused")
        r = two("scrub", "m")
        check(r.returncode != 0 and "no block checksums" in r.stderr,
              f"a scrub of a space made without --checksum says so ({r.stderr.strip()[-160:]})")
        r = two("create", "other", "--layout", "mirror", "--member", a.urls[0], "--member", a.urls[1])
        check(r.returncode != 0 and "'m'" in r.stderr, f"a member of another space is refused, naming it "
              f"({r.stderr.strip()[-160:]})")
        # Bad members at create: refused with the member named, and nothing written to the good one.
        good = os.path.join(scratch, "good.img")
        tiny = os.path.join(scratch, "tiny.img")
        for path, size in ((good, 32 * MiB), (tiny, 256 * 1024)):
            with open(path, "wb") as f:
                f.truncate(size)
        bad_lun = a.urls[0].rsplit("/", 1)[0] + "/9"
        away = f"iscsi://127.0.0.1:{ispace_testlib.free_port()}/iqn.2026-11.org.ispace.test:gone/0"
        for member, words, what in ((bad_lun, "no LUN 9", "a URL with a bad LUN"),
                                    (away, "127.0.0.1", "an unreachable member"),
                                    (tiny, "too small", "a member too small"),
                                    (f"{os.path.join(scratch, 'big4k.img')},size=32M,block=4096", "block size",
                                     "members of different block sizes")):
            r = two("create", "bad", "--layout", "mirror", "--member", good, "--member", member)
            check(r.returncode != 0 and words in r.stderr, f"{what} is refused ({r.stderr.strip()[-160:]})")
        r = two("create", "bad", good, tiny)
        check(r.returncode == 2 and f"--member {good} --member {tiny}" in r.stderr,
              f"members named without --member: the error says how to name them ({r.stderr.strip()[-160:]})")
        with open(good, "rb") as f:
            check(f.read() == bytes(32 * MiB), "nothing was written to the good member")
        check("bad" not in two("list").stdout, "no catalog entry either")
        st = two.status("m")
        check(st is not None and st["epoch"] > 0, "the space is still there")

        # Capacity of stripe and concat.
        r = two("create", "st", "--layout", "stripe", "--member", a.urls[1], "--member", a.urls[2])
        st_size = json.loads(two("status", "st", "--json").stdout)["size"] if r.returncode == 0 else 0
        r = two("create", "ct", "--layout", "concat", "--member", a.urls[3], "--member", a.urls[4],
                "--member", a.urls[5])
        ct_size = json.loads(two("status", "ct", "--json").stdout)["size"] if r.returncode == 0 else 0
        m_size = st["size"] if st else 0  # one member's data area (a mirror of equal members)
        small_data = st_size // 2
        check(st_size > 0 and st_size >= 2 * (24 - 2) * MiB, f"a stripe over 2 has their summed capacity ({st_size})")
        check(ct_size > 0 and ct_size >= 3 * (24 - 2) * MiB and ct_size <= 3 * 24 * MiB,
              f"a concat over 3 has their summed capacity ({ct_size}; {small_data}, {m_size})")
        for name in ("st", "ct", "m"):
            check(two("destroy", name, "--yes").returncode == 0, f"{name} is destroyed")
    finally:
        if mounted:
            attach_testlib.run(["umount", "-l", mnt])
        one.stop_holder()
        two.stop_holder()
        tgt.stop()
        a.stop()
        b.stop()
    return check.finish(scratch, a)


if __name__ == "__main__":
    sys.exit(main())
