"""showtell: neural image captioning in the Show and Tell family.

    from showtell import Captioner
    Captioner.load("runs/demo").caption("photo.jpg", beam_size=3).caption
"""

__version__ = "0.1.0"


def __getattr__(name):  # keep `import showtell` light: the Captioner loads on first use
    if name == "Captioner":
        from .inference.captioner import Captioner

        return Captioner
    if name in ("CaptionResult", "CaptionScore", "Hypothesis"):
        from .decoding import captions

        return getattr(captions, name)
    raise AttributeError(f"module 'showtell' has no attribute {name!r}")


__all__ = ["CaptionResult", "CaptionScore", "Captioner", "Hypothesis", "__version__"]
