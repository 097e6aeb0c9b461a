"""``siamssl-train --config RECIPE [dotted.key=value ...]`` (also ``python -m siamssl.train``).

``RECIPE`` is a YAML file or the name of a shipped recipe (``simsiam``,
``benchmarks/lightly_cifar10/byol``); ``--list-configs`` lists the shipped ones."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import yaml

from siamssl.config import all_keys, find_recipe, list_recipes, load_config, load_raw, recipe_description
from siamssl.errors import SiamSSLError
from siamssl.train.trainer import Interrupted, train


def program_name() -> str:
    """How the user called us: the console script's name, else ``python -m siamssl.train``."""
    called = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return called if called.startswith("siamssl-") else "python -m siamssl.train"


def recipes_table() -> str:
    """One line per shipped recipe: its name and the first sentence of its header."""
    names = list_recipes()
    width = max((len(name) for name in names), default=0)
    lines = []
    for name in names:
        recipe = find_recipe(name)
        description = recipe_description(recipe.read_text()) if recipe is not None else ""
        lines.append(f"{name:<{width}}  {description}".rstrip())
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    prog = program_name()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Pretrain an encoder with a Siamese self-supervised method.",
        epilog=f"Examples: {prog} --config quickstart\n"
        f"          {prog} --config simsiam data.dataset=imagefolder data.root=./cifar10 trainer.epochs=200\n"
        f"          {prog} --config my_recipe.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="a YAML file, or the name of a shipped recipe (see --list-configs)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value pairs applied on top of the YAML")
    parser.add_argument("--list-configs", action="store_true", help="list the shipped recipes and exit")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--list-keys", action="store_true", help="list every valid key for this config and exit")
    args = parser.parse_args(argv)
    try:
        if args.list_configs:
            print(recipes_table())
            return 0
        if args.list_keys:
            print("\n".join(all_keys(load_raw(args.config))))
            return 0
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        train(cfg)
    except Interrupted as exc:
        print(f"siamssl: {exc}", file=sys.stderr)
        return 130
    except SiamSSLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
