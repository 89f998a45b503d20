"""A word-level vocabulary for free-text reports, fitted on the train split.

Why our own: a report tower trained from scratch on one site's reports
needs no pretrained tokenizer (and ssl_jax takes no tokenizer dependency);
a word vocabulary fitted on the *training* reports only keeps validation
and test text out of the model, as ConVIRT (Zhang et al. 2022) and the CLIP
recipes do with their own fixed vocabularies.

A vocabulary is a JSON-able dict (written to the pretraining workdir's
vocab.json, so stage 2 tokenises class prompts exactly as pretraining did):
  {"column": "report", "tokens": ["<pad>", "<unk>", "<cls>", "mass", ...],
   "max_length": 64}
Words: lower-cased runs of letters/digits, each punctuation mark its own
word (`words`). Ids: 0 <pad>, 1 <unk> (a word not in the vocabulary),
2 <cls>, then the kept words by falling count, ties alphabetical, so the
same reports always give the same vocabulary. A sequence is <cls> then the
first max_length - 1 words' ids, padded with 0.
"""
from __future__ import annotations

import collections
import re
from typing import Any, Iterable, Mapping

import numpy as np

PAD, UNK, CLS = 0, 1, 2
SPECIALS = ("<pad>", "<unk>", "<cls>")
_WORD = re.compile(r"[^\W_]+|[^\w\s]|_")


def words(text: str) -> list[str]:
  """'Mass, 12 mm.' -> ['mass', ',', '12', 'mm', '.']."""
  return _WORD.findall(str(text).lower())


def fit(texts: Iterable[str], *, column: str, size: int, max_length: int,
        min_count: int = 1) -> dict[str, Any]:
  """The vocabulary of `texts` (the train split's reports): the specials and
  at most `size - 3` words seen at least `min_count` times."""
  if size <= len(SPECIALS):
    raise ValueError(f"text vocabulary size={size}; expected > "
                     f"{len(SPECIALS)} (the specials {SPECIALS} and words)")
  if max_length < 2:
    raise ValueError(f"text max_length={max_length}; expected >= 2 "
                     "(<cls> and at least one word)")
  if min_count < 1:
    raise ValueError(f"text min_count={min_count}; expected >= 1")
  counts = collections.Counter(w for t in texts for w in words(t))
  kept = sorted((w for w, n in counts.items() if n >= min_count),
                key=lambda w: (-counts[w], w))[:size - len(SPECIALS)]
  return {"column": column, "tokens": list(SPECIALS) + kept,
          "max_length": int(max_length)}


def encode(vocab: Mapping[str, Any], texts: Iterable[str]) -> np.ndarray:
  """int32 [N, max_length]: <cls>, the words' ids (<unk> if unknown),
  truncated and 0-padded."""
  index = {t: i for i, t in enumerate(vocab["tokens"])}
  length = int(vocab["max_length"])
  texts = list(texts)
  out = np.full((len(texts), length), PAD, np.int32)
  for row, text in enumerate(texts):
    ids = [CLS] + [index.get(w, UNK) for w in words(text)][:length - 1]
    out[row, :len(ids)] = ids
  return out


def decode(vocab: Mapping[str, Any], ids: Iterable[int]) -> list[str]:
  """The tokens of one sequence, padding dropped (for reading, tests)."""
  tokens = vocab["tokens"]
  return [tokens[i] for i in ids if i != PAD]
