#!/usr/bin/env python3
"""iSNS (RFC 4171) against Debian's open-isns server (isnsd), with its isnsadm as the independent client.

ispaced with an iSNS server (from its configuration file) registers its entity, portals, targets and portal groups; the server's Entity Status
Inquiries are answered; `ispace ls isns://` lists only what the discovery domain lets an initiator see;
nothing remains after ispaced stops. Through the runtime driver (the catalog changed live): a target
and a portal added at run time appear (a wildcard one with the address the server sees), a removed target goes, the registration outlives its
registration period (refreshed, no ESI), and nothing remains after the driver exits.

Usage: test_isns.py ISPACE ISPACED RUNTIME_DRIVER   (exit 77 when isnsd or isnsadm is missing)
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ispace_testlib  # noqa: E402
from test_live_catalog import Driver  # noqa: E402

T1 = "iqn.2026-11.org.ispace:isns-one"
T2 = "iqn.2026-11.org.ispace:isns-two"
T3 = "iqn.2026-11.org.ispace:isns-three"
T4 = "iqn.2026-11.org.ispace:isns-four"
I_IN = "iqn.2026-11.org.ispace:isns-in-domain"
I_OUT = "iqn.2026-11.org.ispace:isns-outside"
REGISTRATION_PERIOD = 4  # seconds: short, so that a refresh must happen within the test
check = ispace_testlib.Checks()


class Isnsd:
    """isnsd in the foreground with its own configuration, database and control socket in `scratch`."""

    def __init__(self, scratch):
        self.dir = os.path.join(scratch, "isnsd")
        os.makedirs(os.path.join(self.dir, "db"))
        self.proc = None
        self.port = None
        self.log_path = os.path.join(self.dir, "isnsd.log")

    def start(self):
        for _ in range(5):  # the port picked may be taken by someone else before isnsd binds it
            self.port = ispace_testlib.free_port()
            conf = os.path.join(self.dir, "isnsd.conf")
            with open(conf, "w") as f:
                f.write(f"BindAddress = 127.0.0.1:{self.port}\nSourceName = isns.server\n"
                        f"Database = {self.dir}/db\nRegistrationPeriod = {REGISTRATION_PERIOD}\n"
                        "ESIMinInterval = 1\nESIMaxInterval = 2\nESIRetries = 3\n"
                        "DefaultDiscoveryDomain = 0\nSLPRegister = 0\nSecurity = 0\n"
                        f"PIDFile = {self.dir}/isnsd.pid\nControlSocket = {self.dir}/control\n")
            # isnsadm as the control node (Security = 0: the name alone makes it one), over TCP.
            with open(os.path.join(self.dir, "isnsadm.conf"), "w") as f:
                f.write(f"SourceName = isns.control\nServerAddress = 127.0.0.1:{self.port}\nSecurity = 0\n")
            self.proc = subprocess.Popen(["isnsd", "-f", "-c", conf, "-d", "esi"], stdout=subprocess.DEVNULL,
                                         stderr=open(self.log_path, "w"))
            deadline = time.time() + 5
            while time.time() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                    return self
                except OSError:
                    time.sleep(0.05)
            self.stop()
        raise RuntimeError("isnsd did not start:\n" + open(self.log_path).read()[-2000:])

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def adm(self, *args):
        r = subprocess.run(["isnsadm", "-c", os.path.join(self.dir, "isnsadm.conf")] + list(args),
                           capture_output=True, text=True, timeout=10)
        return r.returncode, r.stdout + r.stderr

    def listing(self, kind):
        """isnsadm --list KIND as a list of objects, each {attribute name: value}."""
        # The control node is an entity like any other and expires with the registration period.
        self.adm("--register", "control")
        rc, out = self.adm("--list", kind)
        objects = []
        for line in out.splitlines():
            if re.match(r"Object \d+:", line):
                objects.append({})
            m = re.match(r"\s+[0-9a-f]{4}\s+\S+\s+: (.+?) = (.*)$", line)
            if m and objects:
                objects[-1][m.group(1)] = m.group(2).strip('"')
        return objects

    def registered(self, entity):
        """(entity present, target names, portal ports, (PG name, port, tag) triples) as isnsadm sees them."""
        present = any(e.get("Entity identifier") == entity for e in self.listing("entities"))
        nodes = {n["iSCSI name"]: n for n in self.listing("nodes") if n.get("iSCSI node type") == "Target"}
        portals = {int(p["Portal TCP/UDP port"].split("/")[0]): p for p in self.listing("portals")}
        groups = {(g["Portal group name"], int(g["Portal group port"].split("/")[0]), g.get("Portal group tag"))
                  for g in self.listing("portal-groups")}
        return present, nodes, portals, groups


def wait_for(what, predicate, timeout=5.0):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value or time.time() > deadline:
            return check(bool(value), what)
        time.sleep(0.1)


def ispace_ls(ispace, initiator, server):
    r = subprocess.run([ispace, "ls", "-i", initiator, f"isns://{server}"], capture_output=True, text=True,
                       timeout=20)
    return r.returncode, r.stdout + r.stderr


def ports_of(ispaced, count):
    """The portals' ports in the order ispaced printed them (the order of their TPGTs, from 1)."""
    deadline = time.time() + 5
    while len(ispaced.urls) < count and time.time() < deadline:
        time.sleep(0.05)  # "ready" is set at the first line; the others follow at once
    ports = []
    for url in ispaced.urls:
        port = int(url.split("/")[2].rsplit(":", 1)[1])
        if port not in ports:
            ports.append(port)
    return ports


def test_ispaced(ispace, ispaced_bin, isnsd, scratch):
    server = f"127.0.0.1:{isnsd.port}"
    entity = "ispace-test-entity"
    # The server and entity from the configuration file, the ESI interval from a flag over it.
    config = os.path.join(scratch, "ispaced.json")
    with open(config, "w") as f:
        json.dump({"listen": ["127.0.0.1:0", "127.0.0.1:0"], "isns": {"server": server, "entity": entity},
                   "targets": [{"iqn": T1, "alias": "first", "luns": ["memory:16M"]}]}, f)
    control = os.path.join(scratch, "ispaced.sock")
    daemon = ispace_testlib.Ispaced(ispaced_bin, ["--config", config, "--isns-esi-interval", "1", "--log-level",
                                                  "debug", "--control", control],
                                    log_path=os.path.join(scratch, "ispaced.log"))
    daemon.start()
    try:
        ports = ports_of(daemon, 2)
        check(len(ports) == 2, f"ispaced serves two portals: {ports}")
        wait_for("isnsadm lists ispaced's entity", lambda: isnsd.registered(entity)[0])
        present, nodes, portals, groups = isnsd.registered(entity)
        check(T1 in nodes and nodes[T1].get("iSCSI alias") == "first", f"isnsadm lists the target and its alias: {nodes}")
        check(all(p in portals for p in ports), f"isnsadm lists both portals {ports}: {sorted(portals)}")
        check(all(portals[p].get("Portal IP address") == "127.0.0.1" for p in ports if p in portals),
              "the portals are registered with their address")
        check(all(portals[p].get("ESI port", "").endswith("/tcp") for p in ports if p in portals),
              "each portal names an ESI port")
        check(all((T1, p, str(t)) in groups for p, t in zip(ports, (1, 2))),
              f"a portal group per portal with its TPGT: {sorted(groups)}")

        # The server's Entity Status Inquiries get answers (isnsd logs each good one).
        wait_for("isnsd had ESI answered by ispaced",
                 lambda: "Good ESI response" in open(isnsd.log_path, errors="replace").read())

        # Discovery domains decide what an initiator sees.
        rc, out = isnsd.adm("--dd-register", "dd-name=ispace-test", f"member-name={I_IN}", f"member-name={T1}")
        check(rc == 0, f"a discovery domain with {I_IN} and the target: {out.strip()[:200]}")
        rc, out = ispace_ls(ispace, I_IN, server)
        print(out, end="")
        check(rc == 0 and T1 in out and all(f"127.0.0.1:{p}" in out for p in ports),
              "ispace ls isns:// shows the target with both portals to an initiator of its domain")
        rc, out = ispace_ls(ispace, I_OUT, server)
        print(out, end="")
        check(rc == 0 and T1 not in out and "no targets" in out,
              "ispace ls isns:// shows nothing to an initiator outside the domain")
        check(not any(n == I_IN or n == I_OUT for n in isnsd.registered(entity)[1]),
              "ispace ls left no initiator registered")

        # A target created through the control socket is registered too, and goes when deleted.
        r = subprocess.run([ispace, "--control", control, "target", "create", T4], capture_output=True, text=True,
                           timeout=30)
        check(r.returncode == 0, f"ispace target create {T4} ({r.stderr.strip()[:120]})")
        wait_for("isnsadm lists the target created through the control socket",
                 lambda: T4 in isnsd.registered(entity)[1])
        r = subprocess.run([ispace, "--control", control, "target", "delete", T4], capture_output=True, text=True,
                           timeout=30)
        check(r.returncode == 0, f"ispace target delete {T4} ({r.stderr.strip()[:120]})")
        wait_for("isnsadm no longer lists the deleted target", lambda: T4 not in isnsd.registered(entity)[1])
    finally:
        rc = daemon.stop()
    check(rc == 0, f"ispaced exits 0 on SIGTERM (exit {rc})")
    check("deregistered entity" in daemon.log_tail(200), "ispaced logs its deregistration")
    present, nodes, portals, groups = isnsd.registered(entity)
    check(not present and T1 not in nodes and not any(p in portals for p in ports)
          and not any(g[0] == T1 for g in groups), "nothing of ispaced remains after it stopped")
    return daemon


def test_live(driver_bin, isnsd, scratch):
    server = f"127.0.0.1:{isnsd.port}"
    entity = "ispace-test-driver"
    driver = Driver(driver_bin, ["--listen", "127.0.0.1:0", "--iqn", T2, "--lun", "memory:8M", "--isns", server,
                                 "--isns-entity", entity, "--isns-esi-interval", "0"],
                    log_path=os.path.join(scratch, "driver.log"))
    driver.start()
    try:
        wait_for("the driver's entity and target are registered",
                 lambda: (r := isnsd.registered(entity))[0] and T2 in r[1])
        started = time.time()
        check(driver.command(f"add-target {T3}") == "ok", "a target added live")
        wait_for("isnsadm lists the target added live", lambda: T3 in isnsd.registered(entity)[1])
        # A wildcard portal: registered with the address the server sees us come from, not 0.0.0.0.
        answer = driver.command("add-portal 0.0.0.0:0")
        check(answer.startswith("ok "), "a portal added live")
        new_port = int(answer.rsplit(":", 1)[1]) if answer.startswith("ok ") else -1
        wait_for("isnsadm lists the portal added live, with a portal group for each target",
                 lambda: (r := isnsd.registered(entity)) and new_port in r[2]
                 and any(g[0] == T3 and g[1] == new_port for g in r[3]))
        address = isnsd.registered(entity)[2].get(new_port, {}).get("Portal IP address")
        check(address == "127.0.0.1", f"the wildcard portal is registered as 127.0.0.1 ({address})")
        check(driver.command(f"remove-target {T3}") == "ok", "the live target removed")
        wait_for("isnsadm no longer lists the removed target", lambda: T3 not in isnsd.registered(entity)[1])
        # No ESI port registered: only refreshes keep the entity past its registration period.
        time.sleep(max(0.0, started + REGISTRATION_PERIOD * 1.5 - time.time()))
        present, nodes, _, _ = isnsd.registered(entity)
        check(present and T2 in nodes,
              f"the registration is refreshed: still there after 1.5 registration periods ({REGISTRATION_PERIOD} s)")
    finally:
        rc = driver.stop()
    check(rc == 0, f"the driver exits 0 (exit {rc})")
    present, nodes, _, _ = isnsd.registered(entity)
    check(not present and T2 not in nodes, "nothing of the driver remains after it exited")
    return driver


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    ispace, ispaced_bin, driver_bin = sys.argv[1:4]
    if not shutil.which("isnsd") or not shutil.which("isnsadm"):
        print("SKIP: isnsd or isnsadm missing (Debian: open-isns-server, open-isns-utils)")
        return 77
    scratch = ispace_testlib.scratch_dir("isns")
    isnsd = Isnsd(scratch).start()
    daemon = None
    try:
        daemon = test_ispaced(ispace, ispaced_bin, isnsd, scratch)
        test_live(driver_bin, isnsd, scratch)
    finally:
        isnsd.stop()
    return check.finish(scratch, daemon)


if __name__ == "__main__":
    sys.exit(main())
