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


class TokenSettings(BaseModel):
    """A ``[models.NAME]`` table with ``engine = "token"``: a vLLM, SGLang or midtier server driven
    through ``/v1/completions`` with token ids; midtier renders, constrains and parses with the
    vocabulary and chat template of ``tokenizer`` (see docs/config.md)."""

    model_config = ConfigDict(extra="forbid")

    engine: Literal["token"] = "token"
    base_url: str = Field(description="the upstream's OpenAI base URL, e.g. http://127.0.0.1:8000/v1")
    tokenizer: str = Field(description="a catalog key or a GGUF file of the upstream's model: its vocabulary "
                                       "and chat template (the weights are not loaded)")
    upstream_model: str | None = Field(None, description="the model name the upstream knows (default: NAME)")
    dialect: Literal["vllm", "sglang", "midtier"] = "vllm"
    format: str | None = Field(None, description="the tool-call format instead of the catalog's or detected one")
    context_length: int | None = Field(None, gt=0, description="default: the GGUF's trained context")
    api_key: str | None = None
    api_key_env: str | None = Field(None, description="the environment variable holding the API key")
    headers: dict[str, str] = Field(default_factory=dict)
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(600.0, gt=0, description="longest silence between two bytes of a response")
    max_retries: int = Field(2, ge=0, description="retries of failures that generated nothing")
    retry_backoff: float = Field(0.5, ge=0, description="seconds before the first retry; doubles each time")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="merged into every request body")

    def build(self, name: str) -> ServedModel:
        import os

        from midtier.engines.llama_cpp import LlamaCppEngine
        from midtier.engines.openai_chat import Timeouts
        from midtier.engines.token import TokenEngine

        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("set api_key or api_key_env, not both")
        api_key = self.api_key
        if self.api_key_env is not None:
            api_key = os.environ.get(self.api_key_env)
            if not api_key:
                raise ValueError(f"api_key_env: the environment variable {self.api_key_env} is not set")
        path, _, _, catalog_format = resolve_model(self.tokenizer)
        vocab = LlamaCppEngine(path, name=name, n_ctx=self.context_length, vocab_only=True)
        engine = TokenEngine(self.base_url, vocab, name=name, upstream_model=self.upstream_model,
                             dialect=self.dialect, api_key=api_key, headers=self.headers,
                             timeouts=Timeouts(connect=self.connect_timeout, read=self.read_timeout),
                             max_retries=self.max_retries, retry_backoff=self.retry_backoff,
                             context_length=self.context_length, extra_body=self.extra_body)
        return serve_engine(name, engine, self.format, catalog_format)
