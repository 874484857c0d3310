"""Putting a served model together: engine, chat template, format and constraint compiler."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from midtier.engines import engine_class
from midtier.engines.base import Engine
from midtier.formats import detect, get_format
from midtier.loop.turn import ServedModel
from midtier.models.catalog import DEFAULT_MODEL
from midtier.templates import ChatTemplate

log = logging.getLogger(__name__)


class NoFormat(ValueError):
    pass


def choose_format(template: str, override: str | None = None, fallback_key: str | None = None) -> tuple[str, str]:
    """(format key, how it was chosen): ``override``, else detection, else ``fallback_key``."""
    if override:
        get_format(override)  # raises KeyError for an unknown key
        return override, "set by --format"
    key = detect(template)
    if key is not None:
        return key, "detected from the chat template"
    if fallback_key:
        return fallback_key, "from the model catalog"
    fallback = "generic"
    from midtier.formats import REGISTRY
    if fallback in REGISTRY:
        return fallback, "the template has no tool-call syntax midtier knows: midtier injects its own"
    raise NoFormat("no registered format matches this model's chat template; pass --format KEY")


def serve_engine(name: str, engine: Engine, format_key: str | None = None,
                 fallback_format: str | None = None) -> ServedModel:
    if not engine.chat_template:
        raise NoFormat(f"model {name} has no chat template")
    key, how = choose_format(engine.chat_template, format_key, fallback_format)
    log.info("model %s: format %r (%s)", name, key, how)
    fmt = get_format(key)
    source = fmt.patch_template(engine.chat_template)
    if source != engine.chat_template:
        log.info("model %s: mended a known bug in its chat template (format %r)", name, key)
    template = ChatTemplate(source, bos_token=engine.bos_token, eos_token=engine.eos_token)
    served = ServedModel(name, engine, fmt.for_template(template), template)
    served.format_reason = how
    return served


def load_model(path: str | Path, name: str, *, engine: str = "llama_cpp", format_key: str | None = None,
               fallback_format: str | None = None, **engine_options: Any) -> ServedModel:
    eng = engine_class(engine)(path, name=name, **{k: v for k, v in engine_options.items() if v is not None})
    return serve_engine(name, eng, format_key, fallback_format)


def resolve_model(model: str) -> tuple[Path, str, int | None, str | None]:
    """(GGUF path, the name clients use, suggested n_ctx, catalog format) for a catalog key or a path."""
    from midtier.models import catalog, resolve

    path = resolve(model)
    try:
        spec = catalog.get(model)
    except catalog.UnknownModel:
        return path, path.stem, None, None
    return path, spec.key, spec.n_ctx, spec.format


class LlamaCppSettings(BaseModel):
    """A ``[models.NAME]`` table with ``engine = "llama_cpp"``: the embedded engine (see docs/config.md)."""

    model_config = ConfigDict(extra="forbid")

    engine: Literal["llama_cpp"] = "llama_cpp"
    model: str = Field(DEFAULT_MODEL, description="a catalog key (`midtier models list`) or a GGUF file")
    format: str | None = Field(None, description="the tool-call format instead of the catalog's or detected one")
    n_ctx: int | None = Field(None, gt=0, description="context window (default: the catalog's suggestion)")
    threads: int | None = Field(None, gt=0)

    def build(self, name: str) -> ServedModel:
        path, _, n_ctx, catalog_format = resolve_model(self.model)
        return load_model(path, name, format_key=self.format, fallback_format=catalog_format,
                          n_ctx=self.n_ctx or n_ctx, n_threads=self.threads)

