#!/usr/bin/env python3
"""ispaced under attack keeps its memory bounded by design, keeps serving a good initiator, and does not
flood its log. Each case reproduces a report of an independent probe:

  nop flood     one logged-in connection sends immediate NOP-Outs with 256 KiB of data and never reads
                its socket: RSS stays under 256 MiB over 8 s (the connection stops reading once its
                unsent responses pass a bound)
  unread reads  6 sessions queue 128 READs of 8 MiB each and never read: RSS stays under 1 GiB (Data-In
                counts against limits.buffer_memory; MaxCmdSN stops advancing), a good initiator is
                served meanwhile, and the memory goes back to the system once they leave
  login flood   1,000 connections that never log in, held from one address (127.0.0.2): a good
                initiator from another address logs in at once (a per-source limit on logins), and so
                does one from the flood's own address (the source's oldest pending login is evicted)
  log flood     thousands of refused immediate commands: the log gets a few lines and a count, not
                one line each
  negotiation   FirstBurstLength is never answered above the MaxBurstLength beside it (RFC 7143 §13.14)

Usage: test_limits.py ISPACED_BINARY
"""
import os
import socket
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iscsi_raw  # noqa: E402
import ispace_testlib  # noqa: E402

IQN = "iqn.2026-11.org.ispace.test:limits"
MIB = 1 << 20
check = ispace_testlib.Checks()


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0


class RssWatch:
    """Samples a process's RSS every 50 ms in the background; `peak` is the largest seen."""

    def __init__(self, pid):
        self.pid = pid
        self.peak = rss_mib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, rss_mib(self.pid))
            except OSError:
                return

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.peak


def good_initiator(portal, lun=0):
    """iscsi-inq then iscsi-readcapacity16 from the default source address; (ok, seconds)."""
    start = time.time()
    url = f"iscsi://{portal}/{IQN}/{lun}"
    try:
        inq = subprocess.run(["iscsi-inq", url], capture_output=True, text=True, timeout=20)
        cap = subprocess.run(["iscsi-readcapacity16", url], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return False, time.time() - start
    return inq.returncode == 0 and "ISPACE" in inq.stdout and cap.returncode == 0, time.time() - start


def small_receive_buffer_client(host, port, initiator):
    """A raw client whose socket buffers hold little, so unread data stays in the target's memory."""
    c = iscsi_raw.Client.__new__(iscsi_raw.Client)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(5)
    s.connect((host, port))
    c.sock = s
    c.initiator = initiator
    c.isid = b"\x80" + os.urandom(5)
    c.cmd_sn, c.exp_stat_sn, c.itt, c.tsih, c.max_cmd_sn = 1, 0, 1, 0, 0
    return c


def nop_flood(binary, daemon, scratch):
    host, port = daemon.host, daemon.port
    c = small_receive_buffer_client(host, port, "iqn.2026-11.org.ispace.test:nop-flood")
    check(c.login(IQN) == (0, 0), "the flooding connection logs in")
    payload = b"\xa5" * (256 << 10)
    watch = RssWatch(daemon.proc.pid)
    c.sock.setblocking(False)
    sent = 0
    deadline = time.time() + 8
    pending = b""
    itt = 0x1000
    while time.time() < deadline and watch.peak < 512:
        if not pending:
            h = bytearray(48)
            h[0] = 0x40 | iscsi_raw.OP_NOP_OUT  # immediate
            h[1] = 0x80
            struct.pack_into(">I", h, 4, len(payload))
            struct.pack_into(">I", h, 16, itt)
            struct.pack_into(">I", h, 20, 0xFFFFFFFF)
            struct.pack_into(">I", h, 24, c.cmd_sn)
            itt += 1
            pending = bytes(h) + payload
        try:
            n = c.sock.send(pending)
            sent += n
            pending = pending[n:]
        except BlockingIOError:
            time.sleep(0.01)
        except OSError:
            break
    ok, took = good_initiator(daemon.portal())
    peak = watch.stop()
    check(peak < 256, f"NOP-Out flood of {sent / MIB:.0f} MiB never read for 8 s: peak RSS {peak:.0f} MiB (< 256)")
    check(ok and took < 5, f"a good initiator is served during the NOP-Out flood ({took:.2f} s)")
    c.close()


def read_command(c, lba, blocks, block_size=512):
    cdb = bytes([0x28, 0]) + lba.to_bytes(4, "big") + bytes([0]) + blocks.to_bytes(2, "big") + bytes([0])
    h = bytearray(48)
    h[0] = iscsi_raw.OP_SCSI_CMD
    h[1] = 0x80 | 0x40 | 1
    struct.pack_into(">I", h, 16, c.next_itt())
    struct.pack_into(">I", h, 20, blocks * block_size)
    struct.pack_into(">I", h, 24, c.cmd_sn)
    struct.pack_into(">I", h, 28, c.exp_stat_sn)
    h[32:32 + len(cdb)] = cdb
    c.cmd_sn += 1
    return bytes(h)


def unread_reads(binary, daemon, scratch):
    host, port = daemon.host, daemon.port
    pid = daemon.proc.pid
    base = rss_mib(pid)
    watch = RssWatch(pid)
    clients = []
    for i in range(6):
        c = small_receive_buffer_client(host, port, f"iqn.2026-11.org.ispace.test:reader{i}")
        if c.login(IQN) != (0, 0):
            check(False, f"reader session {i} logs in")
            return
        clients.append(c)
    # 128 READs of 8 MiB each per session, within the window the login granted, never read.
    for c in clients:
        burst = b"".join(read_command(c, (k * 16384) % (1 << 20), 16384) for k in range(128))
        c.sock.settimeout(2)
        try:
            c.sock.sendall(burst)
        except OSError:
            pass  # a target that stopped reading is allowed to
        if watch.peak > 1100:
            break
    time.sleep(3)
    ok, took = good_initiator(daemon.portal())
    peak = watch.stop()
    check(peak < 1024, f"6 sessions x 128 unread READs of 8 MiB: peak RSS {peak:.0f} MiB (< 1024; {base:.0f} before)")
    check(ok and took < 5, f"a good initiator is served meanwhile ({took:.2f} s)")
    for c in clients:
        c.close()
    time.sleep(3)
    after = rss_mib(pid)
    check(after < base + 96, f"the memory goes back to the system after they leave: {after:.0f} MiB ({base:.0f} before)")


def login_flood(binary, daemon, scratch):
    held = []
    refused = 0
    for i in range(1000):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.2", 0))
        try:
            s.connect((daemon.host, daemon.port))
            held.append(s)
        except OSError:
            refused += 1
            s.close()
    time.sleep(0.5)
    ok, took = good_initiator(daemon.portal())
    check(ok and took < 3, f"with 1,000 never-logging-in connections from 127.0.0.2 held, a good initiator "
                           f"from 127.0.0.1 logs in at once ({took:.2f} s)")
    # The same address as the flood (a NAT, a shared host): the source's share is full, so the oldest
    # pending login gives up its slot to the newcomer instead of the newcomer being refused.
    start = time.time()
    try:
        c = iscsi_raw.Client.__new__(iscsi_raw.Client)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.2", 0))
        s.settimeout(5)
        s.connect((daemon.host, daemon.port))
        c.sock = s
        c.initiator = "iqn.2026-11.org.ispace.test:behind-the-flood"
        c.isid = b"\x80" + os.urandom(5)
        c.cmd_sn, c.exp_stat_sn, c.itt, c.tsih, c.max_cmd_sn = 1, 0, 1, 0, 0
        status = c.login(IQN)
        c.close()
    except OSError as e:
        status = str(e)
    took = time.time() - start
    check(status == (0, 0) and took < 3, f"a good initiator from 127.0.0.2 itself, behind the flood, logs in "
                                         f"({status}, {took:.2f} s)")
    def closed(sock):
        sock.setblocking(False)
        try:
            return sock.recv(1) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
    open_ones = sum(1 for h in held if not closed(h))
    check(open_ones <= 64, f"the flood holds at most its share of pending logins ({open_ones} of {len(held)} "
                           f"still open, limit 64): the oldest made room for the newest")
    for s in held:
        s.close()


def log_flood(binary, daemon, scratch, log_path):
    before = sum(1 for _ in open(log_path))
    c = iscsi_raw.Client(daemon.host, daemon.port, initiator="iqn.2026-11.org.ispace.test:log-flood")
    check(c.login(IQN) == (0, 0), "the log-flooding session logs in")
    # Commands with a reserved ITT are refused one by one (each a Reject); 5,000 of them.
    h = bytearray(48)
    h[0] = 0x40 | iscsi_raw.OP_SCSI_CMD
    h[1] = 0x80
    struct.pack_into(">I", h, 16, 0xFFFFFFFF)
    burst = bytes(h) * 5000
    c.sock.sendall(burst)
    got = 0
    c.sock.settimeout(2)
    try:
        while got < 5000 * 48 * 2:
            data = c.sock.recv(1 << 20)
            if not data:
                break
            got += len(data)
    except OSError:
        pass
    c.close()
    time.sleep(0.5)
    lines = sum(1 for _ in open(log_path)) - before
    check(lines < 100, f"5,000 refused commands add {lines} log lines (< 100)")
    text = open(log_path).read()
    check("suppressed" in text, "the log says how many lines like it were suppressed")


def negotiation(binary, daemon, scratch):
    c = iscsi_raw.Client(daemon.host, daemon.port, initiator="iqn.2026-11.org.ispace.test:burst")
    pairs = [("InitiatorName", c.initiator), ("TargetName", IQN), ("SessionType", "Normal"),
             ("HeaderDigest", "None"), ("DataDigest", "None"), ("MaxBurstLength", "16384"),
             ("FirstBurstLength", "65536"), ("ImmediateData", "Yes"), ("InitialR2T", "No")]
    h, d = c.login_pdu(pairs, csg=1, nsg=3)
    c.send(h, d)
    rsp = c.recv()
    answer = iscsi_raw.parse_text(rsp.data)
    mbl = int(answer.get("MaxBurstLength", "262144"))
    fbl = int(answer.get("FirstBurstLength", "65536"))
    check(fbl <= mbl, f"FirstBurstLength {fbl} is not answered above MaxBurstLength {mbl}")
    c.close()


def main():
    binary = sys.argv[1]
    scratch = ispace_testlib.scratch_dir("limits")
    log = os.path.join(scratch, "ispaced.log")
    args = ["--listen", "127.0.0.1:0", "--iqn", IQN, "--lun", "null:1G", "--reactors", "2"]
    daemon = ispace_testlib.Ispaced(binary, args, log_path=log).start()
    try:
        for section in (negotiation, nop_flood, unread_reads, login_flood):
            print(f"--- {section.__name__}", flush=True)
            section(binary, daemon, scratch)
            check(daemon.alive(), f"ispaced is still running after {section.__name__}")
        print("--- log_flood", flush=True)
        log_flood(binary, daemon, scratch, log)
    finally:
        rc = daemon.stop()
        check(rc == 0, f"ispaced exits 0 on SIGTERM (got {rc})")
    return check.finish(scratch, daemon)


if __name__ == "__main__":
    sys.exit(main())
