"""Servers on loopback by default: optuna-dashboard, TensorBoard and the drawing-pad app.

Their default address and ports live here, where importing them loads nothing else: ``search
--help`` shows them without importing a server (optuna, torch, gradio).
"""

DEFAULT_HOST = "127.0.0.1"
DASHBOARD_PORT = 8080
TENSORBOARD_PORT = 6006
APP_PORT = 7860
