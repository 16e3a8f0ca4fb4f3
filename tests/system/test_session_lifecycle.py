#!/usr/bin/env python3
"""Session life cycle as RFC 7143 asks of a target: a login that never finishes is dropped; an idle
full-feature connection is pinged (NOP-In) and stays while the initiator answers, and is reaped when
it falls silent; a second login with the same InitiatorName and ISID reinstates the session (the old
connection is closed, the new one works); Logout closes cleanly.

Usage: test_session_lifecycle.py ISPACED_BINARY
"""
import os
import shutil
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iscsi_raw  # noqa: E402
import ispace_testlib  # noqa: E402

IQN = "iqn.2026-11.org.ispace:lifecycle"
check = ispace_testlib.Checks()


def main():
    binary = sys.argv[1]
    scratch = ispace_testlib.scratch_dir("lifecycle")
    args = ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun", "memory:16M",
            "--login-timeout-ms", "1000", "--nop-interval-ms", "300", "--nop-timeout-ms", "1500"]
    daemon = ispace_testlib.Ispaced(binary, args, log_path=os.path.join(scratch, "ispaced.log")).start()
    host, port = "127.0.0.1", daemon.port
    try:
        # A connection that never logs in is dropped after the login timeout.
        idle = socket.create_connection((host, port))
        check(iscsi_raw.closed_within(idle, 3.0), "a connection that never logs in is closed (login timeout)")
        idle.close()

        # A logged-in initiator that answers pings keeps its connection.
        alive = iscsi_raw.Client(host, port, initiator="iqn.2026-11.org.ispace:alive")
        check(alive.login(IQN) == (0, 0), "login succeeds")
        pings = 0
        deadline = time.time() + 3.0
        alive.sock.settimeout(0.2)
        while time.time() < deadline:
            try:
                pdu = alive.recv()
            except socket.timeout:
                continue
            if pdu.opcode == iscsi_raw.OP_NOP_IN and pdu.u32(20) != 0xFFFFFFFF:
                pings += 1
                alive.nop_answer(pdu)
        alive.sock.settimeout(5)
        check(pings >= 2, f"the target pings an idle connection (NOP-In with a TTT), {pings} pings in 3 s")
        check(alive.test_unit_ready() in (0, 2), "a connection that answers pings stays usable")

        # One that stops answering is reaped.
        silent = iscsi_raw.Client(host, port, initiator="iqn.2026-11.org.ispace:silent")
        check(silent.login(IQN) == (0, 0), "second login succeeds")
        check(iscsi_raw.closed_within(silent.sock, 4.0), "a connection that ignores pings is closed (NOP timeout)")
        silent.close()

        # Session reinstatement: same InitiatorName and ISID, TSIH 0.
        first = iscsi_raw.Client(host, port, initiator="iqn.2026-11.org.ispace:reinstate")
        check(first.login(IQN) == (0, 0), "login of the session to be reinstated")
        first.test_unit_ready()
        second = iscsi_raw.Client(host, port, initiator="iqn.2026-11.org.ispace:reinstate", isid=first.isid)
        check(second.login(IQN) == (0, 0), "a login with the same name and ISID succeeds")
        check(second.tsih != first.tsih, f"the new session gets a new TSIH ({first.tsih} -> {second.tsih})")
        check(iscsi_raw.closed_within(first.sock, 3.0), "the reinstated session's connection is closed")
        status = second.test_unit_ready()
        check(status in (0, 2), f"the new session serves commands (TEST UNIT READY status {status})")

        # Logout.
        rsp = second.logout()
        check(rsp.opcode == iscsi_raw.OP_LOGOUT_RSP and rsp.header[2] == 0, "logout answered 'closed successfully'")
        check(iscsi_raw.closed_within(second.sock, 2.0), "the target closes the connection after logout")
        for c in (alive, first, second):
            c.close()
    finally:
        rc = daemon.stop()
        check(rc == 0, f"ispaced exits 0 on SIGTERM (got {rc})")
    return check.finish(scratch, daemon)


if __name__ == "__main__":
    sys.exit(main())
