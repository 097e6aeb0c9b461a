"""``python -m siamssl.train --config CONFIG.yaml [dotted.key=value ...]``"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

import yaml

from siamssl.errors import SiamSSLError
from siamssl.config import all_keys, load_config, load_raw
from siamssl.train.trainer import Interrupted, train


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m siamssl.train",
        description="Pretrain an encoder with a Siamese self-supervised method.",
        epilog="Example: python -m siamssl.train --config configs/simsiam.yaml data.root=./data trainer.epochs=200",
    )
    parser.add_argument("--config", help="YAML recipe (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value pairs applied on top of the YAML")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--list-keys", action="store_true", help="list every valid key for this config and exit")
    args = parser.parse_args(argv)
    try:
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
