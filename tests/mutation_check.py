"""Mutation check: break each behaviour README promises once, and show that its tests fail.

Each mutation below replaces one exact piece of code (it must occur exactly once) in a copy of the
checkout (`git ls-files`, tracked and untracked-but-not-ignored files) and runs
`python -m pytest -x -q NODES` there, PYTHONPATH set to the copy, so the copy's code is what every
test and subprocess imports. Result per mutation: "caught" (pytest exit 1: a test failed),
"SURVIVED" (exit 0: the tests pass on broken code), "skipped: REASON" (exit 0, the tests skipped)
or "error (...)" (a collection error, a timeout, pytest-timeout's included: nothing proven). The
unmutated nodes run once first and must pass.

    .venv/bin/python tests/mutation_check.py              # all, then a Markdown table
    .venv/bin/python tests/mutation_check.py --list
    .venv/bin/python tests/mutation_check.py --only data-rank-ignored

Exit status 1 when any mutation survived or errored (or the unmutated tests fail), else 0.
Not named test_*: pytest does not collect it.
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
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 3600  # per pytest run; the slowest take minutes alone, many more beside a busy job
# pytest-timeout's default limit per test, raised from setup.cfg's 900 s: on a machine shared with a
# running job the spawned-process tests can pass 900 s, and a timeout proves nothing either way
# (tests with their own timeout marker keep it)
TEST_TIMEOUT_S = 1800


class Mutation(NamedTuple):
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


TRAINER = "usad_upstream/distill/trainer.py"
PROMISES_TRAINER = "tests/test_promises_trainer.py::"
SIGTERM = PROMISES_TRAINER + "test_sigterm_then_the_same_command_gives_the_losses_of_an_uninterrupted_run"
KEEP_LAST = PROMISES_TRAINER + "test_keep_last_prunes_and_a_rerun_resumes_from_the_newest_checkpoint"
PROCESS_COUNT = PROMISES_TRAINER + "test_resume_with_another_process_count_gives_the_same_losses"
ADAMW = PROMISES_TRAINER + "test_adamw_schedule_and_clipping_are_what_readme_says"
CROPS = "tests/test_promises_data.py::test_crops_are_downmixed_and_resampled_to_16k_on_values"
CHUNKS = "tests/test_promises_model.py::test_chunks_yield_each_window_of_the_batch_encoded_alone"
HEAR_FAILED = "tests/test_promises_hear.py::test_a_failed_task_is_recorded_the_rest_still_run_and_a_rerun_redoes_only_it"
REAL_DIGITS = "tests/test_corpora.py::test_speech_commands_test_voices_disjoint_and_real_digits"
SUPERB_BY_HAND = "tests/test_results.py::test_superb_score_hand_computed"
SEVERAL_MANIFESTS = "tests/test_distill_data.py::test_several_manifests_map_one_saved_copy_whose_paths_are_read_on_demand_not_mapped"

MUTATIONS: tuple[Mutation, ...] = (
    # 1. every rank of a step draws the same micro-batches
    Mutation("data-rank-ignored", "usad_upstream/distill/data.py",
             "position = step * self.world_size * self.grad_accum + a * self.world_size + self.rank",
             "position = step * self.world_size * self.grad_accum + a * self.world_size",
             ("tests/test_distill_data.py::test_ranks_get_disjoint_micro_batches_whose_union_is_the_global_step",)),
    # 2. cached rows 1e-5 off the batched forward (README: ~1e-6)
    Mutation("cache-rows-off-by-1e-5", "usad_upstream/upstream/cache.py",
             'hidden = [h[0] for h in features["hidden_states"]]',
             'hidden = [h[0] + 1e-5 for h in features["hidden_states"]]',
             ("tests/test_feature_cache.py::test_cached_features_match_the_batched_forward",)),
    # 3. `usad convert`'s key map sends the release's query projection to our key projection and back
    Mutation("convert-q-k-swapped", "usad_upstream/release/convert.py",
             r'query_proj\.linear\.(weight|bias)", r"blocks.\1.attn.q_proj.\2"),' "\n"
             r'    (_BLOCK + r"\.0\.module\.attention\.key_proj\.linear\.(weight|bias)", r"blocks.\1.attn.k_proj.\2"),',
             r'query_proj\.linear\.(weight|bias)", r"blocks.\1.attn.k_proj.\2"),' "\n"
             r'    (_BLOCK + r"\.0\.module\.attention\.key_proj\.linear\.(weight|bias)", r"blocks.\1.attn.q_proj.\2"),',
             ("tests/test_release_convert.py::test_converted_model_is_the_release_with_our_batching",)),
    # 4. resume restores the wrong state: fresh RNG streams, no optimizer moments, no scheduler, no sampler position
    Mutation("resume-rng-reseeded", TRAINER,
             'set_rng_state(state["rng"][rank], device)',
             'torch.manual_seed(tc["seed"] * 1000 + rank)',
             (SIGTERM,)),
    Mutation("resume-optimizer-not-restored", TRAINER,
             '        optimizer.load_state_dict(state["optimizer"])\n', "", (SIGTERM,)),
    Mutation("resume-scheduler-not-restored", TRAINER,
             '        scheduler.load_state_dict(state["scheduler"])\n', "", (SIGTERM,)),
    Mutation("resume-sampler-not-restored", TRAINER,
             '        data.load_state_dict(state["sampler"])\n', "", (SIGTERM,)),
    # 5. writes straight to the target (no temp file + rename); one entry per mid-write-failure test
    *(Mutation(f"atomic-write-direct/{what}", "usad_upstream/checkpoint.py",
               "    path.parent.mkdir(parents=True, exist_ok=True)\n    fd, tmp",
               "    path.parent.mkdir(parents=True, exist_ok=True)\n    return write(str(path))\n    fd, tmp",
               (f"tests/test_promises_io.py::{test}",))
      for what, test in (("checkpoint", "test_a_checkpoint_write_that_fails_midway_leaves_the_old_file"),
                         ("distill-manifest", "test_a_distillation_manifest_write_that_fails_midway_leaves_the_old_manifest"),
                         ("run-manifest", "test_a_run_manifest_write_that_fails_midway_leaves_the_old_manifest"))),
    # 6. train.keep_last keeps one too many / deletes the newest; a rerun resumes from the oldest checkpoint
    Mutation("keep-last-keeps-one-more", TRAINER,
             "sorted(path.parent.glob(CKPT_GLOB))[:-keep_last]", "sorted(path.parent.glob(CKPT_GLOB))[:-keep_last - 1]",
             (KEEP_LAST,)),
    Mutation("keep-last-deletes-newest", TRAINER,
             "sorted(path.parent.glob(CKPT_GLOB))[:-keep_last]", "sorted(path.parent.glob(CKPT_GLOB), reverse=True)[:-keep_last]",
             (KEEP_LAST,)),
    Mutation("resume-from-oldest-checkpoint", TRAINER,
             "return ckpts[-1] if ckpts else None", "return ckpts[0] if ckpts else None", (KEEP_LAST,)),
    # 7. another process count: a step's data position forgets grad_accum; DDP's mean not undone
    Mutation("data-position-without-grad-accum", "usad_upstream/distill/data.py",
             "position = step * self.world_size * self.grad_accum + a * self.world_size + self.rank",
             "position = step * self.world_size + a * self.world_size + self.rank",
             (PROCESS_COUNT,)),
    Mutation("ddp-gradients-averaged", TRAINER,
             "(out.total * world).backward()", "out.total.backward()", (PROCESS_COUNT,)),
    # 8. optimizer: betas, eps, decay on biases/norms, warmup, clipping
    Mutation("adamw-beta2-0.999", "usad_upstream/distill/config.py",
             '"betas": [0.9, 0.98],', '"betas": [0.9, 0.999],', (ADAMW,)),
    Mutation("adamw-eps-1e-8", "usad_upstream/distill/config.py", '"eps": 1e-6,', '"eps": 1e-8,', (ADAMW,)),
    Mutation("adamw-decay-on-biases", TRAINER,
             '{"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}',
             '{"params": [p for p in params if p.dim() < 2], "weight_decay": tc["weight_decay"]}',
             (ADAMW,)),
    Mutation("warmup-off-by-one", TRAINER, "return (step + 1) / warmup", "return step / warmup", (ADAMW,)),
    Mutation("clip-at-twice-the-value", TRAINER,
             'clip_grad_norm_(params, tc["clip_grad"])', 'clip_grad_norm_(params, 2 * tc["clip_grad"])', (ADAMW,)),
    # 9. distillation audio: channel 0 instead of the mean; upsampling (8 kHz files) skipped
    Mutation("downmix-takes-channel-0", "usad_upstream/distill/data.py",
             "wav = torch.from_numpy(data.mean(axis=1))", "wav = torch.from_numpy(data[:, 0].copy())", (CROPS,)),
    Mutation("resample-only-downwards", "usad_upstream/distill/data.py",
             "    if sr != SAMPLE_RATE:\n        from ..compat import import_torchaudio",
             "    if sr > SAMPLE_RATE:\n        from ..compat import import_torchaudio",
             (CROPS,)),
    # 10. model.chunks(): overlapping windows; windows longer than max_fbank_frames
    Mutation("chunks-overlap", "usad_upstream/model.py",
             "for start in range(0, feats.shape[1], window):", "for start in range(0, feats.shape[1], window - 2):", (CHUNKS,)),
    Mutation("chunks-window-too-long", "usad_upstream/model.py",
             "window = self.config.max_fbank_frames", "window = self.config.max_fbank_frames + 2", (CHUNKS,)),
    # 11. `usad hear run`: a failed task aborts the rest; a failed task is not recorded
    Mutation("hear-failure-aborts-the-rest", "downstream_recipes/hear/runner.py",
             """            print(f" FAILED: {info['error']} (see {log})", flush=True)\n""",
             """            print(f" FAILED: {info['error']} (see {log})", flush=True)\n            save()\n            raise\n""",
             (HEAR_FAILED,)),
    Mutation("hear-failure-not-recorded", "downstream_recipes/hear/runner.py",
             """info.update(status="failed", finished=now(), error=f"{type(exc).__name__}: {exc}")""",
             "info.update(finished=now())",
             (HEAR_FAILED,)),
    # 12. hear_api keeps every window's layers (all of them) instead of the pooled output only
    Mutation("hear-api-keeps-all-layers", "hear_api/__init__.py",
             "for part in self.encoder.chunks(*batch_fbank(audio, lens)):",
             "for part in list(self.encoder.chunks(*batch_fbank(audio, lens))):",
             ("tests/test_promises_hear.py::test_hear_api_20_minutes_of_usad_base_stay_under_2_gb",)),
    # 13. the feature cache put in front of s3prl's own fbank upstream too
    Mutation("cache-on-s3prl-fbank", "usad_upstream/upstream/hubconf.py",
             "        setattr(hub, name, entry)\n    return sorted(ENTRIES)\n",
             "        setattr(hub, name, entry)\n"
             "    from .expert import feature_cache\n"
             "    plain = getattr(hub.fbank, 'plain', hub.fbank)\n\n"
             "    def fbank(*args, **kwargs):\n"
             "        up = plain(*args, **kwargs)\n"
             "        up.cache, compute = feature_cache(), up.forward\n"
             "        up.forward = lambda wavs: up.cache(list(wavs), compute, enabled=not up.training)\n"
             "        return up\n\n"
             "    fbank.plain = plain\n"
             "    hub.fbank = fbank\n"
             "    return sorted(ENTRIES)\n",
             ("tests/test_promises_s3prl.py::test_only_the_usad_upstreams_cache_features",)),
    # 14. leaderboard numbers: SUPERB normalisation, means over the wrong task set, cells not from the test log
    Mutation("superb-score-denominator-off-by-one", "results/scores.py",
             "total += (s - f) / (best - f)", "total += (s - f) / (best - f + 1)", (SUPERB_BY_HAND,)),
    Mutation("superb-score-mean-over-missing-tasks-too", "results/scores.py",
             "value = 1000.0 * total / len(used) if used else None", "value = 1000.0 * total / len(wanted) if used else None",
             (SUPERB_BY_HAND,)),
    Mutation("hear-average-over-missing-tasks-too", "results/scores.py",
             "value = sum(scores[t] for t in used) / len(used) if used else None",
             "value = sum(scores[t] for t in used) / len(wanted) if used else None",
             ("tests/test_results.py::test_hear_average_hand_computed_and_paper",)),
    Mutation("superb-test-cell-is-last-dev", "results/s3prl_logs.py",
             "test = test_stage[-1]  # the recipe", "test = dev_obs[-1]  # the recipe",
             ("tests/test_results.py::test_test_stage_log_wins_and_tqdm_noise_is_ignored",)),
    Mutation("superb-test-cell-is-last-dev/e2e", "results/s3prl_logs.py",
             "test = test_stage[-1]  # the recipe", "test = dev_obs[-1]  # the recipe",
             ("tests/test_recipes_e2e.py::test_superb_and_hear_into_a_leaderboard",)),
    Mutation("superb-test-at-last-step-not-best-dev", "results/s3prl_logs.py",
             "test = at_best[-1] if at_best else None", "test = test_obs[-1] if test_obs else None",
             ("tests/test_results.py::test_log_log_best_dev_and_test_at_that_step",)),
    Mutation("hear-test-cell-is-validation", "results/heareval_scores.py",
             'test = sum(float(v["test_score"]) for v in splits.values()) / len(splits)',
             'test = sum(float(v["validation_score"]) for v in splits.values()) / len(splits)',
             ("tests/test_results.py::test_heareval_trainvaltest_and_kfold",)),
    # 15. corpora: real recordings written at their own rate as 16 kHz; a builder writing silence
    Mutation("corpora-resample-skipped", "downstream_recipes/corpora/audio.py",
             "if sample_rate != SR:", "if sample_rate > 48000:", (REAL_DIGITS,)),
    Mutation("corpora-speech-commands-silent", "downstream_recipes/corpora/speech_commands.py",
             "return audio.fit(audio.normalize(audio.trim(wav)), audio.SR,",
             "return 0 * audio.fit(audio.normalize(audio.trim(wav)), audio.SR,", (REAL_DIGITS,)),
    # 16. a verdict from the point estimate instead of the whole interval
    Mutation("verdict-from-point-estimate", "results/intervals.py",
             "return MET if interval.low >= threshold else", "return MET if interval.value >= threshold else",
             ("tests/test_intervals.py::test_verdicts_need_the_whole_interval",)),
    # 17. the demo's machine record name drops the CPU
    Mutation("machine-record-drops-the-cpu", "downstream_recipes/demo/machines.py",
             """return f"{cpu}-{isa}-{settings.get('distill precision', 'fp32')}\"""",
             """return f"{isa}-{settings.get('distill precision', 'fp32')}\"""",
             ("tests/test_demo.py::test_compare_puts_machines_side_by_side",)),
    # 18. a saved manifest's paths held in every process instead of read on demand
    Mutation("manifest-paths-held", "usad_upstream/distill/data.py",
             "return cls(np.load(directory / cls.INDEX, mmap_mode=\"r\"), count, file=directory / cls.TEXT)",
             "return cls(np.load(directory / cls.INDEX, mmap_mode=\"r\"), count, text=(directory / cls.TEXT).read_bytes())",
             (SEVERAL_MANIFESTS,)),
    # 19. a saved copy's unsigned lengths negated unsigned (segments mode)
    Mutation("manifest-unsigned-lengths", "usad_upstream/distill/data.py",
             "reps = -(-m.num_samples[files].astype(np.int64) // seg)", "reps = -(-m.num_samples[files] // seg)",
             (SEVERAL_MANIFESTS,)),
    # 20. a rerun of a failed static-rendezvous job starts from scratch instead of resuming
    Mutation("resume-ignores-checkpoints", TRAINER,
             "ckpt_path = latest_checkpoint(run_dir)", "ckpt_path = None",
             ("tests/test_distill_trainer.py::test_two_nodes_of_two_processes_resume_a_killed_worker_without_loss[static]",)),
)


def copy_checkout(dest: Path) -> None:
    """Copy the checkout's tracked and untracked-but-not-ignored files into `dest`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        source = REPO / rel
        if source.is_file():  # a deleted but still tracked file is skipped
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / rel)


class Run(NamedTuple):
    rc: "int | None"  # None: timed out
    failure: str  # pytest's summary line of the first failure or error ("FAILED node - message"), "" when none
    skips: list[str]  # skip reasons
    seconds: float


def run_pytest(root: Path, nodes: "tuple[str, ...]", log: Path) -> Run:
    """`pytest -x -q -rfEs -o timeout=TEST_TIMEOUT_S NODES` in `root`, PYTHONPATH set to it; the
    output goes to `log`."""
    # no stale .pyc after a restore; a wide "terminal" keeps the failure's message in pytest's summary line
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1", COLUMNS="400")
    start = time.perf_counter()
    with open(log, "w") as out:
        try:
            rc: "int | None" = subprocess.run(
                [sys.executable, "-m", "pytest", "-x", "-q", "-rfEs", "-p", "no:cacheprovider", "-o", f"timeout={TEST_TIMEOUT_S}",
                 *nodes],
                cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            rc = None
    text = log.read_text()
    failures = re.findall(r"^((?:FAILED|ERROR) \S+.*)$", text, re.M)
    skips = re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", text, re.M)
    return Run(rc, failures[0] if failures else "", skips, time.perf_counter() - start)


def outcome(run: Run) -> str:
    """What a mutated run proves: pytest's exit 1 is a failed test."""
    if run.rc == 0:
        return f"skipped: {run.skips[0]}" if run.skips else "SURVIVED"
    if run.rc == 1 and "from pytest-timeout" not in run.failure:  # a test that ran out of time proves nothing
        return "caught"
    if run.rc == 1:
        return "error (pytest-timeout)"
    return f"error (timeout {TIMEOUT_S} s)" if run.rc is None else f"error (exit {run.rc})"


def check(root: Path, m: Mutation) -> str:
    """The text of m's file in `root`, where m's old text occurs exactly once."""
    text = (root / m.file).read_text()
    count = text.count(m.old)
    assert count == 1, f"{m.name}: the old text occurs {count} times in {m.file}, not once"
    return text


def table(rows: "list[tuple[Mutation, Run]]") -> str:
    lines = ["| mutation | file | tests | result | first failure | seconds |", "|---|---|---|---|---|---|"]
    for m, run in rows:
        tests = "<br>".join(f"`{t.removeprefix('tests/')}`" for t in m.tests)
        failure = run.failure.split(" - ", 1)[-1][:120].replace("|", "\\|")
        lines.append(f"| `{m.name}` | `{m.file}` | {tests} | {outcome(run)} | {failure} | {run.seconds:.0f} |")
    return "\n".join(lines)


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="run this mutation only (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutations and their tests, run nothing")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    unknown = sorted(set(args.only or ()) - {m.name for m in MUTATIONS})
    if unknown:
        parser.error(f"unknown mutation(s) {unknown}; see --list")
    if args.list:
        for m in chosen:
            print(f"{m.name}\t{m.file}\t{' '.join(m.tests)}")
        return 0
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="usad-mutations-") as tmp:
        root, log = Path(tmp) / "repo", Path(tmp) / "pytest.log"
        copy_checkout(root)
        for m in chosen:  # every old text is in place before anything runs
            check(root, m)
        nodes = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        run = run_pytest(root, nodes, log)
        print(f"unmutated: exit {run.rc}, {len(nodes)} tests, {len(run.skips)} skipped, {run.seconds:.0f} s", flush=True)
        if run.rc != 0:
            print(log.read_text()[-6000:])
            print("the unmutated tests must pass first: stopped")
            return 1
        rows = []
        for m in chosen:
            original = check(root, m)
            (root / m.file).write_text(original.replace(m.old, m.new))
            try:
                run = run_pytest(root, m.tests, log)
            finally:
                (root / m.file).write_text(original)
            print(f"{m.name}: {outcome(run)} ({run.seconds:.0f} s) {run.failure}", flush=True)
            if outcome(run) != "caught":
                print(log.read_text()[-3000:])
            rows.append((m, run))
    print()
    print(table(rows))
    print(f"\ntotal {time.perf_counter() - began:.0f} s")
    return int(any(outcome(run) != "caught" and not outcome(run).startswith("skipped") for _, run in rows))


if __name__ == "__main__":
    sys.exit(main())
