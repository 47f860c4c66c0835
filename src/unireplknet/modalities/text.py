"""Text encoders for text-conditioned tasks (a sentence -> token features ``(B, L, D)`` and a validity mask).

* :class:`WordTokenizer` + :class:`TextTransformer`: a word vocabulary and a small transformer trained from
  scratch (the built-in data's few dozen words need no pretrained language model).
* :class:`HFTextEncoder` + :func:`hf_tokenizer`: any Hugging Face text model by name or local folder, through
  ``transformers`` (an extra: ``pip install unireplknet[text]``), its last hidden states projected to ``D``.

Token ids are padded to a fixed length ``max_len`` so clips and sentences batch together.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from unireplknet.errors import UserError

__all__ = ["HFTextEncoder", "TextTransformer", "WordTokenizer", "build_text_encoder", "hf_tokenizer", "tokenizer_for"]


class WordTokenizer:
    """Lower-case word tokens -> ids ``(max_len,)`` int64: 0 pads, 1 is an unknown word, 2... the vocabulary."""

    PAD, UNK = 0, 1

    def __init__(self, vocab: Sequence[str], max_len: int = 16) -> None:
        self.vocab, self.max_len = list(vocab), max_len
        self.ids = {w: i + 2 for i, w in enumerate(self.vocab)}

    def __call__(self, text: str) -> torch.Tensor:
        ids = [self.ids.get(w, self.UNK) for w in re.findall(r"[a-z0-9]+", text.lower())][: self.max_len]
        return torch.tensor(ids + [self.PAD] * (self.max_len - len(ids)), dtype=torch.long)


class TextTransformer(nn.Module):
    """A small pre-norm transformer encoder from scratch: tokens (B, L) int64 -> features (B, L, dim) and the
    mask of real tokens (B, L) bool. Padding is masked out of attention; the padded positions still get features
    (they attend to the words), so every position carries the sentence."""

    def __init__(self, vocab_size: int, dim: int = 64, depth: int = 2, heads: int = 4, max_len: int = 16,
                 pad_id: int = WordTokenizer.PAD) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(1, max_len, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        valid = tokens != self.pad_id
        x = self.embed(tokens) + self.pos[:, : tokens.shape[1]]
        pad = ~valid
        pad[:, 0] = False  # an empty sentence still attends somewhere
        return self.norm(self.encoder(x, src_key_padding_mask=pad)), valid


class HFTextEncoder(nn.Module):
    """A Hugging Face text model (``transformers.AutoModel``) whose last hidden states are projected to ``dim``.

    ``pretrained``: load ``name`` with its weights (training); otherwise build the architecture from ``config`` (a
    ``PretrainedConfig.to_dict()``) without a download, the weights then coming from a checkpoint."""

    def __init__(self, name: str, dim: int, config: Mapping[str, Any] | None = None, pretrained: bool = False) -> None:
        super().__init__()
        transformers = _transformers()
        if pretrained or config is None:
            try:
                self.model = transformers.AutoModel.from_pretrained(name)
            except OSError as err:
                raise UserError(f"cannot load the Hugging Face text model '{name}' ({str(err).splitlines()[0]}); "
                                "check the name or the local folder, and the network or HF_HUB_OFFLINE") from None
        else:
            cfg = dict(config)
            self.model = transformers.AutoModel.from_config(transformers.AutoConfig.for_model(cfg.pop("model_type"),
                                                                                              **cfg))
        self.name = name
        self.pad_id = int(self.model.config.pad_token_id or 0)
        self.proj = nn.Linear(self.model.config.hidden_size, dim)

    def config_dict(self) -> dict[str, Any]:
        """The architecture (JSON-able) for the checkpoint meta."""
        return self.model.config.to_dict()

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        valid = tokens != self.pad_id
        hidden = self.model(input_ids=tokens, attention_mask=valid.long()).last_hidden_state
        return self.proj(hidden), valid


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise UserError("a Hugging Face text encoder needs transformers: pip install 'unireplknet[text]'") from None
    return transformers


def hf_tokenizer(name: str, max_len: int) -> Callable[[str], torch.Tensor]:
    """The tokenizer of the Hugging Face model ``name``: text -> ids ``(max_len,)`` int64, padded and truncated."""
    transformers = _transformers()
    try:
        tok = transformers.AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the tokenizer of '{name}' ({str(err).splitlines()[0]}); check the name or "
                        "the local folder") from None

    def encode(text: str) -> torch.Tensor:
        ids = tok(text, padding="max_length", truncation=True, max_length=max_len)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)

    return encode


def build_text_encoder(spec: Mapping[str, Any], pretrained: bool = False) -> nn.Module:
    """The encoder ``spec`` describes: ``{"name": "words", "vocab": [...], "dim", "depth", "heads", "max_len"}`` or
    ``{"name": <Hugging Face model>, "dim", "max_len", "config": {...}}`` (``pretrained``: with the hub's weights)."""
    if spec["name"] == "words":
        return TextTransformer(len(spec["vocab"]) + 2, spec["dim"], spec["depth"], spec["heads"], spec["max_len"])
    return HFTextEncoder(spec["name"], spec["dim"], spec.get("config"), pretrained)


def tokenizer_for(spec: Mapping[str, Any]) -> Callable[[str], torch.Tensor]:
    """The tokenizer that goes with :func:`build_text_encoder` (``spec`` = ``meta['text']``)."""
    if spec["name"] == "words":
        return WordTokenizer(spec["vocab"], spec["max_len"])
    return hf_tokenizer(spec["name"], spec["max_len"])
