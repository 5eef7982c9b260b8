"""Self-critical sequence training (Rennie et al., 2017): optimise CIDEr-D itself.

After cross-entropy training, the model samples captions for each picture and is rewarded by
how much better each sample scores (CIDEr-D against the picture's references) than the model's
own greedy caption, the baseline:

    loss = - sum_s (CIDEr(sample_s) - CIDEr(greedy)) * log p(sample_s | I)

Samples better than what the model would say anyway become more likely, worse ones less. The
document frequencies of CIDEr-D come once from the training references. Each picture is encoded
once: the baseline and the samples read the same features (a trainable encoder's batch norm
sees one batch, in training mode); the baseline decodes without dropout, as evaluation does.
"""

from __future__ import annotations

import torch

from ..config import Config
from ..decoding.sampling import sample
from ..decoding.search import greedy
from ..evaluation.metrics import CiderD
from ..vocab import Vocabulary
from . import distributed as dist


def texts_of(decoded, vocab: Vocabulary) -> list[str]:
    """The first hypothesis of each row as text."""
    seqs, lengths = decoded.sequences[:, 0], decoded.lengths[:, 0]
    return [vocab.decode(seqs[i, : int(lengths[i])].tolist()) for i in range(seqs.shape[0])]


class SelfCritical:
    """The self-critical loss of a batch of pictures, for the training loop to minimise. Its
    decoding goes around DistributedDataParallel's forward, so the loop averages the gradients
    over ranks by hand (phases.SelfCriticalPhase.through_ddp is False)."""

    def __init__(self, references: list[list[str]], vocab: Vocabulary, config: Config):
        self.references = references        # tokenised references joined by spaces, per picture
        self.cider = CiderD(references)
        self.vocab, self.config = vocab, config

    def loss(self, model, features: dict[str, torch.Tensor], ids: torch.Tensor, step: int,
             device: torch.device) -> tuple[torch.Tensor, float]:
        """(policy-gradient loss to minimise, the greedy captions' mean CIDEr-D on this batch)."""
        t, d = self.config.train, self.config.decode
        refs = [self.references[i] for i in ids.tolist()]
        with torch.no_grad():
            model.decoder.eval()
            baseline_out = greedy(model, {k: v.detach() for k, v in features.items()}, d.max_length, d.block_unk)
            model.decoder.train()
        baseline = [self.cider.score(text, r) for text, r in zip(texts_of(baseline_out, self.vocab), refs)]
        generator = torch.Generator(device=device).manual_seed((t.seed * 1_000_003 + step) % (1 << 63))
        drawn, token_logprobs, mask = sample(model, features, d.max_length, generator=generator,
                                             samples_per_image=t.scst_samples, block_unk=d.block_unk)
        n = t.scst_samples
        rewards = [self.cider.score(text, refs[i // n]) - baseline[i // n]
                   for i, text in enumerate(texts_of(drawn, self.vocab))]
        advantage = torch.tensor(rewards, device=device)
        # mean over the sampled words of the *global* batch, so N processes match one
        tokens = dist.all_reduce_sum(float(mask.sum()), device)
        loss = -(advantage.unsqueeze(1) * token_logprobs * mask).sum() * dist.world_size() / max(tokens, 1.0)
        return loss, sum(baseline) / max(1, len(baseline))
