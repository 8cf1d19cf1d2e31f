"""The old home of generative active learning, kept so code written against it keeps importing: the method is now
the plug-in ``medloop.methods.mahapatra`` (nothing in medloop imports this module)."""

from medloop.methods.mahapatra.method import (Context, Mahapatra, Models, budget_count, initial_set, prepare,
                                              screening_pool, train_classifier, train_head, train_segmenter)
from medloop.methods.mahapatra.protocol import fsl_baselines, run_experiment, run_mahapatra_track, sampler_factory

__all__ = ["Context", "Mahapatra", "Models", "budget_count", "fsl_baselines", "initial_set", "prepare",
           "run_experiment", "run_mahapatra_track", "sampler_factory", "screening_pool", "train_classifier",
           "train_head", "train_segmenter"]
