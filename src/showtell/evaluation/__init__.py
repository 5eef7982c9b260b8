"""Evaluation: how good a trained model's captions are, and the files that show it.

Owns the metrics as coco-caption computes them and the human bound (metrics.py), the check
against pycocoevalcap's own pipeline (check_metrics.py), object hallucination (chair.py),
decoding and scoring a split with a PyTorch model for validation during training
(validation.py), the `showtell evaluate` command in stages (evaluate.py) and its HTML report
(report.py). Evaluation only: the model card and the figures are reporting/'s, the COCO results
file format data/'s, a batch's features data/batching.py's.

May import the basics, data, models, decoding, reporting and inference (evaluate.py loads a
Captioner); nothing of training, serve or cli.
"""
