"""``midtier serve``: load the models and serve the OpenAI-compatible API.

The models come from ``--config FILE`` (docs/config.md), or without one from ``--model``,
``--format``, ``--n-ctx`` and ``--threads``: one embedded model.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("midtier.serve")

_MODEL_FLAGS = (("model", "--model"), ("format", "--format"), ("n_ctx", "--n-ctx"), ("threads", "--threads"))


def served_name(model: str) -> tuple[Path, str, int | None, str | None]:
    """(GGUF path, the name clients use, suggested n_ctx, catalog format) for a key or a path."""
    from midtier.loop.load import resolve_model

    return resolve_model(model)


def config_from_args(args: argparse.Namespace) -> Any:
    """The ``midtier.config.Config`` to serve: the file's, or one embedded model from the flags."""
    from midtier.config import ConfigError, load_config, parse_config
    from midtier.core.errors import MidtierError
    from midtier.models import DEFAULT_MODEL

    if args.config:
        given = [flag for attr, flag in _MODEL_FLAGS if getattr(args, attr, None) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)}: with --config, the models are set in the file")
        return load_config(args.config)
    model = args.model or DEFAULT_MODEL
    try:
        name = served_name(model)[1]
    except (MidtierError, FileNotFoundError) as exc:
        raise ConfigError(exc.message if isinstance(exc, MidtierError) else str(exc)) from None
    table = {"engine": "llama_cpp", "model": model, "format": args.format, "n_ctx": args.n_ctx,
             "threads": args.threads}
    return parse_config({"models": {name: {k: v for k, v in table.items() if v is not None}}}, "--model")


def describe(model: Any) -> str:
    from midtier.loop import ServedModel

    if isinstance(model, ServedModel):
        return (f"{model.name}: embedded, format {model.format.key} ({model.format_reason}), "
                f"context {model.engine.context_length} tokens")
    upstream = getattr(model, "upstream", None)
    where = getattr(upstream, "base_url", "?")
    return f"{model.name}: upstream {where} (model {getattr(model, 'upstream_model', model.name)})"


def with_web_corpus(tools: Any, folder: str) -> Any:
    """``tools`` (a ``ToolsConfig`` or None) with web_search searching ``folder`` (``--web-corpus``)."""
    import dataclasses

    from midtier.config import ConfigError
    from midtier.tools import ToolsConfig

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ConfigError(f"--web-corpus {folder}: no such folder")
    tools = tools if tools is not None else ToolsConfig()
    web = {**tools.settings.get("web_search", {}), "provider": "corpus", "corpus": str(path.resolve())}
    return dataclasses.replace(tools, settings={**tools.settings, "web_search": web})


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from midtier.config import ConfigError
    from midtier.server import create_app

    try:
        config = config_from_args(args)
        models = config.build_models()
        store = config.open_store()
        tools = config.tools_config()
        if getattr(args, "web_corpus", None):
            tools = with_web_corpus(tools, args.web_corpus)
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
    for model in models:
        log.info("serving %s", describe(model))
    if store is None:
        from midtier.store import DB_NAME, open_store

        store = open_store(path=Path(args.data_dir) / DB_NAME) if args.data_dir else open_store()
    app = create_app(models, store=store, tools=tools)
    loop, http = server_backends()
    log.info("listening on http://%s:%d/v1 (event loop %s, HTTP parser %s)", args.host, args.port, loop, http)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False, loop=loop, http=http)
    return 0


def server_backends() -> tuple[str, str]:
    """(uvicorn's event loop, its HTTP parser): uvloop and httptools where installed (they are
    dependencies; an odd platform may lack them), else asyncio's loop and h11."""
    import importlib.util

    loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    return loop, http
