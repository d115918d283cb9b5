"""`fewtune cache info` and `fewtune cache clear`: the on-disk cache of image embeddings."""

from __future__ import annotations

import os

import typer

from fewtune.app.cli.text import out

cache_app = typer.Typer(help="Look at or empty the on-disk cache of image embeddings.", no_args_is_help=True)


@cache_app.command("info")
def cache_info() -> None:
    """Where the feature cache is, what it holds and its size cap ($FEWTUNE_CACHE_MAX_MB, default 2048)."""
    from datetime import UTC, datetime

    from fewtune.features.cache import classifier_files, default_cache_dir, describe, max_cache_bytes

    folder, cap = default_cache_dir(), max_cache_bytes()
    files = describe(folder)
    classifiers = classifier_files(folder)
    source = "FEWTUNE_CACHE_MAX_MB"
    if not os.environ.get("FEWTUNE_CACHE_MAX_MB", "").strip():
        source = "default; set FEWTUNE_CACHE_MAX_MB to change"
    size = megabytes(sum(f.bytes for f in files))
    out.print(f"feature cache: {folder}", highlight=False, soft_wrap=True)
    out.print(
        f"  size: {size} of {megabytes(cap)} ({source}); least recently used rows go first",
        highlight=False,
        soft_wrap=True,
    )
    for f in files:
        rows = "unreadable, replaced on next use" if f.rows is None else f"{f.rows} embeddings"
        used = (
            f", last used {datetime.fromtimestamp(f.last_used, UTC):%Y-%m-%d %H:%M} UTC"
            if f.last_used
            else ""
        )
        out.print(f"  {f.path.name}: {rows}, {megabytes(f.bytes)}{used}", highlight=False, soft_wrap=True)
    if classifiers:
        kept = megabytes(sum(p.stat().st_size for p in classifiers if p.exists()))
        out.print(
            f"  classifiers/: {len(classifiers)} ImageNet classifiers that `auto` consults, {kept}",
            highlight=False,
            soft_wrap=True,
        )
    if not files and not classifiers:
        out.print("  empty", highlight=False, soft_wrap=True)


@cache_app.command("clear")
def cache_clear() -> None:
    """Delete the cached embeddings (only fewtune's files in the cache folder); they are recomputed when
    needed."""
    from fewtune.features.cache import clear, default_cache_dir

    folder = default_cache_dir()
    files, freed = clear(folder)
    out.print(
        f"cleared {files} cache files, {megabytes(freed)} freed in {folder}", highlight=False, soft_wrap=True
    )


def megabytes(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"
