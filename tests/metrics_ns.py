"""The names tests read as ``metrics.X``: ROUGE, reasoning steps, chain-of-thought scores and their oracles."""
from medsft.chat import THINK_TAGS  # noqa: F401
from medsft.cot import (BASELINES, MATCHING, SCORE_KEYS, BigramIdf, StepSet, cot_scores, derangement,  # noqa: F401
                        format_stats, match_scores, one_to_one, repeated_steps, similarity_matrix)
from medsft.rouge import (DEFINITION, ROUGE_METRICS, ROUGE_STATS, ROUGE_VIEWS, exclusive_scores,  # noqa: F401
                          lcs_length, pair_scores, rouge_scores, segment, versions)
from medsft.think_steps import MIN_STEP_CHARS, content_chars, split_steps  # noqa: F401
from oracles import Idf, Step, bigrams, similarity, text_similarity  # noqa: F401
