"""Renderers for diagnoses: text (80 columns), markdown, and a self-contained HTML page."""

from __future__ import annotations

import html
import textwrap

import numpy as np

WIDTH = 80


def _indices(indices, limit: int = 6) -> str:
    shown = ", ".join(str(list(index)) for index in indices[:limit])
    return shown + (f", ... ({len(indices)} in all)" if len(indices) > limit else "")


def bucket_steps(step_differences: dict[int, int]) -> list[tuple[str, int]]:
    """Differences in output steps grouped as 0 (under half a step), 1, 2, 3-4, 5-8, ..."""
    buckets: dict[str, int] = {}
    for steps, count in sorted(step_differences.items()):
        if steps == 0:
            label = "under half a step"
        elif steps <= 2:
            label = f"{steps} step{'s' * (steps != 1)}"
        else:
            high = 1 << (steps - 1).bit_length()
            label = f"{high // 2 + 1}-{high} steps"
        buckets[label] = buckets.get(label, 0) + count
    return list(buckets.items())


def render_diagnosis_text(diagnosis) -> str:
    kind = "integers" if diagnosis.integer else "floats"
    op = f" [{diagnosis.op}]" if getattr(diagnosis, "op", "") else ""
    head = f"diagnosis of {diagnosis.layer}{op} ({kind}), engine {diagnosis.engine}, " \
           f"isa {diagnosis.isa}"
    lines = [*textwrap.wrap(head, WIDTH, subsequent_indent="  "),
             f"{diagnosis.differing} of {diagnosis.elements} elements differ from the exact "
             "output" + (":" if diagnosis.step_differences else "."), ]
    if diagnosis.step_differences:
        lines += textwrap.wrap("by " + ", ".join(
            f"{label}: {count}" for label, count in bucket_steps(diagnosis.step_differences)),
            WIDTH, initial_indent="  ", subsequent_indent="  ")
    lines += [""] + textwrap.wrap(diagnosis.summary, WIDTH) + [""]
    for item in getattr(diagnosis, "qparams_findings", ()):
        lines += textwrap.wrap(f"* {item.id} ({', '.join(item.layers)}): {item.message}", WIDTH,
                               subsequent_indent="  ") + [""]
    for rank, finding in enumerate(diagnosis.findings, 1):
        together = (f", with {', '.join(finding.combined_with)}" if finding.combined_with else "")
        lines.append(f"{rank}. {finding.id}: {finding.explained_count} element(s) "
                     f"({finding.share:.0%}{together})")
        lines += textwrap.wrap(finding.message, WIDTH, initial_indent="   ",
                               subsequent_indent="   ")
        if finding.explained:
            lines += textwrap.wrap("elements: " + _indices(finding.explained), WIDTH,
                                   initial_indent="   ", subsequent_indent="     ")
    if diagnosis.residual and diagnosis.findings:
        lines += [""] + textwrap.wrap("unexplained: " + _indices(diagnosis.residual), WIDTH)
    return "\n".join(lines)


def render_diagnosis_markdown(diagnosis) -> str:
    op = f" [{diagnosis.op}]" if getattr(diagnosis, "op", "") else ""
    lines = [f"## Diagnosis of `{diagnosis.layer}`{op}", "",
             f"Engine `{diagnosis.engine}`, ISA `{diagnosis.isa}`; {diagnosis.differing} of "
             f"{diagnosis.elements} elements differ.", "", diagnosis.summary, ""]
    lines += [f"- **`{item.id}`** ({', '.join(f'`{layer}`' for layer in item.layers)}): "
              f"{item.message}" for item in getattr(diagnosis, "qparams_findings", ())]
    if getattr(diagnosis, "qparams_findings", ()):
        lines.append("")
    if diagnosis.findings:
        lines += ["| rank | id | explains | share | with | what it means |",
                  "|---|---|---|---|---|---|"]
        for rank, finding in enumerate(diagnosis.findings, 1):
            lines.append(f"| {rank} | `{finding.id}` | {finding.explained_count} | "
                         f"{finding.share:.0%} | {', '.join(finding.combined_with)} | "
                         f"{finding.message} |")
    if diagnosis.residual and diagnosis.findings:
        lines += ["", f"Unexplained: {_indices(diagnosis.residual)}"]
    return "\n".join(lines)


def _histogram_svg(step_differences: dict[int, int]) -> str:
    """Bars on a square-root scale with a 3 px minimum, so one-element buckets stay visible."""
    if not step_differences:
        return "<p>No element differs.</p>"
    items = bucket_steps(step_differences)
    bar, top, label_band = 90, 24, 56
    caption = "difference in output steps (bar height: square root of the count)"
    # Wide enough for the caption (12 px sans-serif: under 7.5 px a character) with one bar.
    width = max(int(7.5 * len(caption)) + 40, 40 + bar * len(items))
    plot = 200
    height = top + plot + label_band
    peak = max(count for _, count in items) ** 0.5
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="histogram of differences">',
             f'<rect width="{width}" height="{height}" fill="#ffffff"/>']
    for position, (label, count) in enumerate(items):
        bar_height = max(3.0, plot * count ** 0.5 / peak)
        x = 20 + position * bar
        y = top + plot - bar_height
        parts.append(f'<rect x="{x + 6}" y="{y:.1f}" width="{bar - 12}" height="{bar_height:.1f}" '
                     'fill="#c0392b"/>')
        parts.append(f'<text x="{x + bar / 2}" y="{y - 5:.1f}" font-size="12" '
                     f'text-anchor="middle">{count}</text>')
        for line_number, line in enumerate(label.replace(" steps", " steps").split(" ", 1)):
            parts.append(f'<text x="{x + bar / 2}" y="{top + plot + 16 + 13 * line_number}" '
                         f'font-size="11" text-anchor="middle">{line}</text>')
    parts.append(f'<text x="{width / 2}" y="{height - 6}" font-size="12" text-anchor="middle" '
                 f'fill="#555">{caption}</text></svg>')
    return "".join(parts)


def render_diagnosis_html(diagnosis, explanation=None) -> str:
    """A self-contained page (inline CSS and SVG, no network): counts, histogram, findings,
    and the explain trace of the worst element."""
    escape = html.escape
    rows = "".join(
        f"<tr><td>{rank}</td><td><code>{escape(f.id)}</code></td><td>{f.explained_count}</td>"
        f"<td>{f.share:.0%}</td><td>{escape(', '.join(f.combined_with))}</td>"
        f"<td>{escape(f.message)}</td></tr>"
        for rank, f in enumerate(diagnosis.findings, 1))
    findings = (f"<table><tr><th>#</th><th>id</th><th>explains</th><th>share</th><th>with</th>"
                f"<th>what it means</th></tr>{rows}</table>" if rows else "")
    model_rows = "".join(
        f"<tr><td><code>{escape(item.id)}</code></td><td>{escape(', '.join(item.layers))}</td>"
        f"<td>{escape(item.message)}</td></tr>"
        for item in getattr(diagnosis, "qparams_findings", ()))
    model = (f"<h2>First, the model itself</h2><table><tr><th>id</th><th>layers</th>"
             f"<th>what it means</th></tr>{model_rows}</table>" if model_rows else "")
    worst = ""
    if diagnosis.differing and diagnosis.exact is not None and diagnosis.theirs is not None:
        gap = np.abs(np.asarray(diagnosis.theirs, np.float64) - np.asarray(diagnosis.exact,
                                                                          np.float64))
        index = np.unravel_index(int(np.argmax(gap)), gap.shape)
        worst = (f"<p>Worst element {escape(str(list(map(int, index))))}: yours "
                 f"<code>{escape(str(diagnosis.theirs[index]))}</code>, exact "
                 f"<code>{escape(str(diagnosis.exact[index]))}</code>.</p>")
    trace = ""
    if explanation is not None:
        trace = ("<h2>The worst element, step by step</h2><pre>"
                 + escape(explanation.render("text")) + "</pre>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>qexact diagnosis: {escape(diagnosis.layer)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; background: #fafafa; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #bbb; padding: 4px 8px; vertical-align: top; }}
th {{ background: #e8e8e8; }}
.summary {{ font-size: 1.2em; padding: 0.6em; background: #fdecea; border-left: 6px solid #c0392b; }}
pre {{ background: #fff; border: 1px solid #ccc; padding: 1em; font-size: 12px; }}
</style></head><body>
<h1>qexact diagnosis</h1>
<table><tr><th>layer</th><th>engine</th><th>isa</th><th>elements</th><th>differing</th></tr>
<tr><td><code>{escape(diagnosis.layer)}</code></td><td>{escape(diagnosis.engine)}</td>
<td>{escape(diagnosis.isa)}</td><td>{diagnosis.elements}</td><td>{diagnosis.differing}</td></tr></table>
<p class="summary">{escape(diagnosis.summary)}</p>
{model}
<h2>How far your numbers are from the exact ones</h2>
{_histogram_svg(diagnosis.step_differences)}
{worst}
<h2>Findings</h2>
{findings or "<p>No known deviation explains this.</p>"}
{trace}
</body></html>
"""
