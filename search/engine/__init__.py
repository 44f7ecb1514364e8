"""Training with torch only: data ingestion and the decoded cache, augmentation, the ConvNet,
the training loop, test-set metrics, the thread policy and the TensorBoard scalar writer. Imports no
optuna.
"""
