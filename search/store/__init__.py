"""Where a study's things live: storage URLs (SQLite, PostgreSQL), the artifact store (weights),
checkpoints, atomic files. Knows nothing of what a trial trains.

This __init__ imports nothing, so the engine can use :mod:`search.store.files` without loading optuna.
"""
