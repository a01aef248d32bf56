"""The training recipe of ``kerasio run``: data, split, the classifier, its fit, the epoch trace, the pipeline.

One user of the artifact core (:mod:`kerasio.export`, :mod:`kerasio.verify`,
:mod:`kerasio.loading`); the core never imports this package.
"""
from kerasio.recipe.data import Dataset, Split, load_dataset, split_dataset
from kerasio.recipe.model import TrainConfig, build_classifier, fit, set_determinism
from kerasio.recipe.pipeline import PipelineResult, RunOptions, run_pipeline
from kerasio.recipe.trace import EpochTrace

__all__ = ["Dataset", "Split", "load_dataset", "split_dataset", "TrainConfig", "build_classifier", "fit",
           "set_determinism", "EpochTrace", "run_pipeline", "RunOptions", "PipelineResult"]
