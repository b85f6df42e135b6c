"""common.cli: the one main wrapper of the six commands."""

from __future__ import annotations

import argparse

import pytest

from common.cli import ToonError, error_line, run_command


class _Broken(ToonError):
    pass


def _parser(func) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toon-x")
    p.add_argument("--debug", action="store_true")
    sub = p.add_subparsers(dest="command")
    run = sub.add_parser("run")
    run.set_defaults(func=func)
    return p


def test_user_error_is_one_line_and_exit_1(capsys) -> None:
    def fail(args):
        raise _Broken("model.onnx: not an ONNX file\n(details)")

    assert run_command("toon-x", _parser(fail), ["run"]) == 1
    err = capsys.readouterr().err
    assert err == "toon-x: error: model.onnx: not an ONNX file\n"


def test_debug_shows_the_traceback(capsys) -> None:
    def fail(args):
        raise ValueError("bad value")

    assert run_command("toon-x", _parser(fail), ["--debug", "run"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("toon-x: error: bad value\n")


def test_programming_errors_are_not_swallowed() -> None:
    def fail(args):
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_command("toon-x", _parser(fail), ["run"])


def test_missing_command_prints_usage_and_exit_2(capsys) -> None:
    parser = _parser(lambda args: 0)
    assert run_command("toon-x", parser, [], usage_without_command=True) == 2
    assert capsys.readouterr().err.startswith("usage: toon-x")
    assert run_command("toon-x", parser, ["--debug"]) == 2


def test_command_status_is_returned() -> None:
    assert run_command("toon-x", _parser(lambda args: 3), ["run"]) == 3


def test_error_line() -> None:
    assert error_line(ValueError("  first\nsecond")) == "first"
    assert error_line(OSError()) == "OSError"
