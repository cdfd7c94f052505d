"""Model cards: a version's lineage, access list and metrics, as JSON and Markdown.

``model export`` writes both beside the exported model, so whoever receives it can see
where it came from (sessions, dataset versions, DP and epsilon), what it scores, and who
may receive it. TF-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

CARD_JSON = "model_card.json"
CARD_MARKDOWN = "model_card.md"


def model_card(version: Mapping[str, Any], evaluations: Sequence[Mapping[str, Any]], *,
               exported_for: str | None = None) -> dict[str, Any]:
    """The card of a registry model version (as ``Registry.get_model_version`` returns it)."""
    return {
        "model": version["name"],
        "version": version["version"],
        "aliases": list(version.get("aliases", [])),
        "created_at": version["created_at"],
        "exported_for": exported_for,
        "access": list(version.get("access", [])),
        "task": version["task"],
        "epsilon": version["epsilon"],
        "delta": version["delta"],
        "metrics": version["metrics"],
        "lineage": version.get("lineage") or {},
        "evaluations": [{key: ev.get(key) for key in ("dataset", "kind", "metrics", "session_id", "created_at")}
                        for ev in evaluations],
    }


def session_card(session: Mapping[str, Any], last_round: Mapping[str, Any],
                 datasets: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The card of a session's last committed round (``session export``: a model that is not a registered
    version, e.g. of a cancelled session); ``datasets`` are the session's training datasets' registry rows."""
    dp = session["spec"].get("dp") or {"mechanism": "none"}
    epsilon = last_round.get("epsilon")
    return {
        "model": session["name"],
        "version": f"session {session['id']}, round {last_round['round_num']} (not a registered version)",
        "aliases": [],
        "created_at": last_round["recorded_at"],
        "exported_for": None,
        "access": [],
        "task": session["task"],
        "epsilon": epsilon,
        "delta": dp.get("delta") if epsilon is not None else None,
        "metrics": {"train": last_round["metrics"]},
        "lineage": {
            "session": {"id": session["id"], "name": session["name"], "backend": session["backend"],
                        "rounds_completed": last_round["round_num"], "rounds_planned": session["rounds_planned"]},
            "sites": sorted({p["site"] for p in last_round["participants"] if p["status"] == "ok"}),
            "dp": dp,
            "privacy_unit": (session.get("privacy") or {}).get("unit"),
            "datasets": [{"ref": row["ref"], "role": "train", "num_examples": row["num_examples"],
                          "content_hash": row["content_hash"]} for row in datasets],
        },
        "evaluations": [],
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return "`" + json.dumps(value, sort_keys=True) + "`"
    return "-" if value is None else str(value)


def _metrics_line(metrics: Mapping[str, Any] | None) -> str:
    if not metrics:
        return "-"
    return ", ".join(f"{k} {_fmt(v)}" for k, v in metrics.items() if not isinstance(v, (dict, list)))


def card_markdown(card: Mapping[str, Any]) -> str:
    """The card as Markdown, for people."""
    lineage = card["lineage"]
    session = lineage.get("session", {})
    lines = [
        f"# Model card: {card['model']}:{card['version']}",
        "",
        f"- Created: {card['created_at']}",
        f"- Aliases: {', '.join(card['aliases']) or '-'}",
        f"- Exported for: {card['exported_for'] or '- (operator export)'}",
        f"- May be received by: {', '.join(card['access']) or '- (nobody)'}",
        "",
        "## Training",
        "",
        (f"- Session: {_fmt(session.get('id'))} ({_fmt(session.get('name'))}, "
         f"backend {_fmt(session.get('backend'))})"),
        f"- Rounds: {_fmt(session.get('rounds_completed'))} of {_fmt(session.get('rounds_planned'))} planned",
        f"- Sites: {', '.join(lineage.get('sites', [])) or '-'}",
        (f"- Task: {_fmt(lineage.get('task', {}).get('path'))} "
         f"(source sha256 {_fmt(lineage.get('task', {}).get('sha256'))})"),
        "- Versions: " + ", ".join(f"{k} {_fmt(v)}" for k, v in lineage.get("versions", {}).items()),
        "",
        "| dataset | role | examples | content hash |",
        "|---|---|---|---|",
        *(f"| {d['ref']} | {d['role']} | {d['num_examples']} | {d['content_hash']} |"
          for d in lineage.get("datasets", [])),
        "",
        "## Privacy",
        "",
        f"- DP: {_fmt(lineage.get('dp', {}).get('mechanism', 'none'))}"
        + "".join(f", {k} {_fmt(v)}" for k, v in lineage.get("dp", {}).items() if k not in ("mechanism", "privacy")),
        f"- Unit of privacy: {_fmt(lineage.get('privacy_unit'))}",
        f"- Epsilon: {_fmt(card['epsilon'])}, delta: {_fmt(card['delta'])}",
        *_coordinator_line(lineage.get("dp", {}).get("privacy", {}).get("against_coordinator")),
        "",
        "## Metrics",
        "",
        ("- Training (last round): "
         f"{_metrics_line(lineage.get('metrics', {}).get('train') or card['metrics'].get('train'))}"),
        f"- Evaluation, overall: {_metrics_line(lineage.get('metrics', {}).get('overall'))}",
    ]
    for site, per_dataset in sorted(lineage.get("metrics", {}).get("per_site", {}).items()):
        for ref, metrics in per_dataset.items():
            lines.append(f"- Evaluation at {site}, {ref}: {_metrics_line(metrics)}")
    if card["evaluations"]:
        lines += ["", "## Evaluations recorded", "", "| dataset | kind | metrics | at |", "|---|---|---|---|"]
        lines += [f"| {ev['dataset']} | {ev.get('kind') or 'dataset'} | "
                  f"{_metrics_line(ev['metrics'])} | {ev['created_at']} |"
                  for ev in card["evaluations"]]
    return "\n".join(lines) + "\n"


def write_card(card: Mapping[str, Any], directory: Path, *, prefix: str = "") -> list[Path]:
    """Writes ``{prefix}model_card.json`` and ``{prefix}model_card.md`` into ``directory``."""
    json_path, md_path = Path(directory) / f"{prefix}{CARD_JSON}", Path(directory) / f"{prefix}{CARD_MARKDOWN}"
    json_path.write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
    md_path.write_text(card_markdown(card))
    return [json_path, md_path]


def _coordinator_line(against: Any) -> list[str]:
    """What the coordinator learnt from each site's releases (sessions recorded before this was kept: nothing)."""
    if not against:
        return []
    where = "at the coordinator" if against["noise_placement"] == "coordinator" else \
        f"at the sites ({against['noise_placement']}{', secure aggregation' if against['secure_aggregation'] else ''})"
    epsilon = f"epsilon {_fmt(against['epsilon'])}" if against["epsilon"] is not None else \
        "not private (un-noised releases)"
    return [f"- Noise added {where}; against the coordinator, one site's releases: {epsilon}"]
