"""Evaluation: how good a trained model's captions are, and the files that show it.

Owns the metrics as coco-caption computes them and the human bound (metrics.py), the check
against pycocoevalcap's own pipeline (check_metrics.py), object hallucination (chair.py), COCO
results files (coco_results.py), decoding and scoring a split with a PyTorch model for
validation during training (validation.py), the `showtell evaluate` command in stages
(evaluate.py), the HTML report (report.py) and its figures (figures.py), and the model card
(modelcard.py).

May import the basics, data, models, decoding and inference (evaluate.py loads a Captioner);
nothing of training, serve or cli.
"""
