"""Helpers for system tests: start ispaced on a free port, wait until it serves, stop it.

ispaced prints "ready: iscsi://HOST:PORT/IQN/LUN" lines on stderr once it listens (one per portal and
LUN); tests start it on port 0 and read the real port from there, so ctest can run tests in parallel.
"""
import hashlib
import os
import shutil
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time

READY_RE = re.compile(r"ready: (iscsi://(\S+?):(\d+)/(\S+)/(\d+))")


class Ispaced:
    def __init__(self, binary, args, log_path=None, env=None):
        self.binary = binary
        self.args = list(args)
        self.log_path = log_path
        self.env = env
        self.proc = None
        self.urls = []
        self.port = None
        self.host = None
        self._log_lines = []
        self._ready = threading.Event()

    def start(self, timeout=20, ready=None):
        """Starts ispaced and waits for its first "ready:" line, or for `ready()` to be true where it
        serves no portal (a holder: its socket file)."""
        self.proc = subprocess.Popen([self.binary] + self.args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=self.env)
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ready is not None:
                if ready():
                    return self
                time.sleep(0.05)
            elif self._ready.wait(0.1):
                return self
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError("ispaced did not become ready:\n" + "".join(self._log_lines[-40:]))

    def _pump(self):
        log = open(self.log_path, "a") if self.log_path else None
        for line in self.proc.stderr:
            self._log_lines.append(line)
            if len(self._log_lines) > 5000:
                del self._log_lines[:1000]
            if log:
                log.write(line)
                log.flush()
            m = READY_RE.search(line)
            if m:
                self.urls.append(m.group(1))
                self.host, self.port = m.group(2), int(m.group(3))
                self._ready.set()
        if log:
            log.close()

    def portal(self):
        return f"{self.host}:{self.port}"

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n=40):
        return "".join(self._log_lines[-n:])

    def stop(self, timeout=15):
        """SIGTERM, then wait; returns the exit code (SIGKILL after timeout counts as a failure)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -9
        return self.proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def find_binary(name, default_dir=None):
    """The build's binary: $ISPACE_BIN_DIR/name, else default_dir/name."""
    d = os.environ.get("ISPACE_BIN_DIR", default_dir or "")
    path = os.path.join(d, name)
    if not os.access(path, os.X_OK):
        raise SystemExit(f"{path}: not built (set ISPACE_BIN_DIR)")
    return path


def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on now, for a server that cannot take port 0
    (tgtd, isnsd) or whose port must be known before it starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scratch_dir(prefix):
    return tempfile.mkdtemp(prefix=f"ispace-{prefix}-", dir=os.environ.get("ISPACE_TEST_TMP"))


class ProcessOutput:
    """Collects a process's stdout as it comes (a thread reads it); iscsi-perf ends its progress lines
    with \\r, not \\n."""

    def __init__(self, proc):
        self._text = ""
        self.lock = threading.Lock()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc):
        while True:
            chunk = proc.stdout.read1(4096)
            if not chunk:
                return
            with self.lock:
                self._text += chunk.decode(errors="replace")

    @property
    def text(self):
        with self.lock:
            return self._text

    def wait_for(self, text, timeout):
        """Whether `text` appeared in the output within `timeout` seconds."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if text in self.text:
                return True
            time.sleep(0.1)
        return False

    def wait_final(self, timeout):
        """The output once iscsi-perf's final 'iops average N (M MB/s)' line (no in_flight) appeared, or
        what there is after `timeout` seconds."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            last = self.text.split("\r")[-1]
            if "iops average" in last and "in_flight" not in last:
                time.sleep(0.2)  # anything it prints after its final line
                return self.text
            time.sleep(0.2)
        return self.text


class Checks:
    """Named PASS/FAIL checks for a system test: call it with (condition, what); finish() reports."""

    def __init__(self):
        self.failures = []

    def __call__(self, cond, what):
        print(("PASS " if cond else "FAIL ") + what, flush=True)
        if not cond:
            self.failures.append(what)
        return cond

    def finish(self, scratch, daemon=None):
        """0 when every check passed (the scratch directory is removed), else 1 (kept, with the log)."""
        if self.failures:
            tail = f"; ispaced log tail:\n{daemon.log_tail()}" if daemon else ""
            print(f"{len(self.failures)} check(s) failed; kept {scratch}{tail}")
            return 1
        if os.environ.get("ISPACE_KEEP_SCRATCH"):
            print(f"all checks passed; kept {scratch} (ISPACE_KEEP_SCRATCH)")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
        return 0


def sha256_file(path, length=None):
    """SHA-256 of a file's first `length` bytes (all of it when None)."""
    h = hashlib.sha256()
    left = length
    with open(path, "rb") as f:
        while left is None or left > 0:
            chunk = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h.hexdigest()
