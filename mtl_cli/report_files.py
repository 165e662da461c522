"""Writing `mtl report`'s files (report.md/.csv/.json/.png/.html, never over an earlier report) and
the command itself. Apart from mtl_cli/report.py, which builds the report and loads no plotting
library: the page and the figures import matplotlib, and they read the report module, not it them."""

from __future__ import annotations

from pathlib import Path

from mtl_cli.report import REPORT_EXTS, build_report, print_report, to_csv, to_markdown
from mtl_cli.report_html import to_html
from mtl_cli.report_plots import report_png
from mtl_cli.writers import json_text, write_texts, write_with, writing


def report_paths(folder: Path) -> list[Path]:
    """report.{md,csv,json,png,html} in `folder`; when any of them exists, report_2.*, report_3.* ..."""
    n = 1
    while True:
        stem = "report" if n == 1 else f"report_{n}"
        if not any((folder / f"{stem}{ext}").exists() for ext in REPORT_EXTS):
            return [folder / f"{stem}{ext}" for ext in REPORT_EXTS]
        n += 1


def write_report(folder: Path, report: dict) -> list[Path]:
    """The report's files (see the module docstring), all or nothing; earlier reports stay."""
    paths = report_paths(Path(folder))
    md, csv_path, js, png, page = paths
    html_text = to_html(report)  # before anything is written: a failure leaves no file behind
    # All or nothing: a full disk or a read-only folder is one line and leaves no report half written.
    with writing(md, *paths):
        write_texts({md: to_markdown(report), csv_path: to_csv(report), js: json_text(report), page: html_text})
        write_with(png, lambda tmp: report_png(report, tmp))
    return paths


def report_command(folder: str, split: str = "validation") -> None:
    """`mtl report FOLDER [split=validation|test]`: build, print and write the sweep report."""
    path = Path(folder).expanduser()
    report = build_report(path, split)
    print_report(report)
    for written in write_report(path, report):
        print(f"wrote {written}")
