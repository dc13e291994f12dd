"""Text metrics: corpus BLEU (sacrebleu), ROUGE-L (rouge-score), exact match and VQA-normalised match."""

from __future__ import annotations

import re
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


# The VQA challenge's answer normalisation (Antol et al. 2015; the official evaluation script,
# vqaEval.py): punctuation, articles, number words and a few apostrophe-less contractions.
_PUNCTUATION = re.compile(r"""[;/\[\]"{}()=+\\_\-><@`,?!]""")
_COMMA_IN_NUMBER = re.compile(r"(?<=\d),(?=\d)")  # 1,000 -> 1000
_PERIOD_NOT_DECIMAL = re.compile(r"(?<!\d)\.|\.(?!\d)")  # keeps 2.5, drops a sentence's full stop
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "didnt": "didn't", "isnt": "isn't", "arent": "aren't",
                 "wasnt": "wasn't", "werent": "weren't", "cant": "can't", "wont": "won't", "couldnt": "couldn't",
                 "shouldnt": "shouldn't", "wouldnt": "wouldn't", "hasnt": "hasn't", "havent": "haven't"}


def normalize_vqa(text: str) -> str:
    """The VQA normalisation of an answer: lower case, punctuation and articles dropped, number words
    zero..ten (and "none") as digits, apostrophe-less contractions restored, single spaces.

    "Two dogs." -> "2 dogs"; "The RED one!" -> "red 1"; "1,000" -> "1000"; "2.5" stays "2.5".
    """
    text = _COMMA_IN_NUMBER.sub("", text.lower().strip())
    text = _PERIOD_NOT_DECIMAL.sub("", _PUNCTUATION.sub(" ", text))
    words = [_CONTRACTIONS.get(w, _NUMBER_WORDS.get(w, w)) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)


def exact_match(prediction: str, reference: str) -> bool:
    """The answer is the reference, character for character but for surrounding white space."""
    return prediction.strip() == reference.strip()


def vqa_match(prediction: str, reference: str) -> bool:
    """The answer equals the reference after `normalize_vqa` of both."""
    return normalize_vqa(prediction) == normalize_vqa(reference)
