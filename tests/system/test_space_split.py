#!/usr/bin/env python3
"""A split: the two members of a mirror written apart, each in its own epoch, are not assembled.

A mirror of two files is exported by ispaced (--lun space:x) and written with `ispace cp`. Then member b
is taken away (its file renamed) and the space is served and written with a alone; then a is taken away
and b comes back, and the space is served and written with b alone. With both back:
 - `ispace space assemble A B` refuses, naming both members and what --force-from would discard;
 - `ispace space assemble --force-from A A B` assembles from a: served again, b is rebuilt in full from a,
   and the space reads what was written on a's side.

Usage: test_space_split.py ISPACE ISPACED
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attach_testlib  # noqa: E402
import ispace_testlib  # noqa: E402

check = ispace_testlib.Checks()
MiB = 1 << 20
MEMBER = 40 * MiB


def main():
    ispace, ispaced = sys.argv[1], sys.argv[2]
    scratch = ispace_testlib.scratch_dir("space-split")
    a, b = os.path.join(scratch, "a.img"), os.path.join(scratch, "b.img")
    for m in (a, b):
        with open(m, "wb") as f:
            f.truncate(MEMBER)
    home = os.path.join(scratch, "home")
    env = dict(os.environ, ISPACE_HOME=home, ISPACED=ispaced)

    def space(*args):
        r = attach_testlib.run([ispace, "space"] + list(args), env=env)
        if r.returncode != 0:
            print(r.stderr.strip())
        return r

    def serve_and_write(pattern):
        """Serves the space with whatever members are there and writes 4 MiB of `pattern` at 0."""
        data = os.path.join(scratch, f"p{pattern}.bin")
        with open(data, "wb") as f:
            f.write(bytes([pattern]) * (4 * MiB))
        d = ispace_testlib.Ispaced(ispaced, ["--home", home, "--listen", "127.0.0.1:0", "--iqn",
                                             "iqn.2026-11.org.ispace.test:split", "--lun", "space:x", "--reactors", "1"],
                                   log_path=os.path.join(scratch, f"ispaced-{pattern}.log")).start()
        try:
            r = attach_testlib.run([ispace, "cp", data, d.urls[0]], env=env)
            if r.returncode != 0:
                print(r.stderr)
            return r.returncode == 0
        finally:
            d.stop()

    def read_first(pattern_file):
        """The first 4 MiB of the space, served from the catalog as it is now."""
        d = ispace_testlib.Ispaced(ispaced, ["--home", home, "--listen", "127.0.0.1:0", "--iqn",
                                             "iqn.2026-11.org.ispace.test:split", "--lun", "space:x", "--reactors", "1"],
                                   log_path=os.path.join(scratch, "ispaced-read.log")).start()
        try:
            out = os.path.join(scratch, pattern_file)
            r = attach_testlib.run([ispace, "cp", d.urls[0], out], env=env)
            with open(out, "rb") as f:
                return f.read(4 * MiB) if r.returncode == 0 else b""
        finally:
            d.stop()

    check(space("create", "x", "--layout", "mirror", "--member", a, "--member", b).returncode == 0,
          "a mirror of two files is created")
    check(serve_and_write(1), "written with both members")
    os.rename(b, b + ".away")
    check(serve_and_write(2), "written with a alone (b away)")
    os.rename(a, a + ".away")
    os.rename(b + ".away", b)
    check(serve_and_write(3), "written with b alone (a away): the two sides are now apart")
    os.rename(a + ".away", a)

    r = space("assemble", a, b)
    check(r.returncode != 0 and a in r.stderr and b in r.stderr and "--force-from" in r.stderr,
          f"assemble refuses the split and names both members ({r.stderr.strip()[-300:]})")
    r = space("assemble", "--force-from", a, a, b)
    check(r.returncode == 0, "assemble --force-from a assembles from a")
    data = read_first("after.bin")
    check(data == bytes([2]) * (4 * MiB), "the space holds what was written on a's side")
    st = space("status", "x", "--json")
    states = [m["state"] for m in json.loads(st.stdout)["members"]] if st.returncode == 0 else []
    check(len(states) == 2 and states[0] == "active", f"a is active and b, rebuilt in full from it while served, too ({states})")
    return check.finish(scratch)


if __name__ == "__main__":
    sys.exit(main())
