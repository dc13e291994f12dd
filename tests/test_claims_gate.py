"""Weighing kinds of claims by the judge's self-agreement (`gate=agreement`, issue 19)."""

from __future__ import annotations

import pytest

from modalign.config import ConfigError
from modalign.feedback.judges.claims import ClaimJudge, ClaimJudgeSpec, ClaimResult, claim_score, kind_weights
from modalign.feedback.judges.splitters import Claim, shapes_claims, shapes_count_claims
from modalign.models.inputs import MediaStore

from test_claims_forms import put, shapes  # noqa: F401  (the module's fixture: a tiny ShapesWorld and policy)


def result(kind: str, probabilities: tuple[float, ...], expected: int = 0) -> ClaimResult:
    """A judged claim of `kind` whose options have `probabilities` (the expected option is option `expected`)."""
    options = tuple(f"o{i}" for i in range(len(probabilities)))
    claim = Claim(f"a {kind} claim", f"{kind}?", options, options[expected], kind=kind)
    best = max(range(len(options)), key=lambda i: probabilities[i])
    return ClaimResult(claim, options[best], probabilities[expected], sum(p * p for p in probabilities))


def test_kind_weights_by_hand():
    weights = kind_weights([
        result("sure", (1.0, 0.0, 0.0, 0.0)),  # agreement 1: weight 1
        result("guessing", (0.5, 0.5)), result("guessing", (0.5, 0.5)),  # agreement 0.5 = chance 1/2: weight 0
        # agreements 0.68 and 0.82, mean 0.75; chance 1/2: (0.75 - 0.5) / 0.5 = 0.5
        result("mixed", (0.8, 0.2)), result("mixed", (0.1, 0.9)),
        result("near chance", (0.4, 0.3, 0.3)),  # 0.34 - 1/3 > 0: (0.34 - 1/3) / (2/3) = 0.01
    ])
    assert weights == pytest.approx({"sure": 1.0, "guessing": 0.0, "mixed": 0.5, "near chance": 0.01})


def test_claim_score_weighs_each_kinds_terms():
    sure, mixed = result("sure", (1.0, 0.0)), result("mixed", (0.2, 0.8))  # mixed: refuted, p = 0.2
    weights = {"mixed": 0.5}  # "sure" is not in it: weight 1
    # soft: 1 * (1 - 2 * 0) + 0.5 * (0.2 - 2 * 0.8) = 1 - 0.7 = 0.3
    assert claim_score([sure, mixed], 1.0, 2.0, "soft", weights) == pytest.approx(0.3)
    # hard: 1 * 1 + 0.5 * (-2) = 0
    assert claim_score([sure, mixed], 1.0, 2.0, "hard", weights) == pytest.approx(0.0)
    assert claim_score([sure, mixed], 1.0, 2.0, "soft") == pytest.approx(1 - 1.4)  # no weights: unchanged


def test_the_shapes_splitters_name_each_claims_kind():
    claims = shapes_count_claims(None, "a small red circle on the left, a blue square. two low beeps.")
    assert [c.kind for c in claims] == ["shape_at", "colour_at", "size", "exists", "beeps", "pitch", "count"]
    free = Claim("there is a dog")
    assert free.kind_name == free.text and Claim("x", "is it red?").kind_name == "is it red?"


def test_gate_agreement_scores_with_the_rounds_kind_weights(shapes):
    root, example, policy = shapes
    answer = "a red circle on the left."
    on_left, colour_left = shapes_claims(example, answer)
    judge = ClaimJudge(policy, MediaStore(root), "shapes", "j", score="soft", gate="agreement")
    put(judge, example, on_left, {"circle": 0.7, "nothing": 0.2})  # square, triangle: 0.05 each
    put(judge, example, colour_left, {"red": 0.3, "blue": 0.4})  # green, yellow: 0.15 each
    (verification,) = judge.verify([example], [answer])
    # shape_at: agreement 0.49 + 0.04 + 2 * 0.0025 = 0.535, chance 1/4: (0.535 - 0.25) / 0.75 = 0.38
    # colour_at: 0.09 + 0.16 + 2 * 0.0225 = 0.295, chance 1/4: (0.295 - 0.25) / 0.75 = 0.06
    assert judge.kind_weights == pytest.approx({"shape_at": 0.38, "colour_at": 0.06})
    # soft terms 0.7 - 2 * 0.3 = 0.1 and 0.3 - 2 * 0.7 = -1.1: 0.38 * 0.1 + 0.06 * -1.1 = -0.028 (ungated: -1.0)
    assert verification.score == pytest.approx(-0.028, abs=1e-6)  # float32 probabilities
    assert judge.provenance([verification])["kind_weights"] == judge.kind_weights
    ungated = ClaimJudge(policy, MediaStore(root), "shapes", "j", score="soft", cache=judge.cache)
    assert ungated.verify([example], [answer])[0].score == pytest.approx(-1.0, abs=1e-6)
    assert "kind_weights" not in ungated.provenance([verification])


def test_the_gate_option_is_parsed_and_checked():
    assert ClaimJudgeSpec.parse("claims:self?gate=agreement").gate == "agreement"
    assert ClaimJudgeSpec.parse("claims:self").gate == "none"
    with pytest.raises(ConfigError, match="gate='always': one of none, agreement"):
        ClaimJudgeSpec.parse("claims:self?gate=always")
