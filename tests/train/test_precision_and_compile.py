"""Mixed precision, channels_last and torch.compile switches of the trainer, on the CPU.

Each test runs one optimizer step of a tiny config and compares the gradients the optimizer
receives with those of the fp32 / eager / contiguous run (captured by
``tests.distributed.harness.run_method``). Tolerances:

* bf16 autocast vs fp32 (every registered method): the logged losses agree within
  ``2e-2 × max(1, |loss|)`` (CMC's NCE loss is ~19) and the first step's gradient (all parameters
  as one vector) within ``35%`` relative norm. bf16 keeps 8 bits of mantissa and a width-8 ResNet
  at initialization has small, cancelling gradients: measured 20% for simsiam (whose loss is ~0 at
  init), 12% barlow_twins, 11% cmc and vicreg, 7% swav, 5% instdisc, 1% dino. A loss computed in bf16 is caught by the tighter
  tests/losses/test_common.py (autocast result = float32 result within 1e-5);
* channels_last and compile (``aot_eager``, which runs the traced graphs with eager kernels): the
  per-tensor max-abs gradient difference within ``1e-5`` relative to ``max(1, max|g|)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from siamssl.errors import ConfigError
from siamssl.config import config_from_dict
from siamssl.train.trainer import Trainer
from tests.conftest import tiny_raw
from tests.distributed import harness


ONE_STEP = ("trainer.max_steps=1", "eval.monitors=[]", "trainer.log_every_steps=1")


def _step(tmp_path: Path, tag: str, *overrides: str, method: str = "simsiam") -> dict:
    out = tmp_path / tag
    out.mkdir()
    raw = tiny_raw(out / "run", *ONE_STEP, *overrides, method=method)
    harness.run_method(raw, str(out))
    result = torch.load(out / "method_rank0.pt", weights_only=True)
    result["loss"] = json.loads((out / "run" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    return result


def _relative_norm(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    assert set(actual) == set(expected)
    error = sum(((actual[k].double() - expected[k].double()) ** 2).sum() for k in expected) ** 0.5
    norm = sum((g.double() ** 2).sum() for g in expected.values()) ** 0.5
    assert norm > 0
    return float(error / norm)


def _max_relative(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    assert set(actual) == set(expected)
    return max(((actual[k] - g).abs().max() / max(1.0, g.abs().max().item())).item() for k, g in expected.items())


@pytest.mark.parametrize("method", harness.METHOD_NAMES)
def test_bf16_step_agrees_with_fp32_step(tmp_path, method):
    fp32 = _step(tmp_path, "fp32", method=method)
    bf16 = _step(tmp_path, "bf16", "trainer.precision=bf16", method=method)
    assert abs(bf16["loss"] - fp32["loss"]) <= 2e-2 * max(1.0, abs(fp32["loss"]))
    assert _relative_norm(bf16["grads"][0], fp32["grads"][0]) <= 0.35
    for key, value in bf16["state"].items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == fp32["state"][key].dtype, key  # master weights stay in float32


def test_fp16_on_cpu_is_a_clear_config_error(tmp_path):
    with pytest.raises(ConfigError, match="trainer.precision=fp16 needs a GPU; use trainer.precision=bf16 on the CPU"):
        Trainer(config_from_dict(tiny_raw(tmp_path / "run", "trainer.precision=fp16", "trainer.device=cpu")))


def test_channels_last_step_matches_contiguous_step(tmp_path):
    reference = _step(tmp_path, "contiguous")
    trainer = Trainer(config_from_dict(tiny_raw(tmp_path / "probe", *ONE_STEP, "trainer.channels_last=true")))
    convolutions = [m.weight for m in trainer.method.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions)
    channels_last = _step(tmp_path, "channels_last", "trainer.channels_last=true")
    assert _max_relative(channels_last["grads"][0], reference["grads"][0]) <= 1e-5


def test_compile_switch_compiles_the_backbone_with_the_configured_backend(tmp_path):
    from torch._dynamo import lookup_backend, register_backend

    graphs: list[int] = []

    def counting_aot_eager(graph_module, example_inputs):  # type: ignore[no-untyped-def]
        graphs.append(len(graph_module.graph.nodes))
        return lookup_backend("aot_eager")(graph_module, example_inputs)

    if "siamssl_test_aot_eager" not in torch._dynamo.list_backends(exclude_tags=()):
        register_backend(name="siamssl_test_aot_eager")(counting_aot_eager)
    reference = _step(tmp_path, "eager")
    compiled = _step(tmp_path, "compiled", "trainer.compile=true", "trainer.compile_backend=siamssl_test_aot_eager")
    assert graphs, "trainer.compile=true did not compile anything"
    assert _max_relative(compiled["grads"][0], reference["grads"][0]) <= 1e-5
