"""Reporting: what shows a run to people, written by several stages alike. Owns the model card
(modelcard.py: RUN/README.md and RUN/training.json, written by training at its end and rewritten
by every `evaluate`, copied by `export`) and the figures (figures.py: training curves, a grid of
captioned samples, attention maps; used by evaluate's report, `caption --attention` and the demo).

A shared piece lives here, below the stages that write it, so that training and evaluation need
not import each other for it. May import the basics, data, models and decoding (a decoder's name
on the card); nothing of inference, training, evaluation, serve or cli.
"""
