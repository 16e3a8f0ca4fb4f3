"""The processes make bench starts: the targets it compares (ispaced, Debian's tgt, Debian's istgt, an
older ispaced as a baseline) and the iperf3 server, every one on 127.0.0.1 only.

Every process goes through Procs, which knows how to stop each kind and stops all of them at the end,
whatever ended the run (a client failure, an exception, Ctrl-C, SIGTERM). Each is also started under
`setpriv --pdeathsig KILL`, so that even a harness killed with SIGKILL leaves no target behind.
"""
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time


class SetupError(RuntimeError):
    """Setup failed (a port, a file, a server that would not start): the bench refuses to run."""


def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on now (the server binds it a moment later)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def listening(port):
    """True if a socket listens on 127.0.0.1:port (read from /proc/net/tcp: probing it with a connect
    would look like a client to the server, and iperf3 and istgt log that as a failed session)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":
                return True
    return False


def wait_listening(port, proc, timeout, what):
    """Until something listens on 127.0.0.1:port; SetupError if `proc` exits first or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SetupError(f"{what} exited with status {proc.returncode} before listening on 127.0.0.1:{port}")
        if listening(port):
            return
        time.sleep(0.1)
    raise SetupError(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s")


class Procs:
    """Every child process of the bench, so that cleanup() can stop all of them."""

    def __init__(self):
        self._procs = []  # (Popen, stop function or None)
        self._pdeathsig = shutil.which("setpriv") is not None

    def spawn(self, argv, stop=None, **kw):
        """Starts argv in its own session (a terminal's Ctrl-C reaches the harness, which stops things in
        order) and returns the Popen; `stop(proc)` is how cleanup() ends it (default: SIGTERM, SIGKILL)."""
        if self._pdeathsig:
            argv = ["setpriv", "--pdeathsig", "KILL", "--"] + list(argv)
        proc = subprocess.Popen(argv, start_new_session=True, **kw)
        self._procs.append((proc, stop))
        return proc

    @staticmethod
    def terminate(proc, timeout=10):
        """SIGTERM to the process group, then SIGKILL after `timeout`; waits for it."""
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            Procs.kill(proc)

    @staticmethod
    def kill(proc):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def stop(self, proc):
        for i, (p, stop) in enumerate(self._procs):
            if p is proc:
                del self._procs[i]
                try:
                    (stop or Procs.terminate)(p)
                except Exception:  # noqa: BLE001 - whatever failed, the process must still go
                    Procs.kill(p)
                return
        Procs.terminate(proc)

    def cleanup(self):
        """Stops every process still registered, newest first (clients before the servers they use)."""
        while self._procs:
            self.stop(self._procs[-1][0])


def proc_cpu_seconds(pid):
    """User + system CPU time of a whole process (every thread, living or ended), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime field 14, stime field 15 (proc(5)).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


class Target:
    """One target under test: name, URL of the LUN, the process whose CPU and memory are the target's."""

    name = ""
    kind = ""
    url = None
    proc = None
    lun_path = None
    block_size = None

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def exit_note(self):
        return f"{self.name} exited with status {self.proc.returncode}" if self.proc else f"{self.name} not started"


READY_RE = re.compile(r"ready: (iscsi://\S+?:(\d+)/\S+/\d+)")


class IspacedTarget(Target):
    """ispaced (this build, or an older binary as the baseline) with one file LUN, on a port it picks."""

    kind = "ispaced"

    def __init__(self, procs, name, binary, lun_path, scratch, iqn):
        self.name = name
        self.binary = binary
        self.lun_path = lun_path
        self.procs = procs
        self.iqn = iqn
        self.log_path = os.path.join(scratch, f"{name}.log")
        self.port = None

    def start(self, timeout=20):
        log = open(self.log_path, "w")
        self.proc = self.procs.spawn(
            [self.binary, "--listen", "127.0.0.1:0", "--iqn", self.iqn, "--log-level", "info", "--lun", self.lun_path],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
        ready = threading.Event()

        def pump():
            # ispaced says where it listens on stderr; the rest of its log goes to the file.
            for line in self.proc.stderr:
                log.write(line)
                log.flush()
                m = READY_RE.search(line)
                if m and not ready.is_set():
                    self.url, self.port = m.group(1), int(m.group(2))
                    ready.set()
            log.close()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.time() + timeout
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.time() > deadline:
                self.procs.stop(self.proc)
                raise SetupError(f"{self.name} ({self.binary}) did not start; its log: {self.log_path}")
        return self

    def stop(self):
        if self.proc is not None:
            self.procs.stop(self.proc)


class TgtTarget(Target):
    """Debian's tgtd in the foreground with a private management port: no system service, no config."""

    kind = "tgt"

    def __init__(self, procs, name, lun_path, scratch, iqn):
        self.name = name
        self.lun_path = lun_path
        self.procs = procs
        self.iqn = iqn
        self.log_path = os.path.join(scratch, f"{name}.log")
        self.port = free_port()
        # The management socket is /var/run/tgtd/socket.N: an N nobody uses (tgtd refuses 32768 and up).
        for _ in range(200):
            self.control = random.randint(1000, 32000)
            if not os.path.exists(f"/var/run/tgtd/socket.{self.control}"):
                break
        else:
            raise SetupError("no free tgtd management port found under /var/run/tgtd")

    def adm(self, *args, check=True):
        r = subprocess.run(["tgtadm", "-C", str(self.control), "--lld", "iscsi"] + list(args),
                           capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise SetupError(f"tgtadm {' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
        return r

    def start(self, timeout=15):
        log = open(self.log_path, "w")
        argv = ["tgtd", "-f", "-C", str(self.control), "--iscsi", f"portal=127.0.0.1:{self.port}"]
        self.proc = self.procs.spawn(argv, stop=self._stop_proc, stdout=log, stderr=log)
        log.close()
        deadline = time.time() + timeout
        while self.adm("--op", "show", "--mode", "target", check=False).returncode != 0:
            if self.proc.poll() is not None or time.time() > deadline:
                self.procs.stop(self.proc)
                raise SetupError(f"tgtd did not start (management port {self.control}); its log: {self.log_path}")
            time.sleep(0.1)
        wait_listening(self.port, self.proc, timeout, "tgtd")
        self.adm("--op", "new", "--mode", "target", "--tid", "1", "-T", self.iqn)
        self.adm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", self.lun_path)
        self.adm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "127.0.0.1")
        self.url = f"iscsi://127.0.0.1:{self.port}/{self.iqn}/1"
        return self

    def _stop_proc(self, proc):
        # tgtd ignores SIGTERM; it leaves when its targets are gone and it is told to.
        if proc.poll() is None:
            self.adm("--op", "delete", "--mode", "target", "--tid", "1", "--force", check=False)
            self.adm("--op", "delete", "--mode", "system", check=False)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                Procs.kill(proc)

    def stop(self):
        if self.proc is not None:
            self.procs.stop(self.proc)


ISTGT_CONF = """\
# Written by bench/run_bench.py for one bench run; istgt's documented keys (istgt.conf(5) example).
[Global]
  NodeBase "{nodebase}"
  PidFile {scratch}/istgt.pid
  AuthFile {scratch}/istgt-auth.conf
  MediaDirectory {scratch}
  LogFacility "local7"
  Timeout 30
  NopInInterval 20
  DiscoveryAuthMethod None
  MaxSessions 32
  MaxConnections 8
  MaxR2T 32
  MaxOutstandingR2T 16
  DefaultTime2Wait 2
  DefaultTime2Retain 60
  FirstBurstLength 262144
  MaxBurstLength 1048576
  MaxRecvDataSegmentLength 262144
  InitialR2T Yes
  ImmediateData Yes
  DataPDUInOrder Yes
  DataSequenceInOrder Yes
  ErrorRecoveryLevel 0
[UnitControl]
  AuthMethod None
[PortalGroup1]
  Portal DA1 127.0.0.1:{port}
[InitiatorGroup1]
  InitiatorName "ALL"
  Netmask 127.0.0.1
[LogicalUnit1]
  TargetName {name}
  Mapping PortalGroup1 InitiatorGroup1
  AuthMethod None
  UseDigest Auto
  UnitType Disk
  # istgt's default is no command queuing; the bench drives up to 64 commands at once.
  QueueDepth 128
  LUN0 Storage {lun} Auto
"""


class IstgtTarget(Target):
    """Debian's istgt in the foreground (-D) with a config file of its own in the scratch directory."""

    kind = "istgt"

    def __init__(self, procs, name, lun_path, scratch, iqn):
        self.name = name
        self.lun_path = lun_path
        self.procs = procs
        self.scratch = scratch
        nodebase, short = iqn.rsplit(":", 1)
        self.iqn = iqn
        self.log_path = os.path.join(scratch, f"{name}.log")
        self.port = free_port()
        self.conf = os.path.join(scratch, "istgt.conf")
        with open(self.conf, "w") as f:
            f.write(ISTGT_CONF.format(nodebase=nodebase, name=short, scratch=scratch, port=self.port, lun=lun_path))
        open(os.path.join(scratch, "istgt-auth.conf"), "w").close()

    def start(self, timeout=15):
        log = open(self.log_path, "w")
        self.proc = self.procs.spawn(["istgt", "-c", self.conf, "-D", "-t", "none"], stdout=log, stderr=log)
        log.close()
        try:
            wait_listening(self.port, self.proc, timeout, "istgt")
        except SetupError:
            self.procs.stop(self.proc)
            raise
        self.url = f"iscsi://127.0.0.1:{self.port}/{self.iqn}/0"
        return self

    def stop(self):
        if self.proc is not None:
            self.procs.stop(self.proc)


class Iperf3Server:
    """iperf3 -s bound to 127.0.0.1 on a free port, for the single-stream loopback bandwidth limit."""

    def __init__(self, procs, scratch):
        self.procs = procs
        self.port = free_port()
        log = open(os.path.join(scratch, "iperf3-server.log"), "w")
        self.proc = procs.spawn(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(self.port)], stdout=log, stderr=log)
        log.close()
        try:
            wait_listening(self.port, self.proc, 10, "iperf3 -s")
        except SetupError:
            procs.stop(self.proc)
            raise

    def stop(self):
        self.procs.stop(self.proc)
