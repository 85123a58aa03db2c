"""Sparse (lexical) vectors for hybrid search: BM25 term weights that Qdrant scores with its IDF modifier.

A chunk's terms are its identifiers and words, lower-cased, each also split at snake_case and camelCase
boundaries (`read_config` → read_config, read, config). A term's index is its CRC-32; its value is BM25's
saturated term frequency (k1 1.2, b 0.75) against a fixed average chunk length, so a chunk's vector
never depends on the rest of the collection; Qdrant multiplies in the IDF at query time
(`Modifier.IDF`, also in the embedded Qdrant). A query's terms weigh 1 each.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter

from qdrant_client import models

SPARSE_NAME = "text"  # the named sparse vector beside Roo Code's unnamed dense one
K1, B, AVERAGE_TERMS = 1.2, 0.75, 120.0

_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "have",
        "if",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "were",
        "will",
        "with",
        "self",
        "return",
        "def",
        "none",
        "true",
        "false",
        "not",
    ]
)


def terms(text: str) -> list[str]:
    out = []
    for tok in _TOKEN.findall(text):
        parts = [p for piece in tok.split("_") for p in _CAMEL.findall(piece)]
        words = {tok.lower(), *(p.lower() for p in parts)}
        out.extend(w for w in words if len(w) > 1 and w not in STOPWORDS)
    return out


def _index(term: str) -> int:
    return zlib.crc32(term.encode())


def document_vector(text: str) -> models.SparseVector:
    counts = Counter(terms(text))
    length = sum(counts.values()) or 1
    norm = K1 * (1 - B + B * length / AVERAGE_TERMS)
    weights: dict[int, float] = {}
    for term, tf in counts.items():
        i = _index(term)
        weights[i] = weights.get(i, 0.0) + tf * (K1 + 1) / (tf + norm)
    return models.SparseVector(indices=list(weights), values=list(weights.values()))


def query_vector(text: str) -> models.SparseVector:
    indices = sorted({_index(t) for t in terms(text)})
    return models.SparseVector(indices=indices, values=[1.0] * len(indices))
