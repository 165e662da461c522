"""report.html: the sweep report as one self-contained page (mtl_cli/report.py builds the report).

One file that opens anywhere, offline: inline CSS, a few lines of inline JavaScript that sort a
table by the header clicked, every plot an inline SVG; a Content-Security-Policy lets the page
fetch nothing. Sections: the configurations (mean ± std over seeds on both splits, n, Δ and p
against the best, the best marked), the combinations of two swept keys, each task's metric against
each swept key, training curves per task from the runs' metrics.jsonl, and a transfer study's
table and per-seed plot. Every string that comes from a run directory (task names, config values,
folder names) is escaped: a run directory may come from anyone.
"""

from __future__ import annotations

import html
import json
import statistics
from typing import Any

from mtl_cli.report import SPLITS, explanation, mean_std, short_value, study_line, versus_best
from mtl_cli.report_plots import (
    Panel,
    color,
    curve_panels,
    grid_columns,
    panel_svg,
    read_curves,
    sweep_panels,
    transfer_panels,
)
from mtl_cli.report_transfer import transfer_rows

# No network, ever: only the page's own inline style and script, images as data: URLs.
CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5rem auto;
       max-width: 1500px; padding: 0 1rem; color: #1d232a; }
h1 { font-size: 1.35rem; word-break: break-all; } h2 { font-size: 1.15rem; margin-top: 2rem; }
h3 { font-size: 1rem; margin: 1.2rem 0 .4rem; }
p.note, li { color: #4a5561; } code { background: #f1f3f5; padding: 0 .25em; border-radius: 3px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .5rem 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d5dade; padding: .25rem .5rem; text-align: right; white-space: nowrap; }
th { background: #f4f6f8; } td.text, th.text { text-align: left; }
table.sortable thead tr:last-child th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: .7em; }
table.sortable th[aria-sort="descending"]::after { content: " \\25BC"; font-size: .7em; }
th.split-validation, td.split-validation { background: #f3f8ff; }
th.split-test, td.split-test { background: #fbf8f1; }
tr.best td { font-weight: 600; background: #eaf7e9; }
.badge { display: inline-block; background: #2e7d32; color: #fff; border-radius: 3px; padding: 0 .35em;
         font-size: .8em; margin-left: .3em; }
.swatch { display: inline-block; width: .8em; height: .8em; border-radius: 50%; margin-right: .35em;
          vertical-align: -.05em; }
.grid { display: grid; grid-template-columns: repeat(var(--cols), minmax(0, 480px)); gap: .75rem; }
@media (max-width: 1000px) { .grid { grid-template-columns: repeat(auto-fill, minmax(340px, 480px)); } }
figure { margin: 0; border: 1px solid #e3e6e9; border-radius: 4px; padding: .25rem; }
figure svg { width: 100%; height: auto; display: block; }
ul.legend { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: .2rem 1.2rem; }
"""

SORT_JS = """
(function () {
  function key(cell) {
    var raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
    if (raw === "") return { empty: true, v: "" };
    var n = Number(raw);
    return { empty: false, v: isNaN(n) ? raw : n };
  }
  function sortBy(table, th, col) {
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(th.parentNode.cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if (x.empty || y.empty) return x.empty === y.empty ? 0 : (x.empty ? 1 : -1);  // blanks last
      var c = typeof x.v === "number" && typeof y.v === "number" ? x.v - y.v : String(x.v).localeCompare(String(y.v));
      return ascending ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.tHead.rows[table.tHead.rows.length - 1].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.tabIndex = 0;
      th.title = "sort by this column";
      th.addEventListener("click", function () { sortBy(table, th, col); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, th, col); }
      });
    });
  });
})();
"""


def esc(value: Any) -> str:
    """Any value as HTML text (quotes too: the same helper fills attributes)."""
    return html.escape(value if isinstance(value, str) else short_value(value), quote=True)


def _sort_attr(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, (int, float)):
        return f' data-sort="{value!r}"'
    return f' data-sort="{esc(value)}"'


def _td(text: str, sort: Any = None, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f"<td{klass}{_sort_attr(sort)}>{text}</td>"


def configurations_table(report: dict) -> str:
    """The sortable table: a row per configuration; validation columns, then test beside them."""
    tasks = [*report["tasks"], "average"]
    keys = list(report["swept"])
    heads = ['<th class="text">#</th>'] + [f'<th class="text">{esc(k)}</th>' for k in keys] + ["<th>n</th>"]
    for split in SPLITS:
        heads += [f'<th class="split-{split}">{esc(t)} <small>{esc(report["metrics"][t])}</small></th>' for t in tasks]
        if split == "validation":
            heads += ['<th class="split-validation">Δ best</th>', '<th class="split-validation">p (Welch)</th>']
    lead = 2 + len(keys)
    groups = (
        f'<th colspan="{lead}" class="text">configuration</th>'
        f'<th colspan="{len(tasks) + 2}" class="split-validation">validation: chooses the best</th>'
        f'<th colspan="{len(tasks)}" class="split-test">test: reported beside it, never used to choose</th>'
    )
    body = []
    for i, row in enumerate(report["rows"]):
        badge = '<span class="badge">best</span>' if row["best"] else ""
        cells = [_td(f'<span class="swatch" style="background:{color(i)}"></span>{i + 1}{badge}', i, "text")]
        cells += [_td(esc(row["config"][k]), row["config"][k], "text") for k in keys]
        cells.append(_td(str(row["n"]), row["n"]))
        for split in SPLITS:
            for task in tasks:
                cell = row[split][task]
                cells.append(_td(esc(mean_std(cell)), cell["mean"], f"split-{split}"))
            if split == "validation":
                diff, p = versus_best(row)
                cells.append(_td(esc(diff), row["difference"], "split-validation"))
                cells.append(_td(esc(p), row["p_value"], "split-validation"))
        runs = esc(", ".join(f"{r} (seed {short_value(s)})" for r, s in zip(row["runs"], row["seeds"], strict=True)))
        body.append(f'<tr class="{"best" if row["best"] else ""}" title="{runs}">{"".join(cells)}</tr>')
    return (
        '<div class="scroll"><table class="sortable" id="configurations"><thead>'
        f"<tr>{groups}</tr><tr>{''.join(heads)}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def combinations_table(report: dict) -> str:
    """Two swept keys or more: the first two as a grid, each cell the validation average over the
    runs with those values (n), the other keys pooled."""
    keys = list(report["swept"])
    if len(keys) < 2:
        return ""
    first, second = keys[:2]
    cells: dict[tuple[str, str], list[float]] = {}
    for row in report["rows"]:
        where = (json.dumps(row["config"][first]), json.dumps(row["config"][second]))
        cells.setdefault(where, []).extend(v for v in row["validation"]["average"]["values"] if v is not None)
    head = f'<th class="text">{esc(first)} \\ {esc(second)}</th>' + "".join(
        f"<th>{esc(v)}</th>" for v in report["swept"][second]
    )
    body = []
    for a in report["swept"][first]:
        tds = [f'<td class="text">{esc(a)}</td>']
        for b in report["swept"][second]:
            values = cells.get((json.dumps(a), json.dumps(b)))
            tds.append(f"<td>{statistics.mean(values):.4f} (n={len(values)})</td>" if values else "<td>—</td>")
        body.append(f"<tr>{''.join(tds)}</tr>")
    pooled = f", {', '.join(map(esc, keys[2:]))} pooled" if len(keys) > 2 else ""
    return (
        f"<h3>Combinations run: validation average main metric (n runs){pooled}</h3>"
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
    )


def panel_grid(panels: list[Panel]) -> str:
    figures = "".join(f"<figure>{panel_svg(p)}</figure>" for p in panels)
    return f'<div class="grid" style="--cols:{grid_columns(len(panels))}">{figures}</div>'


def legend(report: dict) -> str:
    items = "".join(
        f'<li><span class="swatch" style="background:{color(i)}"></span>{i + 1}: {esc(row["label"])}'
        f" (n={row['n']}){' <span class=badge>best</span>' if row['best'] else ''}</li>"
        for i, row in enumerate(report["rows"])
    )
    return f'<ul class="legend">{items}</ul>'


def transfer_section(transfer: dict) -> str:
    rows = transfer_rows(transfer)
    sort = {r["task"]: r for r in transfer["rows"]}
    heads = "".join(
        f'<th class="{"text" if c in ("task", "metric", "transfer") else ""}">{esc(c)}</th>' for c in rows[0]
    )
    body = []
    for row in rows:
        raw = sort[row["task"]]
        values = {"single-task": raw["single_mean"], "multi-task": raw["multi_mean"], "difference": raw["difference"]}
        tds = [
            _td(esc(v), values.get(c, v), "text" if c in ("task", "metric", "transfer") else "") for c, v in row.items()
        ]
        body.append(f"<tr>{''.join(tds)}</tr>")
    seeds = ", ".join(map(short_value, transfer["seeds"])) or "?"
    return (
        f"<h2>Transfer: single- vs multi-task</h2><p class=note>{esc(transfer['file'])}: each task's main test "
        f"metric trained alone vs together (seeds {esc(seeds)}); significance: {esc(transfer['test'])}.</p>"
        f'<div class="scroll"><table class="sortable" id="transfer"><thead><tr>{heads}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>" + panel_grid(transfer_panels(transfer))
    )


def to_html(report: dict) -> str:
    parts = [f"<h1>Sweep report: {esc(report['folder'])}</h1>"]
    info = [esc(explanation(report).replace("`*`", "*"))]
    if report["swept"]:
        info.append(
            "Swept: "
            + "; ".join(f"<code>{esc(k)}</code> = {', '.join(map(esc, v))}" for k, v in report["swept"].items())
        )
    if report["overrides"]:
        info.append(
            "Common overrides: " + " ".join(f"<code>{esc(f'{k}={v}')}</code>" for k, v in report["overrides"].items())
        )
    study = study_line(report)
    if study:
        info.append(esc(study))
    parts.append("".join(f"<p class=note>{line}</p>" for line in info))

    if report["rows"]:
        parts.append("<h2>Configurations</h2>")
        parts.append(
            "<p class=note>Click a header to sort. A row's tooltip lists its runs. Best: the highest validation "
            "average; test is shown beside it only.</p>"
        )
        parts.append(configurations_table(report))
        parts.append(combinations_table(report))
        parts.append("<h2>Each task's metric against the swept values</h2>")
        parts.append(
            "<p class=note>Validation mean ± std over seeds (faint dots: each seed), test dashed; the star: the best "
            "configuration.</p>"
        )
        for key, panels in sweep_panels(report).items():
            parts.append(f"<h3>against <code>{esc(key)}</code></h3>" if key else "<h3>nothing swept but the seed</h3>")
            parts.append(panel_grid(panels))

        curves, notes = read_curves(report)
        metric_panels, loss_panels = curve_panels(report, curves, "metric"), curve_panels(report, curves, "train_loss")
        parts.append("<h2>Training curves</h2>")
        parts.append(
            "<p class=note>From each run's metrics.jsonl: one line per configuration (mean over seeds), a faint line "
            "per seed; a red x marks an evaluation recorded as forgetting.</p>" + legend(report)
        )
        if metric_panels:
            parts += ["<h3>validation main metric by step</h3>", panel_grid(metric_panels)]
        if loss_panels:
            parts += ["<h3>train loss by step</h3>", panel_grid(loss_panels)]
        if not metric_panels and not loss_panels:
            parts.append("<p class=note>No run has validation records to draw.</p>")
        if notes:
            parts.append("<ul>" + "".join(f"<li>no curves for {esc(n)}</li>" for n in notes) + "</ul>")

    if report.get("transfer"):
        parts.append(transfer_section(report["transfer"]))
    if report["skipped"]:
        parts.append("<h2>Skipped</h2><ul>")
        parts += [f"<li>{esc(s['run'])}: {esc(s['reason'])}</li>" for s in report["skipped"]]
        parts.append("</ul>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        f"<title>mtl report: {esc(report['folder'])}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(p for p in parts if p)
        + f"\n<script>{SORT_JS}</script>\n</body></html>\n"
    )
