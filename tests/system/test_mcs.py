#!/usr/bin/env python3
"""Multiple connections per session (MC/S) on the target: four connections join one session (on a
two-reactor ispaced, so joins cross reactors), commands run on each with one shared CmdSN stream,
one connection logs out while the others go on, and bad joins get their RFC 7143 login statuses.

Usage: test_mcs.py ISPACED_BINARY
"""
import os
import shutil
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iscsi_raw  # noqa: E402
import ispace_testlib  # noqa: E402

IQN = "iqn.2026-11.org.ispace:mcs"
INITIATOR = "iqn.2026-11.org.ispace:mcs-initiator"
check = ispace_testlib.Checks()


class Session:
    """Connections sharing one CmdSN stream, as an MC/S initiator must."""

    def __init__(self):
        self.cmd_sn = 1

    def attach(self, client):
        client.session = self

    def scsi(self, client, cdb, **kw):
        client.cmd_sn = self.cmd_sn
        itt = client.scsi(cdb, **kw)
        self.cmd_sn = client.cmd_sn
        return itt


def join(host, port, leader, cid, tsih=None):
    c = iscsi_raw.Client(host, port, initiator=INITIATOR, isid=leader.isid)
    c.cid = cid
    pairs = [("InitiatorName", INITIATOR), ("TargetName", IQN), ("HeaderDigest", "None"),
             ("DataDigest", "None"), ("MaxRecvDataSegmentLength", "65536")]
    h, d = c.login_pdu(pairs, tsih=leader.tsih if tsih is None else tsih, cid=cid)
    c.send(h, d)
    rsp = c.recv()
    return c, (rsp.header[36], rsp.header[37])


def main():
    binary = sys.argv[1]
    scratch = ispace_testlib.scratch_dir("mcs")
    args = ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun", "memory:16M", "--reactors", "2"]
    daemon = ispace_testlib.Ispaced(binary, args, log_path=os.path.join(scratch, "ispaced.log")).start()
    host, port = "127.0.0.1", daemon.port
    try:
        leader = iscsi_raw.Client(host, port, initiator=INITIATOR)
        leader.cid = 0
        check(leader.login(IQN, extra=[("MaxConnections", "4")]) == (0, 0), "leading connection logs in")
        shared = Session()
        conns = [leader]
        for cid in (1, 2, 3):
            c, status = join(host, port, leader, cid)
            check(status == (0, 0), f"connection cid {cid} joins the session (status {status})")
            conns.append(c)

        # Commands over all four connections, CmdSN shared and strictly increasing.
        ok = 0
        for round_ in range(3):
            for c in conns:
                itt = shared.scsi(c, bytes(6))  # TEST UNIT READY
                status, _ = c.wait_status(itt)
                ok += status in (0, 2)
        check(ok == 12, f"12 commands over 4 connections answered ({ok})")
        # READ CAPACITY(10) on the last connection returns data.
        itt = shared.scsi(conns[3], bytes([0x25] + [0] * 9), read_length=8)
        status, data = conns[3].wait_status(itt)
        check(status == 0 and len(data) == 8 and struct.unpack(">I", data[4:])[0] == 512,
              "READ CAPACITY(10) on a joined connection")

        # Bad joins: wrong TSIH, a CID in use, a fifth connection beyond MaxConnections=4.
        c, status = join(host, port, leader, 9, tsih=0x7777)
        check(status == (2, 0x0A), f"join with an unknown TSIH: 'session does not exist' ({status})")
        c.close()
        c, status = join(host, port, leader, 2)
        check(status == (2, 0x08), f"join with a CID in use: 'cannot include in session' ({status})")
        c.close()
        c, status = join(host, port, leader, 7)
        check(status == (2, 0x06), f"a fifth connection: 'too many connections' ({status})")
        c.close()

        # One connection logs out; the others keep working.
        c2 = conns[2]
        h = bytearray(48)
        h[0] = 0x40 | iscsi_raw.OP_LOGOUT
        h[1] = 0x80 | 1  # reason: close the connection
        struct.pack_into(">I", h, 16, c2.next_itt())
        struct.pack_into(">H", h, 20, 2)
        struct.pack_into(">I", h, 24, shared.cmd_sn)
        struct.pack_into(">I", h, 28, c2.exp_stat_sn)
        c2.send(h)
        rsp = c2.recv()
        check(rsp.opcode == iscsi_raw.OP_LOGOUT_RSP and rsp.header[2] == 0, "connection cid 2 logs out")
        check(iscsi_raw.closed_within(c2.sock, 2.0), "the logged-out connection is closed")
        for c in (conns[0], conns[1], conns[3]):
            itt = shared.scsi(c, bytes(6))
            status, _ = c.wait_status(itt)
            check(status == 0, f"cid {c.cid} still serves commands after cid 2 left")
        # The session now has room again: cid 2 may rejoin.
        c, status = join(host, port, leader, 2)
        check(status == (0, 0), f"cid 2 rejoins ({status})")
        conns[2] = c
        # Logout of the session closes every connection.
        leader.cmd_sn = shared.cmd_sn
        rsp = leader.logout()
        check(rsp.opcode == iscsi_raw.OP_LOGOUT_RSP and rsp.header[2] == 0, "session logout")
        check(all(iscsi_raw.closed_within(c.sock, 3.0) for c in conns), "every connection is closed")
        log = open(os.path.join(scratch, "ispaced.log")).read()
        check("4 connections" in log, "the target reports one session with 4 connections")
    finally:
        rc = daemon.stop()
        check(rc == 0, f"ispaced exits 0 on SIGTERM (got {rc})")
    return check.finish(scratch, daemon)


if __name__ == "__main__":
    sys.exit(main())
