"""Saving a trained LoRA adapter at a lower rank than it was trained at.

A rank-r adapter adds scaling·B·A to each adapted weight. Training at r=8 learns better than training at
r=4 (SQuAD: 63.3 against 61.5 F1), but the update it learns is nearly rank 4: keeping each layer's top
four singular directions scored as the whole update on SST-2, MRPC, STS-B and SQuAD
(bench/lora_settings.py --full), at half the memory and disk. The truncation is the best rank-k approximation of
each layer's update (Eckart-Young), written back as ordinary LoRA factors, so the saved adapter is a
plain rank-k PEFT adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora import layer as lora
from torch import nn

from mtlora.errors import ConfigError


@dataclass(frozen=True)
class RankTruncation:
    trained_rank: int
    saved_rank: int
    energy_kept: float  # share of the updates' summed squared norm kept, over every layer
    lowest_layer_energy_kept: float

    def describe(self) -> str:
        return (f"saved at rank {self.saved_rank} of {self.trained_rank}: kept {self.energy_kept:.1%} of the "
                f"update's energy (lowest layer {self.lowest_layer_energy_kept:.1%})")


def truncate_rank(model: PeftModel, rank: int | None, adapter: str = "default") -> RankTruncation | None:
    """Replace each LoRA layer's update by its best rank-`rank` approximation, in place.

    Nothing changes (None) when `rank` is None or not below the adapter's rank. The scaling (alpha / r)
    is kept, so alpha shrinks with r."""
    config = cast(LoraConfig, model.peft_config[adapter])  # PEFT types any method's config; this one is LoRA
    if rank is None or rank >= config.r:
        return None
    check_truncatable(model, rank, adapter)
    kept, total, lowest = 0.0, 0.0, 1.0
    for layer in model.modules():
        if not isinstance(layer, lora.Linear) or adapter not in layer.lora_A:
            continue
        # lora_A and lora_B hold nn.Linear layers, typed as the ModuleDict's plain Modules.
        a, b = cast(torch.Tensor, layer.lora_A[adapter].weight), cast(torch.Tensor, layer.lora_B[adapter].weight)
        # The SVD of B·A from the r×r core of the factors' QR decompositions: exact, and cheap for a wide layer.
        q_b, r_b = torch.linalg.qr(b.double())
        q_a, r_a = torch.linalg.qr(a.double().T)
        u, s, vh = torch.linalg.svd(r_b @ r_a.T)
        root = s[:rank].sqrt()
        layer.lora_B[adapter] = _linear((q_b @ u[:, :rank]) * root, b)
        layer.lora_A[adapter] = _linear(root[:, None] * (vh[:rank] @ q_a.T), a)
        layer.r[adapter] = rank
        layer.lora_alpha[adapter] = layer.lora_alpha[adapter] * rank / config.r
        energy = (s**2).sum().item()
        kept, total = kept + (s[:rank] ** 2).sum().item(), total + energy
        lowest = min(lowest, (s[:rank] ** 2).sum().item() / energy) if energy > 0 else lowest
    truncation = RankTruncation(trained_rank=config.r, saved_rank=rank,
                                energy_kept=kept / total if total > 0 else 1.0, lowest_layer_energy_kept=lowest)
    # A fractional alpha keeps the scaling exact; PEFT annotates an int but computes with any number.
    config.lora_alpha, config.r = config.lora_alpha * rank / config.r, rank  # type: ignore[assignment]
    return truncation


def check_truncatable(model: PeftModel, rank: int | None, adapter: str = "default") -> None:
    """Refuse, before any training, an adapter `truncate_rank` could not cut to `rank`: LoRA variants, and
    layers other than linear ones (an embedding named in target_modules)."""
    config = cast(LoraConfig, model.peft_config[adapter])  # PEFT types any method's config; this one is LoRA
    if rank is None or rank >= config.r:
        return
    problems = [name for name, layer in model.named_modules()
                if isinstance(layer, lora.LoraLayer) and adapter in layer.r and type(layer) is not lora.Linear]
    if config.use_rslora or config.use_dora or config.rank_pattern or config.alpha_pattern:
        problems.append("a LoRA variant (DoRA, rsLoRA, per-layer ranks)")
    if problems:
        raise ConfigError("lora.saved_rank", [
            f"saved_rank {rank} cuts plain LoRA on linear layers only, not {', '.join(problems[:3])}; "
            "set lora.saved_rank: null, or leave these modules out of lora.target_modules"])


def _linear(weight: torch.Tensor, like: torch.Tensor) -> nn.Linear:
    """A bias-free linear layer holding `weight`, with the dtype, device and trainability of `like`."""
    module = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=like.device, dtype=like.dtype)
    with torch.no_grad():
        module.weight.copy_(weight)
    module.weight.requires_grad_(like.requires_grad)
    return module
