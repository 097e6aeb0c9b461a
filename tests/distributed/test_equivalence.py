"""2 processes × batch B compute what 1 process × batch 2B computes: every loss, every method.

One ``torchrun --nproc_per_node=2`` gloo job (``tests/distributed/harness.py``) runs all the cases;
the single-process references are computed here with the same code while it runs.

Tolerances (float32 throughout):

* losses: the mean over ranks of the rank losses equals the one-process loss (``atol=rtol=1e-6``);
  each rank's input gradient divided by the world size equals the one-process gradient of its rows,
  and the DDP-averaged parameter gradients of a small network with SyncBatchNorm equal the
  one-process gradients (``atol=1e-6, rtol=1e-5``).
* SyncBatchNorm vs ``nn.BatchNorm`` on the concatenated batch: outputs, input gradients, summed
  parameter gradients and running statistics within ``atol=rtol=1e-5``; bf16 outputs within bf16
  precision (``atol=rtol=2e-2``).
* methods: two optimizer steps through the real Trainer. Per tensor, the max-abs difference of the
  gradients of every step and of the final parameters and buffers is at most ``1e-5 × max(1,
  max|x|)``: ``1e-5`` absolute for the O(1) parameters, relative for large buffers such as a memory
  bank's NCE constant Z ≈ 5e3, whose float32 spacing is ~5e-4. Logged losses within
  ``rtol=1e-5, atol=1e-6``; ranks hold identical replicas (``atol=1e-6``).
* negative controls: a loss that only sees the local batch, a gather whose backward keeps only the
  local gradient, and per-rank BatchNorm in a method all differ from one process by more than
  ``1e-3``, so the tolerances above do detect the silent bugs.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import siamssl.losses
from siamssl.methods import METHODS
from tests.distributed import harness

WORLD = harness.WORLD


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return harness.run_job(tmp_path_factory.mktemp("equivalence"))


# ------------------------------------------------------------------------------------- collectives


def test_collectives_forward_and_summed_backward(job):
    x = [torch.arange(6.0).view(3, 2) + 10.0 * r for r in range(WORLD)]
    rank_weight_sum = sum(1.0 + r for r in range(WORLD))  # Σ_r of the factor rank r puts on the gather
    for r, result in enumerate(job["multi"]):
        c = result["collectives"]
        assert torch.equal(c["gathered"], torch.cat(x))
        assert torch.equal(c["gather_no_grad"], torch.cat(x) * 2)
        block = torch.arange(1.0, 1.0 + 6 * WORLD).view(3 * WORLD, 2)[3 * r : 3 * r + 3]
        assert torch.equal(c["gather_grad"], block * rank_weight_sum)  # Σ over ranks, this rank's rows
        assert torch.equal(c["reduced"], (torch.arange(4.0) + 1.0) * rank_weight_sum)
        assert torch.equal(c["reduce_grad"], torch.full((4,), sum(2.0 + s for s in range(WORLD))))


@pytest.mark.parametrize("case", list(harness.BATCHNORM_CASES))
def test_sync_batchnorm_equals_batchnorm_on_the_concatenated_batch(job, case):
    reference = job["single"]["batchnorms"][case]
    ranks = [m["batchnorms"][case] for m in job["multi"]]
    assert all(r["class"] == "SyncBatchNorm" for r in ranks) and reference["class"].startswith("BatchNorm")
    tol = dict(atol=1e-5, rtol=1e-5)
    for step in range(2):
        torch.testing.assert_close(torch.cat([r["outputs"][step] for r in ranks]), reference["outputs"][step], **tol)
        torch.testing.assert_close(torch.cat([r["input_grads"][step] for r in ranks]), reference["input_grads"][step], **tol)
    for key, grad in reference["param_grads"].items():
        torch.testing.assert_close(sum(r["param_grads"][key] for r in ranks), grad, **tol)
    for r in ranks:
        for key, buffer in reference["buffers"].items():
            torch.testing.assert_close(r["buffers"][key], buffer, **tol)
    # bf16 input: bf16 output, statistics in float32 (the plain BatchNorm gets the same input)
    bf16 = torch.cat([r["bf16_output"] for r in ranks])
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), reference["bf16_output"].float(), atol=2e-2, rtol=2e-2)


def test_shuffle_bn_across_ranks_equals_split_batchnorm_on_one_process(job):
    single = job["single"]["shuffle_bn"]
    ranks = [m["shuffle_bn"] for m in job["multi"]]
    assert all(torch.equal(r["permutation"], single["permutation"]) for r in ranks)
    keys = torch.cat([r["keys"] for r in ranks])
    torch.testing.assert_close(keys, single["keys"], atol=1e-6, rtol=1e-5)
    # Independent reference: each rank's BatchNorm normalizes its slice of the permuted global batch.
    torch.manual_seed(7)
    encoder = torch.nn.Sequential(
        torch.nn.Linear(harness.IN_DIM, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(), torch.nn.Linear(32, harness.DIM)
    )
    x = harness.global_inputs()["x1"]
    expected = torch.empty_like(keys)
    with torch.no_grad():
        for chunk in single["permutation"].view(WORLD, -1):
            expected[chunk] = encoder(x[chunk])
    torch.testing.assert_close(keys, expected, atol=1e-6, rtol=1e-5)
    assert _max_diff(keys, torch.cat([r["plain_keys"] for r in ranks])) > 1e-3  # the shuffle does change the statistics


# -------------------------------------------------------------------------------------------- losses


def test_every_exported_loss_has_a_distributed_case():
    covered = {name.split("/")[0] for name in harness.LOSS_CASES}
    missing = sorted(set(siamssl.losses.__all__) - covered)
    assert not missing, f"add 2-process equivalence cases to tests/distributed/harness.py for: {missing}"


@pytest.mark.parametrize("case", list(harness.LOSS_CASES))
def test_loss_two_processes_equal_one_process(job, case):
    reference = job["single"]["losses"][case]
    ranks = [m["losses"][case] for m in job["multi"]]
    loss_mean = torch.stack([r["loss"] for r in ranks]).mean()
    torch.testing.assert_close(loss_mean, reference["loss"], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(torch.stack([r["net_loss"] for r in ranks]).mean(), reference["net_loss"], atol=1e-6, rtol=1e-6)
    for key in ("grad_z1", "grad_z2"):
        # rank r's autograd returns Σ_s ∂L_s/∂z_r; the one-process loss is the mean of the L_s
        torch.testing.assert_close(torch.cat([r[key] for r in ranks]) / WORLD, reference[key], atol=1e-6, rtol=1e-5)
    for key, grad in reference["net_grads"].items():
        for r in ranks:
            torch.testing.assert_close(r["net_grads"][key], grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("case", list(harness.GATHERING_LOSSES) + list(harness.BROKEN_GATHERS))
def test_negative_control_local_batch_or_wrong_backward_is_detected(job, case):
    reference = job["single"]["losses"][case if case in job["single"]["losses"] else case.split("/")[0]]
    group = "local_only_losses" if case in harness.GATHERING_LOSSES else "broken_gathers"
    rank0 = job["multi"][0][group][case]
    worst = max(_max_diff(rank0["net_grads"][k], g) for k, g in reference["net_grads"].items())
    assert worst > 1e-3


# ------------------------------------------------------------------------------------------- methods


def test_methods_under_test_are_every_registered_method():
    assert "simsiam" in harness.METHOD_NAMES
    assert set(harness.METHOD_NAMES) == {e.name for e in METHODS if e.obj.__module__.startswith("siamssl.")}
    assert not set(harness.SPECIAL) - set(harness.METHOD_NAMES), "a hook names a method that is not registered"


def _grad_diffs(single: list[dict[str, torch.Tensor]], multi: list[dict[str, torch.Tensor]]) -> float:
    """Largest per-tensor max-abs gradient difference, relative to max(1, max|g|) of the tensor."""
    assert len(single) == len(multi) >= 2
    worst = 0.0
    for step_single, step_multi in zip(single, multi):
        assert set(step_single) == set(step_multi)
        for key, grad in step_single.items():
            worst = max(worst, _max_diff(step_multi[key], grad) / max(1.0, grad.abs().max().item()))
    return worst


@pytest.mark.parametrize("method", harness.METHOD_NAMES)
def test_method_two_processes_equal_one_process(job, method):
    result = job["methods"][method]
    single, rank0 = result["single"], result["multi"][0]
    assert _grad_diffs(single["grads"], rank0["grads"]) <= 1e-5
    expected, actual = result["checkpoints"]["single"], result["checkpoints"]["multi"]
    assert set(expected) == set(actual)
    for key, value in expected.items():
        if not isinstance(value, torch.Tensor):  # extra state (e.g. a memory bank's noise seed)
            assert actual[key] == value, key
        elif value.is_floating_point():
            assert _max_diff(actual[key], value) <= 1e-5 * max(1.0, value.abs().max().item()), key
        else:
            assert torch.equal(actual[key], value), key
    losses = result["metrics"]
    assert len(losses["single"]) == len(losses["multi"]) == len(single["grads"])
    torch.testing.assert_close(torch.tensor(losses["multi"]), torch.tensor(losses["single"]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", harness.METHOD_NAMES)
def test_method_ranks_hold_identical_replicas(job, method):
    states = [r["state"] for r in job["methods"][method]["multi"]]
    skip = set(harness.SPECIAL.get(method, harness.MethodEquivalence()).rank_local_state)
    for key, value in states[0].items():
        if key in skip:
            continue
        if isinstance(value, torch.Tensor):
            assert _max_diff(states[1][key].float(), value.float()) <= 1e-6, key
        else:
            assert states[1][key] == value, key


def test_negative_control_per_rank_batchnorm_is_detected(job):
    result = job["methods"][harness.NEGATIVE_CONTROL]
    assert _grad_diffs(result["single"]["grads"], result["multi"][0]["grads"]) > 1e-3
