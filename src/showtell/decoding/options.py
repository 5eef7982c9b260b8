"""Decoding options, checked once for the Python API, the CLI and the service.

`check_options` turns what a caller asked for (beam size, n-best, maximum length, attention maps,
sampling) and the run's `decode` settings into one frozen `DecodeOptions`, or raises an
`ArgumentError` that names the option as that caller spells it: `beam_size` in Python and HTTP,
`--beam-size` on the command line. The rules:

- beam size, n-best and maximum length are whole numbers of at least 1, at most the config's
  bounds for `decode.beam_size` (100; n-best too, also when sampling) and `decode.max_length` (200);
- beam search keeps at most `beam_size` alternatives, so `n_best <= beam_size` unless sampling;
- attention maps need a decoder that attends (attention or transformer);
- sampling options: a temperature within `decode.temperature`'s range (0.001 to 100: beyond, the
  tempered probabilities overflow to NaN), top_k >= 0, top_p within `decode.top_p`'s (0, 1], and a
  seed torch accepts.

The ranges are the config's own (config.py), and so is what counts as a whole number
(`whole_number_of`), so a setting and an argument can never disagree.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from ..config import all_settings, whole_number_of
from ..errors import ArgumentError


def decoding_label(beam_size: int) -> str:
    """'greedy', 'beam 3', ...: a decoding in words, as tables, reports and the model card name it."""
    return "greedy" if beam_size == 1 else f"beam {beam_size}"

SAMPLING_KEYS = ("temperature", "top_k", "top_p", "seed")
SEED_RANGE = (-(1 << 63), (1 << 64) - 1)     # what torch.Generator.manual_seed accepts


def _bounds(setting: str) -> tuple:
    meta = all_settings()[setting].metadata
    return meta["min"], meta["max"]


MAX_BEAM = _bounds("decode.beam_size")[1]
MAX_LENGTH = _bounds("decode.max_length")[1]
TEMPERATURE_RANGE = _bounds("decode.temperature")
TOP_P_ABOVE, TOP_P_MAX = all_settings()["decode.top_p"].metadata["above"], _bounds("decode.top_p")[1]


@dataclass(frozen=True)
class Spelling:
    """How a caller names the options in messages: `flags` maps an option to its name there, and
    `with_value` says whether a message that leads with an option also shows the value given."""

    flags: tuple[tuple[str, str], ...] = ()
    with_value: bool = False

    def name(self, option: str) -> str:
        return dict(self.flags).get(option, option)

    def lead(self, option: str, value) -> str:
        return f"{self.name(option)} {value}" if self.with_value else self.name(option)


PYTHON = Spelling()
HTTP = Spelling((("return_attention", "attention"),))
CLI = Spelling((("beam_size", "--beam-size"), ("n_best", "--n-best"), ("max_length", "--max-length"),
                ("return_attention", "--attention"), ("sampling", "--sample"), ("temperature", "--temperature"),
                ("top_k", "--top-k"), ("top_p", "--top-p"), ("seed", "--seed"), ("batch_size", "--batch-size"),
                ("device", "--device"), ("max_images", "--max-images"), ("results_file", "--results")),
               with_value=True)


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_k: int
    top_p: float
    seed: int


@dataclass(frozen=True)
class DecodeOptions:
    """Everything a decoding pass needs besides the model; hashable, so the service's batcher can
    caption requests with equal options together."""

    beam_size: int
    n_best: int
    max_length: int
    length_penalty: float = 0.0
    block_unk: bool = True
    return_attention: bool = False
    sampling: Sampling | None = None


def whole_number(value, name: str, minimum: int = 1, maximum: int | None = None, allow_none: bool = False):
    """`value` as an int within [minimum, maximum], or an ArgumentError naming `name`."""
    if value is None and allow_none:
        return None
    number = whole_number_of(value)
    if number is None:
        raise ArgumentError(f"{name}: expected a whole number, got {value!r}")
    if number < minimum:
        raise ArgumentError(f"{name}: expected {minimum} or more, got {value}")
    if maximum is not None and number > maximum:
        raise ArgumentError(f"{name}: expected at most {maximum}, got {value}")
    return number


def _real(value, name: str, accept, expected: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not accept(value):
        raise ArgumentError(f"{name}: expected {expected}, got {value!r}")
    return float(value)


def check_sampling(sampling: dict | None, defaults, spelling: Spelling = PYTHON) -> Sampling | None:
    """The sampling options with the run's `decode` settings for those not given, checked."""
    if sampling is None:
        return None
    if not isinstance(sampling, dict):
        raise ArgumentError(f"{spelling.name('sampling')}: expected a dict with {', '.join(SAMPLING_KEYS)}, "
                            f"got {type(sampling).__name__}")
    unknown = sorted(set(sampling) - set(SAMPLING_KEYS))
    if unknown:
        raise ArgumentError(f"{spelling.name('sampling')}: unknown option {unknown[0]!r} (expected {', '.join(SAMPLING_KEYS)})")
    low_t, high_t = TEMPERATURE_RANGE
    temperature = _real(sampling.get("temperature"), spelling.name("temperature"), lambda v: low_t <= v <= high_t,
                        f"a number from {low_t:g} to {high_t:g}")
    top_p = _real(sampling.get("top_p"), spelling.name("top_p"), lambda v: TOP_P_ABOVE < v <= TOP_P_MAX,
                  f"a number in ({TOP_P_ABOVE:g}, {TOP_P_MAX:g}]")
    top_k = whole_number(sampling.get("top_k"), spelling.name("top_k"), minimum=0, allow_none=True)
    low, high = SEED_RANGE
    seed = whole_number(sampling.get("seed"), spelling.name("seed"), minimum=low, maximum=high, allow_none=True)
    return Sampling(defaults.temperature if temperature is None else temperature,
                    defaults.top_k if top_k is None else top_k,
                    defaults.top_p if top_p is None else top_p, seed or 0)


def check_options(defaults, has_attention: bool, *, beam_size=None, n_best=1, max_length=None,
                  return_attention: bool = False, sampling: dict | None = None,
                  spelling: Spelling = PYTHON) -> DecodeOptions:
    """What to decode with: the caller's options over the run's `decode` settings (`defaults`, a
    DecodeConfig), checked by the rules in this module's docstring."""
    beam = whole_number(beam_size, spelling.name("beam_size"), maximum=MAX_BEAM, allow_none=True) or defaults.beam_size
    n_best = whole_number(n_best, spelling.name("n_best"), maximum=MAX_BEAM)
    length = whole_number(max_length, spelling.name("max_length"), maximum=MAX_LENGTH, allow_none=True)
    chosen = check_sampling(sampling, defaults, spelling)
    if chosen is None and n_best > beam:
        raise ArgumentError(f"{spelling.lead('n_best', n_best)}: beam search keeps at most {spelling.name('beam_size')} "
                            f"alternatives ({n_best} > {beam}); raise {spelling.name('beam_size')} or sample")
    if return_attention and not has_attention:
        raise ArgumentError(f"{spelling.name('return_attention')}: not an attention model "
                            "(model.decoder=attention or transformer)")
    return DecodeOptions(beam, n_best, length or defaults.max_length, defaults.length_penalty, defaults.block_unk,
                         bool(return_attention), chosen)
