"""Human-machine collaborative segmentation (Ravanbakhsh et al., "Uncertainty-driven semantic segmentation through
human-machine collaborative learning", MIDL 2018): Algorithm 1, a pix2pix whose discriminator picks the slices to ask.

``config`` (``CollaborativeConfig``), ``method`` (the ``Method``: pix2pix, queries, pseudo-labels), ``protocol``
(folds x strategies x budgets, the base and fully supervised models), ``serve`` (the served track).
"""

from medloop.methods.base import MethodSpec
from medloop.methods.ravanbakhsh.config import CollaborativeConfig
from medloop.methods.ravanbakhsh.method import CollabData, Ravanbakhsh, load_collab_data, query_counts
from medloop.methods.ravanbakhsh.protocol import algorithm1, quality_control_summary, run_collaborative
from medloop.methods.ravanbakhsh.serve import plan
from medloop.report.collaborative import build_collaborative_report
from medloop.report.console import collaborative_summary

__all__ = ["SPEC", "CollabData", "CollaborativeConfig", "Ravanbakhsh", "algorithm1", "load_collab_data", "plan",
           "quality_control_summary", "query_counts", "run_collaborative"]

# a tiny experiment on the cardiac phantom, for the contract suite (tests/contract)
EXAMPLE = {
    "name": "ravanbakhsh2018-example",
    "data": {"source": "builtin:cardiac-mr", "size": 32, "options": {"n_volumes": 4, "min_slices": 4, "max_slices": 5}},
    "folds": 2, "max_folds": 1, "budgets": [0.5], "cycles": [1], "strategies": ["random"], "fsl": False,
    "pix2pix": {"epochs": 1, "batch_size": 8, "g_channels": [4, 8, 8], "d_features": 4}, "n_mc_samples": 2,
}

SPEC = MethodSpec(name="ravanbakhsh2018", paper="Ravanbakhsh et al., MIDL 2018", config=CollaborativeConfig,
                  run=run_collaborative, plan=plan, build_report=build_collaborative_report,
                  summary=collaborative_summary, example=EXAMPLE)
