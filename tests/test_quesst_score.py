"""The QUESST scorer (MTWV/ATWV/Cnxe) against cases computed by hand, and its file readers on
files in the formats of s3prl's quesst14_dtw output and the QUESST 2014 ground truth."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from downstream_recipes.superb import quesst_score as qs

DOCS = ("quesst14_00001", "quesst14_00002", "quesst14_00003", "quesst14_00004")
# q1 occurs in d1 and d2, q2 in d3, q3 nowhere (left out, as the official tool does).
TARGETS = {("q1", "quesst14_00001"), ("q1", "quesst14_00002"), ("q2", "quesst14_00003")}
SYSTEM = {
    ("q1", "quesst14_00001"): (3.0, True), ("q1", "quesst14_00002"): (1.0, False),
    ("q1", "quesst14_00003"): (2.0, True), ("q1", "quesst14_00004"): (0.0, False),
    ("q2", "quesst14_00001"): (0.5, False), ("q2", "quesst14_00002"): (-1.0, False),
    ("q2", "quesst14_00003"): (2.5, True),  # (q2, d4) missing: default score -10, NO
    ("q3", "quesst14_00001"): (9.0, True),
}
TRUTH = qs.GroundTruth(DOCS, ("q1", "q2", "q3"), frozenset(TARGETS))


def test_twv_by_hand() -> None:
    beta = (1 / 100) * (1 / 0.0008 - 1)
    assert beta == pytest.approx(12.49)
    got = qs.score(SYSTEM, TRUTH)
    # ATWV, YES decisions: q1 hits d1 (1 of 2 true), false alarm on d3 (1 of 2 false); q2 hits d3.
    atwv = 1 - ((1 - 1 / 2 + beta * 1 / 2) + (1 - 1 + beta * 0 / 3)) / 2
    assert got.atwv == pytest.approx(atwv) == pytest.approx(-2.3725)
    # Best threshold 2.5 (YES: q1-d1, q2-d3): P_miss 1/2 and 0, no false alarm.
    assert got.mtwv == pytest.approx(1 - (0.5 + 0.0) / 2) == pytest.approx(0.75)
    assert got.mtwv_threshold == 2.5
    assert (got.queries, got.trials, got.targets) == (2, 8, 3)


def _cxe(llrs: list[tuple[float, bool]], p: float = 0.0008) -> float:
    """Cross-entropy in bits, written out term by term."""
    logit = math.log(p / (1 - p))
    tar = [math.log(1 + math.exp(-(x + logit))) if x != math.inf else 0.0 for x, t in llrs if t]
    non = [math.log(1 + math.exp(x + logit)) if x != -math.inf else 0.0 for x, t in llrs if not t]
    return (p * sum(tar) / len(tar) + (1 - p) * sum(non) / len(non)) / math.log(2)


def test_cnxe_by_hand() -> None:
    p = 0.0008
    prior = -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    trials = [(3.0, True), (1.0, True), (2.0, False), (0.0, False), (0.5, False), (-1.0, False), (2.5, True), (-10.0, False)]
    got = qs.score(SYSTEM, TRUTH)
    assert got.act_cnxe == pytest.approx(_cxe(trials) / prior)
    # PAV over the scores in order (-10 N, -1 N, 0 N, 0.5 N, 1 T, 2 N, 2.5 T, 3 T): the 1-vs-2
    # inversion pools to 1/2, the rest are 0 or 1; llr = logit(posterior) - log(3/5).
    half = math.log(1.0) - math.log(3 / 5)
    pav = [(math.inf, True), (half, True), (half, False), (-math.inf, False), (-math.inf, False), (-math.inf, False),
           (math.inf, True), (-math.inf, False)]
    assert got.min_cnxe == pytest.approx(_cxe(pav) / prior) == pytest.approx(0.3124, abs=1e-4)
    assert got.min_cnxe < got.act_cnxe  # calibration can only help


def test_ties_are_one_threshold_and_no_detection_scores_zero() -> None:
    # all of q1's trials tie: a threshold takes the false alarms with the hits
    tied = {k: (1.0, False) for k in SYSTEM}
    assert qs.score(tied, TRUTH).mtwv == 0.0 and qs.score(tied, TRUTH).mtwv_threshold == math.inf
    perfect = {(q, d): (1.0 if (q, d) in TARGETS else -1.0, (q, d) in TARGETS) for q in ("q1", "q2") for d in DOCS}
    result = qs.score(perfect, TRUTH)
    assert result.mtwv == result.atwv == 1.0 and result.min_cnxe == pytest.approx(0.0, abs=1e-12)


def test_reads_s3prl_stdlist_and_quesst_groundtruth(tmp_path: Path) -> None:
    gt = tmp_path / "groundtruth_quesst14_dev"
    gt.mkdir()
    (gt / "quesst14.ecf.xml").write_text('<ecf source_signal_duration="9" language="nnenglish" version="1">\n' + "".join(
        f'<excerpt audio_filename="{d}" channel="1" tbeg="0.000" dur="2.0" source_type="x"/>\n' for d in DOCS) + "</ecf>\n")
    (gt / "quesst14_dev.tlist.xml").write_text('<termlist ecf_filename="quesst14.ecf.xml" version="1">\n' + "".join(
        f'<term termid="{q}"><termtext>{q}</termtext></term>\n' for q in ("q1", "q2", "q3")) + "</termlist>\n")
    (gt / "quesst14_dev.rttm").write_text("".join(
        f"LEXEME {d} 1 0.100 0.500 {q} lex <NA> <NA>\n" for q, d in sorted(TARGETS)))
    # what s3prl's quesst14_dtw expert writes (lxml, pretty printed)
    lines = ['<stdlist termlist_filename="benchmark.stdlist.xml" indexing_time="1.00" language="english" '
             'index_size="1" system_id="benchmark">']
    for q in ("q1", "q2", "q3"):
        lines.append(f'  <detected_termlist termid="{q}" term_search_time="1.0" oov_term_count="1">')
        for (qq, d), (s, yes) in SYSTEM.items():
            if qq == q:
                lines.append(f'    <term file="{d}" channel="1" tbeg="0.000" dur="0.00" score="{s:.4f}" '
                             f'decision="{"YES" if yes else "NO"}"/>')
        lines.append("  </detected_termlist>")
    (tmp_path / "benchmark.stdlist.xml").write_text("\n".join(lines + ["</stdlist>"]) + "\n")
    truth = qs.read_groundtruth(gt)
    assert truth.targets == frozenset(TARGETS) and truth.documents == DOCS
    assert qs.score(qs.read_stdlist(tmp_path / "benchmark.stdlist.xml"), truth) == qs.score(SYSTEM, TRUTH)
    assert qs.main([str(tmp_path / "benchmark.stdlist.xml"), str(gt), "--split", "test"]) == 0
    (gt / "quesst14_dev.rttm").write_text("LEXEME quesst14_00009 1 0 1 q1 lex <NA> <NA>\n")
    with pytest.raises(ValueError, match="quesst14_00009 is not in the ecf"):
        qs.read_groundtruth(gt)
    (gt / "quesst14_dev.rttm").write_text("SPEAKER x 1 0 1\n")
    with pytest.raises(ValueError, match=r"rttm:1: expected 'LEXEME"):
        qs.read_groundtruth(gt)
    with pytest.raises(ValueError, match="expected one \\*.ecf.xml"):
        qs.read_groundtruth(tmp_path)
    assert qs.main([str(tmp_path / "missing.xml"), str(gt)]) == 2


def test_report_lines_are_what_the_leaderboard_reads(tmp_path: Path) -> None:
    from results import s3prl_logs

    log = tmp_path / "usad_test.log"
    log.write_text("[QbE] layer 3 (best on dev):\n" + qs.report(qs.score(SYSTEM, TRUTH), "test"))
    obs = {o.metric: o.value for o in s3prl_logs.parse_stdout(log, "test-stage")}
    assert obs["mtwv"] == pytest.approx(0.75) and obs["atwv"] == pytest.approx(-2.3725) and "min_cnxe" in obs
