import itertools

import pytest
import torch

from climp.eval.metrics import (average_precision, classification_metrics, main_metric_for, mean_per_class_recall,
                                roc_auc, topk_accuracy)


def brute_auroc(scores, pos):
    p = [s for s, y in zip(scores, pos) if y]
    n = [s for s, y in zip(scores, pos) if not y]
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(p, n)) / (len(p) * len(n))


def brute_ap(scores, pos):
    """Step-wise AP: at each distinct threshold (descending), precision times recall gained."""
    total, ap, prev_recall = sum(pos), 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        sel = [y for s, y in zip(scores, pos) if s >= t]
        recall = sum(sel) / total
        ap += (recall - prev_recall) * (sum(sel) / len(sel))
        prev_recall = recall
    return ap


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_and_ap_match_brute_force_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (40,), generator=g).float()  # many ties
    pos = torch.rand(40, generator=g) < 0.4
    assert roc_auc(scores, pos) == pytest.approx(brute_auroc(scores.tolist(), pos.tolist()))
    assert average_precision(scores, pos) == pytest.approx(brute_ap(scores.tolist(), pos.tolist()))
    try:
        from sklearn.metrics import average_precision_score, roc_auc_score
    except ImportError:
        return
    assert roc_auc(scores, pos) == pytest.approx(roc_auc_score(pos.numpy(), scores.numpy()))
    assert average_precision(scores, pos) == pytest.approx(average_precision_score(pos.numpy(), scores.numpy()))


def test_auroc_needs_both_classes():
    with pytest.raises(ValueError, match="positive"):
        roc_auc(torch.rand(4), torch.ones(4, dtype=torch.bool))


def test_topk_and_mean_per_class_recall():
    logits = torch.tensor([[3.0, 2, 1], [1, 3, 2], [3, 1, 2], [1, 2, 3]])
    labels = torch.tensor([0, 2, 1, 2])
    assert topk_accuracy(logits, labels, 1) == 0.5
    assert topk_accuracy(logits, labels, 2) == 0.75
    # class 0: 1/1, class 1: 0/1, class 2: 1/2
    assert mean_per_class_recall(logits.argmax(1), labels, 3) == pytest.approx((1 + 0 + 0.5) / 3)


def test_protocol_metric_rules():
    assert main_metric_for("fgvc_aircraft") == "mean_per_class_recall"
    assert main_metric_for("pets") == main_metric_for("caltech101") == main_metric_for("flowers")
    assert main_metric_for("hateful_memes") == "roc_auc"
    assert main_metric_for("kinetics700") == "mean_top1_top5"
    assert main_metric_for("cifar10") == "top1"
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(30, 7, generator=g), torch.randint(0, 7, (30,), generator=g)
    m = classification_metrics(logits, labels, "kinetics700")
    assert m["main"] == pytest.approx((m["top1"] + m["top5"]) / 2)
    binary = classification_metrics(torch.randn(20, 2, generator=g), torch.arange(20) % 2, "hateful_memes")
    assert binary["main"] == binary["roc_auc"]
    assert classification_metrics(logits, labels, "pets")["main"] == m["mean_per_class_recall"]
