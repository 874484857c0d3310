"""``midtier serve --web-corpus DIR`` points web_search at an offline corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from midtier.cli.main import build_parser
from midtier.cli.serve import with_web_corpus
from midtier.config import ConfigError
from midtier.tools import ToolsConfig


def test_the_flag_sets_the_corpus_and_keeps_other_settings(tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", "--web-corpus", str(tmp_path)])
    assert args.web_corpus == str(tmp_path)
    tools = with_web_corpus(None, args.web_corpus)
    assert tools.settings == {"web_search": {"provider": "corpus", "corpus": str(tmp_path.resolve())}}
    configured = ToolsConfig(enabled=frozenset({"web_search"}), max_turns=3, settings={
        "web_search": {"provider": "searxng", "url": "http://s", "browse": False}, "mcp": {"transport": "sse"}})
    tools = with_web_corpus(configured, str(tmp_path))
    assert tools.enabled == frozenset({"web_search"}) and tools.max_turns == 3
    assert tools.settings == {"web_search": {"provider": "corpus", "url": "http://s", "browse": False,
                                             "corpus": str(tmp_path.resolve())}, "mcp": {"transport": "sse"}}
    assert configured.settings["web_search"]["provider"] == "searxng"  # not changed in place


def test_a_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such folder"):
        with_web_corpus(None, str(tmp_path / "missing"))
