"""Representation diagnostics: is a representation collapsed, compact, high-rank, are positives aligned?

Pure functions of feature matrices (rows are samples):

* :func:`normalized_channel_std` — per-channel std of the l2-normalized outputs (SimSiam, Chen & He
  2021, Fig. 2): 0 at complete collapse, about 1/√d when the outputs are spread like a uniform
  distribution on the sphere.
* :func:`rankme` — effective rank exp(entropy of the normalized singular values) (Garrido et al.,
  "RankMe: Assessing the Downstream Performance of Pretrained Self-Supervised Representations by
  Their Rank", ICML 2023): r for r equal non-zero singular values, 1 for a rank-one matrix; it
  measures dimensional collapse (Jing et al., ICLR 2022) that the std alone misses.
* :func:`alignment` and :func:`uniformity` (Wang & Isola, "Understanding Contrastive Representation
  Learning through Alignment and Uniformity on the Hypersphere", ICML 2020, and their reference code
  ``align_loss``/``uniform_loss``): E‖f(x)−f(y)‖^α over positive pairs (lower: positives closer) and
  log E exp(−t‖f(x)−f(y)‖²) over all pairs (lower: more uniform; 0 at collapse).
* :func:`covariance_spectrum` — eigenvalues of the embedding covariance, the picture of dimensional
  collapse (Jing et al. 2022; Tian et al., DirectPred, 2021).

``python -m siamssl.eval.diagnostics --checkpoint RUN/`` measures them on a trained run's test split
and writes ``diagnostics.json``; the ``diagnostics`` monitor logs them during training.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _as_float(x: Tensor) -> Tensor:
    """float64 stays float64 (exact tests); anything else is computed in float32."""
    return x if x.dtype == torch.float64 else x.float()


def normalized_channel_std(z: Tensor) -> Tensor:
    """Std over samples of each channel of the l2-normalized rows of ``z`` (N, D); returns (D,).

    Its mean is 0 when every row points the same way (collapse) and about 1/√D for rows spread
    uniformly on the unit sphere."""
    return F.normalize(_as_float(z), dim=1).std(dim=0)


def singular_values(z: Tensor) -> Tensor:
    """Singular values of ``z`` (N, D), descending."""
    return torch.linalg.svdvals(_as_float(z))


def rankme(z: Tensor, eps: float = 1e-7) -> float:
    """RankMe(Z) = exp(−Σ_k p_k log p_k) with p_k = σ_k/‖σ‖₁ + ε (Garrido et al. 2023, Eq. 1).

    Computed on ``z`` as given (no centering or normalization, as in the paper). Between 1 and
    min(N, D); exactly r (up to ε) when Z has r equal non-zero singular values."""
    sigma = singular_values(z)
    if float(sigma.sum()) == 0.0:
        return 0.0
    p = sigma / sigma.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def numerical_rank(z: Tensor, rtol: Optional[float] = None) -> int:
    """The number of singular values above ``rtol × σ_max`` (NumPy's default tolerance when None)."""
    return int(torch.linalg.matrix_rank(_as_float(z), rtol=rtol))


def alignment(x: Tensor, y: Tensor, alpha: float = 2.0) -> float:
    """Alignment E‖x̂ − ŷ‖₂^α over positive pairs (row i of ``x`` with row i of ``y``), on
    l2-normalized rows (Wang & Isola 2020, Eq. 4 / ``align_loss``). 0 when every pair coincides, up
    to 2^α for antipodal pairs."""
    x, y = F.normalize(_as_float(x), dim=1), F.normalize(_as_float(y), dim=1)
    return float((x - y).norm(dim=1).pow(alpha).mean())


def uniformity(x: Tensor, t: float = 2.0, chunk_size: int = 2048) -> float:
    """Uniformity log E_{i≠j} exp(−t‖x̂_i − x̂_j‖²) over all distinct pairs of l2-normalized rows
    (Wang & Isola 2020, Eq. 5 / ``uniform_loss``, which uses ``torch.pdist``). 0 when every row is
    the same point; lower is more uniform. Computed in chunks with a log-sum-exp, so 10⁴-10⁵ rows fit
    in memory."""
    x = F.normalize(_as_float(x), dim=1)
    n = x.shape[0]
    if n < 2:
        raise ValueError("uniformity needs at least two samples")
    partial = []
    for start in range(0, n, chunk_size):
        block = x[start : start + chunk_size]
        squared = (2.0 - 2.0 * block @ x.t()).clamp_min(0.0)
        logits = -t * squared
        rows = torch.arange(block.shape[0], device=x.device)
        logits[rows, rows + start] = float("-inf")  # exclude i == j
        partial.append(torch.logsumexp(logits.flatten(), dim=0))
    return float(torch.logsumexp(torch.stack(partial), dim=0) - math.log(n * (n - 1)))


def covariance_spectrum(z: Tensor, normalize: bool = True) -> Tensor:
    """Eigenvalues (descending, ≥ 0) of the sample covariance (1/(N−1)) Σ (z_i − z̄)(z_i − z̄)ᵀ of
    the rows of ``z`` (l2-normalized first when ``normalize``). A collapsed dimension shows up as an
    eigenvalue at numerical zero; a plot of their logarithm is the usual picture of dimensional
    collapse (Jing et al. 2022, Fig. 2)."""
    z = _as_float(z).double()
    if normalize:
        z = F.normalize(z, dim=1)
    centered = z - z.mean(dim=0, keepdim=True)
    covariance = centered.t() @ centered / max(1, z.shape[0] - 1)
    return torch.linalg.eigvalsh(covariance).flip(0).clamp_min(0.0)


def summarize(z: Tensor, positives: Optional[Tensor] = None, alpha: float = 2.0, t: float = 2.0) -> dict[str, float]:
    """The scalar diagnostics of one representation ``z`` (N, D): ``std`` (mean normalized channel
    std), ``std_x_sqrt_d`` (the same × √D: about 1 when spread uniformly, 0 at collapse), ``rankme``,
    ``uniformity`` and, when ``positives`` (a second view of the same N samples) is given,
    ``alignment``."""
    std = float(normalized_channel_std(z).mean())
    result = {
        "std": std,
        "std_x_sqrt_d": std * math.sqrt(z.shape[1]),
        "rankme": rankme(z),
        "uniformity": uniformity(z, t),
    }
    if positives is not None:
        result["alignment"] = alignment(z, positives, alpha)
    return result


# ------------------------------------------------------------------------------- command line


@dataclass
class DiagnosticsEvalOptions:
    """Options of ``python -m siamssl.eval.diagnostics`` (``key=value``).

    split: ``test`` or ``train``. max_samples: a fixed random subset of the split. alignment: embed
    two augmented views of each image (SimSiam's CIFAR recipe at the run's crop size, seeded by
    ``seed``) for the alignment. alpha, t: exponents of alignment and uniformity. random_init:
    measure the untrained encoder (the run's seed). output: results file (default
    RUN/diagnostics.json, or RUN/diagnostics_random_init.json).
    """

    split: Literal["test", "train"] = "test"
    max_samples: Optional[int] = 2000
    alignment: bool = True
    alpha: float = 2.0
    t: float = 2.0
    seed: int = 0
    batch_size: int = 256
    random_init: bool = False
    device: str = "auto"
    num_workers: int = 0
    output: Optional[str] = None


def evaluate_diagnostics(checkpoint: str | Path, options: DiagnosticsEvalOptions, data_overrides: Sequence[str] = (), quiet: bool = False) -> dict[str, Any]:
    """All diagnostics of a checkpoint (scalars and covariance spectra of the backbone features and
    projector output); writes and returns the JSON results."""
    from siamssl.eval.features import measure_representation
    from siamssl.eval.runs import default_output, load_run, write_json

    run = load_run(checkpoint, data_overrides, options.device, options.random_init)
    scalars, features = measure_representation(
        run.method, run.split(options.split), run.mean, run.std, run.device, run.crop_size, options.batch_size,
        options.max_samples, options.alignment, options.alpha, options.t, options.seed, options.num_workers,
    )
    payload: dict[str, Any] = {
        "checkpoint": str(run.checkpoint),
        "random_init": run.random_init,
        "split": options.split,
        "num_samples": int(next(iter(features.values())).shape[0]),
        "dims": {prefix: int(values.shape[1]) for prefix, values in features.items()},
        **scalars,
        "spectrum": {prefix: covariance_spectrum(values).tolist() for prefix, values in features.items()},
        "options": asdict(options),
    }
    output = Path(options.output) if options.output else default_output(run, "diagnostics")
    write_json(output, payload)
    if not quiet:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in scalars.items())
        print(f"siamssl: {shown}; wrote {output}", file=sys.stderr)
    return payload


def main(argv: Optional[list[str]] = None, prog: str = "python -m siamssl.eval.diagnostics") -> int:
    from siamssl.eval.runs import evaluation_main

    return evaluation_main(
        argv,
        prog,
        "Representation diagnostics of a frozen encoder: normalized std, RankMe, alignment, uniformity, covariance spectrum.",
        DiagnosticsEvalOptions,
        evaluate_diagnostics,
    )


if __name__ == "__main__":
    from siamssl.eval.diagnostics import main as _main

    sys.exit(_main())
