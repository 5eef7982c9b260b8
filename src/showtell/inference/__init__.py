"""Inference: a trained model in use. Owns the backend-neutral `Captioner` (captioner.py), its
PyTorch and ONNX runtimes as siblings (torch_runtime.py, onnx_runtime.py) and exporting a run
(export.py: the package, and ONNX graphs; web_export.py: a static page that captions in the
browser with those graphs, its JavaScript and page in web/).

May import the basics, data, models and decoding; nothing of reporting, training, evaluation,
serve or cli.
The ONNX path (captioner.py and onnx_runtime.py) imports no torch.
"""

from .captioner import Captioner

__all__ = ["Captioner"]
