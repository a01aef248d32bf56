"""The training recipe of ``kerasio run``: data, split, the classifier, its fit, the epoch trace, the pipeline.

One user of the artifact core (:mod:`kerasio.export`, :mod:`kerasio.verify`,
:mod:`kerasio.loading`); the core never imports this package.
"""
