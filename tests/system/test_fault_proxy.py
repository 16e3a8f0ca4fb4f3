#!/usr/bin/env python3
"""The fault proxy (fault_proxy.py) against ispaced at ErrorRecoveryLevel 0, with `ispace cp`.

Faults 1-4 make the connection fail; at ERL 0 the initiator logs in again (session reinstatement) and
sends again what was not acknowledged, so each copy still ends identical:
 1. a connection cut as the 20th SCSI Command goes to the target;
 2. a byte of a SCSI Command's header corrupted on its way to the target, with header digests: the
    target drops the connection (RFC 7143 §7.8, ERL 0);
 3. a byte of a Data-In's data corrupted on its way to the initiator, with data digests: the initiator
    drops the connection;
 4. a connection cut as the 30th Data-In comes back to the initiator;
 5. a Data-Out dropped on its way to the target: the target finds the DataSN gap and fails that command
    (ABORTED COMMAND, its documented ERL 0 behaviour), so the copy must fail loudly, never end with
    other data.
Each check also counts that the proxy fired (and, for 1-4, that the initiator came back over a new
connection), so a proxy that injects nothing cannot pass.

Usage: test_fault_proxy.py ISPACE ISPACED
"""
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ispace_testlib  # noqa: E402
from fault_proxy import FaultProxy, Rule  # noqa: E402

IQN = "iqn.2026-11.org.ispace.test:faults"
SIZE = 24 << 20
check = ispace_testlib.Checks()


def run_cp(ispace, args, timeout=60, bs="256K"):
    started = time.time()
    r = subprocess.run([ispace, "--log-level", "info", "cp", "--bs", bs, "--qd", "4"] + args,
                       capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stderr, time.time() - started


def through(proxy_rules, ispace, daemon, args_of, what, digest=None, bs="256K"):
    """Runs one `ispace cp` through a fresh proxy with `proxy_rules`; checks it recovered."""
    host, port = daemon.portal().rsplit(":", 1)
    proxy = FaultProxy((host, int(port)), proxy_rules).start()
    try:
        url = f"iscsi://{proxy.address()}/{IQN}/0"
        extra = ["--digest", digest] if digest else []
        rc, err, took = run_cp(ispace, extra + args_of(url), bs=bs)
    finally:
        proxy.stop()
    fired = proxy.fired_count()
    print(f"--- {what}: exit {rc} in {took:.1f} s; proxy fired {fired}, {proxy.connections} connection(s)")
    if rc != 0 or fired == 0:
        print(err[-3000:])
    check(fired >= 1, f"{what}: the proxy injected the fault ({proxy.rules})")
    check(rc == 0, f"{what}: ispace cp exits 0")
    check(proxy.connections >= 2, f"{what}: the initiator reconnected ({proxy.connections} connections)")
    return rc


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    ispace, ispaced_bin = sys.argv[1:3]
    scratch = ispace_testlib.scratch_dir("faults")
    src = os.path.join(scratch, "src.bin")
    with open(src, "wb") as f:
        f.write(os.urandom(SIZE))
    want = ispace_testlib.sha256_file(src)

    # The rule grammar of the command line, and a rule that counts across connections.
    r = Rule.parse("to_initiator:corrupt:opcode=0x25,nth=3,every=2,times=2,offset=data+7")
    fired = [r.wants("to_initiator", 0x25, 100) for _ in range(8)]
    check(fired == [False, False, True, False, True, False, False, False] and r.matched == 8,
          f"a rule fires on the 3rd match, every 2nd after, twice at most: {fired}")
    check(not r.wants("to_target", 0x25, 100) and not Rule.parse("to_target:drop:opcode=5").wants(
        "to_target", 0x01, 0), "a rule ignores other directions and opcodes")
    check(not Rule.parse("to_target:drop:final=0").wants("to_target", 0x05, 8, final=True)
          and Rule.parse("to_target:drop:final=0").wants("to_target", 0x05, 8, final=False),
          "a rule can ask for PDUs with the F bit clear")

    daemon = ispace_testlib.Ispaced(ispaced_bin, ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun", "memory:32M",
                                                  "--reactors", "2", "--max-erl", "0"],
                                    log_path=os.path.join(scratch, "ispaced.log"))
    daemon.start()
    try:
        through([Rule("to_target", "cut", opcode=0x01, nth=20)], ispace, daemon, lambda url: [src, url],
                "a connection cut at the 20th command (writing)")
        back = os.path.join(scratch, "back.bin")
        # Read back directly: what the cut copy wrote must be all there.
        rc, _, _ = run_cp(ispace, [f"iscsi://{daemon.portal()}/{IQN}/0", back])
        check(rc == 0 and ispace_testlib.sha256_file(back, SIZE) == want, "the LUN holds the source after the cut")

        through([Rule("to_target", "corrupt", opcode=0x01, nth=10, offset=20)], ispace, daemon,
                lambda url: [src, url], "a SCSI Command header corrupted (header digest, writing)", digest="crc32c")

        for name, rule in (("a Data-In's data corrupted (data digest, reading)",
                            Rule("to_initiator", "corrupt", opcode=0x25, nth=15, offset="data+100")),
                           ("a connection cut at the 30th Data-In (reading)",
                            Rule("to_initiator", "cut", opcode=0x25, nth=30))):
            if os.path.exists(back):
                os.unlink(back)
            through([rule], ispace, daemon, lambda url: [url, back], name,
                    digest="crc32c" if "digest" in name else None)
            check(os.path.exists(back) and ispace_testlib.sha256_file(back, SIZE) == want,
                  f"{name}: the copy read back is identical")
        # A dropped Data-Out (4 MiB chunks go beyond FirstBurstLength: R2Ts and Data-Outs), one that is
        # not the last of its sequence, so the next one shows the gap (a dropped last one would be found
        # only by the initiator's command timeout). At ERL 0 the target finds the DataSN gap and fails
        # that command today (ERL 1 would send a Recovery R2T): the copy must then fail loudly, never end
        # "successfully" with other data.
        zero = os.path.join(scratch, "zero.bin")
        with open(zero, "wb") as f:
            f.truncate(SIZE)
        run_cp(ispace, [zero, f"iscsi://{daemon.portal()}/{IQN}/0"])
        host, port = daemon.portal().rsplit(":", 1)
        proxy = FaultProxy((host, int(port)), [Rule("to_target", "drop", opcode=0x05, nth=15, final=False)]).start()
        try:
            rc, err, _ = run_cp(ispace, [src, f"iscsi://{proxy.address()}/{IQN}/0"], bs="4M")
        finally:
            proxy.stop()
        print(f"--- a Data-Out dropped (writing): exit {rc}; proxy fired {proxy.fired_count()}\n{err[-600:]}")
        check(proxy.fired_count("drop") == 1, "a Data-Out dropped: the proxy dropped one")
        time.sleep(0.2)
        gap = re.search(r"Data-Out for ITT \S+ (with DataSN|at offset) \d+ where \d+ was expected",
                        daemon.log_tail(400))
        check(gap is not None or rc == 0,
              "a Data-Out dropped: the target noticed the DataSN gap (or recovered from it)")
        rc2, _, _ = run_cp(ispace, [f"iscsi://{daemon.portal()}/{IQN}/0", back])
        same = rc2 == 0 and ispace_testlib.sha256_file(back, SIZE) == want
        check(rc != 0 or same, f"a Data-Out dropped: cp exit {rc} and the LUN {'equals' if same else 'differs from'} "
                               "the source: never a success with other data")
    finally:
        rc = daemon.stop()
    check(rc == 0, f"ispaced exits 0 (exit {rc})")
    return check.finish(scratch, daemon)


if __name__ == "__main__":
    sys.exit(main())
