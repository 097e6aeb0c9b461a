"""``siamssl-eval TOOL``: one command that hands over to each evaluation tool's own parser."""

from __future__ import annotations

import pytest

from siamssl.eval.__main__ import TOOLS, main


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_each_tool_parses_its_own_options_under_the_tool_name(tool, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([tool, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m siamssl.eval {tool} ")


def test_the_tool_runs_and_reports_a_missing_run_in_one_line(tmp_path, capsys):
    assert main(["knn", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"error: checkpoint '{tmp_path / 'nope'}' does not exist"


def test_unknown_or_missing_tool(capsys):
    assert main(["knnn"]) == 2
    assert "unknown evaluation tool 'knnn' (did you mean 'knn'?)" in capsys.readouterr().err
    assert main([]) == 2
    assert "tools:" in capsys.readouterr().err
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in TOOLS)
