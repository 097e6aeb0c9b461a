"""Weighted kNN against a brute-force implementation, and the kNN command against the trainer's monitor."""

import json
import math

import pytest
import torch

from siamssl.eval.knn import KNNEvalOptions, evaluate_knn, knn_accuracy, knn_scores, main


def brute_force_votes(query, bank, bank_labels, num_classes, k, temperature):
    """Per query: sort the bank by cosine similarity, the k best vote exp(sim/T) for their label (float64)."""
    votes = torch.zeros(query.shape[0], num_classes, dtype=torch.float64)
    for i in range(query.shape[0]):
        q = query[i].double() / query[i].double().norm()
        sims = [(float(q @ (b.double() / b.double().norm())), int(label)) for b, label in zip(bank, bank_labels)]
        sims.sort(key=lambda item: -item[0])
        best = sims[0][0]
        for sim, label in sims[: min(k, len(sims))]:
            votes[i, label] += math.exp((sim - best) / temperature)  # the same per-query scale as knn_scores
    return votes


def toy_set(seed=0, num_bank=60, num_query=25, dim=5, num_classes=4):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_classes, dim, generator=g)
    bank_labels = torch.randint(0, num_classes, (num_bank,), generator=g)
    query_labels = torch.randint(0, num_classes, (num_query,), generator=g)
    bank = centers[bank_labels] + 0.8 * torch.randn(num_bank, dim, generator=g)
    query = centers[query_labels] + 0.8 * torch.randn(num_query, dim, generator=g)
    return query, query_labels, bank, bank_labels, num_classes


@pytest.mark.parametrize("temperature", [0.1, 0.5, 0.01])
def test_knn_scores_match_brute_force_for_several_k_in_one_pass(temperature):
    query, _, bank, bank_labels, num_classes = toy_set()
    ks = [1, 5, 20, 100]  # 100 > bank size: clipped to all 60 samples
    scores = knn_scores(query, bank, bank_labels, num_classes, ks, temperature, chunk_size=7)
    for k in ks:
        expected = brute_force_votes(query, bank, bank_labels, num_classes, k, temperature)
        assert torch.isfinite(scores[k]).all()
        assert torch.allclose(scores[k].double(), expected, rtol=1e-4, atol=1e-6), k
        assert torch.equal(scores[k].argmax(dim=1), expected.argmax(dim=1))


def test_knn_accuracy_of_well_separated_classes_and_k1_is_nearest_neighbour():
    query, query_labels, bank, bank_labels, num_classes = toy_set(seed=1)
    accuracy = knn_accuracy(query, query_labels, bank, bank_labels, num_classes, [1])[1]
    nearest = (torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(bank, dim=1).t()).argmax(dim=1)
    assert accuracy == pytest.approx(float((bank_labels[nearest] == query_labels).float().mean()))
    # the bank classifies itself perfectly at k=1
    assert knn_accuracy(bank, bank_labels, bank, bank_labels, num_classes, [1])[1] == 1.0


def test_knn_command_reproduces_the_monitor(trained_run):
    """Same k, T and splits as the run's kNN monitor: the rebuilt model gives the same accuracy, for
    the trained checkpoint and for the random initialization (the run's seed)."""
    summary = json.loads((trained_run / "summary.json").read_text())
    trained = evaluate_knn(trained_run, KNNEvalOptions(ks=[10], device="cpu"), quiet=True)
    assert trained["top1"]["10"] == summary["knn_top1"]
    initial = evaluate_knn(trained_run, KNNEvalOptions(ks=[10], device="cpu", random_init=True, cache=False), quiet=True)
    assert initial["top1"]["10"] == summary["knn_top1_random_init"]
    assert (trained_run / "knn.json").is_file() and (trained_run / "knn_random_init.json").is_file()


def test_knn_command_on_projector_features(trained_run, capsys):
    assert main(["--checkpoint", str(trained_run), "features=projector", "ks=[1,10,20]", "device=cpu"]) == 0
    result = json.loads((trained_run / "knn_projector.json").read_text())
    assert result["feature_dim"] == 64  # tests/tiny_configs/simsiam.yaml proj_dim
    assert set(result["top1"]) == {"1", "10", "20"}
    assert all(result["top1"][k] <= result["top5"][k] for k in result["top1"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["ks=[10]", "temprature=0.1"], "error: unknown option 'temprature' (did you mean 'temperature'?)"),
        (["features=proj"], "error: config key 'features' must be one of 'backbone', 'projector'"),
        (["data.rooot=/x"], "error: unknown config key 'data.rooot'; did you mean 'data.root'?"),
    ],
)
def test_knn_command_bad_options_fail_with_one_line(trained_run, capsys, args, message):
    assert main(["--checkpoint", str(trained_run), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err


def test_missing_checkpoint_fails_with_one_line(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"error: checkpoint '{tmp_path / 'nope'}' does not exist"


# ---- brute-force predictions with un-rescaled votes (from main)
def brute_force_knn(query, bank, labels, num_classes, k, t):
    predictions = []
    for q in query:
        sims = [(float(torch.dot(q / q.norm(), b / b.norm())), int(l)) for b, l in zip(bank, labels)]
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for sim, label in sims[:k]:
            votes[label] += math.exp(sim / t)
        predictions.append(max(range(num_classes), key=lambda c: votes[c]))
    return torch.tensor(predictions)


def test_matches_brute_force_for_several_k():
    g = torch.Generator().manual_seed(0)
    bank, query = torch.randn(60, 5, generator=g), torch.randn(20, 5, generator=g)
    labels = torch.randint(0, 4, (60,), generator=g)
    scores = knn_scores(query, bank, labels, 4, ks=[1, 5, 20, 200], temperature=0.1, chunk_size=7)
    for k in (1, 5, 20, 200):
        assert torch.equal(scores[k].argmax(1), brute_force_knn(query, bank, labels, 4, min(k, 60), 0.1))


def test_separated_clusters_are_classified_perfectly():
    g = torch.Generator().manual_seed(1)
    centers = torch.eye(3, 8) * 5
    bank = centers.repeat_interleave(20, 0) + 0.1 * torch.randn(60, 8, generator=g)
    query = centers.repeat_interleave(5, 0) + 0.1 * torch.randn(15, 8, generator=g)
    accuracy = knn_accuracy(query, torch.arange(3).repeat_interleave(5), bank, torch.arange(3).repeat_interleave(20), 3, ks=[10])
    assert accuracy == {10: 1.0}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_bank_is_multiplied_in_float32_chunk_by_chunk(dtype):
    """The bank is stored in 16 bits but its similarities are float32: the scores equal those of the
    same (rounded) bank held in float32, whatever the chunking."""
    from siamssl.eval.knn import normalized_rows

    g = torch.Generator().manual_seed(0)
    bank = torch.randn(50, 16, generator=g)
    labels = torch.randint(0, 4, (50,), generator=g)
    query = torch.randn(9, 16, generator=g)
    half = normalized_rows(bank, dtype)
    assert half.dtype == dtype
    expected = knn_scores(query, half.float(), labels, 4, ks=(5, 20), temperature=0.1, bank_normalized=True)
    actual = knn_scores(query, half, labels, 4, ks=(5, 20), temperature=0.1, bank_normalized=True, bank_chunk_size=7, chunk_size=4)
    for k in (5, 20):
        torch.testing.assert_close(actual[k], expected[k], rtol=1e-6, atol=1e-6)
