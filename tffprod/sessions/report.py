"""``tffprod session report``: a session's plots (PNG) and summary (Markdown), from the registry alone.

Writes into one directory:

- ``metrics.png``: the training metrics (loss, accuracy, ...) over rounds;
- ``epsilon.png``: epsilon spent after each round (DP sessions only);
- ``site_time.png``: each site's time per round, failed rounds marked;
- ``report.md``: the spec, the sites, the dataset versions with their content hashes, every round's
  numbers, the privacy spent (or "no DP"), the evaluation per dataset and over all held-out data,
  and the lineage of the model version, with the plots embedded.

Reads the registry only (rounds, evaluations, dataset versions, the model version): no TensorFlow,
so a report takes a second or two (matplotlib). Human output never shows a Python ``None``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from tffprod.errors import SessionError, TffprodError
from tffprod.sessions.events import TENSORBOARD_DIR
from tffprod.sessions.plots import plot_epsilon, plot_metrics, plot_site_times
from tffprod.sessions.round_metrics import shown_metrics, train_metrics

if TYPE_CHECKING:
    from tffprod.registry.protocol import ModelVersionRow, RegistryStore, RoundRow, SessionRow

__all__ = ["REPORT_FILE", "write_report"]

REPORT_FILE = "report.md"
METRICS_PNG, EPSILON_PNG, SITE_TIME_PNG = "metrics.png", "epsilon.png", "site_time.png"


def write_report(session_id: str, *, registry: RegistryStore, out_dir: Path) -> dict[str, Any]:
    """Write the report of ``session_id`` into ``out_dir`` (created if missing; files of an earlier report
    there are replaced).

    Returns:
        ``{"session", "out", "report", "files"}``: the directory, the Markdown file and every file written
        (absolute paths).

    Raises:
        TffprodError: ``out_dir`` (or a parent of it) is a file. NotFoundError: unknown session.
        SessionError: the session has no committed round yet. Nothing is written in any of these cases.
    """
    out = Path(out_dir)
    _check_out_dir(out)
    session = registry.get_session(session_id)
    rounds = registry.list_rounds(session_id)
    if not rounds:
        raise SessionError(f"session {session_id} ({session['status']}) has no committed round yet: nothing to "
                           "report")
    versions = [v for v in registry.list_model_versions(session["name"]) if v["session_id"] == session_id]
    version = versions[-1] if versions else None
    evaluations = registry.list_evaluations(version["name"], version["version"], kind=None) if version else []
    refs = list(dict.fromkeys([*session["datasets"], *(e["dataset"] for e in evaluations if e["kind"] != "overall")]))
    datasets = [dict(registry.get_dataset(ref), role="train" if ref in session["datasets"] else "eval")
                for ref in refs]
    out = out.absolute()
    try:
        out.mkdir(parents=True, exist_ok=True)
        plots = _plots(session, rounds, out)
        markdown = out / REPORT_FILE
        markdown.write_text(_markdown(session, rounds, version, evaluations, datasets, plots))
    except OSError as e:
        raise TffprodError(f"cannot write the report into {out}: {e.strerror or e}") from None
    files = [str(p) for p in [*plots.values(), markdown]]
    return {"session": session_id, "out": str(out), "report": str(markdown), "files": files}


def _check_out_dir(out: Path) -> None:
    """``out`` and its nearest existing parent must be directories."""
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == out else f"is inside {existing}, which is a file"
        raise TffprodError(f"{out} {where}; --out needs a directory")


# ------------------------------------------------------------------------------------------ series and plots


def _series(rounds: Sequence[RoundRow]) -> dict[str, dict[str, list]]:
    """``{"metrics": {name: [...]}, "epsilon": {accountant: [...]}, "time": {site: [...]}}``, one value
    per round (None where a round has none)."""
    metrics: dict[str, list] = {}
    for i, row in enumerate(rounds):
        for name, value in shown_metrics(train_metrics(row["metrics"])).items():
            metrics.setdefault(name, [None] * len(rounds))[i] = value
    epsilon = {"rdp": [r["epsilon"] for r in rounds], "pld": [r["epsilon_pld"] for r in rounds]}
    time: dict[str, list] = {}
    for i, row in enumerate(rounds):
        for p in row["participants"]:
            time.setdefault(p["site"], [None] * len(rounds))[i] = p["duration_s"]
    return {"metrics": metrics, "time": dict(sorted(time.items())),
            "epsilon": {k: v for k, v in epsilon.items() if any(e is not None for e in v)}}


def _plots(session: SessionRow, rounds: Sequence[RoundRow], out: Path) -> dict[str, Path]:
    numbers = [r["round_num"] for r in rounds]
    series = _series(rounds)
    title = f"{session['name']} ({session['id']})"
    plots = {}
    if series["metrics"]:
        plots[METRICS_PNG] = plot_metrics(numbers, series["metrics"], out / METRICS_PNG,
                                          title=f"training metrics, {title}")
    if series["epsilon"]:
        plots[EPSILON_PNG] = plot_epsilon(numbers, series["epsilon"], _delta(session), out / EPSILON_PNG,
                                          title=f"epsilon spent, {title}")
    if series["time"]:
        failed = {site: [r["round_num"] for r in rounds for p in r["participants"]
                         if p["site"] == site and p["status"] != "ok"] for site in series["time"]}
        plots[SITE_TIME_PNG] = plot_site_times(numbers, series["time"], failed, out / SITE_TIME_PNG,
                                               title=f"time per site, {title}")
    return plots


def _delta(session: Mapping[str, Any]) -> float | None:
    return (session["spec"].get("dp") or {}).get("delta")


# ------------------------------------------------------------------------------------------------ Markdown


def _text(value: Any, fmt: str = ".4f") -> str:
    """A cell: ``-`` for None, floats as ``fmt``, never a Python repr of None."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, fmt)
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v, fmt) for v in value) or "-"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_text(c) for c in row) + " |" for row in rows), ""]


def _markdown(session: SessionRow, rounds: Sequence[RoundRow], version: ModelVersionRow | None,
              evaluations: Sequence[dict], datasets: Sequence[dict], plots: Mapping[str, Path]) -> str:
    summary = {
        "Status": session["status"] + (f" ({session['error']})" if session.get("error") else ""),
        "Backend": session["backend"],
        "Rounds": f"{len(rounds)} committed of {session['rounds_planned']} planned",
        "Created": session["created_at"], "Finished": session["finished_at"],
        "Duration": f"{session['duration_s']:.1f} s" if session.get("duration_s") is not None else None,
        "Plan": session["spec"].get("plan_id"),
        "Model version": f"{version['name']}:{version['version']}" if version else "none (the session did not "
        "finish)",
        "TensorBoard": _tensorboard(rounds)}
    lines = [f"# Session {session['id']}: {session['name']}", "",
             *(f"- {key}: {_text(value)}" for key, value in summary.items()), ""]
    lines += _spec_section(session)
    lines += _sites_section(rounds)
    lines += ["## Dataset versions", ""]
    lines += _table(["dataset", "role", "examples", "clients", "client id", "content hash", "registered"],
                    [(d["ref"], d["role"], d["num_examples"], d["num_clients"], d["client_id"] or "- (site-level)",
                      f"`{d['content_hash']}`", d["registered_at"]) for d in datasets])
    lines += _training_section(rounds, plots)
    lines += _privacy_section(session, rounds, version, plots)
    lines += _evaluation_section(evaluations)
    lines += _lineage_section(version)
    return "\n".join(lines).rstrip() + "\n"


def _tensorboard(rounds: Sequence[RoundRow]) -> str | None:
    """``tensorboard --logdir DIR`` when the session's event files are there (beside its checkpoints)."""
    checkpoint = rounds[-1].get("checkpoint")
    logdir = Path(checkpoint).parent.parent / TENSORBOARD_DIR if checkpoint else None
    return f"`tensorboard --logdir {logdir}`" if logdir is not None and logdir.is_dir() else None


def _spec_section(session: SessionRow) -> list[str]:
    spec = session["spec"]
    lines = ["## Spec", "",
             f"- Task: `{spec.get('task', '-')}`",
             f"- Training datasets: {', '.join(spec.get('datasets') or []) or '-'}",
             f"- Evaluation datasets: {', '.join(spec.get('eval_datasets') or []) or '-'}",
             f"- Rounds: {spec.get('rounds', session['rounds_planned'])}; min sites: {_text(spec.get('min_sites'))}; "
             f"seed: {_text(spec.get('seed'))}",
             f"- DP: {_dp_text(spec.get('dp') or {})}",
             "", "```json", json.dumps(spec, indent=2, sort_keys=True), "```", ""]
    return lines


def _dp_text(dp: Mapping[str, Any]) -> str:
    mechanism = dp.get("mechanism") or "none"
    if mechanism == "none":
        return "no DP"
    rest = [f"{k} {v:g}" if isinstance(v, float) else f"{k} {'yes' if v else 'no'}" if isinstance(v, bool)
            else f"{k} {v}" for k, v in dp.items()
            if k != "mechanism" and v is not None and not isinstance(v, (Mapping, list))]
    return f"{mechanism}" + (f" ({', '.join(rest)})" if rest else "")


def _sites_section(rounds: Sequence[RoundRow]) -> list[str]:
    sites: dict[str, list[dict]] = {}
    for row in rounds:
        for p in row["participants"]:
            sites.setdefault(p["site"], []).append(p)
    rows = []
    for site, calls in sorted(sites.items()):
        ok = [c for c in calls if c["status"] == "ok"]
        failed = sorted({c["status"] for c in calls if c["status"] != "ok"})
        times = [c["duration_s"] for c in calls]
        rows.append((site, len(calls), len(ok), f"{len(calls) - len(ok)}" + (f" ({', '.join(failed)})" if failed
                                                                            else ""),
                     f"{sum(times) / len(times):.2f}", f"{max(times):.2f}", sum(c.get("clients") or 0 for c in ok)))
    lines = ["## Sites", ""]
    if not rows:
        return lines + ["No site was called (no client was sampled in any round).", ""]
    return lines + _table(["site", "rounds called", "ok", "failed", "mean time (s)", "max time (s)",
                           "clients (all rounds)"], rows)


def _columns(metrics: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metrics people read (loss, accuracy, ...), then the number of examples if recorded."""
    names = list(dict.fromkeys(k for m in metrics for k in shown_metrics(m)))
    return names + (["num_examples"] if any("num_examples" in m for m in metrics) else [])


def _training_section(rounds: Sequence[RoundRow], plots: Mapping[str, Path]) -> list[str]:
    lines = ["## Training", ""]
    if METRICS_PNG in plots:
        lines += [f"![training metrics over rounds]({METRICS_PNG})", ""]
    if SITE_TIME_PNG in plots:
        lines += [f"![time per site and round]({SITE_TIME_PNG})", ""]
    names = _columns([train_metrics(r["metrics"]) for r in rounds])
    dp = any(r["epsilon"] is not None for r in rounds)
    header = ["round", "sites ok", "clients", "time (s)", *(["epsilon"] if dp else []), *names]
    rows = []
    for r in rounds:
        metrics = train_metrics(r["metrics"])
        ok = sum(p["status"] == "ok" for p in r["participants"])
        rows.append((r["round_num"], f"{ok}/{len(r['participants'])}", r["clients"], f"{r['duration_s']:.2f}",
                     *([_text(r["epsilon"], ".4g")] if dp else []), *(metrics.get(n) for n in names)))
    return lines + _table(header, rows)


def _privacy_section(session: SessionRow, rounds: Sequence[RoundRow], version: ModelVersionRow | None,
                     plots: Mapping[str, Path]) -> list[str]:
    lines = ["## Privacy", ""]
    last = rounds[-1]
    if last["epsilon"] is None:
        return lines + ["- no DP: the session ran without differential privacy; no epsilon to report", ""]
    privacy = session.get("privacy") or {}
    lines += [f"- Mechanism: {_dp_text(session['spec'].get('dp') or {})}",
              f"- Unit of privacy: {_text(privacy.get('unit'))}",
              f"- Spent after round {last['round_num']}: epsilon {last['epsilon']:.4g} at delta "
              f"{_text(_delta(session), 'g')}" + (f" (PLD accountant: {last['epsilon_pld']:.4g})"
                                                    if last["epsilon_pld"] is not None else "")]
    dp: Mapping[str, Any] = version["dp"] if version is not None else {}
    against = (dp.get("privacy") or {}).get("against_coordinator")
    if against:
        seen = f"epsilon {against['epsilon']:.4g}" if against.get("epsilon") is not None else \
            "not private (un-noised releases)"
        where = "at the coordinator" if against["noise_placement"] == "coordinator" else \
            f"at the sites ({against['noise_placement']})"
        where += ", secure aggregation" if against.get("secure_aggregation") else ""
        lines.append(f"- Noise added {where}; against the coordinator, one site's releases: {seen}")
    lines.append("")
    if EPSILON_PNG in plots:
        lines += [f"![epsilon over rounds]({EPSILON_PNG})", ""]
    return lines


def _evaluation_section(evaluations: Sequence[dict]) -> list[str]:
    lines = ["## Evaluation", ""]
    if not evaluations:
        return lines + ["No evaluation recorded (no eval_datasets, or the session did not finish).", ""]
    names = _columns([e["metrics"] for e in evaluations])
    ordered = sorted(evaluations, key=lambda e: (e["kind"] == "overall", e["created_at"]))
    rows = [("all held-out data" if e["kind"] == "overall" else e["dataset"],
             "-" if e["kind"] == "overall" else e["dataset"].split("/", 1)[0],
             *(e["metrics"].get(n) for n in names), e["created_at"]) for e in ordered]
    return lines + _table(["dataset", "site", *names, "recorded"], rows)


def _lineage_section(version: ModelVersionRow | None) -> list[str]:
    lines = ["## Model version and lineage", ""]
    if version is None:
        return lines + ["No model version: the session did not finish ('tffprod session resume' continues it, "
                        "'tffprod session export' exports its last round).", ""]
    lineage = version.get("lineage") or {}
    task = lineage.get("task") or {}
    session = lineage.get("session") or {}
    lines += [f"- Model: {version['name']}:{version['version']}, created {version['created_at']}",
              f"- Aliases: {', '.join(version.get('aliases') or []) or '-'}",
              f"- May be received by: {', '.join(version.get('access') or []) or '- (nobody)'}",
              f"- Artifact: `{version['artifact_path']}`"]
    if not lineage:
        return lines + ["- Lineage: - (registered before lineage was recorded)", ""]
    spent = "no DP" if lineage.get("epsilon") is None else \
        f"epsilon {lineage['epsilon']:.4g} at delta {_text(lineage.get('delta'), 'g')}"
    lines += [f"- Trained by session {_text(session.get('id'))}: {_text(session.get('rounds_completed'))} of "
              f"{_text(session.get('rounds_planned'))} rounds, backend {_text(session.get('backend'))}",
              f"- Sites: {', '.join(lineage.get('sites') or []) or '-'}",
              f"- Task: `{_text(task.get('path'))}`, source sha256 `{_text(task.get('sha256'))}`",
              "- Versions: " + (", ".join(f"{k} {_text(v)}" for k, v in (lineage.get("versions") or {}).items())
                                or "-"),
              f"- Privacy: {spent}" + (f", unit: {lineage['privacy_unit']}" if lineage.get("privacy_unit") else ""),
              "- Datasets: " + (", ".join(f"{d['ref']} ({d['role']}, `{d.get('content_hash')}`)"
                                          for d in lineage.get("datasets") or []) or "-"), ""]
    return lines
