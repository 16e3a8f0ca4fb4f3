#!/usr/bin/env python3
"""ErrorRecoveryLevel 1 end to end: `ispace cp` to ispaced and back through the fault proxy, with about
1 % of the data segments corrupted each way (data digests on).

At ERL 1 (both sides' default) every corrupted segment is recovered within the connection: a Data-Out or
a command's immediate data by a Reject and a recovery R2T or a resend of the command, a Data-In by a Data
SNACK. The copy must end identical over the one connection it started with (no session reinstatement,
no connection dropped), and the logs must show the recovery R2Ts and SNACKs.

At ERL 0 (ispaced --max-erl 0) the same faults cost the connection each time: the initiator logs in
again and re-sends what had no status, and the copy still ends identical.

Usage: test_erl.py ISPACE ISPACED
"""
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ispace_testlib  # noqa: E402
from fault_proxy import FaultProxy, Rule  # noqa: E402

IQN = "iqn.2026-12.org.ispace.test:erl"
SIZE = int(os.environ.get("ISPACE_ERL_TEST_MIB", "48")) << 20
check = ispace_testlib.Checks()


def faults():
    # ~1 %: one data segment in a hundred, each way, from the 20th on. 1 MiB chunks make a SCSI Command
    # with 256 KiB of immediate data and Data-Outs answering R2Ts for the rest.
    return [Rule("to_target", "corrupt", min_data=1, nth=20, every=100, offset="data+9"),
            Rule("to_initiator", "corrupt", opcode=0x25, nth=20, every=100, offset="data+9")]


def cp(ispace, args, timeout=120):
    started = time.time()
    r = subprocess.run([ispace, "--log-level", "info", "cp", "--bs", "1M", "--qd", "4", "--digest", "crc32c"] + args,
                       capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stderr, time.time() - started


def round_trip(ispace, daemon, src, back, what):
    """Copies src to the LUN and back through a fresh proxy with faults(); returns (proxy, stderr, seconds)."""
    host, port = daemon.portal().rsplit(":", 1)
    proxy = FaultProxy((host, int(port)), faults()).start()
    errs = ""
    took = 0.0
    try:
        url = f"iscsi://{proxy.address()}/{IQN}/0"
        rc, err, t = cp(ispace, [src, url])
        errs += err
        took += t
        check(rc == 0, f"{what}: ispace cp to the LUN exits 0 (took {t:.1f} s)")
        if os.path.exists(back):
            os.unlink(back)
        rc, err, t = cp(ispace, [url, back])
        errs += err
        took += t
        check(rc == 0, f"{what}: ispace cp from the LUN exits 0 (took {t:.1f} s)")
    finally:
        proxy.stop()
    if check.failures:
        print(errs[-4000:])
    return proxy, errs, took


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    ispace, ispaced_bin = sys.argv[1:3]
    scratch = ispace_testlib.scratch_dir("erl")
    src = os.path.join(scratch, "src.bin")
    back = os.path.join(scratch, "back.bin")
    with open(src, "wb") as f:
        f.write(os.urandom(SIZE))
    want = ispace_testlib.sha256_file(src)

    # ---- ERL 1 ----
    daemon = ispace_testlib.Ispaced(ispaced_bin, ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun",
                                                  f"memory:{SIZE >> 20}M", "--reactors", "2"],
                                    log_path=os.path.join(scratch, "ispaced-erl1.log"))
    daemon.start()
    try:
        proxy, errs, took = round_trip(ispace, daemon, src, back, "ERL 1")
        print(f"--- ERL 1: {SIZE >> 20} MiB each way in {took:.1f} s; proxy fired {proxy.fired_count()} times over "
              f"{proxy.connections} connection(s)")
        to_target = sum(1 for f in proxy.fired if f[1] == "to_target")
        to_initiator = sum(1 for f in proxy.fired if f[1] == "to_initiator")
        check(to_target >= 2 and to_initiator >= 2,
              f"ERL 1: segments corrupted both ways ({to_target} to the target, {to_initiator} back)")
        check(os.path.exists(back) and ispace_testlib.sha256_file(back, SIZE) == want, "ERL 1: the copy is identical")
        # One connection per `ispace cp`: nothing was dropped or logged in again.
        check(proxy.connections == 2, f"ERL 1: one connection per copy ({proxy.connections} for 2 copies)")
        time.sleep(0.2)
        log = daemon.log_tail(4000)
        recovery_r2ts = len(re.findall(r"recovery R2T for ITT", log))
        data_snacks = len(re.findall(r"Data SNACK for ITT", log))
        resent_commands = len(re.findall(r"lost its immediate data to a digest error; sending it again", errs))
        initiator_snacks = len(re.findall(r"Data SNACK for ITT", errs))
        print(f"--- ERL 1: target: {recovery_r2ts} recovery R2T(s), {data_snacks} Data SNACK(s) answered; "
              f"initiator: {initiator_snacks} Data SNACK(s) sent, {resent_commands} command(s) resent")
        check(recovery_r2ts + resent_commands >= 1, "ERL 1: lost write data recovered (recovery R2T or command resent)")
        check(data_snacks >= 1 and initiator_snacks >= 1, "ERL 1: lost read data recovered with Data SNACKs")
        check(not re.search(r"reinstat|closing it", log), "ERL 1: the target dropped no connection and reinstated "
                                                          "no session")
        check(not re.search(r"reconnect|logging in again|reinstat", errs, re.IGNORECASE),
              "ERL 1: the initiator never logged in again")
    finally:
        rc = daemon.stop()
    check(rc == 0, f"ispaced (ERL 1) exits 0 (exit {rc})")

    # ---- ERL 0: the same faults end identical through reinstatement ----
    daemon = ispace_testlib.Ispaced(ispaced_bin, ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun",
                                                  f"memory:{SIZE >> 20}M", "--reactors", "2", "--max-erl", "0"],
                                    log_path=os.path.join(scratch, "ispaced-erl0.log"))
    daemon.start()
    try:
        proxy, errs, took = round_trip(ispace, daemon, src, back, "ERL 0")
        print(f"--- ERL 0: {SIZE >> 20} MiB each way in {took:.1f} s; proxy fired {proxy.fired_count()} times over "
              f"{proxy.connections} connection(s)")
        check(proxy.fired_count() >= 4, f"ERL 0: the proxy corrupted segments ({proxy.fired_count()})")
        check(os.path.exists(back) and ispace_testlib.sha256_file(back, SIZE) == want, "ERL 0: the copy is identical")
        check(proxy.connections > 2, f"ERL 0: the faults cost connections ({proxy.connections} for 2 copies)")
    finally:
        rc = daemon.stop()
    check(rc == 0, f"ispaced (ERL 0) exits 0 (exit {rc})")
    return check.finish(scratch, daemon)


if __name__ == "__main__":
    sys.exit(main())
