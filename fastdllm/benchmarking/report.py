"""``fastdllm bench``'s outputs: the rich table, the JSON file and the PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

from .rows import label

COLUMNS = ("engine", "model", "decoding", "threshold", "batch", "accuracy", "tokens", "NFE", "TPF", "tokens/s",
           "vs AR")


def table_rows(rows: list[dict]) -> list[tuple[str, ...]]:
    out = []
    for r in rows:
        acc = f"{100 * r['accuracy']:.1f}%" if r["accuracy"] is not None else "-"
        out.append((r["engine"], r["model"], "block diffusion" if r["decoding"] == "diffusion" else "AR",
                    f"{r['threshold']:g}" if r["threshold"] is not None else "-", str(r["batch"]), acc,
                    str(r["generated_tokens"]), str(r["nfe"]), f"{r['tpf']:.2f}", f"{r['tokens_per_second']:.1f}",
                    f"{r['speedup_vs_ar']:.2f}x" if r["speedup_vs_ar"] else "-"))
    return out


def title(results: dict) -> str:
    s, p = results["settings"], results["prompts"]
    return (f"fastdllm bench: {Path(str(s['model'])).name}, {p['count']} prompts ({p['source']}), "
            f"max {s['max_new_tokens']} new tokens, {s['dtype']}, {s['device']}, "
            f"torch threads {results['machine']['threads']}, greedy")


def print_table(results: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=max(132, Console().width))
    t = Table(title=title(results))
    for c in COLUMNS:
        t.add_column(c, justify="left" if c in ("engine", "model", "decoding") else "right", no_wrap=True)
    for r in table_rows(results["rows"]):
        t.add_row(*r)
    console.print(t)
    for r in results["rows"]:
        same = r.get("same_tokens_as")
        if same:
            console.print(f"{label(r)}: same tokens as {same['row']} on {same['prompts']}/{same['of']} prompts "
                          f"({same['compared']})", highlight=False)
    for note in results["notes"]:
        console.print(f"note: {note}", highlight=False)


def write_json(results: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return path


def plot(results: dict, path: str | Path) -> Path:
    """Horizontal bars per row: tokens/s (with TPF written on each bar) and, if scored, accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    names = [label(r) for r in rows]
    scored = any(r["accuracy"] is not None for r in rows)
    colors = [{"fastdllm ar": "#7f7f7f", "transformers ar": "#bcbd22", "fastdllm diffusion": "#1f77b4",
               "reference diffusion": "#ff7f0e"}[f"{r['engine']} {r['decoding']}"] for r in rows]
    height = 1.2 + 0.38 * len(rows)
    fig, axes = plt.subplots(1, 2 if scored else 1, figsize=(11 if scored else 7, height), sharey=True,
                             squeeze=False)
    y = list(range(len(rows)))[::-1]  # first row on top
    ax = axes[0][0]
    speeds = [r["tokens_per_second"] for r in rows]
    ax.barh(y, speeds, color=colors)
    for yi, r, v in zip(y, rows, speeds):
        vs = f", {r['speedup_vs_ar']:.2f}x AR" if r["speedup_vs_ar"] else ""
        ax.text(v, yi, f" {v:.0f} tok/s, TPF {r['tpf']:.2f}{vs}", va="center", fontsize=7)
    ax.set_xlim(0, max(speeds + [1e-9]) * 1.6)  # room for the bar labels
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlabel("generated tokens per second")
    ax.grid(axis="x", alpha=0.3)
    if scored:
        bx = axes[0][1]
        acc = [100 * r["accuracy"] if r["accuracy"] is not None else 0.0 for r in rows]
        bx.barh(y, acc, color=colors)
        for yi, v in zip(y, acc):
            bx.text(v, yi, f" {v:.1f}%", va="center", fontsize=7)
        bx.set_xlim(0, 115)
        bx.set_xlabel("accuracy (%)")
        bx.grid(axis="x", alpha=0.3)
    fig.suptitle(title(results), fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
