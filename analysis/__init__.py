"""Read a study's MLflow runs into pandas and turn them into tables, Pareto fronts and reports.

Nothing here imports torch or Ray, so a laptop can build reports from a remote MLflow server.
Only :mod:`analysis.runs` talks to MLflow; the other modules work on its DataFrames.
"""

from __future__ import annotations
