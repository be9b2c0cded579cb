import pytest
import torch
import torch.nn.functional as F

from climp.eval.hubness import k_occurrence, skewness
from climp.eval.retrieval import flatten_captions, retrieval_recall


def brute_recall(img, txt, owner, k):
    sim = txt @ img.T
    t2i = sum(int(owner[t]) in sorted(range(len(img)), key=lambda i: -sim[t, i].item())[:k] for t in range(len(txt)))
    i2t = 0
    for i in range(len(img)):
        ranked = sorted(range(len(txt)), key=lambda t: -sim[t, i].item())[:k]
        i2t += any(int(owner[t]) == i for t in ranked)
    return t2i / len(txt), i2t / len(img)


def test_recall_matches_brute_force_loop():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(12, 6, generator=g), dim=1)
    texts, owner = flatten_captions([[f"c{i}{j}" for j in range(1 + i % 3)] for i in range(12)])
    txt = F.normalize(img[owner] + 0.8 * torch.randn(len(owner), 6, generator=g), dim=1)
    r = retrieval_recall(img, txt, owner, ks=(1, 3, 5))
    for k in (1, 3, 5):
        t2i, i2t = brute_recall(img, txt, owner, k)
        assert r[f"text_to_image_R@{k}"] == pytest.approx(t2i)
        assert r[f"image_to_text_R@{k}"] == pytest.approx(i2t)
    assert 0 < r["text_to_image_R@1"] < 1


def test_flatten_rejects_empty_caption_list():
    with pytest.raises(ValueError, match="no captions"):
        flatten_captions([["a"], []])


def test_k_occurrence_and_skewness():
    from scipy.stats import skew
    g = torch.Generator().manual_seed(1)
    q, gal = torch.randn(30, 5, generator=g), torch.randn(9, 5, generator=g)
    counts = k_occurrence(q, gal, k=3)
    brute = [0] * 9
    for row in q @ gal.T:
        for i in sorted(range(9), key=lambda i: -row[i].item())[:3]:
            brute[i] += 1
    assert counts.tolist() == brute
    assert skewness(counts) == pytest.approx(skew(counts.numpy()))
    with pytest.raises(ValueError, match="k must"):
        k_occurrence(q, gal, k=10)
