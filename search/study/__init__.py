"""One trial (the objective), sampling and pruning, budgets, opening and resuming a study, failed
and stale trials, the one study loop ``run_study`` and local workers.
"""
