"""Data: annotation files in every supported format read into one record type (formats.py),
pictures read safely and shaped for an encoder (images.py), the built-in synthetic scenes
(synthetic.py), batches that are a pure function of (seed, epoch) (batching.py) and the feature
cache's format (features.py; `showtell prepare` writes it from training/prepare.py).

Knows files and records, not models. May import the basics only.
"""
