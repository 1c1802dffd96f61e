"""`chatsrv backup PATH` and `chatsrv restore PATH` (registered on the app in cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from .base import StoreError

DATA_DIR_HELP = "Data directory of the server (as `chatsrv serve --data-dir`)."


def backup(
    path: Path = typer.Argument(..., help="Backup file to write (replaced atomically if it exists)."),
    data_dir: Path = typer.Option(
        Path("./chatsrv-data"), envvar="CHATSRV_DATA_DIR", help=DATA_DIR_HELP
    ),
) -> None:
    """Copy the groups and history database to PATH; safe while the server runs.

    Uses SQLite's online backup API: a consistent snapshot that does not stop
    the server, checked with PRAGMA quick_check, written to a temporary file
    and renamed, so PATH is either the old file or a complete backup.
    """
    from .sqlite import backup as run_backup

    try:
        summary = run_backup(data_dir, path)
    except StoreError as err:
        typer.echo(f"error: backup failed: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"backup written to {path}: {summary}")


def restore(
    path: Path = typer.Argument(..., help="Backup file made by `chatsrv backup`."),
    data_dir: Path = typer.Option(
        Path("./chatsrv-data"), envvar="CHATSRV_DATA_DIR", help=DATA_DIR_HELP
    ),
) -> None:
    """Replace the data directory's database with the backup at PATH.

    Refuses while a server holds the data directory: stop the server first.
    The database it replaces is kept beside it as chatsrv.db.pre-restore.
    """
    from .sqlite import restore as run_restore

    try:
        summary, saved = run_restore(data_dir, path)
    except StoreError as err:
        typer.echo(f"error: restore failed: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"restored {path} into {data_dir}: {summary}")
    if saved is not None:
        typer.echo(f"the previous database was moved to {saved}")
