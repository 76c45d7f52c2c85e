"""The quality verdict (singan.metrics.verdict): a model's summary and the rule that calls it
suspect."""

from __future__ import annotations

import math

import pytest

from singan.metrics.verdict import MAX_SWD_RATIO, OK, SUSPECT, Summary, judge, summarize

# A working model's values (48-px fidelity runs: patch SWD ~2.7x the yardstick, diversity 0.3).
GOOD = dict(patch_swd=0.03, nn_patch_distance=0.11, diversity=0.33, reconstruction_rmse=0.02,
            blur_swd=0.011, min_sample_std=0.2, real_std=0.21)


def test_a_working_model_is_ok():
    verdict = judge(Summary(**GOOD))
    assert verdict.quality == OK and verdict.ok and verdict.reason is None


@pytest.mark.parametrize("change, reason", [
    (dict(patch_swd=math.nan), "not a number: patch_swd"),
    (dict(reconstruction_rmse=math.inf), "not a number: reconstruction_rmse"),
    (dict(min_sample_std=0.004), "a blank sample (pixel std 0.0040 < 0.01)"),
    (dict(diversity=0.01), "collapsed diversity (0.010 < 0.05"),
    (dict(patch_swd=0.0715), "runaway patch SWD (0.0715, 6.5x the blurred image's 0.0110"),
])
def test_each_failure_is_suspect_with_its_reason(change, reason):
    verdict = judge(Summary(**{**GOOD, **change}))
    assert verdict.quality == SUSPECT and not verdict.ok
    assert verdict.reason.startswith(reason)


def test_the_limits_are_where_the_rule_says():
    assert judge({**GOOD, "patch_swd": GOOD["blur_swd"] * MAX_SWD_RATIO * 0.99}).ok
    assert not judge({**GOOD, "patch_swd": GOOD["blur_swd"] * MAX_SWD_RATIO * 1.01}).ok
    # A blank image makes blank samples: that is faithful, not a failure.
    assert judge({**GOOD, "min_sample_std": 0.0, "real_std": 0.0, "blur_swd": 0.0,
                  "patch_swd": 0.0}).ok
    # Stored metrics judge the same way, and a rule whose values are missing is left out.
    assert judge(Summary(**GOOD).metrics()) == judge(Summary(**GOOD))
    assert judge({"diversity": 0.3}).ok and not judge({"diversity": 0.0}).ok


def test_summary_of_a_trained_model(tiny_model):
    summary = summarize(tiny_model, num=4, seed=0)
    values = summary.metrics()
    assert all(math.isfinite(v) for v in values.values())
    assert 0 < summary.blur_swd < summary.patch_swd  # 20 iterations: far from the image
    assert 0 < summary.diversity < 2 and summary.min_sample_std > 0.01
    assert summary.real_std == pytest.approx(float((tiny_model.reals[-1] / 2).std()))
    assert summarize(tiny_model, num=4, seed=0) == summary  # seeded
    assert values["swd_ratio"] == pytest.approx(summary.patch_swd / summary.blur_swd)


def test_blank_and_identical_samples_are_caught(tiny_model, monkeypatch):
    import singan.metrics.verdict as verdict

    real_sample = verdict.sample

    def blank(model, num, generator=None):
        return real_sample(model, num, generator=generator) * 0 - 1  # black

    monkeypatch.setattr(verdict, "sample", blank)
    assert judge(summarize(tiny_model, num=3)).reason.startswith("a blank sample")

    def identical(model, num, generator=None):
        return real_sample(model, 1, generator=generator).expand(num, -1, -1, -1)

    monkeypatch.setattr(verdict, "sample", identical)
    assert judge(summarize(tiny_model, num=3)).reason.startswith("collapsed diversity (0.000")
