"""``esvit report``: the metrics records in tables beside the paper, figures and one HTML page.

:mod:`esvit.report.build` reads the inputs and writes the files, :mod:`esvit.report.tables` computes the tables,
:mod:`esvit.report.plots` draws the figures, :mod:`esvit.report.sections` lays out the document and
:mod:`esvit.report.render` renders it as markdown and HTML.
"""

from esvit.report.build import build_report

__all__ = ["build_report"]
