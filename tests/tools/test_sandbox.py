"""The sandbox (``SubprocessSandbox``): state between calls, output, and every limit: a fork bomb,
a memory bomb, an endless loop, code that ignores the alarm, writing and reading outside the
folder, the network, file size, cancellation. Each is stopped with a clear error and the next
call works. Both isolation modes run: ``auto`` (namespaces where the kernel allows them) and
``rlimits`` (the degraded mode: rlimits and the audit hook)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from midtier.tools.sandbox import STATE_LOST, Limits, SandboxError, SubprocessSandbox, open_sandbox

LIMITS = Limits(memory_mb=512, processes=32, file_size_mb=4, output_chars=2000)


def sandbox_python() -> str:
    """An interpreter the sandbox's user can run: this one, or (for a root server, which runs code
    as nobody) a system one when this one sits in a folder only root may enter."""
    if os.geteuid() != 0:
        return sys.executable
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        path = Path(os.path.realpath(candidate))
        if path.exists() and all(p.stat().st_mode & stat.S_IXOTH for p in path.parents):
            return str(path)
    pytest.skip("no interpreter that uid 65534 may run (rlimits mode on a root server needs one)")


@pytest.fixture(params=["auto", "rlimits"])
def isolation(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "containers" / "cntr_test"


@pytest.fixture
def sandbox(isolation: str, folder: Path) -> Iterator[SubprocessSandbox]:
    options = {"isolation": isolation} if isolation == "auto" else {"isolation": isolation, "python": sandbox_python()}
    box = SubprocessSandbox(folder, LIMITS, options)
    yield box
    asyncio.run(box.close())


def run(box: SubprocessSandbox, code: str, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    return asyncio.run(box.run_python(code, timeout))


def alive(box: SubprocessSandbox) -> None:
    """The sandbox answers again (after whatever the test did to it)."""
    result = run(box, "print('alive', 6 * 7)")
    assert result.outcome == "ok" and result.output == "alive 42\n"


def session_pids(box: SubprocessSandbox) -> list[int]:
    """Processes of the sandbox's session (the launcher's), as the host sees them."""
    assert box._worker is not None
    sid, pids = box._worker.proc.pid, []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and os.getsid(int(name)) == sid:
                pids.append(int(name))
        except OSError:
            continue
    return pids


def test_state_persists_and_the_last_expression_shows(sandbox: SubprocessSandbox) -> None:
    first = run(sandbox, "x = 41\nimport math")
    assert first.outcome == "ok" and first.output == "" and first.error is None and not first.restarted
    second = run(sandbox, "print('x is', x)\nmath.sqrt(x + 8)")
    assert second.output == "x is 41\n7.0\n"
    assert run(sandbox, "_ + 1").output == "8.0\n"  # the last value is `_`, as in a notebook
    assert run(sandbox, "y = None\ny").output == ""
    assert sandbox.isolation in (("rlimits",) if sandbox.mode == "rlimits" else ("namespaces", "rlimits"))


def test_stdout_stderr_and_child_processes_are_captured_and_capped(sandbox: SubprocessSandbox) -> None:
    result = run(sandbox, "import sys, subprocess\nprint('out')\nprint('err', file=sys.stderr)\n"
                          "subprocess.run(['echo', 'child'])\nprint('y' * 5000)")
    assert result.output.startswith("out\nerr\nchild\nyyy")
    assert result.truncated and len(result.output) == LIMITS.output_chars


def test_an_exception_is_a_traceback_of_the_code_only(sandbox: SubprocessSandbox) -> None:
    result = run(sandbox, "def f():\n    return undefined_name\nprint('before')\nf()")
    assert result.outcome == "error" and result.output == "before\n"
    assert result.error is not None and result.error.startswith("Traceback (most recent call last):")
    assert 'File "<cell 1>", line 4' in result.error and "return undefined_name" in result.error
    assert result.error.endswith("NameError: name 'undefined_name' is not defined")
    assert "<string>" not in result.error  # no frame of the worker itself
    syntax = run(sandbox, "print(")
    assert syntax.outcome == "error" and syntax.error is not None and "SyntaxError" in syntax.error
    exiting = run(sandbox, "raise SystemExit(3)")
    assert exiting.outcome == "error" and exiting.error is not None and "SystemExit: 3" in exiting.error
    alive(sandbox)


def test_a_fork_bomb_hits_the_process_limit(sandbox: SubprocessSandbox) -> None:
    result = run(sandbox, "import os\nwhile True:\n    os.fork()")
    assert result.outcome == "error" and result.error is not None
    assert "BlockingIOError" in result.error and "at most 32 processes" in result.error
    assert len(session_pids(sandbox)) <= 2  # nothing it forked is left (the launcher and pid 1 at most)
    alive(sandbox)


def test_a_fork_bomb_that_swallows_errors_is_stopped_at_its_budget(sandbox: SubprocessSandbox) -> None:
    result = run(sandbox, "import os\nwhile True:\n    try:\n        os.fork()\n    except BaseException:\n"
                          "        pass", timeout=2)
    assert result.outcome in ("timeout", "killed"), result
    assert result.error is not None and ("ran longer than 2 s" in result.error or STATE_LOST in result.error)
    alive(sandbox)
    assert len(session_pids(sandbox)) <= 2


def test_a_memory_bomb_raises_memory_error(sandbox: SubprocessSandbox) -> None:
    run(sandbox, "kept = 'still here'")
    at_once = run(sandbox, "block = bytearray(4 * 1024 ** 3)")
    assert at_once.outcome == "error" and at_once.error is not None and "MemoryError" in at_once.error
    growing = run(sandbox, "hog = []\nwhile True:\n    hog.append(bytearray(32 * 1024 * 1024))")
    assert growing.outcome == "error" and growing.error is not None
    assert "MemoryError" in growing.error and "memory limit is 512 MB" in growing.error
    assert run(sandbox, "del hog\nkept").output == "'still here'\n"  # the state survived


def test_an_endless_loop_stops_at_its_budget_and_keeps_the_state(sandbox: SubprocessSandbox) -> None:
    run(sandbox, "kept = 1")
    started = time.monotonic()
    result = run(sandbox, "while True:\n    pass", timeout=1)
    assert time.monotonic() - started < 3
    assert result.outcome == "timeout"
    assert result.error == "TimeoutError: the code ran longer than 1 s and was stopped."
    assert run(sandbox, "kept").output == "1\n"


def test_code_that_ignores_the_alarm_is_killed_and_the_next_call_starts_fresh(sandbox: SubprocessSandbox) -> None:
    run(sandbox, "kept = 1")
    started = time.monotonic()
    ignore = "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
    result = run(sandbox, ignore + "while True:\n    pass", timeout=1)
    assert time.monotonic() - started < 8
    assert result.outcome == "killed" and result.error is not None and STATE_LOST in result.error
    after = run(sandbox, "print('fresh')\nkept")
    assert after.restarted and after.output == "fresh\n" and after.error is not None and "NameError" in after.error
    assert not run(sandbox, "1").restarted  # said once


def test_writing_outside_the_folder_is_refused(sandbox: SubprocessSandbox, folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    for code in (f"open({str(outside)!r}, 'w').write('x')", "open('../escape.txt', 'w').write('x')",
                 "import os\nos.mkdir('/opt/evil')", f"import os\nos.remove({str(tmp_path / 'nothing')!r})"):
        result = run(sandbox, code)
        assert result.outcome == "error" and result.error is not None, code
        assert any(e in result.error for e in ("PermissionError", "FileNotFoundError", "OSError")), result.error
    assert not outside.exists() and not (folder.parent / "escape.txt").exists()
    assert run(sandbox, "open('inside.txt', 'w').write('ok')").outcome == "ok"
    assert (folder / "inside.txt").read_text() == "ok"


def test_reading_outside_the_folder_is_refused(sandbox: SubprocessSandbox, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the server's secret")
    result = run(sandbox, f"print(open({str(secret)!r}).read())")
    assert result.outcome == "error" and "the server's secret" not in result.output


def test_shell_commands_cannot_escape_under_namespaces(sandbox: SubprocessSandbox, tmp_path: Path) -> None:
    outside = tmp_path / "from_shell.txt"
    results = asyncio.run(sandbox.run_shell([f"echo x > {outside}", "echo y > /usr/evil", "cat /etc/shadow",
                                             "pwd", "id -u"], 10, 1000))
    assert results[4].stdout.strip() != "0"  # never root
    if sandbox.isolation != "namespaces":  # rlimits alone do not confine a child process (documented)
        assert sandbox.mode == "rlimits"
        return
    assert [r.exit_code != 0 for r in results[:3]] == [True, True, True]
    assert not outside.exists() and not Path("/usr/evil").exists()
    assert results[3].stdout == "/mnt/data\n"


def test_the_network_is_unreachable(sandbox: SubprocessSandbox) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        port = server.getsockname()[1]
        result = run(sandbox, f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
        assert result.outcome == "error" and result.error is not None
        assert result.error.endswith("PermissionError: [Errno 13] sandbox: network access is disabled")
        dns = run(sandbox, "import socket\nsocket.getaddrinfo('example.com', 80)")
        assert dns.error is not None and "network access is disabled" in dns.error
        if sandbox.isolation == "namespaces":  # a child process has no audit hook: the namespace stops it
            child = asyncio.run(sandbox.run_shell(
                [f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)\""],
                10, 2000))[0]
            assert child.exit_code != 0 and "unreachable" in child.stderr.lower()
        with pytest.raises(TimeoutError):
            server.accept()  # nothing ever connected


def test_the_file_size_limit(sandbox: SubprocessSandbox, folder: Path) -> None:
    result = run(sandbox, "with open('big.bin', 'wb') as f:\n    f.write(b'x' * (8 * 1024 * 1024))")
    assert result.outcome == "error" and result.error is not None
    assert "File too large" in result.error and "file size limit is 4 MB" in result.error
    assert (folder / "big.bin").stat().st_size <= 4 * 1024 * 1024
    alive(sandbox)


def test_cancelling_a_call_kills_it_at_once(sandbox: SubprocessSandbox) -> None:
    run(sandbox, "kept = 1")

    async def cancel() -> float:
        task = asyncio.ensure_future(sandbox.run_python("import time\ntime.sleep(60)", 60))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started

    assert asyncio.run(cancel()) < 1
    after = run(sandbox, "kept")
    assert after.restarted and after.error is not None and "NameError" in after.error


def test_shell_commands_exit_codes_timeouts_and_caps(sandbox: SubprocessSandbox) -> None:
    results = asyncio.run(sandbox.run_shell(["echo out; echo err >&2; exit 3", "yes | head -c 5000", "sleep 30",
                                             "echo never"], 2, 100))
    assert (results[0].stdout, results[0].stderr, results[0].exit_code) == ("out\n", "err\n", 3)
    assert results[1].exit_code == 0 and results[1].stdout == "y\n" * 50
    assert results[2].timed_out and results[2].exit_code is None
    assert results[3].timed_out and "not run" in results[3].stderr
    alive(sandbox)


def test_close_stops_every_process(sandbox: SubprocessSandbox) -> None:
    asyncio.run(sandbox.run_shell(["sleep 30 &"], 5, 100))
    assert sandbox._worker is not None
    pid = sandbox._worker.proc.pid
    asyncio.run(sandbox.close())
    assert not session_pids_of(pid)


def session_pids_of(sid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and os.getsid(int(name)) == sid:
                found.append(int(name))
        except OSError:
            continue
    return found


def test_a_backend_is_chosen_by_key(tmp_path: Path) -> None:
    assert isinstance(open_sandbox("subprocess", tmp_path / "c", Limits(), {}), SubprocessSandbox)
    with pytest.raises(SandboxError, match="unknown sandbox backend 'gvisor'"):
        open_sandbox("gvisor", tmp_path / "c", Limits(), {})
    with pytest.raises(SandboxError, match="unknown isolation"):
        SubprocessSandbox(tmp_path / "c", Limits(), {"isolation": "docker"})


def test_a_sandbox_that_cannot_start_says_why(tmp_path: Path) -> None:
    box = SubprocessSandbox(tmp_path / "c", Limits(), {"isolation": "rlimits", "python": "/nonexistent/python"})
    with pytest.raises(SandboxError, match="did not start: /nonexistent/python"):
        asyncio.run(box.run_python("1", 5))


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder outside pytest's private tmp (for a test that needs a path the sandbox user can walk)."""
    top = Path(tempfile.mkdtemp(prefix="midtier-sandbox-"))
    top.chmod(0o755)
    yield top
    shutil.rmtree(top, ignore_errors=True)


def test_sandboxes_are_separate(shared_folder: Path) -> None:
    a = SubprocessSandbox(shared_folder / "a", LIMITS, {})
    b = SubprocessSandbox(shared_folder / "b", LIMITS, {})
    try:
        run(a, "secret = 'a'\nopen('a.txt', 'w').write('a')")
        assert "NameError" in (run(b, "secret").error or "")
        seen = run(b, "import os\nprint(sorted(os.listdir('.')))")
        assert seen.output == "[]\n"
    finally:
        asyncio.run(a.close())
        asyncio.run(b.close())


def test_an_interpreter_living_under_tmp_runs(tmp_path: Path) -> None:
    """A checkout under /tmp (a CI clone there) puts the interpreter's venv where the sandbox mounts
    its own /tmp: the venv is bound inside that /tmp, not hidden by it or in its way."""
    venv = tempfile.mkdtemp(prefix="midtier-venv-", dir="/tmp")
    os.chmod(venv, 0o755)  # as a clone is: the code runs as a user of its own
    try:
        import venv as venv_module
        venv_module.EnvBuilder(with_pip=False, symlinks=True).create(venv)
        box = SubprocessSandbox(tmp_path / "c", LIMITS, {"isolation": "auto", "python": f"{venv}/bin/python"})
        try:
            result = run(box, f"import sys, os\nprint(sys.prefix == {venv!r}, os.path.isdir('/tmp'))")
            assert result.error is None and result.output == "True True\n", result
            assert "scratch" in run(box, "open('/tmp/x', 'w').write('scratch')\nopen('/tmp/x').read()").output
        finally:
            asyncio.run(box.close())
    finally:
        shutil.rmtree(venv, ignore_errors=True)
