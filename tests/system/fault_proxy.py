#!/usr/bin/env python3
"""A TCP proxy for iSCSI that injects faults at PDU granularity, in either direction, for tests.

It frames the byte stream into PDUs (RFC 7143 §11: a 48-byte BHS, AHS, an optional header digest, the
data segment padded to 4 bytes, an optional data digest) and can, by rule:
  - corrupt one byte of a chosen PDU (flip its bits), at an offset in the PDU or in its data segment;
  - drop a chosen PDU (it is not forwarded; the stream stays framed);
  - cut the connection when a chosen PDU comes (both sockets closed, the PDU not forwarded);
  - cut one connection now (cut_one(), e.g. from a timer in the test).
Digests are on or off as the login negotiated them: the proxy reads HeaderDigest and DataDigest from
the target's Login Responses and applies them from the end of the login phase (§13.1: digests start
with the first PDU of the full feature phase), so it frames digested streams without being told.

Rules count the PDUs they match over the proxy's whole life (every connection), so "the 50th Data-In"
stays the 50th across reconnects. Use it as a module:

    proxy = FaultProxy(("127.0.0.1", target_port), [Rule("to_initiator", "corrupt", opcode=0x25,
                                                          nth=20, offset="data+100")]).start()
    ... connect to proxy.port ...
    proxy.stop(); print(proxy.fired)

or from the command line (runs until interrupted):

    fault_proxy.py --target 127.0.0.1:3260 [--listen 127.0.0.1:0] \\
                   --rule to_target:cut:opcode=0x05,nth=100 --rule to_initiator:drop:opcode=0x25,every=50
"""
import argparse
import socket
import sys
import threading
import time

BHS = 48
# Opcodes (RFC 7143 §11.2.1.2), as the low six bits of byte 0.
LOGIN_REQUEST = 0x03
LOGIN_RESPONSE = 0x23
OPCODE_NAMES = {0x00: "NOP-Out", 0x01: "SCSI Command", 0x02: "Task Management Request", 0x03: "Login Request",
                0x04: "Text Request", 0x05: "SCSI Data-Out", 0x06: "Logout Request", 0x10: "SNACK Request",
                0x20: "NOP-In", 0x21: "SCSI Response", 0x22: "Task Management Response", 0x23: "Login Response",
                0x24: "Text Response", 0x25: "SCSI Data-In", 0x26: "Logout Response", 0x31: "R2T",
                0x32: "Asynchronous Message", 0x3f: "Reject"}
DIRECTIONS = ("to_target", "to_initiator")
ACTIONS = ("corrupt", "drop", "cut")


class Rule:
    """When to fire and what to do.

    direction: "to_target" (initiator → target) or "to_initiator"; action: "corrupt", "drop" or "cut".
    opcode: only PDUs with this opcode (None: any PDU of the full feature phase: a Login PDU is matched only
    when named, since no digest covers it (§13.1) and a corrupted one is a refused login, not a recovery);
    min_data: only PDUs with at least this many data bytes;
    final: only PDUs whose F bit (byte 1, 0x80) is set (True) or clear (False); None: either.
    nth: fire on the nth matching PDU (1-based); every: then on every `every`-th after it (0: once);
    times: fire at most this many times (0: no limit). offset (corrupt only): an int, a byte of the PDU
    from the start of its BHS, or "data+N", byte N of its data segment.
    """

    def __init__(self, direction, action, opcode=None, nth=1, every=0, times=0, offset="data+0", min_data=0,
                 final=None):
        if direction not in DIRECTIONS:
            raise ValueError(f"direction {direction!r}: one of {DIRECTIONS}")
        if action not in ACTIONS:
            raise ValueError(f"action {action!r}: one of {ACTIONS}")
        if nth < 1 or every < 0 or times < 0:
            raise ValueError("nth is 1 or more; every and times are 0 or more")
        self.direction = direction
        self.action = action
        self.opcode = opcode
        self.nth = nth
        self.every = every
        self.times = times
        self.offset = offset
        self.min_data = max(min_data, 1 if isinstance(offset, str) and action == "corrupt" else 0)
        self.final = final
        self.matched = 0
        self.fired = 0

    @classmethod
    def parse(cls, text):
        """DIRECTION:ACTION[:key=value,...] with keys opcode, nth, every, times, offset, min_data, final (0/1)."""
        parts = text.split(":", 2)
        if len(parts) < 2:
            raise ValueError(f"rule {text!r}: DIRECTION:ACTION[:key=value,...]")
        kwargs = {}
        if len(parts) == 3 and parts[2]:
            for item in parts[2].split(","):
                key, _, value = item.partition("=")
                if key == "offset":
                    kwargs[key] = value if value.startswith("data+") else int(value, 0)
                elif key in ("opcode", "nth", "every", "times", "min_data"):
                    kwargs[key] = int(value, 0)
                elif key == "final":
                    kwargs[key] = bool(int(value))
                else:
                    raise ValueError(f"rule {text!r}: unknown key {key!r}")
        return cls(parts[0], parts[1], **kwargs)

    def wants(self, direction, opcode, data_length, final=False):
        """Counts a PDU that matches; True when the rule fires on it."""
        if direction != self.direction or (self.opcode is not None and opcode != self.opcode):
            return False
        if self.opcode is None and opcode in (LOGIN_REQUEST, LOGIN_RESPONSE):
            return False
        if self.final is not None and final != self.final:
            return False
        if data_length < self.min_data:
            return False
        self.matched += 1
        if self.times and self.fired >= self.times:
            return False
        k = self.matched - self.nth
        if k < 0 or (k > 0 and (self.every == 0 or k % self.every)):
            return False
        self.fired += 1
        return True

    def __repr__(self):
        return (f"Rule({self.direction}:{self.action} opcode={self.opcode} nth={self.nth} every={self.every} "
                f"fired={self.fired}/{self.matched})")


class _Link:
    """One proxied connection: an initiator socket, a target socket, a pump thread each way."""

    def __init__(self, proxy, client, server):
        self.proxy = proxy
        self.client = client
        self.server = server
        self.header_digest = False
        self.data_digest = False
        self.full_feature = False
        self.negotiated = {}
        self.closed = threading.Event()

    def start(self):
        for direction, src, dst in (("to_target", self.client, self.server),
                                    ("to_initiator", self.server, self.client)):
            threading.Thread(target=self._pump, args=(direction, src, dst), daemon=True).start()

    def close(self):
        if not self.closed.is_set():
            self.closed.set()
            for s in (self.client, self.server):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    @staticmethod
    def _read(sock, n):
        out = bytearray()
        while len(out) < n:
            chunk = sock.recv(n - len(out))
            if not chunk:
                raise EOFError
            out += chunk
        return out

    def _read_pdu(self, sock):
        bhs = self._read(sock, BHS)
        ahs = bhs[4] * 4
        data_length = int.from_bytes(bhs[5:8], "big")
        # Login PDUs never carry digests (§13.1); every PDU after the login phase does, as negotiated.
        digests = self.full_feature
        rest = ahs + (4 if digests and self.header_digest else 0) + ((data_length + 3) & ~3)
        if digests and self.data_digest and data_length:
            rest += 4
        pdu = bhs + (self._read(sock, rest) if rest else b"")
        data_at = BHS + ahs + (4 if digests and self.header_digest else 0)
        return bytearray(pdu), bhs[0] & 0x3F, data_length, data_at

    def _learn_login(self, pdu, data_at, data_length):
        """Reads the keys of a Login Response; at the final one (T=1, NSG=3), digests start."""
        text = bytes(pdu[data_at:data_at + data_length]).split(b"\0")
        for pair in text:
            key, eq, value = pair.partition(b"=")
            if eq:
                self.negotiated[key.decode(errors="replace")] = value.decode(errors="replace")
        transit = pdu[1] & 0x80
        nsg = pdu[1] & 0x03
        status_class = pdu[36]
        if transit and nsg == 3 and status_class == 0:
            self.header_digest = self.negotiated.get("HeaderDigest", "None").upper() == "CRC32C"
            self.data_digest = self.negotiated.get("DataDigest", "None").upper() == "CRC32C"
            self.full_feature = True

    def _pump(self, direction, src, dst):
        try:
            while not self.closed.is_set():
                pdu, opcode, data_length, data_at = self._read_pdu(src)
                action = self.proxy._decide(direction, opcode, data_length, bool(pdu[1] & 0x80))
                if direction == "to_initiator" and opcode == LOGIN_RESPONSE and action is None:
                    self._learn_login(pdu, data_at, data_length)
                if action is not None:
                    rule = action
                    self.proxy._record(direction, rule.action, opcode)
                    if rule.action == "cut":
                        break
                    if rule.action == "drop":
                        continue
                    offset = rule.offset
                    if isinstance(offset, str):
                        offset = data_at + min(int(offset[5:]), max(0, data_length - 1))
                    pdu[min(offset, len(pdu) - 1)] ^= 0xFF
                dst.sendall(pdu)
        except (EOFError, OSError):
            pass
        self.close()


class FaultProxy:
    """Listens on `listen`, connects each accepted connection to `target`, applies `rules`."""

    def __init__(self, target, rules=(), listen=("127.0.0.1", 0)):
        self.target = target
        self.rules = list(rules)
        self.listen = listen
        self.port = None
        self.connections = 0
        self.fired = []  # (time, direction, action, opcode name)
        self._lock = threading.Lock()
        self._links = []
        self._sock = None
        self._stopping = threading.Event()

    def start(self):
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(self.listen)
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def address(self):
        return f"{self.listen[0]}:{self.port}"

    def stop(self):
        self._stopping.set()
        try:
            self._sock.close()
        except OSError:
            pass
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()

    def _accept(self):
        while not self._stopping.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(self, client, server)
            with self._lock:
                self.connections += 1
                self._links = [l for l in self._links if not l.closed.is_set()] + [link]
            link.start()

    def cut_one(self):
        """Cuts one connection in full feature phase (the oldest first, so that cuts go round the
        connections of an MC/S session); True if there was one. Recorded in `fired` as a cut."""
        with self._lock:
            live = [l for l in self._links if l.full_feature and not l.closed.is_set()]
            if not live:
                return False
            link = live[0]
            # Next time another one goes first.
            self._links.remove(link)
            self._links.append(link)
        link.close()
        self._record("both", "cut", None)
        return True

    def _decide(self, direction, opcode, data_length, final):
        with self._lock:
            for rule in self.rules:
                if rule.wants(direction, opcode, data_length, final):
                    return rule
        return None

    def _record(self, direction, action, opcode):
        with self._lock:
            name = "timed" if opcode is None else OPCODE_NAMES.get(opcode, hex(opcode))
            self.fired.append((time.time(), direction, action, name))

    def fired_count(self, action=None):
        with self._lock:
            return sum(1 for f in self.fired if action is None or f[2] == action)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="HOST:PORT of the iSCSI target")
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on (port 0: any)")
    ap.add_argument("--rule", action="append", default=[], help="DIRECTION:ACTION[:key=value,...]")
    args = ap.parse_args()
    host, _, port = args.target.rpartition(":")
    lhost, _, lport = args.listen.rpartition(":")
    try:
        rules = [Rule.parse(r) for r in args.rule]
    except ValueError as e:
        ap.error(str(e))
    proxy = FaultProxy((host, int(port)), rules, (lhost, int(lport))).start()
    print(f"listening: {proxy.address()}", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    proxy.stop()
    for f in proxy.fired:
        print(f"fired: {f[1]} {f[2]} {f[3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
