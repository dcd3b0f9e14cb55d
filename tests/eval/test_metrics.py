"""Metrics against values computed by hand on tiny inputs."""

from __future__ import annotations

import math

import pytest
import torch

from usvs_dist.eval.metrics import cc, confusion_matrix, kld, macro_prf, nss, recall_at_k, sim

P = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
Q = torch.tensor([[1.0, 0.0], [0.0, 0.0]])


def test_saliency_metrics_on_a_two_by_two_map():
    # P/sum = [.5, 0, 0, .5], Q/sum = [1, 0, 0, 0].
    assert sim(P, Q) == pytest.approx(0.5)
    assert kld(P, Q) == pytest.approx(math.log(2), rel=1e-6)
    # CC: centred P = [.5, -.5, -.5, .5], Q = [.75, -.25, -.25, -.25]; .5 / sqrt(1 * .75).
    assert cc(P, Q) == pytest.approx(0.5 / math.sqrt(0.75), rel=1e-6)
    # NSS at the fixation (0, 0): (1 - .5) / std([1, 0, 0, 1]) with the sample std sqrt(1/3).
    assert nss(P, Q) == pytest.approx(0.5 / math.sqrt(1 / 3), rel=1e-6)


def test_saliency_metrics_at_their_extremes():
    assert sim(Q, Q) == pytest.approx(1.0) and kld(Q, Q) == pytest.approx(0.0, abs=1e-9)
    assert cc(P, P) == pytest.approx(1.0) and cc(P, 1 - P) == pytest.approx(-1.0)
    # Batches average over maps.
    assert sim(torch.stack([P, Q]), torch.stack([Q, Q])) == pytest.approx((0.5 + 1.0) / 2)


def test_macro_precision_recall_f1_by_hand():
    confusion = confusion_matrix(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 1]), classes=3)
    assert confusion.tolist() == [[2, 1, 0], [0, 1, 0], [0, 0, 0]]
    # class 0: P 1, R 2/3, F1 .8; class 1: P .5, R 1, F1 2/3; class 2 has no support (left out).
    got = macro_prf(confusion)
    assert got["precision"] == pytest.approx(0.75)
    assert got["recall"] == pytest.approx((2 / 3 + 1) / 2)
    assert got["f1"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_recall_at_k_by_hand():
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
    # q0 ranks g0 first; q1's own g1 is 2nd behind g2; q2's own g2 is 2nd behind g1.
    assert recall_at_k(query, gallery, ks=(1, 2)) == {1: pytest.approx(1 / 3), 2: pytest.approx(1.0)}
