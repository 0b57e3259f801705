"""Report: a Markdown table and PNG plots of an evaluation's results.

- ``results.md``: per condition, the unsafe / refused / broken rates on harmful prompts, the
  over-refusal rate on benign prompts and utility accuracy, with Wilson 95% intervals and the judge
  that produced them (a second table compares judges when there are several);
- ``plots/alpha_sweep.png``: unsafe, broken and over-refusal rates and utility vs alpha (the
  unsteered model is alpha 0; text-only and sample-level results as reference marks);
- ``plots/layer_gap.png``: per-layer cosine similarity and L2 distance between multimodal and
  text-only last-token states, before and after steering;
- ``plots/pca.png``: 2-D PCA of multimodal, text-only and steered last-token states at one layer.

Plots use matplotlib's object API with the Agg canvas (no display, no global pyplot state). Needs
``pip install 'cmrm-guard[eval]'``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmrm_guard.errors import CMRMError
from cmrm_guard.eval.colours import PLOT_COLOURS, condition_colours

if TYPE_CHECKING:
    from cmrm_guard.eval.runner import EvalResults

REPORT_NAME = "results.md"
PLOTS = ("alpha_sweep.png", "layer_gap.png", "pca.png")


class ReportError(CMRMError, RuntimeError):
    """The report cannot be made (matplotlib missing)."""


def _pct(entry: Mapping[str, Any] | None, *, ci: bool = True) -> str:
    if not entry or entry.get("rate") is None:
        return "–"
    text = f"{100 * entry['rate']:.1f}%"
    if ci:
        low, high = entry["ci95"]
        text += f" ({100 * low:.1f}–{100 * high:.1f})"
    return text


def _steered(share: float, condition: Mapping[str, Any]) -> str:
    if condition.get("kind") in ("multimodal", "text_only"):
        return "no"
    if share >= 0.999:
        return "yes"
    return "NO (see applied)" if share == 0 else f"{100 * share:.0f}% of rows"


def markdown_table(results: EvalResults, judge: str | None = None) -> str:
    """The results table in Markdown (safety numbers from ``judge``, default the primary judge)."""
    data = results.data
    judge = judge or results.primary_judge
    metrics = results.metrics
    model = data["model"]
    lines = [
        f"### CMRM evaluation: {model['id'] or model['model_type']} ({model['model_type']}, "
        f"{model['num_layers']} decoder layers)",
        "",
        "| condition | steered | unsafe ↓ | refused (harmful) | broken (harmful) | over-refusal ↓ | broken (benign) | utility ↑ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    counts: dict[str, set[int]] = {"harmful": set(), "benign": set(), "utility": set()}
    for name, spec in data["conditions"].items():
        m = metrics.get(name)
        if m is None:
            continue
        harmful = m["harmful"].get(judge, {})
        benign = m["benign"].get(judge, {})
        utility = m.get("utility", {}).get("accuracy")
        for kind in counts:
            if m["counts"].get(kind):
                counts[kind].add(m["counts"][kind])
        lines.append(
            f"| {name} | {_steered(m['steered_share'], spec)} | {_pct(harmful.get('unsafe'))} | "
            f"{_pct(harmful.get('refusal'))} | {_pct(harmful.get('broken'), ci=False)} | "
            f"{_pct(benign.get('over_refusal'))} | {_pct(benign.get('broken'), ci=False)} | {_pct(utility)} |"
        )
    sizes = ", ".join(f"{kind} {'/'.join(map(str, sorted(n)))}" for kind, n in counts.items() if n)
    sources = sorted({s for m in metrics.values() for s in m.get("utility", {}).get("by_source", {})})
    lines += [
        "",
        f"Prompts per condition: {sizes}. Safety numbers judged by `{judge}`; utility by the answer "
        f"checker ({', '.join(sources) or 'no utility prompts'}). Brackets: Wilson 95% intervals.",
        "Unsafe = a fluent reply that is not a refusal, on a harmful prompt; broken replies are counted "
        "apart (neither unsafe nor refused). Over-refusal = refusals of benign prompts.",
    ]
    lines += _by_source_lines(data, metrics, judge)
    others = [j for j in data["judges"] if j != judge]
    if others:
        judges = [judge] + others
        lines += ["", "Unsafe rate by judge:", "", "| condition | " + " | ".join(f"`{j}`" for j in judges) + " |",
                  "|---|" + "---|" * len(judges)]  # fmt: skip
        for name in data["conditions"]:
            if name in metrics:
                cells = [_pct(metrics[name]["harmful"].get(j, {}).get("unsafe")) for j in judges]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _by_source_lines(data: Mapping[str, Any], metrics: Mapping[str, Any], judge: str) -> list[str]:
    """A per-prompt-set table (refused / over-refused / accuracy), when a run mixes prompt sets."""
    columns: list[tuple[str, str]] = []
    for kind in ("harmful", "benign"):
        found = {s for m in metrics.values() for s in m.get("by_source", {}).get(kind, {}).get(judge, {})}
        columns += [(kind, s) for s in sorted(found)]
    found = {s for m in metrics.values() for s in m.get("utility", {}).get("by_source", {})}
    columns += [("utility", s) for s in sorted(found)]
    if len(columns) <= len({kind for kind, _ in columns}):
        return []  # one set per kind: the main table says it all
    heading = {"harmful": "refused", "benign": "over-refusal", "utility": "accuracy"}
    lines = ["", "By prompt set (harmful: refused; benign: over-refusal; utility: accuracy):", "",
             "| condition | " + " | ".join(f"{s} ({heading[k]})" for k, s in columns) + " |",
             "|---|" + "---|" * len(columns)]  # fmt: skip
    for name in data["conditions"]:
        m = metrics.get(name)
        if m is None:
            continue
        cells = []
        for kind, source in columns:
            if kind == "utility":
                entry = m.get("utility", {}).get("by_source", {}).get(source)
            else:
                rates = m.get("by_source", {}).get(kind, {}).get(judge, {}).get(source, {})
                entry = rates.get("refusal" if kind == "harmful" else "over_refusal")
            cells.append(_pct(entry))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


# ---------------------------------------------------------------------------------------- plots
def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ReportError(f"the plots need matplotlib ({error}): pip install 'cmrm-guard[eval]'") from None
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = figure.subplots(1, ncols)
    return figure, axes


def _rate(entry: Mapping[str, Any] | None) -> float | None:
    return None if not entry or entry.get("rate") is None else entry["rate"]


def _series(results: EvalResults, judge: str) -> dict[str, Any]:
    """Curves of the alpha sweep, per (pack, application), and the reference points."""
    data, metrics = results.data, results.metrics

    def values(name: str) -> dict[str, Any]:
        m = metrics.get(name, {})
        harmful, benign = m.get("harmful", {}).get(judge, {}), m.get("benign", {}).get(judge, {})
        return {
            "unsafe": harmful.get("unsafe"),
            "broken": harmful.get("broken"),
            "over-refusal": benign.get("over_refusal"),
            "utility": m.get("utility", {}).get("accuracy"),
        }

    curves: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    sample, references = [], {}
    for name, spec in data["conditions"].items():
        if name not in metrics:
            continue
        if spec["kind"] == "dataset":
            label = f"dataset [{spec['pack']}]" + (
                f" {spec['application']}" if spec.get("application") else ""
            )
            curves.setdefault(label, []).append((spec["alpha"], values(name)))
        elif spec["kind"] == "sample":
            sample.append((spec["alpha"], values(name)))
        else:
            references[spec["kind"]] = values(name)
    if "multimodal" in references:
        for points in curves.values():
            if not any(a == 0 for a, _ in points):
                points.append((0.0, references["multimodal"]))
    for points in curves.values():
        points.sort(key=lambda item: item[0])
    return {"curves": curves, "sample": sample, "references": references}


_PACK_STYLES = (("-", "o"), ("--", "s"), (":", "D"), ("-.", "v"))


def _condition_colours(results: EvalResults) -> dict[str, str]:
    """One colour per steered condition, shared by the diagnostic plots."""
    steered = [n for n, spec in results.data["conditions"].items() if spec["kind"] in ("dataset", "sample")]
    return condition_colours(steered)


def plot_alpha_sweep(results: EvalResults, path: str | Path, judge: str | None = None) -> Path:
    """Unsafe, broken and over-refusal rates (left) and utility (right) vs alpha, with 95% bands.

    Colours are metrics, line styles are packs; alpha 0 is the unsteered model; stars are
    sample-level CMRM; dotted horizontal lines are the text-only twin.
    """
    judge = judge or results.primary_judge
    series = _series(results, judge)
    figure, (safety, utility) = _figure(11, 4.4, ncols=2)
    axes = {"unsafe": safety, "broken": safety, "over-refusal": safety, "utility": utility}
    for index, (label, points) in enumerate(series["curves"].items()):
        style, marker = _PACK_STYLES[index % len(_PACK_STYLES)]
        for metric, axis in axes.items():
            kept = [(a, v[metric]) for a, v in points if _rate(v[metric]) is not None]
            if not kept:
                continue
            xs = [a for a, _ in kept]
            colour = PLOT_COLOURS[metric]
            axis.plot(
                xs,
                [_rate(e) for _, e in kept],
                style,
                marker=marker,
                color=colour,
                label=f"{metric}, {label}",
            )
            axis.fill_between(xs, [e["ci95"][0] for _, e in kept], [e["ci95"][1] for _, e in kept],
                              color=colour, alpha=0.07, linewidth=0)  # fmt: skip
    for alpha, values in series["sample"]:
        for metric, axis in axes.items():
            if _rate(values[metric]) is not None:
                axis.plot([alpha], [_rate(values[metric])], "*", color=PLOT_COLOURS[metric], markersize=13,
                          markeredgecolor=PLOT_COLOURS["highlight"], linestyle="none",
                          label=f"{metric}, sample-level")  # fmt: skip
    references = [("text_only", ":", "text-only twin")]
    if not series["curves"]:
        references.append(("multimodal", "-.", "unsteered image+text"))
    for kind, style, text in references:
        values = series["references"].get(kind)
        for metric, axis in axes.items():
            if values and metric != "broken" and _rate(values[metric]) is not None:
                axis.axhline(_rate(values[metric]), color=PLOT_COLOURS[metric], linestyle=style,
                             linewidth=1.2, label=f"{metric}, {text}")  # fmt: skip
    safety.set(xlabel="alpha (0 = unsteered)", ylabel="share of prompts", ylim=(-0.02, 1.02),
               title=f"Safety vs alpha (judge: {judge})")  # fmt: skip
    utility.set(
        xlabel="alpha (0 = unsteered)", ylabel="accuracy", ylim=(-0.02, 1.02), title="Utility vs alpha"
    )
    for axis in (safety, utility):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7, loc="best")
        else:
            axis.text(0.5, 0.5, "no data", ha="center", va="center", transform=axis.transAxes)
    return _save(figure, path)


def plot_layer_gap(results: EvalResults, path: str | Path) -> Path:
    """Per-layer cosine similarity and L2 distance to the text-only twin, before and after steering."""
    diagnostics = results.data.get("diagnostics")
    figure, (cosine, distance) = _figure(11, 4.4, ncols=2)
    if diagnostics:
        colours = _condition_colours(results)
        layers = diagnostics["layers"]
        for name, gap in diagnostics["gap"].items():
            before = name == "multimodal"
            label = "before: unsteered image+text" if before else f"after: {name}"
            width = 2.2 if before else 1.3
            colour = colours.get(name, PLOT_COLOURS["other"])
            cosine.plot(layers, gap["cosine"], color=colour, linewidth=width, marker=".", label=label)
            distance.plot(layers, gap["l2"], color=colour, linewidth=width, marker=".", label=label)
        n = len(diagnostics["prompt_ids"])
        figure.suptitle(
            f"Multimodal vs text-only last-prompt-token states, mean over {n} prompts", fontsize=10
        )
        cosine.set_title("cosine similarity (higher = closer)", fontsize=9)
        distance.set_title("L2 distance (lower = closer)", fontsize=9)
        cosine.legend(fontsize=7)
    else:
        for axis in (cosine, distance):
            axis.text(0.5, 0.5, "no diagnostics in these results", ha="center", va="center",
                      transform=axis.transAxes)  # fmt: skip
    cosine.set(xlabel="decoder layer", ylabel="cos(h_mm, h_text)")
    distance.set(xlabel="decoder layer", ylabel="|h_mm - h_text|")
    for axis in (cosine, distance):
        axis.grid(alpha=0.3)
    return _save(figure, path)


def plot_pca(results: EvalResults, path: str | Path) -> Path:
    """2-D PCA of multimodal, text-only and steered last-token states at one layer."""
    diagnostics = results.data.get("diagnostics")
    figure, axis = _figure(6.5, 5.5)
    if diagnostics:
        pca = diagnostics["pca"]
        colours = _condition_colours(results)
        markers = {"text-only": "s", "multimodal": "o"}
        for name, points in pca["points"].items():
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            colour = colours.get(name, PLOT_COLOURS["other"])
            axis.scatter(xs, ys, marker=markers.get(name, "^"), color=colour, s=28, alpha=0.85,
                         label=name)  # fmt: skip
        ratio = pca["explained_variance_ratio"]
        axis.set(xlabel=f"PC1 ({100 * ratio[0]:.0f}% of variance)", ylabel=f"PC2 ({100 * ratio[1]:.0f}%)",
                 title=f"Last-prompt-token states at decoder layer {pca['layer']}")  # fmt: skip
        axis.legend(fontsize=7)
    else:
        axis.text(0.5, 0.5, "no diagnostics in these results", ha="center", va="center",
                  transform=axis.transAxes)  # fmt: skip
    axis.grid(alpha=0.3)
    return _save(figure, path)


def _save(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def write_report(results: EvalResults, folder: str | Path) -> dict[str, Path]:
    """Write ``results.md`` and ``plots/*.png`` into ``folder``; returns the paths by name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / REPORT_NAME
    figures = "\n".join(f"![{name[:-4]}](plots/{name})" for name in PLOTS)
    table.write_text(markdown_table(results) + "\n" + figures + "\n", encoding="utf-8")
    plots = folder / "plots"
    return {
        "table": table,
        "alpha_sweep": plot_alpha_sweep(results, plots / "alpha_sweep.png"),
        "layer_gap": plot_layer_gap(results, plots / "layer_gap.png"),
        "pca": plot_pca(results, plots / "pca.png"),
    }
