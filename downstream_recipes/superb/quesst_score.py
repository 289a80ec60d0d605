"""QUESST 2014 scoring: TWV (actual and maximum) and Cnxe (actual and minimum) of a NIST STD
`.stdlist.xml` against a QUESST ground-truth folder (ecf, tlist, rttm).

s3prl's quesst14_dtw writes benchmark.stdlist.xml for the official MediaEvalQUESST2014.jar,
which ships only inside the QUESST 2014 database; this is our implementation of what that tool
reports (QUESST 2014 scores detection per file, not per time, so every (query, document) pair is
one trial):

- TWV(θ) = 1 − mean_q [P_miss(q, θ) + β P_fa(q, θ)],  β = (C_fa / C_miss)(1/P_target − 1),
  P_miss = 1 − hits/N_true(q), P_fa = false alarms/(N_docs − N_true(q)); queries with no
  occurrence are left out (as the tool does). ATWV uses the system's YES decisions, MTWV the
  best single threshold over its scores (≥ θ is YES); no detection at all gives TWV 0.
- Cnxe = C_xe / C_xe(prior): cross-entropy of the scores read as log-likelihood ratios, with
  prior P_target, divided by that of a system that always answers the prior (llr 0).
  minCnxe is Cnxe after the best monotonic recalibration (PAV, sklearn's isotonic regression).

Constants: C_miss 100, C_fa 1, P_target 0.0008 (β = 12.49), as we read the QUESST 2014 task
definition; pass others for other campaigns. A trial the system did not list gets
`default_score` (the official script's usual -10) and NO.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

P_TARGET, C_MISS, C_FA = 0.0008, 100.0, 1.0
DEFAULT_SCORE = -10.0
_RTTM = re.compile(r"^LEXEME\s+(\S+)\s+\S+\s+\S+\s+\S+\s+(\S+)")


@dataclass(frozen=True)
class GroundTruth:
    documents: tuple[str, ...]
    queries: tuple[str, ...]  # every query of the tlist
    targets: frozenset[tuple[str, str]]  # (query, document) pairs where the query occurs


@dataclass(frozen=True)
class QbeScores:
    atwv: float
    mtwv: float
    mtwv_threshold: float
    act_cnxe: float
    min_cnxe: float
    queries: int  # queries scored (those with an occurrence)
    trials: int
    targets: int


def _one(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        raise ValueError(f"{directory}: expected one {pattern} file (QUESST ground truth), found {len(found)}")
    return found[0]


def _xml(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{path}: not valid XML ({exc})") from None


def read_groundtruth(directory: "str | Path") -> GroundTruth:
    """A groundtruth_quesst14_<split> folder: *.ecf.xml, *.tlist.xml and *.rttm."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"QUESST ground truth folder not found: {directory}")
    docs = tuple(Path(e.get("audio_filename", "")).stem for e in _xml(_one(directory, "*.ecf.xml")).iter("excerpt"))
    queries = tuple(t.get("termid", "") for t in _xml(_one(directory, "*.tlist.xml")).iter("term"))
    targets = set()
    rttm = _one(directory, "*.rttm")
    for n, line in enumerate(rttm.read_text().splitlines(), 1):
        if not line.strip():
            continue
        m = _RTTM.match(line)
        if m is None:
            raise ValueError(f"{rttm}:{n}: expected 'LEXEME <file> <chan> <tbeg> <dur> <query> ...', got {line!r}")
        doc, query = Path(m.group(1)).stem, m.group(2)
        if doc not in docs or query not in queries:
            raise ValueError(f"{rttm}:{n}: {doc if doc not in docs else query} is not in the "
                             f"{'ecf' if doc not in docs else 'tlist'}")
        targets.add((query, doc))
    if not docs or not queries:
        raise ValueError(f"{directory}: the ecf lists {len(docs)} documents and the tlist {len(queries)} queries")
    return GroundTruth(docs, queries, frozenset(targets))


def read_stdlist(path: "str | Path") -> dict[tuple[str, str], tuple[float, bool]]:
    """(query, document) -> (score, decision YES) from a NIST STD .stdlist.xml."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"system output not found: {path}")
    out = {}
    for termlist in _xml(path).iter("detected_termlist"):
        query = termlist.get("termid", "")
        for term in termlist.iter("term"):
            try:
                score = float(term.get("score", "nan"))
            except ValueError:
                score = math.nan
            if not math.isfinite(score):
                raise ValueError(f"{path}: term {query} / {term.get('file')}: score {term.get('score')!r} is not a number")
            out[(query, Path(term.get("file", "")).stem)] = (score, term.get("decision", "NO").upper() == "YES")
    return out


def _trials(system: dict, truth: GroundTruth, default_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Scores, YES decisions, target labels and query index of every trial of the queries
    that occur at least once."""
    queries = sorted({q for q, _ in truth.targets})
    scores, yes, labels, owner = [], [], [], []
    for k, query in enumerate(queries):
        for doc in truth.documents:
            score, decision = system.get((query, doc), (default_score, False))
            scores.append(score)
            yes.append(decision)
            labels.append((query, doc) in truth.targets)
            owner.append(k)
    return np.array(scores, float), np.array(yes, bool), np.array(labels, bool), np.array(owner, int), queries


def _twv_weights(labels: np.ndarray, owner: np.ndarray, n_docs: int, beta: float) -> np.ndarray:
    """Per-trial contribution of a YES: +1/N_true(q) for a hit, −β/(N_docs − N_true(q)) for a
    false alarm, so that TWV = sum of the YES trials' weights / number of queries."""
    n_true = np.bincount(owner, weights=labels.astype(float))[owner]
    n_false = n_docs - n_true
    return np.where(labels, 1.0 / n_true, -beta / np.where(n_false > 0, n_false, np.inf))


def _cxe(llr: np.ndarray, labels: np.ndarray, p_target: float) -> float:
    """Cross-entropy (bits) of llrs at prior p_target, targets and non-targets weighted by it."""
    offset = math.log(p_target / (1 - p_target))
    with np.errstate(invalid="ignore"):
        tar = np.logaddexp(0.0, -(llr[labels] + offset)).mean()
        non = np.logaddexp(0.0, llr[~labels] + offset).mean()
    return float((p_target * tar + (1 - p_target) * non) / math.log(2))


def _pav_llr(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The best monotonic map of scores to llrs (PAV posteriors, minus the empirical prior)."""
    from sklearn.isotonic import IsotonicRegression

    posterior = IsotonicRegression(increasing=True, y_min=0.0, y_max=1.0).fit_transform(scores, labels.astype(float))
    prior = math.log(labels.sum() / (~labels).sum())
    with np.errstate(divide="ignore"):
        return np.log(posterior) - np.log1p(-posterior) - prior


def score(system: dict[tuple[str, str], tuple[float, bool]], truth: GroundTruth, default_score: float = DEFAULT_SCORE,
          p_target: float = P_TARGET, c_miss: float = C_MISS, c_fa: float = C_FA) -> QbeScores:
    """ATWV, MTWV (and its threshold), actual and minimum Cnxe of one system."""
    scores, yes, labels, owner, queries = _trials(system, truth, default_score)
    if not queries:
        raise ValueError("no query of the tlist occurs in any document (the rttm is empty): nothing to score")
    if labels.all():
        raise ValueError("every trial is a target: TWV's false-alarm term and Cnxe are undefined")
    beta = (c_fa / c_miss) * (1 / p_target - 1)
    weights = _twv_weights(labels, owner, len(truth.documents), beta)
    atwv = float(weights[yes].sum() / len(queries))
    order = np.argsort(-scores, kind="stable")
    gains = np.cumsum(weights[order]) / len(queries)
    last_of_tie = np.r_[scores[order][1:] != scores[order][:-1], True]  # a threshold takes all equal scores
    candidates = np.flatnonzero(last_of_tie)
    best = candidates[np.argmax(gains[candidates])]
    mtwv, threshold = float(gains[best]), float(scores[order][best])
    if mtwv < 0:  # answering NO to everything is one of the thresholds
        mtwv, threshold = 0.0, math.inf
    prior_cost = -(p_target * math.log2(p_target) + (1 - p_target) * math.log2(1 - p_target))  # C_xe of llr = 0
    return QbeScores(
        atwv=atwv, mtwv=mtwv, mtwv_threshold=threshold,
        act_cnxe=_cxe(scores, labels, p_target) / prior_cost,
        min_cnxe=_cxe(_pav_llr(scores, labels), labels, p_target) / prior_cost,
        queries=len(queries), trials=len(scores), targets=int(labels.sum()),
    )


def report(result: QbeScores, split: str) -> str:
    """Lines `<split> <metric>: <value>` (the form the leaderboard's s3prl log parser reads)."""
    return "".join(f"{split} {name}: {value}\n" for name, value in (
        ("mtwv", result.mtwv), ("atwv", result.atwv), ("min_cnxe", result.min_cnxe), ("act_cnxe", result.act_cnxe)))


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stdlist", help="the system's .stdlist.xml (s3prl: EXPDIR/benchmark.stdlist.xml)")
    parser.add_argument("groundtruth", help="quesst14Database/scoring/groundtruth_quesst14_{dev,eval}")
    parser.add_argument("--default-score", type=float, default=DEFAULT_SCORE)
    parser.add_argument("--split", default="dev", help="label of the printed lines (dev, test)")
    args = parser.parse_args(argv)
    try:
        result = score(read_stdlist(args.stdlist), read_groundtruth(args.groundtruth), args.default_score)
    except ValueError as exc:
        print(f"quesst_score: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(report(result, args.split))
    print(f"{result.queries} queries x {result.trials // result.queries} documents, {result.targets} targets; "
          f"MTWV threshold {result.mtwv_threshold:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
