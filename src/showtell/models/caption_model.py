"""The whole captioner: encoder + decoder, built from the config.

    features = model.encode(images)                    # {"global": (B, Dg), "grid": (B, L, Dc)}
    out = model(tokens, images=images, repeats=5)      # teacher forcing, 5 captions each: out.loss, out.nll
    state = model.init_state(features); model.step(words, state)   # decoding
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..architectures import decoder as decoder_traits
from ..config import Config
from ..tokenizer import specials_of
from ..vocab import real_positions
from .encoder import Encoder

log = logging.getLogger("showtell")


@dataclass
class TeacherForced:
    """What a teacher-forced pass returns, for every decoder alike.

    logits:  (N, V) at the N real (non-padding) target positions
    nll:     summed negative log-likelihood of those N words (nats)
    penalty: the decoder's regulariser over the batch (0 for NIC; the attention penalty)
    words:   N
    loss:    nll + penalty scaled to the words, the training objective summed over words"""
    logits: torch.Tensor
    nll: torch.Tensor
    penalty: torch.Tensor
    words: int
    loss: torch.Tensor


class CaptionModel(nn.Module):
    def __init__(self, encoder: Encoder, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    @property
    def specials(self):
        """The decoder's start/end/pad ids (the word vocabulary's unless it names its own)."""
        return specials_of(self.decoder)

    @property
    def transform(self):
        return self.encoder.transform

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.encoder(images)

    def forward(self, tokens: torch.Tensor, images=None, features=None, repeats: int = 1,
                encoder_grad: bool = True, sampling_probability: float = 0.0) -> TeacherForced:
        """Teacher forcing on `tokens` (B*repeats, T+1) = <start> w1 .. <end> <pad>.. of B images
        given as pictures or cached features. The whole step, loss included, is one forward call,
        so DistributedDataParallel sees it all. With `sampling_probability` > 0 (training only)
        some true words are replaced by the model's own samples (scheduled sampling)."""
        if features is None:
            with torch.set_grad_enabled(encoder_grad and torch.is_grad_enabled()):
                features = self.encoder(images)
        picture_features = getattr(self.decoder, "picture_features", None)
        if picture_features is not None:   # what depends only on the picture, once per picture
            features = picture_features(features)
        features = repeat_features(features, repeats)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        positions = real_positions(targets, self.specials.end)                  # (B, T): up to each <end>
        if sampling_probability > 0 and self.training:
            logits, penalty = scheduled_sampling(self.decoder, features, inputs, positions, sampling_probability)
        else:
            logits, penalty = self.decoder(features, inputs, positions)
        nll = F.cross_entropy(logits.float(), targets[positions], reduction="sum")
        words = int(positions.sum())
        # the penalty is summed over captions; spread it over their words like the likelihood
        loss = nll + penalty.float() * words / max(1, positions.shape[0])
        return TeacherForced(logits, nll, penalty, words, loss)

    def init_state(self, features):
        return self.decoder.init_state(features)

    def step(self, words, state):
        return self.decoder.step(words, state)


def scheduled_sampling(decoder, features, inputs, positions, probability: float):
    """Bengio et al. (2015): run the decoder word by word; at each step after the first, each
    caption's input is, with `probability`, a word drawn from the model's own previous output
    instead of the true word (never <pad>, <start> or <unk>, which decoding never feeds back).
    Returns (logits, penalty) as `decoder.forward` does; log-probabilities serve as logits, since
    cross-entropy of log-softmax output equals that of the logits."""
    state = decoder.init_state(features)
    outputs, attentions = [], []
    previous = None
    for t in range(inputs.shape[1]):
        words = inputs[:, t]
        if previous is not None:
            use_model = torch.rand(words.shape, device=words.device) < probability
            words = torch.where(use_model, previous, words)
        logprobs, state, attention = decoder.step(words, state)
        outputs.append(logprobs)
        attentions.append(attention)
        feedable = logprobs.detach().float().clone()
        specials = specials_of(decoder)
        feedable[:, list(specials.never(block_unk=True))] = -math.inf
        if specials.size is not None:
            feedable[:, specials.size:] = -math.inf                          # ids the tokenizer has not
        previous = torch.multinomial(feedable.softmax(dim=-1), 1).squeeze(1)
    logits = torch.stack(outputs, dim=1)[positions]                          # (N, V)
    if attentions[0] is None:
        return logits, logits.new_zeros(())
    return logits, decoder.attention_penalty(torch.stack(attentions, dim=1), positions)


def repeat_features(features: dict[str, torch.Tensor], repeats: int) -> dict[str, torch.Tensor]:
    """One image's features for each of its `repeats` captions (rows image-major)."""
    if repeats == 1:
        return features
    return {k: v.repeat_interleave(repeats, dim=0) for k, v in features.items()}


def build_model(config: Config, vocab, pretrained: bool = True, encoder_state: dict | None = None) -> CaptionModel:
    """The model described by `config`. `pretrained=False` builds the architecture only, for
    loading a saved run (whose weights file supplies everything, so nothing is downloaded).
    `encoder_state` gives the encoder's weights directly (those a feature cache was made with)."""
    m = config.model
    encoder = Encoder(m.encoder, m.encoder_weights, config.data.image_size,
                      pretrained=pretrained and encoder_state is None)
    if encoder_state is not None:
        encoder.load_state_dict(encoder_state)
    embed_dim, table = m.embed_dim, None
    if pretrained and m.word_embeddings:
        from .embeddings import embedding_matrix

        table, coverage = embedding_matrix(m.word_embeddings, vocab.words, seed=config.train.seed)
        embed_dim = table.shape[1]  # the vectors decide the embedding size
        log.info("word vectors %s cover %.1f%% of the %d vocabulary words (%d-d); the rest start random",
                 m.word_embeddings, 100 * coverage, len(vocab) - 4, embed_dim)
    decoder = decoder_traits(m.decoder).build(m, len(vocab), encoder, embed_dim, pretrained)   # the row's model file
    model = CaptionModel(encoder, decoder)
    if table is not None:
        with torch.no_grad():
            decoder.embed.weight.copy_(table)
    if m.freeze_embeddings:
        decoder.embed.weight.requires_grad_(False)
    encoder.freeze(m.freeze_encoder)
    return model
