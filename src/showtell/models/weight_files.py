"""Encoder weights from local files: a state dict read from .safetensors or .pth (never plain
pickle), and loaded into a model with one line naming the file when it does not fit. Used by the
torchvision, small, timm and open_clip encoders alike."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a .pth/.pt file (loaded with weights_only, never plain pickle)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path}: model.encoder_weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt files raise many different errors
        raise WeightsError(f"{path}: cannot read state dict ({str(error).splitlines()[0][:160]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return state


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        first = str(error).split("\n")[1].strip() if "\n" in str(error) else str(error)
        raise WeightsError(f"{source}: weights do not fit the model ({first[:200]})") from None
    if missing or unexpected:
        raise WeightsError(f"{source}: weights do not fit the model (missing {list(missing)[:3]}, "
                           f"unexpected {list(unexpected)[:3]})")
