#!/usr/bin/env python3
"""Hostile traffic against ispaced: garbage, truncated headers, an enormous DataSegmentLength and AHS
length, 20,000 keys in one login, a login that skips the operational stage, SCSI commands before
login, malformed PDUs after login — then 200 idle half-open connections held open. ispaced must stay
up, keep its memory bounded, and let a real initiator (iscsi-inq) log in within 3 seconds meanwhile.

Usage: test_abuse.py ISPACED_BINARY
"""
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iscsi_raw  # noqa: E402
import ispace_testlib  # noqa: E402

IQN = "iqn.2026-11.org.ispace:abuse"
check = ispace_testlib.Checks()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def blast(port, payload, read_back=True):
    """Sends `payload` on a fresh connection, reads whatever comes back until the target closes or 1 s."""
    s = socket.create_connection(("127.0.0.1", port))
    try:
        s.sendall(payload)
    except OSError:
        pass
    got = b""
    if read_back:
        s.settimeout(1.0)
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except (socket.timeout, OSError):
            pass
    s.close()
    return got


def login_header(csg=1, nsg=3, transit=True, dsl=0, ahs_words=0, itt=1):
    h = bytearray(48)
    h[0] = 0x40 | iscsi_raw.OP_LOGIN
    h[1] = (0x80 if transit else 0) | (csg << 2) | (nsg if transit else 0)
    h[4] = ahs_words
    h[5:8] = dsl.to_bytes(3, "big")
    h[8:14] = b"\x80\x01\x02\x03\x04\x05"
    struct.pack_into(">I", h, 16, itt)
    return bytes(h)


def login_status(reply):
    if len(reply) >= 48 and reply[0] & 0x3F == iscsi_raw.OP_LOGIN_RSP:
        return reply[36], reply[37]
    return None


def good_client_login(portal):
    start = time.time()
    r = subprocess.run(["iscsi-inq", f"iscsi://{portal}/{IQN}/0"], capture_output=True, text=True, timeout=30)
    return r.returncode == 0 and "ISPACE" in r.stdout, time.time() - start


def main():
    binary = sys.argv[1]
    scratch = ispace_testlib.scratch_dir("abuse")
    args = ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun", "memory:32M", "--reactors", "2"]
    daemon = ispace_testlib.Ispaced(binary, args, log_path=os.path.join(scratch, "ispaced.log")).start()
    port, portal = daemon.port, daemon.portal()
    pid = daemon.proc.pid
    rng = random.Random(7143)
    try:
        ok, took = good_client_login(portal)
        check(ok, f"a real initiator logs in before the abuse ({took:.2f} s)")
        rss_before = rss_kib(pid)

        # Garbage of every size, and truncated headers.
        for size in (1, 7, 47, 48, 49, 100, 4096, 65536, 1 << 20):
            blast(port, bytes(rng.getrandbits(8) for _ in range(min(size, 65536))) * max(1, size // 65536),
                  read_back=False)
        for cut in (1, 20, 47):
            blast(port, login_header()[:cut], read_back=False)
        check(daemon.alive(), "garbage and truncated headers do not bring ispaced down")

        # An enormous DataSegmentLength and the largest AHS, on a login.
        reply = blast(port, login_header(dsl=0xFFFFFF) + b"x" * 1000)
        check(login_status(reply) == (2, 0) or reply == b"", f"a 16 MiB login data segment is refused ({login_status(reply)})")
        reply = blast(port, login_header(ahs_words=255) + b"\0" * 1020)
        check(daemon.alive() and (login_status(reply) is None or login_status(reply)[0] != 0),
              "a 1020-byte AHS on a login does not log in")

        # 20,000 keys in one login, spread over C-bit continuation PDUs.
        keys = b"".join(f"X-abuse-{i}=v\0".encode() for i in range(20000))
        c = iscsi_raw.Client("127.0.0.1", port)
        status = None
        try:
            pairs = iscsi_raw.text([("InitiatorName", "iqn.2026-11.org.ispace:k"), ("TargetName", IQN)]) + keys
            for offset in range(0, len(pairs), 8192):
                chunk = pairs[offset:offset + 8192]
                last = offset + 8192 >= len(pairs)
                h, _ = c.login_pdu(b"", transit=last, cont=not last)
                c.send(h, chunk)
                rsp = c.recv()
                st = (rsp.header[36], rsp.header[37])
                if st != (0, 0):
                    status = st
                    break
        except (ConnectionError, OSError):
            status = status or "closed"
        c.close()
        check(status is not None, f"20,000 keys in one login are refused ({status})")

        # A login that skips the operational stage: security stage straight to full feature.
        c = iscsi_raw.Client("127.0.0.1", port)
        h, d = c.login_pdu([("InitiatorName", "iqn.2026-11.org.ispace:skip"), ("TargetName", IQN),
                            ("AuthMethod", "None")], csg=0, nsg=3)
        c.send(h, d)
        rsp = c.recv()
        st = (rsp.header[36], rsp.header[37])
        # RFC 7143 allows the jump when nothing needs negotiating; what matters is a sane answer and
        # a working session (or a clean refusal).
        if st == (0, 0) and rsp.flags & 0x83 == 0x83:
            c.tsih = struct.unpack_from(">H", rsp.header, 14)[0]
            check(c.test_unit_ready() in (0, 2), "a login skipping the operational stage yields a working session")
        else:
            check(st[0] in (0, 2), f"a login skipping the operational stage gets a sane answer ({st})")
        c.close()

        # SCSI commands (and other PDUs) before login.
        for opcode in (iscsi_raw.OP_SCSI_CMD, iscsi_raw.OP_DATA_OUT, iscsi_raw.OP_TEXT, iscsi_raw.OP_LOGOUT, 0x1C):
            h = bytearray(48)
            h[0] = opcode
            h[1] = 0x80
            reply = blast(port, bytes(h))
            st = login_status(reply)
            check(st is None or st[0] == 2, f"opcode {opcode:#04x} before login is refused ({st})")

        # After login: malformed and oversized PDUs on a real session.
        c = iscsi_raw.Client("127.0.0.1", port, initiator="iqn.2026-11.org.ispace:late")
        check(c.login(IQN) == (0, 0), "a session logs in for the post-login abuse")
        h = bytearray(48)
        h[0] = 0x05  # Data-Out for a task that does not exist
        struct.pack_into(">I", h, 16, 0xDEAD)
        c.send(bytes(h), b"z" * 512)
        h = bytearray(48)
        h[0] = 0x3E  # a target opcode sent by an initiator
        c.send(bytes(h))
        h = bytearray(48)
        h[0] = iscsi_raw.OP_SCSI_CMD
        h[1] = 0x80
        h[5:8] = (0xFFFFFF).to_bytes(3, "big")  # immediate data far beyond MaxRecvDataSegmentLength
        try:
            c.sock.sendall(bytes(h) + b"\0" * 4096)
        except OSError:
            pass
        check(iscsi_raw.closed_within(c.sock, 3.0), "an oversized data segment after login drops that connection")
        c.close()
        check(daemon.alive(), "ispaced is still running after the abuse")

        # 200 idle half-open connections, held open while a real initiator logs in. They come from
        # another address (127.0.0.2): one source holds at most max_login_connections_per_source of
        # them (each newcomer past it evicts the oldest), which must not lock out initiators elsewhere.
        idle = []
        for i in range(200):
            s = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0))
            if i % 2:
                s.sendall(login_header()[:30])  # half a header, then silence
            idle.append(s)
        time.sleep(0.5)
        ok, took = good_client_login(portal)
        check(ok and took < 3.0, f"with 200 half-open connections held, a real initiator logs in in {took:.2f} s")
        rss_after = rss_kib(pid)
        growth = (rss_after - rss_before) / 1024
        check(growth < 64, f"memory stays bounded: RSS grew {growth:.1f} MiB ({rss_before} -> {rss_after} KiB)")
        for s in idle:
            s.close()
        check(daemon.alive(), "ispaced survives the whole abuse")
    finally:
        rc = daemon.stop()
        check(rc == 0, f"ispaced exits 0 on SIGTERM (got {rc})")
    return check.finish(scratch, daemon)


if __name__ == "__main__":
    sys.exit(main())
