"""Applications of datamodels: counterfactuals, brittleness, neighbours, leakage, embeddings, report.

One module per application, each a function returning a dataclass with
``to_dict()`` (what ``dmsweep analyze KIND --json`` prints) and ``write(out_dir)``:
:mod:`analysis.counterfactual`, :mod:`analysis.brittleness` (and
:mod:`analysis.verify`, the retraining check), :mod:`analysis.neighbors`,
:mod:`analysis.leakage`, :mod:`analysis.embed`, :mod:`analysis.lds_curve`,
:mod:`analysis.report`. :mod:`analysis.load` reads datamodels and parses
selections, :mod:`analysis.inputs` fetches the examples behind the indices,
:mod:`analysis.plots` draws on matplotlib's Agg canvas. Nothing here imports Ray
or the orchestrator: the retraining check is handed a function that trains
(:class:`analysis.verify.Retrainer`), and the report a status record.
"""

from __future__ import annotations

__all__: list[str] = []
