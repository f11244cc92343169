"""CLI output written to a pipe or a file is never wrapped or cut, whatever its length."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.table import Table

from manager.cli import main
from manager.cli.common import CliConsole

LONG = "x" * 150


def test_piped_output_keeps_long_lines_and_table_cells_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    out = io.StringIO()
    console = CliConsole(file=out)
    table = Table("name", "source")
    table.add_row("m", f"/tmp/{LONG}/model.onnx")
    console.print(table)
    console.print(f"published m version 1 at /tmp/{LONG}", highlight=False)
    text = out.getvalue()
    assert "…" not in text
    assert f"/tmp/{LONG}/model.onnx" in text
    assert f"published m version 1 at /tmp/{LONG}\n" in text


def test_a_terminal_still_wraps_to_its_width() -> None:
    console = CliConsole(file=io.StringIO(), force_terminal=True, width=40)
    assert console.width == 40


def test_validate_prints_each_problem_on_one_line(tmp_path: Path) -> None:
    name = "a_model_whose_name_alone_takes_most_of_an_eighty_column_line_x"
    (tmp_path / name / "1").mkdir(parents=True)
    result = CliRunner().invoke(main, ["--repo", str(tmp_path), "validate"], env={"COLUMNS": "80"})
    assert result.exit_code != 0
    assert f"error {name}: config.pbtxt is missing" in result.output.splitlines()
