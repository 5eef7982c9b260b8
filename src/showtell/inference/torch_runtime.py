"""Running trained runs on PyTorch: one or more CaptionModels on a torch device.

A runtime gives the `Captioner` what differs between backends: the models (each with `encode`,
`init_state`, `step` and its picture `transform`), how prepared pictures become one batch, arrays
of word ids, the no-gradient context and a random generator for sampling. The ONNX runtime
(onnx_runtime.py) gives the same on onnxruntime and NumPy.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..device import resolve_device
from ..errors import ConfigError, RunError
from ..models.caption_model import build_model
from ..run import Run


def load_model(path: Run | str | Path, device: str | torch.device = "cpu"):
    """(config, vocab, model in eval mode) from a run directory or an exported package (or its
    opened `Run`)."""
    run = Run.of(path)
    config, vocab = run.config(), run.vocab()
    model = build_model(config, vocab, pretrained=False)
    state = run.weights()
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise RunError(run.describe_mismatch(model, state, error)) from None
    return config, vocab, model.to(device).eval()


class TorchRuntime:
    backend = "torch"
    supports_sampling = True

    def __init__(self, models: list, configs: list, vocab, device: torch.device):
        self.models, self.configs, self.vocab, self.device = models, configs, vocab, device

    @classmethod
    def load(cls, paths: list, device="cpu", setting: str = "device") -> "TorchRuntime":
        device = resolve_device(device, setting)
        loaded = [load_model(p, device) for p in paths]
        vocab = loaded[0][1]
        for path, (_, other, _) in zip(paths[1:], loaded[1:]):
            if other != vocab:
                raise ConfigError(f"{path}: an ensemble needs models with the same vocabulary")
        return cls([m for _, _, m in loaded], [c for c, _, _ in loaded], vocab, device)

    def batch(self, pictures: list) -> torch.Tensor:
        """Prepared pictures of one model (uint8 (3, S, S) each) as one batch on the device."""
        return torch.stack(pictures).to(self.device)

    def word_ids(self, rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def no_grad(self):
        return torch.inference_mode()

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def grid_size(self) -> int:
        return self.models[0].encoder.grid_size

    def has_attention(self) -> bool:
        return all(getattr(m.decoder, "uses_grid", False) for m in self.models)
