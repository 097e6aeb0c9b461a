import math

import torch

from siamssl.eval.knn import knn_accuracy, knn_scores


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
