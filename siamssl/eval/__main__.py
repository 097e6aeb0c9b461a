"""``siamssl-eval TOOL ...`` (also ``python -m siamssl.eval TOOL ...``): one command for the
evaluation tools, each of which keeps its own options (``siamssl-eval knn --help``)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Optional

# tool -> (module with ``main(argv, prog)``, one-line summary)
TOOLS: dict[str, tuple[str, str]] = {
    "knn": ("siamssl.eval.knn", "weighted kNN accuracy of a frozen encoder"),
    "linear": ("siamssl.eval.linear", "linear probe on frozen features (presets: simsiam, byol, ...)"),
    "diagnostics": ("siamssl.eval.diagnostics", "normalized std, RankMe, alignment, uniformity, spectrum"),
    "report": ("siamssl.eval.report", "PNG plots and report.md in a run directory"),
}


def _usage(prog: str) -> str:
    width = max(len(name) for name in TOOLS)
    tools = "\n".join(f"  {name:<{width}}  {summary}" for name, (_, summary) in TOOLS.items())
    return (
        f"usage: {prog} TOOL [options]\n\nEvaluate a trained run (a run directory or a checkpoint).\n\ntools:\n{tools}\n\n"
        f"example: {prog} knn --checkpoint runs/quickstart\n         {prog} linear --help"
    )


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    called = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    prog = called if called.startswith("siamssl-") else "python -m siamssl.eval"
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(prog), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    tool, rest = argv[0], argv[1:]
    if tool not in TOOLS:
        from siamssl.registry import unknown_name_message

        print(f"error: {unknown_name_message('evaluation tool', tool, list(TOOLS))}", file=sys.stderr)
        return 2
    module = importlib.import_module(TOOLS[tool][0])
    return module.main(rest, prog=f"{prog} {tool}")


if __name__ == "__main__":
    sys.exit(main())
