"""Attribution for reward models and policies (`modalign explain`, docs/explain.md).

Modality shares by ablation and integrated gradients over media features (`modality`), image
occlusion heatmaps and audio-time curves (`regions`), answer-token credit (`tokens`), all on a
`Target` (a reward model's score or a policy's answer log-probability) of a `Subject` (one
example with one answer).
"""

from modalign.eval.explain.example import METHODS, explain_example, load_target
from modalign.eval.explain.modality import ablation, integrated_gradients
from modalign.eval.explain.regions import audio_occlusion, image_occlusion
from modalign.eval.explain.target import ExplainError, Subject, Target, encode_subject
from modalign.eval.explain.tokens import token_credit

__all__ = ["METHODS", "ExplainError", "Subject", "Target", "ablation", "audio_occlusion", "encode_subject",
           "explain_example", "image_occlusion", "integrated_gradients", "load_target", "token_credit"]
