"""feather.cli.run: how an interrupt that lands inside a C extension's import is reported."""

from __future__ import annotations

import argparse

import pytest

from feather import cli


def _parser() -> argparse.ArgumentParser:
    return cli.ArgumentParser(prog="feather-test")


def _import_interrupted(args):
    """What onnxruntime's import raises when SIGINT arrives while its extension initializes."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as err:
        raise ImportError("initialization failed") from err


def test_an_interrupted_import_is_an_interrupt_not_a_traceback(capsys):
    assert cli.run(_import_interrupted, _parser(), []) == 130
    assert capsys.readouterr().err == "feather-test: interrupted (SIGINT)\n"


def test_other_errors_keep_their_traceback():
    def bug(args):
        raise ImportError("a real bug")

    with pytest.raises(ImportError, match="a real bug"):
        cli.run(bug, _parser(), [])
