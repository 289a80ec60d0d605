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
                       sweep_models=["usad_tiny"], repeats=1, threads=1, workdir=tmp_path / "w")
    (row,) = record["throughput"]
    assert row["model"] == "usad_tiny" and row["audio_s_per_s"] > 0 and row["params"] == 2_567_744
    assert [s["input_s"] for s in record["length_sweep"]] == [0.5, 2.0]
    json_path, md_path = write_record(record, tmp_path / "bench")
    assert json.loads(json_path.read_text())["device"] == record["device"]
    assert "| usad_tiny | 2.6 | 2 x 1 s |" in md_path.read_text() == markdown_table(record)
