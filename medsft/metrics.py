"""Evaluation metrics under one name for the eval scripts and the judge: ROUGE (`medsft.rouge`), reasoning steps
(`medsft.think_steps`) and the offline chain-of-thought scores (`medsft.cot`)."""
from __future__ import annotations

from .cot import (BASELINES, MATCHING, SCORE_KEYS, BigramIdf, Idf, Step, StepSet, bigrams, cot_scores, derangement,
                  format_stats, match_scores, one_to_one, repeated_steps, similarity, similarity_matrix,
                  text_similarity)
from .rouge import (DEFINITION, ROUGE_METRICS, ROUGE_STATS, ROUGE_VIEWS, THINK_TAGS, exclusive_scores, lcs_length,
                    pair_scores, rouge_scores, segment, versions)
from .think_steps import MIN_STEP_CHARS, content_chars, split_steps

__all__ = ["BASELINES", "MATCHING", "MIN_STEP_CHARS", "SCORE_KEYS", "BigramIdf", "Idf", "Step", "StepSet", "bigrams",
           "content_chars", "cot_scores", "derangement", "format_stats", "match_scores", "one_to_one",
           "repeated_steps", "similarity", "similarity_matrix", "split_steps", "text_similarity",
           "DEFINITION", "ROUGE_METRICS", "ROUGE_STATS", "ROUGE_VIEWS", "THINK_TAGS", "exclusive_scores", "lcs_length",
           "pair_scores", "rouge_scores", "segment", "versions"]
