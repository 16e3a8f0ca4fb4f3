"""Helpers for the attach system tests: the attach_driver holder, filesystems on attached devices, and
the checks that nothing is left behind (no loop device bound, no FUSE mount, no mount file).

attach_driver (tests/system/attach_driver.cpp) attaches devices through mgmt::Runtime and takes
commands on stdin ("attach SPEC", "detach PATH [force]", "resize PATH SIZE", "status", "quit").
"""
import fcntl
import os
import shutil
import subprocess
import threading
import time

SKIP = 77


def why_not_runnable(driver_bin, tools=("mkfs.ext4", "fsck.ext4")):
    """None when this build and machine can attach (root, /dev/fuse, loop devices: the driver asks the
    attach layer's own backends; a build without libfuse3 cannot) and have the tools, else why not."""
    if not os.access(driver_bin, os.X_OK):
        return f"{driver_bin} is not built"
    why = subprocess.run([driver_bin, "--why-not"], capture_output=True, text=True, timeout=30)
    if why.returncode != 0:
        return f"{driver_bin} --why-not failed: {why.stderr.strip()}"
    if why.stdout.strip():
        return why.stdout.strip()
    for tool in tools:
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def run(cmd, timeout=120, **kw):
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


class AttachDriver:
    def __init__(self, binary, args, log_path):
        self.binary = binary
        self.args = list(args)
        self.log_path = log_path
        self.proc = None
        self.attached = []  # (path, spec) of the devices given with --attach
        self._log = None

    def start(self, timeout=30):
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen([self.binary] + self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, bufsize=1)
        deadline = time.time() + timeout
        result = {}

        def read_ready():
            for line in self.proc.stdout:
                line = line.strip()
                if line.startswith("attached: "):
                    path, spec = line[len("attached: "):].split(" ", 1)
                    self.attached.append((path, spec))
                elif line == "ready":
                    result["ready"] = True
                    return

        reader = threading.Thread(target=read_ready, daemon=True)
        reader.start()
        reader.join(max(0.0, deadline - time.time()))
        if not result.get("ready"):
            self.kill()
            raise RuntimeError("attach_driver did not become ready; log:\n" + self.log_tail())
        return self

    def command(self, line, timeout=60):
        """Sends one command; returns (ok, value)."""
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        out = {}

        def read_answer():
            out["line"] = self.proc.stdout.readline().strip()

        reader = threading.Thread(target=read_answer, daemon=True)
        reader.start()
        reader.join(timeout)
        answer = out.get("line")
        if answer is None:
            raise RuntimeError(f"attach_driver: no answer to {line!r} within {timeout} s")
        print(f"> {line}\n< {answer}", flush=True)
        if answer.startswith("ok"):
            return True, answer[3:]
        return False, answer[len("error "):]

    def status(self):
        """{path: {state, bytes, block_size, direct_io, reads, writes, flushes, discards, errors}}"""
        ok, value = self.command("status")
        table = {}
        for entry in filter(None, value.split(";")):
            f = entry.split()
            table[f[0]] = dict(state=f[1], bytes=int(f[2]), block_size=int(f[3]), direct_io=f[4] == "1",
                               reads=int(f[5]), writes=int(f[6]), flushes=int(f[7]), discards=int(f[8]),
                               errors=int(f[9]))
        return table

    def quit(self, timeout=60):
        """quit; returns the exit code."""
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        return self.wait(timeout)

    def wait(self, timeout=60):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, n=40):
        if self._log:
            self._log.flush()
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


def loop_bound(path):
    """Whether the loop device at `path` is bound to a file (its sysfs loop/ directory exists)."""
    return os.path.exists(f"/sys/block/{os.path.basename(path)}/loop/backing_file")


def wait_loop_gone(path, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not loop_bound(path):
            return True
        time.sleep(0.1)
    return False


def fuse_mounts():
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if " fuse.ispace " in line]


def mounted(point):
    point = os.path.realpath(point)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == point for line in f)


def sysfs_queue(path, name):
    with open(f"/sys/block/{os.path.basename(path)}/queue/{name}") as f:
        return f.read().strip()


def write_files(directory, count, size):
    """`count` files of random data; returns {name: sha256}."""
    import hashlib
    sums = {}
    for i in range(count):
        data = os.urandom(size)
        name = f"file{i}.bin"
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    return sums


def verify_files(directory, sums):
    import hashlib
    for name, digest in sums.items():
        with open(os.path.join(directory, name), "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != digest:
                return False
    return True


def umount(point, timeout=60):
    r = run(["umount", point], timeout=timeout)
    return r.returncode == 0


def holder_pid(home):
    """The pid of the holder of $ISPACE_HOME `home`, or None when none runs (its lock is free: a killed
    holder may linger as a zombie nobody reaps, but its lock went with its files)."""
    try:
        with open(os.path.join(home, "holder.lock"), "r+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return int(f.read().strip() or 0) or None
            fcntl.flock(f, fcntl.LOCK_UN)
            return None
    except (OSError, ValueError):
        return None
