"""The whole captioner: encoder + decoder, built from the config.

    features = model.encode(images)                    # {"global": (B, Dg), "grid": (B, L, Dc)}
    logits = model(inputs, positions, images=images, repeats=5)   # teacher forcing, 5 captions each
    state = model.init_state(features); model.step(words, state)   # decoding
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..config import Config
from .encoder import Encoder
from .nic import NICDecoder

log = logging.getLogger("showtell")


class CaptionModel(nn.Module):
    def __init__(self, encoder: Encoder, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    @property
    def transform(self):
        return self.encoder.transform

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.encoder(images)

    def forward(self, inputs, positions=None, images=None, features=None, repeats: int = 1,
                encoder_grad: bool = True, sampling_probability: float = 0.0):
        """Teacher-forced logits for `inputs` (B*repeats, T) given pictures or cached features of
        B images; the whole step is one forward call, so DistributedDataParallel sees it all.
        With `sampling_probability` > 0 (training only) some true words are replaced by the
        model's own samples (scheduled sampling)."""
        if features is None:
            with torch.set_grad_enabled(encoder_grad and torch.is_grad_enabled()):
                features = self.encoder(images)
        features = repeat_features(features, repeats)
        if sampling_probability > 0 and self.training:
            return scheduled_sampling(self.decoder, features, inputs, positions, sampling_probability)
        return self.decoder(features, inputs, positions)

    def init_state(self, features):
        return self.decoder.init_state(features)

    def step(self, words, state):
        return self.decoder.step(words, state)


def scheduled_sampling(decoder, features, inputs, positions, probability: float):
    """Bengio et al. (2015): run the decoder word by word; at each step after the first, each
    caption's input is, with `probability`, a word sampled from the model's own previous output
    instead of the true word. Returns what `decoder.forward` returns (log-probabilities serve as
    logits: cross-entropy of log-softmax output equals that of the logits)."""
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
        previous = torch.multinomial(logprobs.detach().float().exp(), 1).squeeze(1)
    logits = torch.stack(outputs, dim=1)                                   # (B, T, V)
    if positions is not None:
        logits = logits[positions]
    if hasattr(decoder, "attention_penalty") and attentions[0] is not None:
        return logits, decoder.attention_penalty(torch.stack(attentions, dim=1), positions)
    return logits


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
    if m.decoder == "attention":
        from .attention import AttentionDecoder

        decoder = AttentionDecoder(len(vocab), encoder.grid_dim, embed_dim, m.hidden_dim, m.attention_dim,
                                   m.dropout, m.attention_regularization)
    else:
        decoder = NICDecoder(len(vocab), encoder.global_dim, embed_dim, m.hidden_dim, m.num_layers,
                             m.dropout, m.image_injection)
    model = CaptionModel(encoder, decoder)
    if table is not None:
        with torch.no_grad():
            decoder.embed.weight.copy_(table)
    if m.freeze_embeddings:
        decoder.embed.weight.requires_grad_(False)
    encoder.freeze(m.freeze_encoder)
    return model
