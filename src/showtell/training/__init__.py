"""Training: maximum likelihood with teacher forcing, validation by decoding, resumable checkpoints.

For each image the model sees the true previous words of its captions and learns to predict the
next one; the loss is the mean negative log-likelihood per word, exp(loss) the perplexity:

    loss = -1/N sum_t log p(S_t | I, S_<t)

Training runs in phases: cross-entropy (the encoder may be unfrozen after some epochs), then
optionally self-critical training (scst.py). A phase turns a batch into a loss; `optimise` is the
one place that steps. Each epoch ends with a validation pass that writes captions for the
validation images as evaluation does and scores them; the best score picks `model.safetensors`.
Every `checkpoint_every` steps, at each epoch's end and at each change of phase, a checkpoint
saves the weights, the optimiser, the `TrainState` and the RNGs, so `--resume` continues exactly
where the last checkpoint left off, with bitwise the same result as an uninterrupted run (on CPU).

The modules: entry.py (`train`, `resume`), session.py (data, model, device), state.py
(`TrainState` and checkpoints), phases.py (cross-entropy and self-critical losses, `optimise`),
scst.py, loop.py (`fit`), epochs.py (validation and the best model), budget.py (`--max-minutes`),
schedules.py, tensorboard.py, distributed.py (torchrun), prepare.py (`showtell prepare`: the
feature cache, written by running the encoder).

May import the basics, data (batches and their features), models, decoding, reporting (the model
card and training.json, written at the end) and evaluation (validation scores, metrics); nothing
of inference, serve or cli: what a run folder holds, and why its weights may not fit, is run.py's.
"""
