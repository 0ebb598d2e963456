"""GRPO: reinforce the fine-tuned model with verifiable medical rewards (multiple-choice letters), switches kept.

Reads   MODEL (default output/full, train.py's; a LoRA adapter dir continues that adapter), DATASET (multiple-choice
        rows: JSONL / CSV / parquet, a folder of CMMLU-layout CSVs, or a ModelScope id), and the evaluation sets
        EVAL_DATA / EVAL_BENCHMARKS, whose items are dropped from DATASET so RL never trains on what is measured.
Writes  OUTPUT_DIR/ (model or adapter, tokenizer, checkpoint-N/, trainer_state.json last, train_config.json,
        run_fingerprint.json); RESULTS_DIR/train_grpo.json (per step: each reward's mean and std, KL, completion
        length, clipped share; the held-out reward and adherence before and after), grpo_heldout.jsonl (those
        completions), rewards.png, completion_length.png.

    python train_grpo.py --dataset=mcq/train.jsonl                     # output/full on a GPU
    python train_grpo.py --model=tiny --dataset=demo/grpo_mcq.jsonl --max_steps=2 --max_completion_length=16
    python train_grpo.py --dataset=... --resume=true                   # continue after Ctrl-C or kill -9
    python train_grpo.py --dataset=... --dry_run=true                  # counts and memory estimate, nothing loaded
    torchrun --nproc_per_node=2 train_grpo.py --dataset=...            # several GPUs: rank 0 alone writes

Each completion is scored by four small pure functions below (weights: the *_WEIGHT constants), each logged on its
own as rewards/<name>/mean and /std: ``correct`` (the letter benchmark.py's strict reader reads after the think
equals the gold one), ``shape`` (the shape the prompt's mode asks for), ``repetition`` (a penalty on repeated token
n-grams) and ``overlong`` (DAPO's soft penalty near MAX_COMPLETION_LENGTH; -1 when cut off). NO_THINK_RATIO of the
prompts are rendered in Qwen3's soft and hard no-think forms, per row, so the thinking switches keep working.
HELDOUT rows (never trained on) are answered in all three modes by the model before and after training: the
correctness reward and the shape adherence per mode land in train_grpo.json and its report. docs/grpo.md explains
the rewards, the defaults per model size, the metrics to watch and several GPUs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from medsft import charts, chat, mcq, memory
from medsft.adapters import lora_base
from medsft.config import Config, configure
from medsft.files import MedsftError, disk_errors, write_json, write_jsonl
from medsft.generate import check_decoding, eos_ids
from medsft.models import hub_revision, load_model, load_tokenizer, pin_revision, resolve_model
from medsft.training import callbacks, distributed, features, grpo, run, sft, tracking

MODEL = "output/full"  # model spec: the SFT model (train.py's), a LoRA adapter dir (that adapter trains on), a ModelScope id, local dir or "tiny"
MODEL_REVISION = ""  # ModelScope revision of MODEL (of a LoRA adapter's base) when a hub id: a tag, branch or commit; "" = the hub's current (recorded)
DATASET = ""  # multiple-choice rows in any published layout (MedQA's train.jsonl, CMB, CMExam, CMMLU): a .jsonl/.json/.csv/.parquet file, a folder of CMMLU-layout <subject>.csv, or a ModelScope id (split train)
DATASET_REVISION = ""  # ModelScope dataset version when DATASET is a hub id; "" = the hub's current
EVAL_DATA = "data/test.jsonl"  # questions measured by inference/evaluate (data.py's test split): dropped from DATASET; "" = none
EVAL_BENCHMARKS = "cmmlu,medqa_mcmle,cmb,cmexam"  # benchmark.py's --benchmarks: every item of them is dropped from DATASET (any option order); "" = none checked (printed)
SUBJECTS = "anatomy,clinical_knowledge,college_medicine,genetics,nutrition,traditional_chinese_medicine,virology"  # benchmark.py's
HELDOUT = 64  # questions held out (chosen by SEED, each with all its rows: never on both sides) to measure the reward before and after
OUTPUT_DIR = "output/grpo"  # trained model (or adapter), tokenizer, checkpoints, trainer_state.json, train_config.json
RESULTS_DIR = "results"  # train_grpo.json
ADAPTER = "none"  # none: train all parameters | lora: a new LoRA adapter on MODEL (the reference is the adapter switched off: no copy)
LORA_R = 16  # rank of the new adapter when ADAPTER=lora, on every linear layer (an adapter MODEL keeps its own rank)
LORA_ALPHA = 32  # its alpha (updates scaled by alpha / r)
NUM_GENERATIONS = 8  # completions per prompt (the group whose rewards are compared); TRL's default; 4-option items need a few to differ
MAX_COMPLETION_LENGTH = 1536  # think + answer tokens at most; SFT rows average ~940, TRL's 512 would cut most thinks (they score 0)
BATCH_SIZE = 2  # completions per micro-batch (2 x 1536 x 151,936 logits dominate the backward pass)
GRAD_ACCUM = 16  # micro-batches per optimizer step: 32 completions = 4 prompts x 8, generated as one batch
NUM_ITERATIONS = 1  # gradient steps per generated batch (TRL's mu); > 1 reuses each batch under PPO clipping
MAX_STEPS = 500  # optimizer steps (4 prompts each with the defaults: 2,000 prompts)
LEARNING_RATE = 1e-6  # full-parameter RL moves 1.7B weights on a noisy signal: TRL's default; ~1e-5 with ADAPTER=lora
BETA = 0.04  # KL penalty to the SFT model (a reference copy when > 0): keeps format and switches from drifting; TRL's default 0 has none
LOSS_TYPE = "dapo"  # token-normalised over the batch (no length bias); "grpo" averages per sequence and favours short correct thinks
SCALE_REWARDS = "group"  # advantage scaling: group (std within a prompt's group) | batch | none (Dr. GRPO)
TEMPERATURE = None  # sampling temperature; None = the model's generation_config (Qwen3: 0.6), not TRL's 1.0
TOP_P = None  # None = the model's generation_config (Qwen3: 0.95), not TRL's 1.0
TOP_K = None  # None = the model's generation_config (Qwen3: 20), not TRL's 0 (off)
NO_THINK_RATIO = 0.25  # share of prompts in the no-think forms (half enable_thinking=False, half /no_think), chosen by SEED per row
CORRECT_WEIGHT = 1.0  # weight of the correctness reward (1 = right letter, 0 otherwise)
SHAPE_WEIGHT = 0.2  # weight of the shape reward (1 = the shape the mode asks for): small, the answer matters most
REPETITION_WEIGHT = 0.5  # weight of the repetition penalty (0 to -1); 0 = off
OVERLONG_WEIGHT = 0.5  # weight of the overlong penalty (0 to -1); 0 = off
CORRECT_NEEDS_SHAPE = True  # a right letter counts only in the mode's shape: otherwise dropping the think would pay (think collapse)
REPETITION_NGRAM = 8  # tokens per n-gram for the repetition penalty (token ids: works on Chinese, which has no spaces)
REPETITION_FREE = 0.1  # share of repeated n-grams tolerated before any penalty (ordinary text repeats a few)
OVERLONG_BUFFER = 256  # the last tokens before MAX_COMPLETION_LENGTH where the penalty ramps from 0 to -1 (DAPO)
SAVE_STEPS = 25  # checkpoint every N steps: a kill -9 loses at most this many
LOGGING_STEPS = 1  # log every reward, KL and lengths every N steps
SAVE_TOTAL_LIMIT = 2  # checkpoints kept (the newest ones)
SEED = 42  # seed of the held-out choice, the modes, the data order and sampling
EVAL_BATCH_SIZE = 16  # held-out prompts generated at once, before and after training
PRECISION = "auto"  # auto | bf16 | fp32 (as train.py); auto = bf16 on a bf16 GPU, fp32 on CPU
OPTIM = "auto"  # auto = train.py's choice (full bf16: torchao 8-bit AdamW with stochastic rounding) | any Trainer optim
GRADIENT_CHECKPOINTING = True  # recompute activations in the backward pass (GPU only; CPU runs without)
USE_VLLM = False  # generate with vLLM (colocate, GPU only) instead of transformers' generate
VLLM_GPU_MEMORY_UTILIZATION = 0.3  # share of the GPU vLLM may take for weights and KV cache when USE_VLLM
SWANLAB_PROJECT = "qwen3-grpo-medical"  # SwanLab project; SWANLAB_MODE=disabled|local|offline|cloud picks where it logs
RUN_NAME = "qwen3-1.7b-grpo"  # SwanLab experiment name
SWANLAB_LOG_DIR = "swanlog"  # local SwanLab logs (local/offline modes)
RESUME = False  # continue from the newest whole checkpoint in OUTPUT_DIR (unreadable ones are moved aside)
OVERWRITE = False  # start over in an OUTPUT_DIR that holds a run (deletes its checkpoints and final model)
ALLOW_CPU = False  # train a model over 100M parameters on the CPU anyway (days)
DRY_RUN = False  # print the rows' counts and the memory estimate (training and generation), then exit


# --- rewards: pure functions of one completion ------------------------------------------------------------------
def correct_reward(output: str, gold: str, mode: str = "think", finished: bool = True,
                   needs_shape: bool = True, n_options: int = 4, prompt: str = "") -> float:
    """1.0 when benchmark.py's reader (``mcq.extract``: after the think, only letters the answer commits to with
    nothing after naming another option) reads exactly ``gold``, else 0.0. ``needs_shape``: only in the shape
    ``mode`` asks for (``shape_reward``), and only a finished completion (a cut-off one may have been about to
    change its mind)."""
    if not finished or (needs_shape and not shape_reward(output, mode, finished, prompt)):
        return 0.0
    return 1.0 if mcq.extract(output, n_options, len(gold) > 1)[0] == gold else 0.0


def shape_reward(output: str, mode: str, finished: bool = True, prompt: str = "") -> float:
    """1.0 when the completion has the shape ``mode`` asks for (``chat.obeying_shapes``: think mode a closed think of
    at least chat.MIN_THINK_CHARS letters, then a non-empty answer; the no-think modes an empty think block or none,
    then an answer). A think that only copies ``prompt`` (the question, its options) is none."""
    if chat.output_shape(output, finished) not in chat.obeying_shapes(mode):
        return 0.0
    think = mcq.squash(chat.split_output(output)[0])
    return 0.0 if think and think in mcq.squash(prompt) else 1.0


def repetition_penalty(ids, n: int = REPETITION_NGRAM, free: float = REPETITION_FREE) -> float:
    """0 to -1: minus the share of token n-grams that already occurred earlier in the completion, beyond ``free``
    (rescaled so that all-repeated is -1). Token ids, not words: Chinese text has no spaces to split on."""
    ids = list(ids)
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    if not grams:
        return 0.0
    repeated = len(grams) - len(set(grams))
    share = repeated / len(grams)
    return -max(0.0, share - free) / (1.0 - free) if free < 1 else 0.0


def reward_functions(eos_ids, cfg: dict) -> list:
    """The four rewards in TRL's signature ``f(prompts, completions, completion_ids, **columns) -> [float]`` (TRL
    passes every dataset column: ``gold``, ``mode`` and ``n_options`` here); each function's name is its logged name."""
    stop = set(eos_ids)

    def ended(ids):
        return bool(ids) and ids[-1] in stop

    # the prompts are text (prompt_rows), so TRL hands each completion back as its decoded text
    def correct(prompts, completions, completion_ids, gold, mode, n_options, **_):
        return [correct_reward(c, g, m, ended(i), cfg["CORRECT_NEEDS_SHAPE"], n, p)
                for p, c, i, g, m, n in zip(prompts, completions, completion_ids, gold, mode, n_options)]

    def shape(prompts, completions, completion_ids, mode, **_):
        return [shape_reward(c, m, ended(i), p) for p, c, i, m in zip(prompts, completions, completion_ids, mode)]

    def repetition(prompts, completions, completion_ids, **_):
        return [repetition_penalty(i, cfg["REPETITION_NGRAM"], cfg["REPETITION_FREE"]) for i in completion_ids]

    from trl.rewards import get_soft_overlong_punishment  # TRL: main() checked it is installed

    soft_overlong = get_soft_overlong_punishment(cfg["MAX_COMPLETION_LENGTH"], cfg["OVERLONG_BUFFER"])

    def overlong(prompts, completions, completion_ids, **_):  # TRL's DAPO penalty: a completion with no eos is at the cap
        return soft_overlong(completion_ids)

    return [correct, shape, repetition, overlong]


# constants that change nothing trained: the rows they select are hashed as prompted, the rest is measurement
_NOT_TRAINED = ("DATASET", "EVAL_DATA", "EVAL_BENCHMARKS", "SUBJECTS", "EVAL_BATCH_SIZE", "VLLM_GPU_MEMORY_UTILIZATION")


def fingerprint(cfg, prompts: list[dict], heldout: list[dict], model_dir: Path) -> dict:
    """What makes two runs one run (``run.fingerprint``): the rows as prompted, the held-out rows, the tokenizer,
    the weights it starts from (a resume on retrained weights would reload another KL reference), the settings."""
    digest = lambda obj: hashlib.sha256(json.dumps(obj, ensure_ascii=False).encode()).hexdigest()  # noqa: E731
    base = resolve_model(lora_base(str(cfg["MODEL"]))) if is_adapter(cfg["MODEL"]) else model_dir
    weights = run.weights_sha256(base, *([Path(str(cfg["MODEL"]))] if is_adapter(cfg["MODEL"]) else []))
    return run.fingerprint(cfg, {"data_sha256": digest(prompts), "heldout_sha256": digest([r["id"] for r in heldout]),
                                 "tokenizer_sha256": run.tokenizer_sha256(model_dir), "weights_sha256": weights},
                           not_trained=_NOT_TRAINED)


def adapter_settings(cfg) -> dict:
    """LORA_R / LORA_ALPHA of the adapter this run trains (the memory estimate's): an adapter MODEL's own, else the
    constants, checked when ADAPTER=lora; ``{}`` for a full-parameter run."""
    if is_adapter(cfg["MODEL"]):
        path = Path(str(cfg["MODEL"])) / "adapter_config.json"
        try:
            adapter = json.loads(path.read_text(encoding="utf-8"))
            return {"LORA_R": int(adapter["r"]), "LORA_ALPHA": float(adapter["lora_alpha"])}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MedsftError(f"{path}: not a LoRA adapter's config ({type(e).__name__}: {e}); point --model at "
                              "the folder train_lora.py wrote") from None
    if cfg["ADAPTER"] not in ("none", "lora"):
        raise MedsftError(f"--adapter={cfg['ADAPTER']}: expected none or lora")
    if cfg["ADAPTER"] == "lora" and (cfg["LORA_R"] < 1 or cfg["LORA_ALPHA"] <= 0):
        raise MedsftError(f"--lora_r={cfg['LORA_R']} --lora_alpha={cfg['LORA_ALPHA']}: the rank must be at least 1 "
                          "and alpha positive")
    return {}


def grpo_config(cfg, sampling: dict, lora: bool, cpu: bool):
    """TRL's GRPOConfig from the constants. Dropout off in the policy and the reference (LoRA's dropout would make the
    KL term noisy from step 1: two forward passes of the same weights would differ)."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(cfg["OUTPUT_DIR"]), max_steps=cfg["MAX_STEPS"], per_device_train_batch_size=cfg["BATCH_SIZE"],
        gradient_accumulation_steps=cfg["GRAD_ACCUM"], learning_rate=cfg["LEARNING_RATE"],
        num_generations=cfg["NUM_GENERATIONS"], num_iterations=cfg["NUM_ITERATIONS"],
        max_completion_length=cfg["MAX_COMPLETION_LENGTH"], beta=cfg["BETA"], loss_type=cfg["LOSS_TYPE"],
        scale_rewards=cfg["SCALE_REWARDS"], disable_dropout=True,
        reward_weights=[cfg["CORRECT_WEIGHT"], cfg["SHAPE_WEIGHT"], cfg["REPETITION_WEIGHT"], cfg["OVERLONG_WEIGHT"]],
        **sampling, optim=cfg["OPTIM"], optim_args="bf16_stochastic_round=True" if cfg["OPTIM"] in
        features.TORCHAO_OPTIMS and cfg["PRECISION"] == "bf16" and not lora else None,
        logging_steps=cfg["LOGGING_STEPS"], save_steps=cfg["SAVE_STEPS"], save_total_limit=cfg["SAVE_TOTAL_LIMIT"],
        seed=cfg["SEED"], data_seed=cfg["SEED"], bf16=cfg["PRECISION"] in ("bf16", "bf16-mixed"), use_cpu=cpu,
        gradient_checkpointing=cfg["GRADIENT_CHECKPOINTING"] and not cpu, use_vllm=cfg["USE_VLLM"],
        vllm_mode="colocate", vllm_gpu_memory_utilization=cfg["VLLM_GPU_MEMORY_UTILIZATION"], report_to="none",
        disable_tqdm=True, run_name=cfg["RUN_NAME"], dataloader_num_workers=0)


def is_adapter(model) -> bool:
    return (Path(str(model)) / "adapter_config.json").is_file()


def main():
    tracking.guard_output()  # a dead reader of stdout (`| tee` killed by Ctrl-C) must not stop the run
    cfg = Config(configure(globals()))  # the constants, resolved once; the launch and the features are added below
    sft.check_versions()  # TRL installed, and no library below requirements.txt's floor

    # 1. Checks before any weights: the rows (bad ones reported with file:line and counted), the evaluation
    #    questions dropped, the held-out rows set aside. Under torchrun every process joins one run here
    distributed.join()
    if not DATASET:
        raise MedsftError("--dataset is required: a multiple-choice file (JSONL/CSV/parquet), a folder of CMMLU-"
                          "layout CSVs, or a ModelScope id")
    world = distributed.world_size()
    if NUM_GENERATIONS < 2 or (BATCH_SIZE * GRAD_ACCUM * world) % NUM_GENERATIONS:
        raise MedsftError(f"--batch_size x --grad_accum x processes ({BATCH_SIZE * GRAD_ACCUM * world}) must be a "
                          f"multiple of --num_generations ({NUM_GENERATIONS}), which must be at least 2")
    check_decoding(MAX_COMPLETION_LENGTH, True, TEMPERATURE, TOP_P, TOP_K, length_option="max_completion_length",
                   greedy_option=None)
    lora = is_adapter(MODEL) or ADAPTER == "lora"
    cfg = cfg.replace(**adapter_settings(cfg), ENGINE="ddp" if world > 1 else "single", WORLD_SIZE=world)

    def usable_rows():  # rank 0 alone downloads and reads; the others get its rows
        rows, bad = grpo.read_rows(DATASET, DATASET_REVISION)
        keys, eval_sources = grpo.eval_keys(EVAL_DATA, EVAL_BENCHMARKS, SUBJECTS)
        if not EVAL_BENCHMARKS:
            print("note: --eval_benchmarks is empty: items of benchmark.py's benchmarks are not checked for overlap")
        kept = [r for r in rows if not mcq.overlaps(r["question"], r["choices"], keys)]  # in any option order
        return kept, len(rows) - len(kept), bad, eval_sources

    rows, n_overlap, bad, eval_sources = distributed.on_main(usable_rows)
    train_rows, heldout = grpo.split_heldout(rows, HELDOUT, SEED)
    stats = {"rows_read": len(rows) + n_overlap + len(bad), "rows_bad": len(bad), "bad": bad[:100],
             "dropped_eval_overlap": n_overlap, "eval_sources": eval_sources, "heldout": len(heldout),
             "train": len(train_rows)}
    print(f"{DATASET}: {stats['rows_read']} rows, {len(bad)} bad, {n_overlap} in the evaluation sets (dropped), "
          f"{len(heldout)} held out, {len(train_rows)} to train on")
    if not train_rows:
        raise MedsftError("no rows left to train on (see the counts above)")

    # 2. Features resolved once, the memory estimate (--dry_run prints it and exits), then the run harness (rank 0):
    #    a finished identical run is a no-op; a lock; resume from the newest whole checkpoint (unreadable ones moved
    #    aside, never deleted); the fingerprint recorded
    cfg = cfg.replace(**distributed.on_main(features.resolve_features, cfg, lora, True, DRY_RUN), resolved=True)
    base = lora_base(str(MODEL)) if is_adapter(MODEL) else str(MODEL)
    pin_revision(base, MODEL_REVISION)  # every download below (and the KL reference) is that revision
    model_dir = resolve_model(str(MODEL), config_only=DRY_RUN)
    # a dry run has config.json only: the prompts' length from the model's tokenizer when it is here, else 384
    # tokens (CMMLU's medical prompts reach 332 of Qwen3's tokenizer)
    tokenizer = None if DRY_RUN and not (model_dir / "tokenizer_config.json").is_file() else \
        load_tokenizer(str(model_dir) if DRY_RUN else MODEL)
    prompts = grpo.prompt_rows(tokenizer, train_rows, NO_THINK_RATIO, SEED) if tokenizer else []
    longest = max(len(tokenizer(p["prompt"])["input_ids"]) for p in prompts) if tokenizer else 384
    est = memory.grpo_estimate(cfg, model_dir, lora=lora, beta=BETA, num_generations=NUM_GENERATIONS,
                               prompt_tokens=longest, max_completion_length=MAX_COMPLETION_LENGTH, use_vllm=USE_VLLM,
                               vllm_gpu_memory_utilization=VLLM_GPU_MEMORY_UTILIZATION)
    if DRY_RUN:
        print(memory.estimate_line(est))
        print(f"dry run: {len(train_rows)} rows to train on, {BATCH_SIZE * GRAD_ACCUM * world // NUM_GENERATIONS} "
              f"prompts x {NUM_GENERATIONS} completions per optimizer step; nothing loaded or written")
        distributed.stop_process_group()
        raise SystemExit(0)
    fp = distributed.on_main(fingerprint, cfg, prompts, heldout, model_dir)
    resume_from = run.start(cfg, "grpo", fingerprint=fp, estimate=est, lora=lora)

    # 3. The model (a LoRA adapter dir: that adapter, trainable; ADAPTER=lora: a new one) and its held-out scores
    #    before training (recomputed on resume: MODEL is unchanged, the sampling seeded)
    dtype = memory.weight_dtype(cfg["PRECISION"], lora)
    peft_config = None
    if is_adapter(MODEL):
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_model(base, dtype=dtype), str(MODEL), is_trainable=True)
    else:
        model = load_model(MODEL, dtype=dtype, attn_implementation=cfg["ATTN_IMPLEMENTATION"])
        if ADAPTER == "lora":
            from peft import LoraConfig

            peft_config = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.05, target_modules="all-linear",
                                     task_type="CAUSAL_LM")
    sampling = grpo.generation_settings(model, cfg)
    correct = lambda out, gold, mode, done, n: correct_reward(out, gold, mode, done, CORRECT_NEEDS_SHAPE, n)  # noqa: E731
    before, before_rows = distributed.on_main(grpo.heldout_scores, model, tokenizer, heldout, cfg, sampling, "before",
                                              correct)
    if before:
        print(f"held-out before: correct {before['correct']:.3f}, adherence "
              + ", ".join(f"{chat.SHORT[m]}={before['by_mode'][m]['adherence']:.2f}" for m in chat.MODES))

    # 4. GRPO: four rewards with their weights, sampling as the model's generation_config says, checkpoints every
    #    SAVE_STEPS; Ctrl-C / SIGTERM saves one and exits 130 (--resume=true continues; kill -9 loses < SAVE_STEPS)
    from datasets import Dataset
    from trl import GRPOTrainer

    args = grpo_config(cfg, sampling, lora, cpu=not torch.cuda.is_available())
    trainer = GRPOTrainer(model=model, reward_funcs=reward_functions(eos_ids(model, tokenizer), cfg), args=args,
                          train_dataset=Dataset.from_list(prompts), processing_class=tokenizer,
                          peft_config=peft_config, callbacks=callbacks.make(cfg, "grpo", resume_from))
    sft.sort_lora_targets(trainer.model)
    distributed.check_launch(trainer.args)
    summary = run.train(trainer, resume_from, cfg, lora=lora, grpo=True)

    # 5. Held-out scores after, results and charts (rank 0), the model (trainer_state.json last marks it finished)
    after, after_rows = distributed.on_main(grpo.heldout_scores, trainer.model, tokenizer, heldout, cfg, sampling,
                                            "after", correct)
    names = [f.__name__ for f in trainer.reward_funcs]
    peak, peak_of = memory.peak_memory()
    results = {"model": str(MODEL), "model_revision": hub_revision(base), "dataset": str(DATASET), "data": stats,
               "sampling": sampling, "rewards": names, "reward_weights": list(args.reward_weights),
               **{k: v for k, v in summary.items() if k != "resumed_from"},
               "peak_memory_gib": round(peak, 3), "peak_memory_of": peak_of,
               "heldout": {"before": before, "after": after,
                           "change": grpo.heldout_change(before_rows, after_rows) if heldout else None},
               "steps": grpo.step_history(trainer.state.log_history, names)}

    def write_results():
        res = Path(RESULTS_DIR)
        with disk_errors(res, "train_grpo.json", "results_dir"):
            written = [write_json(res / "train_grpo.json", results)]
            if heldout:
                written.append(write_jsonl(res / "grpo_heldout.jsonl", before_rows + after_rows))
            return written + charts.write_grpo_charts(res, results)

    written = distributed.on_main(write_results)
    written += run.save_final(trainer, tokenizer, cfg, base_model=base)
    if after:
        ch = results["heldout"]["change"]
        print(f"held-out after: correct {after['correct']:.3f} {ch['after_ci95']} (before {before['correct']:.3f} "
              f"{ch['before_ci95']}; {ch['better']} answers better, {ch['worse']} worse, McNemar p={ch['p']:.3g}), "
              "adherence " + ", ".join(f"{chat.SHORT[m]}={after['by_mode'][m]['adherence']:.2f}" for m in chat.MODES))
    run.finish(trainer, written)


if __name__ == "__main__":
    main()
