"""A bundle's human report: ``report.html`` (self-contained, offline) and ``report.md`` (CI).

Both are *derived* files: built only from what the bundle holds (``manifest.json``,
``report.json``, ``analysis.json``) and the measurements added later under ``results/``
(``robopt_compile.bench.results``). They are not listed in the manifest's hashed ``files`` and can
be deleted and regenerated at any time (``robopt-compile report BUNDLE``); docs/REPORTS.md
says what each section shows and where its numbers come from.

``report.html`` is one file a browser shows with no network: no scripts, no external style
sheets, fonts or images, no URLs. Plots are inline SVG drawn by matplotlib with text as paths
(no fonts needed) and a fixed hash salt, so the same inputs give the same bytes. matplotlib is
a compile-machine dependency imported only when a plot is drawn; without it the report keeps
its tables and says ``pip install matplotlib``. Any piece may be missing: its section then
says what was not measured and which command measures it. All text from the bundle goes
through ``html.escape``.

The modules, lowest first: ``format`` (values as text, HTML tables), ``data`` (reading the
bundle), ``checks`` (the verdict), ``plots`` (inline SVG), ``sections_*`` (one function per
section of the page), ``html`` and ``markdown`` (the two documents), ``write`` (the files).
"""

from robopt_compile.report.checks import Check, pending_engine_check, verdict
from robopt_compile.report.data import BundleData, load_bundle
from robopt_compile.report.html import SECTIONS, render_html
from robopt_compile.report.markdown import render_markdown
from robopt_compile.report.plots import matplotlib_available
from robopt_compile.report.write import HTML_NAME, MD_NAME, refresh_reports, write_reports

__all__ = [
    "HTML_NAME",
    "MD_NAME",
    "SECTIONS",
    "BundleData",
    "Check",
    "load_bundle",
    "matplotlib_available",
    "pending_engine_check",
    "refresh_reports",
    "render_html",
    "render_markdown",
    "verdict",
    "write_reports",
]
