#!/usr/bin/env python3
"""Live management of ispaced through its control socket, with real clients attached.

ispaced starts empty as `ispaced --config FILE --control PATH --listen HOST:PORT --metrics HOST:PORT`;
everything is created through `ispace --control PATH ...` ($ISPACE_CONTROL for some commands). Checked:
- while iscsi-perf reads LUN 0, `lun add` and `lun resize` to 512M leave it running without error;
  iscsi-ls -s lists both LUNs; iscsi-readcapacity16 shows 536870912 bytes; a connected initiator gets
  the unit attentions;
- `session list --json` shows iscsi-perf's session with its keys and peer address; `param set
  ImmediateData=No` makes the next login negotiate No; `session close TSIH --connection CID` drops the
  connection of an ErrorRecoveryLevel 2 `ispace bench` (AsyncEvent 2), which goes on without error, and
  is refused for a level-0 session;
- /metrics: non-zero read bytes after reads, and a latency histogram whose count grows by exactly the
  READs sent;
- bad requests (unknown IQN, LUN number in use, missing path, shrink without --shrink, malformed JSON,
  a 10 MB request) get a clear error and change nothing (the file is byte for byte the same);
- 20 pairs of concurrent changes all land in a file that parses;
- after a restart with the same --config, both LUNs have the same VPD 0x83 and the ACLs hold;
- kill -9 in a loop during changes never leaves a file that does not parse;
- a NOTIFY_SOCKET the test creates receives READY=1 (and STOPPING=1 at exit).

Usage: test_management.py ISPACED ISPACE
"""
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iscsi_raw  # noqa: E402
import ispace_testlib  # noqa: E402

IQN = "iqn.2026-11.org.ispace:mgmt"
PERF = "iqn.2026-11.org.ispace:perf"
WATCHER = "iqn.2026-11.org.ispace:watcher"
TOOLS = "iqn.2026-11.org.ispace:tools"
check = ispace_testlib.Checks()


class Daemon(ispace_testlib.Ispaced):
    """ispaced started with a control socket: ready once it printed its control and listening lines."""

    def _pump(self):
        log = open(self.log_path, "a") if self.log_path else None
        for line in self.proc.stderr:
            self._log_lines.append(line)
            if log:
                log.write(line)
                log.flush()
            m = re.search(r"listening: (\S+):(\d+)", line)
            if m and self.port is None:
                self.host, self.port = m.group(1), int(m.group(2))
            m = re.search(r"metrics: http://(\S+)/metrics", line)
            if m:
                self.metrics = m.group(1)
            if "control: " in line:
                self._control_seen = True
            # Ready once both are known, in whichever order ispaced prints them.
            if getattr(self, "_control_seen", False) and self.port is not None:
                self._ready.set()
        if log:
            log.close()


class Admin:
    def __init__(self, ispace, control):
        self.ispace = ispace
        self.control = control

    def run(self, *args, env_control=False):
        cmd = [self.ispace] + ([] if env_control else ["--control", self.control]) + list(args)
        env = dict(os.environ, ISPACE_CONTROL=self.control) if env_control else None
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
        return p.returncode, p.stdout, p.stderr.strip()

    def ok(self, *args, **kw):
        rc, out, err = self.run(*args, **kw)
        check(rc == 0, f"ispace {' '.join(args)} ({err or out.strip()[:120]})")
        return out

    def fails(self, what, *args, expect=""):
        rc, out, err = self.run(*args)
        check(rc != 0 and err.startswith("ispace: ") and expect in err, f"{what}: refused with '{err}'")


def raw_request(path, payload):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(path)
    try:
        s.sendall(payload)
    except (BrokenPipeError, ConnectionResetError):
        pass
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    s.close()
    return json.loads(data) if data else None


def metrics(daemon):
    text = urllib.request.urlopen(f"http://{daemon.metrics}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def vpd83(portal, lun):
    p = subprocess.run(["iscsi-inq", "-i", TOOLS, "-e", "1", "-c", "0x83", f"iscsi://{portal}/{IQN}/{lun}"],
                       capture_output=True, text=True, timeout=60)
    return p.stdout if p.returncode == 0 else None


def start(ispaced, scratch, config, control, env=None):
    args = ["--config", config, "--control", control, "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
            "--reactors", "2"]
    return Daemon(ispaced, args, log_path=os.path.join(scratch, "ispaced.log"), env=env).start()


def main():
    ispaced, ispace = sys.argv[1], sys.argv[2]
    scratch = ispace_testlib.scratch_dir("mgmt")
    config = os.path.join(scratch, "ispaced.json")
    control = os.path.join(scratch, "control.sock")
    notify_path = os.path.join(scratch, "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(10)
    daemon = start(ispaced, scratch, config, control, env=dict(os.environ, NOTIFY_SOCKET=notify_path))
    admin = Admin(ispace, control)
    perf = subprocess.Popen(["true"])
    try:
        check(notify.recv(4096).startswith(b"READY=1"), "NOTIFY_SOCKET receives READY=1 once it serves")
        check(not os.path.exists(config), "a missing --config starts empty")
        check(oct(os.stat(control).st_mode & 0o777) == "0o600", "the control socket has mode 0600")
        portal = daemon.portal()

        admin.ok("target", "create", IQN)
        check(os.path.exists(config), "the first change creates the configuration file")
        admin.ok("lun", "add", IQN, os.path.join(scratch, "lun0.img") + ",size=256M,thin", env_control=True)

        perf = subprocess.Popen(["iscsi-perf", "-i", PERF, "-m", "16", "-b", "8", "-t", "8", "-r",
                                 f"iscsi://{portal}/{IQN}/0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        perf_out = ispace_testlib.ProcessOutput(perf)
        # Reading before the LUN table changes: a unit attention that meets iscsi-perf's READ CAPACITY at
        # its start ends it, while its reads re-send one (test_live_catalog.py met that on a loaded run).
        check(perf_out.wait_for("performing", 60), f"iscsi-perf is reading ({perf_out.text[-300:]!r})")
        watcher = iscsi_raw.Client("127.0.0.1", daemon.port, initiator=WATCHER)
        check(watcher.login(IQN) == (0, 0), "a second initiator logs in")
        while iscsi_raw.sense_of(watcher, 0)[0] != 0:  # its power-on unit attention
            pass

        out = admin.ok("lun", "add", IQN, "memory:64M")
        check("LUN 1" in out, f"the next free LUN number is 1 ({out.strip()})")
        check(iscsi_raw.sense_of(watcher, 0)[1:] == (6, 0x3F, 0x0E), "the connected initiator sees REPORTED LUNS DATA HAS CHANGED")
        admin.ok("lun", "resize", IQN, "0", "512M")
        check(iscsi_raw.sense_of(watcher, 0)[1:] == (6, 0x2A, 0x09), "the connected initiator sees CAPACITY DATA HAS CHANGED")
        ls = subprocess.run(["iscsi-ls", "-i", TOOLS, "-s", f"iscsi://{portal}"], capture_output=True, text=True,
                            timeout=60).stdout
        check("Lun:0" in ls and "Lun:1" in ls, "iscsi-ls -s lists both LUNs")
        cap = subprocess.run(["iscsi-readcapacity16", "-i", TOOLS, f"iscsi://{portal}/{IQN}/0"], capture_output=True,
                             text=True, timeout=60).stdout
        m = re.search(r"Total size:(\d+)", cap)
        check(m is not None and int(m.group(1)) == 512 << 20, f"iscsi-readcapacity16 shows 536870912 bytes")

        rc, out, err = admin.run("session", "list", "--json")
        sessions = json.loads(out) if rc == 0 else []
        mine = [s for s in sessions if s["initiator"] == PERF]
        check(len(mine) == 1, "session list --json shows iscsi-perf's session")
        if mine:
            s = mine[0]
            conn = s["connections"][0] if s["connections"] else {}
            keys = dict(s["keys"], **conn.get("keys", {}))
            check(all(k in keys for k in ("MaxRecvDataSegmentLength", "MaxBurstLength", "HeaderDigest")),
                  f"with MaxRecvDataSegmentLength, MaxBurstLength and HeaderDigest ({sorted(keys)})")
            check(conn.get("peer", "").startswith("127.0.0.1:"), f"and the connection's peer ({conn.get('peer')})")
            check(re.fullmatch(r"[0-9a-f]{12}", s["isid"]) is not None and s["tsih"] > 0, "and its ISID and TSIH")
        rc, out, _ = admin.run("session", "list")
        check(rc == 0 and out.startswith("TSIH") and PERF in out, "session list prints a table")

        # Session defaults: the next login negotiates what `param set` said.
        admin.ok("param", "set", "ImmediateData=No")
        fresh = iscsi_raw.Client("127.0.0.1", daemon.port, initiator="iqn.2026-11.org.ispace:fresh")
        check(fresh.login(IQN) == (0, 0), "a new initiator logs in")
        rc, out, _ = admin.run("session", "list", "--json")
        by_name = {s["initiator"]: s for s in json.loads(out)} if rc == 0 else {}
        check(by_name.get("iqn.2026-11.org.ispace:fresh", {}).get("keys", {}).get("ImmediateData") == "No",
              "param set ImmediateData=No: the next login negotiates No")
        check(by_name.get(PERF, {}).get("keys", {}).get("ImmediateData") == "Yes",
              "the session logged in before keeps ImmediateData=Yes")
        admin.fails("a key no standard lets change mid-session", "param", "set", "--session",
                    str(by_name.get(PERF, {}).get("tsih", 1)), "ImmediateData=Yes", expect="ImmediateData")
        # fresh (iscsi_raw) sends no ErrorRecoveryLevel: level 0, where losing a connection ends the
        # session, so dropping one of its connections is refused and changes nothing.
        admin.fails("dropping a connection below ErrorRecoveryLevel 2", "session", "close",
                    str(by_name.get("iqn.2026-11.org.ispace:fresh", {}).get("tsih", 1)), "--connection", "0",
                    expect="ErrorRecoveryLevel 0")

        # A running session renegotiates MaxRecvDataSegmentLength (AsyncEvent 4, answered by our initiator).
        # The bench runs long enough for the renegotiation (up to 10 s under ASan) and the drop after it.
        bench = subprocess.Popen([ispace, "-i", "iqn.2026-11.org.ispace:bench", "bench", f"iscsi://{portal}/{IQN}/1",
                                  "--rw", "randread", "--time", "12", "--qd", "4"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tsih = None
        deadline = time.time() + 10
        while tsih is None and time.time() < deadline:
            rc, out, _ = admin.run("session", "list", "--json")
            for s in json.loads(out) if rc == 0 else []:
                if s["initiator"] == "iqn.2026-11.org.ispace:bench":
                    tsih = s["tsih"]
            time.sleep(0.1)
        if check(tsih is not None, "ispace bench holds a session"):
            admin.ok("param", "set", "--session", str(tsih), "MaxRecvDataSegmentLength=65536")
            # The initiator answers the AsyncEvent 4 with a Text Request when its reactor gets to it (a
            # slow ASan build under load takes a while): wait for the new value, up to 10 s.
            conn = {}
            deadline = time.time() + 10
            while time.time() < deadline:
                rc, out, _ = admin.run("session", "show", str(tsih), "--json")
                conns = json.loads(out).get("connections", []) if rc == 0 else []
                conn = conns[0] if conns else {}
                if (conn.get("keys") or {}).get("MaxRecvDataSegmentLength") == "65536":
                    break
                time.sleep(0.1)
            check((conn.get("keys") or {}).get("MaxRecvDataSegmentLength") == "65536",
                  f"the session's connection now declares MaxRecvDataSegmentLength=65536 ({conn.get('keys')})")
            # ErrorRecoveryLevel 2 (ispace's default): the administrator drops the bench's connection
            # with AsyncEvent 2; our initiator logs it in again after Time2Wait and reassigns its tasks,
            # so the bench goes on in the same session.
            rc, out, err = admin.run("session", "close", str(tsih), "--connection", str(conn.get("cid", 0)),
                                     "--json")
            dropped = json.loads(out) if rc == 0 else {}
            check(dropped.get("time2wait") == 2 and dropped.get("time2retain") == 20,
                  f"session close --connection drops the bench's connection, announcing Time2Wait 2 and "
                  f"Time2Retain 20 ({out.strip()} {err})")
        check(bench.wait(60) == 0, "ispace bench finishes without error across the renegotiation and the drop")
        check(metrics(daemon).get('ispace_recovery_events_total{event="connection_dropped"}') == 1,
              "/metrics counts the dropped connection")

        # Metrics: READs counted exactly.
        while iscsi_raw.sense_of(fresh, 1)[0] != 0:
            pass
        before = metrics(daemon)
        key = f'{{target="{IQN}",lun="1"}}'
        for _ in range(10):
            status, data = fresh.wait_status(fresh.scsi(bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0]), read_length=4096, lun=1))
        after = metrics(daemon)
        check(status == 0 and len(data) == 4096, "ten READs of LUN 1 complete")
        sent = after.get("ispace_lun_read_latency_seconds_count" + key, 0) - before.get(
            "ispace_lun_read_latency_seconds_count" + key, 0)
        check(sent == 10, f"the read latency histogram's count grows by the 10 READs sent ({sent})")
        check(after.get("ispace_lun_read_bytes_total" + key, 0) - before.get("ispace_lun_read_bytes_total" + key, 0)
              == 40960, "read bytes grow by 40960")
        fresh.close()

        # iscsi-perf (libiscsi 1.19) counts a read that met a unit attention twice and, after its final
        # "iops average" line, waits for in_flight == 0 for ever (see test_live_catalog.py): it is judged
        # by what it printed up to that line, then stopped.
        text = perf_out.wait_final(timeout=90)
        perf.kill()
        perf.wait()
        errors = [w for w in ("failed", "retries reached", "ABORT") if w in text]
        iops = [int(x) for x in re.findall(r"iops average (\d+)", text)]
        check(not errors and iops and min(iops) > 0, f"iscsi-perf ran without error throughout ({errors}, {iops[-1:]})")
        lun0 = f'{{target="{IQN}",lun="0"}}'
        check(metrics(daemon).get("ispace_lun_read_bytes_total" + lun0, 0) > 0, "/metrics: LUN 0 read bytes are non-zero")
        check(metrics(daemon).get(f'ispace_target_sessions{{target="{IQN}"}}') is not None, "/metrics: sessions per target")
        watcher.close()

        # ACLs, then bad requests: each refused, nothing changed.
        admin.ok("acl", "add", IQN, TOOLS)
        admin.ok("acl", "add", IQN, WATCHER, "--luns", "0", "--ro")
        snapshot = open(config, "rb").read()
        admin.fails("an unknown IQN", "lun", "add", "iqn.2026-11.org.ispace:nope", "memory:1M", expect="no target")
        admin.fails("a LUN number in use", "lun", "add", IQN, "memory:1M", "--lun", "1", expect="in use")
        admin.fails("a path that does not exist", "lun", "add", IQN, os.path.join(scratch, "no", "such.img"))
        admin.fails("a resize below the current size", "lun", "resize", IQN, "0", "128M", expect="--shrink")
        admin.fails("a duplicate ACL entry", "acl", "add", IQN, TOOLS, expect="already")
        admin.fails("a CHAP secret too short", "chap", "set", IQN, "user", "short")
        admin.fails("an unknown session", "session", "close", "4242", expect="no session")
        bad = raw_request(control, b'{"jsonrpc":"2.0","id":7,"method":"lun.add","params":{"iqn":\n')
        check(bad and bad["error"]["code"] == -32700 and "not valid JSON" in bad["error"]["message"],
              "malformed JSON gets a parse error")
        bad = raw_request(control, b'{"jsonrpc":"2.0","id":8,"method":"lun.add","params":{"iqn":"' + IQN.encode() +
                          b'","spec":"memory:1M","extra":1}}\n')
        check(bad and bad["error"]["code"] == -32602 and "extra" in bad["error"]["message"], "an unknown parameter is named")
        bad = raw_request(control, b'{"jsonrpc":"2.0","id":9,"method":"config.apply","params":{"config":{"x":"' +
                          b"a" * (10 << 20) + b'"}}}\n')
        check(bad and bad["error"]["code"] == -32001 and "longer than" in bad["error"]["message"],
              "a 10 MB request is refused")
        check(open(config, "rb").read() == snapshot, "after the bad requests the file is unchanged")
        rc, out, _ = admin.run("status", "--json")
        st = json.loads(out) if rc == 0 else {}
        luns = [l["lun"] for t in st.get("targets", []) for l in t["luns"]]
        check(luns == [0, 1], f"and the daemon serves the same LUNs ({luns})")

        # apply: declarative and idempotent.
        rc, out, _ = admin.run("config", "show", "--json")
        doc = json.loads(out)
        doc["targets"][0]["alias"] = "applied"
        applied = os.path.join(scratch, "applied.json")
        json.dump(doc, open(applied, "w"))
        rc, out1, _ = admin.run("apply", applied, "--json")
        rc2, out2, _ = admin.run("apply", applied, "--json")
        check(rc == 0 and json.loads(out1)["changes"], f"apply changes what differs ({out1.strip()[:100]})")
        check(rc2 == 0 and json.loads(out2)["changes"] == [], "applying the same file again changes nothing")

        # 20 pairs of concurrent changes.
        procs = []
        for i in range(20):
            procs.append(subprocess.Popen([ispace, "--control", control, "target", "create", f"{IQN}-c{i}"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            procs.append(subprocess.Popen([ispace, "--control", control, "acl", "add", IQN,
                                           f"iqn.2026-11.org.ispace:client{i}"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        codes = [p.wait(120) for p in procs]
        check(codes == [0] * 40, f"40 concurrent changes all succeed ({codes.count(0)})")
        saved = json.load(open(config))
        names = {t["iqn"] for t in saved["targets"]}
        acl = {a if isinstance(a, str) else a["initiator"]
               for t in saved["targets"] if t["iqn"] == IQN for a in t.get("allow", [])}
        check(all(f"{IQN}-c{i}" in names for i in range(20)) and
              all(f"iqn.2026-11.org.ispace:client{i}" in acl for i in range(20)),
              "the file parses and holds all 40 changes")

        ids = {lun: vpd83(portal, lun) for lun in (0, 1)}
        check(all(ids.values()), "iscsi-inq reads VPD 0x83 of both LUNs")
        rc = daemon.stop()
        check(rc == 0, f"ispaced stops cleanly (exit {rc})")
        check(notify.recv(4096).startswith(b"STOPPING=1"), "NOTIFY_SOCKET receives STOPPING=1 at exit")

        # Restart with the same --config: same LUNs, same identities, same ACLs.
        daemon = start(ispaced, scratch, config, control)
        portal = daemon.portal()
        check({lun: vpd83(portal, lun) for lun in (0, 1)} == ids, "after a restart both LUNs have the same VPD 0x83")
        cap = subprocess.run(["iscsi-readcapacity16", "-i", TOOLS, f"iscsi://{portal}/{IQN}/0"], capture_output=True,
                             text=True, timeout=60).stdout
        check("Total size:536870912" in cap, "and LUN 0 keeps its new size")
        stranger = iscsi_raw.Client("127.0.0.1", daemon.port, initiator="iqn.2026-11.org.ispace:stranger")
        check(stranger.login(IQN)[0] == 2, "the ACL still refuses an initiator it does not list")
        stranger.close()
        masked = iscsi_raw.Client("127.0.0.1", daemon.port, initiator=WATCHER)
        check(masked.login(IQN) == (0, 0) and iscsi_raw.sense_of(masked, 1)[1:] == (5, 0x25, 0x00),
              "and still masks LUN 1 from the watcher")
        masked.close()

        # kill -9 during changes, in a loop: the file always parses.
        torn = []
        for round_ in range(6):
            stop = threading.Event()

            def churn(n=round_):
                i = 0
                while not stop.is_set():
                    admin.run("acl", "add", IQN, f"iqn.2026-11.org.ispace:k{n}-{i}")
                    i += 1
            workers = [threading.Thread(target=churn) for _ in range(2)]
            for w in workers:
                w.start()
            time.sleep(random.uniform(0.2, 0.6))
            daemon.proc.send_signal(signal.SIGKILL)
            daemon.proc.wait()
            stop.set()
            for w in workers:
                w.join()
            try:
                json.load(open(config))
            except ValueError as e:
                torn.append(str(e))
            daemon = start(ispaced, scratch, config, control)
        check(not torn, f"kill -9 during changes never leaves a torn file ({torn})")
        check(len(json.load(open(config))["targets"]) == 21, "and the daemon restarts from it every time")

        # Log level at run time.
        admin.ok("log", "level", "debug")
        rc, out, _ = admin.run("status", "--json")
        check(rc == 0 and json.loads(out)["log_level"] == "debug", "the log level changes at run time")
    finally:
        if perf.poll() is None:
            perf.kill()
            perf.wait()
        rc = daemon.stop()
        notify.close()
    check(rc == 0, f"ispaced stops cleanly at the end (exit {rc})")
    return check.finish(scratch, daemon)


if __name__ == "__main__":
    sys.exit(main())
