"""The main job's statistics: the bootstrap interval of the overall K-Score and GRPO's quarter-gain check."""
import eval_knowgen as ek


def row(i, cat, v=0.0, t=0.0, f=0.0, a=0.0, na=False):
    return {"id": f"x{i}", "category": cat, "visual_correctness": v, "text_accuracy": t, "faithfulness": f,
            "aesthetics": a, "text_accuracy_na": na}


def test_bootstrap_ci_brackets_overall_and_collapses_when_constant():
    same = [row(i, "art", v=1, t=1, f=1, a=1) for i in range(5)] + [row(9 + i, "anime", v=0.5) for i in range(4)]
    lo, hi = ek.bootstrap_ci(same, n_boot=200)
    assert lo == hi == ek.aggregate(same)["overall"]  # no spread within a group -> a point
    mixed = [row(i, "art", v=i % 2, t=i % 2) for i in range(40)] + [row(100 + i, "anime", v=(i % 3) / 2)
                                                                   for i in range(40)]
    lo, hi = ek.bootstrap_ci(mixed, n_boot=500)
    assert lo < ek.aggregate(mixed)["overall"] < hi
    assert hi - lo < 20  # 40 items per group: a few K points, not the whole range
    one_group = [r for r in mixed if r["category"] == "art"]
    assert ek.bootstrap_ci(one_group, n_boot=100)[0] < ek.aggregate(one_group)["overall"]


def test_quarter_gain():
    assert ek.quarter_gain([0.1] * 7) is None
    d, se = ek.quarter_gain([0.0, 0.1, 0.0, 0.1, 0.5, 0.5, 0.6, 0.5, 0.6, 0.6, 0.5, 0.6])
    assert abs(d - (0.5667 - 0.0333)) < 1e-3 and 0 < se < 0.05
