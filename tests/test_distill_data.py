"""Distillation data: manifests, skipped files, determinism, bucketing, domain weights, ranks, resume."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from downstream_recipes.cli import main
from usad_upstream.distill.data import (
    BatchPlanner,
    Crop,
    DataConfig,
    DistillData,
    Manifest,
    PAPER_SPEECH_SHARE,
    ManifestEntry,
    build_manifest,
    read_manifest,
    speech_share_weights,
    write_manifest,
)


def write_tone(path, seconds, sr=16000, channels=1, amp=0.3, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = amp * np.sin(2 * np.pi * 220 * (1 + seed % 5) * t) + 0.01 * amp * rng.standard_normal(t.shape)
    if channels == 2:
        x = np.stack([x, -x * 0.5], axis=1)
    sf.write(path, x.astype(np.float32), sr)
    return path


@pytest.fixture
def corpus(tmp_path):
    """Good clips at several rates/lengths plus a corrupt, a silent and a too-short file."""
    good = tmp_path / "good"
    good.mkdir()
    for i in range(8):
        sr = (16000, 22050, 8000)[i % 3]
        write_tone(good / f"c{i}.{'wav' if i % 2 else 'flac'}", 1.0 + 0.4 * i, sr=sr, channels=1 + i % 2, seed=i)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    write_tone(bad / "silent.wav", 1.5, amp=0.0)
    write_tone(bad / "short.wav", 0.3)
    return tmp_path


def test_manifest_build_counts_unreadable_and_roundtrips(corpus, capsys):
    entries, skipped = build_manifest([corpus / "good", corpus / "bad"], "sound")
    assert len(entries) == 10 and skipped == {"unreadable": 1}
    by_name = {e.path.rsplit("/", 1)[1]: e for e in entries}
    assert by_name["c1.wav"].sample_rate == 22050 and by_name["c1.wav"].num_samples == int(1.4 * 22050)
    listing = corpus / "list.txt"
    listing.write_text("# two files\ngood/c0.flac\n\ngood/c2.flac\n")
    out = corpus / "m.tsv"
    assert main(["manifest", "build", str(listing), "--domain", "music", "-o", str(out)]) == 0
    assert [e.domain for e in read_manifest(out)] == ["music", "music"]
    assert main(["manifest", "build", str(corpus / "good"), "--domain", "speech", "--append", "-o", str(out)]) == 0
    assert len(read_manifest(out)) == 8
    assert "wrote" in capsys.readouterr().out
    write_manifest(entries, out)
    assert list(read_manifest(out)) == entries
    out.write_text("path\tnum_samples\tsample_rate\tdomain\nx.wav\t10\t16000\tnoise\n")
    with pytest.raises(ValueError, match=r"m.tsv:2: domain must be one of"):
        read_manifest(out)


def cfg(**kw):
    base = {"max_seconds": 2.0, "min_seconds": 0.5, "bucket_pool": 4}
    base.update(kw)
    return DataConfig.from_dict(base)


def test_bad_files_are_skipped_and_counted_without_crashing(corpus):
    entries, _ = build_manifest([corpus / "good", corpus / "bad"], "speech")
    entries.append(ManifestEntry(str(corpus / "gone.wav"), 32000, 16000, "speech"))  # deleted after the manifest
    entries.append(ManifestEntry(str(corpus / "bad" / "corrupt.wav"), 32000, 16000, "speech"))
    data = DistillData(entries, cfg(), batch_seconds=4.0, seed=0)
    assert data.planner.skipped["too_short"] == 1  # short.wav, from the manifest
    skipped, steps = {}, iter(data)
    for _ in range(data.steps_in_epoch(0)):
        (micro,) = next(steps)
        for k, v in micro["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
        assert micro["wavs"].shape[0] == len(micro["crops"]) >= 1
        names = {entries[c.index].path.rsplit("/", 1)[1] for c in micro["crops"]}
        assert not names & {"corrupt.wav", "silent.wav", "gone.wav"}
    # each bad crop of the plan once (an emptied micro-batch's random refills may add more)
    assert set(skipped) == {"silent", "unreadable"} and skipped["silent"] >= 1 and skipped["unreadable"] >= 2


def test_plans_are_deterministic_and_bucketing_caps_seconds(corpus):
    entries, _ = build_manifest([corpus / "good"], "speech")
    entries = entries * 5
    a = BatchPlanner(entries, cfg(), micro_seconds=5.0, seed=1).epoch(0).batches()
    b = BatchPlanner(entries, cfg(), micro_seconds=5.0, seed=1).epoch(0).batches()
    assert a == b
    assert a != BatchPlanner(entries, cfg(), micro_seconds=5.0, seed=2).epoch(0).batches()
    assert a != BatchPlanner(entries, cfg(), micro_seconds=5.0, seed=1).epoch(1).batches()
    assert sum(len(m) for m in a) == len(entries)
    for micro in a:
        assert len(micro) * max(c.samples for c in micro) <= 5.0 * 16000
        assert all(c.samples <= 2.0 * 16000 for c in micro)
    assert max(len(m) for m in a) >= 2  # short clips share batches
    (x,) = next(iter(DistillData(entries, cfg(), batch_seconds=5.0, seed=1)))
    (y,) = next(iter(DistillData(entries, cfg(num_workers=1), batch_seconds=5.0, seed=1)))  # loaded in a worker
    assert x["crops"] == y["crops"] and bool((x["wavs"] == y["wavs"]).all())


def test_domain_weights_repeat_sound_and_music():
    entries = [ManifestEntry(f"/x/{d}{i}.wav", 16000, 16000, d) for d in ("speech", "sound", "music") for i in range(10)]
    plan = BatchPlanner(entries, cfg(domain_weights={"speech": 1.0, "sound": 2.0, "music": 2.0}), 5.0, seed=0).epoch(0).batches()
    counts = np.bincount([c.index for m in plan for c in m], minlength=30)
    assert counts[:10].tolist() == [1] * 10 and counts[10:].tolist() == [2] * 20
    half = BatchPlanner(entries, cfg(domain_weights={"speech": 0.5, "sound": 0.0, "music": 1.0}), 5.0, seed=0).epoch(0).batches()
    counts = np.bincount([c.index for m in half for c in m], minlength=30)
    assert 0 < counts[:10].sum() < 10 and counts[10:20].sum() == 0 and counts[20:].tolist() == [1] * 10


def test_speech_share_weights_reproduce_the_paper_mix_in_crop_seconds():
    # 10 speech clips of 8 s (cropped to 4 s), 10 sound clips of 2 s, 10 music clips of 4 s, one too short
    entries = [ManifestEntry(f"/x/s{i}.wav", 8 * 16000, 16000, "speech") for i in range(10)]
    entries += [ManifestEntry(f"/x/e{i}.wav", 2 * 16000, 16000, "sound") for i in range(10)]
    entries += [ManifestEntry(f"/x/m{i}.wav", 4 * 8000, 8000, "music") for i in range(10)]
    entries += [ManifestEntry("/x/short.wav", 8000, 16000, "sound")]
    config = cfg(max_seconds=4.0, min_seconds=1.0)
    weights = speech_share_weights(entries, PAPER_SPEECH_SHARE, config)
    assert weights["sound"] == weights["music"] == 1.0 and abs(PAPER_SPEECH_SHARE - 0.5623) < 1e-3
    assert weights["speech"] * 40 / (weights["speech"] * 40 + 60) == pytest.approx(PAPER_SPEECH_SHARE, abs=1e-4)
    plans = [BatchPlanner(entries, cfg(max_seconds=4.0, domain_weights=weights), 8.0, seed=0).epoch(e) for e in range(20)]
    seconds = {d: 0.0 for d in ("speech", "sound", "music")}
    for plan in plans:
        for crop in (c for m in plan.batches() for c in m):
            seconds[entries[crop.index].domain] += crop.samples / 16000
    assert seconds["speech"] / sum(seconds.values()) == pytest.approx(PAPER_SPEECH_SHARE, abs=0.02)
    with pytest.raises(ValueError, match="needs both speech and non-speech"):
        speech_share_weights(entries[:10], 0.5, config)
    # the same through the config: data.speech_share replaces domain_weights
    planner = BatchPlanner(entries, cfg(max_seconds=4.0, min_seconds=1.0, speech_share=PAPER_SPEECH_SHARE), 8.0, seed=0)
    assert planner.domain_weights == weights
    with pytest.raises(ValueError, match="data.speech_share must be a number between 0 and 1"):
        cfg(speech_share=1.5)


def test_ranks_split_the_single_process_plan_and_state_resumes(corpus):
    entries, _ = build_manifest([corpus / "good"], "speech")
    entries = entries * 3
    single = DistillData(entries, cfg(), batch_seconds=8.0, seed=0, grad_accum=2)
    ranks = [DistillData(entries, cfg(), batch_seconds=8.0, seed=0, world_size=2, rank=r) for r in (0, 1)]
    one, zero, first = iter(single), iter(ranks[0]), iter(ranks[1])
    for _ in range(2):
        s = next(one)
        assert [m["crops"] for m in s] == [next(zero)[0]["crops"], next(first)[0]["crops"]]
    state = single.state_dict()
    after = [m["crops"] for m in next(one)]
    resumed = DistillData(entries, cfg(), batch_seconds=8.0, seed=0, grad_accum=2)
    resumed.load_state_dict(state)
    assert [m["crops"] for m in next(iter(resumed))] == after
    with pytest.raises(ValueError, match="less than one crop"):
        DistillData(entries, cfg(), batch_seconds=3.0, seed=0, world_size=2)


def test_segments_mode_cuts_fixed_pieces_and_bad_rows_name_their_line(tmp_path):
    entries = [ManifestEntry("/x/a.wav", int(4.6 * 8000), 8000, "music"), ManifestEntry("/x/b.wav", 16000, 16000, "sound")]
    plan = BatchPlanner(entries, cfg(crop="segments"), 5.0, seed=0).epoch(0).batches()
    pieces = sorted((c.index, c.start, c.frames, c.samples) for m in plan for c in m)
    # a: 2 s + 2 s + 0.6 s (kept, >= min_seconds), each piece twice (music weight 2); b: one 1 s piece, twice
    assert pieces == sorted(2 * [(0, 0, 16000, 32000), (0, 16000, 16000, 32000), (0, 32000, 4800, 9600), (1, 0, 16000, 16000)])
    bad = tmp_path / "bad.tsv"
    bad.write_text("path\tnum_samples\tsample_rate\tdomain\na.wav\t100\t16000\tspeech\nb.wav\t1.5\t16000\tspeech\n")
    with pytest.raises(ValueError, match=r"bad.tsv:3: num_samples must be an integer > 0, got '1.5'"):
        read_manifest(bad)


# ----------------------------------------------------------------------------- scale: columns, packing, ranks, shards
def sequential_pack(samples, cap, pool):
    """The bucketing rule written as a plain loop (the reference for the vectorised pack)."""
    order = np.lexsort((-samples, np.arange(samples.shape[0]) // pool))
    s, lo, hi = samples[order], [], []
    for p0 in range(0, s.shape[0], pool):
        p, end = p0, min(p0 + pool, s.shape[0])
        while p < end:
            q = min(end, p + max(1, cap // int(s[p])))
            lo.append(p), hi.append(q)
            p = q
    return order, lo, hi


def test_vectorised_packing_cuts_the_same_batches_as_the_sequential_rule():
    from usad_upstream.distill.data import pack

    rng = np.random.default_rng(3)
    for n, cap, pool in ((1000, 80_000, 37), (257, 32_000, 300), (64, 16_000, 1)):
        samples = rng.integers(8_000, 32_001, n)
        order, lo, hi = pack(samples, cap, pool)
        ref_order, ref_lo, ref_hi = sequential_pack(samples, cap, pool)
        assert (order == ref_order).all() and lo.tolist() == ref_lo and hi.tolist() == ref_hi


def test_ranks_get_disjoint_micro_batches_whose_union_is_the_global_step():
    """However the step's world_size x grad_accum = 4 micro-batches are spread (1 x 4, 2 x 2,
    4 x 1), every rank gets its own ones and together they are the one-process step."""
    entries = [ManifestEntry(f"/x/{i}.wav", int((1 + i % 7 * 0.25) * 16000), 16000, ("speech", "sound", "music")[i % 3]) for i in range(60)]
    single = DistillData(entries, cfg(), batch_seconds=8.0, seed=0, grad_accum=4)._rank_batches(0, 0)
    for world, accum in ((2, 2), (4, 1)):
        ranks = [DistillData(entries, cfg(), batch_seconds=8.0, seed=0, world_size=world, rank=r, grad_accum=accum)._rank_batches(0, 0)
                 for r in range(world)]
        for step in range(len(single) // 4):
            want = {pos: crops for _, pos, crops in (single[step * 4 + a] for a in range(4))}
            got = [ranks[r][step * accum + a] for r in range(world) for a in range(accum)]
            positions = [pos for _, pos, _ in got]
            assert len(set(positions)) == 4 and set(positions) == set(want)  # disjoint, and the whole step
            assert all(crops == want[pos] for _, pos, crops in got)


def test_manifest_columns_are_mapped_from_one_copy_and_rebuilt_when_the_tsv_changes(tmp_path):
    entries = [ManifestEntry(f"/data/ü{i}.flac", 16000 + i, 16000 if i % 2 else 44100, "sound") for i in range(5)]
    tsv = write_manifest(entries, tmp_path / "m.tsv")
    first = read_manifest(tsv)
    assert (tmp_path / "m.tsv.columns" / "num_samples.npy").is_file() and list(first) == entries
    again = read_manifest(tsv)
    assert isinstance(again.num_samples, np.memmap) and again.paths.text is None  # mapped, not parsed; paths read on demand
    changed = entries[:3] + [ManifestEntry("/data/new.wav", 99999, 8000, "music")]
    write_manifest(changed, tsv)
    assert list(read_manifest(tsv)) == changed  # the stale copy is not used
    both = Manifest.concat([read_manifest(tsv), Manifest.from_entries(entries)])
    assert list(both) == changed + entries


def test_several_manifests_map_one_saved_copy_whose_paths_are_read_on_demand_not_mapped(tmp_path):
    import pickle

    from usad_upstream.distill.data import PATH_BLOCK, columns_dir

    a = [ManifestEntry(f"/speech/{'ü' * (i % 5)}{i}.flac", 16000 + i, 16000, "speech") for i in range(3 * PATH_BLOCK + 5)]
    b = [ManifestEntry(f"/sound/{i}-{'x' * (i % 90)}.wav", 32000 + i, 44100, "sound") for i in range(PATH_BLOCK - 1)]
    tsv_a, tsv_b = write_manifest(a, tmp_path / "a.tsv"), write_manifest(b, tmp_path / "b.tsv")
    both = read_manifest([tsv_a, tsv_b])
    copy = columns_dir([tsv_a, tsv_b])
    assert copy.parent == tmp_path and copy.name.startswith("a.tsv.with-1-more-") and (copy / "paths.txt").is_file()
    assert list(both) == a + b  # every path, across block boundaries and parts, multi-byte names included
    again = read_manifest([tsv_a, tsv_b])
    assert isinstance(again.domain, np.memmap) and again.paths.text is None
    assert [again.path(i) for i in (0, PATH_BLOCK - 1, PATH_BLOCK, len(a), len(a) + len(b) - 1)] == \
        [e.path for e in (a[0], a[PATH_BLOCK - 1], a[PATH_BLOCK], b[0], b[-1])]
    maps = Path("/proc/self/maps").read_text()
    assert "paths.txt" not in maps and str(copy / "domain.npy") in maps  # the columns are mapped, the paths are not
    assert pickle.loads(pickle.dumps(again)).path(len(a) + 3) == b[3].path  # a worker process opens its own file
    assert (again.num_samples.dtype, again.sample_rate.dtype) == (np.uint32, np.uint16)  # 7 bytes a clip, not 13
    for crop in ("random", "segments"):  # unsigned columns plan exactly as the in-memory int64 ones
        config = DataConfig.from_dict({"crop": crop, "min_seconds": 0.5, "max_seconds": 0.6})
        mapped, memory = (BatchPlanner(m, config, 3.0, seed=1).epoch(0) for m in (again, Manifest.from_entries(a + b)))
        assert len(mapped) == len(memory) > 0 and all(mapped.batch(j) == memory.batch(j) for j in range(len(memory)))
    with pytest.raises(IndexError):
        again.path(len(a) + len(b))
    write_manifest(b[:10], tsv_b)
    assert list(read_manifest([tsv_a, tsv_b])) == a + b[:10]  # one part changed: the copy is rebuilt
    with pytest.raises(ValueError, match="line break"):
        Manifest.from_entries([ManifestEntry("/x\ny.wav", 16000, 16000, "speech")])


def test_the_path_index_is_the_same_however_the_text_arrives_in_pieces():
    from usad_upstream.distill.data import PATH_BLOCK, Paths, text_index

    rng = np.random.default_rng(0)
    paths = [f"/d/{'é' * int(rng.integers(0, 40))}{i}.wav" for i in range(5 * PATH_BLOCK + 3)]
    whole = Paths.from_strings(paths)
    raw = np.frombuffer(whole.text, dtype=np.uint8)
    for size in (1, 7, PATH_BLOCK, 1000, raw.shape[0]):
        index, count = text_index([raw[i : i + size] for i in range(0, raw.shape[0], size)])
        assert count == len(paths) and np.array_equal(index, whole.index), size
    assert [whole[i] for i in range(len(paths))] == paths
    with pytest.raises(ValueError, match="line break"):
        text_index([raw[:-1]])


def test_manifests_in_a_read_only_directory_are_parsed_into_memory(tmp_path, monkeypatch):
    import builtins

    from usad_upstream.distill import data as data_module

    a = [ManifestEntry(f"/a/{i}.flac", 16000 + i, 16000, "speech") for i in range(70)]
    b = [ManifestEntry(f"/b/{i}.flac", 20000 + i, 22050, "music") for i in range(3)]
    tsvs = [write_manifest(a, tmp_path / "a.tsv"), write_manifest(b, tmp_path / "b.tsv")]

    def no_lock(path, *args, **kwargs):  # what a read-only directory does to the lock file (root ignores chmod)
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(data_module, "open", no_lock, raising=False)
    both = read_manifest(tsvs)
    assert both.paths.text is not None and list(both) == a + b
    assert not any(p.name.endswith(".columns") for p in tmp_path.iterdir())


def test_manifest_build_reads_each_header_once_across_an_interrupted_scan(corpus, monkeypatch):
    from usad_upstream.distill import data as data_module

    calls = []
    real = data_module._header
    monkeypatch.setattr(data_module, "_header", lambda path: calls.append(path) or real(path))
    partial = corpus / "m.tsv.partial"
    first, _ = build_manifest([corpus / "good"], "speech", jobs=2, partial=partial)
    assert len(calls) == 8 and len(partial.read_text().splitlines()) == 8
    lines = partial.read_text().splitlines()
    partial.write_text("\n".join(lines[:5]) + "\n" + lines[5][:10])  # killed while writing line 6
    calls.clear()
    again, skipped = build_manifest([corpus / "good", corpus / "bad"], "speech", jobs=2, partial=partial)
    assert len(calls) == 3 + 3  # the 3 lost lines of good/ and the 3 files of bad/
    assert again[:8] == first and skipped == {"unreadable": 1}


def test_a_shared_plan_is_the_plan_and_is_redone_for_other_data(tmp_path):
    entries = [ManifestEntry(f"/x/{i}.wav", int((1 + i % 5 * 0.3) * 16000), 16000, "speech") for i in range(40)]
    plan_dir = tmp_path / "plans"
    shared = DistillData(entries, cfg(), batch_seconds=8.0, seed=0, world_size=2, rank=0, plan_dir=plan_dir)
    other_rank = DistillData(entries, cfg(), batch_seconds=8.0, seed=0, world_size=2, rank=1, plan_dir=plan_dir)
    alone = DistillData(entries, cfg(), batch_seconds=8.0, seed=0, world_size=2, rank=0)
    assert shared._epoch_plan(0).batches() == alone._epoch_plan(0).batches()
    assert isinstance(other_rank._epoch_plan(0).units, np.memmap)  # rank 1 maps rank 0's file
    assert other_rank._epoch_plan(0).batches() == alone._epoch_plan(0).batches()
    fewer = DistillData(entries[:30], cfg(), batch_seconds=8.0, seed=0, world_size=2, rank=0, plan_dir=plan_dir)
    assert fewer._epoch_plan(0).batches() == DistillData(entries[:30], cfg(), batch_seconds=8.0, seed=0, world_size=2)._epoch_plan(0).batches()


def test_shards_hold_every_clip_with_its_domain_for_lhotse_and_for_the_trainer(corpus, capsys):
    import torch

    from usad_upstream.distill.data import load_crop
    from usad_upstream.distill.shards import ShardSet, _use_libsndfile, build_shards

    entries, _ = build_manifest([corpus / "good"], "music")
    entries = [ManifestEntry(e.path, e.num_samples, e.sample_rate, ("speech", "sound", "music")[i % 3]) for i, e in enumerate(entries)]
    entries.append(ManifestEntry(str(corpus / "bad" / "corrupt.wav"), 32000, 16000, "speech"))  # unreadable: counted, left out
    tsv = write_manifest(entries, corpus / "m.tsv")
    out = corpus / "shards"
    assert main(["shards", "build", "--manifest", str(tsv), "-o", str(out), "--shard-size", "3", "--jobs", "2"]) == 0
    assert "8 clips in 3 Lhotse Shar shards (0 were already there); unreadable 1" in capsys.readouterr().out
    shards = ShardSet([out])
    from lhotse import CutSet

    _use_libsndfile()
    cuts = list(CutSet.from_shar(in_dir=out / "shar"))  # lhotse reads what we wrote
    assert len(cuts) == len(shards) == 8
    for i, cut in enumerate(cuts):  # shard order = index order
        source = next(e for e in entries if e.path == cut.custom["source"])
        assert cut.custom["domain"] == source.domain == shards[i].domain
        assert cut.num_samples == shards.num_samples[i] == -(-source.num_samples * 16000 // source.sample_rate)
        ours, sr = shards.read(i, 0, -1)
        assert sr == 16000 and np.abs(ours[:, 0] - cut.load_audio()[0]).max() == 0
        crop = load_crop(shards, Crop(i, 0, 8000, 8000), 1e-4, 4000)
        want = load_crop(read_manifest(tsv), Crop(entries.index(source), 0, -1, 0), 1e-4, 4000)
        assert isinstance(crop, torch.Tensor) and torch.allclose(crop, want[:8000], atol=1e-3)  # 16-bit FLAC of the 16 kHz mono audio
    (out / "index" / "recording.000001.tar.idx").unlink()  # as if the build had been killed during shard 1
    again = build_shards([tsv], out, shard_size=3, jobs=1, progress=False)
    assert again["shards_before"] == 2 and again["clips_total"] == 8
    with pytest.raises(ValueError, match="built differently .*shard_size"):
        build_shards([tsv], out, shard_size=4, jobs=1, progress=False)


def test_data_bench_reports_loader_throughput_beside_the_step_demand(tmp_path):
    from usad_upstream.distill.databench import data_table, run_data_bench

    record = run_data_bench(tmp_path, clips=12, batches=2, sample_rate=22050, demand=1000.0, manifest_rows=[], ranks=1)
    assert [(r["source"], r["cache"]) for r in record["loader"]] == [("tsv", "cold"), ("tsv", "warm"), ("shards", "cold"), ("shards", "warm")]
    for r in record["loader"]:
        assert r["batches"] == 2 and r["audio_s"] > 0 and r["audio_s_per_s"] == pytest.approx(r["audio_s"] / r["seconds"])
    table = data_table(record)
    need = 1000.0 / record["loader"][0]["audio_s_per_s"]
    assert f"| tsv | cold | 22050 | {record['loader'][0]['audio_s_per_s']:.0f} | {need:.1f} |" in table


def test_data_bench_starts_ranks_on_one_mapped_manifest_and_bounds_a_node(tmp_path):
    from usad_upstream.distill.databench import data_table, node_mb, run_data_bench

    record = run_data_bench(tmp_path, clips=0, batches=0, sample_rate=16000, demand=1000.0, manifest_rows=[3000], ranks=2)
    scale = record["manifest_scale"][0]
    assert scale["rows"] == scale["first_read"]["rows"] == 3000
    assert (tmp_path / "synthetic_3000.tsv.columns" / "paths.txt").is_file()
    steps = {r["steps"] for r in [scale["rank0_start"], *scale["rank_starts"]]}
    assert len(steps) == 1 and steps.pop() > 0 and sorted(r["rank"] for r in scale["rank_starts"]) == [1, 2]
    ranks = scale["rank_starts"]
    assert node_mb(scale) == pytest.approx(scale["rank0_start"]["start_peak_anon_mb"]
                                           + 7 * max(max(r["rss_anon_mb"], r["start_peak_anon_mb"]) for r in ranks)
                                           + max(r["rss_file_mb"] for r in [scale["rank0_start"], *ranks]))
    assert all(r["start_peak_anon_mb"] >= r["start_rss_anon_mb"] for r in [scale["rank0_start"], *ranks])
    assert f"| 3,000 | {scale['tsv_mb']:.0f} | {scale['first_read']['seconds']:.1f} /" in data_table(record)
    assert f"| {node_mb(scale):.0f} |" in data_table(record)


def test_a_manifest_with_a_header_only_reads_as_empty(tmp_path):
    tsv = write_manifest([], tmp_path / "empty.tsv")
    assert len(read_manifest(tsv)) == 0 and len(read_manifest(tsv)) == 0  # parsed, then mapped
