"""The array operations decoding needs, on torch tensors and NumPy arrays alike.

Greedy and beam search are written once against the array API standard (through
`array_api_compat`); these are the few operations it lacks (top-k, log-sum-exp, a maximum with
its index) and the small helpers every search shares (the word mask, padding, reordering a state).
"""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace, is_numpy_array, is_torch_array
from array_api_compat import device as device_of

from ..vocab import WORD_SPECIALS, Specials

NEG_INF = float("-inf")
Array = Any  # a torch tensor or a NumPy array (anything array_api_compat knows)


def topk(x: Array, k: int) -> tuple[Array, Array]:
    """The k largest entries along the last axis, largest first: (values, indices). Equal values
    come lowest index first on NumPy; torch.topk's order among exact ties is its own (finite ties
    do not occur in a trained model's log-probabilities; -inf ones are never chosen words)."""
    if is_torch_array(x):
        return x.topk(k, dim=-1)
    if is_numpy_array(x):
        import numpy as np

        n = x.shape[-1]
        part = np.argpartition(-x, k - 1, axis=-1)[..., :k] if k < n else np.broadcast_to(np.arange(n), x.shape)
        values = np.take_along_axis(x, part, axis=-1)
        order = np.lexsort((part, -values), axis=-1)                   # by value, then by index
        return np.take_along_axis(values, order, axis=-1), np.take_along_axis(part, order, axis=-1)
    xp = array_namespace(x)
    index = xp.argsort(x, axis=-1, descending=True, stable=True)[..., :k]
    return xp.take_along_axis(x, index, axis=-1), index


def max_with_index(xp, x: Array) -> tuple[Array, Array]:
    """(largest value, its index) along the last axis; the first index among equal values."""
    if is_torch_array(x):
        return x.max(dim=-1)
    index = xp.argmax(x, axis=-1)
    return xp.take_along_axis(x, index[..., None], axis=-1)[..., 0], index


def logsumexp(xp, x: Array, axis: int) -> Array:
    if is_torch_array(x):
        return x.logsumexp(dim=axis)
    top = xp.max(x, axis=axis, keepdims=True)
    top = xp.where(xp.isfinite(top), top, xp.zeros_like(top))
    return xp.squeeze(top, axis=axis) + xp.log(xp.sum(xp.exp(x - top), axis=axis))


def backend(state: dict[str, Array]):
    """(array namespace, batch size, device) of a decoder state."""
    first = next(iter(state.values()))
    return array_namespace(first), first.shape[0], device_of(first)


def mask_row(xp, like: Array, block_unk: bool, specials: Specials = WORD_SPECIALS) -> Array:
    """Added to each step's log-probabilities (B, V): -inf for the words decoding never chooses,
    0 elsewhere, so the log-probabilities of the others stay exactly the model's."""
    row = xp.zeros(like.shape[-1], dtype=like.dtype, device=device_of(like))
    for word in specials.never(block_unk):
        row[word] = NEG_INF
    if specials.size is not None:    # the model has more rows than its tokenizer has tokens (Pythia, OPT, Qwen)
        row[specials.size:] = NEG_INF
    return row


def pad_to(xp, x: Array, length: int, axis: int, value=0) -> Array:
    """`x` extended with `value` along `axis` to `length` entries."""
    missing = length - x.shape[axis]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[axis] = missing
    return xp.concat([x, xp.full(tuple(shape), value, dtype=x.dtype, device=device_of(x))], axis=axis)


def per_picture(name: str) -> bool:
    """State entries named picture_* (after an ensemble's 'N.' prefix) hold the same values for every
    row of one picture (the attention grid and keys, a Transformer's memory, NIC's every-step input)."""
    return name.rsplit(".", 1)[-1].startswith("picture_")


def select_state(state: dict[str, Array], index: Array, within_pictures: bool = False) -> dict[str, Array]:
    """Reorder/duplicate the batch rows of every state array (beam bookkeeping). `within_pictures`:
    `index` only moves rows among the rows of their own picture (beam search's reordering of a
    picture's hypotheses), so per-picture entries stay as they are instead of being copied."""
    return {k: v if within_pictures and per_picture(k) else v[index] for k, v in state.items()}

