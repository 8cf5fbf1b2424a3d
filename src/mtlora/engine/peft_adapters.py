"""The PEFT steps both halves of the engine take to add a LoRA adapter to a shared model and to delete one.

The halves differ only where PEFT cannot delete a model's last adapter: the encoder half unloads PEFT
then (its bare encoder serves on), the seq2seq half keeps the adapter, unused, until another joins.
`delete_adapter` tells them when that is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Container, Iterator
from typing import TYPE_CHECKING, cast

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from torch import nn

if TYPE_CHECKING:
    from torch.nn.modules.module import _IncompatibleKeys

from mtlora.errors import BaseModelMismatchError


def with_adapter(model: nn.Module, name: str, config: LoraConfig) -> PeftModel:
    """`model` with a new, empty LoRA adapter `name`: PEFT wraps a bare model at its first adapter."""
    if isinstance(model, PeftModel):
        model.add_adapter(name, config)
        return model
    return get_peft_model(model, config, adapter_name=name)


def load_weights(model: PeftModel, peft_name: str, state: dict[str, torch.Tensor], adapter: str,
                 model_called: str = "backbone") -> None:
    """Adapter `adapter`'s trained weights into `model`, where PEFT knows it as `peft_name`. A weight with no
    place there means the adapter was trained on another backbone (PEFT would only warn); the error calls
    the model `model_called`."""
    # PEFT annotates its return as a bare namedtuple: it is load_state_dict's missing and unexpected keys.
    result = cast("_IncompatibleKeys", set_peft_model_state_dict(model, state, adapter_name=peft_name))
    if result.unexpected_keys:
        raise BaseModelMismatchError(f"adapter '{adapter}' has weights the {model_called} has no place for: "
                                     f"{result.unexpected_keys[:3]}")


@contextlib.contextmanager
def undone_on_failure(undo: Callable[[], None]) -> Iterator[None]:
    """Whatever fails inside the block (an interrupt too), `undo` runs before it goes on: the engine goes
    on serving what it served, and the adapter can be added again."""
    try:
        yield
    except BaseException:
        undo()
        raise


def delete_adapter(model: PeftModel, name: str, gone: Container[str] = ()) -> bool:
    """Delete adapter `name` from `model`, first activating another if it was the active one. False, with
    nothing done, when no adapter would be left but those in `gone`: PEFT cannot delete its last."""
    others = [other for other in model.peft_config if other != name and other not in gone]
    if not others:
        return False
    if name in model.active_adapters:
        model.set_adapter(others[0])  # any will do: each pass names or sets the adapters it runs
    model.delete_adapter(name)
    return True
