"""Sandboxes: where a container's code runs. A protocol, a registry and the default backend.

``Sandbox`` is what the containers manager (``midtier.tools.containers``) drives: run Python in
a process that keeps its state between calls, run shell commands beside it, close. Backends
are registered by key; a deployment picks one with ``settings["code_interpreter"]["sandbox"]``
(a stronger isolation, gVisor or a VM, is one more entry in ``SANDBOXES``).

The default backend, ``subprocess``: one worker process per container (``sandbox_worker.py``),
JSON lines over its pipes, started on first use and again after it died (the next call says the
state is gone). Isolation, as strong as the machine allows (``isolation`` setting):

- ``auto`` (default): namespaces when the kernel lets this user make them (unprivileged user
  namespaces, or root), else ``rlimits``, with a warning once;
- ``namespaces``: user, mount, network and pid namespaces and a chroot; the code sees system
  folders read-only, its container folder at /mnt/data, a private /tmp; no network; the process
  limit counts its own processes only (a fork bomb does not starve the server); killing the
  worker kills every process it started;
- ``rlimits``: resource limits, a session of its own, an audit hook confining Python's own file
  and socket use (defense in depth only: a child process is not confined). A root server runs the
  code as ``uid`` (65534, nobody) in both modes; under ``rlimits`` that user must be able to run
  the interpreter (``python`` option: a venv inside /root is out of its reach).

Either way: a wall-clock budget per call (a repeating alarm in the worker raises into the code;
the server kills the worker ``GRACE`` seconds later if it is stuck), RLIMIT_AS (memory),
RLIMIT_NPROC, RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE, no core files, a scrubbed environment.
Blocking pipe I/O runs in a worker thread, so a sandbox is not tied to one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

log = logging.getLogger(__name__)

SANDBOXES: dict[str, str] = {
    "subprocess": "midtier.tools.sandbox:SubprocessSandbox",
}
WORKER = Path(__file__).with_name("sandbox_worker.py")
GRACE = 2.0  # seconds past a call's budget before the server kills a worker that did not answer
START_TIMEOUT = 20.0
STATE_LOST = "The sandbox was restarted: variables, imports and definitions from earlier calls are gone."


class SandboxError(Exception):
    """The sandbox could not run at all (it failed to start, the isolation asked for is missing)."""

    def __init__(self, message: str, *, stage: str = "") -> None:
        super().__init__(message)
        self.stage = stage  # the launcher's step that failed: unshare, setup, exec


@dataclass
class Limits:
    memory_mb: int = 1024  # address space of the worker and each of its processes
    processes: int = 64  # processes and threads of the sandbox
    file_size_mb: int = 64  # largest file the code may write
    open_files: int = 256
    cpu_seconds: int = 3600  # a worker's CPU time over its life (each call is also held to its budget)
    tmp_mb: int = 64  # the private /tmp (namespaces only)
    output_chars: int = 20_000  # output kept per call (stdout and stderr together)

    @classmethod
    def from_settings(cls, settings: dict[str, Any], **overrides: int) -> Limits:
        """The limits named in ``settings`` (a tool's settings table), then ``overrides``."""
        known = {k: int(v) for k, v in settings.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, **overrides})


@dataclass
class PythonResult:
    output: str  # what the code printed (stdout and stderr, interleaved), then the last expression's repr
    error: str | None = None  # the traceback, or which limit stopped it; None when it ran through
    outcome: str = "ok"  # ok, error, timeout, killed (the worker died or was killed: state lost)
    truncated: bool = False
    restarted: bool = False  # a fresh worker ran it after an earlier one died: earlier state is gone


@dataclass
class CommandResult:
    stdout: str
    stderr: str
    exit_code: int | None  # None when it timed out
    timed_out: bool = False


class Sandbox(Protocol):
    """One container's execution environment. Calls on one sandbox run one at a time."""

    isolation: str  # what isolates it ("namespaces", "rlimits"...), known once it has started

    async def run_python(self, code: str, timeout: float) -> PythonResult:
        """Run ``code`` in the container's persistent interpreter, within ``timeout`` seconds.
        Cancellation stops the code at once (the state may be lost)."""

    async def run_shell(self, commands: list[str], timeout: float, max_output: int) -> list[CommandResult]:
        """Run each command (a shell line) in the container folder, in order, within ``timeout`` in all."""

    def claim(self, path: Path) -> None:
        """Make a file the server wrote into the folder the sandbox's own (it may change or delete it)."""

    async def close(self) -> None:
        """Stop every process of the sandbox (the folder stays)."""


def open_sandbox(key: str, folder: Path, limits: Limits, options: dict[str, Any]) -> Sandbox:
    """The sandbox of backend ``key`` for ``folder`` (not started yet)."""
    try:
        target = SANDBOXES[key]
    except KeyError:
        raise SandboxError(f"unknown sandbox backend {key!r}; known: {', '.join(SANDBOXES)}") from None
    module, _, name = target.partition(":")
    sandbox: Sandbox = getattr(importlib.import_module(module), name)(folder, limits, options)
    return sandbox


@dataclass
class _Job:
    request: dict[str, Any]
    budget: float  # seconds the worker gets once the job holds it (it is killed past that and GRACE)
    worker: _Worker | None = None  # set once it holds the worker (it was sent)
    cancelled: bool = False


@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    isolation: str
    detail: str
    buffer: bytearray = field(default_factory=bytearray)


class SubprocessSandbox:
    """A worker process per container; see the module docstring. ``options``: ``isolation``
    (auto, namespaces, rlimits), ``python`` (the interpreter, default this one), ``uid``/``gid``
    (whom a root server runs code as), ``mountpoint`` (an empty folder the namespaced root is
    built on, default ``<folder>/../.mnt``)."""

    _namespaces: ClassVar[bool | None] = None  # learned from the first start on this machine

    def __init__(self, folder: Path, limits: Limits, options: dict[str, Any]) -> None:
        self.folder = folder
        self.limits = limits
        self.mode = str(options.get("isolation", "auto"))
        if self.mode not in ("auto", "namespaces", "rlimits"):
            raise SandboxError(f"unknown isolation {self.mode!r}: use auto, namespaces or rlimits")
        self.python = str(options.get("python") or sys.executable)
        self.uid = int(options.get("uid", 65534))
        self.gid = int(options.get("gid", self.uid))
        self.mountpoint = Path(options.get("mountpoint") or folder.parent / ".mnt")
        self.isolation = ""
        self._worker: _Worker | None = None
        self._lock = threading.Lock()  # one call at a time; taken in the I/O thread
        self._lost: str | None = None  # why the last worker died, told with the next call

    # -- the protocol --------------------------------------------------------------------------------
    async def run_python(self, code: str, timeout: float) -> PythonResult:
        request = {"op": "python", "code": code, "timeout": max(timeout, 0.1), "max_output": self.limits.output_chars}
        reply, restarted = await self._call(request, timeout)
        if "outcome" not in reply:
            return PythonResult("", reply["lost"], "killed", restarted=restarted)
        return PythonResult(reply["output"], reply["error"], reply["outcome"], reply["truncated"], restarted)

    async def run_shell(self, commands: list[str], timeout: float, max_output: int) -> list[CommandResult]:
        request = {"op": "shell", "commands": commands, "timeout": max(timeout, 0.1), "max_output": max_output}
        reply, _ = await self._call(request, timeout)
        if "results" not in reply:
            return [CommandResult("", reply["lost"], None, True)] + [
                CommandResult("", "not run", None, True) for _ in commands[1:]]
        return [CommandResult(**r) for r in reply["results"]]

    def claim(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, self.uid, self.gid)

    async def close(self) -> None:
        await asyncio.to_thread(self._stop)

    # -- calls -----------------------------------------------------------------------------------------
    async def _call(self, request: dict[str, Any], timeout: float) -> tuple[dict[str, Any], bool]:
        job = _Job(request, timeout + GRACE)
        try:
            return await asyncio.shield(asyncio.to_thread(self._roundtrip, job))
        except asyncio.CancelledError:
            job.cancelled = True
            if job.worker is not None:  # the code is running: stop it now; the thread sees the pipe close
                _signal(job.worker)
            raise

    def _roundtrip(self, job: _Job) -> tuple[dict[str, Any], bool]:
        with self._lock:
            if job.cancelled:
                return {"lost": "cancelled"}, False
            restarted = False
            if self._worker is None or self._worker.proc.poll() is not None:
                if self._worker is not None:
                    self._lost = self._lost or self._exit_reason(self._worker)
                restarted = self._lost is not None
                self._worker = self._start()
            worker = job.worker = self._worker
            deadline = time.monotonic() + job.budget  # from now: waiting for the lock is not the code's time
            try:
                assert worker.proc.stdin is not None
                worker.proc.stdin.write((json.dumps(job.request) + "\n").encode())
                worker.proc.stdin.flush()
                reply = self._read(worker, deadline)
            except (BrokenPipeError, OSError, ValueError) as exc:
                reply = None
                log.debug("sandbox %s: %s", self.folder.name, exc)
            if reply is None:  # out of time, or the worker died: it goes, with its state
                timed_out = time.monotonic() >= deadline
                why = ("the code ran past its time budget and did not stop" if timed_out
                       else "the call was cancelled" if job.cancelled else self._exit_reason(worker))
                self._kill(worker, why)
                self._lost = why
                return {"lost": f"Error: the sandbox was stopped ({why}). {STATE_LOST}"}, restarted
            self._lost = None
            return reply, restarted

    def _read(self, worker: _Worker, deadline: float) -> dict[str, Any] | None:
        """The next JSON line of the worker; None at EOF or past ``deadline``."""
        assert worker.proc.stdout is not None
        fd = worker.proc.stdout.fileno()
        while b"\n" not in worker.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            worker.buffer.extend(chunk)
        line, _, rest = bytes(worker.buffer).partition(b"\n")
        worker.buffer[:] = rest
        message: dict[str, Any] = json.loads(line)
        return message

    # -- the worker's life -----------------------------------------------------------------------------
    def _start(self) -> _Worker:
        self.folder.mkdir(parents=True, exist_ok=True)
        mode = self.mode
        if mode == "auto":
            mode = "rlimits" if SubprocessSandbox._namespaces is False else "namespaces"
        try:
            worker = self._spawn(mode)
        except SandboxError as exc:
            if self.mode != "auto" or mode != "namespaces" or exc.stage != "unshare":
                raise
            SubprocessSandbox._namespaces = False
            log.warning("sandbox: namespaces are unavailable here (%s); running code with rlimits and an audit "
                        "hook only, which do not confine child processes to the container folder", exc)
            worker = self._spawn("rlimits")
        if mode == "namespaces" and worker.isolation == "namespaces":
            SubprocessSandbox._namespaces = True
        self.isolation = worker.isolation
        log.info("sandbox %s started (pid %s): %s", self.folder.name, worker.proc.pid, worker.detail)
        return worker

    def _spawn(self, mode: str) -> _Worker:
        root = os.geteuid() == 0
        if root:
            os.chown(self.folder, self.uid, self.gid)
        if mode == "namespaces":
            self.mountpoint.mkdir(parents=True, exist_ok=True)
        cfg = {"folder": str(self.folder.resolve()), "mountpoint": str(self.mountpoint.resolve()), "isolation": mode,
               "uid": self.uid, "gid": self.gid, **asdict(self.limits)}
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg",
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        try:
            proc = subprocess.Popen([self.python, "-I", str(WORKER), "launch", json.dumps(cfg)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    cwd=self.folder, env=env, start_new_session=True, close_fds=True)
        except OSError as exc:
            raise SandboxError(f"the sandbox did not start: {self.python}: {exc.strerror}") from exc
        worker = _Worker(proc, mode, "")
        try:
            hello = self._read(worker, time.monotonic() + START_TIMEOUT)
        except ValueError:
            hello = None
        if hello is None or not hello.get("ready"):
            self._kill(worker, "failed to start")
            reason = hello.get("error") if hello else f"it exited ({self._exit_reason(worker)})"
            raise SandboxError(f"the sandbox did not start with isolation {mode!r}: {reason}",
                               stage=str(hello.get("stage", "")) if hello else "")
        worker.isolation, worker.detail = str(hello["isolation"]), str(hello["detail"])
        return worker

    def _kill(self, worker: _Worker | None, why: str) -> None:
        if worker is None or worker.proc.returncode is not None:
            return
        _signal(worker)
        try:
            worker.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(worker.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=5)
        for pipe in (worker.proc.stdin, worker.proc.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()
        log.info("sandbox %s killed: %s", self.folder.name, why)

    def _exit_reason(self, worker: _Worker) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.proc.wait(timeout=2)
        code = worker.proc.returncode
        if code is None:
            return "it stopped answering"
        if code < 0:
            return f"it was killed by signal {signal.Signals(-code).name}"
        return f"it exited with status {code}"

    def _stop(self) -> None:
        with self._lock:
            worker, self._worker = self._worker, None
            if worker is not None and worker.proc.poll() is None:
                self._kill(worker, "closed")
                self._lost = "it was closed while idle"


def _signal(worker: _Worker) -> None:
    """SIGKILL a worker without waiting. Under namespaces, pid 1 (the launcher's child) dies: the
    kernel kills the rest of its pid namespace and the launcher, which reaps it, exits (killing the
    launcher first would leave pid 1 to an init that may never reap it). Otherwise its session."""
    pid = worker.proc.pid
    targets = _children(pid) if worker.isolation == "namespaces" else []
    for child in targets:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signal.SIGKILL)
    if not targets:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        pass
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return found
