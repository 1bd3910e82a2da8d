"""Progress for long export steps (rich), silent with --quiet."""

from __future__ import annotations

import sys


class Steps:
    """A progress bar over ``total`` graphs with a description per step, on stderr."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet, self._progress, self._task = total, quiet, None, None

    def __enter__(self) -> Steps:
        if not self.quiet:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=Console(file=sys.stderr), transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("graphs", total=self.total)
        return self

    def step(self, description: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=description)

    def done(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
