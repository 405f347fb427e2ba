"""The toy world's CLIP tokenizer, generated in code: byte-level BPE vocab.json + merges.txt like OpenAI CLIP's.

The base vocabulary is CLIP's: the 256 byte-level characters and their end-of-word (``</w>``) variants,
so any text tokenises. Merges then build every toy word (and a few common English words) into one
token, and the special tokens ``<|startoftext|>`` / ``<|endoftext|>`` come last, as in CLIP. Padding uses
``<|endoftext|>`` (SD 1.x convention) to ``model_max_length`` 77. The result is a stock
``transformers.CLIPTokenizer`` that round-trips through ``save_pretrained``/``from_pretrained`` and loads
in ``StableDiffusionPipeline.from_pretrained``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path

from transformers import CLIPTokenizer

from distill_diffusion.toy.world import VOCABULARY

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MODEL_MAX_LENGTH = 77
#: Words beyond the toy captions that get their own token (prompts people type at the toy model).
EXTRA_WORDS = ("an", "the", "of", "and", "with", "in", "photo", "picture", "shape", "small", "big", "large")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters (Radford et al., 2019)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _merge_once(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def build_vocab_and_merges(words: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """CLIP-style vocab (byte chars, ``</w>`` variants, merged tokens, specials) and ordered merges.

    Each word is run through BPE with the merges so far (lowest rank first, as the tokenizer will); when
    no merge applies a new one joins the first two symbols. New merges rank after all older ones, so
    earlier words still tokenise the same way and every listed word ends as a single token.
    """
    encoder = bytes_to_unicode()
    tokens = list(encoder.values()) + [c + "</w>" for c in encoder.values()]
    ranks: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(words):  # ordered, unique
        symbols = [encoder[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        while len(symbols) > 1:
            known = [(ranks[p], p) for p in zip(symbols, symbols[1:]) if p in ranks]
            pair = min(known)[1] if known else (symbols[0], symbols[1])
            if not known:
                ranks[pair] = len(ranks)
                tokens.append(pair[0] + pair[1])
            symbols = _merge_once(symbols, pair)
    tokens += [BOS, EOS]
    # dict.fromkeys: two merges may spell the same token; it keeps its first id.
    return {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}, [f"{a} {b}" for a, b in ranks]


def write_tokenizer_files(save_dir: str | Path, words: Iterable[str] | None = None) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` (the files OpenAI CLIP ships) into ``save_dir``."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges(words if words is not None else (*VOCABULARY, *EXTRA_WORDS))
    (save_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (save_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return save_dir


def build_tokenizer(save_dir: str | Path | None = None) -> CLIPTokenizer:
    """The toy ``CLIPTokenizer`` (pads with ``<|endoftext|>`` to 77 tokens).

    Built from the generated vocab.json/merges.txt through the ordinary ``from_pretrained`` path; with
    ``save_dir`` it is also saved there (see :func:`save_tokenizer`).
    """
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(tmp)
        tokenizer = CLIPTokenizer.from_pretrained(
            tmp, bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=EOS, model_max_length=MODEL_MAX_LENGTH
        )
    if save_dir is not None:
        save_tokenizer(tokenizer, save_dir)
    return tokenizer


def save_tokenizer(tokenizer: CLIPTokenizer, save_dir: str | Path) -> Path:
    """``save_pretrained`` plus vocab.json/merges.txt, which transformers 4.x's slow CLIPTokenizer needs."""
    tokenizer.save_pretrained(str(save_dir))
    return write_tokenizer_files(save_dir)
