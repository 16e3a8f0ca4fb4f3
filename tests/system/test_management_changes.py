#!/usr/bin/env python3
"""Changes through the control socket that must outlive their moment, checked in a few seconds:
- a portal no target uses any more stops listening (a connect to it is refused), one added again
  listens again, and a session on another portal goes on meanwhile;
- a `--lun` LUN removed or resized through the socket stays so at the next start although the same
  flags are given again;
- `lun add IQN space:NAME` serves a data-space (a concat of two small sparse files) through the socket;
- a CHAP secret read from a secret_file is never written into the configuration after a change.

Usage: test_management_changes.py ISPACED ISPACE
"""
import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iscsi_raw  # noqa: E402
import ispace_testlib  # noqa: E402
from test_management import Admin, Daemon  # noqa: E402

IQN = "iqn.2026-11.org.ispace:changes"
SECRET = "kept-apart-secret-42"
check = ispace_testlib.Checks()


def accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def refused_soon(port):
    deadline = time.time() + 5
    while time.time() < deadline:
        if not accepts(port):
            return True
        time.sleep(0.02)
    return False


def start(ispaced, scratch, config, control):
    args = ["--config", config, "--control", control, "--listen", "127.0.0.1:0", "--reactors", "1",
            "--home", os.path.join(scratch, "home"),
            "--iqn", IQN, "--lun", "memory:16M", "--lun", "memory:8M"]
    return Daemon(ispaced, args, log_path=os.path.join(scratch, "ispaced.log")).start()


def main():
    ispaced, ispace = sys.argv[1], sys.argv[2]
    scratch = ispace_testlib.scratch_dir("mgmt-changes")
    config = os.path.join(scratch, "ispaced.json")
    control = os.path.join(scratch, "control.sock")
    admin = Admin(ispace, control)
    daemon = start(ispaced, scratch, config, control)
    try:
        # A session on the daemon's own portal, held throughout.
        held = iscsi_raw.Client("127.0.0.1", daemon.port, initiator="iqn.2026-11.org.ispace:held")
        check(held.login(IQN) == (0, 0), "an initiator logs in on the first portal")
        while iscsi_raw.sense_of(held, 0)[0] != 0:  # its power-on unit attention
            pass

        port = ispace_testlib.free_port()
        listen = f"127.0.0.1:{port}"
        admin.ok("portal", "add", IQN, listen)
        check(accepts(port), "a portal added for the target listens")
        other = iscsi_raw.Client("127.0.0.1", port, initiator="iqn.2026-11.org.ispace:other")
        check(other.login(IQN) == (0, 0), "and serves it")
        other.close()
        admin.ok("portal", "remove", IQN, listen)
        check(refused_soon(port), "once no target names it, a connect to it is refused")
        check(iscsi_raw.sense_of(held, 0)[0] == 0, "the session on the other portal goes on")
        admin.ok("portal", "add", IQN, listen)
        check(accepts(port), "added again, it listens again")
        # apply of the configuration without it: unbound the same way.
        rc, out, _ = admin.run("config", "show", "--json")
        doc = json.loads(out)
        for t in doc["targets"]:
            t.pop("portals", None)
        applied = os.path.join(scratch, "applied.json")
        with open(applied, "w") as f:
            json.dump(doc, f)
        rc, out, err = admin.run("apply", applied, "--json")
        check(rc == 0 and f"portal {listen} removed" in out, f"apply removes it ({(out or err).strip()[:160]})")
        check(refused_soon(port), "and a connect to it is refused afterwards")
        rc, out, _ = admin.run("apply", applied, "--json")
        check(rc == 0 and json.loads(out)["changes"] == [], "applying the same file again changes nothing")
        check(iscsi_raw.sense_of(held, 0)[0] == 0, "the session on the other portal still goes on")
        held.close()

        # --lun LUNs changed through the socket, then the same flags at the next start.
        admin.ok("lun", "remove", IQN, "1")
        admin.ok("lun", "resize", IQN, "0", "32M")
        check(daemon.stop() == 0, "ispaced stops cleanly")
        daemon = start(ispaced, scratch, config, control)
        rc, out, _ = admin.run("status", "--json")
        luns = [(l["lun"], l["bytes"]) for t in json.loads(out)["targets"] for l in t["luns"]] if rc == 0 else []
        check(luns == [(0, 32 << 20)], f"restarted with the same --lun flags: LUN 1 stays removed, LUN 0 keeps "
                                       f"32M ({luns})")

        # A data-space added as a LUN through the socket.
        env = dict(os.environ, ISPACE_HOME=os.path.join(scratch, "home"))
        members = [os.path.join(scratch, n) for n in ("m1.img", "m2.img")]
        for m in members:
            with open(m, "wb") as f:
                f.truncate(12 << 20)
        r = subprocess.run([ispace, "space", "create", "sp", "--layout", "concat", "--member", members[0],
                            "--member", members[1]], capture_output=True, text=True, timeout=60, env=env)
        if check(r.returncode == 0, f"a data-space over two files is created ({r.stderr.strip()[-200:]})"):
            out = admin.ok("lun", "add", IQN, "space:sp")
            check("LUN 1" in out, f"lun add IQN space:NAME adds it as LUN 1 ({out.strip()})")
            rc, out, _ = admin.run("status", "--json")
            luns = {l["lun"]: l for t in json.loads(out)["targets"] for l in t["luns"]} if rc == 0 else {}
            check(luns.get(1, {}).get("spec") == "space:sp" and luns.get(1, {}).get("bytes", 0) >= 16 << 20,
                  f"and serves it ({luns.get(1)})")
            reader = iscsi_raw.Client("127.0.0.1", daemon.port, initiator="iqn.2026-11.org.ispace:reader")
            check(reader.login(IQN) == (0, 0), "an initiator logs in")
            while iscsi_raw.sense_of(reader, 1)[0] != 0:
                pass
            status, data = reader.wait_status(reader.scsi(bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0]), read_length=4096,
                                                          lun=1))
            check(status == 0 and len(data) == 4096, "and reads 4 KiB of the space")
            reader.close()
            admin.ok("lun", "remove", IQN, "1")

        # A secret from a secret_file stays there when the daemon writes the file back.
        check(daemon.stop() == 0, "ispaced stops cleanly again")
        secret_file = os.path.join(scratch, "chap.secret")
        with open(secret_file, "w") as f:
            f.write(SECRET + "\n")
        os.chmod(secret_file, 0o600)
        with open(config) as f:
            doc = json.load(f)
        doc["targets"][0]["chap"] = {"user": "alice", "secret_file": "chap.secret"}
        with open(config, "w") as f:
            json.dump(doc, f)
        daemon = start(ispaced, scratch, config, control)
        admin.ok("acl", "add", IQN, "iqn.2026-11.org.ispace:after")
        text = open(config).read()
        saved = json.loads(text)
        check(SECRET not in text and saved["targets"][0]["chap"] == {"user": "alice", "secret_file": "chap.secret"},
              f"after a change the file names the secret_file, not the secret ({saved['targets'][0].get('chap')})")
        nochap = iscsi_raw.Client("127.0.0.1", daemon.port, initiator="iqn.2026-11.org.ispace:after")
        check(nochap.login(IQN)[0] == 2, "and CHAP is still required")
        nochap.close()
    finally:
        rc = daemon.stop()
    check(rc == 0, f"ispaced stops cleanly at the end (exit {rc})")
    return check.finish(scratch, daemon)


if __name__ == "__main__":
    sys.exit(main())
