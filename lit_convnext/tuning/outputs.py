"""What a search leaves in its directory: ``trials.csv``, ``best.yaml``, ``tune_report.html`` with ``tune.png``, and
the one line that says the best value and how to run it again."""

from __future__ import annotations

import csv
import html
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from lit_convnext.tuning import space as spaces


def write_trials_csv(study: Any, path: Path) -> Path:
    """One row per trial: number, state, value, the epochs it reported, seconds, its values and run directory."""
    trials = study.get_trials(deepcopy=False)
    names = sorted({name for t in trials for name in t.params})
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["number", "state", "value", "epochs", "seconds", *names, "recipe", "run_dir", "error"])
        for t in trials:
            seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else ""
            writer.writerow([t.number, t.state.name, "" if t.value is None else t.value, len(t.intermediate_values),
                             seconds if seconds == "" else round(seconds, 1), *(t.params.get(n, "") for n in names),
                             bool(t.user_attrs.get("recipe")), t.user_attrs.get("run_dir", t.user_attrs.get("run_root", "")),
                             t.user_attrs.get("error", "")])
    return path


def best_trial(study: Any) -> Any | None:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return study.best_trial if complete else None


def recipe_trial(study: Any) -> Any | None:
    return next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("recipe")), None)


def write_best_yaml(fit_args: list[str], params: Mapping[str, Any], path: Path) -> Path:
    """The ``fit`` configuration of the best trial: the search's own options and the trial's values, whole (no
    ``--tune.*`` key, no trial directory), so that ``lit-convnext fit --config best.yaml`` runs it as is."""
    from lit_convnext.tuning.search import resolved_config

    config = resolved_config([*fit_args, *spaces.as_arguments(params)])
    path.write_text("# The best trial of `lit-convnext tune`; run it with: lit-convnext fit --config "
                    f"{path}\n" + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def importances(study: Any) -> dict[str, float]:
    """Optuna's parameter importances (its default evaluator) over the complete trials; empty with fewer than two,
    or when their values are all the same (nothing to attribute)."""
    import optuna

    values = {t.value for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"}
    if len(values) < 2:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its notes on small studies: the figure says how many trials it rests on
        try:
            return dict(optuna.importance.get_param_importances(study))
        except (RuntimeError, ValueError):  # e.g. no parameter varies across the complete trials
            return {}


def plot_search(study: Any, monitor: str, path: Path) -> Path:
    """Two panels: each trial's value over the search's time (complete, pruned at its last reported value, failed
    at the axis) with the best so far, and the parameters' importances."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start is not None]
    start = min((t.datetime_start for t in trials), default=None)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    maximize = study.direction.name == "MAXIMIZE"
    best, curve = None, []
    for t in sorted(trials, key=lambda t: t.datetime_complete or t.datetime_start):
        end = t.datetime_complete or t.datetime_start
        minutes = (end - start).total_seconds() / 60
        if t.state.name == "COMPLETE":
            left.scatter(minutes, t.value, color="tab:blue", zorder=3, label="complete")
            best = t.value if best is None or (t.value > best if maximize else t.value < best) else best
            curve.append((minutes, best))
        elif t.state.name == "PRUNED" and t.intermediate_values:
            last = t.intermediate_values[max(t.intermediate_values)]
            left.scatter(minutes, last, color="tab:orange", marker="x", zorder=3, label="pruned (last epoch)")
        elif t.state.name == "FAIL":
            left.axvline(minutes, color="tab:red", alpha=0.4, label="failed")
        if t.user_attrs.get("recipe") and t.value is not None:
            left.axhline(t.value, color="gray", linestyle=":", label="starting recipe")
    if curve:
        left.step([m for m, _ in curve], [b for _, b in curve], where="post", color="tab:green", label="best so far")
    handles, labels = left.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    left.legend(unique.values(), unique.keys(), fontsize=8)
    left.set(xlabel="minutes since the search started", ylabel=monitor, title="Trials over time")
    ranked = importances(study)
    if ranked:
        names = list(ranked)[::-1]
        right.barh(names, [ranked[n] for n in names], color="tab:purple")
        right.set(xlabel="importance (Optuna's default evaluator)", title="Parameter importance")
    else:
        right.text(0.5, 0.5, "importance needs complete trials\nwith different values", ha="center",
                   va="center")
        right.set_axis_off()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_report(study: Any, monitor: str, root: Path) -> Path:
    """``tune_report.html``: counts, the figure, and the best trial against the starting recipe."""
    figure = plot_search(study, monitor, root / "tune.png")
    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(t.state.name == state for t in trials) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    best, recipe = best_trial(study), recipe_trial(study)
    rows = ""
    if best is not None:
        for name in sorted(best.params):
            start = recipe.params.get(name, "") if recipe is not None else ""
            rows += f"<tr><td>{html.escape(name)}</td><td>{_fmt(start)}</td><td>{_fmt(best.params[name])}</td></tr>"
        start_value = _fmt(recipe.value) if recipe is not None and recipe.value is not None else "(not complete)"
        rows += (f"<tr><th>{html.escape(monitor)}</th><th>{start_value}</th><th>{_fmt(best.value)}</th></tr>"
                 f"<tr><td>trial</td><td>{recipe.number if recipe else ''}</td><td>{best.number}</td></tr>")
    import base64

    image = base64.b64encode(figure.read_bytes()).decode()
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Tuning: {html.escape(study.study_name)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 12px;text-align:left}</style></head><body>"
            f"<h1>Tuning: {html.escape(study.study_name)}</h1>"
            f"<p>{counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed, "
            f"{counts['RUNNING']} running trials; scored by {html.escape(monitor)}.</p>"
            f"<img alt='trials over time and parameter importance' src='data:image/png;base64,{image}'>"
            "<h2>Best trial against the starting recipe</h2>"
            f"<table><tr><th>option</th><th>starting recipe</th><th>best</th></tr>{rows}</table>"
            "<p>Files: trials.csv (every trial), best.yaml (<code>lit-convnext fit --config best.yaml</code>).</p>"
            "</body></html>")
    path = root / "tune_report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return html.escape(str(value))
