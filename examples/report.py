"""Tables and the threshold plot that the example pipelines (``synthetic``, ``word_problems``) report with."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def markdown(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str]], title: str, min_width: int = 110) -> None:
    """The table on the terminal (rich); text columns left, numbers right."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="left" if c in ("model", "decoding") else "right", no_wrap=True)
    for r in rows:
        t.add_row(*r)
    Console(width=max(min_width, Console().width)).print(t)


def plot_thresholds(path: Path, title: str, ar: dict, series: Sequence[tuple[str, list[dict]]],
                    accuracy_label: str) -> Path:
    """Accuracy and TPF against the threshold: one line per (name, rows) of ``series``, the AR
    parent's row ``ar`` as a dashed reference. Rows hold ``threshold``, ``accuracy`` and ``tpf``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax.axhline(100 * ar["accuracy"], color="black", ls="--", lw=1, label="AR parent")
    bx.axhline(ar["tpf"], color="black", ls="--", lw=1, label="AR parent")
    for (name, rows), marker in zip(series, "o^sDvP"):
        rows = sorted(rows, key=lambda e: e["threshold"])
        x = [e["threshold"] for e in rows]
        ax.plot(x, [100 * e["accuracy"] for e in rows], marker=marker, label=name)
        bx.plot(x, [e["tpf"] for e in rows], marker=marker, label=name)
    ax.set_xlabel("threshold")
    ax.set_ylabel(accuracy_label)
    bx.set_xlabel("threshold")
    bx.set_ylabel("tokens per forward")
    for a in (ax, bx):
        a.invert_xaxis()
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
