"""Config help of the model-judge settings, one text for each setting that several recipes take.

`LoopConfig` (`modalign loop`) and `IterativeDPOConfig` (`modalign iterative-dpo`) describe
`judge_template`, `judge_disagreement` and `judge_ranking` with these strings, so their
`--help-config` say the same thing and a change is made once.
"""

from __future__ import annotations

JUDGE_TEMPLATE_HELP = "model judge: a prompt template file replacing the default one (docs/ai-feedback.md)."
JUDGE_DISAGREEMENT_HELP = "model judge: a pair whose two orders disagree is a tie or dropped (tie|drop)."
# without its "model judge: " start: the loop says when it applies (selection=all)
JUDGE_RANKING_HELP = "rankings from pairwise judgments in both orders or from per-answer ratings (pairwise|rating)."
