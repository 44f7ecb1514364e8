"""Servers on loopback by default: optuna-dashboard, TensorBoard and the drawing-pad app."""
