"""scripts/bench_imagefolder.py: its correctness check and its timing run, rehearsed on the CPU at toy size."""

from __future__ import annotations

from tests.scripts.loader import load_script


def test_check_file_pipeline_on_the_cpu():
    check = load_script("bench_imagefolder").check_file_pipeline("cpu", num_workers=0)
    assert check["batches"] == 3 and check["same_indices_as_cpu"]
    assert check["repeat_max_abs"] == 0.0 and check["views_vs_cpu_max_abs"] == 0.0
    assert check["corrupt_warnings"] == 1
    assert check["grouped_resize_max_abs"] < 1e-4


def test_bench_imagefolder_runs_at_toy_size():
    figures = load_script("bench_imagefolder").bench_imagefolder(
        device="cpu", batch_size=4, steps=1, warmup=1, num_workers=0, precision="fp32", channels_last=False,
        backbone="resnet_narrow", crop_size=16, image_size=(24, 32),
        overrides=("backbone.widths=[4,4,4,4]", "method.proj_hidden_dim=16", "method.proj_dim=8", "method.pred_hidden_dim=16"),
    )
    assert figures["files"] == 8 and figures["views"] == 2
    assert figures["loader_images_per_s"] > 0 and figures["step_images_per_s"] > 0
