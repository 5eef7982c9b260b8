"""Decoding: from a model's features to captions, and the scores of given captions.

Owns greedy decoding and beam search (search.py, on torch tensors and NumPy arrays alike through
the array API, with the missing operations in arrays.py), sampling (sampling.py), ensembles
(ensemble.py), teacher-forced scoring through the same calls (scoring.py), the checked decoding
options (options.py) and what captioning returns (captions.py).

Knows a model only by its two calls, `state = model.init_state(features)` and
`logprobs, state, attention = model.step(words, state)`. May import the basics (vocab, errors);
nothing of data, models, training, evaluation, inference, serve or cli.
"""
