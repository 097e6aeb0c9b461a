"""One gloo job for every multi-process equivalence in the test suite.

``tests/distributed/test_equivalence.py`` writes a spec, launches

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m tests.distributed.harness SPEC.json

and, while the job runs, computes the single-process references with the same functions of this
module. Each rank writes ``rank<r>.pt`` (and the method runs their checkpoints) under the spec's
output folder; the tests compare. One job for everything keeps the suite fast: starting torchrun
and importing torch costs more than all the cases together.

Cases are deterministic in float32. Global tensors have ``2B`` rows; rank ``r`` of ``W`` takes rows
``[rB, (r+1)B)``, exactly as :class:`siamssl.data.TrainLoader` shards a global batch.

Adding a loss: add an entry to :data:`LOSS_CASES`, a function ``(z1, z2) -> scalar`` of the two
local (B, D) inputs (build whatever the loss needs from them; any constant it needs must be the
same on every rank). Gathering losses also go in :data:`GATHERING_LOSSES` (their
``gather_distributed=False`` variant must *fail* the equivalence: the negative control). Methods need
nothing here: every registered method is run (see ``test_equivalence.py`` for per-method hooks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from siamssl import distributed as sd
from siamssl.methods import METHODS
from tests.conftest import tiny_raw
from siamssl.losses import (
    BarlowTwinsLoss,
    CPCLoss,
    InvariantSpreadingLoss,
    DINOLoss,
    InfoNCELoss,
    NCELoss,
    NegativeCosineLoss,
    NonParametricSoftmaxLoss,
    NormalizedMSELoss,
    NTXentLoss,
    SwAVLoss,
    UniGradLoss,
    VICRegLoss,
    barlow_twins_loss,
    cpc_loss,
    dino_loss,
    full_softmax_loss,
    info_nce,
    invariant_spreading_loss,
    nce_loss,
    nce_normalizer,
    negative_cosine_similarity,
    normalized_mse,
    nt_xent,
    proximal_penalty,
    sampled_softmax_loss,
    sinkhorn_knopp,
    swav_loss,
    unigrad_correlation,
    unigrad_loss,
    vicreg_loss,
)

WORLD = 2
LOCAL_BATCH = 6
GLOBAL_BATCH = WORLD * LOCAL_BATCH
DIM = 16
IN_DIM = 8

_BANK = torch.randn(20, DIM, generator=torch.Generator().manual_seed(11))
# A memory bank (InstDisc/CMC) is a buffer identical on every rank; each sample's bank row and noise
# candidates are functions of its global position, as the methods draw them.
_MEMORY = F.normalize(_BANK, dim=1)
_INDEX = torch.randperm(20, generator=torch.Generator().manual_seed(12))[:GLOBAL_BATCH]
_CANDIDATES = torch.cat([_INDEX.view(-1, 1), torch.randint(20, (GLOBAL_BATCH, 5), generator=torch.Generator().manual_seed(13))], 1)
_Z = 30.0


# SwAV: prototype scores of two crops (cosines), codes from Sinkhorn-Knopp over the global batch.
_PROTOTYPES = F.normalize(torch.randn(DIM, 10, generator=torch.Generator().manual_seed(14)), dim=0)


def _swav_scores(a: Tensor, b: Tensor) -> Tensor:
    return torch.stack([F.normalize(a, dim=1) @ _PROTOTYPES, F.normalize(b, dim=1) @ _PROTOTYPES])


def _swav_case(gather: bool, module: bool = False) -> LossCase:
    def case(a: Tensor, b: Tensor) -> Tensor:
        scores = _swav_scores(a, b)
        codes = torch.stack([sinkhorn_knopp(scores[v].detach(), gather_distributed=gather) for v in range(2)])
        return SwAVLoss(0.1)(scores, codes, (0, 1)) if module else swav_loss(scores, codes, (0, 1), 0.1)

    return case


# DINO: the teacher is the other view (no gradient), centred by a constant or by the batch mean of the
# teacher logits over all ranks (the method's centre update: all_reduce_sum / global count).
_CENTER = 0.3 * torch.randn(DIM, generator=torch.Generator().manual_seed(15))


def _dino_batch_center(gather: bool) -> LossCase:
    def case(a: Tensor, b: Tensor) -> Tensor:
        teacher = torch.stack([b, a]).detach()
        total = teacher.sum(dim=(0, 1))
        count = teacher.shape[0] * teacher.shape[1]
        if gather:
            total, count = sd.all_reduce_sum(total.clone()), count * sd.world_size()
        return dino_loss(torch.stack([a, b]), teacher, total / count, 0.1, 0.04)

    return case


def _nce_with_estimated_normalizer(a: Tensor, b: Tensor) -> Tensor:
    """As MemoryBank does: the first batch's estimate of Z, averaged over ranks."""
    z = sd.all_reduce_mean(nce_normalizer(a, _MEMORY, local_rows(_CANDIDATES), 0.2).clone())
    return nce_loss(a, _MEMORY, local_rows(_CANDIDATES), z, 0.2)

_UNIGRAD_F = unigrad_correlation(*torch.randn(2, 40, DIM, generator=torch.Generator().manual_seed(16)))


def _unigrad_with_batch_correlation(a: Tensor, b: Tensor) -> Tensor:
    """As the UniGrad method does: F from the (stand-in) momentum projections, averaged over ranks."""
    return unigrad_loss(a, b, b.detach(), a.detach(), sd.all_reduce_mean(unigrad_correlation(b, a)), 100.0)


# CPC: each local row becomes one image's 2×2 grid of 4-d codes (targets from a, predictions 1 row
# ahead from b), so a rank's rows are whole images, as the method shards them.
def _cpc_case(gather: bool, module: bool = False) -> LossCase:
    def case(a: Tensor, b: Tensor) -> Tensor:
        predictions, targets = b.reshape(1, -1, 2, 2, DIM // 4), a.reshape(-1, 2, 2, DIM // 4)
        if module:
            return CPCLoss([1], gather_distributed=gather)(predictions, targets)
        return cpc_loss(predictions, targets, [1], gather_distributed=gather)

    return case


LossCase = Callable[[Tensor, Tensor], Tensor]

LOSS_CASES: dict[str, LossCase] = {
    "negative_cosine_similarity": lambda a, b: negative_cosine_similarity(a, b),
    "negative_cosine_similarity/no_stop_gradient": lambda a, b: negative_cosine_similarity(a, b, stop_gradient=False),
    "normalized_mse": lambda a, b: normalized_mse(a, b),
    "info_nce": lambda a, b: info_nce(a, b, temperature=0.2),
    "info_nce/bank": lambda a, b: info_nce(a, b, _BANK, temperature=0.2),
    "nt_xent": lambda a, b: nt_xent(a, b, temperature=0.5),
    "barlow_twins_loss": lambda a, b: barlow_twins_loss(a, b, lambd=0.05),
    "vicreg_loss": lambda a, b: vicreg_loss(a, b),
    "NegativeCosineLoss": lambda a, b: NegativeCosineLoss()(a, b),
    "NormalizedMSELoss": lambda a, b: NormalizedMSELoss()(a, b),
    "InfoNCELoss": lambda a, b: InfoNCELoss(temperature=0.2)(a, b),
    "NTXentLoss": lambda a, b: NTXentLoss(temperature=0.5)(a, b),
    "BarlowTwinsLoss": lambda a, b: BarlowTwinsLoss(lambd=0.05)(a, b),
    "VICRegLoss": lambda a, b: VICRegLoss()(a, b),
    "full_softmax_loss": lambda a, b: full_softmax_loss(a, _MEMORY, local_rows(_INDEX), 0.2),
    "sampled_softmax_loss": lambda a, b: sampled_softmax_loss(a, _MEMORY, local_rows(_CANDIDATES), 0.2),
    "nce_loss": lambda a, b: nce_loss(a, _MEMORY, local_rows(_CANDIDATES), _Z, 0.2),
    "nce_normalizer": _nce_with_estimated_normalizer,
    "proximal_penalty": lambda a, b: proximal_penalty(F.normalize(a, dim=1), F.normalize(b, dim=1)),
    "NCELoss": lambda a, b: NCELoss(0.2)(a, _MEMORY, local_rows(_CANDIDATES), _Z),
    "NonParametricSoftmaxLoss": lambda a, b: NonParametricSoftmaxLoss(0.2)(a, _MEMORY, local_rows(_INDEX)),
    "sinkhorn_knopp": _swav_case(gather=True),
    "swav_loss": _swav_case(gather=True),
    "SwAVLoss": _swav_case(gather=True, module=True),
    "dino_loss": lambda a, b: dino_loss(torch.stack([a, b]), torch.stack([b, a]).detach(), _CENTER, 0.1, 0.04),
    "dino_loss/batch_center": _dino_batch_center(gather=True),
    "DINOLoss": lambda a, b: DINOLoss(0.1)(torch.stack([a, b]), torch.stack([b, a]).detach(), _CENTER, 0.04),
    "unigrad_loss": lambda a, b: unigrad_loss(a, b, b.detach(), a.detach(), _UNIGRAD_F, 100.0),
    "unigrad_correlation": _unigrad_with_batch_correlation,
    "UniGradLoss": lambda a, b: UniGradLoss(100.0)(a, b, b.detach(), a.detach(), _UNIGRAD_F),
    "invariant_spreading_loss": lambda a, b: invariant_spreading_loss(a, b, 0.2),
    "invariant_spreading_loss/full_gradient": lambda a, b: invariant_spreading_loss(a, b, 0.2, stop_gradient_candidates=False),
    "InvariantSpreadingLoss": lambda a, b: InvariantSpreadingLoss(0.2)(a, b),
    "cpc_loss": _cpc_case(gather=True),
    "CPCLoss": _cpc_case(gather=True, module=True),
}

# The same losses computed on the local batch only (for nce_normalizer: Z estimated on the local batch,\n# not averaged over ranks): on 2 ranks they must NOT match one process.
GATHERING_LOSSES: dict[str, LossCase] = {
    "info_nce": lambda a, b: info_nce(a, b, temperature=0.2, gather_distributed=False),
    "nt_xent": lambda a, b: nt_xent(a, b, temperature=0.5, gather_distributed=False),
    "barlow_twins_loss": lambda a, b: barlow_twins_loss(a, b, lambd=0.05, gather_distributed=False),
    "vicreg_loss": lambda a, b: vicreg_loss(a, b, gather_distributed=False),
    "InfoNCELoss": lambda a, b: InfoNCELoss(temperature=0.2, gather_distributed=False)(a, b),
    "NTXentLoss": lambda a, b: NTXentLoss(temperature=0.5, gather_distributed=False)(a, b),
    "BarlowTwinsLoss": lambda a, b: BarlowTwinsLoss(lambd=0.05, gather_distributed=False)(a, b),
    "VICRegLoss": lambda a, b: VICRegLoss(gather_distributed=False)(a, b),
    "sinkhorn_knopp": _swav_case(gather=False),
    "dino_loss/batch_center": _dino_batch_center(gather=False),
    "nce_normalizer": lambda a, b: nce_loss(
        a, _MEMORY, local_rows(_CANDIDATES), nce_normalizer(a, _MEMORY, local_rows(_CANDIDATES), 0.2), 0.2
    ),
    "unigrad_correlation": lambda a, b: unigrad_loss(a, b, b.detach(), a.detach(), unigrad_correlation(b, a), 100.0),
    "invariant_spreading_loss": lambda a, b: invariant_spreading_loss(a, b, 0.2, gather_distributed=False),
    "InvariantSpreadingLoss": lambda a, b: InvariantSpreadingLoss(0.2, gather_distributed=False)(a, b),
    "cpc_loss": _cpc_case(gather=False),
    "CPCLoss": _cpc_case(gather=False, module=True),
}


class _LocalGradientGather(torch.autograd.Function):
    """The common bug: a gather whose backward returns only this rank's slice of its own gradient."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rows = x.shape[0]
        return sd.gather_no_grad(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad[sd.rank() * ctx.rows : (sd.rank() + 1) * ctx.rows]


def _nt_xent_with_local_gradient_gather(a: Tensor, b: Tensor) -> Tensor:
    import siamssl.losses.ntxent as module

    original = module.gather_with_grad
    module.gather_with_grad = lambda x: _LocalGradientGather.apply(x) if sd.is_distributed() else x
    try:
        return nt_xent(a, b, temperature=0.5)
    finally:
        module.gather_with_grad = original


BROKEN_GATHERS: dict[str, LossCase] = {"nt_xent/local_gradient_gather": _nt_xent_with_local_gradient_gather}


def global_inputs() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(GLOBAL_BATCH, DIM, generator=g) * 1.3 + 0.3
    z2 = z1 + 0.7 * torch.randn(GLOBAL_BATCH, DIM, generator=g)
    x1 = torch.randn(GLOBAL_BATCH, IN_DIM, generator=g)
    x2 = x1 + 0.5 * torch.randn(GLOBAL_BATCH, IN_DIM, generator=g)
    return {"z1": z1, "z2": z2, "x1": x1, "x2": x2}


def local_rows(x: Tensor) -> Tensor:
    """This rank's slice of a global tensor (the whole tensor with one process)."""
    rows = x.shape[0] // sd.world_size()
    return x[sd.rank() * rows : (sd.rank() + 1) * rows]


class TwoViewNet(nn.Module):
    """Linear → BatchNorm1d → ReLU → Linear applied to both views in one forward (one DDP call)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Linear(IN_DIM, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, DIM))

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        return self.net(x1), self.net(x2)


def loss_results(cases: dict[str, LossCase]) -> dict[str, dict[str, Any]]:
    """For each case, on this rank: the loss, its gradients w.r.t. the two local inputs, and the
    (DDP-averaged when distributed) parameter gradients of :class:`TwoViewNet` with SyncBatchNorm."""
    data = global_inputs()
    results: dict[str, dict[str, Any]] = {}
    for name, case in cases.items():
        z1 = local_rows(data["z1"]).clone().requires_grad_(True)
        z2 = local_rows(data["z2"]).clone().requires_grad_(True)
        loss = case(z1, z2)
        loss.backward()
        model: nn.Module = sd.convert_sync_batchnorm(TwoViewNet())
        if sd.is_distributed():
            model = nn.parallel.DistributedDataParallel(model)
        net_loss = case(*model(local_rows(data["x1"]), local_rows(data["x2"])))
        net_loss.backward()
        module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        results[name] = {
            "loss": loss.detach(),
            "grad_z1": z1.grad.clone() if z1.grad is not None else torch.zeros_like(z1),
            "grad_z2": z2.grad.clone() if z2.grad is not None else torch.zeros_like(z2),
            "net_loss": net_loss.detach(),
            "net_grads": {k: p.grad.clone() for k, p in module.named_parameters()},
        }
    return results


# ----------------------------------------------------------------------- collectives and BatchNorms


def collective_results() -> dict[str, Any]:
    """gather_with_grad / all_reduce_sum_with_grad / gather_no_grad on this rank, with a loss whose
    cross-rank terms make a wrong backward visible."""
    x = torch.arange(6.0).view(3, 2) + 10.0 * sd.rank()
    x.requires_grad_(True)
    gathered = sd.gather_with_grad(x)
    weights = torch.arange(1.0, 1.0 + gathered.numel()).view_as(gathered) * (1.0 + sd.rank())
    (gathered * weights).sum().backward()
    y = (torch.arange(4.0) + 1.0) * (1.0 + sd.rank())
    y.requires_grad_(True)
    reduced = sd.all_reduce_sum_with_grad(y)
    (reduced * (2.0 + sd.rank())).sum().backward()
    return {
        "gathered": gathered.detach(),
        "gather_grad": x.grad.clone(),
        "reduced": reduced.detach(),
        "reduce_grad": y.grad.clone(),
        "gather_no_grad": sd.gather_no_grad(x.detach() * 2),
    }


def batchnorm_inputs() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(5)
    return {
        "1d": torch.randn(GLOBAL_BATCH, 5, generator=g) * 3.0 + 7.0,  # offset: tests the stable variance
        "2d": torch.randn(GLOBAL_BATCH, 3, 4, 4, generator=g) * 2.0 - 1.0,
        "1d_weight": torch.randn(GLOBAL_BATCH, 5, generator=g),
        "2d_weight": torch.randn(GLOBAL_BATCH, 3, 4, 4, generator=g),
    }


BATCHNORM_CASES = {
    "1d": lambda: nn.BatchNorm1d(5),
    "1d_no_affine": lambda: nn.BatchNorm1d(5, affine=False),
    "1d_cumulative": lambda: nn.BatchNorm1d(5, momentum=None),
    "2d": lambda: nn.BatchNorm2d(3),
}


def batchnorm_results(synchronize: bool = True) -> dict[str, dict[str, Any]]:
    """Two training steps of a BatchNorm made synchronized by :func:`convert_sync_batchnorm` (or of
    the plain ``nn.BatchNorm``, the reference); the loss is ``Σ_local y·w`` so that the sum over
    ranks is the one-process loss on the whole batch."""
    data = batchnorm_inputs()
    results: dict[str, dict[str, Any]] = {}
    for name, make in BATCHNORM_CASES.items():
        torch.manual_seed(3)
        bn = make()
        if bn.affine:
            with torch.no_grad():
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)
        if synchronize:
            bn = sd.convert_sync_batchnorm(bn)
        kind = name[:2]
        outputs, input_grads = [], []
        for step in range(2):
            x = (local_rows(data[kind]) * (1.0 + step)).requires_grad_(True)
            y = bn(x)
            (y * local_rows(data[f"{kind}_weight"])).sum().backward()
            outputs.append(y.detach())
            input_grads.append(x.grad.clone())
        results[name] = {
            "outputs": outputs,
            "input_grads": input_grads,
            "param_grads": {k: p.grad.clone() for k, p in bn.named_parameters()},
            "buffers": {k: b.clone() for k, b in bn.named_buffers()},
            "class": type(bn).__name__,
        }
        x_bf16 = local_rows(data[kind]).bfloat16()
        results[name]["bf16_output"] = bn(x_bf16).detach()
    return results


def shuffle_bn_results() -> dict[str, Tensor]:
    """MoCo's key path: shuffle across ranks → encoder with per-process BatchNorm → unshuffle.
    One process stands in for two with :class:`SplitBatchNorm` (``num_splits=2``)."""
    data = global_inputs()
    torch.manual_seed(7)
    encoder = nn.Sequential(nn.Linear(IN_DIM, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, DIM))
    if not sd.is_distributed():
        split = sd.SplitBatchNorm(32, num_splits=WORLD)
        split.load_state_dict(encoder[1].state_dict())
        encoder[1] = split
    torch.manual_seed(8)  # the permutation is drawn from the same generator state on every run
    with torch.no_grad():
        shuffled, permutation = sd.shuffle_across_ranks(local_rows(data["x1"]))
        keys = sd.unshuffle_across_ranks(encoder(shuffled), permutation)
        plain_keys = encoder(local_rows(data["x1"]))  # no shuffle: statistics of the un-shuffled chunks
    return {"keys": keys, "plain_keys": plain_keys, "permutation": permutation}


# ------------------------------------------------------------------------------- method runs

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class MethodEquivalence:
    """Per-method hook, only where a method genuinely needs one.

    overrides: config overrides for both runs. single_overrides / multi_overrides: for the
    1-process / 2-process run only (e.g. a single-process stand-in for per-process BatchNorm).
    rank_local_state: state keys that legitimately differ between ranks (a per-rank queue), left
    out of the replica check. why: the reason, for the reader.
    """

    overrides: tuple[str, ...] = ()
    single_overrides: tuple[str, ...] = ()
    multi_overrides: tuple[str, ...] = ()
    rank_local_state: tuple[str, ...] = ()
    why: str = ""


# Every method runs 2 steps with SyncBatchNorm on (on 2 ranks) and no monitors; the 2nd step sees
# what the 1st left behind (EMA targets, queues, centres, scheduled rates).
BASE_OVERRIDES = ("trainer.max_steps=2", "trainer.sync_bn=true", "eval.monitors=[]", "trainer.log_every_steps=1")

# Hooks, only where a method genuinely differs by design. Example: a Shuffle-BN MoCo whose paper
# setting is per-process BatchNorm can also be checked in that setting, since 2 ranks with per-rank
# BN and a cross-rank shuffle equal 1 process with SplitBatchNorm(2) and the same permutation (see
# test_shuffle_bn_across_ranks_equals_split_batchnorm_on_one_process), e.g. with a method option
# ``bn_splits``: MethodEquivalence(single_overrides=("method.bn_splits=2",),
# multi_overrides=("trainer.sync_bn=false",), why="per-GPU BN is MoCo's design"). With SyncBN forced
# (the default here) a correct shuffle/unshuffle needs no hook: BN statistics are permutation-invariant.
SPECIAL: dict[str, MethodEquivalence] = {
    "swav": MethodEquivalence(
        overrides=("trainer.max_steps=3",),
        why="the tiny queue (32 rows, global batch 16) is full and used from the 3rd step only",
    ),
}


def product_methods() -> list[str]:
    """Every method registered by the siamssl package (test modules register helpers of their own)."""
    return sorted(entry.name for entry in METHODS if entry.obj.__module__.startswith("siamssl."))


METHOD_NAMES = product_methods()
NEGATIVE_CONTROL = "simsiam/per_rank_bn"


def _method_runs(root: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """{run name: {"single"|"multi": {"raw": config, "out": folder}}}."""
    runs: dict[str, dict[str, dict[str, Any]]] = {}

    def add(run: str, method: str, common: tuple[str, ...], single: tuple[str, ...], multi: tuple[str, ...]) -> None:
        runs[run] = {}
        for kind, extra in (("single", single), ("multi", multi)):
            out = root / run.replace("/", "__") / kind
            out.mkdir(parents=True)
            runs[run][kind] = {"raw": tiny_raw(out / "run", *common, *extra, method=method), "out": str(out)}

    for name in METHOD_NAMES:
        hook = SPECIAL.get(name, MethodEquivalence())
        add(name, name, BASE_OVERRIDES + hook.overrides, hook.single_overrides, hook.multi_overrides)
    add(NEGATIVE_CONTROL, "simsiam", BASE_OVERRIDES, (), ("trainer.sync_bn=false",))
    return runs


def run_job(root: Path) -> dict[str, Any]:
    """Launch the 2-process job, compute the 1-process references meanwhile, and load everything."""
    runs = _method_runs(root)
    spec = root / "spec.json"
    spec.write_text(json.dumps({"out": str(root), "methods": [r["multi"] for r in runs.values()]}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
               "-m", "tests.distributed.harness", str(spec)]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the references share the 2 cores with the job
    try:
        single = {
            "losses": loss_results(LOSS_CASES),
            "batchnorms": batchnorm_results(synchronize=False),
            "shuffle_bn": shuffle_bn_results(),
        }
        for run in runs.values():
            run_method(run["single"]["raw"], run["single"]["out"])
    finally:
        torch.set_num_threads(threads)
        output, _ = process.communicate(timeout=900)
    if process.returncode != 0:
        raise RuntimeError(f"the 2-process job failed:\n{output[-6000:]}")
    multi = [torch.load(root / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    methods = {
        run: {
            "single": torch.load(Path(r["single"]["out"]) / "method_rank0.pt", weights_only=True),
            "multi": [torch.load(Path(r["multi"]["out"]) / f"method_rank{k}.pt", weights_only=True) for k in range(WORLD)],
            "metrics": {kind: _losses(Path(r[kind]["raw"]["output_dir"])) for kind in ("single", "multi")},
            "checkpoints": {
                kind: torch.load(Path(r[kind]["raw"]["output_dir"]) / "checkpoints" / "last.pt", weights_only=True)["model"]
                for kind in ("single", "multi")
            },
        }
        for run, r in runs.items()
    }
    return {"single": single, "multi": multi, "methods": methods}


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]




def run_method(raw: dict[str, Any], out_dir: str) -> None:
    """Train ``raw`` with the real :class:`Trainer`, recording the (DDP-averaged) gradients of every
    step before the optimizer sees them, and each rank's final method state."""
    from siamssl.config import config_from_dict
    from siamssl.train.trainer import Trainer

    out = Path(out_dir)
    trainer = Trainer(config_from_dict(raw))
    method = trainer.method
    grads: list[dict[str, Tensor]] = []
    original = method.on_before_optimizer_step

    def record_then_continue(progress: Any) -> None:
        grads.append({k: p.grad.detach().clone() for k, p in method.named_parameters() if p.grad is not None})
        original(progress)

    method.on_before_optimizer_step = record_then_continue  # type: ignore[method-assign]
    trainer.fit()
    torch.save(
        {"grads": grads, "state": {k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in method.state_dict().items()}},
        out / f"method_rank{sd.rank()}.pt",
    )


def main(spec_path: str) -> None:
    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    dist.init_process_group("gloo")
    out = Path(spec["out"])
    try:
        results = {
            "losses": loss_results(LOSS_CASES),
            "local_only_losses": loss_results(GATHERING_LOSSES),
            "broken_gathers": loss_results(BROKEN_GATHERS),
            "collectives": collective_results(),
            "batchnorms": batchnorm_results(),
            "shuffle_bn": shuffle_bn_results(),
        }
        torch.save(results, out / f"rank{sd.rank()}.pt")
        for run in spec["methods"]:
            run_method(run["raw"], run["out"])
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1])
