"""Isolation: running model-written Python (``run_python``) in its own process tree, started
through this file run as a launcher (``python -I -S isolation.py SPEC``; this module imports
only the standard library for that reason, and nothing of metagen). Two isolation levels:

``full`` (needs root, i.e. CAP_SYS_ADMIN, and a kernel that allows ``unshare``)
    new mount, network, PID, IPC and UTS namespaces; the program sees a fresh root made of a
    size-limited tmpfs holding read-only, nosuid bind mounts of ``/usr``, ``/lib*``, ``/bin``,
    ``/sbin`` and the Python installation, ``/dev/null|zero|urandom``, and its writable working
    directory ``/work`` (another size-limited tmpfs). No ``/etc``, ``/home``, ``/root``,
    ``/tmp``, ``/proc``, ``/sys``. It runs under a fresh unprivileged uid (no capabilities,
    ``no_new_privs``), so it cannot escape the chroot, remount, or signal anything outside.
    Only a down loopback interface exists: no network. The namespace's init is the launcher's
    child; when the program ends (or is killed) the kernel kills every process left in the PID
    namespace, and the tmpfs mounts vanish with the mount namespace.
``limits``
    resource limits, a fresh working directory, an empty environment and a new session only.
    No network or filesystem isolation: use it only for trusted code (docs/reliability.md).

Both levels: ``RLIMIT_CPU``, ``RLIMIT_AS`` (memory), ``RLIMIT_FSIZE``, ``RLIMIT_NPROC``,
``RLIMIT_NOFILE``, ``RLIMIT_CORE = 0``; a wall-clock deadline after which the whole process
group is killed; stdout + stderr read with a byte cap (the run is killed past it); the
temporary directory removed afterwards.
"""

from __future__ import annotations

import json
import os
import random
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

# --- the parent side ---------------------------------------------------------------------------


@dataclass
class Limits:
    """What one run may use."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_bytes: int = 512 * 2**20  # address space per process
    output_bytes: int = 64 * 2**10  # stdout + stderr together
    file_bytes: int = 16 * 2**20  # largest file, and (full isolation) all of /work
    processes: int = 32  # processes and threads of the sandbox's uid
    open_files: int = 64


@dataclass
class Outcome:
    """How a run ended. ``status``: ok, error, timeout, cpu_limit, memory_limit, file_limit,
    output_limit, crashed. ``reason`` is one line saying why when it is not ok."""

    status: str
    reason: str
    exit_code: int | None = None
    signal: str | None = None
    stdout: str = ""
    stderr: str = ""
    isolation: str = "full"
    uid: int | None = None
    wall_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class SandboxUnavailable(RuntimeError):
    """Full isolation cannot be set up on this machine (not root, or unshare refused)."""


_SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin")
_DEVICES = ("null", "zero", "urandom")
_UID_FIRST, _UID_COUNT = 1_000_000, 1_000_000


def run_python(files: dict[str, str | bytes], main: str, limits: Limits | None = None,
               isolation: str = "full", args: tuple[str, ...] = ()) -> Outcome:
    """Run ``python -I -S -B main`` in the sandbox with ``files`` (name -> content) in its
    working directory. Raises :class:`SandboxUnavailable` when ``isolation="full"`` cannot be
    provided here; every other failure is an :class:`Outcome`."""
    if isolation not in ("full", "limits"):
        raise ValueError(f"isolation must be 'full' or 'limits', got {isolation!r}")
    limits = limits or Limits()
    if isolation == "full" and os.geteuid() != 0:
        raise SandboxUnavailable("full isolation needs root (CAP_SYS_ADMIN) to create namespaces; "
                                 f"this process runs as uid {os.geteuid()}")
    host_dir = tempfile.mkdtemp(prefix="metagen-sandbox-")
    uid = _fresh_uid() if isolation == "full" else None
    try:
        inputs = os.path.join(host_dir, "in")
        os.mkdir(inputs, 0o700)
        for name, content in files.items():
            if os.path.basename(name) != name or name in ("", ".", ".."):
                raise ValueError(f"sandbox file names are plain names, got {name!r}")
            with open(os.path.join(inputs, name), "wb") as out:
                out.write(content.encode("utf-8", "surrogateescape") if isinstance(content, str) else content)
        spec = {
            "isolation": isolation,
            "host_dir": host_dir,
            "python": getattr(sys, "_base_executable", None) or sys.executable,
            "exposed": _exposed_dirs(),
            "uid": uid,
            "limits": asdict(limits),
            "argv": ["-I", "-S", "-B", main, *args],
        }
        return _launch(spec, limits, isolation, uid)
    finally:
        if uid is not None:
            _reap_uid(uid)
        shutil.rmtree(host_dir, ignore_errors=True)


def _launch(spec: dict, limits: Limits, isolation: str, uid: int | None) -> Outcome:
    status_read, status_write = os.pipe()
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", os.path.abspath(__file__), json.dumps(spec), str(status_write)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(status_write,), start_new_session=True, env={"LC_ALL": "C.UTF-8"},
        )
    finally:
        os.close(status_write)
    out, err, status_bytes = bytearray(), bytearray(), bytearray()
    killed_for = None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ, out)
    selector.register(proc.stderr, selectors.EVENT_READ, err)
    status_file = os.fdopen(status_read, "rb", buffering=0)
    selector.register(status_file, selectors.EVENT_READ, status_bytes)
    deadline = started + limits.wall_seconds
    try:
        while selector.get_map():
            if isolation == "limits" and proc.poll() is not None:
                _kill_group(proc)  # the program is done: end what it left in its session
            left = deadline - time.monotonic()
            if left <= 0:
                killed_for = killed_for or "timeout"
                _kill_group(proc)
                break
            for key, _ in selector.select(timeout=min(left, 0.5)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                key.data.extend(chunk)
                if key.data is not status_bytes and len(out) + len(err) > limits.output_bytes:
                    killed_for = "output_limit"
                    _kill_group(proc)
                    selector.unregister(proc.stdout)
                    selector.unregister(proc.stderr)
                    break
            if killed_for == "output_limit":
                break
    finally:
        selector.close()
        _kill_group(proc)  # stragglers in the session (limits mode); a no-op when all is done
        proc.wait()
        status_bytes.extend(_drain(status_file))
        status_file.close()
        proc.stdout.close()
        proc.stderr.close()
    elapsed = time.monotonic() - started
    cap = limits.output_bytes
    stdout = bytes(out[:cap]).decode("utf-8", "replace")
    stderr = bytes(err[:cap]).decode("utf-8", "replace")
    status = _last_status(status_bytes)
    if isolation == "limits" and proc.returncode is not None and "setup_error" not in status:
        status = {"signal": -proc.returncode} if proc.returncode < 0 else {"exit": proc.returncode}
    if "setup_error" in status:
        raise SandboxUnavailable(f"the sandbox could not be set up: {status['setup_error']}")
    outcome = _classify(status, killed_for, stderr, limits)
    outcome.stdout, outcome.stderr = stdout, stderr
    outcome.isolation, outcome.uid, outcome.wall_seconds = isolation, uid, elapsed
    return outcome


def _classify(status: dict, killed_for: str | None, stderr: str, limits: Limits) -> Outcome:
    if killed_for == "timeout":
        return Outcome("timeout", f"wall-clock limit of {limits.wall_seconds:g} s exceeded; killed")
    if killed_for == "output_limit":
        return Outcome("output_limit", f"output exceeded {limits.output_bytes} bytes; killed")
    if "signal" in status:
        number = status["signal"]
        name = _signal_name(number)
        if number == signal.SIGXCPU:
            return Outcome("cpu_limit", f"CPU-time limit of {limits.cpu_seconds} s exceeded ({name})", signal=name)
        if number == signal.SIGXFSZ:
            return Outcome("file_limit", f"file-size limit of {limits.file_bytes} bytes exceeded ({name})",
                           signal=name)
        if number == signal.SIGKILL:
            return Outcome("crashed", "killed by SIGKILL (CPU hard limit, or out of memory)", signal=name)
        return Outcome("crashed", f"killed by {name}", signal=name)
    code = status.get("exit")
    if code is None:
        return Outcome("crashed", "the sandbox ended without reporting a status")
    if code == 0:
        return Outcome("ok", "", exit_code=0)
    last = _last_line(stderr)
    if "MemoryError" in last:
        return Outcome("memory_limit", f"memory limit of {limits.memory_bytes} bytes exceeded: {last}", exit_code=code)
    return Outcome("error", f"exited with status {code}" + (f": {last}" if last else ""), exit_code=code)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _drain(stream) -> bytes:
    try:
        return stream.read() or b""
    except OSError:
        return b""


def _last_status(raw: bytes) -> dict:
    lines = [line for line in bytes(raw).decode("utf-8", "replace").splitlines() if line.strip()]
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return {}


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _exposed_dirs() -> list[str]:
    """System directories (and the Python installation) the program sees read-only."""
    exposed = [d for d in _SYSTEM_DIRS if os.path.lexists(d)]
    python = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    for extra in (sys.base_prefix, os.path.dirname(python)):
        extra = os.path.realpath(extra)
        if not any(extra == d or extra.startswith(d.rstrip("/") + "/") for d in exposed):
            exposed.append(extra)
    return exposed


def _uids_in_use() -> set[int]:
    uids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                uids.add(os.stat(f"/proc/{entry}").st_uid)
            except OSError:
                pass
    return uids


def _fresh_uid() -> int:
    """An unprivileged uid no process uses, so RLIMIT_NPROC and signals are this run's alone."""
    used = _uids_in_use()
    while True:
        uid = _UID_FIRST + random.randrange(_UID_COUNT)
        if uid not in used:
            return uid


def _pids_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def _reap_uid(uid: int, patience: float = 10.0) -> None:
    """Wait until no process runs as ``uid`` (the kernel is tearing the PID namespace down);
    SIGKILL any that linger."""
    deadline = time.monotonic() + patience
    while True:
        pids = _pids_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"sandbox processes of uid {uid} survive: {pids}")
        time.sleep(0.02)


def remaining_processes(uid: int) -> list[int]:
    """Pids still running as a sandbox's uid (for tests: should be empty after a run)."""
    return _pids_of_uid(uid)


# --- the launcher (runs as its own process, standard library only) -------------------------------

_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT = 1, 2, 4, 32
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWPID, _CLONE_NEWNET = 0x20000000, 0x40000000
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38


def _launcher(spec: dict, status_fd: int) -> None:
    def report(**status) -> None:
        os.write(status_fd, (json.dumps(status) + "\n").encode())

    try:
        if spec["isolation"] == "full":
            work, root, libc = _build_root(spec)
        else:
            work, root, libc = os.path.join(spec["host_dir"], "work"), None, None
            os.mkdir(work, 0o700)
            for name in os.listdir(os.path.join(spec["host_dir"], "in")):
                shutil.copyfile(os.path.join(spec["host_dir"], "in", name), os.path.join(work, name))
    except Exception as exc:
        report(setup_error=f"{type(exc).__name__}: {exc}")
        os._exit(0)
    if root is None:  # limits only: become the program
        _exec_program(spec, work, None, None, status_fd)
    child = os.fork()  # pid 1 of the new PID namespace
    if child == 0:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # dies with the launcher
        program = os.fork()
        if program == 0:
            _exec_program(spec, "/work", root, libc, status_fd)
        status = None
        while True:  # reap orphans too, until the program itself is done
            try:
                pid, raw = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if pid == program:
                status = raw
                break
        if status is None:
            report(setup_error="lost the program process")
        elif os.WIFSIGNALED(status):
            report(signal=os.WTERMSIG(status))
        else:
            report(exit=os.WEXITSTATUS(status))
        os._exit(0)  # as the namespace's init, this kills whatever the program left running
    os.waitpid(child, 0)
    os._exit(0)


def _check(result: int, what: str) -> None:
    if result != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _build_root(spec: dict):
    """Unshare the namespaces and assemble the program's root; returns (work, root, libc)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    flags = _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC | _CLONE_NEWUTS
    _check(libc.unshare(flags), "unshare(mount, network, pid, ipc, uts namespaces)")
    _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "make mounts private")
    root = os.path.join(spec["host_dir"], "root")
    os.mkdir(root, 0o755)
    _check(libc.mount(b"tmpfs", root.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, b"size=1m,mode=0755"),
           "mount the root tmpfs")
    for path in spec["exposed"]:
        target = root + path
        if os.path.islink(path):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(os.readlink(path), target)
            continue
        os.makedirs(target, exist_ok=True)
        _bind(libc, path, target, _MS_NODEV)
    os.mkdir(root + "/dev", 0o755)
    for name in _DEVICES:
        open(f"{root}/dev/{name}", "w").close()
        _bind(libc, f"/dev/{name}", f"{root}/dev/{name}", 0)
    uid, limits = spec["uid"], spec["limits"]
    work = root + "/work"
    os.mkdir(work, 0o700)
    options = f"size={2 * max(limits['file_bytes'], 4096)},mode=0700,uid={uid},gid={uid}".encode()
    _check(libc.mount(b"tmpfs", work.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, options), "mount /work")
    for name in os.listdir(os.path.join(spec["host_dir"], "in")):
        shutil.copyfile(os.path.join(spec["host_dir"], "in", name), os.path.join(work, name))
        os.chown(os.path.join(work, name), uid, uid)
    _check(libc.mount(None, root.encode(), None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, None),
           "make the root read-only")
    return work, root, libc


def _bind(libc, source: str, target: str, extra: int) -> None:
    _check(libc.mount(source.encode(), target.encode(), None, _MS_BIND, None), f"bind {source}")
    _check(libc.mount(None, target.encode(), None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | extra, None),
           f"make {source} read-only")


def _exec_program(spec: dict, work: str, root: str | None, libc, status_fd: int) -> None:
    """In the program's process: limits, (full) chroot and privilege drop, then exec Python."""
    try:
        limits = spec["limits"]
        cpu = max(1, int(limits["cpu_seconds"]))
        for which, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)),
                             (resource.RLIMIT_AS, (limits["memory_bytes"],) * 2),
                             (resource.RLIMIT_FSIZE, (limits["file_bytes"],) * 2),
                             (resource.RLIMIT_NOFILE, (limits["open_files"],) * 2),
                             (resource.RLIMIT_CORE, (0, 0)),
                             (resource.RLIMIT_NPROC, (limits["processes"],) * 2)):
            resource.setrlimit(which, value)
        if root is not None:
            os.chroot(root)
            os.chdir("/work")
            uid = spec["uid"]
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")
        else:
            os.chdir(work)
        os.closerange(3, 65536)
        env = {"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin", "HOME": "/work" if root else work,
               "TMPDIR": "/work" if root else work}
        os.execve(spec["python"], [spec["python"], *spec["argv"]], env)
    except BaseException as exc:  # noqa: BLE001 - report anything, then die
        try:
            os.write(status_fd, (json.dumps({"setup_error": f"{type(exc).__name__}: {exc}"}) + "\n").encode())
        finally:
            os._exit(127)


_PROBED: dict[str, str | None] = {}


def probe(isolation: str = "full") -> str | None:
    """None when this isolation works here, else why not (cached per process)."""
    if isolation not in _PROBED:
        try:
            outcome = run_python({"probe.py": "pass\n"}, "probe.py", Limits(wall_seconds=30), isolation)
            _PROBED[isolation] = None if outcome.ok else f"a trivial program failed: {outcome.reason}"
        except SandboxUnavailable as exc:
            _PROBED[isolation] = str(exc)
    return _PROBED[isolation]


if __name__ == "__main__":  # the launcher: python -I -S -B isolation.py SPEC STATUS_FD
    _launcher(json.loads(sys.argv[1]), int(sys.argv[2]))
