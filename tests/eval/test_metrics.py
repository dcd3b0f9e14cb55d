"""Metrics against values computed by hand on tiny inputs."""

from __future__ import annotations

import math
from fractions import Fraction

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


# Maps with a non-zero minimum, where the benchmark's normalisations matter: SIM's min-max step
# and NSS's sample std (N - 1) each change the value.
P23 = [[1, 2, 2], [3, 1, 3]]
Q23 = [[2, 1, 1], [1, 1, 4]]
FIX23 = [[0, 0, 1], [1, 0, 0]]


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def _flat(rows) -> list[Fraction]:
    return [Fraction(v) for row in rows for v in row]


def test_kld_divides_by_the_sum_only():
    p, q = _flat(P23), _flat(Q23)
    p = [v / sum(p) for v in p]  # [1, 2, 2, 3, 1, 3] / 12
    q = [v / sum(q) for v in q]  # [2, 1, 1, 1, 1, 4] / 10
    expected = sum(float(qi) * math.log(float(qi / pi)) for pi, qi in zip(p, q, strict=True))
    # = .2 ln 2.4 + .1 ln .6 + .1 ln .6 + .1 ln .4 + .1 ln 1.2 + .4 ln 1.6
    assert expected == pytest.approx(
        0.2 * math.log(2.4)
        + 0.2 * math.log(0.6)
        + 0.1 * math.log(0.4)
        + 0.1 * math.log(1.2)
        + 0.4 * math.log(1.6)
    )
    assert kld(_t(P23), _t(Q23)) == pytest.approx(expected, rel=1e-12)


def test_sim_min_max_scales_each_map_before_dividing_by_its_sum():
    def normalised(rows):
        v = _flat(rows)
        low, high = min(v), max(v)
        v = [(x - low) / (high - low) for x in v]
        return [x / sum(v) for x in v]

    p, q = normalised(P23), normalised(Q23)
    assert p == [0, Fraction(1, 6), Fraction(1, 6), Fraction(1, 3), 0, Fraction(1, 3)]
    assert q == [Fraction(1, 4), 0, 0, 0, 0, Fraction(3, 4)]
    expected = sum(min(a, b) for a, b in zip(p, q, strict=True))
    assert expected == Fraction(1, 3)  # dividing by the sums alone would give 43/60
    assert sim(_t(P23), _t(Q23)) == pytest.approx(float(expected), rel=1e-12)


def test_cc_is_the_pearson_correlation():
    p, q = _flat(P23), _flat(Q23)
    dp = [x - sum(p) / len(p) for x in p]  # [-1, 0, 0, 1, -1, 1]
    dq = [x - sum(q) / len(q) for x in q]  # [1, -2, -2, -2, -2, 7] / 3
    cov = sum(a * b for a, b in zip(dp, dq, strict=True))
    assert cov == 2 and sum(a * a for a in dp) == 4 and sum(b * b for b in dq) == Fraction(22, 3)
    expected = float(cov) / math.sqrt(float(sum(a * a for a in dp) * sum(b * b for b in dq)))
    assert cc(_t(P23), _t(Q23)) == pytest.approx(expected, rel=1e-12)
    assert cc(_t(P23), _t(Q23)) == pytest.approx(math.sqrt(3 / 22), rel=1e-12)


def test_nss_uses_the_sample_std():
    p = _flat(P23)
    mean = sum(p) / len(p)  # 2
    variance = sum((x - mean) ** 2 for x in p) / (len(p) - 1)  # 4 / 5, MATLAB's std
    at_fixations = [x for x, f in zip(p, _flat(FIX23), strict=True) if f > 0]  # 2 and 3
    expected = sum(float(x - mean) for x in at_fixations) / len(at_fixations) / math.sqrt(variance)
    assert expected == pytest.approx(0.5 / math.sqrt(0.8))  # with N instead: 0.5 / sqrt(2/3)
    assert nss(_t(P23), _t(FIX23)) == pytest.approx(expected, rel=1e-12)


def test_saliency_metrics_average_a_batch_of_maps_with_a_non_zero_minimum():
    pred, truth = torch.stack([_t(P23), _t(Q23)]), torch.stack([_t(Q23), _t(Q23)])
    assert sim(pred, truth) == pytest.approx((1 / 3 + 1) / 2)
    assert cc(pred, truth) == pytest.approx((math.sqrt(3 / 22) + 1) / 2)
    assert kld(pred, truth) == pytest.approx(kld(_t(P23), _t(Q23)) / 2)


def test_constant_and_zero_maps_give_numbers_not_nan():
    flat, zero = torch.full((2, 3), 5.0), torch.zeros(2, 3)
    # A constant map is uniform in SIM: sum_x min(1/6, q), q = [1, 0, 0, 0, 0, 3] / 4: 1/6 + 1/6.
    assert sim(flat, _t(Q23)) == pytest.approx(1 / 3)
    assert sim(zero, _t(Q23)) == 0.0  # a zero map stays zero (similarity.m)
    assert cc(flat, _t(Q23)) == 0.0 and nss(flat, _t(FIX23)) == 0.0
    assert not math.isnan(kld(zero, _t(Q23)))


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
