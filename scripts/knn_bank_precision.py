"""How much does a half-precision kNN memory bank change kNN accuracy? Prints a table.

    python scripts/knn_bank_precision.py --checkpoint RUN [--random-init] [--ks 20 200] [data.root=...]

The run's train split is the bank and its test split the queries (as the ``knn`` monitor). Rows:
features extracted in float32 or under bf16 autocast (what a bf16 training run's monitor does),
times a bank stored (and multiplied) in float32, float16 or bfloat16. For each: top-1 per k and the
number of test predictions that differ from the float32/float32 row.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from siamssl.data.loader import eval_batches
from siamssl.eval.knn import extract_features, knn_scores
from siamssl.eval.runs import load_run

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    parser.add_argument("--random-init", action="store_true", help="the untrained encoder of the run's config")
    parser.add_argument("--ks", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("data_overrides", nargs="*", help="data.key=value overrides (e.g. data.root=PATH)")
    args = parser.parse_args(argv)

    run = load_run(args.checkpoint, args.data_overrides, "auto", args.random_init)
    run.method.eval()
    num_classes = len(run.labeled_data().classes)
    features = {}
    for extraction, autocast in (("fp32", None), ("bf16 autocast", torch.bfloat16)):
        started = time.perf_counter()
        features[extraction] = {
            split: extract_features(run.method.embed, eval_batches(run.split(split), args.batch_size, run.mean, run.std,
                                                                   run.device, run.crop_size), autocast)
            for split in ("train", "test")
        }
        print(f"extracted ({extraction}) in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    bank_rows, dim = features["fp32"]["train"][0].shape
    print(f"checkpoint {run.checkpoint}{' (random init)' if args.random_init else ''}: bank {bank_rows} x {dim}, "
          f"{features['fp32']['test'][0].shape[0]} queries, {num_classes} classes, T={args.temperature}\n")
    print("| extraction | bank dtype | " + " | ".join(f"top-1 k={k}" for k in args.ks) + " | predictions changed |")
    print("|---|---|" + "---|" * len(args.ks) + "---|")
    reference = None
    for extraction in features:
        (bank, bank_labels), (query, query_labels) = features[extraction]["train"], features[extraction]["test"]
        for name, dtype in DTYPES.items():
            if extraction != "fp32" and name == "fp32":
                continue
            scores = knn_scores(query, bank.to(dtype), bank_labels, num_classes, args.ks, args.temperature)
            predictions = torch.stack([scores[k].argmax(dim=1) for k in args.ks])
            reference = predictions if reference is None else reference
            accuracy = [(p == query_labels).float().mean().item() for p in predictions]
            changed = [int((p != r).sum()) for p, r in zip(predictions, reference)]
            print(f"| {extraction} | {name} | " + " | ".join(f"{100 * a:.2f}%" for a in accuracy)
                  + f" | {' / '.join(map(str, changed))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
