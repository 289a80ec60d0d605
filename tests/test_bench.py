import json

from usad_upstream.bench import headline_ratios, markdown_table, run_bench, write_record


def test_ratios_are_relative_to_the_teachers_within_one_run():
    rows = [
        {"model": "usad_base", "batch": 1, "audio_s_per_s": 30.0},
        {"model": "wavlm_base_plus", "batch": 1, "audio_s_per_s": 20.0},
        {"model": "wavlm+atst", "batch": 1, "audio_s_per_s": 12.0},
    ]
    ratios = headline_ratios(rows)
    assert ratios["b1:usad_base/wavlm_base_plus"] == 1.5
    assert ratios["b1:usad_base/wavlm+atst"] == 2.5
    assert ratios["b1:wavlm_base_plus/wavlm+atst"] == round(20 / 12, 3)


def test_tiny_run_writes_json_and_markdown(tmp_path):
    record = run_bench(models=["usad_tiny"], batches=[2], clip_seconds=1.0, lengths=[0.5, 2.0],
                       sweep_models=["usad_tiny"], distill_sizes=[], repeats=1, threads=1, workdir=tmp_path / "w",
                       hear_minutes=0.5, hear_size="tiny")
    (row,) = record["throughput"]
    assert row["model"] == "usad_tiny" and row["audio_s_per_s"] > 0 and row["params"] == 2_567_744
    assert row["peak_mem_mb"] > 0  # measured in a fresh process
    assert [s["input_s"] for s in record["length_sweep"]] == [0.5, 2.0]
    assert all(s["seconds"] > 0 and s["peak_mem_mb"] > 0 for s in record["length_sweep"])
    (hear,) = record["hear_long_input"]
    assert hear["frames"] == (30 * 16000 - 400) // 320 + 1 and hear["peak_rss_mb"] > 100  # torch alone is ~100 MB
    json_path, md_path = write_record(record, tmp_path / "bench")
    assert json.loads(json_path.read_text())["device"] == record["device"]
    assert "| usad_tiny | 2.6 | 2 x 1 s |" in md_path.read_text() == markdown_table(record)


def test_peak_memory_sees_an_allocation_inside_the_block():
    import torch

    from usad_upstream.bench import PeakMemory

    with PeakMemory(torch.device("cpu")) as mem:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    assert 60 < mem.extra_mb < 200


def test_distillation_step_trains_the_student_with_both_teacher_formats(tmp_path):
    import torch

    from usad_upstream.bench import _inputs, distill_step
    from usad_upstream.teachers import build_teacher
    from usad_upstream.teachers.fixtures import write_atst_checkpoint, write_wavlm_checkpoint

    write_wavlm_checkpoint(tmp_path / "w.pt", encoder_layers=4, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
                           encoder_attention_heads=4, conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2")
    write_atst_checkpoint(tmp_path / "a.ckpt", dim=64, depth=4)
    teachers = {"wavlm": build_teacher({"kind": "wavlm", "path": str(tmp_path / "w.pt")}),
                "atst": build_teacher({"kind": "atst_frame", "path": str(tmp_path / "a.ckpt")})}
    step = distill_step("tiny", teachers, torch.device("cpu"))
    wavs, lens = _inputs(2, 1.5, torch.device("cpu"))
    first, second = step(wavs, lens), step(wavs, lens)  # both teachers, loss, backward, AdamW
    assert 0 < second < first  # the update lowered the loss on the same batch
    from usad_upstream.bench import count_flops

    assert count_flops(step, wavs, lens) > 1e8  # a tiny student + teachers on 3 s still does real work
