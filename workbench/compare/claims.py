"""The claims ledger: each paper claim as a paired effect over seeds and prompts with its 95% interval, the p-value of
its test, Holm's adjustment over the ledger, and a verdict, per world; the margins of the "≈" and "adds little"
claims, fixed with their reasons."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.compare.conditions import student_vs_teacher
from workbench.compare.harness import load_records, load_references
from workbench.compare.runs import ADPA_METHODS, LEDGER_VARIANTS, REFERENCE_ROWS, Variant, adpa_available
from workbench.compare.stats import BOOTSTRAP, claim_p_value, holm
from workbench.compare.tables import (
    format_interval,
    format_p,
    paired_difference,
    prompt_scores,
    reference_frame,
    runs_frame,
)

logger = logging.getLogger("workbench.compare")

# --- the claims ledger ---


@dataclass(frozen=True)
class Claim:
    """A qualitative claim as a paired comparison of two run labels over seeds (and prompts).

    ``kind``: ``"greater"`` (a > b), ``"less"`` (a < b), ``"equivalent"`` (|a − b| < margin) or ``"at_most"``
    (a − b < margin: "adds little"), the margin from ``MARGINS[claim_id]``. ``a = "@best"`` picks the table method
    with the highest mean ``metric``; ``b = "teacher"`` / ``"student (initial)"`` use the reference evaluations.
    """

    claim_id: str
    paper: str
    statement: str
    a: str
    b: str
    kind: str = "greater"
    metric: str = "gold"


CLAIMS = (
    Claim("pad-ppd>vpd", "PAD §5.2, Table 1", "PPD beats VPD", "pad-ppd", "pad-vpd"),
    Claim(
        "pad-alpha0.8>0", "PAD §5.3, Fig. 5", "α = 0.8 beats α = 0 (likelihood only)", "pad-ppd", "pad-ppd[alpha=0.0]"
    ),
    Claim("pad-alpha0.8>1", "PAD §5.3, Fig. 5", "α = 0.8 beats α = 1 (MCQ only)", "pad-ppd", "pad-ppd[alpha=1.0]"),
    Claim(
        "pad-2x4~1x8",
        "PAD §5.4, Table 2",
        "2 iterations × 4 samples ≈ 1 × 8 in quality",
        "pad-ppd[iterations=2]",
        "pad-ppd[n=8]",
        kind="equivalent",
    ),
    Claim(
        "pad-2x4~1x8@steps",
        "PAD §5.4, Table 2 (equal optimizer steps)",
        "2 × 4 ≈ 1 × 8 when the two rounds share 1 × 8's optimizer steps",
        "pad-ppd[iterations=2,steps=150]",
        "pad-ppd[n=8]",
        kind="equivalent",
    ),
    Claim(
        "pad-2x4-cheaper",
        "PAD §5.4, Table 2",
        "2 × 4 costs less than 1 × 8 (cold-cache wall time, s)",
        "pad-ppd[iterations=2]",
        "pad-ppd[n=8]",
        kind="less",
        metric="seconds",
    ),
    Claim("adpa>dckd", "ADPA Table 1", "ADPA beats DCKD", "adpa", "dckd"),
    Claim("dckd>sft", "ADPA Table 1", "DCKD beats SFT", "dckd", "sft"),
    Claim("adpa>no-ref", "ADPA ablation", "ADPA without the reference teacher is worse", "adpa", "adpa_no_ref"),
    Claim(
        "student>teacher",
        "PAD §5.2 / PLaD §5.2",
        "a distilled student can surpass the teacher (best method)",
        "@best",
        "teacher",
    ),
    Claim("plad>seqkd", "PLaD §5.2, Table 1", "PLaD beats SeqKD", "plad", "seqkd"),
    Claim(
        "plad-normalised>summed",
        "PLaD Eq. 4 (a design choice)",
        "the per-token (length-normalised) log-likelihood in PLaD's hinge beats the literal summed one",
        "plad",
        "plad[length_normalize=False]",
    ),
    Claim(
        "real-pairs-add-little",
        "PLaD §5.3, Fig. 2",
        "real (gold-ordered) pairs add little over pseudo pairs",
        "plad[real_ratio=1.0]",
        "plad",
        kind="at_most",
    ),
    # the same two PLaD claims for the anchored variant (beyond the paper), where training moves the student
    # beyond the papers: PAD asks the judge once, in a random option order (§4.2); averaging over the n cyclic orders
    # removes the judge's preference for a letter position (n times the MCQ passes)
    Claim(
        "pad-cyclic>random",
        "PAD §4.2 (beyond: option order)",
        "the MCQ judgement averaged over cyclic option orders beats one random order",
        "pad-ppd[mcq_order=cyclic]",
        "pad-ppd",
    ),
    Claim("plad+sft>seqkd", "PLaD §5.2 (+SFT anchor)", "PLaD (+ SFT anchor) beats SeqKD", "plad+sft", "seqkd"),
    Claim(
        "real-pairs-add-little+sft",
        "PLaD §5.3 (+SFT anchor)",
        "real pairs add little over pseudo pairs (PLaD + SFT anchor)",
        "plad+sft[real_ratio=1.0]",
        "plad+sft",
        kind="at_most",
    ),
)


GAP_FRACTION = 0.1  # a tenth of the teacher − initial-student gap in mean gold: "little" / "the same quality"


@dataclass(frozen=True)
class Margin:
    """The margin of an "equivalent" or "at_most" claim: ``fraction`` of the gap between the teacher's and the initial
    student's mean gold over the claim's seeds (the gold that distillation is there to close, measured on the same
    prompts and seeds), and why. The rule reads only the reference evaluations, never the runs the claim compares."""

    fraction: float
    reason: str


MARGINS: dict[str, Margin] = {
    "pad-2x4~1x8": Margin(
        GAP_FRACTION,
        "PAD Table 2 calls 2 × 4 and 1 × 8 comparable without a margin; the same quality is read as a difference "
        "under a tenth of the teacher − initial-student gap",
    ),
    "pad-2x4~1x8@steps": Margin(GAP_FRACTION, "as for 2 × 4 ≈ 1 × 8 at PAD's own steps"),
    "real-pairs-add-little": Margin(
        GAP_FRACTION,
        "PLaD Fig. 2 reads real pairs as adding little over pseudo pairs; little is under a tenth of the "
        "teacher − initial-student gap",
    ),
    "real-pairs-add-little+sft": Margin(GAP_FRACTION, "as for PLaD without the anchor"),
}


def claim_variants(claims: Sequence[Claim] = CLAIMS) -> list[Variant]:
    """The runs the given claims compare (``@best`` needs the whole table: run suite ``table`` for it); ADPA-family
    runs only when ``workbench.methods.adpa`` exists."""
    known = {v.label: v for v in LEDGER_VARIANTS}
    out: list[Variant] = []
    for claim in claims:
        for label in (claim.a, claim.b):
            if label in ("@best", *REFERENCE_ROWS):
                continue
            variant = known.get(label, Variant(label))
            if variant.method in ADPA_METHODS and not adpa_available():
                continue
            if variant not in out:
                out.append(variant)
    return out


def verdict(kind: str, low: float, high: float, margin: float) -> str:
    """holds / does not hold / inconclusive from a CI [low, high] of the effect a − b."""
    if np.isnan(low) or np.isnan(high):
        return "inconclusive"
    if kind == "greater":
        return "holds" if low > 0 else "does not hold" if high < 0 else "inconclusive"
    if kind == "less":
        return "holds" if high < 0 else "does not hold" if low > 0 else "inconclusive"
    if kind == "equivalent":
        if -margin < low and high < margin:
            return "holds"
        return "does not hold" if low > margin or high < -margin else "inconclusive"
    if kind == "at_most":
        return "holds" if high < margin else "does not hold" if low > margin else "inconclusive"
    raise ValueError(f"unknown claim kind {kind!r}")


def claims_ledger(
    records: Sequence[dict], references: dict[int, dict] | None = None, claims: Sequence[Claim] = CLAIMS
) -> pd.DataFrame:
    """Each claim → the paired effect a − b of its metric, its 95% interval, the p-value of its test, Holm's p over
    the measured claims, and the verdict before and after Holm.

    The effect is paired by seed (both runs share the seed's distillation prompts and samples) and, for gold, by
    held-out prompt: the interval is the bootstrap over seeds and prompts
    (:func:`workbench.compare.tables.paired_difference`); wall time, one value per run, has the t interval over
    seeds. "holds" needs the interval on the claimed side of 0 (or inside ±margin for "equivalent", below +margin
    for "at_most"); "does not hold" needs it wholly on the other side; anything else is "inconclusive". ``p``
    (:func:`workbench.compare.stats.claim_p_value`) is below 0.05 exactly where the interval decides the claim;
    ``after_holm`` keeps a decided verdict only where Holm's p over the ledger's measured claims is below 0.05 too.
    ``margin``: ``MARGINS``' fraction of the teacher − initial-student gap (nan without reference evaluations; then
    the claim is not measured). ``ci95``: half the interval's width (symmetric error bars).
    """
    frame = runs_frame(records)
    if references:
        frame = pd.concat([reference_frame(references), frame], ignore_index=True)
    scores = prompt_scores(records, references)
    table_labels = set(frame.loc[~frame["label"].str.contains(r"\[", regex=True), "label"]) - set(REFERENCE_ROWS)
    student, teacher = (frame[frame["label"] == label].set_index("seed")["gold"] for label in REFERENCE_ROWS)
    rows = []
    for claim in claims:
        a = claim.a
        if a == "@best":
            means = frame[frame["label"].isin(table_labels)].groupby("label")[claim.metric].mean()
            a = str(means.idxmax()) if len(means) else a
        by_seed = {label: frame[frame["label"] == label].set_index("seed")[claim.metric] for label in (a, claim.b)}
        seeds = sorted(set(by_seed[a].index) & set(by_seed[claim.b].index))
        margin = np.nan
        if claim.claim_id in MARGINS:
            gap_seeds = sorted(set(seeds) & set(teacher.index) & set(student.index))
            gap = float(np.mean([teacher[s] - student[s] for s in gap_seeds])) if gap_seeds else np.nan
            margin = MARGINS[claim.claim_id].fraction * gap
        row = {
            "claim": claim.claim_id,
            "paper": claim.paper,
            "statement": claim.statement,
            "a": a,
            "b": claim.b,
            "metric": claim.metric,
            "kind": claim.kind,
            "margin": margin,
            "n_seeds": len(seeds),
        }
        missing = [x for x in (a, claim.b) if by_seed[x].empty]
        if not seeds or (claim.claim_id in MARGINS and np.isnan(margin)):
            why = f"no runs of {', '.join(missing)}" if not seeds else "no teacher and initial-student evaluations"
            rows.append(
                {
                    **row,
                    **dict.fromkeys(("a_mean", "b_mean", "effect", "ci95", "low", "high", "p"), np.nan),
                    "interval": "",
                    "n_prompts": 0,
                    "verdict": f"not measured ({why})",
                }
            )
            continue
        difference = paired_difference(frame, scores, a, claim.b, claim.metric)
        rows.append(
            {
                **row,
                "a_mean": float(np.mean([by_seed[a][s] for s in seeds])),
                "b_mean": float(np.mean([by_seed[claim.b][s] for s in seeds])),
                "effect": difference.effect,
                "ci95": difference.half_width,
                "low": difference.low,
                "high": difference.high,
                "interval": difference.interval,
                "n_prompts": difference.n_prompts,
                "p": claim_p_value(claim.kind, difference, margin),
                "verdict": verdict(claim.kind, difference.low, difference.high, margin),
            }
        )
    matched = student_vs_teacher(records, references)
    if not matched.empty:  # the student>teacher claim with each side at its best sampling setting
        best = matched.iloc[-1]
        rows.append(
            {
                "claim": "student>teacher@best-settings",
                "paper": "PAD §5.2 / PLaD §5.2 (settings matched)",
                "statement": "a distilled student surpasses the teacher, each at its best sampling setting",
                "a": f"{best['student']} ({best['student_setting']})",
                "b": f"teacher ({best['teacher_setting']})",
                "metric": "gold",
                "kind": "greater",
                "margin": np.nan,
                "n_seeds": int(best["n_seeds"]),
                "a_mean": best["student_gold"],
                "b_mean": best["teacher_gold"],
                "effect": best["effect"],
                "ci95": (best["high"] - best["low"]) / 2,
                "low": best["low"],
                "high": best["high"],
                "interval": BOOTSTRAP,
                "n_prompts": int(best["n_prompts"]),
                "p": best["p"],
                "verdict": verdict("greater", best["low"], best["high"], np.nan),
            }
        )
    ledger = pd.DataFrame(rows)
    ledger["p_holm"] = holm(ledger["p"].to_numpy(dtype=float)) if len(ledger) else []
    ledger["after_holm"] = [
        v if v not in ("holds", "does not hold") or q < 0.05 else "inconclusive"
        for v, q in zip(ledger["verdict"], ledger["p_holm"])
    ]
    return ledger


def parse_worlds(items: Sequence[str]) -> dict[str, str]:
    """``["default=results/compare", "results/compare_world1"]`` → ``{world: runs folder}`` (a bare folder is named
    by its last part), the ``--across`` arguments of ``workbench.compare`` and ``workbench.figures``."""
    return dict(item.split("=", 1) if "=" in item else (Path(item).name, item) for item in items)


def ledger_across_worlds(runs_dirs: Mapping[str, str | Path]) -> pd.DataFrame:
    """The claims ledger of each runs folder (one gym world each, e.g. ``results/compare`` and
    ``results/compare_world1``) side by side: one row per claim, per world its effect, the half-width of its 95%
    interval (``_ci95``) and its verdict (before Holm: Holm's family is one world's ledger), and
    ``across`` — "holds in every world", "does not hold in any world", "depends on the world" (it holds in one and
    fails in another), "undecided (holds / does not hold where decided)" (the other worlds inconclusive or not
    measured), "undecided (inconclusive where measured)" or "not measured"."""
    ledgers = {
        world: claims_ledger(load_records(path), load_references(path)).set_index("claim")
        for world, path in runs_dirs.items()
    }
    # every claim of CLAIMS, then those a ledger adds where its records allow (the student against its teacher at
    # each side's best sampling setting), in the order the ledgers list them
    ids = [claim.claim_id for claim in CLAIMS]
    ids += list(dict.fromkeys(i for ledger in ledgers.values() for i in ledger.index if i not in ids))
    rows = []
    for claim_id in ids:
        first = next(ledger.loc[claim_id] for ledger in ledgers.values() if claim_id in ledger.index)
        row = {"claim": claim_id, "statement": first["statement"], "metric": first["metric"]}
        verdicts = []
        for world, ledger in ledgers.items():
            r = ledger.loc[claim_id] if claim_id in ledger.index else {"effect": np.nan, "ci95": np.nan, "n_seeds": 0}
            verdict = r.get("verdict", "not measured (scored at the table's setting only)")
            row.update(
                {
                    f"{world}_effect": r["effect"],
                    f"{world}_ci95": r["ci95"],
                    f"{world}_verdict": verdict,
                    f"{world}_seeds": r["n_seeds"],
                }
            )
            verdicts.append(verdict)
        decided = {v for v in verdicts if v in ("holds", "does not hold")}
        if all(v == "holds" for v in verdicts):
            row["across"] = "holds in every world"
        elif all(v == "does not hold" for v in verdicts):
            row["across"] = "does not hold in any world"
        elif len(decided) == 2:
            row["across"] = "depends on the world"
        elif decided:
            row["across"] = f"undecided ({decided.pop()} where decided)"
        elif all(v.startswith("not measured") for v in verdicts):
            row["across"] = "not measured"
        else:
            row["across"] = "undecided (inconclusive where measured)"
        rows.append(row)
    return pd.DataFrame(rows)


def format_ledger_across(table: pd.DataFrame, worlds: Sequence[str]) -> str:
    """A markdown table of :func:`ledger_across_worlds`: per world the effect ± half its 95% interval's width (the
    interval itself, asymmetric for the bootstrap, is in each world's report) and verdict, then ``across``."""
    lines = ["| claim | " + " | ".join(worlds) + " | across worlds |", "|---" * (len(worlds) + 2) + "|"]
    for _, r in table.iterrows():
        d = 1 if r["metric"] == "seconds" else 3
        cells = []
        for w in worlds:
            effect = r[f"{w}_effect"]
            cells.append(
                "—"
                if np.isnan(effect)
                else f"{effect:+.{d}f} ± {r[f'{w}_ci95']:.{d}f} ({r[f'{w}_verdict']}, {r[f'{w}_seeds']} seeds)"
            )
        lines.append(f"| {r['statement']} | " + " | ".join(cells) + f" | {r['across']} |")
    return "\n".join(lines)


def format_ledger(ledger: pd.DataFrame) -> str:
    """A markdown table of the ledger."""
    lines = [
        "| claim | paper | compared | effect (95% interval) | interval | margin | p | Holm p | verdict | after Holm |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in ledger.iterrows():
        d = 1 if r["metric"] == "seconds" else 3
        effect = format_interval(r["effect"], r["low"], r["high"], d)
        effect += "" if np.isnan(r["effect"]) else f" ({r['metric']})"
        margin = "—" if np.isnan(r["margin"]) else ("±" if r["kind"] == "equivalent" else "< ") + f"{r['margin']:.3f}"
        lines.append(
            f"| {r['statement']} | {r['paper']} | {r['a']} vs {r['b']} | {effect} | {r['interval'] or '—'} | "
            f"{margin} | {format_p(r['p'])} | {format_p(r['p_holm'])} | {r['verdict']} | {r['after_holm']} |"
        )
    return "\n".join(lines)


def format_margins(ledger: pd.DataFrame) -> str:
    """A markdown table of the ledger's margins (``MARGINS``): each claim's rule, value on these runs and reason."""
    lines = ["| claim | kind | margin | rule | reason |", "|---|---|---|---|---|"]
    for _, r in ledger[ledger["claim"].isin(list(MARGINS))].iterrows():
        rule = MARGINS[r["claim"]]
        value = "—" if np.isnan(r["margin"]) else f"{r['margin']:.4f}"
        lines.append(
            f"| {r['statement']} | {r['kind']} | {value} | {rule.fraction:g} × (teacher − initial student) mean gold "
            f"| {rule.reason} |"
        )
    return "\n".join(lines)
