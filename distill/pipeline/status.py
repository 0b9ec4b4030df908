"""`distill pipeline status | promote | rollback`: read the ledger, move the alias by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from distill.config import ConfigError
from distill.pipeline.run import LEDGER, STAGE_ORDER, promote_in_ledger, read_ledger, say
from distill.pipeline.spec import load_spec
from distill.pipeline.store import Store, open_store


def _open(spec_path: str, work: str | None) -> tuple[Any, Store]:
    spec = load_spec(spec_path)
    store = open_store(spec.store, work or spec.work, spec.name, spec.store_options)
    store.check()
    return spec, store


def run_states(store: Store, ledger: dict[str, Any]) -> list[dict[str, Any]]:
    """Every run in the store, finished (ledger order) first, then those in progress."""
    rows = []
    in_store = store.list("runs")
    for run_id in ledger["order"] + sorted(r for r in in_store if r not in ledger["runs"]):
        stages = {}
        for stage in STAGE_ORDER:
            marker = store.read_json(f"runs/{run_id}/{stage}/stage.json")
            stages[stage] = "done" if marker else ("-" if stage == "augment" else "")
        finished = ledger["runs"].get(run_id)
        decision = store.read_json(f"runs/{run_id}/decision.json") or {}
        scores = (finished or {}).get("scores") or decision.get("scores") or {}
        rows.append({"run": run_id, "stages": stages, "outcome": finished["outcome"] if finished else "in progress",
                     "finished": finished["finished"] if finished else None,
                     "challenger": (scores.get("challenger") or {}).get("score"),
                     "champion": (scores.get("champion") or {}).get("score"),
                     "teacher": (scores.get("teacher") or {}).get("score")})
    return rows


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def status(spec_path: str, runs: int = 10, plot: str | None = None, as_json: bool = False, work: str | None = None) -> dict[str, Any]:
    spec, store = _open(spec_path, work)
    ledger = read_ledger(store, spec.name)
    alias = spec.promotion.alias
    every = run_states(store, ledger)
    rows = every[-runs:]
    result = {"pipeline": spec.name, "store": store.url, "alias": alias, "champion": ledger["aliases"].get(alias),
              "previous": ledger["alias_history"].get(alias, []), "runs": rows,
              "events": ledger["events"][-runs:]}
    if plot is None and not store.remote:
        plot = str(store.local("status.png"))
    if plot and not ledger["order"]:
        plot = None  # nothing finished: no picture, and no store folder made for one
    if plot:
        _plot(every, alias, Path(plot))
        result["plot"] = plot
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return result
    print(f"pipeline {spec.name}  store {store.url}")
    print(f"{alias}: {result['champion'] or 'none yet'}"
          + (f"  (previous: {', '.join(reversed(result['previous']))})" if result["previous"] else ""))
    header = ["run", *STAGE_ORDER, "outcome", "challenger", "champion", "teacher"]
    table = [header] + [[r["run"], *[("ok" if r["stages"][s] == "done" else r["stages"][s] or ".") for s in STAGE_ORDER],
                         r["outcome"], _fmt(r["challenger"]), _fmt(r["champion"]), _fmt(r["teacher"])] for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    if not rows:
        print("(no runs yet)")
    if plot:
        print(f"plot: {plot}")
    return result


def _plot(rows: list[dict[str, Any]], alias: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distill.atomic import atomic_write_with

    done = [r for r in rows if r["outcome"] != "in progress"]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(done) + 2), 3.6))
    x = list(range(len(done)))
    for key, style in (("challenger", "o-"), ("champion", "s--"), ("teacher", "^:")):
        ys = [r[key] for r in done]
        if any(y is not None for y in ys):
            ax.plot([i for i, y in zip(x, ys) if y is not None], [y for y in ys if y is not None], style, label=key)
    for i, r in enumerate(done):
        if r["outcome"] == "promoted":
            ax.axvline(i, color="tab:green", alpha=0.15, lw=8)
    ax.set_xticks(x, [r["run"] for r in done], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("suite score")
    ax.set_title(f"runs (green: promoted to {alias})", fontsize=10)
    if done:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def move_alias(spec_path: str, run_id: str | None, work: str | None = None) -> int:
    """``promote --run RUN_ID`` (run_id given) or ``rollback`` (None): move the alias, ledger and registry."""
    from distill.pipeline.registry import registry_for

    spec, store = _open(spec_path, work)
    alias = spec.promotion.alias
    with store.lock(spec.lock_stale_after_s, "distill pipeline " + ("promote" if run_id else "rollback")):
        ledger = read_ledger(store, spec.name)
        current = ledger["aliases"].get(alias)
        if run_id is not None:
            if run_id not in ledger["versions"]:
                known = ", ".join(ledger["versions"]) or "none"
                raise ConfigError(f"--run {run_id}: not a finished run of pipeline {spec.name} (finished: {known})")
            if current == run_id:
                say(f"{alias} is already {run_id}; nothing to do")
                return 0
            registry = registry_for(spec)
            if registry is not None:
                registry.publish(store, run_id, ledger["versions"][run_id], f"runs/{run_id}/eval/report.json")
                registry.set_alias(run_id)
            promote_in_ledger(ledger, spec, run_id, "promote (by hand)")
            target = run_id
        else:
            history = ledger["alias_history"].get(alias, [])
            if not history:
                raise ConfigError(f"pipeline {spec.name}: no previous {alias} to roll back to "
                                  f"({alias} is {current or 'unset'}; promotion.keep is {spec.promotion.keep})")
            target = history.pop()
            registry = registry_for(spec)
            if registry is not None:
                registry.publish(store, target, ledger["versions"][target], f"runs/{target}/eval/report.json")
                registry.set_alias(target)
            ledger["aliases"][alias] = target
            from distill.pipeline.store import now_iso

            ledger["events"].append({"time": now_iso(), "action": "rollback", "alias": alias, "from": current, "to": target})
        store.write_json(LEDGER, ledger)
    print(f"{alias}: {current or 'unset'} -> {target}", file=sys.stderr)
    return 0
