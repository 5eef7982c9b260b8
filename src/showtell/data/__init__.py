"""Data: annotation files in every supported format read into one record type (formats.py),
pictures read safely and shaped for an encoder (images.py), the built-in synthetic scenes
(synthetic.py), batches that are a pure function of (seed, epoch) and a batch's features on a
device (batching.py), the feature cache's format (features.py; `showtell prepare` writes it from
training/prepare.py) and COCO results files, `[{"image_id", "caption"}]` (coco_results.py).
`parse_data_spec` (formats.py) is the one reader of a `--data` value, 'FILE' or 'SPLIT=FILE'.

Knows files and records, not models. May import the basics only.
"""
