"""A pretrained language model as the decoder (model.decoder=prefix-lm) beside NIC and the Transformer
decoder: training samples/s (teacher forcing, forward + backward + Adam) and beam-3 captions/s, all
at the same batch in this run. The GPT-2 rows are GPT-2's shapes with random weights (nothing is
downloaded): 124M (12 layers, 768 wide, 50,257 tokens) fine-tuned and frozen (only the mapper
trains, ClipCap's frozen recipe), and a tiny one (2 layers, 64 wide, 400 tokens, the learning
test's). Every decoder gets <end> likely after ~10 words (bench_decode's `Trained`), so beam search
does the same number of steps for each.

    python benchmarks/bench_prefix_lm.py          (about 3 minutes on 2 CPU cores)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from bench_decode import Trained
from common import machine, table, timed

from showtell.decoding.search import beam_search
from showtell.models.nic import NICDecoder
from showtell.models.prefix_lm import PrefixLMDecoder
from showtell.models.transformer import TransformerDecoder
from showtell.vocab import Specials

V, E, H, D, L = 5000, 512, 512, 512, 49     # word decoders: COCO-sized vocabulary; D = CLIP ViT-B/32's 512
B, T, BEAM, MAX, PREFIX = 32, 17, 3, 20, 10  # batch, longest caption (+ <start>), beam, words, prefix vectors


def gpt2(layers: int, width: int, heads: int, vocab: int, freeze: bool) -> PrefixLMDecoder:
    import transformers

    config = transformers.GPT2Config(vocab_size=vocab, n_positions=1024, n_embd=width, n_layer=layers, n_head=heads,
                                     bos_token_id=vocab - 1, eos_token_id=vocab - 1)
    lm = transformers.GPT2LMHeadModel(config)
    specials = Specials(start=vocab - 1, end=vocab - 1, pad=vocab - 1, unk=None, size=vocab)
    return PrefixLMDecoder(lm, specials, D, PREFIX, "mlp", freeze_language_model=freeze)


def training_step(decoder, vocab: int):
    """One teacher-forced step on B captions of 8-16 tokens -> (step function, samples per step)."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(8, T, (B,), generator=g)
    inputs = torch.randint(0, vocab - 1, (B, T), generator=g)
    positions = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    targets = torch.randint(0, vocab - 1, (B, T), generator=g)
    features = {"global": torch.randn(B, D, generator=g), "grid": torch.randn(B, L, D, generator=g)}
    optimizer = torch.optim.Adam([p for p in decoder.parameters() if p.requires_grad], 1e-4)
    decoder.train()

    def step():
        logits, _ = decoder(features, inputs, positions)
        loss = F.cross_entropy(logits.float(), targets[positions])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def main() -> str:
    torch.manual_seed(0)
    word = {"NIC (LSTM 512)": NICDecoder(V, D, E, H, dropout=0.0),
            "Transformer decoder (2 layers, 512)": TransformerDecoder(V, D, D, L, E, H, layers=2, heads=8, ff_dim=512,
                                                                      dropout=0.0)}
    decoders = {name: (model, V) for name, model in word.items()}
    decoders["prefix-LM, tiny GPT-2 (2 x 64), fine-tuned"] = (gpt2(2, 64, 4, 400, False), 400)
    decoders["prefix-LM, GPT-2 124M shape, frozen"] = (gpt2(12, 768, 12, 50257, True), 50257)
    decoders["prefix-LM, GPT-2 124M shape, fine-tuned"] = (gpt2(12, 768, 12, 50257, False), 50257)
    features = {"global": torch.randn(B, D), "grid": torch.randn(B, L, D)}
    rows, rates = [], {}
    for name, (decoder, vocab) in decoders.items():
        big = "124M" in name
        train_rate = B / timed(training_step(decoder, vocab), repeats=2 if big else 3, warmup=1,
                               min_seconds=0 if big else 0.3)
        decoder.eval()
        model = Trained(decoder)
        with torch.inference_mode():
            decode_rate = B / timed(lambda model=model: beam_search(model, features, BEAM, MAX), repeats=2 if big else 3,
                                    warmup=1, min_seconds=0 if big else 0.2)
            words = float(beam_search(model, features, BEAM, MAX).lengths[:, 0].float().mean())
        rates[name] = (train_rate, decode_rate)
        trainable = sum(p.numel() for p in decoder.parameters() if p.requires_grad)
        rows.append((name, f"{trainable / 1e6:.1f}M", f"{train_rate:,.1f}", f"{decode_rate:,.1f}", f"{words:.1f}"))
    nic = rates["NIC (LSTM 512)"]
    ratios = [f"{name}: training {r[0] / nic[0]:.3f}x NIC, beam {BEAM} {r[1] / nic[1]:.3f}x NIC"
              for name, r in rates.items() if name.startswith("prefix-LM")]
    return "\n".join([f"batch {B} (captions of 8-16 tokens; image vector {D}, grid {L}x{D} for the Transformer "
                      f"decoder), prefix of {PREFIX} vectors, MLP mapper, fp32; {machine()}", "",
                      table(rows, ("decoder", "trainable", "training samples/s", f"beam-{BEAM} captions/s",
                                   "words per caption")), "", *ratios])


if __name__ == "__main__":
    print(main())
