"""convnet-search: hyperparameter search for image-classification ConvNets.

The pipeline, one module per step: ``config`` → ``space`` → ``objective`` → ``study``, with
``data``, ``augment``, ``model`` and ``train`` underneath. See README.md and docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
