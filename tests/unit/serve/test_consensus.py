"""Several readers per image: the consensus (a majority vote whose ties do not depend on the order of the reads)
and the agreement (Dice per structure, Cohen's kappa, per image, per annotator, per pair; the most disagreement)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from medloop.report.agreement import (agreement_markdown, cohen_kappa, image_agreement, structure_dice, summarize,
                                      write_agreement_report)
from medloop.serve.consensus import CONSENSUS_RULE, consensus, majority

LABELS = {"lung": 1, "heart": 2}


def test_majority_takes_the_most_frequent_value_and_the_smaller_on_a_tie():
    reads = np.array([[0, 1, 2, 1, 2],
                      [0, 1, 2, 2, 0],
                      [1, 0, 2, 2, 1]])
    assert majority(reads).tolist() == [0, 1, 2, 2, 0]  # last pixel: 0, 1, 2 once each -> 0
    assert majority(reads[:2]).tolist() == [0, 1, 2, 1, 0]  # two readers: a pixel they disagree on -> the smaller
    assert int(majority(np.array([1, 0]))) == 0 and int(majority(np.array([2, 1, 2]))) == 2


def test_consensus_does_not_depend_on_the_order_of_the_reads():
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 3, (8, 8)).astype(np.uint8) for _ in range(3)]
    classes = [1, 0, 1]
    first = consensus(masks, classes)
    for order in itertools.permutations(range(3)):
        mask, cls = consensus([masks[i] for i in order], [classes[i] for i in order])
        assert np.array_equal(mask, first[0]) and cls == first[1] == 1
    assert first[0].dtype == np.uint8
    two = consensus(masks[:2], [1, 0])
    assert two[1] == 0  # a class tie goes to the lower class index
    assert np.array_equal(two[0], np.where(masks[0] == masks[1], masks[0], np.minimum(masks[0], masks[1])))
    assert consensus(masks[:2], [None, None])[1] is None
    assert "tie" in CONSENSUS_RULE and "smaller" in CONSENSUS_RULE


def test_structure_dice_leaves_out_what_both_leave_empty():
    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    a[0, :4] = 1  # 4 pixels
    b[0, :2] = 1  # 2 of them
    assert structure_dice(a, b, LABELS) == {"lung": pytest.approx(2 * 2 / 6), "heart": None}


def test_cohen_kappa_on_cases_worked_by_hand():
    assert cohen_kappa([0, 1, 0, 1], [0, 1, 0, 1]) == 1.0
    assert cohen_kappa([0, 1, 0, 1], [1, 0, 1, 0]) == -1.0
    # observed 0.75; chance: 0.5 * 0.25 + 0.5 * 0.75 = 0.5 -> kappa 0.5
    assert cohen_kappa([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(0.5)
    assert cohen_kappa([1, 1], [1, 1]) is None  # chance agreement is certain: kappa is undefined
    assert cohen_kappa([], []) is None


def test_image_agreement_and_the_summary_per_annotator_pair_and_image():
    full, half, empty = (np.zeros((4, 4), np.uint8) for _ in range(3))
    full[:2] = 1  # 8 lung pixels
    half[0] = 1  # 4 of them
    same = image_agreement(["a", "b"], [full, full], [1, 1], LABELS)
    assert same["dice"] == {"lung": 1.0, "heart": None} and same["class_agreement"] == 1.0
    assert same["disagreement"] == 0.0
    differ = image_agreement(["a", "c"], [full, half], [1, 0], LABELS)
    assert differ["dice"]["lung"] == pytest.approx(8 / 12) and differ["class_agreement"] == 0.0
    assert differ["disagreement"] == pytest.approx(1 - (8 / 12 + 0) / 2)
    assert image_agreement(["a", "b"], [empty, empty], [None, None], LABELS)["disagreement"] == 0.0
    three = image_agreement(["a", "b", "c"], [full, full, half], [1, 1, 0], LABELS)
    assert len(three["pairs"]) == 3 and three["class_agreement"] == pytest.approx(1 / 3)

    def record(image, readers, classes, agreement, cls):
        return {"image": image, "class": cls, "info": {"agreement": agreement, "reads": [
            {"client_id": r, "class": c} for r, c in zip(readers, classes)]}}

    records = [record("img-1", ["a", "b"], [1, 1], same, 1), record("img-2", ["a", "c"], [1, 0], differ, 0),
               {"image": "img-3", "class": 0, "info": {"client_id": "a"}}]  # one read: not compared
    summary = summarize(records, ["normal", "nodule"])
    assert summary["images_read"] == 2 and summary["structures"] == ["lung", "heart"]
    who = {a["annotator"]: a for a in summary["annotators"]}
    assert set(who) == {"a", "b", "c"} and who["a"]["pairs"] == 2
    assert who["a"]["dice"]["lung"] == pytest.approx((1 + 8 / 12) / 2) and who["a"]["dice"]["heart"] is None
    assert who["a"]["same_class"] == 0.5 and who["b"]["kappa"] is None  # b agreed on one image: kappa undefined
    assert who["a"]["kappa"] == pytest.approx(cohen_kappa([1, 1], [1, 0]))
    assert [p["annotators"] for p in summary["pairs"]] == [["a", "b"], ["a", "c"]]
    assert [im["image"] for im in summary["most_disagreement"]] == ["img-2", "img-1"]
    assert summary["most_disagreement"][0]["classes"] == ["nodule", "normal"]
    text = agreement_markdown(summary, 2, CONSENSUS_RULE)
    assert "| a | 2 | 0.833 | – | 0.833 | 0.500 |" in text and text.index("img-2") < text.index("img-1 |")


def test_the_report_files(tmp_path):
    summary = write_agreement_report(tmp_path, [], ["normal", "nodule"], 2, CONSENSUS_RULE)
    assert summary["images_read"] == 0
    assert "No image has all its reads yet" in (tmp_path / "agreement.md").read_text()
    assert (tmp_path / "agreement.json").is_file()
