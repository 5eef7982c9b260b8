"""Several models decoding as one, through the same `init_state`/`step` calls as a single model."""

from __future__ import annotations

import math

from array_api_compat import array_namespace

from ..tokenizer import specials_of
from .arrays import Array, logsumexp


class Ensemble:
    """Several models decoding as one: their word probabilities are averaged at every step.
    Each model keeps its own state; `features` is a list with one entry per model (they may use
    different encoders and image sizes)."""

    def __init__(self, models):
        self.models = list(models)
        self.specials = specials_of(self.models[0]) if self.models else None   # models decoding as one share their tokenizer

    def init_state(self, features: list) -> dict[str, Array]:
        state = {}
        for i, (model, feats) in enumerate(zip(self.models, features)):
            for key, value in model.init_state(feats).items():
                state[f"{i}.{key}"] = value
        return state

    def step(self, words: Array, state: dict[str, Array]):
        logprobs, new_state, attentions = [], {}, []
        for i, model in enumerate(self.models):
            own = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"{i}.")}
            lp, own, attn = model.step(words, own)
            logprobs.append(lp)
            attentions.append(attn)
            new_state.update({f"{i}.{k}": v for k, v in own.items()})
        xp = array_namespace(logprobs[0])
        mean = logsumexp(xp, xp.stack(logprobs), axis=0) - math.log(len(self.models))
        attn = attentions[0] if len(self.models) == 1 else None
        return mean, new_state, attn

