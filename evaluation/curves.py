"""Quality as edits accumulate: metric vs number of edits (log x) from `sola eval --checkpoints` results.

    python -m evaluation.curves results-chat.json results-raw.json --out docs/edits-curve.png

One panel per metric, one line per results file (labelled by its format and prompt format).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# (checkpoint key, panel title, scale): rates plot as fractions, the rest as measured.
PANELS = [
    ("reliability", "Reliability", "rate"),
    ("generalization", "Generalization", "rate"),
    ("locality", "Locality", "rate"),
    ("rephrase_routed_rate", "Paraphrases routed to own edit", "rate"),
    ("wrong_edit_rate", "Wrong-edit rate", "rate"),
    ("neighbour_routed_rate", "Neighbours routed", "rate"),
    ("degenerate_rate", "Degenerate answers", "rate"),
    ("edit_seconds_median", "Edit seconds (median)", "value"),
    ("routing_ms_median", "Routing ms per request (median)", "value"),
    ("rss_mb", "Resident memory (MB)", "value"),
]


def curve(results: dict[str, Any], key: str) -> tuple[list[int], list[float]]:
    """(edits, value) at each checkpoint that measured `key`."""
    points = [(c["edits"], c[key]) for c in results.get("checkpoints", []) if c.get(key) is not None]
    return [e for e, _ in points], [float(v) for _, v in points]


def plot(runs: Sequence[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in PANELS if any(curve(r, p[0])[0] for r in runs)]
    if not panels:
        raise ValueError("no checkpoint measured any plotted metric (run sola eval --checkpoints ...)")
    cols = 4
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, (key, title, scale) in zip(axes.flat, panels, strict=False):
        for r in runs:
            edits, values = curve(r, key)
            if edits:
                ax.plot(edits, values, marker="o", label=f"{r['format']} ({r['prompt_format']})")
        ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("edits active")
        if scale == "rate":
            ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    model = runs[0].get("model", "")
    fig.suptitle(f"Quality as edits accumulate · {model} · sola eval --checkpoints", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("results", nargs="+", type=Path, help="results.json of sola eval --checkpoints")
    parser.add_argument("--out", type=Path, default=Path("docs/edits-curve.png"), help="PNG to write")
    args = parser.parse_args(argv)
    plot([json.loads(p.read_text()) for p in args.results], args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
