"""``midtier``: argument parsing and dispatch.

Every command's options are declared here, so ``--help`` works without importing anything
heavy; the command itself runs in its own module (``COMMANDS``), imported only when chosen.
``midtier models list`` therefore never loads llama.cpp or the server.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from collections.abc import Callable, Sequence
from importlib import metadata

from midtier.models.catalog import DEFAULT_MODEL

COMMANDS: dict[str, str] = {
    "serve": "midtier.cli.serve:run",
    "models": "midtier.cli.models:run",
    "formats": "midtier.cli.formats:run",
}

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _version() -> str:
    try:
        return metadata.version("midtier")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="midtier",
        description="OpenAI Chat Completions and Responses APIs over open models, with tool calling.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the OpenAI-compatible HTTP server")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default: %(default)s)")
    serve.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="a TOML file naming the models to serve and their engines (docs/config.md); "
             "instead of --model, --format, --n-ctx and --threads",
    )
    serve.add_argument(
        "--model",
        default=None,
        metavar="NAME_OR_PATH",
        help=f"a catalog key (see `midtier models list`) or a GGUF file (default: {DEFAULT_MODEL})",
    )
    serve.add_argument(
        "--format",
        default=None,
        metavar="KEY",
        help="the tool-call format to use instead of the catalog's or the detected one",
    )
    serve.add_argument(
        "--n-ctx",
        type=int,
        default=None,
        metavar="INT",
        help="context window in tokens (default: the catalog's suggestion)",
    )
    serve.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="INT",
        help="CPU threads for the engine (default: the engine's choice)",
    )
    serve.add_argument("--data-dir", default=None, metavar="DIR",
                       help="where stored responses and conversations are kept "
                            "(default: $MIDTIER_DATA or ~/.local/share/midtier)")
    serve.add_argument("--web-corpus", default=None, metavar="DIR",
                       help="a folder of HTML, Markdown and text pages that the web_search tool searches, "
                            "offline (the [tools] setting web_search.corpus)")
    serve.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="(default: %(default)s)")

    models = commands.add_parser("models", help="list and download models")
    actions = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    actions.add_parser("list", help="show the catalog and what is downloaded")
    pull = actions.add_parser("pull", help="download and verify a catalog model")
    pull.add_argument("name", metavar="NAME", help="a catalog key or display name")

    formats = commands.add_parser("formats", help="list the tool-call formats, or detect a chat template's")
    formats_actions = formats.add_subparsers(dest="formats_command", metavar="ACTION")  # no action: list
    formats_actions.add_parser("list", help="show each format with the template markers it is detected by")
    detect = formats_actions.add_parser("detect", help="print the format a chat template file is detected as")
    detect.add_argument("file", metavar="TEMPLATE_FILE", help="a .jinja file or a tokenizer_config.json")
    return parser


def _command(command: str) -> Callable[[argparse.Namespace], int]:
    module, _, func = COMMANDS[command].partition(":")
    run: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), func)
    return run


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = getattr(args, "log_level", None) or "warning"
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(_command(args.command)(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
