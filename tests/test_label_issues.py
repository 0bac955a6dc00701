"""The report's flag (clearpeft.label_issues): confident learning's per-class thresholds, united with p < 0.5."""

import numpy as np
import pytest

from clearpeft.label_issues import class_thresholds, confident_flags, label_issue_flags

# 6 samples, 3 classes; given labels 0 0 1 1 2 2
PROBS = np.array([
    [0.70, 0.20, 0.10],  # labelled 0, confident in 0
    [0.25, 0.65, 0.10],  # labelled 0, but class 1 reaches its threshold: flagged
    [0.10, 0.80, 0.10],  # labelled 1, confident in 1
    [0.50, 0.30, 0.20],  # labelled 1: 0.30 is below class 1's threshold 0.55, 0.50 reaches class 0's 0.475
    [0.20, 0.30, 0.50],  # labelled 2, above class 2's threshold 0.35
    [0.45, 0.35, 0.20],  # labelled 2: no class reaches its threshold (0.45 < 0.475, 0.35 < 0.55, 0.20 < 0.35)
])
GIVEN = np.array([0, 0, 1, 1, 2, 2])


def test_thresholds_are_each_class_mean_self_confidence():
    assert np.allclose(class_thresholds(PROBS, GIVEN), [0.475, 0.55, 0.35])
    # a class no sample is labelled with never counts as a confident label
    assert class_thresholds(PROBS[:4], GIVEN[:4])[2] == 1.0


def test_confident_label_other_than_the_given_one_is_flagged():
    assert confident_flags(PROBS, GIVEN).tolist() == [False, True, False, True, False, False]


def test_flag_is_the_union_with_low_clean_probability():
    p = np.array([0.9, 0.9, 0.9, 0.9, 0.9, 0.2])  # the last: no confident label, but the loss GMM calls it noisy
    assert label_issue_flags(p, PROBS, GIVEN).tolist() == [False, True, False, True, False, True]
    assert not label_issue_flags(np.ones(6), np.eye(3)[GIVEN], GIVEN).any()  # a model that agrees flags nothing


def test_confident_joint_noise_rate_by_hand():
    from clearpeft.label_issues import confident_joint_noise_rate

    # thresholds t0 = (0.9 + 0.2) / 2 = 0.55, t1 = (0.7 + 0.6) / 2 = 0.65; confident labels 0, 1, 1 and none
    # (0.6 < 0.65): counts C[0,0] = C[0,1] = C[1,1] = 1; rows scaled to 2 samples each: [1, 1] and [0, 2];
    # 1 - (1 + 2) / 4 = 0.25
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]])
    assert confident_joint_noise_rate(probs, np.array([0, 0, 1, 1])) == pytest.approx(0.25)
    assert confident_joint_noise_rate(np.eye(3)[[0, 1, 2, 0]], np.array([0, 1, 2, 0])) == 0.0
    assert confident_joint_noise_rate(np.eye(2)[[1, 1, 0, 0]], np.array([0, 0, 1, 1])) == 1.0


def test_confusion_floor_noise_rate_by_hand():
    from clearpeft.label_issues import confusion_floor_noise_rate

    # predicted 0: given 0 x6, 1 x2, 2 x1, 3 x1 -> off-diagonal cells [2, 1, 1]; predicted 1: all given 1.
    # Dropping the 2 largest leaves [1]: 1 x (K - 1 = 3) = 3 wrong of 20 samples. Dropping none: the mean
    # cell 4/3 x 3 = 4 of 20, the disagreement rate.
    given = np.array([0] * 6 + [1, 1, 2, 3] + [1] * 10)
    probs = np.eye(4)[[0] * 10 + [1] * 10]
    assert confusion_floor_noise_rate(probs, given) == pytest.approx(0.15)
    assert confusion_floor_noise_rate(probs, given, confusable=0) == pytest.approx(0.2)
    # noise spread evenly over the other classes reads in full: each row has every other class once
    even = np.array([[i, j] for i in range(5) for j in range(5)])
    assert confusion_floor_noise_rate(np.eye(5)[even[:, 0]], even[:, 1]) == pytest.approx(0.8)
    # two classes: no floor to read, the disagreement rate; a model that agrees reads 0
    assert confusion_floor_noise_rate(np.eye(2)[[1, 1, 0, 0]], np.array([0, 1, 1, 1])) == pytest.approx(0.75)
    assert confusion_floor_noise_rate(np.eye(3)[[0, 1, 2]], np.array([0, 1, 2])) == 0.0


def test_one_way_noise_rate_by_hand():
    from clearpeft.label_issues import one_way_noise_rate

    def reading(extra):
        # 5 classes: 20 samples predicted and given as each, one of every other given label in each row (an even
        # floor of 1), plus ``extra`` (predicted, given) pairs
        pairs = [(i, i) for i in range(5) for _ in range(20)] + [(i, j) for i in range(5) for j in range(5) if i != j]
        predicted, given = np.array(pairs + extra).T
        return one_way_noise_rate(np.eye(5)[predicted], given)

    # 29 more predicted 0 and given 1 (labels of class 0 flow to 1): row 0's cells [30, 1, 1, 1] keep the 2
    # smallest as the floor, mean 1, so cell (0, 1) has excess 29 and its reverse (1, 0) excess 0:
    # 29 > 3 sqrt(30 + 1) = 16.7 and 0 <= 0.1 x 29, so 29 wrong labels of 149 samples flow one way
    assert reading([(0, 1)] * 29) == pytest.approx(29 / 149)
    assert reading([]) == 0.0
    assert reading([(0, 1)] * 29 + [(1, 0)] * 29) == 0.0  # the same flow both ways: a confusion, not noise
    assert reading([(0, 1)] * 29 + [(1, 0)] * 4) == 0.0  # a reverse excess of 4 > 0.1 x 29: not one way
    assert reading([(0, 1)] * 29 + [(1, 0)] * 2) == pytest.approx((29 - 2) / 151)  # 2 <= 2.9: the net flow
    assert reading([(0, 1)] * 7) == 0.0  # 7 <= 3 sqrt(9): not told from counting noise


def test_noise_rate_estimate_takes_the_larger_of_fit_and_floor():
    from clearpeft.label_issues import noise_rate_estimate

    assert noise_rate_estimate(0.31, 0.25) == (0.31, "loss fit")  # a mode of wrong labels above the floor
    assert noise_rate_estimate(0.0, 0.45) == (0.45, "confusion floor")  # no mode: not 0, the floor
    assert noise_rate_estimate(0.2, 0.45) == (0.45, "confusion floor")
    assert noise_rate_estimate(None, 0.2) == (0.2, "confusion floor")  # no fit (no per-sample pass)
    assert noise_rate_estimate(0.3, None) == (0.3, "loss fit")  # a run that predates the floor
    assert noise_rate_estimate(None, None) == (None, None)
    # the confusion's reading is the floor plus its one-way flows; runs before the flows have the floor alone
    assert noise_rate_estimate(0.0, 0.15, 0.2) == (pytest.approx(0.35), "confusion floor + one-way flows")
    assert noise_rate_estimate(0.3, 0.15, 0.1) == (0.3, "loss fit")
    assert noise_rate_estimate(0.0, 0.15, 0.0) == (0.15, "confusion floor")
