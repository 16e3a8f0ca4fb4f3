"""A minimal iSCSI initiator speaking raw PDUs, for system tests that need to misbehave or to watch the
target's protocol behaviour directly (keepalive, reinstatement, hostile input). It is independent of
the project's own codec on purpose: a test written with the code under test proves little.
"""
import os
import socket
import struct
import time

BHS = 48

OP_NOP_OUT = 0x00
OP_SCSI_CMD = 0x01
OP_TMF = 0x02
OP_LOGIN = 0x03
OP_TEXT = 0x04
OP_DATA_OUT = 0x05
OP_LOGOUT = 0x06
OP_NOP_IN = 0x20
OP_SCSI_RSP = 0x21
OP_LOGIN_RSP = 0x23
OP_TEXT_RSP = 0x24
OP_DATA_IN = 0x25
OP_LOGOUT_RSP = 0x26
OP_R2T = 0x31
OP_REJECT = 0x3F


def pad4(n):
    return (n + 3) & ~3


def text(pairs):
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)


def parse_text(data):
    out = {}
    for item in data.split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            out[k.decode()] = v.decode()
    return out


class Pdu:
    def __init__(self, header, data=b""):
        self.header = header
        self.data = data

    @property
    def opcode(self):
        return self.header[0] & 0x3F

    @property
    def flags(self):
        return self.header[1]

    def u32(self, offset):
        return struct.unpack_from(">I", self.header, offset)[0]

    @property
    def itt(self):
        return self.u32(16)


class Client:
    """One TCP connection. Login with login(); then command()/nop()/raw sends."""

    def __init__(self, host, port, initiator="iqn.2026-11.org.ispace:raw", isid=None, timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.initiator = initiator
        self.isid = isid if isid is not None else b"\x80" + os.urandom(5)
        self.cmd_sn = 1
        self.exp_stat_sn = 0
        self.itt = 1
        self.tsih = 0
        self.max_cmd_sn = 0

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # ---- wire ----
    def send(self, header, data=b""):
        header = bytearray(header)
        struct.pack_into(">I", header, 4, (header[4] << 24) | len(data))
        self.sock.sendall(bytes(header) + data + b"\0" * (pad4(len(data)) - len(data)))

    def recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("connection closed by the target")
            buf += chunk
        return buf

    def recv(self):
        header = self.recv_exact(BHS)
        ahs_len = header[4] * 4
        dsl = struct.unpack(">I", b"\0" + header[5:8])[0]
        if ahs_len:
            self.recv_exact(ahs_len)
        data = self.recv_exact(pad4(dsl))[:dsl] if dsl else b""
        pdu = Pdu(header, data)
        if pdu.opcode in (OP_SCSI_RSP, OP_LOGIN_RSP, OP_TEXT_RSP, OP_LOGOUT_RSP, OP_NOP_IN, OP_DATA_IN,
                          OP_REJECT, 0x22, OP_R2T):
            stat_sn = pdu.u32(24)
            status_bearing = pdu.opcode != OP_R2T and not (pdu.opcode == OP_DATA_IN and not (pdu.flags & 1))
            if pdu.opcode == OP_NOP_IN and pdu.itt == 0xFFFFFFFF:
                status_bearing = False
            if status_bearing:
                self.exp_stat_sn = (stat_sn + 1) & 0xFFFFFFFF
            self.max_cmd_sn = pdu.u32(32)
        return pdu

    def next_itt(self):
        self.itt += 1
        return self.itt

    # ---- login ----
    def login_pdu(self, pairs, csg=1, nsg=3, transit=True, cont=False, tsih=0, cid=0):
        h = bytearray(BHS)
        h[0] = 0x40 | OP_LOGIN
        h[1] = (0x80 if transit else 0) | (0x40 if cont else 0) | (csg << 2) | (nsg if transit else 0)
        h[8:14] = self.isid
        struct.pack_into(">H", h, 14, tsih)
        struct.pack_into(">I", h, 16, self.next_itt())
        struct.pack_into(">H", h, 20, cid)
        struct.pack_into(">I", h, 24, self.cmd_sn)
        struct.pack_into(">I", h, 28, self.exp_stat_sn)
        return h, text(pairs) if isinstance(pairs, list) else pairs

    def login(self, target=None, discovery=False, extra=()):
        pairs = [("InitiatorName", self.initiator)]
        if discovery:
            pairs.append(("SessionType", "Discovery"))
        else:
            pairs += [("TargetName", target), ("SessionType", "Normal")]
        pairs += [("HeaderDigest", "None"), ("DataDigest", "None"), ("MaxRecvDataSegmentLength", "262144"),
                  ("InitialR2T", "Yes"), ("ImmediateData", "Yes"), ("MaxBurstLength", "262144"),
                  ("FirstBurstLength", "65536"), ("DefaultTime2Wait", "2"), ("DefaultTime2Retain", "0"),
                  ("MaxOutstandingR2T", "1"), ("ErrorRecoveryLevel", "0")]
        pairs += list(extra)
        h, d = self.login_pdu(pairs)
        self.send(h, d)
        while True:
            rsp = self.recv()
            if rsp.opcode != OP_LOGIN_RSP:
                raise RuntimeError(f"expected a Login Response, got opcode {rsp.opcode:#x}")
            status = (rsp.header[36], rsp.header[37])
            if status != (0, 0):
                return status
            if rsp.flags & 0x80 and (rsp.flags & 3) == 3:
                self.tsih = struct.unpack_from(">H", rsp.header, 14)[0]
                return status
            # The target wants another round (e.g. it offered keys): send an empty request.
            h, d = self.login_pdu(b"")
            self.send(h, d)

    # ---- full feature ----
    def scsi(self, cdb, read_length=0, lun=0, immediate=False, data=b""):
        h = bytearray(BHS)
        h[0] = (0x40 if immediate else 0) | OP_SCSI_CMD
        h[1] = 0x80 | (0x40 if read_length else 0) | (0x20 if data else 0) | 1
        struct.pack_into(">Q", h, 8, lun << 48)
        itt = self.next_itt()
        struct.pack_into(">I", h, 16, itt)
        struct.pack_into(">I", h, 20, read_length or len(data))
        struct.pack_into(">I", h, 24, self.cmd_sn)
        struct.pack_into(">I", h, 28, self.exp_stat_sn)
        h[32:32 + len(cdb)] = cdb
        if not immediate:
            self.cmd_sn += 1
        self.send(h, data)
        return itt

    def answer(self, itt):
        """Reads until the status of `itt` (answering the target's pings on the way): (status, data-in
        bytes, (sense key, ASC, ASCQ) or None). The status comes in a SCSI Response or in the last Data-In
        with its S bit."""
        data_in = b""
        while True:
            rsp = self.recv()
            if rsp.opcode == OP_NOP_IN and rsp.u32(20) != 0xFFFFFFFF:
                self.nop_answer(rsp)
                continue
            if rsp.itt != itt:
                continue
            if rsp.opcode == OP_DATA_IN:
                data_in += rsp.data
                if rsp.flags & 0x01 and rsp.flags & 0x80:
                    return rsp.header[3], data_in, None
            elif rsp.opcode == OP_SCSI_RSP:
                sense = rsp.data[2:] if len(rsp.data) > 2 else b""
                if rsp.header[3] == 2 and len(sense) >= 14:
                    return 2, data_in, (sense[2] & 0x0F, sense[12], sense[13])
                return rsp.header[3], data_in, None

    def wait_status(self, itt):
        """Reads until the status of `itt`; returns (status, data-in bytes)."""
        status, data_in, _ = self.answer(itt)
        return status, data_in

    def command(self, cdb, data=b"", read_length=0, lun=0):
        """One SCSI command: (status, data-in bytes, (sense key, ASC, ASCQ) or None)."""
        return self.answer(self.scsi(cdb, read_length=read_length, lun=lun, data=data))

    def test_unit_ready(self, lun=0):
        return self.wait_status(self.scsi(bytes(6), lun=lun))[0]

    def nop_answer(self, ping):
        """Answers a target NOP-In ping (TTT valid) with a NOP-Out carrying its TTT."""
        h = bytearray(BHS)
        h[0] = 0x40 | OP_NOP_OUT
        h[1] = 0x80
        h[8:16] = ping.header[8:16]
        struct.pack_into(">I", h, 16, 0xFFFFFFFF)
        struct.pack_into(">I", h, 20, ping.u32(20))
        struct.pack_into(">I", h, 24, self.cmd_sn)
        struct.pack_into(">I", h, 28, self.exp_stat_sn)
        self.send(h)

    def logout(self):
        h = bytearray(BHS)
        h[0] = 0x40 | OP_LOGOUT
        h[1] = 0x80
        struct.pack_into(">I", h, 16, self.next_itt())
        struct.pack_into(">I", h, 24, self.cmd_sn)
        struct.pack_into(">I", h, 28, self.exp_stat_sn)
        self.send(h)
        return self.recv()


def closed_within(sock, seconds):
    """True if the peer closes `sock` within `seconds` (reading and dropping anything it sends)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        sock.settimeout(max(0.05, deadline - time.time()))
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            continue
        except (ConnectionResetError, OSError):
            return True
    return False


def sense_of(client, lun):
    """TEST UNIT READY on `lun`: (status, key, asc, ascq)."""
    status, _, sense = client.command(bytes(6), lun=lun)
    return (status, *sense) if sense else (status, None, None, None)
