"""Official releases: one resolver for every checkpoint form, and the release's own code as a
backend behind our contracts (s3prl, hear_api, teachers), on stand-in snapshots."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from release_standins import copy_snapshot, speech_like, standin_v1, standin_v2  # noqa: F401 (fixtures)
from usad_upstream import build_model, save_checkpoint
from usad_upstream.release import ReleaseEncoder, ReleaseError, load_encoder, resolve_checkpoint
from usad_upstream.release.backend import TRUST_ENV, load_release_module, map_outputs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_trust_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TRUST_ENV, raising=False)


def _usad(args: list[str], env: "dict[str, str] | None" = None, timeout: int = 120) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != TRUST_ENV}
    full.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "usad_upstream.cli", *args], env=full, capture_output=True,
                          text=True, timeout=timeout)


# --- resolving ------------------------------------------------------------------------------------


def test_each_form_resolves_to_what_it_is(tmp_path: Path, standin_v1: Path, standin_v2: Path) -> None:
    student = save_checkpoint(build_model("tiny", layers=1), tmp_path / "s.safetensors")
    r = resolve_checkpoint(student)
    assert (r.kind, r.hash_files, r.snapshot) == ("student", (student,), None)
    v1, v2 = resolve_checkpoint(standin_v1), resolve_checkpoint(standin_v2)
    assert (v1.kind, v1.snapshot.generation, v1.snapshot.downsample_rate) == ("release", 1, 320)
    assert (v2.kind, v2.snapshot.generation, v2.snapshot.downsample_rate) == ("release", 2, 640)
    assert [p.name for p in v1.snapshot.code_files] == ["modeling_usad.py", "configuration_usad.py", "usad_model.py",
                                                       "usad_modules.py"]  # nested relative imports followed
    assert v1.hash_files == (standin_v1 / "config.json", standin_v1 / "model.safetensors")
    assert (v1.snapshot.licence, v2.snapshot.licence) == ("bsd-3-clause", "cc-by-nc-sa-4.0")
    # the weights file of a snapshot means the snapshot
    assert resolve_checkpoint(standin_v1 / "model.safetensors").path == standin_v1


def test_layout_is_read_from_config_json_not_from_file_names(tmp_path: Path, standin_v1: Path, standin_v2: Path) -> None:
    v1_as_2 = copy_snapshot(standin_v1, tmp_path / "a")
    config = json.loads((v1_as_2 / "config.json").read_text())
    (v1_as_2 / "config.json").write_text(json.dumps({**config, "model_type": "usad2"}))
    (v1_as_2 / "README.md").unlink()
    snap = resolve_checkpoint(v1_as_2).snapshot
    assert snap.generation == 2 and snap.licence == "cc-by-nc-sa-4.0" and "USAD 2.0" in snap.licence_source
    v2_as_1 = copy_snapshot(standin_v2, tmp_path / "b")
    config = json.loads((v2_as_1 / "config.json").read_text())
    (v2_as_1 / "config.json").write_text(json.dumps({**config, "model_type": "usad", "conv_subsample_rate": 2}))
    assert resolve_checkpoint(v2_as_1).snapshot.generation == 1  # its files are still named *usad2*


@pytest.mark.parametrize("damage, message", [
    ("no_config", r"no config\.json"),
    ("bad_json", r"config\.json: not valid JSON"),
    ("no_auto_map", r"config\.json: no auto_map\.AutoModel"),
    ("bert", r"model_type 'bert' is not a USAD release"),
    ("nested_file", r"usad_modules\.py is missing \(imported by usad_model\.py\)"),
    ("no_weights", r"no model\.safetensors"),
])
def test_broken_snapshots_get_one_line_naming_the_file(tmp_path: Path, standin_v1: Path, damage: str, message: str) -> None:
    snap = copy_snapshot(standin_v1, tmp_path / "snap")
    config = json.loads((snap / "config.json").read_text())
    if damage == "no_config":
        (snap / "config.json").unlink()
    elif damage == "bad_json":
        (snap / "config.json").write_text("{not json")
    elif damage == "no_auto_map":
        (snap / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "auto_map"}))
    elif damage == "bert":
        (snap / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    elif damage == "nested_file":
        (snap / "usad_modules.py").unlink()
    else:
        (snap / "model.safetensors").unlink()
    with pytest.raises(ReleaseError, match=message) as info:
        resolve_checkpoint(snap)
    assert "\n" not in str(info.value)


def test_hub_id_is_read_from_the_hugging_face_cache(tmp_path: Path, standin_v1: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--MIT-SLS--USAD-Base"
    copy_snapshot(standin_v1, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    resolved = resolve_checkpoint("MIT-SLS/USAD-Base")
    assert resolved.hub_id == "MIT-SLS/USAD-Base" and resolved.path == repo / "snapshots" / "0123abcd"
    assert resolved.kind == "release"


def test_unreachable_hub_is_one_line_within_a_minute(tmp_path: Path) -> None:
    """An id that is neither cached nor reachable: exit 2 quickly, naming the id, the cache and the way out."""
    cache = tmp_path / "empty-cache"
    start = time.monotonic()
    result = _usad(["info", "MIT-SLS/USAD2-Large-Plus"], env={"HF_HUB_CACHE": str(cache),
                                                             "HF_ENDPOINT": "http://127.0.0.1:9"})
    took = time.monotonic() - start
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "MIT-SLS/USAD2-Large-Plus" in lines[0] and str(cache) in lines[0]
    assert "huggingface-cli download MIT-SLS/USAD2-Large-Plus --local-dir DIR" in lines[0]
    assert took < 60, took


# --- the release's own code -----------------------------------------------------------------------


def test_remote_code_runs_only_when_asked(standin_v1: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ReleaseError, match=r"runs its own Python code.*--trust-remote-code.*USAD_TRUST_REMOTE_CODE=1"):
        load_encoder(standin_v1)
    monkeypatch.setenv(TRUST_ENV, "1")
    assert isinstance(load_encoder(standin_v1), ReleaseEncoder)


def test_transformers_alone_fails_on_the_nested_local_layout_our_loader_does_not(standin_v1: Path) -> None:
    """RELEASED.md's measurement, reproduced on the stand-in: AutoModel copies only direct relative imports."""
    from transformers import AutoModel

    from usad_upstream.compat import import_torchaudio

    import_torchaudio()
    with pytest.raises(FileNotFoundError, match="usad_modules.py"):
        AutoModel.from_pretrained(str(standin_v1), trust_remote_code=True)
    release = load_release_module(resolve_checkpoint(standin_v1).snapshot, trust_remote_code=True)
    assert not release.training and next(release.parameters()).dtype == torch.float32


def test_padded_batch_gives_each_item_what_it_gets_alone(standin_v1: Path) -> None:
    encoder = load_encoder(standin_v1, trust_remote_code=True)
    wavs = [speech_like(1.0, 1), speech_like(0.61, 2), speech_like(1.0, 3), speech_like(0.61, 4)]
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    lens = torch.tensor([len(w) for w in wavs])
    with torch.inference_mode():
        out = encoder(batch, lens)
        alone = [encoder(w[None]) for w in wavs]
        raw = encoder.release(batch)  # the release itself: no mask, the padding leaks in
    frames = [(len(w) - 400) // 320 + 1 for w in wavs]
    assert out["lengths"].tolist() == frames and len(out["hidden_states"]) == 2
    for i, single in enumerate(alone):
        for key in ("embedding", "x"):
            torch.testing.assert_close(out[key][i, : frames[i]], single[key][0], rtol=0, atol=1e-6)
            assert not out[key][i, frames[i]:].any()
        for got, want in zip(out["hidden_states"] + out["ffn"], single["hidden_states"] + single["ffn"]):
            torch.testing.assert_close(got[i, : frames[i]], want[0], rtol=0, atol=1e-6)
    leaked = float((raw["x"][1, : frames[1]] - alone[1]["x"][0]).abs().max())
    assert leaked > 1e-3, leaked  # so the grouping above is what makes the short items right


def test_fp32_unless_lower_precision_is_asked_for(standin_v1: Path) -> None:
    wav = speech_like(1.0)[None]
    fp32 = load_encoder(standin_v1, trust_remote_code=True)
    bf16 = load_encoder(standin_v1, trust_remote_code=True, autocast_dtype=torch.bfloat16)
    with torch.inference_mode():
        a, b = fp32(wav)["x"], bf16(wav)["x"]
    assert a.dtype == torch.float32 and b.dtype == torch.bfloat16
    assert 0 < float((a - b.float()).abs().max()) < 0.1 * float(a.abs().max())


def test_hidden_states_with_the_embedding_first_are_mapped_too(standin_v1: Path) -> None:
    snap = resolve_checkpoint(standin_v1).snapshot
    h = [torch.full((1, 5, 3), float(i)) for i in range(3)]
    mapped = map_outputs({"x": h[-1], "hidden_states": h, "ffn": h[1:]}, 2, [], snap)
    assert torch.equal(mapped["embedding"], h[0]) and [int(t[0, 0, 0]) for t in mapped["hidden_states"]] == [1, 2]
    with pytest.raises(ReleaseError, match="returned 3 hidden states for 4 blocks"):
        map_outputs({"x": h[-1], "hidden_states": h}, 4, [], snap)


def test_weights_that_do_not_fit_are_named(tmp_path: Path, standin_v1: Path) -> None:
    for damage, message in (("drop", r"weights do not fit USADModel: missing \['model\.encoder\.layer_norm\.bias'\]"),
                            ("shape", r"model\.safetensors: the weights do not fit USADModel")):
        snap = copy_snapshot(standin_v1, tmp_path / damage)
        state = load_file(str(snap / "model.safetensors"))
        if damage == "drop":
            del state["model.encoder.layer_norm.bias"]
        else:
            state["model.encoder.layer_norm.bias"] = torch.zeros(7)
        save_file(state, str(snap / "model.safetensors"), metadata={"format": "pt"})
        with pytest.raises(ReleaseError, match=message) as info:
            load_encoder(snap, trust_remote_code=True)
        assert "\n" not in str(info.value)


def test_target_layer_and_25_hz(standin_v2: Path) -> None:
    full = load_encoder(standin_v2, trust_remote_code=True)
    first = load_encoder(standin_v2, trust_remote_code=True, target_layer=1)
    wav = speech_like(2.3)[None]
    with torch.inference_mode():
        a, b = full(wav), first(wav)
    frames = -(-((wav.shape[1] - 400) // 160 + 1) // 4)  # 100 Hz fbank / 4
    assert full.downsample_rate == 640 and a["lengths"].tolist() == [frames]
    assert len(b["hidden_states"]) == 1 and first.config.layers == 1
    torch.testing.assert_close(b["hidden_states"][0], a["hidden_states"][0], rtol=0, atol=0)
    assert not torch.allclose(b["x"], a["x"])  # the final norm follows block 1, not block 2
    with pytest.raises(ReleaseError, match="target_layer must be a block index from 1 to 2"):
        load_encoder(standin_v2, trust_remote_code=True, target_layer=3)


# --- consumers ------------------------------------------------------------------------------------


def test_s3prl_upstream_on_releases(standin_v1: Path, standin_v2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from usad_upstream.upstream import UsadUpstreamError, register_s3prl_upstreams, usad

    with pytest.raises(UsadUpstreamError, match=r"usad upstream: .*USAD_TRUST_REMOTE_CODE=1"):
        usad(str(standin_v1))
    monkeypatch.setenv(TRUST_ENV, "1")  # -k paths take no flags
    expert = usad(str(standin_v1))
    wavs = [speech_like(1.0), speech_like(0.7, 1)]
    with torch.no_grad():
        out = expert(wavs)
    assert len(out["hidden_states"]) == 3 and expert.get_downsample_rates("hidden_states") == 320
    torch.testing.assert_close(out["last_hidden_state"], expert.model(*_padded(wavs))["x"])

    register_s3prl_upstreams()
    from s3prl.nn import S3PRLUpstream

    upstream = S3PRLUpstream("usad", path_or_url=str(standin_v2), extra_conf={"target_layer": 1}).eval()
    assert upstream.num_layers == 2 and upstream.downsample_rates == [640, 640]
    assert usad(str(standin_v2), model_config="target_layer=1").model.config.layers == 1
    with pytest.raises(UsadUpstreamError, match="the one option is -g target_layer=N"):
        usad(str(standin_v2), model_config="layers=1")


def _padded(wavs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True), torch.tensor([len(w) for w in wavs])


def test_hear_api_on_a_25_hz_release(standin_v2: Path) -> None:
    import hear_api

    with pytest.raises(ValueError, match="--trust-remote-code"):
        hear_api.load_model(str(standin_v2))
    model = hear_api.load_model(str(standin_v2), trust_remote_code=True)
    audio = torch.stack([speech_like(1.5, 5), speech_like(1.5, 6)])
    emb, ts = hear_api.get_timestamp_embeddings(audio, model)
    frames = -(-((audio.shape[1] - 400) // 160 + 1) // 4)
    assert emb.shape == (2, frames, 192) and emb.dtype == torch.float32
    assert ts[0, :3].tolist() == [12.5, 52.5, 92.5]  # frame j centred on sample 640 j + 200
    with torch.inference_mode():
        hidden = model.encoder(audio)["hidden_states"]
    torch.testing.assert_close(emb, torch.stack(hidden).mean(0))  # default: mean of all block outputs
    torch.testing.assert_close(hear_api.get_scene_embeddings(audio, model), emb.mean(1))
    last = hear_api.load_model(str(standin_v2), trust_remote_code=True, target_layer=1, layers="all")
    assert last.layers == (1,)
    with pytest.raises(ValueError, match="max_fbank_frames applies to native checkpoints"):
        hear_api.load_model(str(standin_v2), trust_remote_code=True, max_fbank_frames=100)


def test_usad_teacher_kind_takes_a_release(standin_v2: Path) -> None:
    from usad_upstream.teachers import build_teacher

    teacher = build_teacher({"kind": "usad", "path": str(standin_v2), "trust_remote_code": True, "target": "hidden_states"})
    out = teacher(*_padded([speech_like(1.2), speech_like(0.8, 2)]))
    assert teacher.frame_rate == 25.0 and teacher.num_layers == 2 and len(out.layers) == 2
    assert out.lengths.tolist() == [-(-((n - 400) // 160 + 1) // 4) for n in (19200, 12800)]


def test_superb_and_hear_runs_take_a_snapshot(tmp_path: Path, standin_v1: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from downstream_recipes.hear import runner as hear_runner
    from downstream_recipes.superb import runner

    data = tmp_path / "data"
    (data / "speech_commands_v0.01").mkdir(parents=True)
    (data / "speech_commands_test_set_v0.01").mkdir()
    calls: list[tuple[list[str], dict]] = []
    monkeypatch.setattr(runner, "_stream", lambda cmd, log, env, echo=False: calls.append((cmd, env)) or 1)
    run = runner.SuperbRun(task="KS", upstream="usad", data=data, runs_dir=tmp_path / "runs",
                           upstream_ckpt=standin_v1, trust_remote_code=True)
    with pytest.raises(runner.RecipeError):  # the fake s3prl fails; the command and manifest are what we check
        runner.run_superb(run)
    cmd, env = calls[0]
    assert cmd[cmd.index("-k") + 1] == str(standin_v1.resolve()) and env[TRUST_ENV] == "1"
    manifest = json.loads((run.expdir / "usad_run.json").read_text())
    assert manifest["checkpoint"] == str(standin_v1.resolve()) and manifest["checkpoint_hash"].count("+") == 1

    seen: list[list[str]] = []
    monkeypatch.setattr("usad_upstream.hear.run_embeddings_runner", lambda args: seen.append(args) or 1)
    (tmp_path / "tasks" / "t").mkdir(parents=True)
    (tmp_path / "tasks" / "t" / "task_metadata.json").write_text("{}")
    monkeypatch.setenv(TRUST_ENV, "0")  # restored afterwards: the runner sets it for heareval's in-process runner
    with pytest.raises(hear_runner.HearRunError):  # the release is loaded once before heareval: it needs the opt-in
        hear_runner.run_hear(hear_runner.HearRun(module="hear_api", tasks_dir=tmp_path / "tasks", model=standin_v1,
                                                 runs_dir=tmp_path / "runs", trust_remote_code=True))
    assert seen[0][seen[0].index("--model") + 1] == str(standin_v1.resolve())


def test_usad_info_shows_a_release_without_running_it(standin_v2: Path) -> None:
    result = _usad(["info", str(standin_v2)])
    assert result.returncode == 0, result.stderr
    assert "USAD 2.0 layout by config.json: model_type 'usad2'" in result.stdout
    assert "licence: cc-by-nc-sa-4.0 (the snapshot's README.md)" in result.stdout
    assert "25 Hz (downsample rate 640)" in result.stdout and "loads through its own code" not in result.stdout
    n = sum(t.numel() for t in load_file(str(standin_v2 / "model.safetensors")).values())
    assert f"parameters: {n:,} (safetensors header)" in result.stdout
    checked = _usad(["info", str(standin_v2), "--trust-remote-code"])  # a fresh process: compat before the release's torchaudio
    assert checked.returncode == 0 and f"loads through its own code: {n:,} parameters" in checked.stdout, checked.stderr


def test_bench_reports_the_release_backend_beside_the_native_model(tmp_path: Path) -> None:
    from usad_upstream.bench import run_bench

    record = run_bench(models=["usad_tiny", "release_tiny"], batches=[2], clip_seconds=1.0, lengths=[], sweep_models=[],
                       distill_sizes=[], repeats=1, threads=1, workdir=tmp_path, hear_minutes=0)
    rows = {r["model"]: r for r in record["throughput"]}
    assert rows["release_tiny"]["params"] == sum(t.numel() for t in load_file(
        str(tmp_path / "release_standin_tiny" / "model.safetensors")).values())
    assert rows["usad_tiny"]["params"] == rows["release_tiny"]["params"]  # same sizes, two code bases
    assert all(r["audio_s_per_s"] > 0 for r in rows.values())
