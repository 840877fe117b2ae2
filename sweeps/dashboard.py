"""Optuna's dashboard on a sweep's study (``inflora sweep TARGET --dashboard``).

The sweep's Optuna storage (``sweep.storage``, by default ``optuna.db`` in the
sweep directory) holds every trial's parameters, per-task intermediate values
and objective; ``optuna-dashboard`` (the ``dashboard`` extra) serves it: history,
parallel coordinates, importances. It listens on 127.0.0.1 only by default and has no login.
"""

from __future__ import annotations

from .config import Sweep

__all__ = ["DEFAULT_PORT", "serve_dashboard"]

DEFAULT_PORT = 8080  # optuna-dashboard's own default


def serve_dashboard(sweep: Sweep, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Serve the dashboard of ``sweep``'s storage until interrupted (blocks).

    Raises:
        FileNotFoundError: the sweep has not run yet (its sqlite storage is missing).
        ImportError: optuna-dashboard is not installed.
    """
    url = sweep.storage_url
    if url.startswith("sqlite:///") and not _sqlite_path(url).is_file():
        raise FileNotFoundError(f"{_sqlite_path(url)}: the sweep {sweep.name!r} has no Optuna study yet (run it first)")
    try:
        from optuna_dashboard import run_server
    except ImportError as exc:
        raise ImportError("optuna-dashboard is not installed: pip install 'inflora-pipeline[dashboard]'") from exc
    run_server(url, host=host, port=port)


def _sqlite_path(url: str):
    from pathlib import Path

    return Path(url[len("sqlite:///"):])
