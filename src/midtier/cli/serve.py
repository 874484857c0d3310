"""``midtier serve``: load a model and serve the OpenAI-compatible API."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("midtier.serve")


def served_name(model: str) -> tuple[Path, str, int | None, str | None]:
    """(GGUF path, the name clients use, suggested n_ctx, catalog format) for a key or a path."""
    from midtier.models import catalog, resolve

    path = resolve(model)
    try:
        spec = catalog.get(model)
    except catalog.UnknownModel:
        return path, path.stem, None, None
    return path, spec.key, spec.n_ctx, spec.format


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from midtier.core.errors import MidtierError
    from midtier.loop.load import NoFormat, load_model
    from midtier.server import create_app

    try:
        path, name, n_ctx, catalog_format = served_name(args.model)
        served = load_model(path, name, format_key=args.format, fallback_format=catalog_format,
                            n_ctx=args.n_ctx or n_ctx, n_threads=args.threads)
    except (MidtierError, NoFormat, KeyError, FileNotFoundError) as exc:
        message = exc.message if isinstance(exc, MidtierError) else str(exc)
        log.error("%s", message)
        return 1
    log.info("serving %s (%s, format %s: %s, context %d tokens) on http://%s:%d/v1", name, path,
             served.format.key, served.format_reason, served.engine.context_length, args.host, args.port)
    from midtier.store import DB_NAME, open_store

    store = open_store(path=Path(args.data_dir) / DB_NAME) if args.data_dir else open_store()
    app = create_app([served], store=store, data_dir=Path(args.data_dir) if args.data_dir else None)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0
