"""The training core: coherent defaults, the best model per phase, self-critical training, the
learning-rate plan, exact resume in its corners, and prepare under another number of processes."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from conftest import run_cli, save_preset_encoder
from safetensors import safe_open

import showtell.training.budget as budget
import showtell.training.epochs as epochs
import showtell.training.loop as loop
import showtell.training.phases as phases
import showtell.training.session as session
from showtell.config import all_settings, load_config
from showtell.data.formats import read_annotations
from showtell.errors import ConfigError
from showtell.fileio import load_weights
from showtell.training.entry import resume, train
from showtell.training.epochs import choose_best, score_of, warn_if_collapsed
from showtell.training.schedules import Plan
from showtell.training.state import TrainState

TINY = ["data.image_size=32", "model.hidden_dim=32", "model.embed_dim=16", "train.batch_size=16",
        "train.val_max_images=8", "train.warmup_steps=2", "train.checkpoint_every=3", "train.seed=4"]


def records_of(synth_dir):
    return read_annotations(str(synth_dir / "dataset.json"), None)


def weights_meta(path):
    with safe_open(path, "pt") as f:
        return f.metadata()


# --- defaults ---------------------------------------------------------------------------------------
def test_encoder_weights_and_freezing_follow_the_encoder():
    small = load_config(None, ["model.encoder=small"]).model
    assert (small.encoder_weights, small.freeze_encoder) == ("none", False)   # random weights are trained
    vgg = load_config(None).model
    assert (vgg.encoder_weights, vgg.freeze_encoder) == ("imagenet", True)    # pretrained ones start frozen
    scratch = load_config(None, ["model.encoder_weights=none"]).model
    assert scratch.freeze_encoder is False
    with pytest.raises(ConfigError, match="model.freeze_encoder: a frozen encoder with random weights"):
        load_config(None, ["model.encoder=small", "model.freeze_encoder=true"])
    with pytest.raises(ConfigError, match="model.encoder_weights: the small encoder has no ImageNet weights"):
        load_config(None, ["model.encoder=small", "model.encoder_weights=imagenet"])


@pytest.mark.parametrize("name", [n for n, f in all_settings().items() if f.metadata["choices"]])
def test_every_choice_of_every_setting_can_be_given_with_set(name):
    for choice in all_settings()[name].metadata["choices"]:
        section, key = name.split(".")
        assert getattr(getattr(load_config(None, [f"{name}={choice}"]), section), key) == choice


def test_a_yaml_no_for_a_choice_is_the_word_no(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  cache_images: no\n")
    assert load_config(str(path)).data.cache_images == "no"


def test_collapsed_validation_captions_are_warned_about_with_causes(caplog):
    config = load_config(None, ["model.encoder=small"])
    with caplog.at_level(logging.WARNING, logger="showtell"):
        warn_if_collapsed({"epoch": 1, "val_images": 100, "val_distinct_captions": 2}, config)
    assert "collapsed: 2 distinct captions for 100 pictures" in caplog.text and "train.lr" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="showtell"):
        warn_if_collapsed({"epoch": 1, "val_images": 100, "val_distinct_captions": 40}, config)
    assert caplog.text == ""


# --- the best model -----------------------------------------------------------------------------------
def test_the_best_model_is_chosen_within_one_measure_per_phase():
    config = load_config("synth")
    state = TrainState(plan=Plan(10))
    records = [{"phase": "xe", "train_loss": 2.0}, {"phase": "xe", "train_loss": 2.5},
               {"phase": "scst", "train_loss": None, "scst_greedy_cider": 0.5},
               {"phase": "scst", "train_loss": None, "scst_greedy_cider": 0.4},
               {"phase": "scst", "train_loss": None, "scst_greedy_cider": 0.6}]
    assert [choose_best(state, score_of(r, config)) for r in records] == [True, False, True, False, True]
    with_val = [{"val_loss": 1.0, "val_CIDEr": 1.0}, {"val_loss": 1.0, "val_CIDEr": 0.9, "scst_greedy_cider": 3.0}]
    state = TrainState(plan=Plan(10))
    assert [choose_best(state, score_of(r, config)) for r in with_val] == [True, False]  # one measure: val CIDEr


def test_self_critical_without_validation_keeps_its_best_by_greedy_cider(tmp_path, synth_dir):
    records = [r for r in records_of(synth_dir) if r.split == "train"]
    config = load_config("synth", [*TINY, "train.epochs=1", "train.scst_epochs=1", "train.scst_samples=2"])
    train(config, records, tmp_path / "run", show_progress=False)
    history = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["phase"] for h in history] == ["xe", "scst"] and history[1]["best"] is True
    assert history[1]["scst_greedy_cider"] >= 0
    assert weights_meta(tmp_path / "run" / "model.safetensors")["val_metric"] == "train_greedy_CIDEr"


# --- self-critical training -----------------------------------------------------------------------------
def test_self_critical_encodes_each_batch_once_and_its_baseline_blocks_unk(synth_dir, monkeypatch):
    from showtell.models.caption_model import build_model
    from showtell.training import scst
    from showtell.training.phases import SelfCriticalPhase
    from showtell.training.session import Session, make_split
    from showtell.vocab import Vocabulary

    config = load_config("synth", [*TINY, "train.scst_samples=2", "decode.max_length=6"])
    records = [r for r in records_of(synth_dir) if r.split == "train"][:4]
    vocab = Vocabulary.build((t for r in records for t in r.tokens), 1)
    model = build_model(config, vocab)
    encodings, baseline_args = [], []
    real_encode, real_greedy = model.encode, scst.greedy

    def encode(images):               # what features_of calls for pictures
        encodings.append(len(images))
        return real_encode(images)

    def greedy(*args, **kwargs):
        baseline_args.append(args)
        return real_greedy(*args, **kwargs)

    model.encode = encode
    monkeypatch.setattr(scst, "greedy", greedy)

    s = Session(config, None, model, vocab, make_split(records, model, vocab, config), None,
                torch.device("cpu"))
    images = torch.stack([s.train.images[i][1] for i in range(4)])
    model.train()
    loss, greedy_cider = SelfCriticalPhase(s).loss(s, torch.arange(4), images, TrainState(plan=Plan(1)))
    assert encodings == [4]                             # baseline and samples read the same features
    assert baseline_args[0][3] is True                  # the baseline decodes with decode.block_unk
    assert loss.requires_grad and greedy_cider >= 0


def test_self_critical_update_raises_the_reward_and_the_flipped_sign_lowers_it(monkeypatch):
    """On a one-word problem the policy gradient must move probability towards the rewarded word."""
    from showtell.vocab import END

    class OneWord(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.logits = torch.nn.Parameter(torch.zeros(6))
            self.decoder = torch.nn.Module()

        def init_state(self, features):
            return {"t": torch.zeros(features["global"].shape[0], 1)}

        def step(self, words, state):
            first = state["t"] == 0
            word_lp = torch.log_softmax(self.logits, 0).expand(words.shape[0], -1)
            end_only = torch.full_like(word_lp, -1e9)
            end_only[:, END] = 0.0
            return torch.where(first, word_lp, end_only), {"t": state["t"] + 1}, None

    from showtell.config import load_config as lc
    from showtell.training import scst

    vocab = type("V", (), {"decode": staticmethod(lambda ids: " ".join(f"w{i}" for i in ids))})()
    for sign, expect_rise in ((1.0, True), (-1.0, False)):
        torch.manual_seed(0)
        model = OneWord()
        references = [["w4"], ["w5"], ["w5 w5"]]      # CIDEr-D's document frequencies need several pictures
        critic = scst.SelfCritical(references, vocab, lc(None, ["train.scst_samples=8", "decode.max_length=3"]))
        optimizer = torch.optim.SGD(model.parameters(), lr=2.0)
        before = torch.softmax(model.logits, 0)[4].item()
        for step in range(20):
            loss, _ = critic.loss(model, {"global": torch.zeros(1, 1)}, torch.tensor([0]), step, torch.device("cpu"))
            optimizer.zero_grad()
            (sign * loss).backward()
            optimizer.step()
        after = torch.softmax(model.logits, 0)[4].item()
        assert (after > before + 0.2) if expect_rise else (after < before), (sign, before, after)


def test_self_critical_starts_from_the_best_model_on_every_rank(tmp_path, synth_dir, monkeypatch):
    """Only rank 0 writes the run, but every rank reads it: a rank that is not rank 0 starts the
    self-critical phase from model.safetensors too."""
    from showtell.training import distributed

    config = load_config("synth", [*TINY, "train.epochs=1", "train.scst_epochs=1"])
    train(config, records_of(synth_dir), tmp_path / "run", show_progress=False)
    from showtell.models.caption_model import build_model
    from showtell.run import Run

    run = Run(tmp_path / "run")
    model = build_model(run.config(), run.vocab(), pretrained=False)   # random weights, unlike the file
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    s = session.Session(run.config(), run, model, run.vocab(), None, None, torch.device("cpu"))
    monkeypatch.setattr(session.Session, "steps_per_epoch", property(lambda self: 5))
    state = TrainState(plan=Plan(10))
    phases.start_self_critical(s, state)
    best = run.weights()
    assert all(torch.equal(model.state_dict()[k], best[k]) for k in best) and state.phase == "scst"


# --- the learning-rate plan ------------------------------------------------------------------------------
def test_a_replanned_schedule_continues_without_a_jump_and_ends_at_zero():
    plan = Plan(total_steps=100, warmup_steps=10)
    assert plan.factor(0) == pytest.approx(0.1) and plan.factor(10) == pytest.approx(1.0)
    assert plan.factor(100) == pytest.approx(0.0, abs=1e-12)
    for step in (5, 40, 99):
        longer = plan.replanned(step, 300)
        assert longer.factor(step) == pytest.approx(plan.factor(step))
        values = [longer.factor(s) for s in range(max(step, 10), 301)]
        assert all(a >= b - 1e-12 for a, b in zip(values, values[1:])) and values[-1] == pytest.approx(0.0, abs=1e-12)


def test_a_finished_plan_extended_restarts_with_a_warm_up():
    plan = Plan(total_steps=100, warmup_steps=10)
    again = plan.replanned(100, 200)
    assert again.factor(100) == pytest.approx(0.1) and again.factor(110) == pytest.approx(1.0)
    assert again.factor(200) == pytest.approx(0.0, abs=1e-12)


def test_resume_with_more_epochs_continues_the_decay_from_where_it_stopped(tmp_path, synth_dir, monkeypatch):
    records = records_of(synth_dir)
    config = load_config("synth", [*TINY, "train.epochs=4"])
    steps = iter(range(1000))   # a stop after step 7, decided by counting steps, not by a clock
    monkeypatch.setattr(loop, "should_stop", lambda deadline, requested, device: next(steps) == 6)
    train(config, records, tmp_path / "run", show_progress=False)
    monkeypatch.undo()
    per_epoch = json.loads((tmp_path / "run" / "history.jsonl").read_text().splitlines()[0])["step"]
    assert per_epoch < 7 < 2 * per_epoch                                        # in the second epoch
    resume(tmp_path / "run", records, show_progress=False, overrides=["train.epochs=6"])
    history = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    old = Plan(4 * per_epoch, 2)
    expected = old.replanned(7, 6 * per_epoch)
    last_step_of_epoch_2 = 2 * per_epoch - 1
    assert history[1]["lr"] == pytest.approx(config.train.lr * expected.factor(last_step_of_epoch_2))
    jumped = Plan(6 * per_epoch, 2).factor(last_step_of_epoch_2)                # a plan recomputed from scratch
    assert abs(expected.factor(last_step_of_epoch_2) - jumped) > 0.01
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]


# --- exact resume in its corners --------------------------------------------------------------------------
def files_of(run):
    out = {name: (run / name).read_text() for name in ("history.jsonl",)}
    for name in ("model.safetensors", "model-xe.safetensors"):
        if (run / name).exists():
            out[name] = load_weights(run / name)
    return out


def assert_same_run(a, b):
    fa, fb = files_of(a), files_of(b)
    assert fa.keys() == fb.keys()
    assert fa["history.jsonl"] == fb["history.jsonl"]
    for name in fa:
        if name != "history.jsonl":
            assert all(torch.equal(fa[name][k], fb[name][k]) for k in fa[name]), name


class Killed(Exception):
    pass


def test_a_kill_after_validation_before_the_checkpoint_neither_repeats_history_nor_moves_model_xe(
        tmp_path, synth_dir, monkeypatch):
    """Epochs of 4 steps. With a checkpoint every 4, the newest checkpoint before each validation is
    at the validation's own step: a kill right after it used to leave its history line twice. With
    checkpoints at epoch ends only, a kill after the first self-critical validation (without a
    validation split, so that its model is the best so far) used to resume from the last
    cross-entropy checkpoint and copy the self-critical model over model-xe."""
    settings = [*TINY, "train.epochs=2", "train.scst_epochs=2", "train.scst_lr=0.01", "train.scst_samples=2"]
    datasets = {"with val": records_of(synth_dir), "train only": [r for r in records_of(synth_dir) if r.split == "train"]}
    for name, records in datasets.items():
        train(load_config("synth", settings), records, tmp_path / name, show_progress=False)
    real = epochs.warn_if_collapsed
    for kill_at, every, name in ((1, 4, "with val"), (3, 4, "with val"), (3, 100, "train only")):
        records = datasets[name]

        def kill(record, cfg, kill_at=kill_at):
            real(record, cfg)
            if record["epoch"] == kill_at:
                raise Killed

        monkeypatch.setattr(epochs, "warn_if_collapsed", kill)
        run = tmp_path / f"killed{kill_at}-{every}"
        with pytest.raises(Killed):
            train(load_config("synth", [*settings, f"train.checkpoint_every={every}"]), records, run, show_progress=False)
        monkeypatch.setattr(epochs, "warn_if_collapsed", real)
        resume(run, records, show_progress=False)
        assert_same_run(tmp_path / name, run)


def test_a_budget_stop_mid_epoch_validates_nothing_and_resumes_exactly(tmp_path, synth_dir, monkeypatch):
    records = records_of(synth_dir)
    config = load_config("synth", [*TINY, "train.epochs=2"])
    train(config, records, tmp_path / "whole", show_progress=False)
    steps = iter(range(1000))   # the budget's stop after step 3, decided by counting steps, not by a clock
    monkeypatch.setattr(loop, "should_stop", lambda deadline, requested, device: next(steps) == 2)
    summary = train(config, records, tmp_path / "stopped", show_progress=False)
    assert summary["stopped_early"] and summary["steps"] == 3
    assert not (tmp_path / "stopped" / "history.jsonl").exists()            # no validation mid-epoch
    assert weights_meta(tmp_path / "stopped" / "model.safetensors")["val_metric"].startswith("none")
    monkeypatch.undo()
    resume(tmp_path / "stopped", records, show_progress=False)
    assert_same_run(tmp_path / "whole", tmp_path / "stopped")


def test_a_resume_with_an_edited_config_is_refused_and_writes_nothing(tmp_path, trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    config["model"]["hidden_dim"] = 48
    (run / "config.json").write_text(json.dumps(config))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    done = run_cli("train", "--resume", str(run), "--set", "train.epochs=3")
    assert done.returncode == 2 and "config.json: does not describe the checkpoint's model" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_truncated_best_model_is_replaced_on_resume(tmp_path, trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    blob = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    done = run_cli("train", "--resume", str(run))
    assert done.returncode == 0 and "model.safetensors is missing or damaged" in done.stderr
    assert load_weights(run / "model.safetensors")           # readable again


# --- prepare under another number of processes ---------------------------------------------------------------
def test_prepare_resumed_with_another_world_size_equals_an_uninterrupted_cache(tmp_path, synth_dir, monkeypatch):
    from showtell.training import prepare as extract

    torch.manual_seed(2)
    weights = tmp_path / "small.safetensors"
    save_preset_encoder(weights)
    config = load_config("synth", [f"model.encoder_weights={weights}", "model.freeze_encoder=true", "data.image_size=32"])
    records = records_of(synth_dir)
    extract.prepare(records, config, tmp_path / "whole", batch_size=8, show_progress=False)

    def as_rank(rank, world):
        monkeypatch.setattr(extract.dist, "rank", lambda: rank)
        monkeypatch.setattr(extract.dist, "world_size", lambda: world)
        monkeypatch.setattr(extract.dist, "is_main", lambda: rank == 0)

    real_loader = extract.make_loader

    def dies_after(batches):
        def loader(*args, **kwargs):
            for i, item in enumerate(real_loader(*args, **kwargs)):
                if i == batches:
                    raise Killed
                yield item
        return loader

    out = tmp_path / "resharded"
    for rank, batches in ((0, 2), (1, 1)):     # two ranks of four (three batches each), killed part-way
        as_rank(rank, 4)
        monkeypatch.setattr(extract, "make_loader", dies_after(batches))
        with pytest.raises(Killed):
            extract.prepare(records, config, out, batch_size=8, show_progress=False)
    monkeypatch.undo()
    done = np.load(out / "done.npy")
    assert 0 < done.sum() < len(records)
    extract.prepare(records, config, out, batch_size=8, show_progress=False)   # one process finishes it
    assert np.array_equal(np.load(out / "global.npy"), np.load(tmp_path / "whole" / "global.npy"))


def test_a_feature_set_pickles_without_its_arrays_and_reads_batches_as_rows(tmp_path, synth_dir):
    import pickle

    from showtell.data.features import FeatureCache
    from showtell.training.prepare import prepare

    torch.manual_seed(2)
    weights = tmp_path / "small.safetensors"
    save_preset_encoder(weights, "attention")
    config = load_config("synth", [f"model.encoder_weights={weights}", "model.freeze_encoder=true", "data.image_size=32",
                                   "model.decoder=attention"])
    prepare(records_of(synth_dir), config, tmp_path / "cache", show_progress=False)
    cache = FeatureCache.open(tmp_path / "cache")
    features = cache.split_set(cache.records())
    closed = len(pickle.dumps(features))
    _ = features[0]                                             # the arrays are open now
    grid_bytes = 80 * 4 * 480 * 2
    assert len(pickle.dumps(features)) == closed < grid_bytes / 4   # records only, never the arrays
    batch = features.__getitems__([7, 2, 50, 2])
    for index, item, error in batch:
        single = features[index][1]
        assert error is None and all(torch.equal(item[k], single[k]) for k in single)


def test_validation_decodes_with_the_decode_settings(tmp_path, synth_dir, monkeypatch):
    seen = []
    real = epochs.validation_scores

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(epochs, "validation_scores", spy)
    config = load_config("synth", [*TINY, "train.epochs=1", "decode.length_penalty=0.7", "decode.block_unk=false",
                                   "train.val_beam_size=2"])
    train(config, records_of(synth_dir), tmp_path / "run", show_progress=False)
    assert seen and seen[0]["length_penalty"] == 0.7 and seen[0]["block_unk"] is False


# --- a time budget ------------------------------------------------------------------------------------------
class FakeClock:
    """Seconds that pass only when training looks at the clock: a budget test that does not depend
    on how fast (or how busy) the machine is."""

    def __init__(self, tick: float):
        self.now, self.tick = 1000.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


@pytest.mark.parametrize("decoder", ["nic", "attention"])
def test_a_budgeted_run_ends_at_its_budget_with_the_rate_decayed(tmp_path, synth_dir, monkeypatch, decoder):
    records = records_of(synth_dir)
    settings = [*TINY, "train.epochs=50", "train.warmup_steps=5", f"model.decoder={decoder}", "model.attention_dim=16"]
    runs = {}
    for budgeted in (True, False):
        monkeypatch.setattr(budget, "clock", FakeClock(0.25))
        config = load_config("synth", [*settings, f"train.budget_schedule={budgeted}"])
        summary = train(config, records, tmp_path / str(budgeted), show_progress=False, max_minutes=0.5)
        runs[budgeted] = summary, [json.loads(x) for x in (tmp_path / str(budgeted) / "history.jsonl").read_text().splitlines()]
    (planned, history), (cut, cut_history) = runs[True], runs[False]
    # the plan fits the budget: far fewer steps than 50 epochs, ending validated with the rate near zero
    assert planned["planned_steps"] == planned["steps"] == history[-1]["step"] < 50 * 4
    assert history[-1]["lr"] < 0.1 * 0.002 and not planned["stopped_early"]
    # without a plan the same budget cuts a 50-epoch schedule at a high rate
    assert cut["stopped_early"] and cut_history[-1]["lr"] > 0.5 * 0.002


class SlowingClock(FakeClock):
    """A FakeClock whose seconds pass `factor` times faster after `after` readings: a machine that
    slows down (another job starts) once the budget's first plan is made."""

    def __init__(self, tick: float, after: int, factor: float):
        super().__init__(tick)
        self.readings, self.after, self.factor = 0, after, factor

    def __call__(self) -> float:
        self.readings += 1
        self.now += self.tick * (self.factor if self.readings > self.after else 1.0)
        return self.now


def test_a_budget_re_plans_when_the_machine_slows_down(tmp_path, synth_dir, monkeypatch, capsys):
    """The first plan is made at full speed; just after the first validation every step takes 3x as
    long. Epochs are 64 steps (batch 1), far more than budget.REPLAN_EVERY, and at the slow speed the
    budget ends about 45 steps after the slowdown, inside the second epoch: only the periodic
    re-plan (every REPLAN_EVERY steps, not the one after each validation) can see the slowdown in
    time. The run must still end its decay and its last validation inside the budget, and near it."""
    from showtell.cli.main import setup_logging

    setup_logging()
    records = records_of(synth_dir)
    clock = SlowingClock(0.1, after=200, factor=3.0)     # 3 readings a step: slow from just after the first epoch
    monkeypatch.setattr(budget, "clock", clock)
    started = clock.now
    config = load_config("synth", [*TINY, "train.epochs=500", "train.warmup_steps=5", "train.batch_size=1",
                                   "train.checkpoint_every=1000"])
    summary = train(config, records, tmp_path / "run", show_progress=False, max_minutes=1.0)
    used = clock.now - started
    history = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    per_epoch = history[0]["step"]
    assert per_epoch >= 5 * budget.REPLAN_EVERY, "epochs too short: validation re-plans would hide the periodic one"
    assert clock.readings > clock.after, "the clock never slowed: the test would not test re-planning"
    assert summary["planned_steps"] == summary["steps"] == history[-1]["step"] and not summary["stopped_early"]
    assert per_epoch < summary["steps"] < 2 * per_epoch                # it ended inside the second epoch
    assert history[-1]["lr"] < 0.1 * config.train.lr                   # the decay ran to (near) zero
    assert 0.95 * 60 <= used <= 60 + 1.0                             # within 5% of the budget, not past it
    replans = [int(x.split("re-planned at step ")[1].split(":")[0]) for x in capsys.readouterr().err.splitlines()
               if "time budget re-planned at step " in x]
    assert any(step % per_epoch for step in replans), replans          # re-planned mid-epoch, not only at validations
