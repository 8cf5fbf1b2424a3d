"""Routing from the backbone's token embeddings: what the semantic and learned routers read when
`router.features` is `embeddings` (and first, with `cascade`), and the learned router's linear head over them.

No adapter changes the token-embedding table, so these features are the same with any adapter on and
cost one table lookup per token instead of an encoder pass. They see which words an input uses, not
how it uses them: enough to tell tasks apart that differ in vocabulary (reviews, news, tickets,
questions), less so two tasks of the same style (two paraphrase corpora).

The head is a multinomial logistic regression (scikit-learn) over the mean-pooled, normalised token
embeddings of the tasks' training inputs, stored in `<registry>/.routers/embeddings/`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, PreTrainedTokenizerBase

from mtlora.backbone import (
    check_trained_on,
    fingerprint_backbone,
    load_pretrained,
    load_tokenizer,
    quiet_loading,
    resolve_backbone,
)
from mtlora.errors import CorruptAdapterError, DataError, RegistryError
from mtlora.registry import Registry
from mtlora.registry.store import sha256_file

ROUTING_MAX_TOKENS = 128
# Inverse regularisation strength of the head. On the six GLUE tasks' dev mix (bench/quality.py) C from 1 to
# 30 scored within 0.7 points of each other; 10 scored best and leaves fewest inputs under min_confidence.
HEAD_C = 10.0
HEAD_FILE = "head.safetensors"
INFO_FILE = "router.json"
HEAD_NOT_TRAINED = ("no learned router over token embeddings: train it first with `mtlora train-router` "
                    "(with router.features: embeddings or cascade)")


def mean_token_embeddings(tokenizer: PreTrainedTokenizerBase, table: torch.Tensor,
                          texts: Sequence[str]) -> torch.Tensor:
    """(texts, hidden): each text's token embeddings averaged (special tokens left out) and normalised."""
    ids = tokenizer(list(texts), add_special_tokens=False, truncation=True,
                    max_length=ROUTING_MAX_TOKENS)["input_ids"]
    offsets = torch.tensor([0, *[len(row) for row in ids[:-1]]]).cumsum(0)
    flat = torch.tensor([token for row in ids for token in row], dtype=torch.long, device=table.device)
    pooled = torch.nn.functional.embedding_bag(flat, table, offsets.to(table.device), mode="mean")
    return torch.nn.functional.normalize(pooled.float(), dim=-1).cpu()  # a text with no tokens stays zero


def token_embedding_table(backbone: str) -> torch.Tensor:
    with quiet_loading():
        model = load_pretrained(AutoModel, resolve_backbone(backbone))
    return model.get_input_embeddings().weight.detach()


@dataclass
class HeadInfo:
    """What a head was fit on and how well it did, saved beside its weights as `router.json`."""

    labels: list[str]
    base_model: str
    base_fingerprint: str
    examples: int
    validation_accuracy: float | None
    parameters: int = 0
    head_sha256: str = ""


def check_router_tasks(names: Sequence[str]) -> None:
    """A learned router chooses between tasks: refuse to train one over fewer than two."""
    if len(names) < 2:
        raise DataError("the learned router's training inputs", f"they come from {len(names)} task(s) "
                        f"({', '.join(names) or 'none'}), and a router chooses between tasks",
                        "add a task, or name the task in each call")


class TokenRouterHead:
    """Task probabilities from a text's mean token embedding: softmax(features @ weight.T + bias)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, info: HeadInfo):
        self.weight, self.bias, self.info = weight, bias, info

    @staticmethod
    def folder(registry: Registry) -> Path:
        return registry.root / ".routers" / "embeddings"

    @classmethod
    def fit(cls, backbone: str, texts: Sequence[str], labels: Sequence[str],
            validation: Sequence[tuple[str, str]] = ()) -> TokenRouterHead:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import accuracy_score

        names = sorted(set(labels))
        check_router_tasks(names)
        tokenizer, table = load_tokenizer(backbone), token_embedding_table(backbone)
        model = LogisticRegression(C=HEAD_C, max_iter=2000).fit(mean_token_embeddings(tokenizer, table, texts).numpy(),
                                                      [names.index(label) for label in labels])
        weight, bias = torch.tensor(model.coef_, dtype=torch.float32), torch.tensor(model.intercept_,
                                                                                    dtype=torch.float32)
        if len(names) == 2:  # scikit-learn keeps one row for two classes: the second class's logit
            weight, bias = torch.cat([torch.zeros_like(weight), weight]), torch.cat([torch.zeros_like(bias), bias])
        info = HeadInfo(names, backbone, fingerprint_backbone(backbone), len(texts), None,
                        weight.numel() + bias.numel())
        head = cls(weight, bias, info)
        if validation:
            features = mean_token_embeddings(tokenizer, table, [text for text, _ in validation])
            chosen = [names[c] for c in head.probabilities(features).argmax(dim=1).tolist()]
            info.validation_accuracy = float(accuracy_score([label for _, label in validation], chosen))
        return head

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(features @ self.weight.T + self.bias, dim=1)

    def save(self, registry: Registry) -> Path:
        """Written into a staging folder and renamed into place, like an adapter."""
        target = self.folder(registry)
        with registry.staged(target) as folder:
            save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}, str(folder / HEAD_FILE))
            self.info.head_sha256 = sha256_file(folder / HEAD_FILE)
            (folder / INFO_FILE).write_text(json.dumps(asdict(self.info), indent=2) + "\n", encoding="utf-8")
        return target

    @classmethod
    def saved_info(cls, registry: Registry) -> HeadInfo | None:
        """What `router.json` records of the saved head (None when there is none), weights not read."""
        info_file = cls.folder(registry) / INFO_FILE
        if not info_file.is_file():
            return None
        try:
            return HeadInfo(**json.loads(info_file.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError) as exc:
            raise CorruptAdapterError(f"{info_file}: unreadable ({exc}); retrain the router") from None

    @classmethod
    def saved_version(cls, registry: Registry) -> str | None:
        """The saved head's checksum, which a fit on other inputs changes; None when there is no head or its
        `router.json` is unreadable (a report's stamp is no place to fail)."""
        try:
            info = cls.saved_info(registry)
        except CorruptAdapterError:
            return None
        return None if info is None else info.head_sha256

    @classmethod
    def load(cls, registry: Registry, backbone: str) -> TokenRouterHead:
        folder = cls.folder(registry)
        info = cls.saved_info(registry)
        if info is None:
            raise RegistryError(f"{HEAD_NOT_TRAINED} (registry {registry.root})")
        if not (folder / HEAD_FILE).is_file() or sha256_file(folder / HEAD_FILE) != info.head_sha256:
            raise CorruptAdapterError(f"{folder / HEAD_FILE} is missing or does not match its checksum; "
                                      "retrain the router with `mtlora train-router CONFIG`")
        check_trained_on(f"the learned router in {folder}", info.base_model, info.base_fingerprint, backbone)
        weights = load_file(str(folder / HEAD_FILE))
        if len(weights["weight"]) != len(info.labels) or len(weights["bias"]) != len(info.labels):
            raise CorruptAdapterError(f"{folder}: the head scores {len(weights['weight'])} tasks but {INFO_FILE} "
                                      f"names {len(info.labels)}; retrain the router with `mtlora train-router CONFIG`")
        return cls(weights["weight"], weights["bias"], info)
