"""Print the measured max differences of every 2-process vs 1-process equivalence (CPU, gloo).

    PYTHONPATH=. python scripts/distributed_equivalence_report.py

Runs the same job as ``tests/distributed/test_equivalence.py`` (where the tolerances are asserted)
and prints one line per equivalence: the largest absolute difference found.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.distributed import harness  # noqa: E402


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        job = harness.run_job(Path(tmp))
    world = harness.WORLD
    ranks = job["multi"]
    print(f"{'equivalence':58s} {'max |diff|':>11s}")
    print("(method rows: per-tensor max-abs difference / max(1, max|x|), as the tests assert)")
    for case, ref in job["single"]["losses"].items():
        per = [r["losses"][case] for r in ranks]
        loss = abs(torch.stack([p["loss"] for p in per]).mean().item() - ref["loss"].item())
        grads = max(max_diff(torch.cat([p[k] for p in per]) / world, ref[k]) for k in ("grad_z1", "grad_z2"))
        net = max(max_diff(p["net_grads"][k], g) for p in per for k, g in ref["net_grads"].items())
        print(f"loss {case:35s} value     {loss:11.2e}\n{'':5s}{'':35s} ∂/∂inputs {grads:11.2e}\n{'':5s}{'':35s} DDP grads {net:11.2e}")
    for group in ("local_only_losses", "broken_gathers"):
        for case, got in ranks[0][group].items():
            ref = job["single"]["losses"][case if case in job["single"]["losses"] else case.split("/")[0]]
            net = max(max_diff(got["net_grads"][k], g) for k, g in ref["net_grads"].items())
            print(f"negative control {group}:{case:30s} {net:11.2e}")
    for case, ref in job["single"]["batchnorms"].items():
        per = [r["batchnorms"][case] for r in ranks]
        out = max(max_diff(torch.cat([p["outputs"][s] for p in per]), ref["outputs"][s]) for s in range(2))
        grad = max(max_diff(torch.cat([p["input_grads"][s] for p in per]), ref["input_grads"][s]) for s in range(2))
        params = max([max_diff(sum(p["param_grads"][k] for p in per), g) for k, g in ref["param_grads"].items()] or [0.0])
        buffers = max(max_diff(p["buffers"][k].float(), b.float()) for p in per for k, b in ref["buffers"].items())
        print(f"SyncBatchNorm {case:20s} out {out:.1e} ∂x {grad:.1e} ∂γβ {params:.1e} running {buffers:.1e}")
    keys = torch.cat([r["shuffle_bn"]["keys"] for r in ranks])
    print(f"{'Shuffle-BN 2 ranks vs SplitBatchNorm(2) on 1 process':58s} {max_diff(keys, job['single']['shuffle_bn']['keys']):11.2e}")
    for run, result in job["methods"].items():
        single, rank0 = result["single"], result["multi"][0]
        grads = max(
            max_diff(m[k], g) / max(1.0, g.abs().max().item()) for s_, m in zip(single["grads"], rank0["grads"]) for k, g in s_.items()
        )
        exp, act = result["checkpoints"]["single"], result["checkpoints"]["multi"]
        params = max(  # as asserted: relative to max(1, max|x|) of each tensor
            max_diff(act[k].float(), v.float()) / max(1.0, v.float().abs().max().item()) for k, v in exp.items() if isinstance(v, torch.Tensor)
        )
        losses = max(abs(a - b) for a, b in zip(result["metrics"]["single"], result["metrics"]["multi"]))
        replicas = max(
            max_diff(result["multi"][1]["state"][k].float(), v.float()) for k, v in rank0["state"].items() if isinstance(v, torch.Tensor)
        )
        print(f"method {run:24s} grads {grads:.1e} state {params:.1e} logged loss {losses:.1e} rank0 vs rank1 {replicas:.1e}")


if __name__ == "__main__":
    main()
