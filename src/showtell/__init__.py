"""showtell: neural image captioning in the Show and Tell family.

    from showtell import Captioner
    Captioner.load("runs/demo").caption("photo.jpg", beam_size=3).caption
"""

__version__ = "0.1.0"


def __getattr__(name):  # keep `import showtell` light: torch loads on first use
    if name in ("Captioner", "CaptionResult", "Hypothesis"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'showtell' has no attribute {name!r}")


__all__ = ["Captioner", "CaptionResult", "Hypothesis", "__version__"]
