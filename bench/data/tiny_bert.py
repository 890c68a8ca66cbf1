"""A tiny BERT-like text model directory, built offline: a stand-in for bert-base-uncased.

The paper grids read their text tower from a local Hugging Face directory
(``text_encoder.path: models/bert-base-uncased``, ``pooling: cls``). A smoke run of that path
needs a directory of the same kind, without a download: :func:`save_tiny_bert` writes one
with the files bert-base-uncased has (``config.json``, ``model.safetensors``,
``tokenizer.json``, ``tokenizer_config.json``, ``vocab.txt``), loaded by ``AutoTokenizer`` /
``AutoModel`` exactly as the real model is.

The weights are random, drawn from ``torch.manual_seed(seed)``: the vectors are stable
functions of the caption (the same directory for the same arguments), not meaningful ones.
The WordPiece vocabulary is the special tokens, the given words, and every lower-case letter,
digit and ASCII punctuation mark alone and as a ``##`` continuation, so any ASCII caption
tokenises without ``[UNK]``. The tokenizer is built with the ``tokenizers`` library (the
``BertTokenizer`` constructor changed between transformers 4 and 5; a ``tokenizer.json`` is read
by both).
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: Layer sizes of the tiny model (the tests' tiny BERT since it existed).
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def caption_words(captions: Iterable[str]) -> list[str]:
    """The lower-case words of ``captions`` in order of first appearance, split the way BERT's
    pre-tokenizer splits (on whitespace and around punctuation)."""
    words = (w for text in captions for w in re.findall(r"\w+|[^\w\s]", text.lower()))
    return list(dict.fromkeys(words))


def wordpiece_vocab(words: Iterable[str]) -> dict[str, int]:
    """Token -> id: special tokens first ([PAD] = 0, as BERT's), then the single characters
    and their ``##`` continuations, then ``words``; each token once."""
    chars = string.ascii_lowercase + string.digits + string.punctuation
    tokens = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars), *words]
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}


def save_tiny_bert(directory: str | Path, words: Iterable[str] = (), seed: int = 0, max_length: int = 128) -> Path:
    """Write a random-weight BERT (sizes :data:`TINY_BERT`, weights from ``seed``) with a
    WordPiece tokenizer over ``words`` (:func:`wordpiece_vocab`) to ``directory``; returns it.

    ``max_length`` is the model's number of positions and the tokenizer's
    ``model_max_length`` (the grid's ``text_encoder.max_length`` must not exceed it)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = wordpiece_vocab(words)

    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=None)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": max_length,
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
        "mask_token": "[MASK]"}, indent=2), encoding="utf-8")

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), max_position_embeddings=max_length, **TINY_BERT)
    BertModel(config).save_pretrained(directory)
    umask = os.umask(0)
    os.umask(umask)
    for path in directory.iterdir():  # safetensors writes its file with mode 0600
        path.chmod(0o666 & ~umask)
    return directory
