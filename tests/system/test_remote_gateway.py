#!/usr/bin/env python3
"""ispaced as a gateway: `ispaced --lun iscsi://...` serves a LUN of another ispaced through the
initiator library (volume::RemoteDevice), with CHAP on the back end.

 1. The gateway's LUN has the back end's capacity.
 2. 16 MiB written through the gateway with qemu-img land byte for byte in the back end's backing file,
    and read back through the gateway.
 3. A back-end URL with a LUN the back end does not have is refused at start-up, naming the LUNs it has,
    and the secret never appears in the message.

Usage: test_remote_gateway.py ISPACED_BINARY
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ispace_testlib  # noqa: E402

BACK_IQN = "iqn.2026-11.org.ispace.test:backend"
GATE_IQN = "iqn.2026-11.org.ispace.test:gateway"
SECRET = "gateway-secret-42"
check = ispace_testlib.Checks()


def main():
    ispaced = sys.argv[1]
    scratch = ispace_testlib.scratch_dir("gateway")
    lun = os.path.join(scratch, "back.img")
    backend = ispace_testlib.Ispaced(ispaced, ["--listen", "127.0.0.1:0", "--iqn", BACK_IQN, "--lun",
                                               f"{lun},size=64M", "--chap", f"gw:{SECRET}", "--reactors", "1"],
                                     log_path=os.path.join(scratch, "backend.log")).start()
    gateway = None
    try:
        remote = f"iscsi://gw%{SECRET}@{backend.portal()}/{BACK_IQN}/0"
        gateway = ispace_testlib.Ispaced(ispaced, ["--listen", "127.0.0.1:0", "--iqn", GATE_IQN, "--lun", remote,
                                                   "--reactors", "2"],
                                         log_path=os.path.join(scratch, "gateway.log")).start()
        url = gateway.urls[0]
        info = subprocess.run(["qemu-img", "info", "--output=json", url], capture_output=True, text=True, timeout=60)
        check(info.returncode == 0 and '"virtual-size": 67108864' in info.stdout,
              "the gateway's LUN has the back end's 64 MiB")
        check(SECRET not in gateway.log_tail(200), "the gateway's log never shows the back end's secret")

        size = 16 << 20
        src = os.path.join(scratch, "src.bin")
        with open(src, "wb") as f:
            f.write(os.urandom(size))
        r = subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, url],
                           capture_output=True, text=True, timeout=120)
        check(r.returncode == 0, f"qemu-img writes 16 MiB through the gateway {r.stderr.strip()}")
        check(ispace_testlib.sha256_file(lun, size) == ispace_testlib.sha256_file(src),
              "the data landed in the back end's backing file")
        back = os.path.join(scratch, "back.raw")
        r = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", url, back], capture_output=True,
                           text=True, timeout=120)
        check(r.returncode == 0 and ispace_testlib.sha256_file(back, size) == ispace_testlib.sha256_file(src),
              "and reads back through the gateway")
        gateway.stop()
        gateway = None

        bad = f"iscsi://gw%{SECRET}@{backend.portal()}/{BACK_IQN}/5"
        r = subprocess.run([ispaced, "--listen", "127.0.0.1:0", "--iqn", GATE_IQN, "--lun", bad],
                           capture_output=True, text=True, timeout=60)
        check(r.returncode != 0 and "no LUN 5" in r.stderr and "its LUNs: 0" in r.stderr,
              f"a back-end LUN that does not exist is refused, naming the LUNs there are ({r.stderr.strip()[-200:]})")
        check(SECRET not in r.stderr, "the refusal does not show the secret")
    finally:
        if gateway is not None:
            gateway.stop()
        backend.stop()
    return check.finish(scratch, backend)


if __name__ == "__main__":
    sys.exit(main())
