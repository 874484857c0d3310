"""The sandbox's own side: a launcher that isolates a Python process, and the worker it becomes.

Standard library only: this file runs under the sandbox's interpreter, never imports midtier,
and reaches the worker as source text (``python -I -c``), since the worker's root folder does
not hold it. ``midtier.tools.sandbox`` (the server side) starts it and speaks to it.

    server ── Popen(start_new_session, scrubbed env, cwd = the container folder) ──►
    python -I sandbox_worker.py launch CONFIG                                     (the launcher)
      isolation "namespaces": unshare user (unless root), mount, network and pid namespaces;
        fork: the child is pid 1 of the new pid namespace; the launcher waits for it
        pid 1: a root of its own on a tmpfs: system folders read-only, the container folder
        read-write at /mnt/data, a private /tmp and /proc, no network but a down loopback;
        a root server drops to the sandbox uid and opens a user namespace of its own (so the
        process limit counts this sandbox alone); chroot; rlimits
      isolation "rlimits": rlimits only (a root server still drops to the sandbox uid)
      exec python -I -c <this source> serve CONFIG                 (exec drops capabilities)
    the worker: JSON lines on its first stdin/stdout (moved to private fds), one request at a time:
      {"op": "python", "code", "timeout"} -> {"output", "truncated", "error", "outcome"}
      {"op": "shell", "commands", "timeout", "max_output"} -> {"results": [{"stdout", "stderr",
                                                               "exit_code", "timed_out"}]}

Layers, strongest first: the namespaces and the chroot (what exists is all the code can reach),
rlimits (memory, processes, CPU time, file size, open files), the wall-clock budget (a repeating
alarm inside the worker, the server's kill behind it), and an audit hook (``sys.addaudithook``)
that denies sockets and file access outside the container. The audit hook is defense in depth
only: ctypes or a child process get past it.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import ctypes
import errno
import json
import linecache
import os
import resource
import selectors
import signal
import subprocess
import sys
import time
import traceback
from typing import Any, NoReturn

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 1, 4, 36
MiB = 1024 * 1024
DATA = "/mnt/data"  # the container folder, as the code sees it under namespaces
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache", "/etc/ld.so.conf",
          "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
NETWORK = frozenset({"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
                     "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo"})
_libc: Any = None


# -- the launcher ------------------------------------------------------------------------------------
def launch(cfg: dict[str, Any]) -> NoReturn:
    with open(__file__, encoding="utf-8") as f:  # before the root changes
        source = f.read()
    root = os.geteuid() == 0
    stage = "setup"
    try:
        if cfg["isolation"] == "namespaces":
            stage = "unshare"
            _c(_call("unshare", CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | (0 if root else CLONE_NEWUSER)), "unshare")
            stage = "setup"
            cfg["detail"] = _enter_namespaces(cfg, root)
            cfg["workdir"], cfg["writable"], cfg["readable"] = DATA, [DATA, "/tmp"], ["/"]
        else:
            if root:
                _drop_to(cfg["uid"], cfg["gid"])
            cfg["detail"] = "rlimits only: no namespaces, the folder is confined by an audit hook alone"
            cfg["workdir"], cfg["writable"] = cfg["folder"], [cfg["folder"]]
            cfg["readable"] = [cfg["folder"], *SYSTEM, *DEVICES, *_python_dirs()]
        _limit(cfg, root)
        os.environ["HOME"] = cfg["workdir"]
        os.environ["TMPDIR"] = "/tmp" if cfg["isolation"] == "namespaces" else cfg["workdir"]
        stage = "exec"
        os.execv(sys.executable, [sys.executable, "-I", "-c", source, "serve", json.dumps(cfg)])
    except Exception as exc:  # reported to the server, which falls back to rlimits if unshare failed
        where = f" ({sys.executable})" if stage == "exec" else ""
        _fail(f"{type(exc).__name__}: {exc}{where}", stage)


def _fail(message: str, stage: str) -> NoReturn:
    os.write(1, (json.dumps({"error": message, "stage": stage}) + "\n").encode())
    os._exit(3)


def _c(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _call(name: str, *args: Any) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return int(getattr(_libc, name)(*args))


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    _c(_call("mount", enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
       f"mount {source or fstype} on {target}")


def _map_self(uid: int, gid: int) -> None:
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _drop_to(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    _call("prctl", PR_SET_DUMPABLE, 1, 0, 0, 0)  # setuid cleared it; /proc/self/*_map need it


def _enter_namespaces(cfg: dict[str, Any], root: bool) -> str:
    """After unshare: a root of its own, chroot; returns in pid 1 of the new pid namespace only."""
    uid, gid = os.getuid(), os.getgid()
    if not root:
        _map_self(uid, gid)
    pid = os.fork()
    if pid:  # the launcher: hand the pipes to pid 1 alone, wait, pass its exit status on
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        _, status = os.waitpid(pid, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    _call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    notes = _build_root(cfg)
    new_root = os.open(cfg["mountpoint"], os.O_RDONLY | os.O_DIRECTORY)  # reachable whatever its parents allow
    if root:
        _drop_to(cfg["uid"], cfg["gid"])
        try:  # a user namespace of its own: RLIMIT_NPROC then counts this sandbox's processes only
            _c(_call("unshare", CLONE_NEWUSER), "unshare user")
            _map_self(cfg["uid"], cfg["gid"])
        except OSError as exc:
            notes.append(f"no user namespace ({exc.strerror}): the process limit is shared by all sandboxes")
    os.fchdir(new_root)
    os.chroot(".")
    os.close(new_root)
    os.chdir(DATA)
    return "; ".join(["user, mount, network and pid namespaces; chroot", *notes])


def _build_root(cfg: dict[str, Any]) -> list[str]:
    mnt, notes = cfg["mountpoint"], []
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", mnt, "tmpfs", MS_NOSUID | MS_NODEV, "size=8m,mode=0755")
    # /tmp first: a Python that lives under /tmp (a checkout there) is bound inside it, not hidden by it
    os.makedirs(mnt + "/tmp")
    _mount("tmpfs", mnt + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['tmp_mb']}m,mode=1777")
    bound: list[str] = []
    for path in sorted({*SYSTEM, *_python_dirs()}):
        if not any(path == b or path.startswith(b + "/") for b in bound) and _bind(path, mnt, read_only=True):
            bound.append(path)
    os.makedirs(mnt + "/dev")
    for device in DEVICES:
        _bind(device, mnt, read_only=False)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{mnt}/dev/{name}")
    os.makedirs(mnt + "/etc", exist_ok=True)
    uid, gid = (cfg["uid"], cfg["gid"]) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    for name, text in (("passwd", f"root:x:0:0::/:/bin/sh\nsandbox:x:{uid}:{gid}::{DATA}:/bin/sh\n"),
                       ("group", f"root:x:0:\nsandbox:x:{gid}:\n"), ("hosts", "127.0.0.1 localhost\n")):
        with open(f"{mnt}/etc/{name}", "w") as f:
            f.write(text)
    os.makedirs(mnt + "/proc")
    try:
        _mount("proc", mnt + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError as exc:
        notes.append(f"no /proc ({exc.strerror})")
    os.makedirs(mnt + DATA)
    _mount(cfg["folder"], mnt + DATA, None, MS_BIND | MS_REC)
    _mount(None, mnt + DATA, None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | _locked(mnt + DATA))
    _mount(None, mnt, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return notes


def _python_dirs() -> list[str]:
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable)),
            os.path.dirname(os.path.abspath(sys.executable))}
    return sorted(d for d in dirs if d and d != "/")


def _locked(path: str) -> int:
    """The flags a remount in a user namespace must keep."""
    st, flags = os.statvfs(path), 0
    for bit, flag in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
                      (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME)):
        if st.f_flag & bit:
            flags |= flag
    return flags


def _bind(source: str, mnt: str, *, read_only: bool) -> bool:
    if not os.path.lexists(source):
        return False
    target = mnt + source
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.islink(source) and os.path.dirname(source) == "/":  # /bin -> usr/bin on merged-/usr systems
        os.symlink(os.readlink(source), target)
        return True
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        open(target, "w").close()
    _mount(source, target, None, MS_BIND | MS_REC)
    if read_only:
        _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | _locked(target))
    return True


def _limit(cfg: dict[str, Any], root: bool) -> None:
    limits = [(resource.RLIMIT_AS, cfg["memory_mb"] * MiB), (resource.RLIMIT_FSIZE, cfg["file_size_mb"] * MiB),
              (resource.RLIMIT_NOFILE, cfg["open_files"]), (resource.RLIMIT_CORE, 0)]
    processes = cfg["processes"]
    if cfg["isolation"] != "namespaces" and not root:  # the limit counts every task of this uid
        processes += _tasks_of(os.getuid())
    limits.append((resource.RLIMIT_NPROC, processes))
    for which, value in limits:
        resource.setrlimit(which, (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu_seconds"], cfg["cpu_seconds"] + 5))


def _tasks_of(uid: int) -> int:
    count = 0
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and os.stat(f"/proc/{name}").st_uid == uid:
                count += len(os.listdir(f"/proc/{name}/task"))
        except OSError:
            continue
    return count


# -- the worker ----------------------------------------------------------------------------------------
class Stop(BaseException):
    """The call's budget ran out (a BaseException: ``except Exception`` in the code does not hide it)."""


class Worker:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.pid = os.getpid()
        self.workdir = os.open(".", os.O_RDONLY | os.O_DIRECTORY)  # fchdir back needs no path walk
        self.cells = 0
        self.running = False
        self.stop_reason = ""
        self.globals: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        self.guard = Guard(cfg)
        self.shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
        self.requests = os.fdopen(os.dup(0), "rb")  # os.dup: private (non-inheritable) fds
        self.replies = os.fdopen(os.dup(1), "wb")
        self.null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(self.null, fd)
        _call("prctl", PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans come back to be killed and reaped
        signal.signal(signal.SIGALRM, self._on_signal)
        signal.signal(signal.SIGXCPU, self._on_signal)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the file size limit fails instead
        sys.stdout.reconfigure(line_buffering=True, errors="backslashreplace")  # type: ignore[union-attr]
        sys.stderr.reconfigure(line_buffering=True, errors="backslashreplace")  # type: ignore[union-attr]
        self.stdout, self.stderr = sys.stdout, sys.stderr

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.running and os.getpid() == self.pid:
            self.stop_reason = "cpu" if signum == signal.SIGXCPU else "timeout"
            raise Stop()

    def reply(self, message: dict[str, Any]) -> None:
        self.replies.write((json.dumps(message) + "\n").encode())
        self.replies.flush()

    def serve(self) -> None:
        self.guard.install()
        self.reply({"ready": True, "isolation": self.cfg["isolation"], "detail": self.cfg["detail"]})
        while True:
            line = self.requests.readline()
            if not line:
                return
            request = json.loads(line)
            if request.get("op") == "python":
                self.reply(self.python(request["code"], float(request["timeout"]), int(request["max_output"])))
            elif request.get("op") == "shell":
                deadline = time.monotonic() + float(request["timeout"])
                self.reply({"results": [self.command(c, deadline, int(request["max_output"]))
                                        for c in request["commands"]]})
            else:
                self.reply({"error": f"unknown op {request.get('op')!r}"})

    # -- python --
    def python(self, code: str, budget: float, cap: int) -> dict[str, Any]:
        self.cells += 1
        filename = f"<cell {self.cells}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        capture = os.memfd_create("output")
        error, outcome, self.stop_reason = None, "ok", ""
        used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        try:
            os.dup2(capture, 1)
            os.dup2(capture, 2)
            resource.setrlimit(resource.RLIMIT_CPU, (min(hard, int(used + budget) + 1), hard))
            self.running = True
            signal.setitimer(signal.ITIMER_REAL, budget, 0.5)
            try:
                self._execute(code, filename)
            finally:
                self.running = False
                signal.setitimer(signal.ITIMER_REAL, 0)
                if os.getpid() != self.pid:  # a child the code forked came back here
                    os._exit(0)
        except Stop:
            outcome, error = "timeout", self._stopped(budget)
        except BaseException as exc:  # the code's error, whatever it is, is its output
            outcome, error = "error", self._traceback(exc, filename)
        finally:
            self.running = False
            resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        self._save_figures()
        output, truncated = self._collect(capture, cap)
        self._after_call()
        return {"output": output, "truncated": truncated, "error": error, "outcome": outcome}

    def _execute(self, code: str, filename: str) -> None:
        tree = ast.parse(code, filename, "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body[-1].value)
            tree.body.pop()
        exec(compile(tree, filename, "exec"), self.globals)
        if last is not None:
            value = eval(compile(last, filename, "eval"), self.globals)
            if value is not None:
                self.globals["_"] = value
                print(repr(value))

    def _save_figures(self) -> None:
        """Figures the code drew with matplotlib (when the sandbox has it) become PNG files of the
        folder, as a notebook shows them; the server lists them as the call's images."""
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        try:
            for number in list(pyplot.get_fignums()):
                figure = pyplot.figure(number)
                figure.savefig(f"figure_{self.cells}_{number}.png")
                pyplot.close(figure)
        except Exception as exc:  # the code's own figure trouble: said in its output
            print(f"(the figures could not be saved: {type(exc).__name__}: {exc})", file=sys.stderr)

    def _stopped(self, budget: float) -> str:
        if self.stop_reason == "cpu":
            return "TimeoutError: the code used more CPU time than the sandbox allows and was stopped."
        return f"TimeoutError: the code ran longer than {budget:g} s and was stopped."

    def _traceback(self, exc: BaseException, filename: str) -> str:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != filename:
            tb = tb.tb_next
        shown = traceback.TracebackException(type(exc), exc, tb)
        for te in _chain(shown):  # the worker's own frames (the audit hook's) are noise to the reader
            te.stack = traceback.StackSummary.from_list([f for f in te.stack if f.filename != "<string>"])
        text = "".join(shown.format() if shown.stack else shown.format_exception_only()).rstrip()
        hint = self._hint(exc)
        return f"{text}\n{hint}" if hint else text

    def _hint(self, exc: BaseException) -> str:
        if isinstance(exc, MemoryError):
            return f"(the sandbox's memory limit is {self.cfg['memory_mb']} MB)"
        if isinstance(exc, OSError) and exc.errno == errno.EAGAIN and "fork" in "".join(
                traceback.format_tb(exc.__traceback__)).lower():
            return f"(the sandbox allows at most {self.cfg['processes']} processes)"
        if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
            return f"(the sandbox's file size limit is {self.cfg['file_size_mb']} MB)"
        return ""

    def _collect(self, capture: int, cap: int) -> tuple[str, bool]:
        for stream in (sys.stdout, sys.stderr, self.stdout, self.stderr):
            try:
                stream.flush()
            except Exception:  # the code closed or replaced it; the fd is read below anyway
                continue
        sys.stdout, sys.stderr = self.stdout, self.stderr
        os.dup2(self.null, 1)
        os.dup2(self.null, 2)
        size = os.fstat(capture).st_size
        os.lseek(capture, 0, os.SEEK_SET)
        data = os.read(capture, min(size, cap * 4 + 4))
        os.close(capture)
        text = data.decode("utf-8", "replace")
        return (text[:cap], True) if len(text) > cap or size > len(data) else (text, False)

    def _after_call(self) -> None:
        """No process outlives a call; the folder is the current one again."""
        self.guard.busy = True  # the worker's own reads of /proc
        try:
            self._kill_strays()
        finally:
            self.guard.busy = False
        os.fchdir(self.workdir)

    def _kill_strays(self) -> None:
        if os.getpid() == 1:  # pid 1 of our own pid namespace: -1 is every other process in it
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)
        else:  # our descendants (orphans come back to us: we are a subreaper) and our session
            session, parents = os.getsid(0), {}
            for name in os.listdir("/proc"):
                try:
                    with open(f"/proc/{name}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    parents[int(name)] = int(fields[1])
                except (OSError, ValueError, IndexError):
                    continue
            for pid in parents:
                ancestor, hops = parents.get(pid), 0
                while ancestor not in (None, 0, 1, self.pid) and hops < 64:
                    ancestor, hops = parents.get(ancestor), hops + 1
                with contextlib.suppress(OSError):
                    if pid != self.pid and (ancestor == self.pid or os.getsid(pid) == session):
                        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # reap them (a process that left for another parent is not ours)
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    time.sleep(0.01)
            except ChildProcessError:
                break

    # -- shell --
    def command(self, command: str, deadline: float, cap: int) -> dict[str, Any]:
        if deadline - time.monotonic() <= 0:
            return {"stdout": "", "stderr": "not run: the call's time budget was used up", "exit_code": None,
                    "timed_out": True}
        proc = subprocess.Popen([self.shell, "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        assert proc.stdout is not None and proc.stderr is not None
        kept = {proc.stdout: bytearray(), proc.stderr: bytearray()}
        timed_out = False
        with selectors.DefaultSelector() as sel:
            for stream in kept:
                os.set_blocking(stream.fileno(), False)
                sel.register(stream, selectors.EVENT_READ)
            while sel.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                exited = proc.poll() is not None
                for key, _ in sel.select(min(left, 0.05 if exited else 0.5)):
                    try:
                        chunk = os.read(key.fd, 65536)
                    except BlockingIOError:
                        continue
                    buf = kept[key.fileobj]  # type: ignore[index]
                    if not chunk:
                        sel.unregister(key.fileobj)
                    elif len(buf) < cap * 4:
                        buf.extend(chunk[: cap * 4 - len(buf)])
                if exited and not any(r for r, _ in sel.select(0)):
                    break  # the shell is gone; a background child may hold the pipes open
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self._after_call()
        out, err = (kept[s].decode("utf-8", "replace") for s in (proc.stdout, proc.stderr))
        proc.stdout.close()
        proc.stderr.close()
        return {"stdout": out[:cap], "stderr": err[:cap], "exit_code": None if timed_out else proc.returncode,
                "timed_out": timed_out}


def _chain(te: traceback.TracebackException) -> list[traceback.TracebackException]:
    out, seen = [], set()
    stack: list[traceback.TracebackException | None] = [te]
    while stack:
        one = stack.pop()
        if one is None or id(one) in seen:
            continue
        seen.add(id(one))
        out.append(one)
        stack += [one.__cause__, one.__context__]
    return out


class Guard:
    """The audit hook: no sockets; files only inside the container (and the readable system folders)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.writable = tuple(os.path.realpath(p) for p in [*cfg["writable"], *DEVICES])
        self.readable = tuple(os.path.realpath(p) for p in cfg["readable"]) + self.writable
        self.busy = False

    def install(self) -> None:
        sys.addaudithook(self.hook)

    @staticmethod
    def _inside(path: str, roots: tuple[str, ...]) -> bool:
        return any(r == "/" or path == r or path.startswith(r + "/") for r in roots)

    @staticmethod
    def _resolve(path: Any, *, link: bool = False) -> str | None:
        if path is None or isinstance(path, int):
            return None
        name = os.path.abspath(os.fsdecode(path))
        if link:  # the entry itself (remove, rename, a new link): resolve its folder only
            return os.path.join(os.path.realpath(os.path.dirname(name)), os.path.basename(name))
        return os.path.realpath(name)

    def _check(self, path: Any, *, write: bool, link: bool = False) -> None:
        real = self._resolve(path, link=link)
        if real is None or self._inside(real, self.writable if write else self.readable):
            return
        what = "write" if write else "read"
        raise PermissionError(errno.EACCES, f"sandbox: cannot {what} {os.fsdecode(path)!r}: only the container "
                              f"folder is {'writable' if write else 'readable'}")

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self.busy:
            return
        if event in NETWORK:
            raise PermissionError(errno.EACCES, "sandbox: network access is disabled")
        self.busy = True
        try:
            if event == "open":
                flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
                mode = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
                write = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)) or any(
                    c in mode for c in "wax+")
                self._check(args[0], write=write)
            elif event in ("os.listdir", "os.scandir"):
                self._check(args[0] if args[0] else ".", write=False)
            elif event in ("os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate", "os.utime",
                           "os.chflags", "os.setxattr", "os.removexattr", "shutil.rmtree", "os.mkfifo", "os.mknod"):
                self._check(args[0], write=True, link=True)
            elif event in ("os.rename", "os.link"):
                self._check(args[0], write=True, link=True)
                self._check(args[1], write=True, link=True)
            elif event == "os.symlink":
                self._check(args[1], write=True, link=True)
        finally:
            self.busy = False


def main(argv: list[str]) -> None:
    stage, cfg = argv[1], json.loads(argv[2])
    if stage == "launch":
        launch(cfg)
    Worker(cfg).serve()


if __name__ == "__main__":
    main(sys.argv)
