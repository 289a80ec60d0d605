"""Teacher spec files -> TeacherStack, the s3prl `usad_teacher` upstream, the HEAR module
`hear_api.teacher`, and the demo's target arithmetic."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from usad_upstream.teachers.fixtures import write_atst_checkpoint, write_wavlm_checkpoint
from usad_upstream.teachers.stack import load_teacher_stack, read_stack_spec

SMALL_WAVLM = dict(encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=2,
                   conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2", conv_pos=16, conv_pos_groups=4,
                   encoder_layerdrop=0.0)


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stack")
    write_wavlm_checkpoint(root / "speech.pt", **SMALL_WAVLM)
    write_atst_checkpoint(root / "audio.ckpt", dim=64, depth=3, mlp_hidden=32)
    out = {
        "speech": root / "speech.yaml", "audio": root / "audio.json", "concat": root / "concat.yaml",
    }
    out["speech"].write_text("kind: wavlm\npath: speech.pt\n")  # a single spec, path relative to the file
    out["audio"].write_text('{"teachers": [{"kind": "atst_frame", "path": "audio.ckpt"}]}')
    out["concat"].write_text("teachers:\n  - {kind: wavlm, path: speech.pt}\n  - {kind: atst_frame, path: audio.ckpt}\n")
    return out


def test_spec_file_paths_and_defaults(specs: dict[str, Path]) -> None:
    spec = read_stack_spec(specs["speech"])
    assert spec["teachers"][0]["path"] == str(specs["speech"].parent / "speech.pt")
    assert spec["teachers"][0]["target"] == "hidden_states" and spec["frame_rate"] is None


def test_concat_aligns_rates_and_layers(specs: dict[str, Path]) -> None:
    stack = load_teacher_stack(specs["concat"])
    assert stack.frame_rate == 50 and stack.repeats == [1, 2] and stack.dim == 128 and stack.num_layers == 3
    assert stack.layer_map == [[1, 1], [2, 2], [2, 3]]  # ceil(i * L_k / L)
    wavs = torch.randn(2, 24000)
    out = stack(wavs, torch.tensor([24000, 16000]))
    assert len(out.layers) == 3 and out.layers[0].shape[-1] == 128
    assert out.lengths.tolist() == [74, 49]  # min(WavLM frames, 2 x ATST tokens)
    alone = load_teacher_stack(specs["audio"])(wavs[1:, :16000], torch.tensor([16000]))
    # the audio half of the stack is the audio teacher repeated to 50 Hz
    assert torch.allclose(out.layers[2][1, :49, 64:], alone.layers[2][0].repeat_interleave(2, 0)[:49], atol=1e-5)
    assert out.layers[0][1, 49:].abs().sum() == 0


def test_faster_teacher_is_mean_pooled_over_valid_frames(specs: dict[str, Path]) -> None:
    from usad_upstream.teachers.stack import pool_valid_frames

    x = torch.arange(1.0, 8.0).reshape(1, 7, 1).repeat(2, 1, 1)
    pooled = pool_valid_frames(x, torch.tensor([7, 5]), 2)
    assert pooled[0, :, 0].tolist() == [1.5, 3.5, 5.5, 7.0]  # the odd last frame is its own mean
    assert pooled[1, :3, 0].tolist() == [1.5, 3.5, 5.0]  # padding (frames 6-7) never enters frame 3
    # WavLM at 50 Hz pooled to the audio teacher's 25 Hz: lengths ceil(frames / 2)
    spec = specs["concat"].parent / "pooled.yaml"
    spec.write_text("teachers:\n  - {kind: wavlm, path: speech.pt}\n  - {kind: atst_frame, path: audio.ckpt}\nframe_rate: 25\n")
    stack = load_teacher_stack(spec)
    assert stack.frame_rate == 25 and stack.pools == [2, 1] and stack.repeats == [1, 1] and stack.downsample_rate == 640
    wavs = torch.randn(2, 24000)
    out = stack(wavs, torch.tensor([24000, 16000]))
    full = load_teacher_stack(specs["speech"])(wavs, torch.tensor([24000, 16000]))
    assert out.lengths.tolist() == [37, 25]  # min(ceil(74 / 2), 37 ATST tokens), min(ceil(49 / 2), 25)
    assert torch.allclose(out.layers[0][0, :37, :64], pool_valid_frames(full.layers[0], full.lengths, 2)[0, :37], atol=1e-6)
    assert out.layers[0][1, 25:].abs().sum() == 0
    spec.write_text("teachers:\n  - {kind: wavlm, path: speech.pt}\nframe_rate: 30\n")
    with pytest.raises(ValueError, match="not an integer multiple or divisor"):
        load_teacher_stack(spec)


def test_bad_spec_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("teachers: []\n")
    with pytest.raises(ValueError, match="non-empty list"):
        read_stack_spec(bad)
    bad.write_text("teachers:\n  - {kind: wavlm, path: x.pt}\nrate: 50\n")
    with pytest.raises(ValueError, match="unknown fields"):
        read_stack_spec(bad)
    with pytest.raises(ValueError, match="not found"):
        read_stack_spec(tmp_path / "missing.yaml")


def test_s3prl_upstream_and_hear_module(specs: dict[str, Path]) -> None:
    from usad_upstream.upstream import register_s3prl_upstreams

    assert "usad_teacher" in register_s3prl_upstreams()
    import s3prl.hub as hub

    upstream = hub.usad_teacher(str(specs["concat"]))
    assert upstream.get_downsample_rates("hidden_states") == 320
    out = upstream([torch.randn(16000), torch.randn(12000)])
    assert len(out["hidden_states"]) == 3 and out["hidden_states"][0].shape == (2, 49, 128)
    with pytest.raises(ValueError, match="spec file not found"):
        hub.usad_teacher("/nonexistent.yaml")

    import hear_api.teacher as module

    model = module.load_model(str(specs["audio"]), layers="last")
    audio = torch.randn(2, 16000)
    emb, ts = module.get_timestamp_embeddings(audio, model)
    assert emb.shape == (2, 25, 64) and ts.shape == (2, 25) and math.isclose(float(ts[0, 1] - ts[0, 0]), 40.0, rel_tol=1e-5)
    scene = module.get_scene_embeddings(audio, model)
    assert scene.shape == (2, 64) and torch.allclose(scene, emb.mean(dim=1), atol=1e-5)
    with pytest.raises(ValueError, match="unknown option"):
        module.load_model(str(specs["audio"]), pooling="concat")


def _measured(scores: dict[str, dict[tuple[str, str], float]]) -> pd.DataFrame:
    """collect()'s rows for one seed per model and task, without per-item files (seeds only)."""
    from results.tasks import SUPERB, SUPERB_TASKS

    return pd.DataFrame([
        {"model": model, "checkpoint_hash": f"h-{model}", "benchmark": b, "task": t, "split": "test", "score": v,
         "metric": SUPERB_TASKS[t].metric if b == SUPERB else "top1_acc", "run_id": f"{model}/{t}",
         "date": "2026-12-01", "source": "measured here", "status": "done", "seed": 1337, "run_path": ""}
        for model, cells in scores.items() for (b, t), v in cells.items()])


def test_targets_arithmetic() -> None:
    from downstream_recipes.demo.targets import evaluate_targets

    scores = {"speech_teacher": {("SUPERB", "PR"): 20.0, ("SUPERB", "KS"): 90.0, ("HEAR", "pitch"): 30.0},
              "audio_teacher": {("SUPERB", "PR"): 80.0, ("SUPERB", "KS"): 40.0, ("HEAR", "pitch"): 80.0},
              "usad_student": {("SUPERB", "PR"): 21.0, ("SUPERB", "KS"): 85.0, ("HEAR", "pitch"): 75.0}}
    result = evaluate_targets(_measured(scores))
    by_task = {r["task"]: r for r in result["tasks"]}
    assert by_task["PR"]["verdict"] == "MET" and math.isclose(by_task["PR"]["ratio"]["value"], 1.05)  # PER 21 <= 1.1 x 20
    assert by_task["KS"]["verdict"] == "MET" and math.isclose(by_task["KS"]["ratio"]["value"], 85 / 90)
    assert by_task["pitch"]["verdict"] == "MET" and by_task["pitch"]["teacher"] == "audio_teacher"
    assert math.isclose(result["averages"]["usad_student"], (79 + 85 + 75) / 3)  # PR counted as 100 - PER
    assert result["targets"]["average: student above both teachers over all tasks"] == "MET"
    scores["usad_student"][("SUPERB", "KS")] = 80.0  # 0.889x: below 0.9
    assert evaluate_targets(_measured(scores))["targets"][
        "speech: student >= 90% of the speech teacher on every speech task"] == "MISSED"
    scores["usad_student"][("SUPERB", "KS")] = float("nan")  # a gap decides nothing
    result = evaluate_targets(_measured(scores))
    assert result["targets"]["speech: student >= 90% of the speech teacher on every speech task"] is None


def test_targets_table_shows_a_narrow_miss_as_one() -> None:
    """54.17 vs 60.42 is 0.8966x: printed as 0.90 it would sit beside MISSED and read as a bug."""
    from downstream_recipes.demo.targets import evaluate_targets, markdown

    scores = {"speech_teacher": {("SUPERB", "IC"): 60.42, ("HEAR", "pitch"): 30.0},
              "audio_teacher": {("SUPERB", "IC"): 10.0, ("HEAR", "pitch"): 64.0},
              "usad_student": {("SUPERB", "IC"): 54.17, ("HEAR", "pitch"): 59.33}}
    md = markdown(evaluate_targets(_measured(scores)), {"mode": "full"})
    assert "| 60.42 [60.42, 60.42] | 54.17 [54.17, 54.17] | 0.897 [0.897, 0.897] | student >= 0.9 x teacher |" in md
    assert "| seeds only | MISSED |" in md and "| 0.927 [0.927, 0.927] |" in md
