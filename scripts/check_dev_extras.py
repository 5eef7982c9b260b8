"""Import every package of the dev extra, so a failed install stops `make test` before the tests
that need it could turn into skip lines (under CI a skip is a failure: tests/conftest.py).

    python scripts/check_dev_extras.py     # exit 1 and one line per package that does not import
"""

from __future__ import annotations

import importlib
import sys

# pyproject's dev extra, by import name (pycocotools: tests read results with COCO.loadRes; ruff and
# import-linter are commands: their modules import too)
MODULES = ["pytest", "pytest_timeout", "hypothesis", "httpx", "playwright.sync_api", "schemathesis", "spacy",
           "pycocotools.coco", "tensorboard", "onnx", "onnxscript", "onnxruntime", "importlinter", "timm",
           "open_clip", "ruff", "huggingface_hub", "openai", "transformers"]


def main() -> int:
    missing = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as error:  # an ImportError, or a package that breaks on import
            missing.append(f"{name}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    for line in missing:
        print(f"make: the dev extra {line}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
