"""Token counting with a real BPE tokenizer, offline.

tiktoken normally downloads its vocabularies on first use; nothing here may touch the network.
litellm (a dependency of the gateway) ships the `cl100k_base` and `o200k_base` vocabularies in its
package data, so we read the file from there without importing litellm itself (its import is slow).
`SIGROUTE_TIKTOKEN_FILE` points at another `.tiktoken` file in the cl100k_base format if wanted.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Iterable

# tiktoken caches vocabularies under the SHA-1 of their download address.
_CL100K_CACHE_NAME = "9b5ad71b2ce5302211f9c61530b329a4922fc6a4"
_CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"

# OpenAI's accounting of chat messages: a few tokens of framing per message and per reply.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3

_lock = threading.Lock()
_encoding = None


class TokenizerUnavailable(RuntimeError):
    pass


def _vocabulary_file() -> Path:
    override = os.environ.get("SIGROUTE_TIKTOKEN_FILE")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerUnavailable("litellm is not installed; it ships the tokenizer vocabulary sigroute uses")
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "litellm_core_utils" / "tokenizers" / _CL100K_CACHE_NAME
    if not path.exists():
        raise TokenizerUnavailable(
            f"cl100k_base vocabulary not found at {path}; set SIGROUTE_TIKTOKEN_FILE to a local copy"
        )
    return path


def encoding():
    """The shared cl100k_base encoding (loaded once, thread-safe)."""
    global _encoding
    if _encoding is None:
        with _lock:
            if _encoding is None:
                import tiktoken
                from tiktoken.load import load_tiktoken_bpe

                ranks = load_tiktoken_bpe(str(_vocabulary_file()), expected_hash=None)
                _encoding = tiktoken.Encoding(
                    name="cl100k_base",
                    pat_str=_CL100K_PATTERN,
                    mergeable_ranks=ranks,
                    special_tokens={"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
                                    "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276},
                )
    return _encoding


_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)


def count_tokens(text: str) -> int:
    if not text:
        return 0
    return len(encoding().encode_ordinary(text))


def count_message_tokens(messages: Iterable) -> int:
    """Prompt tokens of a chat request (objects with `.role` and `.text`)."""
    total = TOKENS_PER_REPLY
    enc = encoding()
    for m in messages:
        total += TOKENS_PER_MESSAGE + len(enc.encode_ordinary(m.role))
        if m.text:
            total += len(enc.encode_ordinary(m.text))
    return total
