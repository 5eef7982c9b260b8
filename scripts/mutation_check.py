"""Break the decoding, training and encoder code on purpose, one plausible bug at a time, and check the tests notice.

Each mutation is a text substitution inside one function of a temporary copy of src/; the tests
named for it run against that copy (PYTHONPATH) and must fail. The unmutated copy runs first and
must pass, so a "caught" mutation is one the tests tell apart from the real code.

    python scripts/mutation_check.py            # all 124 mutations (about 25 minutes on 2 cores when there were 105)
    python scripts/mutation_check.py -k sign    # only mutations whose name contains "sign"
    python scripts/mutation_check.py --ci       # the CI_SUBSET below (about two minutes): make test runs it
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = "src/showtell/"
ARRAYS, SEARCH, SAMPLING = SRC + "decoding/arrays.py", SRC + "decoding/search.py", SRC + "decoding/sampling.py"
HUB = SRC + "models/hub_encoders.py"
D, T, H = "tests/test_decode.py::", "tests/test_training_core.py::", "tests/test_hub_encoders.py::"
TH, R, C = "tests/test_threads_cli.py::", "tests/test_reference_runs.py::", "tests/test_clients.py::"
P, PI = "tests/test_probe3_outputs.py::", "tests/test_probe3_inputs.py::"
WEBJS, W = SRC + "inference/web/showtell.js", "tests/test_web_export.py::"
G = "tests/test_gpu_check.py::test_the_gpu_check_runs_every_stage_on_the_cpu"
EXACT = "tests/test_reliability.py::test_stopped_killed_and_resumed_runs_end_as_the_uninterrupted_one"
# a mid-epoch resume that replays the epoch from its first batch (checked by two tests)
REPLAY_EPOCH = ("[dist.shard(b) for b in batches[state.step_in_epoch:]]", "[dist.shard(b) for b in batches]")
PLM, PL = SRC + "models/prefix_lm.py", "tests/test_prefix_lm.py::"


@dataclass
class Mutation:
    name: str          # the bug, in words
    file: str          # relative to the repository root
    function: str      # the substitution happens inside this top-level def/class only
    old: str
    new: str
    tests: list[str]   # pytest node ids (or files) that must catch it


MUTATIONS = [
    Mutation("drop the mask: <pad>/<start>/<unk> can be generated", ARRAYS, "mask_row",
             "        row[word] = NEG_INF", "        pass",
             [D + "test_special_tokens_are_never_generated"]),
    Mutation("renormalise after masking: reported logprobs are not the model's", SEARCH, "greedy",
             "best_lp, best = max_with_index(xp, logprobs + mask)",
             "best_lp, best = max_with_index(xp, (logprobs + mask).log_softmax(dim=-1))",
             [D + "test_greedy_beam_and_sampling_report_the_models_own_logprob"]),
    Mutation("skip the length penalty", SEARCH, "_normalise",
             "alpha == 0.0", "True",
             [D + "test_large_beam_equals_exhaustive_search", D + "test_beam_alive_at_max_length_is_unfinished_and_ranked_after_finished"]),
    Mutation("flip a sign: beam adds the negated word log-probability", SEARCH, "beam_search",
             "candidates = beams.alive_lp[:, :, None] + xp.reshape(", "candidates = beams.alive_lp[:, :, None] - xp.reshape(",
             [D + "test_large_beam_equals_exhaustive_search", D + "test_beam_size_one_is_greedy"]),
    Mutation("beam ends every hypothesis alive at max_length (forced <end>)", SEARCH, "beam_search",
             "is_end = (top_word == special.end) & valid",
             "is_end = ((top_word == special.end) | (t == max_length)) & valid",
             [D + "test_beam_alive_at_max_length_is_unfinished_and_ranked_after_finished"]),
    Mutation("beam forgets to reorder the decoder state after pruning", SEARCH, "beam_search",
             "state = select_state(state, keep, within_pictures=True)", "state = state",
             [D + "test_beam_alive_at_max_length_is_unfinished_and_ranked_after_finished",
              "tests/test_attention.py::test_beam_attention_belongs_to_the_chosen_words"]),
    Mutation("beam treats every state entry as per-picture (h and c are not reordered)", ARRAYS, "select_state",
             "within_pictures and per_picture(k)", "within_pictures",
             [D + "test_narrow_beam_equals_a_reference_beam_search",
              "tests/test_attention.py::test_beam_attention_belongs_to_the_chosen_words"]),
    Mutation("beam keeps each beam's best continuation instead of the K best overall", SEARCH, "_keep_alive",
             "beams.alive_lp, pick = topk(go_on, k)",
             "beams.alive_lp, pick = go_on.view(b, k, w).max(dim=2); pick = pick + xp.arange(k) * w",
             [D + "test_narrow_beam_equals_a_reference_beam_search"]),
    Mutation("beam ranks unfinished hypotheses among the finished by score", SEARCH, "_with_unfinished",
             "use_alive = slot >= n_done",
             "use_alive = alive_score.gather(1, alive_order[:, :1]).expand(-1, n_best) > beams.fin_score",
             [D + "test_beam_alive_at_max_length_is_unfinished_and_ranked_after_finished"]),
    Mutation("sampling reports the tempered, masked policy's logprob", SAMPLING, "sample",
             "own = logprobs.detach().gather", "own = dist.detach().gather",
             [D + "test_greedy_beam_and_sampling_report_the_models_own_logprob",
              D + "test_sample_logprobs_equal_teacher_forcing_and_carry_gradients"]),
    Mutation("sampling counts the word cut at max_length", SAMPLING, "sample",
             "counts = ends | grows", "counts = active",
             [D + "test_sample_cut_at_max_length_is_unfinished_without_a_forced_end"]),
    Mutation("sampling miscounts lengths (counts <end>)", SAMPLING, "sample",
             "lengths = lengths + grows.long()", "lengths = lengths + counts.long()",
             ["tests/test_attention.py::test_sampled_attention_captions_are_their_images_and_score_as_teacher_forcing"]),
    Mutation("samples tiled instead of image-major", SAMPLING, "sample",
             "rows.repeat_interleave(samples_per_image)", "rows.repeat(samples_per_image)",
             ["tests/test_attention.py::test_sampled_attention_captions_are_their_images_and_score_as_teacher_forcing",
              D + "test_sample_logprobs_equal_teacher_forcing_and_carry_gradients"]),
    Mutation("top-p drops the word that crosses the threshold", SAMPLING, "_filter",
             "before = probs.cumsum(dim=-1) - probs", "before = probs.cumsum(dim=-1)",
             [D + "test_sampling_top_p_draws_exactly_the_nucleus"]),
    Mutation("greedy takes the least probable word", SEARCH, "greedy",
             "best_lp, best = max_with_index(xp, logprobs + mask)",
             "best_lp, best = (logprobs + mask).masked_fill((logprobs + mask).isinf(), 1e9).min(dim=-1)",
             [D + "test_beam_size_one_is_greedy", D + "test_greedy_beam_and_sampling_report_the_models_own_logprob"]),
    Mutation("ensemble averages log-probabilities instead of probabilities", SRC + "decoding/ensemble.py", "Ensemble",
             "logsumexp(xp, xp.stack(logprobs), axis=0) - math.log(len(self.models))", "xp.mean(xp.stack(logprobs), axis=0)",
             [D + "test_ensemble_averages_probabilities"]),
    Mutation("CHAIR matches the shortest name first (a hot dog counts as a dog)", SRC + "evaluation/chair.py", "ObjectWords",
             "for n in range(min(self.longest, len(words) - i), 0, -1):",
             "for n in range(1, min(self.longest, len(words) - i) + 1):",
             ["tests/test_chair.py::test_mentions_take_the_longest_name_and_plurals",
              "tests/test_chair.py::test_chair_on_coco_instances_counted_by_hand"]),
    Mutation("tokeniser keeps every period as an abbreviation's", SRC + "evaluation/metrics.py", "_keeps_period",
             "    if word in _ABBREVIATIONS", "    return True\n    if word in _ABBREVIATIONS",
             ["tests/test_tokenizer_parity.py::test_python_tokenizer_matches_recorded_java_output"]),
    # training
    Mutation("flip the self-critical sign: samples worse than greedy become likelier", SRC + "training/scst.py",
             "SelfCritical", "loss = -(advantage", "loss = (advantage",
             [T + "test_self_critical_update_raises_the_reward_and_the_flipped_sign_lowers_it"]),
    Mutation("self-critical baseline ignores decode.block_unk", SRC + "training/scst.py", "SelfCritical",
             "d.max_length, d.block_unk)", "d.max_length)",
             [T + "test_self_critical_encodes_each_batch_once_and_its_baseline_blocks_unk"]),
    Mutation("scheduled sampling feeds back <pad>/<start>/<unk>", SRC + "models/caption_model.py", "scheduled_sampling",
             "feedable[:, list(specials.never(block_unk=True))] = -math.inf", "pass",
             ["tests/test_attention.py::test_scheduled_sampling_feeds_back_only_words_that_decoding_could_write"]),
    Mutation("only rank 0 starts self-critical training from the best model", SRC + "training/phases.py",
             "start_self_critical", "if s.run is not None and s.run.has_model():",
             "if s.run is not None and s.run.has_model() and dist.is_main():",
             [T + "test_self_critical_starts_from_the_best_model_on_every_rank"]),
    Mutation("validation decodes with default settings, not decode.*", SRC + "training/epochs.py", "validate",
             "length_penalty=d.length_penalty, block_unk=d.block_unk", "length_penalty=0.0, block_unk=True",
             [T + "test_validation_decodes_with_the_decode_settings"]),
    Mutation("more epochs on resume recompute the schedule from scratch (the rate jumps)", SRC + "training/schedules.py",
             "Plan", "return replace(self, total_steps=total_steps, decay_from_step=step, decay_from_factor=self.factor(step))",
             "return replace(self, total_steps=total_steps)",
             [T + "test_a_replanned_schedule_continues_without_a_jump_and_ends_at_zero"]),
    Mutation("the time budget's plan is measured but never applied", SRC + "training/budget.py", "BudgetPlanner",
             "state.plan, state.planned_end, self.planned_at = plan.replanned(state.global_step, end), end, step",
             "state.planned_end, self.planned_at = end, step",
             [T + "test_a_budgeted_run_ends_at_its_budget_with_the_rate_decayed"]),
    # the saved attention and Transformer runs (tests/data, scripts/make_reference_runs.py)
    Mutation("the attention gate closes where it should open", SRC + "models/attention.py", "AttentionDecoder",
             "return torch.sigmoid(gate) * context, alpha", "return torch.sigmoid(-gate) * context, alpha",
             [R + "test_greedy_and_beam_captions_and_their_logprobs_are_the_saved_ones",
              R + "test_teacher_forcing_and_scoring_give_the_saved_logprobs"]),
    Mutation("the Transformer's memory forgets where each slot is", SRC + "models/transformer.py", "TransformerDecoder",
             "return self.memory_norm(memory + self.slots)", "return self.memory_norm(memory)",
             [R + "test_greedy_and_beam_captions_and_their_logprobs_are_the_saved_ones",
              R + "test_teacher_forcing_and_scoring_give_the_saved_logprobs"]),
    # the clients people already have (serve/compat.py)
    Mutation("image-to-text refuses the untyped body InferenceClient sends for bytes", SRC + "serve/compat.py",
             "image_to_text_request", "if not content_type or content_type.startswith(RAW_TYPES)",
             "if content_type.startswith(RAW_TYPES)", [C + "test_hugging_face_image_to_text_with_a_file_bytes_and_json"]),
    Mutation("chat completions ignore n", SRC + "serve/compat.py", "chat_request",
             'asked = {"n_best": n, "beam_size": n} if n != 1 else {}', "asked = {}",
             [C + "test_openai_chat_completions_plain_n_best_and_streamed"]),
    Mutation("chat completions try to read a remote URL", SRC + "serve/compat.py", "_data_url",
             'if not url.startswith("data:"):', "if False:", [C + "test_bad_input_is_one_line_with_its_status"]),
    # probe 3: outputs that are not ours, strangers' bytes, IPv6 (tests/test_probe3_outputs.py)
    Mutation("an atomic write renames over a device or a FIFO (or a symlink to one)", SRC + "fileio.py", "atomic_write",
             "    if written_in_place(path):", "    if False:",
             [P + "test_atomic_write_into_a_fifo_reaches_its_reader",
              P + "test_atomic_write_through_a_symlink_to_dev_null_keeps_the_link",
              P + "test_evaluate_results_into_a_fifo_reaches_its_reader"]),
    Mutation("an output file may be one of the run's own files (--results RUN/model.safetensors)",
             SRC + "data/coco_results.py", "check_output_file",
             "        if Run.of(run).owns(path):", "        if False:",
             [P + "test_evaluate_refuses_results_over_the_runs_own_files",
              P + "test_caption_refuses_coco_results_over_the_runs_own_files"]),
    Mutation("the model card writes file names, captions and references as HTML", SRC + "reporting/modelcard.py",
             "markdown_text", "escaped = html.escape(str(value), quote=False)", "escaped = str(value)",
             [P + "test_model_card_escapes_html_and_table_breakers"]),
    Mutation("the model card leaves Markdown's marks live (links, images, code spans, |)", SRC + "reporting/modelcard.py",
             "markdown_text", 'escaped = "".join("\\\\" + c if c in MARKDOWN_MARKS else c for c in escaped)', "pass",
             [P + "test_model_card_escapes_html_and_table_breakers"]),
    Mutation("caption --csv writes cells a spreadsheet runs as formulas", SRC + "cli/caption.py", "csv_text",
             "return \"'\" + text if text.startswith(FORMULA_STARTS) else text", "return text",
             [P + "test_caption_csv_cells_never_start_a_formula"]),
    Mutation("evaluate's 'skipped' warning prints a file name's control bytes raw", SRC + "evaluation/evaluate.py",
             "decode_split", 'log.warning("skipped %s", shown_in(result.error, result.source))',
             'log.warning("skipped %s", result.error)',
             [P + "test_evaluate_skipped_warning_escapes_control_bytes"]),
    Mutation("the Host check compares [::1] with ::1 (serve --host ::1 answers 400)", SRC + "serve/limits.py", "host_of",
             "return ipaddress.IPv6Address(address).compressed",
             'return "[" + ipaddress.IPv6Address(address).compressed + "]"',
             [P + "test_serve_on_ipv6_loopback_answers_standard_clients"]),
    # probe 3: bombs, non-finite numbers, one range per setting (tests/test_probe3_inputs.py)
    Mutation("word vectors: a NaN or infinite number is kept", SRC + "models/embeddings.py", "_finite",
             "    if not np.isfinite(vector).all():", "    if False:",
             [PI + "test_glove_file_with_a_non_finite_number_is_refused_with_its_line",
              PI + "test_word2vec_files_with_a_non_finite_number_are_refused"]),
    Mutation("training: a non-finite loss is trained on", SRC + "training/loop.py", "train_step",
             "        check_finite(s, state, loop.phase, loss, value)\n", "",
             [PI + "test_a_non_finite_loss_stops_training_and_never_becomes_the_best_model"]),
    Mutation("training: a NaN score can be the best", SRC + "training/epochs.py", "choose_best",
             "    if not math.isfinite(value):", "    if False:",
             [PI + "test_a_nan_score_is_never_the_best"]),
    Mutation("config: a value is shown whole in a message", SRC + "config.py", "_convert", "got {shown(value)}",
             "got {value!r}",
             [PI + "test_a_long_value_is_shown_shortened_in_the_message"]),
    Mutation("config: YAML aliases are expanded without bound", SRC + "config.py", "_read_yaml",
             "    if _count_values(tree, MAX_CONFIG_VALUES) > MAX_CONFIG_VALUES:", "    if False:",
             [PI + "test_billion_laughs_config_is_refused_at_once"]),
    Mutation("config: deeply nested YAML ends in RecursionError", SRC + "config.py", "_read_yaml",
             "    except RecursionError:", "    except ZeroDivisionError:",
             [PI + "test_deeply_nested_yaml_config_is_one_line"]),
    Mutation("annotations: deeply nested JSON ends in RecursionError", SRC + "data/formats.py", "_stream_json",
             "    except RecursionError:", "    except ZeroDivisionError:",
             [PI + "test_deeply_nested_annotations_are_one_line"]),
    Mutation("annotations: deeply nested JSON Lines end in RecursionError", SRC + "data/formats.py", "_table_rows",
             "            except RecursionError:", "            except ZeroDivisionError:",
             [PI + "test_deeply_nested_annotations_are_one_line"]),
    Mutation("run: a deeply nested config.json ends in RecursionError", SRC + "run.py", "Run",
             "        except RecursionError:", "        except ZeroDivisionError:",
             [PI + "test_a_runs_deeply_nested_config_json_is_one_line"]),
    Mutation("bounded reader: a pipe or device is read past the limit", SRC + "fileio.py", "read_bounded",
             "            if len(data) > limit:\n                raise too_large(\"its content\")", "            pass",
             [PI + "test_the_bounded_reader_stops_a_pipe_at_its_limit"]),
    Mutation("bounded reader: a regular file's size is not checked first", SRC + "fileio.py", "read_bounded",
             "            if info.st_size > limit:\n                raise too_large(_size_text(info.st_size))",
             "            pass",
             [PI + "test_annotations_and_configs_from_dev_zero_and_sparse_files_are_refused_in_little_memory"]),
    Mutation("annotations: read unbounded", SRC + "data/formats.py", "_read_text",
             'read_bounded(path, FILE_LIMITS["annotations"], "an annotation file", DataError).decode("utf-8-sig")',
             'path.read_text(encoding="utf-8-sig")',
             [PI + "test_annotations_and_configs_from_dev_zero_and_sparse_files_are_refused_in_little_memory"]),
    Mutation("config file: read unbounded", SRC + "config.py", "load_config",
             'read_bounded(path, FILE_LIMITS["config"], "a config file", ConfigError).decode("utf-8")',
             'path.read_text(encoding="utf-8")',
             [PI + "test_annotations_and_configs_from_dev_zero_and_sparse_files_are_refused_in_little_memory"]),
    Mutation("pictures: a file is read unbounded", SRC + "data/images.py", "_read_source",
             'return read_bounded(source, limit, "a picture", lambda message: too_large)',
             "return Path(source).read_bytes()",
             [PI + "test_caption_of_dev_zero_is_refused_in_little_memory"]),
    Mutation("word vectors: a text line is read unbounded", SRC + "models/embeddings.py", "_lines",
             "f.readline(MAX_LINE + 1)", "f.readline()",
             [PI + "test_word_vectors_from_dev_zero_are_refused_in_little_memory"]),
    Mutation("word2vec: the binary header's numbers are not checked", SRC + "models/embeddings.py", "_binary_word2vec",
             "            if len(header) != 2 or not all(p.isdigit() for p in header):",
             "            if len(header) != 2:",
             [PI + "test_bad_binary_word2vec_headers_are_one_line"]),
    Mutation("word2vec: the vector size is not bounded", SRC + "models/embeddings.py", "_checked_dim",
             "    if not 1 <= dim <= _max_dim():", "    if dim < 1:",
             [PI + "test_bad_binary_word2vec_headers_are_one_line"]),
    Mutation("feature cache: the manifest is not checked", SRC + "data/features.py", "FeatureCache",
             "        check_manifest(path, manifest, complete)\n", "",
             [PI + "test_feature_cache_manifest_without_records_is_one_line"]),
    Mutation("config: model.hidden_dim has no upper bound", SRC + "config.py", "ModelConfig",
             "\"LSTM hidden size (512 in the paper); the transformer decoder's width\", min=1,\n                              max=4096)",
             "\"LSTM hidden size (512 in the paper); the transformer decoder's width\", min=1)",
             [PI + "test_model_sizes_have_an_upper_bound", PI + "test_a_run_asking_for_a_huge_model_is_refused_before_allocation"]),
    Mutation("decoding options: the beam size has no upper bound", SRC + "decoding/options.py", "check_options",
             'whole_number(beam_size, spelling.name("beam_size"), maximum=MAX_BEAM, allow_none=True)',
             'whole_number(beam_size, spelling.name("beam_size"), allow_none=True)',
             [PI + "test_beam_size_and_n_best_have_one_upper_bound_everywhere"]),
    Mutation("decoding options: any positive temperature is taken", SRC + "decoding/options.py", "check_sampling",
             "lambda v: low_t <= v <= high_t", "lambda v: v > 0",
             [PI + "test_sampling_temperature_is_finite_and_bounded"]),
    # tests that could not fail before (issue 29): CLIP against open_clip, quiet connections, re-planning,
    # the GPU check's stop and resume, the run lock, the old NIC run
    Mutation("CLIP's grid is all zeros", HUB, "ClipTrunk",
             "return _grid_of_tokens(tokens), F.normalize(pooled, dim=-1)",
             "return _grid_of_tokens(tokens * 0), F.normalize(pooled, dim=-1)",
             [H + "test_the_pooled_vector_and_the_grid", H + "test_weights_from_a_local_file"]),
    Mutation("CLIP's grid is read in reverse token order", HUB, "ClipTrunk",
             "return _grid_of_tokens(tokens), F.normalize(pooled, dim=-1)",
             "return _grid_of_tokens(tokens.flip(1)), F.normalize(pooled, dim=-1)",
             [H + "test_the_pooled_vector_and_the_grid", H + "test_prepare_caches_what_the_encoder_gives"]),
    Mutation("a CLIP encoder is picture-blind (every picture encoded as a black one)", HUB, "ClipTrunk",
             "pooled, tokens = self.visual(x)", "pooled, tokens = self.visual(x * 0)",
             [H + "test_the_pooled_vector_and_the_grid"]),
    Mutation("an open_clip training checkpoint keeps its module. prefix", HUB, "_clip_model",
             'if all(k.startswith("module.") for k in state):', "if False:",
             [H + "test_an_open_clip_training_checkpoint_loads"]),
    Mutation("open_clip_config.json's preprocessing beside a file is ignored", HUB, "_clip_model",
             'preprocess = sidecar.get("preprocess_cfg") or {}', "preprocess = {}",
             [H + "test_open_clip_config_json_beside_a_file_gives_its_preprocessing"]),
    Mutation("the header deadline never closes a quiet connection (slowloris)", SRC + "serve/limits.py", "HeaderDeadline",
             "            self.transport.close()", "            pass",
             ["tests/test_serve_hardening.py::test_silent_connections_neither_block_others_nor_stay_open"]),
    Mutation("the time budget never re-plans between validations", SRC + "training/budget.py", "BudgetPlanner",
             "        elif self.steps % REPLAN_EVERY == 0 and not state.finished:\n            self.plan(s, state)\n", "",
             [T + "test_a_budget_re_plans_when_the_machine_slows_down"]),
    Mutation("the time budget never stops training (--max-minutes ignored)", SRC + "training/loop.py", "should_stop",
             "late = deadline is not None and dist.is_main() and budget.clock() > deadline", "late = False", [G]),
    Mutation("a resume mid-epoch replays the epoch's batches from its first", SRC + "training/loop.py", "train_epoch",
             *REPLAY_EPOCH, [G]),
    Mutation("train takes no lock on its run folder", SRC + "training/entry.py", "_lock",
             'return Run(out).locked(command, create=command == "train") if out is not None and dist.is_main() '
             'else nullcontext()',
             "return nullcontext()",
             ["tests/test_run_folders.py::test_two_trainings_into_one_new_folder_do_not_both_run"]),
    Mutation("a run's lock is never acquired (filelock not consulted)", SRC + "run.py", "Run",
             "            lock.acquire()\n", "            pass\n",
             ["tests/test_run_folders.py::test_two_trainings_into_one_new_folder_do_not_both_run"]),
    Mutation("NIC's initial cell state squashed by tanh (an old run decodes differently)", SRC + "models/nic.py",
             "NICDecoder", "c = self.init_c(image).view(b, self.num_layers, self.hidden_dim)",
             "c = torch.tanh(self.init_c(image)).view(b, self.num_layers, self.hidden_dim)",
             ["tests/test_old_runs.py::test_an_old_run_captions_as_it_did_when_it_was_saved"]),
    Mutation("NIC every_step: decoding steps without the picture beside the word", SRC + "models/nic.py",
             "NICDecoder", 'picture=state.get("picture_input"))', 'picture=state.get("picture_input") * 0)',
             [D + "test_sample_logprobs_equal_teacher_forcing_and_carry_gradients[every_step]",
              "tests/test_model.py::test_overfits_a_tiny_batch_and_greedy_reads_the_captions_back[every_step]"]),
    Mutation("config: a file's by_decoder settings are ignored", SRC + "config.py", "load_config",
             "by_decoder.get(chosen, {})", "{}",
             ["tests/test_config.py::test_a_preset_gives_one_decoder_its_own_settings_under_what_set_gives",
              "tests/test_config.py::test_by_decoder_in_a_config_file"]),
    Mutation("config: the decoder --set chooses does not pick the file's by_decoder settings", SRC + "config.py",
             "load_config", 'chosen = overrides.get("model.decoder", values.get(', "chosen = (values.get(",
             ["tests/test_config.py::test_a_preset_gives_one_decoder_its_own_settings_under_what_set_gives"]),
    Mutation("config: by_decoder values are checked only when their decoder is chosen", SRC + "config.py",
             "_by_decoder", "            _value(name, raw, where, known, hints)\n", "            pass\n",
             ["tests/test_config.py::test_by_decoder_in_a_config_file"]),
    Mutation("fine-tuning never unfreezes the encoder", SRC + "training/phases.py", "start_finetuning",
             "    s.model.encoder.freeze(False)\n", "\n",
             ["tests/test_features.py::test_finetuning_unfreezes_the_encoder_and_leaves_the_cache"]),
    Mutation("small_narrow builds the small CNN's full width", SRC + "models/encoder.py", "build_small",
             "SmallCNN(SMALL_CHANNELS[name])", "SmallCNN()",
             ["tests/test_encoders.py::test_one_encoder_gives_the_vector_and_the_grid"]),
    Mutation("the schema offers attention maps to a model without attention", SRC + "serve/app.py", "create_app",
             "include_in_schema=captioner.has_attention", "include_in_schema=True",
             ["tests/test_schema.py::test_schemathesis_with_every_check_finds_nothing"]),
    Mutation("chat completions take a null stream flag's {} as false", SRC + "serve/compat.py", "chat_request",
             "stream = False if stream is None else stream", "stream = stream or False",
             ["tests/test_schema.py::test_schemathesis_with_every_check_finds_nothing"]),
    # one owner for each concept (issue 30)
    Mutation("a data spec is split at its last '=' (val=a=b.json reads b.json)", SRC + "data/formats.py",
             "parse_data_spec", 'split, sep, path = str(spec).partition("=")', 'split, sep, path = str(spec).rpartition("=")',
             ["tests/test_data_spec.py"]),
    # exact resume (tests/test_reliability.py): a resumed run is an uninterrupted one, bit for bit
    Mutation("exact-resume: a resume forgets where torch's random generator was", SRC + "training/state.py", "set_rng_state",
             '    torch.set_rng_state(saved["torch"])\n', "\n",
             [EXACT]),
    Mutation("exact-resume: a resume does not restore the optimiser (Adam's moments start again)",
             SRC + "training/entry.py", "_resume", 'optimizer.load_state_dict(saved["optimizer"])', "pass",
             [EXACT]),
    Mutation("exact-resume: a resume mid-epoch replays the epoch's batches from its first", SRC + "training/loop.py",
             "train_epoch", *REPLAY_EPOCH, [EXACT]),
    # threads: --threads 1 is what runs (tests/test_threads_cli.py, with OMP_NUM_THREADS unset)
    Mutation("the training loop never looks at the thread policy", SRC + "training/loop.py", "train_step",
             "    check_threads()\n", "\n", [TH + "test_train"]),
    Mutation("prepare never looks at the thread policy", SRC + "training/prepare.py", "_encode_rows",
             "            check_threads()\n", "\n", [TH + "test_prepare"]),
    Mutation("the Captioner's loop over chunks never looks at the thread policy", SRC + "inference/captioner.py",
             "Captioner", "            check_threads()   # the loop", "            pass   # the loop",
             [TH + "test_captioning_commands"]),
    Mutation("evaluate's decode loop never looks at the thread policy", SRC + "evaluation/evaluate.py", "decode_split",
             "            check_threads()   # the loop", "            pass   # the loop",
             [TH + "test_captioning_commands"]),
    Mutation("the service's batcher never looks at the thread policy", SRC + "serve/microbatch.py", "MicroBatcher",
             "                check_threads()   # the batcher", "                pass   # the batcher",
             [TH + "test_serve"]),
    Mutation("evaluate names the device as Python does whoever calls it", SRC + "evaluation/evaluate.py", "evaluate_run",
             'TorchRuntime.load([run, *others], device, spelling.name("device"))', 'TorchRuntime.load([run, *others], device)',
             ["tests/test_arguments.py::test_evaluate_names_arguments_as_its_caller_spells_them"]),
    Mutation("train ignores --threads", SRC + "cli/commands.py", "thread_setting",
             "    if args.threads is not None or", "    if False or",
             [TH + "test_train"]),
    Mutation("caption, evaluate and score ignore --threads", SRC + "cli/main.py", "main",
             "configure_threads(thread_setting(args),", "configure_threads('auto',",
             [TH + "test_captioning_commands", TH + "test_serve"]),
    # the browser's port of search.py and of the picture geometry (tests/test_web_export.py, Chromium)
    Mutation("web: beam search forgets the length penalty", WEBJS, "normalise",
             "alpha === 0 ? logprob :", "true ? logprob :", [W + "test_decoding_equals_search_py_on_a_table_model"]),
    Mutation("web: beam search ends every live hypothesis at max_length (forced <end>)", WEBJS, "beamSearch",
             "isEnd = topWord.map((x, i) => x === END && valid[i])",
             "isEnd = topWord.map((x, i) => (x === END || t === opts.maxLength) && valid[i])",
             [W + "test_decoding_equals_search_py_on_a_table_model"]),
    Mutation("web: greedy ignores the special-token mask", WEBJS, "greedy",
             "const lp = logprobs[v] + mask[v];", "const lp = logprobs[v];",
             [W + "test_decoding_equals_search_py_on_a_table_model"]),
    Mutation("web: beam search drops the hypotheses cut at max_length", WEBJS, "withUnfinished",
             "if (Number.isFinite(h.score)) out.push(h);", "if (h.finished) out.push(h);",
             [W + "test_decoding_equals_search_py_on_a_table_model"]),
    Mutation("web: beam search forgets to reorder the decoder state", WEBJS, "beamSearch",
             "state = model.selectRows(next, beams);", "state = next;",
             [W + "test_browser_captions_equal_pytorch"]),
    Mutation("web: preprocessing resizes without antialiasing", WEBJS, "precomputeCoeffs",
             "const filterscale = Math.max(scale, 1);", "const filterscale = 1;",
             [W + "test_preprocessing_equals_pillow"]),
    Mutation("web: the centre crop rounds half up (JavaScript's Math.round, not Python's round)", WEBJS, "centerCrop",
             "roundHalfEven((img.width - side) / 2)", "Math.round((img.width - side) / 2)",
             [W + "test_preprocessing_equals_pillow"]),
    Mutation("web: pixels fed channels-last to the encoder", WEBJS, "prepare",
             "chw[c * s + i] = out.data[i * 3 + c]", "chw[i * 3 + c] = out.data[i * 3 + c]",
             [W + "test_preprocessing_equals_pillow", W + "test_browser_captions_equal_pytorch"]),
    Mutation("web: the page reads the canvas's pixels as BGR", WEBJS, "toRGB",
             "data[3 * i + c] = a === 255 ? rgba[4 * i + c]", "data[3 * i + c] = a === 255 ? rgba[4 * i + 2 - c]",
             [W + "test_browser_captions_equal_pytorch"]),
    Mutation("web: the page's import map pins no integrity hash for onnxruntime-web", SRC + "inference/web_export.py",
             "_page", '"integrity": {runtime["module"]: runtime["integrity"][runtime["module"]]}', '"integrity": {}',
             [W + "test_a_tampered_onnxruntime_web_is_refused_with_a_message"]),
    # encoders
    Mutation("a ViT's grid keeps its class token", HUB, "TimmTrunk",
             "features[:, self.prefix:]", "features[:, :-self.prefix or None]",
             [H + "test_the_pooled_vector_and_the_grid"]),
    Mutation("a timm encoder's features never reach the decoder (picture-blind)", HUB,
             "TimmTrunk", "return grid, vector.flatten(1)", "return grid * 0, vector.flatten(1) * 0",
             [H + "test_a_timm_cnn_from_scratch_learns_the_scenes"]),
    Mutation("a channels-last timm map is read as channels-first", HUB, "TimmTrunk",
             "features.permute(0, 3, 1, 2) if self.channels_last_out else features", "features",
             [H + "test_the_pooled_vector_and_the_grid"]),
    Mutation("a saved CLIP run is rebuilt with OpenAI's statistics, not its tag's", HUB, "_tag_variant",
             "return built, trained_quick, open_clip.get_pretrained_cfg(built, weights)", "return built, trained_quick, {}",
             [H + "test_a_saved_clip_run_rebuilds_with_its_tags_preprocessing"]),
    Mutation("CLIP's embedding is not L2-normalised", HUB, "ClipTrunk",
             "F.normalize(pooled, dim=-1)", "pooled",
             [H + "test_the_pooled_vector_and_the_grid"]),
    Mutation("OpenAI's CLIP weights built without QuickGELU", HUB, "_tag_variant",
             "trained_quick, built = True, base + \"-quickgelu\"", "trained_quick, built = False, base",
             [H + "test_quickgelu_and_tags"]),
    Mutation("the demo's captioner never sees the picture (the encoder's features are zeroed)", SRC + "models/encoder.py",
             "Encoder", 'out = {"global": vector, "grid": grid.flatten(2).transpose(1, 2)}',
             'out = {"global": 0 * vector, "grid": 0 * grid.flatten(2).transpose(1, 2)}',
             ["tests/test_demo.py::test_demo_trains_a_captioner_that_looks_at_the_pictures"]),
    Mutation("the demo's count of samples.png pictures naming an absent shape ignores what CHAIR found",
             SRC + "cli/demo.py", "run_demo", 'absent = [report["hallucinated"].get(str(i), []) for i in picks]',
             "absent = [[] for i in picks]",
             ["tests/test_demo.py::test_demo_trains_a_captioner_that_looks_at_the_pictures"]),
    Mutation("the demo trains for a 3.5-minute budget again (a slow machine's captions name the wrong shapes)",
             SRC + "cli/demo.py", "run_demo", "        epochs = DEMO_EPOCHS", "        minutes = 3.5",
             ["tests/test_demo.py::test_demo_trains_its_fixed_epochs_unless_given_minutes"]),
    Mutation("the model card leaves out object hallucination (CHAIR, recall)", SRC + "reporting/modelcard.py",
             "_scores_section", "for m, name in OBJECT_NAMES.items():", "for m, name in {}.items():",
             ["tests/test_modelcard.py::test_evaluate_rewrites_the_card_with_scores_and_export_copies_it"]),
    Mutation("samples.png wraps bold captions at 34 characters (they run into the next column)",
             SRC + "reporting/figures.py", "samples_figure", "wrapped = _wrap(caption, 30)", "wrapped = _wrap(caption)",
             ["tests/test_evaluate.py::test_sample_captions_stay_inside_their_own_column"]),
    Mutation("prefix-lm: the prefix is zeroed (the picture never reaches the language model)", PLM, "PrefixLMDecoder",
             'return self.mapper(features["global"])', 'return 0 * self.mapper(features["global"])',
             [PL + "test_a_prefix_captioner_learns_a_small_batch"]),
    Mutation("prefix-lm: the prefix is zeroed, seen at equal steps beside a random LM (the learning test's floor)", PLM,
             "PrefixLMDecoder", 'return self.mapper(features["global"])', 'return 0 * self.mapper(features["global"])',
             ["tests/test_prefix_lm_learning.py"]),
    Mutation("prefix-lm: a run whose language model does not fit its weights is named as a generic weights mismatch",
             SRC + "run.py", "Run", 'if name.startswith("decoder.lm.") and name in own', "if False",
             ["tests/test_prefix_lm_cli.py::test_train_caption_score_evaluate_through_the_cli"]),
    Mutation("prefix-lm: a run is built from the LM folder it names, not its own copy (gone with the folder)",
             SRC + "run.py", "Run", "config.model.language_model = str(own.resolve())", "pass",
             ["tests/test_prefix_lm_cli.py::test_train_caption_score_evaluate_through_the_cli"]),
    Mutation("prefix-lm: a resume that changes a setting writes the run's own copy as its language model",
             SRC + "run.py", "Run", 'config.model.language_model = saved["model"]["language_model"]', "pass",
             ["tests/test_prefix_lm_cli.py::test_resume_and_self_critical_training_with_a_prefix_lm"]),
    Mutation("a killed replacement's staging folder stops the run from being used again", SRC + "run.py", "Run",
             "shutil.rmtree(stale, ignore_errors=True)", "stale.unlink(missing_ok=True)",
             ["tests/test_run_folders.py::test_what_a_killed_write_left_is_cleaned_files_and_folders_alike"]),
    Mutation("a prefix-LM resume forgets where torch's random generator was (inside its self-critical epoch)",
             SRC + "training/state.py", "set_rng_state", '    torch.set_rng_state(saved["torch"])\n', "\n",
             ["tests/test_prefix_lm_cli.py::test_resume_and_self_critical_training_with_a_prefix_lm"]),
    Mutation("prefix-lm: the first step feeds the start id to the LM instead of the prefix's prediction", PLM,
             "PrefixLMDecoder", 'if "first" in state:', "if False:",
             [PL + "test_greedy_equals_generate_token_for_token", PL + "test_teacher_forced_logprobs_equal_the_lms_own_loss"]),
    Mutation("prefix-lm: a frozen language model still trains", PLM, "PrefixLMDecoder",
             "lm.requires_grad_(False)", "lm.requires_grad_(True)",
             [PL + "test_a_frozen_language_model_stays_bit_identical"]),
    Mutation("prefix-lm: a frozen language model's dropout is on in training mode", PLM, "PrefixLMDecoder",
             "            self.lm.eval()", "            pass", [PL + "test_a_frozen_language_model_stays_bit_identical"]),
    Mutation("prefix-lm: decoding may choose ids beyond the tokenizer's (an LM's padded embedding rows)",
             SRC + "decoding/arrays.py", "mask_row", "row[specials.size:] = NEG_INF", "pass",
             [PL + "test_ids_beyond_the_tokenizer_are_never_generated"]),
    Mutation("prefix-lm: the loss skips GPT-2's end (real positions read as the targets that are not pad)",
             SRC + "models/caption_model.py", "CaptionModel",
             "positions = real_positions(targets, self.specials.end)", "positions = targets != self.specials.pad",
             [PL + "test_teacher_forced_logprobs_equal_the_lms_own_loss"]),
    Mutation("prefix-lm: decoding masks the end id where it doubles as start and pad (GPT-2's eos)", SRC + "vocab.py",
             "Specials", "return tuple(sorted(ids - {self.end}))", "return tuple(sorted(ids))",
             [PL + "test_greedy_equals_generate_token_for_token", PL + "test_beam_equals_generate_with_three_beams_when_captions_end"]),
]


# One mutation per area whose tests take seconds, run by tests/test_mutations_caught.py in every
# `make test`; the whole list is a manual run (it would double the suite's time on 2 cores).
CI_SUBSET = [
    "drop the mask: <pad>/<start>/<unk> can be generated",
    "flip a sign: beam adds the negated word log-probability",
    "top-p drops the word that crosses the threshold",
    "flip the self-critical sign: samples worse than greedy become likelier",
    "the attention gate closes where it should open",
    "the Transformer's memory forgets where each slot is",
    "the training loop never looks at the thread policy",
    "chat completions try to read a remote URL",
    "an output file may be one of the run's own files (--results RUN/model.safetensors)",
    "training: a non-finite loss is trained on",
    "CLIP's grid is read in reverse token order",
    "prefix-lm: the prefix is zeroed (the picture never reaches the language model)",
]


def _function_span(text: str, name: str, javascript: bool = False) -> tuple[int, int]:
    """Start and end of the top-level def/class `name` (up to the next top-level statement); in
    JavaScript, of the top-level function/class `name` (up to its closing brace in column 0)."""
    keyword = r"(?:export\s+)?(?:async\s+)?(?:function|class)" if javascript else "(?:def|class)"
    start = re.search(rf"^{keyword} {re.escape(name)}\b", text, re.M)
    if start is None:
        raise SystemExit(f"mutation_check: no function {name} (the source changed: update the mutation)")
    if javascript:
        end = re.search(r"^}", text[start.end():], re.M)
        return start.start(), start.end() + end.end() if end else len(text)
    body_start = text.index("\n", start.end()) + 1
    following = re.search(r"^(?:def|class|@)", text[body_start:], re.M)
    return start.start(), body_start + following.start() if following else len(text)


def apply(mutation: Mutation, pristine: str) -> str:
    a, b = _function_span(pristine, mutation.function, javascript=mutation.file.endswith(".js"))
    body = pristine[a:b]
    if body.count(mutation.old) != 1:
        raise SystemExit(f"mutation_check: {mutation.name!r}: expected the text once in {mutation.function}, "
                         f"found it {body.count(mutation.old)} times (update the mutation)")
    return pristine[:a] + body.replace(mutation.old, mutation.new) + pristine[b:]


def run_tests(src: Path, tests: list[str]) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    lines = [x for x in done.stdout.splitlines() if x.startswith(("FAILED", "ERROR"))] or done.stdout.splitlines()[-1:]
    return done.returncode, lines[0] if lines else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only mutations whose name contains this")
    parser.add_argument("--ci", action="store_true", help="only the CI_SUBSET")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if args.k in m.name and (not args.ci or m.name in CI_SUBSET)]
    if not chosen:   # an empty list of tests would make pytest run the whole suite
        print(f"no mutation's name contains {args.k!r}")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        every_test = sorted({t for m in chosen for t in m.tests})
        code, line = run_tests(src, every_test)
        if code != 0:
            print(f"the tests fail on the unmutated code, so nothing can be concluded: {line}")
            return 1
        print(f"baseline: the {len(every_test)} tests pass on the unmutated code")
        survived = 0
        for m in chosen:
            target = src.parent / m.file
            pristine = (ROOT / m.file).read_text()
            target.write_text(apply(m, pristine))
            started = time.time()
            code, line = run_tests(src, m.tests)
            target.write_text(pristine)
            caught = code != 0
            survived += not caught
            print(f"{'caught  ' if caught else 'SURVIVED'}  {m.name}  ({time.time() - started:.0f} s)"
                  + (f"\n          {line}" if caught else ""))
    print(f"{len(chosen) - survived} of {len(chosen)} mutations caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
