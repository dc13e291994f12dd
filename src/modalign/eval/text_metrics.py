"""Text overlap metrics from maintained packages: corpus BLEU (sacrebleu) and ROUGE-L (rouge-score)."""

from __future__ import annotations

from typing import Sequence


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU, 0-100 (Papineni et al. 2002) via sacrebleu; ragged reference lists are allowed."""
    import sacrebleu

    if len(predictions) != len(references):
        raise ValueError(f"bleu: {len(predictions)} predictions but {len(references)} reference lists")
    width = max((len(r) for r in references), default=0)
    # sacrebleu wants one stream per reference slot; a missing slot is None.
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
    return float(sacrebleu.corpus_bleu(list(predictions), streams).score)


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over predictions of the best ROUGE-L F1 against its references (Lin 2004), 0-1."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    best = [max((scorer.score(ref, pred)["rougeL"].fmeasure for ref in refs), default=0.0)
            for pred, refs in zip(predictions, references)]
    return sum(best) / max(1, len(best))
