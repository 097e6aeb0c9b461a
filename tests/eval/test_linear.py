"""Linear probe: protocols in closed form, separable features, the command on a trained run."""

import json

import pytest
import torch

from siamssl.errors import ConfigError
from siamssl.eval.linear import (
    LINEAR_PRESETS,
    LinearClassifier,
    _optimizer,
    cached_batches,
    evaluate_linear,
    learning_rate,
    linear_options,
    main,
    topk_accuracy,
    train_linear_classifier,
)
from siamssl.eval.runs import frozen_features, load_run


def separable_by_construction(n, dim=16, num_classes=10, margin=0.5, seed=0):
    """Features labelled by argmax(x·W) for a fixed W, keeping samples whose best score beats the
    runner-up by ``margin``: linearly separable with a margin, by construction."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, num_classes, generator=torch.Generator().manual_seed(123))
    x = torch.randn(4 * n, dim, generator=g)
    top2 = (x @ w).topk(2, dim=1)
    keep = (top2.values[:, 0] - top2.values[:, 1]) > margin
    return x[keep][:n], top2.indices[keep][:n, 0]


def test_fast_preset_reaches_99_percent_on_linearly_separable_features():
    train_x, train_y = separable_by_construction(2000, seed=0)
    test_x, test_y = separable_by_construction(1000, seed=1)
    options = linear_options("fast")
    classifier, results = train_linear_classifier(
        cached_batches(train_x, train_y, options.batch_size, options.seed), 16, 10, test_x, test_y, options
    )
    assert results["top1"] >= 0.99
    assert results["top5"] >= results["top1"]
    assert len(results["history"]) == options.epochs
    # frozen features: the standardization uses the training set's own statistics
    assert torch.allclose(classifier.norm.running_mean, train_x.mean(dim=0), atol=1e-5)
    assert torch.allclose(classifier.norm.running_var, train_x.var(dim=0), rtol=1e-4)


def test_sgd_on_standardized_features_also_reaches_99_percent():
    train_x, train_y = separable_by_construction(2000, seed=0)
    test_x, test_y = separable_by_construction(1000, seed=1)
    options = linear_options("fast", optimizer="sgd", base_lr=1.0, lr_scaling="none", epochs=30, schedule="cosine")
    _, results = train_linear_classifier(cached_batches(train_x, train_y, 256, 0), 16, 10, test_x, test_y, options)
    assert results["top1"] >= 0.99


@pytest.mark.parametrize("preset", ["moco", "byol"])
def test_sgd_paper_presets_learn_separable_features(preset):
    train_x, train_y = separable_by_construction(2000, seed=0)
    test_x, test_y = separable_by_construction(1000, seed=1)
    # the protocol's optimizer and schedule shape, shortened to 30 epochs at batch 256
    options = linear_options(preset, epochs=30, batch_size=256, milestones=[20, 25])
    _, results = train_linear_classifier(cached_batches(train_x, train_y, 256, 0), 16, 10, test_x, test_y, options)
    assert results["top1"] >= 0.98, results["top1"]


def test_simsiam_preset_lars_step_is_the_trust_ratio_on_every_parameter():
    """apex LARC (clip=False) as in SimSiam's main_lincls: the first step moves the weight by
    lr·η·‖w‖ whatever the gradient's size, and the zero-initialized bias by lr·g (trust 1 at ‖b‖ = 0)."""
    options = linear_options("simsiam")
    classifier = LinearClassifier(16, 10, options.batch_norm, torch.Generator().manual_seed(0))
    optimizer = _optimizer(classifier, options)
    x, y = separable_by_construction(64, seed=2)
    torch.nn.functional.cross_entropy(classifier(x), y).backward()
    weight, bias_grad = classifier.linear.weight.detach().clone(), classifier.linear.bias.grad.clone()
    optimizer.step()
    step = (classifier.linear.weight.detach() - weight).norm()
    assert float(step) == pytest.approx(options.peak_lr * 1e-3 * float(weight.norm()), rel=1e-5)
    assert torch.allclose(classifier.linear.bias.detach(), -options.peak_lr * bias_grad, rtol=1e-5, atol=1e-8)


def test_presets_are_the_papers_protocols():
    assert linear_options("simsiam").optimizer == "lars" and linear_options("simsiam").peak_lr == pytest.approx(1.6)  # 0.1 × 4096/256
    assert linear_options("byol").nesterov and linear_options("byol").peak_lr == pytest.approx(3.2)  # 0.2 × 4096/256
    moco = linear_options("moco")
    assert moco.peak_lr == 30.0 and moco.weight_decay == 0.0 and moco.epochs == 100
    assert [learning_rate(moco, e) for e in (0, 59, 60, 79, 80, 99)] == pytest.approx([30, 30, 3, 3, 0.3, 0.3])
    simsiam = linear_options("simsiam")
    assert learning_rate(simsiam, 0) == pytest.approx(1.6)
    assert learning_rate(simsiam, 45) == pytest.approx(0.8)  # half way through 90 epochs
    for name in LINEAR_PRESETS:  # every preset sets the same keys and validates
        assert set(LINEAR_PRESETS[name]) == set(LINEAR_PRESETS["fast"])
        assert linear_options(name).preset == name
    with pytest.raises(ConfigError, match="did you mean 'simsiam'"):
        linear_options("simsaim")


def test_topk_accuracy():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.5, 0.4], [0.2, 0.3, 0.5]])
    labels = torch.tensor([0, 2, 0])
    assert topk_accuracy(logits, labels, (1, 2, 5)) == pytest.approx({1: 1 / 3, 2: 2 / 3, 5: 1.0})


def test_frozen_features_use_eval_mode_leave_the_model_untouched_and_are_cached(trained_run):
    run = load_run(trained_run, device="cpu")
    before = {k: v.clone() for k, v in run.method.state_dict().items()}
    first, labels = frozen_features(run, "test", cache=False)
    for key, value in run.method.state_dict().items():  # BatchNorm statistics did not move
        assert torch.equal(value, before[key]), key
    images = run.split("test").images.float() / 255.0
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (run.mean, run.std))
    run.method.eval()
    with torch.no_grad():
        direct = run.method.backbone((images - mean) / std)
    assert torch.allclose(first, direct, atol=1e-5)
    assert torch.equal(labels, run.split("test").labels)
    cached, _ = frozen_features(run, "test", cache=True)  # computed, stored
    again, _ = frozen_features(run, "test", cache=True)  # read back
    assert torch.equal(cached, again) and list((trained_run / "eval_cache").glob("test-backbone-*.pt"))


def test_linear_command_writes_results(trained_run, capsys):
    assert main(["--checkpoint", str(trained_run), "epochs=5", "device=cpu"]) == 0
    result = json.loads((trained_run / "linear.json").read_text())
    assert result["preset"] == "fast" and result["num_train"] == 64 and result["num_test"] == 32
    assert 0.0 <= result["top1"] <= result["top5"] <= 1.0
    assert [r["epoch"] for r in result["history"]] == [1, 2, 3, 4, 5]
    assert result["options"]["epochs"] == 5 and result["options"]["batch_norm"] is True  # the preset's value


def test_linear_with_train_time_augmentation_and_random_init(trained_run):
    options = linear_options("moco", epochs=2, batch_size=16, augment=True, random_init=True, device="cpu")
    result = evaluate_linear(trained_run, options, quiet=True)
    assert result["random_init"] and result["num_train"] == 64
    assert [r["lr"] for r in result["history"]] == [30.0, 30.0]
    assert (trained_run / "linear_random_init.json").is_file()


def test_linear_command_errors_are_one_line(trained_run, capsys):
    assert main(["--checkpoint", str(trained_run), "preset=simsaim"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: unknown preset 'simsaim' (did you mean 'simsiam'?)")
    assert main(["--checkpoint", str(trained_run), "epochs=ten"]) == 2
    assert capsys.readouterr().err.strip() == "error: config key 'epochs' must be an integer, got 'ten'"
    assert main(["--checkpoint", str(trained_run), "augment=true", "preset=moco", "batch_size=1000", "epochs=1"]) == 2
    assert "larger than the training set" in capsys.readouterr().err
    assert main(["--checkpoint", str(trained_run), "augment=true"]) == 2
    assert "augment=true needs a minibatch optimizer" in capsys.readouterr().err
