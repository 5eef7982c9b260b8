"""One typed configuration for everything: defaults here, a YAML file, then `--set key=value`.

Every setting is a dataclass field with a comment-like `help` saying what it is and why the
default. A run directory records the fully resolved config as `config.json`, so a trained model
always knows exactly how it was built and how its images must be prepared.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
import reprlib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .architectures import DECODERS, check_weights_spelling, parse_weights
from .architectures import decoder as decoder_traits
from .device import check_device_name, check_threads_setting
from .errors import ConfigError
from .fileio import FILE_LIMITS, read_bounded
from .tokenizer import language_model_name

# a YAML config is a few dozen settings; more values than this once aliases are expanded (a
# "billion laughs" file of nested aliases: 1 kB as written, billions of values) is refused
MAX_CONFIG_VALUES = 10_000


def setting(default, help: str, choices: tuple | None = None, min: float | None = None,
            max: float | None = None, above: float | None = None):
    """A config field with its documentation and the range of values it accepts: `min` and `max`
    inclusive, `above` an exclusive lower bound. Decoding options read the same ranges (decoding/options.py)."""
    return field(default=default, metadata={"help": help, "choices": choices, "min": min, "max": max, "above": above})


@dataclass
class ModelConfig:
    encoder: str = setting(
        "vgg16", "what turns a picture into a vector and a grid: 'small' (compact CNN trained from scratch on "
        "small images; 'small_narrow': the same with half its channels), a torchvision classification model "
        "name (vgg16 as in the Show and Tell write-up, resnet50, efficientnet_b0, convnext_tiny, vit_b_16, ...), "
        "'timm:NAME' (any timm model; showtell[timm]) or 'clip:NAME' (open_clip's image tower, e.g. "
        "clip:ViT-B-32; showtell[clip])")
    encoder_weights: str = setting(
        "auto", "'imagenet' (torchvision's or timm's pretrained weights, downloaded once into the library's cache), "
        "an open_clip pretrained tag for clip: encoders ('openai', 'laion2b_s34b_b79k', ...), 'none' (random "
        "initialisation), the path of a .pth/.safetensors state dict, or 'auto': imagenet for torchvision and timm "
        "encoders, openai for clip:, none for 'small' and 'small_narrow'")
    freeze_encoder: bool | None = setting(
        None, "keep the CNN fixed; empty (auto) freezes pretrained weights (their features can then be "
        "cached) and trains random ones. A frozen random CNN is refused: it would caption every picture alike")
    decoder: str = setting("nic", "sentence model: 'nic' (Show and Tell LSTM), 'attention' (Show, Attend and Tell) "
                           "'transformer' (a Transformer decoder attending to the encoder's grid) or 'prefix-lm' (the picture as "
                           "a prefix to a pretrained language model, ClipCap; see model.language_model)",
                           choices=tuple(DECODERS))
    image_injection: str = setting(
        "init_state", "how the image conditions the LSTM: as its initial hidden/cell state "
        "(init_state), as its input at step -1 (first_input, as in the paper), or as its initial state and "
        "beside every word (every_step)",
        choices=("init_state", "first_input", "every_step"))
    embed_dim: int = setting(512, "word embedding size (follows the vectors when word_embeddings is set)", min=1,
                             max=4096)
    hidden_dim: int = setting(512, "LSTM hidden size (512 in the paper); the transformer decoder's width", min=1,
                              max=4096)
    num_layers: int = setting(1, "stacked LSTM layers", min=1, max=8)
    dropout: float = setting(0.5, "dropout on embeddings and LSTM outputs (the paper's main regulariser)", min=0.0, max=0.95)
    attention_dim: int = setting(512, "size of the attention MLP (attention decoder only)", min=1, max=4096)
    attention_regularization: float = setting(
        1.0, "weight of the doubly stochastic attention penalty (Xu et al.'s lambda; attention decoder only)", min=0.0)
    transformer_layers: int = setting(
        2, "layers of the transformer decoder (few by default: the built-in scenes' captions are short and a CPU step "
        "is costly)", min=1, max=24)
    transformer_heads: int = setting(
        4, "attention heads of the transformer decoder; model.hidden_dim must be a multiple of it", min=1, max=64)
    transformer_ff_dim: int = setting(
        512, "inner size of the transformer decoder's feed-forward layers (512 rather than the usual 4x the width: "
        "1024 made a training step about twice as slow at the synth preset's sizes on a CPU)", min=1, max=16384)
    transformer_positions: str = setting(
        "learned", "word positions of the transformer decoder: 'learned' or 'sinusoidal' (fixed, Vaswani et al.)",
        choices=("learned", "sinusoidal"))
    transformer_tie_embeddings: bool = setting(
        False, "transformer decoder: the output layer scores words with the word embeddings themselves (Press & Wolf "
        "2017), through a projection when model.embed_dim differs from model.hidden_dim")
    transformer_attention_layer: int = setting(
        -1, "which layer's cross-attention (mean over heads) the attention maps show; -1 is the last, 0 the first")
    word_embeddings: str = setting(
        "", "initialise word vectors from 'glove:PATH', 'word2vec:PATH' or 'spacy:PACKAGE' (empty: random)")
    freeze_embeddings: bool = setting(False, "keep pretrained word vectors fixed instead of fine-tuning them")
    language_model: str = setting(
        "", "model.decoder=prefix-lm: a causal language model, as a local folder with config.json, safetensors "
        "weights and tokenizer files, or a hub name (gpt2) already in your Hugging Face cache; its tokenizer "
        "replaces the word vocabulary (showtell[lm])")
    prefix_length: int = setting(
        10, "prefix-lm: how many language-model input vectors the picture becomes (ClipCap uses 10)", min=1, max=64)
    mapper: str = setting(
        "mlp", "prefix-lm: what maps the image vector to the prefix, ClipCap's two: 'mlp' (one hidden layer; "
        "train it with the language model) or 'transformer' (learned constants read the image through "
        "model.transformer_layers self-attention layers of model.transformer_heads heads; suits a frozen language model)",
        choices=("mlp", "transformer"))
    freeze_language_model: bool = setting(
        False, "prefix-lm: keep the language model's weights fixed and train only the mapper (ClipCap's "
        "Transformer-mapper recipe); false fine-tunes it too")


@dataclass
class DataConfig:
    image_size: int | None = setting(
        None, "side of the square image given to the CNN; empty means the encoder's own size "
        "(the weights' crop size for torchvision models, 64 for 'small')", min=16, max=2048)
    min_word_count: int = setting(5, "words seen fewer times in the training captions become <unk> (5 as in Karpathy's split)", min=1)
    max_caption_length: int = setting(20, "training captions are cut to this many words", min=1, max=200)
    allow_absolute_paths: bool = setting(
        False, "accept absolute image paths in annotation files; other paths must stay inside the image folder "
        "(a file naming ../../etc/passwd is refused before anything is opened)")
    skip_missing_images: bool = setting(
        False, "continue when annotated images are missing from the image folder (they are counted and reported)")
    split_ratio: str = setting(
        "0.9,0.05,0.05", "train,val,test fractions for datasets whose file gives no split "
        "(CSV/JSONL without a split column, one COCO file)")
    split_seed: int = setting(0, "seed of the random split for CSV/JSONL datasets without a split column")
    karpathy_split: str = setting(
        "", "Karpathy split JSON (dataset_coco.json) giving COCO-format files their train/val/test split by image id")
    num_workers: int = setting(0, "DataLoader worker processes that decode images (0: in the training process)", min=0, max=64)
    cache_images: str = setting(
        "auto", "keep pictures in memory once decoded (the first epoch decodes as it goes): 'auto' (when they fit in 2 GB), 'yes' or 'no'",
        choices=("auto", "yes", "no"))
    max_image_pixels: int = setting(
        89_478_485, "refuse images with more pixels than this (decompression-bomb guard; PIL's default)", min=1)


@dataclass
class TrainConfig:
    epochs: int = setting(10, "passes over the training images", min=1)
    batch_size: int = setting(32, "images per optimisation step (each with captions_per_image captions)", min=1)
    captions_per_image: int = setting(
        5, "captions trained per image per step; the CNN runs once per image, so this is nearly free", min=1, max=20)
    lr: float = setting(4e-4, "Adam learning rate of the decoder (and of a trained-from-scratch encoder)", min=0.0)
    encoder_lr: float = setting(1e-5, "learning rate of a pretrained encoder once it is fine-tuned", min=0.0)
    finetune_encoder_after: int = setting(
        -1, "unfreeze a pretrained encoder after this many epochs (-1: never); bypasses the feature cache", min=-1)
    weight_decay: float = setting(0.0, "Adam weight decay", min=0.0)
    grad_clip: float = setting(5.0, "clip the gradient norm to this (0: no clipping)", min=0.0)
    lr_schedule: str = setting("cosine", "'cosine' decay to 0 over all steps after warm-up, or 'constant'",
                               choices=("cosine", "constant"))
    warmup_steps: int = setting(100, "linear learning-rate warm-up steps", min=0)
    seed: int = setting(0, "seed for initialisation, data order and dropout (same seed, same weights)", min=0,
                        max=2 ** 63 - 1)
    max_minutes: float | None = setting(
        None, "stop cleanly after this many minutes of training, keeping the best checkpoint", min=0.0)
    budget_schedule: bool = setting(
        True, "with a time budget, measure the step rate over the first steps and plan the learning-rate decay "
        "(and the last validation) to end at the budget instead of cutting a schedule planned for train.epochs "
        "(budgeted training, Li et al. 2020); never trains more than train.epochs")
    val_metric: str = setting("CIDEr", "validation score that picks the best checkpoint (decoded captions, not teacher forcing)",
                              choices=("CIDEr", "Bleu_4", "loss"))
    val_beam_size: int = setting(1, "beam size of validation decoding (1: greedy)", min=1, max=20)
    val_max_images: int = setting(1000, "decode at most this many validation images per evaluation", min=1)
    device: str = setting("auto", "'auto' (GPU when present), 'cpu', 'cuda', 'cuda:N' or 'mps'")
    threads: str = setting(
        "auto", "CPU threads for PyTorch: 'auto' uses the cores other processes leave free and follows their load "
        "as training runs (two threads beside a busy process ran 2-10x slower than one), or a count (also --threads)")
    precision: str = setting(
        "fp32", "'bf16' runs matrix products in bfloat16 autocast; 'fp16' in float16 autocast with a gradient "
        "scaler, for GPUs without bfloat16 (V100, T4)", choices=("fp32", "bf16", "fp16"))
    log: str = setting(
        "none", "'tensorboard': also write losses, perplexity, learning rate, validation scores and captions as "
        "TensorBoard events in RUN/tensorboard while training (pip install 'showtell[tensorboard]')",
        choices=("none", "tensorboard"))
    checkpoint_every: int = setting(200, "save a resumable checkpoint every this many steps (and at each epoch's end)", min=1)
    keep_checkpoints: int = setting(3, "resumable checkpoints kept besides the best model", min=1)
    scheduled_sampling: str = setting(
        "", "feed the model's own prediction instead of the true word with a probability that grows: "
        "'linear:MAX:EPOCHS' (0 to MAX over EPOCHS) or empty for none")
    scst_epochs: int = setting(0, "self-critical (CIDEr-D reward) fine-tuning epochs after cross-entropy training", min=0)
    scst_lr: float = setting(5e-5, "learning rate of self-critical training", min=0.0)
    scst_samples: int = setting(5, "sampled captions per image in self-critical training", min=1, max=20)


@dataclass
class DecodeConfig:
    beam_size: int = setting(3, "beam width at inference (1: greedy); the paper found 3 a good trade-off", min=1, max=100)
    max_length: int = setting(20, "longest caption generated, in words", min=1, max=200)
    length_penalty: float = setting(
        0.0, "rank beams by log-probability / length**alpha; 0 ranks by log-probability alone", min=0.0, max=5.0)
    block_unk: bool = setting(True, "never generate <unk>")
    temperature: float = setting(1.0, "sampling temperature", min=1e-3, max=100.0)
    top_k: int = setting(0, "sample among the k most likely words (0: all)", min=0)
    top_p: float = setting(1.0, "sample among the smallest set of words with this much probability", above=0.0,
                           max=1.0)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {name: hints[name] for name in SECTIONS}


def all_settings() -> dict[str, dataclasses.Field]:
    """Every setting by its dotted name, e.g. 'model.hidden_dim'."""
    out = {}
    for section, cls in _section_classes().items():
        for f in dataclasses.fields(cls):
            out[f"{section}.{f.name}"] = f
    return out


_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 3, 60, 60


def shown(value: Any) -> str:
    """`repr(value)` cut short (a few elements, a few levels): what a message may show of a value
    from a file, which can be megabytes long or, through YAML aliases, billions of values deep."""
    return _SHOWN.repr(value)[:200]


def _unknown(name: str, known, where: str = "") -> ConfigError:
    close = difflib.get_close_matches(name[:100], list(known), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"{where}unknown setting {shown(name)}{hint}")


def _convert(name: str, value: Any, annotation, where: str) -> Any:
    """Check and convert one value to its field's type, or raise a one-line ConfigError."""
    args = typing.get_args(annotation)
    optional = (typing.get_origin(annotation) in (typing.Union, types.UnionType)) and type(None) in args
    if optional:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        annotation = next(a for a in args if a is not type(None))
    bad = ConfigError(f"{where}{name}: expected {getattr(annotation, '__name__', annotation)}, got {shown(value)}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise bad
    if annotation is int:
        number = whole_number_of(value, text=True)
        if number is None:
            raise bad
        return number
    if annotation is float:
        if isinstance(value, bool):
            raise bad
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(number):
            raise bad
        return number
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise bad
        return "" if value is None else str(value)
    raise bad


def whole_number_of(value, text: bool = False) -> int | None:
    """`value` as an int when it is a whole number, else None; a bool never is. From Python
    (`text=False`: the API's and the service's arguments) only an integral number counts, 2.0 does
    not. From a file or the command line (`text=True`) an int exactly as written:
    '12345678901234567891' stays itself (never through a float); a float or text such as '1e3' only
    when it is a whole number a float holds exactly (below 2**53)."""
    if isinstance(value, bool):
        return None
    if not text:
        return int(value) if isinstance(value, numbers.Integral) else None
    if not isinstance(value, (int, float, str)):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip(), 10)
        except ValueError:
            pass
    try:
        number = float(value)
    except ValueError:
        return None
    if not math.isfinite(number) or number != int(number) or abs(number) >= 2 ** 53:
        return None
    return int(number)


def _check_range(name: str, value: Any, meta, where: str) -> None:
    if value is None:
        return
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"{where}{name}: {value!r} is not one of {', '.join(meta['choices'])}")
    if meta["min"] is not None and value < meta["min"]:
        raise ConfigError(f"{where}{name}: {value!r} is below the minimum {meta['min']}")
    if meta["above"] is not None and value <= meta["above"]:
        raise ConfigError(f"{where}{name}: {value!r} must be above {meta['above']}")
    if meta["max"] is not None and value > meta["max"]:
        raise ConfigError(f"{where}{name}: {value!r} is above the maximum {meta['max']}")


def apply(config: Config, values: dict[str, Any], where: str = "") -> Config:
    """Return a copy of `config` with dotted-name `values` applied and checked."""
    known = all_settings()
    hints = _type_hints()
    result = dataclasses.replace(config, **{s: dataclasses.replace(getattr(config, s)) for s in SECTIONS})
    for name, raw in values.items():
        value = _value(name, raw, where, known, hints)
        section, key = name.split(".", 1)
        setattr(getattr(result, section), key, value)
    validate(result, where)
    return result


def _type_hints() -> dict[str, dict[str, Any]]:
    """Each section's settings' declared types, by section name."""
    return {s: typing.get_type_hints(c) for s, c in _section_classes().items()}


def _value(name: str, raw: Any, where: str, known: dict, hints: dict) -> Any:
    """One setting's value as a file or --set gives it, converted to its declared type and range-checked."""
    if name not in known:
        raise _unknown(name, known, where if where.endswith(": ") else "")
    section, key = name.split(".", 1)
    choices = known[name].metadata["choices"] or ()
    if isinstance(raw, bool) and "yes" in choices:  # YAML reads a bare `no` as False
        raw = "yes" if raw else "no"
    value = _convert(name, raw, hints[section][key], where)
    _check_range(name, value, known[name].metadata, where)
    return value


def flatten(tree: dict[str, Any], source: str) -> dict[str, Any]:
    """{'model': {'encoder': 'small'}} -> {'model.encoder': 'small'}, refusing other shapes."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (model, data, train, decode)")
    flat = {}
    for section, body in tree.items():
        if section not in SECTIONS:
            raise _unknown(str(section), SECTIONS, f"{source}: ")
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping of settings")
        for key, value in body.items():
            flat[f"{section}.{key}"] = value
    return flat


def validate(config: Config, where: str = "") -> None:
    """Checks that involve several settings."""
    ratio = config.data.split_ratio
    try:
        parts = [float(p) for p in ratio.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or any(p < 0 for p in parts) or not math.isclose(sum(parts), 1.0, abs_tol=1e-6):
        raise ConfigError(f"{where}data.split_ratio: expected three fractions 'train,val,test' summing to 1, got {ratio!r}")
    check_weights_spelling(config.model.encoder_weights, where)
    spec = config.model.word_embeddings
    if spec and spec.split(":", 1)[0] not in ("glove", "word2vec", "spacy") or (spec and ":" not in spec):
        raise ConfigError(f"{where}model.word_embeddings: expected 'glove:PATH', 'word2vec:PATH' or 'spacy:PACKAGE', got {spec!r}")
    check = decoder_traits(config.model.decoder).check      # the decoder's own rules over several settings
    if check is not None:
        check(config.model, where)
    if config.train.scheduled_sampling:
        parse_scheduled_sampling(config.train.scheduled_sampling)
    check_device_name(config.train.device, f"{where}train.device")
    check_threads_setting(config.train.threads, f"{where}train.threads")


def parse_scheduled_sampling(spec: str) -> tuple[float, float]:
    """'linear:MAX:EPOCHS' -> (MAX, EPOCHS): the probability of feeding the model's own word rises
    linearly from 0 to MAX over EPOCHS epochs (Bengio et al. 2015 use such ramps)."""
    parts = spec.split(":")
    try:
        if len(parts) != 3 or parts[0] != "linear":
            raise ValueError
        top, epochs = float(parts[1]), float(parts[2])
        if not (0.0 <= top <= 1.0) or epochs <= 0:
            raise ValueError
    except ValueError:
        raise ConfigError(f"train.scheduled_sampling: expected 'linear:MAX:EPOCHS' with 0 <= MAX <= 1 and "
                          f"EPOCHS > 0, e.g. 'linear:0.25:10', got {spec!r}") from None
    return top, epochs


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("showtell.presets").iterdir() if p.name.endswith(".yaml"))


def _count_values(tree: Any, limit: int) -> int:
    """How many values `tree` holds with aliases expanded, counting no further than `limit` + 1."""
    count, todo = 0, [tree]
    while todo and count <= limit:
        value = todo.pop()
        count += 1
        if isinstance(value, dict):
            todo.extend(value.keys())
            todo.extend(value.values())
        elif isinstance(value, (list, tuple)):
            todo.extend(value)
    return count


BY_DECODER = "by_decoder"


def _read_yaml(text: str, source: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A config file's settings, flattened, and its `by_decoder` ones: {decoder: settings}."""
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{at}") from None
    except RecursionError:
        raise ConfigError(f"{source}: values nested too deeply to be a config") from None
    if _count_values(tree, MAX_CONFIG_VALUES) > MAX_CONFIG_VALUES:
        raise ConfigError(f"{source}: holds more than {MAX_CONFIG_VALUES:,} values, counting each alias (*name) as "
                          "the values it repeats; a config is a few dozen settings")
    by_decoder = tree.pop(BY_DECODER, None) if isinstance(tree, dict) else None
    return flatten(tree or {}, source), _by_decoder(by_decoder, source)


def _by_decoder(tree: Any, source: str) -> dict[str, dict[str, Any]]:
    """`by_decoder: {attention: {decode: {beam_size: 3}}}` -> {'attention': {'decode.beam_size': 3}}:
    settings a file gives one decoder only, as fairseq's architectures give each its defaults. Every
    value is checked now, not only when its decoder is chosen."""
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: {BY_DECODER} must map decoder names to sections of settings")
    known, hints = all_settings(), _type_hints()
    settings = {}
    for decoder, body in tree.items():
        if decoder not in DECODERS:
            raise ConfigError(f"{source}: {BY_DECODER}.{shown(decoder)}: no such decoder (decoders: {', '.join(DECODERS)})")
        where = f"{source}: {BY_DECODER}.{decoder}: "
        settings[decoder] = flatten(body or {}, where[:-2])
        for name, raw in settings[decoder].items():
            _value(name, raw, where, known, hints)
        if "model.decoder" in settings[decoder]:
            raise ConfigError(f"{where}model.decoder cannot depend on the decoder")
    return settings


def load_config(config_file: str | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then a YAML file (or a built-in preset name such as 'synth') with its `by_decoder`
    settings for the decoder chosen, then KEY=VALUE overrides."""
    config, given = Config(), {}     # given: the user's word-vocabulary settings and where each came from
    overrides = parse_overrides(overrides or [])
    if config_file:
        path = Path(config_file)
        if path.suffix in (".yaml", ".yml", ".json") or path.exists():
            if not path.is_file():
                raise ConfigError(f"{config_file}: config file not found")
            try:
                text = read_bounded(path, FILE_LIMITS["config"], "a config file", ConfigError).decode("utf-8")
            except (OSError, UnicodeDecodeError) as error:
                raise ConfigError(f"{config_file}: cannot read config file ({error.__class__.__name__})") from None
            source, user_file = config_file, True
        elif config_file in preset_names():
            text = resources.files("showtell.presets").joinpath(f"{config_file}.yaml").read_text(encoding="utf-8")
            source, user_file = f"preset {config_file}", False
        else:
            raise ConfigError(f"{config_file}: no such config file or preset (presets: {', '.join(preset_names())})")
        values, by_decoder = _read_yaml(text, source)
        chosen = overrides.get("model.decoder", values.get("model.decoder", config.model.decoder))
        own = by_decoder.get(chosen, {}) if isinstance(chosen, str) else {}
        # one layer, so the decoder's own settings may mend a rule the file's others break for it
        config = apply(config, {**values, **own}, where=f"{source}: ")
        if user_file:
            given.update((name, f"{source}: {BY_DECODER}.{chosen}: " if name in own else f"{source}: ")
                         for name in WORD_SETTINGS if name in values or name in own)
    if overrides:
        config = apply(config, overrides, where="--set ")
        given.update((name, "--set ") for name in WORD_SETTINGS if name in overrides)
    return resolve(_no_word_settings(config, given))


WORD_SETTINGS = ("data.min_word_count",)   # model.word_embeddings: the decoder row's own check


def _no_word_settings(config: Config, given: dict[str, str]) -> Config:
    """A word-vocabulary setting that a user's file or --set gave (`given`: name -> where) is refused
    when the decoder, from whichever source, has its own tokenizer (a run's saved config.json, which
    holds every setting, is not checked)."""
    if decoder_traits(config.model.decoder).lm_tokenizer:
        for name, where in given.items():
            raise ConfigError(f"{where}{name}: a word-vocabulary setting, but model.decoder="
                              f"{config.model.decoder} uses the language model's own tokenizer; leave it out")
    return config


def parse_overrides(items: list[str]) -> dict[str, str]:
    """['model.hidden_dim=512', ...] -> {'model.hidden_dim': '512'}. Values stay text: each is
    converted by its setting's declared type (YAML would turn `no` into False for a choice)."""
    values = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. --set model.hidden_dim=512")
        key, raw = item.split("=", 1)
        values[key.strip()] = raw.strip()
    return values


def resolve(config: Config) -> Config:
    """Fill in the settings left to follow others ('auto' encoder weights, empty freeze_encoder; a
    language model's folder made absolute), once every source has been applied, and refuse combinations that cannot learn."""
    m = config.model
    weights = parse_weights(m.encoder, m.encoder_weights).value     # 'auto' resolved by the encoder's family
    frozen = m.freeze_encoder if m.freeze_encoder is not None else weights != "none"
    if frozen and weights == "none":
        raise ConfigError("model.freeze_encoder: a frozen encoder with random weights (model.encoder_weights=none) "
                          "gives every picture nearly the same features; set model.freeze_encoder=false or give weights")
    return dataclasses.replace(config, model=dataclasses.replace(m, encoder_weights=weights, freeze_encoder=frozen,
                                                                language_model=language_model_name(m.language_model)))


def config_from_dict(tree: dict[str, Any], source: str) -> Config:
    """Rebuild a Config saved as config.json (strict: an unknown key means a mismatched version)."""
    return resolve(apply(Config(), flatten(tree, source), where=f"{source}: "))


def describe() -> str:
    """All settings with their defaults and help, for `showtell config --list`."""
    lines = []
    for name, f in all_settings().items():
        lines.append(f"{name} = {f.default!r}\n    {f.metadata['help']}")
    return "\n".join(lines)
