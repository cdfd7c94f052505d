"""The tables of ``bench_vs_tff``: what its repetitions measured, as the issue's table and the rows after it."""

from __future__ import annotations

from typing import Any

from tests.benchmarks import vs_tff_task
from tests.benchmarks.vs_tff_sessions import DP, SessionRun, median

MAIN_SITES = 3  # the main table's sites
ROWS = {"A": "A TFF sim, in memory", "B": "B TFF sim, files", "C": "C tffprod local", "D": "D tffprod remote"}


def seconds_per_round(result: Any) -> float:
    """Median s/round of one repetition: a list of round times (A, B) or a ``SessionRun`` (C, D)."""
    return median(result.per_round if isinstance(result, SessionRun) else result)


def over_reps(results: list[Any]) -> float:
    """The median over repetitions of each repetition's median s/round."""
    return median([seconds_per_round(r) for r in results])


def _s(x: float) -> str:
    return "-" if x != x else f"{x:.3f}"


def _x(a: float, b: float) -> str:
    return "-" if a != a or b != b or not b else f"{a / b:.2f}"


def print_main(results: dict[str, list[Any]], starts: dict, *, rounds: int, reps: int) -> None:
    s = {k: over_reps(v) for k, v in results.items()}
    print(f"\n{MAIN_SITES} sites, {rounds} rounds a session, {reps} repetitions interleaved; s/round: median of rounds "
          "2.. in each repetition, then of the repetitions")
    print("A, B: TFF's SyncExecutionContext over a gRPC channel to ONE worker_binary that runs every client (not "
          "TFF's default context,\nwhich starts the same binary but leaves it running); C: a worker_binary per site "
          "and one for the coordinator; D: each site's\ngateway (mTLS) and its isolated worker_binary, and a "
          "worker_binary for the coordinator. Start to end of round 1: a fresh process\n(A, B: `python -m "
          "tests.benchmarks.tff_sim`; C: `tffprod session run --spec --backend local`; D: `tffprod session run "
          "--plan`);\nwarm: its bytecode cache filled by the runs before; cold: an empty cache.")
    print("| | s/round | / B | / A | start to end of round 1 |")
    print("|---|---|---|---|---|")
    for key, label in ROWS.items():
        start = []
        for temp in ("warm", "cold"):
            if (key, temp) in starts:
                start.append(f"{starts[(key, temp)]['round1_s']:.1f} s {temp}")
        print(f"| {label} | {_s(s[key])} | {_x(s[key], s['B'])} | {_x(s[key], s['A'])} | "
              f"{', '.join(start) or '-'} |")
    for (key, temp), run in starts.items():
        if "recorded_s" not in run:
            continue
        line = (f"{key} {temp}: `session run` recorded the session after {run['recorded_s']:.1f} s and committed "
                f"round 1 after {run['round1_s']:.1f} s")
        if "from_plan_s" in run:
            cache = "hit" if run["plan_cached"] else "miss: it compiles"
            line += (f"; from the start of `session plan` (plan cache {cache}) through {MAIN_SITES} `site approve`: "
                     f"{run['from_plan_s']:.1f} s (plan and approvals {run['plan_s']:.1f} s)")
        print(line)
    print("per repetition (s/round): " + "; ".join(
        f"{k} " + " ".join(_s(seconds_per_round(r)) for r in v) for k, v in results.items()))
    print("in this process, plan + approval at each site per session (s; * compiled, else from the plan cache): "
          + "; ".join(f"{k} " + " ".join(f"{r.plan_s:.1f}{'*' if r.compiled else ''}" for r in results[k])
                      for k in ("D", "D+DP")))
    own_reader = s.get("B'")
    if own_reader is not None:
        print(f"B' TFF sim, files, read with tffprod's own reader (256 records parsed at a time): {_s(own_reader)} "
              f"s/round; D / B' = {_x(s['D'], own_reader)}, C / B' = {_x(s['C'], own_reader)}")
    dp, plain = s["D+DP"], s["D"]
    print(f"\nsite-level DP (gaussian_fixed, noise multiplier {DP['noise_multiplier']:g}, clip {DP['clip']:g}, noise "
          f"at the coordinator; unweighted DP-FedAvg), D at {MAIN_SITES} sites: {_s(dp)} s/round against "
          f"{_s(plain)} without: x{_x(dp, plain)}")


def print_scaling(scaling: dict[int, dict[str, list[Any]]], main: dict[str, list[Any]], reps: int) -> None:
    rows = dict(scaling)
    rows[MAIN_SITES] = {"B": main["B"], "D": main["D"]}
    print(f"\nscaling, D / B ({reps} repetition(s) each; {MAIN_SITES} sites: the main table's):")
    print("| sites | B s/round | D s/round | D / B | D MB in / out per round per site |")
    print("|---|---|---|---|---|")
    for n in sorted(rows):
        b, d = over_reps(rows[n]["B"]), over_reps(rows[n]["D"])
        print(f"| {n} | {_s(b)} | {_s(d)} | {_x(d, b)} | {_wire(rows[n]['D'])} |")


def print_large(large: dict[str, Any], reps: int) -> None:
    b, d = over_reps(large["B"]), over_reps(large["D"])
    n = vs_tff_task.num_parameters(vs_tff_task.LARGE)
    print(f"\nMLP 32-1024-1024-1 ({n:,} parameters), {MAIN_SITES} sites, {reps} repetition(s):")
    print("| | s/round | D / B | D MB in / out per round per site |")
    print("|---|---|---|---|")
    print(f"| B TFF sim, files | {_s(b)} | 1.00 | |")
    print(f"| D tffprod remote | {_s(d)} | {_x(d, b)} | {_wire(large['D'])} |")


def _wire(runs: list[Any]) -> str:
    wired = [r.wire for r in runs if r.wire]
    if not wired:
        return "-"
    return (f"{median([w['mb_in'] for w in wired]):.3f} / {median([w['mb_out'] for w in wired]):.3f} "
            f"({median([w['calls'] for w in wired]):.0f} calls)")


def print_breakdown(sessions: dict[str, list[Any]]) -> None:
    """Where the rounds of C and D go: medians over every measured round of every repetition."""
    print("\nwhere a round goes (s, medians over rounds 2.. of every repetition): commit-to-commit = in-round "
          "(the registry's duration_s) + commit\n(accounting, checkpoint, registry row, events); in-round = slowest "
          "site's part (as the coordinator waits for it) + the rest (merge, after_merge at the\ncoordinator); at "
          "the site: one release as its gateway timed it (checks, the worker's computation, the ledger). CPU s per "
          "round (means) of\nthis process (the coordinator's Python), the coordinator's worker_binary, the site "
          "workers (sum), the site gateways (sum); then the whole session call.")
    print("| row | commit-to-commit | in-round | slowest site | at the site | merge etc. | commit | CPU coord py "
          "| coord worker | site workers | gateways | session s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, runs in sessions.items():
        rounds = [x for r in runs for x in r.per_round]
        inside = [x for r in runs for x in r.in_round]
        site = [x for r in runs for x in r.site_part]
        rest = [a - b for r in runs for a, b in zip(r.in_round, r.site_part)]
        commit = [a - b for r in runs for a, b in zip(r.per_round, r.in_round)]
        cpu = {k: median([r.cpu.get(k, float("nan")) for r in runs])
               for k in ("coordinator", "coord-worker", "site-workers", "gateways")}
        gateways = cpu["gateways"] if label.startswith("D") else float("nan")
        at_site = median([x for r in runs for x in r.site_calls])
        print(f"| {label} | {_s(median(rounds))} | {_s(median(inside))} | {_s(median(site))} | {_s(at_site)} "
              f"| {_s(median(rest))} "
              f"| {_s(median(commit))} | {_s(cpu['coordinator'])} | {_s(cpu['coord-worker'])} "
              f"| {_s(cpu['site-workers'])} | {_s(gateways)} | {median([r.wall_s for r in runs]):.1f} |")


def print_memory(memory: dict[str, tuple[int, float, float]]) -> None:
    print("\npeak resident memory (VmHWM) per process, MB (of several processes of a kind: the largest and the "
          "smallest); A, B, C and D's coordinators from the warm start-up runs:")
    print("| process | processes | peak MB |")
    print("|---|---|---|")
    for role, (n, high, low) in memory.items():
        print(f"| {role} | {n} | {high:.0f}" + (f" ({low:.0f} to {high:.0f})" if n > 1 else "") + " |")
