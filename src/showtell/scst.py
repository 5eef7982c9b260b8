"""Self-critical sequence training (Rennie et al., 2017): optimise CIDEr-D itself.

After cross-entropy training, the model samples captions for each picture and is rewarded by
how much better each sample scores (CIDEr-D against the picture's references) than the model's
own greedy caption, the baseline:

    loss = - sum_s (CIDEr(sample_s) - CIDEr(greedy)) * log p(sample_s | I)

Samples better than what the model would say anyway become more likely, worse ones less. The
document frequencies of CIDEr-D come once from the training references.
"""

from __future__ import annotations

import torch

from . import distributed as dist
from .decode import greedy, sample
from .metrics import CiderD
from .vocab import Vocabulary


def _texts(decoded, vocab: Vocabulary) -> list[str]:
    seqs, lengths = decoded.sequences[:, 0], decoded.lengths[:, 0]
    return [vocab.decode(seqs[i, : int(lengths[i])].tolist()) for i in range(seqs.shape[0])]


class SelfCritical:
    def __init__(self, trainer):
        self.trainer = trainer
        records = trainer.train_data.records
        self.references = [[" ".join(tokens) for tokens in r.tokens] for r in records]
        self.cider = CiderD(self.references)

    def step(self, ids: torch.Tensor, batch, epoch: int) -> float:
        """One policy-gradient step on a batch of pictures; returns the mean reward over the baseline."""
        tr = self.trainer
        t, model, device = tr.config.train, tr.model, tr.device
        source = {k: v.to(device) for k, v in batch.items()} if isinstance(batch, dict) else batch.to(device)
        refs = [self.references[i] for i in ids.tolist()]
        max_length = tr.config.decode.max_length

        model.eval()
        with torch.no_grad():
            feats = source if isinstance(source, dict) else model.encode(source)
            baseline = [self.cider.score(text, r) for text, r in zip(_texts(greedy(model, feats, max_length), tr.vocab), refs)]

        model.train()
        with torch.set_grad_enabled(True):
            feats = source if isinstance(source, dict) else model.encode(source)
            generator = torch.Generator(device=device).manual_seed(t.seed * 1_000_003 + tr.global_step)
            drawn, token_logprobs, mask = sample(model, feats, max_length, generator=generator,
                                                 samples_per_image=t.scst_samples, block_unk=tr.config.decode.block_unk)
            texts = _texts(drawn, tr.vocab)
            n = t.scst_samples
            advantage = torch.tensor([self.cider.score(text, refs[i // n]) - baseline[i // n] for i, text in enumerate(texts)],
                                     device=device)
            tokens = dist.all_reduce_sum(float(mask.sum()), device)
            loss = -(advantage.unsqueeze(1) * token_logprobs * mask).sum() * dist.world_size() / max(tokens, 1.0)
        tr.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        dist.average_gradients(model)
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        tr.optimizer.step()
        tr.scheduler.step()
        return float(advantage.mean())
