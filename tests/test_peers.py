"""bench/peers.py end to end on a tiny config against TRL (the one peer in the project's venv): the mask comparison,
the first-step loss and the memory/speed ratios come from real runs, so the harness cannot rot unnoticed.
LLaMA-Factory and ms-swift are not installed in CI; their runs are the benchmark's (docs/performance.md)."""

import json
import sys

import pytest

from conftest import run_script

TINY = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "vocab_size": 151936, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1000000,
        "tie_word_embeddings": True, "bos_token_id": 151643, "eos_token_id": 151645, "torch_dtype": "bfloat16"}


@pytest.fixture(scope="module")
def peers_run(tmp_path_factory, real_tokenizer_dir, sample_rows_path):
    pytest.importorskip("trl")
    tmp = tmp_path_factory.mktemp("peers")
    (tmp / "tiny").mkdir()
    (tmp / "tiny" / "config.json").write_text(json.dumps(TINY))
    out = tmp / "peers.json"
    proc = run_script("bench/peers.py", f"--model={tmp / 'tiny'}", f"--tokenizer={real_tokenizer_dir}",
                      f"--data={sample_rows_path}", "--peers=trl", f"--trl_python={sys.executable}",
                      "--mask_rows=3", "--max_length=128", "--steps=2", "--grad_accum=1", "--recipes=default",
                      f"--output={out}", timeout=300)
    return json.loads(out.read_text()), proc.stdout


def test_masks_compare_every_row_and_mode_with_a_verdict(peers_run):
    result, _ = peers_run
    for variant in ("trl:assistant_only_loss", "trl:prompt_completion"):
        cmp = result["masks"][variant]
        assert cmp["examples"] == 3 * 3  # 3 rows x think, /no_think, enable_thinking=False
        assert cmp["identical"] + sum(d["count"] for d in cmp["differences"]) == cmp["examples"]
        for d in cmp["differences"]:
            assert d["side_right"] != "unjudged", d  # every kind of difference has a rule and a reason
            assert len(d["rows"]) == d["count"] and d["mode"] in ("think", "no_think_soft", "no_think_hard")
    # TRL's prompt-completion path differs from ours by one token only: the '\n' after <|im_end|> it supervises
    kinds = {d["kind"] for d in result["masks"]["trl:prompt_completion"]["differences"]}
    assert kinds == {"supervised only by theirs: '\\n' (the sequence's last token)"}
    # its assistant_only_loss template supervises the empty think block that enable_thinking=False puts in the prompt
    hard = [d for d in result["masks"]["trl:assistant_only_loss"]["differences"] if d["mode"] == "no_think_hard"]
    assert hard and "'<think>\\n\\n</think>\\n\\n'" in hard[0]["kind"] and hard[0]["side_right"] == "ours"


def test_first_step_loss_equals_our_loss_on_the_same_batch(peers_run):
    result, _ = peers_run
    sides = result["loss"]["sides"]
    for side in ("ours", "trl"):
        assert sides[side]["error"] is None, sides[side]["output_tail"]
        assert sides[side]["first_step_loss"] > 0
        assert sides[side]["equal_to_our_loss_on_its_batch"] is True, sides[side]
    # TRL supervises one more token per row ('\n'), so its loss is a mean over more targets than ours
    assert sides["trl"]["supervised_tokens"] == sides["ours"]["supervised_tokens"] + result["loss"]["rows"]


def test_ratios_are_computed_from_the_measured_runs(peers_run):
    result, _ = peers_run
    ours, trl = result["speed"]["ours"]["default"], result["speed"]["trl"]["default"]
    for run in (ours, trl):
        assert "error" not in run, run.get("output_tail")
        assert run["steps"] == 2 and run["peak_gib"] > 0 and run["tokens_per_s"] > 0
        assert run["timed_tokens"] == sum(run["micro_tokens"][1:])  # tokens of the steps after the first
    ratio = result["ratios"]["trl"]["ours_default/their_default"]
    assert ratio["memory"] == round(ours["peak_gib"] / trl["peak_gib"], 3)
    assert ratio["tokens_per_s"] == round(ours["tokens_per_s"] / trl["tokens_per_s"], 3)
    assert result["device"] == "cpu" and result["architecture"].endswith("tiny")
