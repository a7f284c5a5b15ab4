"""Plot pipeline benchmark results: run time and peak RSS against the number of orders.

Reads JSON written by bench_pipeline.py (later files win for the same size), writes a PNG
and prints a Markdown table of the same figures. Example:

    .venv/bin/python bench/plot.py bench/results/pipeline.json --out docs/benchmarks.png
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator

FIXED_ORDER = {"first load": 0, "no change": 1, "full": 3}


def series_key(run: dict[str, Any]) -> tuple[int, float, str]:
    """Sort key and label of a run: first load, no change, changes by share, full."""
    if run["kind"] == "change":
        share = float(run["change_share"])
        return 2, share, f"{share * 100:g}% changed"
    return FIXED_ORDER.get(run["kind"], 4), 0.0, run["kind"]


def describe(machine: dict[str, Any]) -> str:
    parts = [f"{machine.get('cpus')} cores"]
    if machine.get("cpu_model"):
        parts[0] += f" ({machine['cpu_model']})"
    if machine.get("memory_gb"):
        parts.append(f"{machine['memory_gb']:.0f} GB RAM")
    parts.append(f"PostgreSQL {machine.get('postgres_major', '?')}")
    return ", ".join(parts)


def load(paths: list[Path]) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """Results and machine by orders size; a later file replaces a size of an earlier one."""
    results: dict[int, dict[str, Any]] = {}
    machines: dict[int, dict[str, Any]] = {}
    for path in paths:
        data = json.loads(path.read_text())
        if "machine" not in data or any("kind" not in r for res in data.get("results", [])
                                        for r in res.get("runs", [])):
            print(f"skipping {path}: not written by the current bench_pipeline.py "
                  "(no machine or run kinds)", file=sys.stderr)
            continue
        for result in data["results"]:
            results[int(result["orders"])] = result
            machines[int(result["orders"])] = data["machine"]
    return results, machines


def by_series(results: dict[int, dict[str, Any]]) -> dict[tuple[int, float, str], dict[int, Any]]:
    """{series key: {orders: run}} with the series in display order."""
    series: dict[tuple[int, float, str], dict[int, Any]] = {}
    for orders in sorted(results):
        for run in results[orders]["runs"]:
            series.setdefault(series_key(run), {})[orders] = run
    return dict(sorted(series.items()))


def orders_label(n: float) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:g}M"
    if n >= 1_000:
        return f"{n / 1_000:g}k"
    return f"{n:g}"


def memory(mb: float) -> str:
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def plot(series: dict[tuple[int, float, str], dict[int, Any]], title: str, out: Path) -> None:
    peak = max(run["peak_rss_mb"] for runs in series.values() for run in runs.values())
    unit, scale = ("GB", 1024) if peak >= 2048 else ("MB", 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    for key, runs in series.items():
        xs = sorted(runs)
        style = {"marker": "o", "label": key[2], "linewidth": 1.5, "markersize": 5}
        left.plot(xs, [runs[n]["seconds"] for n in xs], **style)
        right.plot(xs, [runs[n]["peak_rss_mb"] / scale for n in xs], **style)
    sizes = sorted({n for runs in series.values() for n in runs})
    left.set_xscale("log")
    left.set_yscale("log")
    # plain numbers on the log axis; minor ticks labelled too when it spans few decades
    plain = FuncFormatter(lambda y, _pos: f"{y:g}")
    low, high = left.get_ylim()
    left.yaxis.set_major_formatter(plain)
    left.yaxis.set_minor_formatter(plain if high / low < 30 else NullFormatter())
    left.set_ylabel("run time (s)")
    left.set_title("run time (log-log)")
    right.set_xscale("log")
    right.set_ylabel(f"peak RSS ({unit})")
    right.set_ylim(bottom=0)
    right.set_title("peak RSS of the run process")
    for ax in (left, right):
        ax.set_xlabel("orders")
        ax.set_xticks(sizes, [orders_label(n) for n in sizes])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(True, which="major", alpha=0.4)
        ax.grid(True, which="minor", alpha=0.15)
    left.legend(fontsize="small")
    fig.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def markdown(series: dict[tuple[int, float, str], dict[int, Any]], sizes: list[int]) -> str:
    heads = [key[2] for key in series]
    lines = ["| orders | " + " | ".join(heads) + " |",
             "|---:|" + "---:|" * len(heads)]
    for n in sizes:
        cells = [f"{runs[n]['seconds']:.1f} s / {memory(runs[n]['peak_rss_mb'])}"
                 if n in runs else "-" for runs in series.values()]
        lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stage_table(result: dict[str, Any]) -> str:
    """One size's runs as rows, wall time and seconds per stage as columns (Markdown)."""
    runs = result["runs"]
    stages: list[str] = []
    for run in runs:
        stages += [s for s in run["stages"] if s not in stages and s not in ("lock", "commit")]
    short = [s.removesuffix("_report_datamart") + (" mart" if s.endswith("datamart") else "")
             for s in stages]
    lines = ["| run | total | " + " | ".join(short) + " | rows pulled | peak RSS | DB |",
             "|---|---:|" + "---:|" * len(stages) + "---:|---:|---:|"]
    for run in runs:
        cells = [f"{run['stages'][s]:.2f}" if s in run["stages"] else "-" for s in stages]
        lines.append(
            f"| {run['label']} | **{run['seconds']:.1f} s** | " + " | ".join(cells)
            + f" | {run.get('rows_pulled') or 0:,} | {memory(run['peak_rss_mb'])}"
            + f" | {memory(run['database_mb'])} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", type=Path, nargs="*",
                        help="result files (default: bench/results/pipeline*.json)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.png"))
    args = parser.parse_args()
    paths = args.files or [Path(p) for p in sorted(glob.glob("bench/results/pipeline*.json"))]
    if not paths:
        parser.error("no result files given or found in bench/results/")
    results, machines = load(paths)
    if not results:
        print("no results to plot", file=sys.stderr)
        return 1
    series = by_series(results)
    hosts = list(dict.fromkeys(describe(machines[n]) for n in sorted(results)))
    title = "craftmart-batch pipeline: " + "; ".join(hosts)
    plot(series, title, args.out)
    print(f"Run time / peak RSS of the run process ({'; '.join(hosts)}):\n")
    print(markdown(series, sorted(results)))
    for n in sorted(results):
        print(f"\nSeconds by stage, {n:,} orders:\n")
        print(stage_table(results[n]))
    print(f"\nwritten {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
