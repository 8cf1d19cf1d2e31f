"""Generative active learning (Mahapatra et al., "Efficient active learning for image classification and segmentation
using a sample selection and conditional generative adversarial network", MICCAI 2018).

``config`` (``ExperimentConfig``), ``method`` (the ``Method``: classifier + segmenter, synthetic candidates),
``protocol`` (seeds x strategies, the cGAN cache, the fully supervised baselines), ``serve`` (the served track).
"""

from medloop.methods.base import MethodSpec
from medloop.methods.mahapatra.config import ExperimentConfig
from medloop.methods.mahapatra.method import Context, Mahapatra, initial_set, prepare
from medloop.methods.mahapatra.protocol import fsl_baselines, run_experiment, run_mahapatra_track, sampler_factory
from medloop.methods.mahapatra.serve import plan
from medloop.report.console import experiment_summary
from medloop.report.experiment import build_report

__all__ = ["SPEC", "Context", "ExperimentConfig", "Mahapatra", "fsl_baselines", "initial_set", "plan", "prepare",
           "run_experiment", "run_mahapatra_track", "sampler_factory"]

# a tiny experiment on the chest phantom, for the contract suite (tests/contract)
EXAMPLE = {
    "name": "mahapatra2018-example",
    "data": {"source": "builtin:chest-xray", "size": 32, "options": {"n_normal": 10, "n_nodule": 10}},
    "classifier": {"model": "resnet18", "model_params": {"width": 4}, "epochs": 1, "batch_size": 8, "patience": 0},
    "segmenter": {"epochs": 1, "batch_size": 8, "model_params": {"channels": [4, 8, 8, 8]}},
    "strategies": ["random"],
    "initial_per_class": 2, "query_per_class": 1, "augment_copies": 1, "n_mc_samples": 2, "record_at": [],
    "budget": 0.9, "max_rounds": 1, "round_patience": 0, "fsl_folds": 0, "random_subset_draws": 0,
}

SPEC = MethodSpec(name="mahapatra2018", paper="Mahapatra et al., MICCAI 2018", config=ExperimentConfig,
                  run=run_experiment, plan=plan, build_report=build_report, summary=experiment_summary,
                  example=EXAMPLE)
