"""Where a server listens: loopback or not, and the one warning when it is reachable from elsewhere.

Every server the tool starts (optuna-dashboard, TensorBoard, the app) binds to loopback by default;
another ``--host`` gets this warning, worded for what that server exposes. Standard library only.
"""

from __future__ import annotations

import ipaddress

from search.serve import DEFAULT_HOST

ALL_INTERFACES = frozenset({"0.0.0.0", "::", ""})


def is_all_interfaces(host: str) -> bool:
    """True for the wildcard addresses (``0.0.0.0``, ``::``, empty) that listen on every interface."""
    return host.strip("[]") in ALL_INTERFACES


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ``::1``)."""
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def exposure_warning(server: str, exposes: str, host: str, port: int, *, keep: str = "Keep") -> str | None:
    """The warning to log when ``host`` makes ``server`` reachable from other machines, else None.

    Args:
        server: what listens, as the sentence starts ("TensorBoard", "the predictor").
        exposes: what anyone who reaches it can do ("can use it").
        host, port: where it listens.
        keep: the start of the advice sentence ("Keep", or a longer lead-in ending in "keep").
    """
    if is_loopback(host):
        return None
    where = "all network interfaces" if is_all_interfaces(host) else host
    return (
        f"{server} is bound to {where} on port {port}: anyone who can reach this machine {exposes}. "
        f"{keep} the default --host {DEFAULT_HOST} and forward the port instead: "
        f"ssh -L {port}:127.0.0.1:{port} <host>"
    )
