"""What the user reads: summary.json, summary.md (a table and a verdict in words).

The collapse thresholds live here so that training's periodic warnings and the final verdict
say the same thing (`diagnose`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

# Thresholds from the diagnosed failure: NegSim ~0.906 with PosSim ~0.96 was an embedding collapse.
NEG_SIM_COLLAPSE = 0.8     # different sentences this similar: everything sits in one narrow cone
GAP_COLLAPSE = 0.1         # same- vs different-sentence cosine barely apart: nothing to retrieve by
VISUAL_DEPENDENCE_MIN = 0.05  # WER rises by less than this when the video is swapped: ignored
CHANGED_READS = 0.5        # ... unless most outputs change with the video
CE_READS = 0.1             # ... or the teacher-forced CE rises by this much (nats/token)
COPY_RATE_LM = 0.9         # almost every output is a training sentence ...
WER_LM = 0.9               # ... and almost all words are wrong: a language model, not a translator

# Rows of the summary table: (key, label, format). Columns are the systems evaluated.
EMBEDDING_ROWS = [
    ("pos_sim", "PosSim (same sentence)", "{:.3f}"),
    ("neg_sim", "NegSim (different sentence)", "{:.3f}"),
    ("gap", "gap = PosSim - NegSim", "{:.3f}"),
    ("ret1_v2t", "Ret@1 video→text", "{:.1%}"),
    ("ret5_v2t", "Ret@5 video→text", "{:.1%}"),
    ("ret10_v2t", "Ret@10 video→text", "{:.1%}"),
    ("ret1_t2v", "Ret@1 text→video", "{:.1%}"),
    ("ret5_t2v", "Ret@5 text→video", "{:.1%}"),
    ("ret10_t2v", "Ret@10 text→video", "{:.1%}"),
    ("median_rank_v2t", "median rank video→text", "{:.0f}"),
    ("ret1_v2v", "Ret@1 video→video (same label)", "{:.1%}"),
    ("ret5_v2v", "Ret@5 video→video (same label)", "{:.1%}"),
    ("alignment", "alignment (lower = closer pairs)", "{:.3f}"),
    ("uniformity", "uniformity (lower = more spread)", "{:.3f}"),
    ("rankme", "effective rank (RankMe)", "{:.1f}"),
]
GENERATION_ROWS = [  # raw references (sacreBLEU); *_normalised: references through the model's tokenizer
    ("wer", "WER", "{:.3f}"),
    ("bleu4", "BLEU-4", "{:.2f}"),
    ("chrf", "chrF", "{:.2f}"),
    ("exact_match", "exact match", "{:.1%}"),
    ("wer_normalised", "WER, normalised references", "{:.3f}"),
    ("bleu4_normalised", "BLEU-4, normalised references", "{:.2f}"),
    ("chrf_normalised", "chrF, normalised references", "{:.2f}"),
    ("exact_match_normalised", "exact match, normalised references", "{:.1%}"),
    ("train_copy_rate", "output is a training sentence", "{:.1%}"),
    ("ce", "teacher-forced CE (nats/token)", "{:.3f}"),
]


def diagnose(m: dict) -> list[str]:
    """Warnings in words for a flat metrics dict (any subset of keys; missing ones are skipped)."""
    out = []
    neg, gap = m.get("neg_sim"), m.get("gap")
    if gap is None and _num(m.get("pos_sim")) and _num(neg):
        gap = m["pos_sim"] - neg
    if _num(neg) and neg > NEG_SIM_COLLAPSE:
        out.append(f"embedding collapse: NegSim {neg:.3f} > {NEG_SIM_COLLAPSE} — videos of "
                   "different sentences point the same way")
    if _num(gap) and gap < GAP_COLLAPSE:
        out.append(f"embedding collapse: PosSim - NegSim = {gap:.3f} < {GAP_COLLAPSE} — same and "
                   "different sentences are hardly separated")
    vd, changed, vd_ce = (m.get(k) for k in ("visual_dependence_wer", "visual_dependence_changed",
                                             "visual_dependence_ce"))
    if _num(vd) and vd < VISUAL_DEPENDENCE_MIN:
        reads = (_num(changed) and changed > CHANGED_READS) or (_num(vd_ce) and vd_ce > CE_READS)
        detail = "; ".join(s for s in (f"{changed:.0%} of outputs change" if _num(changed) else "",
                                       f"CE {vd_ce:+.3f} nats/token" if _num(vd_ce) else "") if s)
        if reads:
            out.append(f"the decoder's output depends on the video ({detail} when it is swapped) but "
                       f"not usefully: WER changes by only {vd:+.3f}")
        else:
            out.append(f"decoder ignores the video: swapping every sample's encoder output for another "
                       f"sample's changes WER by only {vd:+.3f}" + (f" ({detail})" if detail else ""))
    elif not _num(vd) and _num(vd_ce) and vd_ce <= CE_READS:
        # no decoding (training's periodic validation): the CE criterion alone decides
        out.append(f"decoder ignores the video: swapping every sample's encoder output for another "
                   f"sample's changes the teacher-forced CE by only {vd_ce:+.3f} nats/token "
                   f"(<= {CE_READS})")
    copy, wer = m.get("train_copy_rate"), m.get("wer")
    if _num(copy) and _num(wer) and copy > COPY_RATE_LM and wer > WER_LM:
        out.append(f"decoder collapse: {copy:.0%} of outputs are verbatim training sentences yet "
                   f"WER is {wer:.2f} — it recites the training set")
    return out


def validation_warnings(metrics: dict) -> list[str]:
    """The warnings for training's periodic validation, by the same rule as the evaluation's
    verdict (`diagnose`): pass the validation metrics as they are (pos_sim, neg_sim and, when
    computed, visual_dependence_ce / visual_dependence_wer / visual_dependence_changed; other keys
    are ignored, the gap is derived from pos_sim and neg_sim when absent)."""
    keys = ("pos_sim", "neg_sim", "gap", "visual_dependence_wer", "visual_dependence_changed",
            "visual_dependence_ce", "wer", "train_copy_rate")
    return diagnose({k: metrics[k] for k in keys if k in metrics})


def verdict(summary: dict) -> str:
    """One paragraph: collapsed or not, and why, from the flat keys of a summary."""
    problems = diagnose(summary)
    facts = []
    if _num(summary.get("ret1_v2t")):
        facts.append(f"video→text Ret@1 is {summary['ret1_v2t']:.1%} against a chance level of "
                     f"{1 / max(summary.get('gallery_size', 1), 1):.1%} "
                     f"({summary.get('gallery_size')} distinct sentences)")
    base = summary.get("baselines", {})
    if _num(summary.get("wer")):
        words = f"greedy WER is {summary['wer']:.3f}"
        if _num(base.get("most_frequent", {}).get("wer")):
            words += f" (always the most frequent training sentence: {base['most_frequent']['wer']:.3f}"
            if _num(base.get("retrieval", {}).get("wer")):
                words += f"; nearest training sentence in CLIP space: {base['retrieval']['wer']:.3f}"
            words += ")"
        facts.append(words)
    nn = base.get("keypoint_nn", {}).get("ret1_v2t")
    if _num(nn) and _num(summary.get("ret1_v2t")):
        facts.append(f"a training-free nearest neighbour on keypoint paths finds the right sentence for "
                     f"{nn:.1%} of the clips ({'below' if summary['ret1_v2t'] > nn else 'AT OR ABOVE'} "
                     "the model's Ret@1)")
    if _num(summary.get("visual_dependence_wer")):
        facts.append(f"swapping the encoder output between samples raises WER by "
                     f"{summary['visual_dependence_wer']:+.3f}")
    if problems:
        head = "**Collapsed.** " + " ".join(p[0].upper() + p[1:] + "." for p in problems)
    else:
        neg, gap, vd = summary.get("neg_sim"), summary.get("gap"), summary.get("visual_dependence_wer")
        parts = []
        if _num(neg):
            parts.append(f"the embeddings separate the sentences (NegSim {neg:.3f}"
                         + (f", gap {gap:.3f})" if _num(gap) else ")"))
        if _num(vd):
            parts.append("the decoder depends on the video")
        text = " and ".join(parts)
        head = "**Not collapsed.** " + (text[:1].upper() + text[1:] + "." if parts else
                                         "(no collapse metric was available).")
    return head + (" In numbers: " + "; ".join(facts) + "." if facts else "")


def markdown_table(columns: dict[str, dict], rows=None) -> str:
    """A markdown table: one row per metric, one column per system (missing cells are blank)."""
    rows = rows or EMBEDDING_ROWS + GENERATION_ROWS
    rows = [r for r in rows if any(r[0] in c for c in columns.values())]
    lines = ["| metric | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for key, label, fmt in rows:
        # n/a: computed but undefined (e.g. PosSim when no sentence occurs twice); blank: not computed
        cells = [fmt.format(c[key]) if _num(c.get(key)) else "n/a" if key in c else ""
                 for c in columns.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Columns of the per-group tables (`eval --by`): one row per group
GROUP_COLUMNS = [
    ("n_samples", "n", "{:.0f}"), ("ret1_v2t", "Ret@1 v→t", "{:.1%}"), ("ret5_v2t", "Ret@5 v→t", "{:.1%}"),
    ("ret1_t2v", "Ret@1 t→v", "{:.1%}"), ("pos_sim", "PosSim", "{:.3f}"), ("neg_sim", "NegSim", "{:.3f}"),
    ("wer", "WER", "{:.3f}"), ("bleu4", "BLEU-4", "{:.2f}"), ("chrf", "chrF", "{:.2f}"),
    ("wer_normalised", "WER norm.", "{:.3f}"), ("bleu4_normalised", "BLEU-4 norm.", "{:.2f}"),
    ("exact_match", "exact", "{:.1%}"), ("ce", "CE", "{:.3f}"),
    ("visual_dependence_wer", "vis.dep. ΔWER", "{:+.3f}"),
]


def group_table(groups: dict[str, dict], columns=GROUP_COLUMNS) -> str:
    """A markdown table with one row per group (its flat summary keys) and one column per metric."""
    lines = ["| group | " + " | ".join(h for _, h, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for name, g in groups.items():
        cells = [fmt.format(g[k]) if _num(g.get(k)) else "n/a" for k, _, fmt in columns]
        lines.append(f"| {_cell(name) or '(none)'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scoring_markdown(summary: dict) -> str:
    """Which checkpoint was scored, and how WER/BLEU/chrF were computed."""
    lines = []
    ck = summary.get("checkpoint") or {}
    if ck.get("file"):
        lines.append(f"Checkpoint: `{ck['file']}` (step {ck.get('step')}; {ck.get('selected', '')}).")
    sc = summary.get("scoring")
    if sc:
        sig = sc.get("sacrebleu", {})
        lines.append(f"WER, BLEU-4, chrF and exact match are against the **raw references** "
                     f"({sc['case']}); sacreBLEU signatures: BLEU `{sig.get('bleu4')}`, chrF "
                     f"`{sig.get('chrf')}`; WER: {sc.get('wer')}. Rows marked *normalised references* "
                     f"are the same against references passed through the model's tokenizer (what "
                     f"the model can write): not comparable with published scores. Output a training "
                     f"sentence: compared after that normalisation.")
    return "\n\n".join(lines)


def summary_markdown(summary: dict, examples: list[dict] | None = None) -> str:
    """The whole summary.md: header, verdict, table of systems, example translations."""
    columns = {"model (CLIP head, greedy)": {**summary.get("clip", {}), **summary.get("greedy", {})}}
    if summary.get("supcon"):  # video-only metrics: the SupCon head is not in the text's space
        columns["SupCon head (video only)"] = summary["supcon"]
    if summary.get("beam"):
        columns[f"beam {summary.get('beam_size', '')}".strip()] = summary["beam"]
    if summary.get("rerank"):
        columns["reranked: decoder + nearest training sentences"] = summary["rerank"]
    if summary.get("swapped"):
        columns["video swapped"] = summary["swapped"]
    for name, title in (("most_frequent", "baseline: most frequent sentence"),
                        ("retrieval", "baseline: nearest training sentence"),
                        ("keypoint_nn", "baseline: keypoint nearest neighbour (no training)"),
                        ("keypoint_nn_mirror", "baseline: keypoint NN, mirrored query too")):
        if summary.get("baselines", {}).get(name):
            columns[title] = summary["baselines"][name]
    head = (f"# Evaluation: {summary.get('run', '')} — split `{summary.get('split', '')}`\n\n"
            f"{summary.get('n_samples')} samples, {summary.get('gallery_size')} distinct sentences "
            "(the video→text gallery; text→video searches all videos). Retrieval ties count "
            "against the model." + (" The SupCon head is trained on videos only, so it is scored on "
                                   "videos only (no text retrieval)." if summary.get("supcon") else ""))
    if summary.get("n_samples") and not _num(summary.get("pos_sim")):
        head += (" PosSim (and the gap) are n/a: no sentence occurs twice in this split, so there"
                 " are no same-sentence pairs.")
    head += "\n\n"
    scoring = scoring_markdown(summary)
    md = head + (scoring + "\n\n" if scoring else "") + verdict(summary) + "\n\n" + markdown_table(columns) + "\n"
    for column, groups in (summary.get("by") or {}).items():
        md += (f"\n## By {column}\n\nEvery metric of each {column} is in summary.json under "
               f"`by.{column}.<value>`. Video→text searches the whole split's {summary.get('gallery_size')} "
               f"sentences for every group (ranks as in the table above); text→video searches the "
               f"group's own videos.\n\n" + group_table(groups) + "\n")
    if summary.get("visual_dependence"):
        md += "\n## Visual dependence (original − swapped; positive = uses the video)\n\n"
        md += "\n".join(f"- {k}: {v:+.4f}" for k, v in summary["visual_dependence"].items()
                        if _num(v)) + "\n"
    if examples:
        md += ("\n## Examples\n\n| reference | model | model, given another sample's video "
               "| nearest training sentence |\n|---|---|---|---|\n")
        md += "\n".join(f"| {_cell(e['reference'])} | {_cell(e['hypothesis'])} | "
                        f"{_cell(e.get('swapped', ''))} | {_cell(e.get('retrieved', ''))} |"
                        for e in examples) + "\n"
    return md


def write_summary(out_dir, summary: dict, examples: list[dict] | None = None) -> Path:
    """Write summary.json (NaN -> null) and summary.md into out_dir; return the .md path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {**summary, "examples": examples or []}
    (out_dir / "summary.json").write_text(json.dumps(_finite(payload), indent=2) + "\n")
    md = out_dir / "summary.md"
    md.write_text(summary_markdown(summary, examples))
    return md


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _finite(x):
    """JSON has no NaN: write null instead."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
