#!/usr/bin/env python3
"""CHAP, mutual CHAP, discovery CHAP (one-way and mutual) and ACLs, checked with libiscsi's own clients (iscsi-inq, iscsi-ls):
no CHAP is refused, a wrong secret is refused, the right one works; mutual CHAP through
?target_user=&target_password= works and a wrong target secret fails the login; an initiator not in
--allow is refused and SendTargets lists nothing to it; no secret ever appears in the log.

Usage: test_security.py ISPACED_BINARY
"""
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iscsi_raw  # noqa: E402
import ispace_testlib  # noqa: E402

IQN = "iqn.2026-11.org.ispace:secure"
SECRET = "alice-secret-1234"
TARGET_SECRET = "target-secret-5678"
DISCOVERY_SECRET = "disco-secret-9012"
GOOD = "iqn.2026-11.org.ispace:good-initiator"
BAD = "iqn.2026-11.org.ispace:bad-initiator"
check = ispace_testlib.Checks()


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


def main():
    binary = sys.argv[1]
    scratch = ispace_testlib.scratch_dir("security")
    log = os.path.join(scratch, "ispaced.log")
    args = ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun", "memory:16M",
            "--chap", f"alice:{SECRET}", "--mutual-chap", f"target1:{TARGET_SECRET}",
            "--discovery-chap", f"disco:{DISCOVERY_SECRET}", "--allow", GOOD]
    daemon = ispace_testlib.Ispaced(binary, args, log_path=log).start()
    portal = daemon.portal()
    lun = f"{portal}/{IQN}/0"
    try:
        rc, out = run(["iscsi-inq", "-i", GOOD, f"iscsi://{lun}"])
        check(rc != 0 and "Authentication failure" in out, "a login without CHAP is refused (02/01)")
        rc, out = run(["iscsi-inq", "-i", GOOD, f"iscsi://alice%wrong-secret-000@{lun}"])
        check(rc != 0 and "Authentication failure" in out, "a wrong CHAP secret is refused (02/01)")
        rc, out = run(["iscsi-inq", "-i", GOOD, f"iscsi://alice%{SECRET}@{lun}"])
        check(rc == 0 and "Vendor:ISPACE" in out.replace(" ", ""), "the right CHAP secret logs in")
        rc, out = run(["iscsi-inq", "-i", GOOD,
                       f"iscsi://alice%{SECRET}@{lun}?target_user=target1&target_password={TARGET_SECRET}"])
        check(rc == 0 and "Vendor:ISPACE" in out.replace(" ", ""), "mutual CHAP logs in")
        rc, out = run(["iscsi-inq", "-i", GOOD,
                       f"iscsi://alice%{SECRET}@{lun}?target_user=target1&target_password=not-the-target-secret"])
        check(rc != 0, "mutual CHAP with a wrong target secret fails the login")

        rc, out = run(["iscsi-inq", "-i", BAD, f"iscsi://alice%{SECRET}@{lun}"])
        check(rc != 0 and "Authorization failure" in out, "an initiator not in --allow is refused (02/02)")
        rc, out = run(["iscsi-ls", "-i", BAD, f"iscsi://disco%{DISCOVERY_SECRET}@{portal}"])
        check("Target:" not in out, "SendTargets lists nothing to an initiator not in --allow")
        rc, out = run(["iscsi-ls", "-i", GOOD, f"iscsi://disco%{DISCOVERY_SECRET}@{portal}"])
        check(f"Target:{IQN}" in out, "SendTargets lists the target to an allowed initiator")
        rc, out = run(["iscsi-ls", "-i", GOOD, f"iscsi://{portal}"])
        check("Target:" not in out, "discovery without the discovery CHAP secret is refused")
        # Mutual CHAP in discovery: the target proves --mutual-chap's secret (the quick-mode default).
        mutual = f"iscsi://disco%{DISCOVERY_SECRET}@{portal}?target_user=target1&target_password="
        rc, out = run(["iscsi-ls", "-i", GOOD, mutual + TARGET_SECRET])
        check(f"Target:{IQN}" in out, "mutual CHAP in a discovery session lists the target")
        rc, out = run(["iscsi-ls", "-i", GOOD, mutual + "not-the-target-secret"])
        check("Target:" not in out, "mutual CHAP in discovery with a wrong target secret fails")
    finally:
        rc = daemon.stop()
        check(rc == 0, f"ispaced exits 0 on SIGTERM (got {rc})")
    text = open(log).read()
    check(all(s not in text for s in (SECRET, TARGET_SECRET, DISCOVERY_SECRET)), "no secret appears in the log")
    check("Authorization failure" in text and "not allowed" in text, "refusals are logged with who and why")

    # The same settings from a configuration file, with LUN masking and a read-only mapping.
    config = os.path.join(scratch, "ispaced.json")
    with open(config, "w") as f:
        json.dump({"listen": "127.0.0.1:0", "targets": [{
            "iqn": IQN, "luns": ["memory:16M", "memory:32M"],
            "allow": [{"initiator": "iqn.2026-11.org.ispace:backup", "luns": [1], "read_only": True}, GOOD]}]}, f)
    daemon = ispace_testlib.Ispaced(binary, ["--config", config], log_path=log).start()
    portal = daemon.portal()
    try:
        rc, out = run(["iscsi-ls", "-s", "-i", GOOD, f"iscsi://{portal}"])
        check("Lun:0" in out and "Lun:1" in out, "an initiator with a plain ACL entry sees every LUN")
        rc, out = run(["iscsi-ls", "-s", "-i", "iqn.2026-11.org.ispace:backup", f"iscsi://{portal}"])
        check("Lun:1" in out and "Lun:0" not in out, "LUN masking: the masked initiator sees only LUN 1")
        rc, out = run(["iscsi-inq", "-i", "iqn.2026-11.org.ispace:backup", f"iscsi://{portal}/{IQN}/0"])
        check(rc != 0 and "LOGICAL_UNIT_NOT_SUPPORTED" in out, "a masked LUN answers LOGICAL UNIT NOT SUPPORTED")
        client = iscsi_raw.Client("127.0.0.1", daemon.port, initiator="iqn.2026-11.org.ispace:backup")
        check(client.login(IQN) == (0, 0), "the read-only initiator logs in")
        client.test_unit_ready(lun=1)  # clears the power-on unit attention
        itt = client.scsi(bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0]), lun=1, data=bytes(512))  # WRITE(10), 1 block
        rsp = None
        while rsp is None or rsp.itt != itt:
            rsp = client.recv()
        sense = rsp.data[2:] if len(rsp.data) > 2 else b""
        check(rsp.header[3] == 2 and len(sense) > 13 and sense[2] & 0x0F == 7 and sense[12] == 0x27,
              "a write through a read-only mapping gets DATA PROTECT / WRITE PROTECTED")
        client.close()
    finally:
        daemon.stop()

    # Flags beside --config apply on top of the file (a security flag is never dropped silently): the
    # file defines an open target, --chap and --allow close it.
    with open(config, "w") as f:
        json.dump({"listen": "127.0.0.1:0", "targets": [{"iqn": IQN, "luns": ["memory:16M"]}]}, f)
    daemon = ispace_testlib.Ispaced(binary, ["--config", config, "--chap", f"alice:{SECRET}", "--allow", GOOD],
                                    log_path=log).start()
    lun = f"{daemon.portal()}/{IQN}/0"
    try:
        rc, out = run(["iscsi-inq", "-i", GOOD, f"iscsi://{lun}"])
        check(rc != 0 and "Authentication failure" in out, "--chap beside --config: a login without CHAP is refused")
        rc, out = run(["iscsi-inq", "-i", BAD, f"iscsi://alice%{SECRET}@{lun}"])
        check(rc != 0 and "Authorization failure" in out, "--allow beside --config: another initiator is refused")
        rc, out = run(["iscsi-inq", "-i", GOOD, f"iscsi://alice%{SECRET}@{lun}"])
        check(rc == 0, "--chap and --allow beside --config: the allowed initiator with the secret logs in")
        check("CHAP required" in daemon.log_tail(200) and "ACL admits 1" in daemon.log_tail(200),
              "the start-up log says CHAP and the ACL are in force")
    finally:
        daemon.stop()
    # With a file that has no target, --chap has nothing to protect: refused, not ignored.
    with open(config, "w") as f:
        json.dump({"listen": "127.0.0.1:0", "targets": []}, f)
    r = subprocess.run([binary, "--config", config, "--chap", f"alice:{SECRET}"], capture_output=True, text=True,
                       timeout=30)
    check(r.returncode == 2 and "--chap" in r.stderr and SECRET not in r.stderr,
          "--chap beside a configuration without targets is an error, not ignored")

    # A configuration with a secret under 12 bytes does not start.
    r = subprocess.run([binary, "--listen", "127.0.0.1:0", "--iqn", IQN, "--lun", "memory:1M", "--chap", "bob:short"],
                       capture_output=True, text=True, timeout=30)
    check(r.returncode != 0 and "at least 12" in r.stderr and "short" not in r.stderr,
          "a CHAP secret under 12 bytes is refused at start-up, without echoing it")
    return check.finish(scratch, daemon)


if __name__ == "__main__":
    sys.exit(main())
