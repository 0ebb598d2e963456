"""Full-parameter SFT of Qwen3 on the medical R1 data: the model learns to think (<think>…</think>) then answer.

Reads   DATA_DIR/train.jsonl and DATA_DIR/val.jsonl ({id, question, think, answer}; written by data.py).
Writes  OUTPUT_DIR/: model.safetensors, config + generation_config, tokenizer (chat template), checkpoint-N/,
        trainer_state.json, train_config.json;  RESULTS_DIR/: train_full.json, trainloss.png, evalloss.png;
        SwanLab logs (cloud when logged in, else swanlog/: view with `swanlab watch swanlog`).

    python train.py                                   # Qwen/Qwen3-1.7B on a GPU
    python train.py --model=tiny --max_steps=8        # CPU demo of the whole flow in a minute
    python train.py --resume=true                     # continue after Ctrl-C, a crash or kill -9
    torchrun --nproc_per_node 4 train.py --global_batch=16   # 4 GPUs, DDP (--engine=zero3 etc.: docs/scale.md)

Ctrl-C saves a checkpoint and stops; --resume=true continues from the newest checkpoint with the same data order
and schedule. Every efficiency constant defaults to "auto" (the choice is printed in one line).
"""

from medsft import charts
from medsft.config import Config, configure
from medsft.models import load_tokenizer, pin_revision
from medsft.training import callbacks, results, run, sft, tracking
from medsft.training.distributed import on_main

MODEL = "Qwen/Qwen3-1.7B"  # model spec: ModelScope id, local Hugging Face dir, or "tiny" (random 2-layer Qwen3 for CPU demos)
MODEL_REVISION = ""  # ModelScope revision of MODEL when it is a hub id (a tag, branch or commit id); "" = the hub's current (a whole cached snapshot is reused); results record which
DATA_DIR = "data"  # folder with train.jsonl and val.jsonl (written by data.py)
OUTPUT_DIR = "output/full"  # trained model, tokenizer, checkpoints, trainer_state.json, train_config.json
RESULTS_DIR = "results"  # train_full.json and the charts trainloss.png / evalloss.png
MAX_LENGTH = 2048  # tokens per example at most; longer rows are skipped and counted, never truncated
EPOCHS = 2.0  # passes over train.jsonl (ignored when MAX_STEPS > 0)
MAX_STEPS = -1  # optimizer steps to run; -1 = as many as EPOCHS need
BATCH_SIZE = 2  # examples per micro-batch on the device
GRAD_ACCUM = 8  # micro-batches per optimizer step (examples per step = BATCH_SIZE * GRAD_ACCUM * processes = 16 on one GPU)
GLOBAL_BATCH = 0  # examples per optimizer step over all GPUs; 0 = BATCH_SIZE * GRAD_ACCUM * processes; > 0 derives GRAD_ACCUM from it, so 1 and 4 GPUs follow the same schedule
LEARNING_RATE = 1e-5  # peak LR. Full FT moves all 1.7B weights, so it takes the small rates of SFT recipes for 1-8B models (1e-5 to 2e-5): enough to learn the think/answer format in an epoch without eroding what the model knows
SCHEDULER = "cosine"  # LR decay after warmup: cosine | linear | constant_with_warmup | ... (transformers SchedulerType)
WARMUP = 0.03  # linear warmup: a fraction of all steps when < 1, else a number of steps
WEIGHT_DECAY = 0.0  # AdamW weight decay (0: a short SFT has little to regularise)
MAX_GRAD_NORM = 1.0  # gradient clipping norm (0 = off)
EVAL_STEPS = 50  # eval loss on val.jsonl every N steps (and at the end)
SAVE_STEPS = 50  # checkpoint every N steps: a kill -9 loses at most this many
SAVE_TOTAL_LIMIT = 2  # checkpoints kept in OUTPUT_DIR (older ones deleted)
LOGGING_STEPS = 5  # log train loss, LR, grad norm, tokens/s, peak memory every N steps
NO_THINK_RATIO = 0.25  # share of train rows turned into non-thinking examples (half enable_thinking=False, half /no_think), chosen by SEED; 0 = all thinking
SEED = 42  # seed of data order, init and dropout: same seed, same loss curve
GRADIENT_CHECKPOINTING = True  # recompute activations in the backward pass: ~25% slower, a fraction of the memory
PRECISION = "auto"  # auto | bf16 (bf16 weights: the lean default) | bf16-mixed (fp32 master weights, +8 bytes/param) | fp16 | fp32; auto = bf16 on a bf16 GPU, fp16 on older GPUs, fp32 on CPU
ATTN_IMPLEMENTATION = "auto"  # auto | flash_attention_2 | sdpa | eager; auto = flash_attention_2 if flash-attn is installed on a GPU, else sdpa
PADDING_FREE = "auto"  # auto | true | false: concatenate each micro-batch without padding; auto = true with flash-attention, else length-grouped padded batches
LOSS = "auto"  # auto | liger | chunked | plain: how the 151,936-wide logits are handled; auto = Liger's fused loss if liger-kernel is installed on a GPU, else the chunked loss (only a chunk of logits is ever stored)
OPTIM = "auto"  # auto | adamw_torch_8bit | adamw_torch | adamw_torch_fused | adamw_8bit | ...; auto = adamw_torch_8bit (torchao, bf16 stochastic rounding) with bf16 weights, else fused AdamW
SWANLAB_PROJECT = "qwen3-sft-medical"  # SwanLab project (mode: SWANLAB_MODE env, else cloud if logged in, else local swanlog/)
RUN_NAME = "qwen3-1.7b-full"  # SwanLab experiment name
SWANLAB_LOG_DIR = "swanlog"  # local SwanLab logs (local/offline modes)
RESUME = False  # continue from the newest checkpoint in OUTPUT_DIR
OVERWRITE = False  # start over in an OUTPUT_DIR that holds a run (deletes its checkpoints)
ALLOW_CPU = False  # train a real-size model without a GPU anyway (days; --model=tiny is the CPU demo)
DRY_RUN = False  # print the resolved features and the estimated peak memory, then exit (needs only config.json: no GPU, no weights, no data)
ENGINE = "auto"  # several GPUs (docs/scale.md): auto | ddp | zero2 | zero3 | fsdp2 | a DeepSpeed JSON path; auto = what accelerate launch's config set up, else ddp under torchrun
DRY_RUN_GPUS = 1  # GPUs the --dry_run estimate is for (per GPU under --engine); a launch on several processes uses its own count
PREVIEW_QUESTIONS = 3  # val questions answered greedily at the end (printed and logged to SwanLab)
PREVIEW_MAX_NEW_TOKENS = 256  # tokens per preview answer at most


def main():
    tracking.guard_output()  # a dead reader of stdout (`| tee` killed by Ctrl-C) must not stop the run
    cfg = Config(configure(globals()))  # the constants, resolved once; start adds the launch and the features
    pin_revision(MODEL, MODEL_REVISION)  # every download of MODEL in this process (and each of a launch) asks for it
    # 1. Fail fast, before loading weights: data present, features, memory estimate vs this GPU, OUTPUT_DIR state
    #    (--dry_run=true prints the estimate and exits here). Under torchrun / accelerate launch every process joins
    #    one run here; rank 0 alone does the OUTPUT_DIR bookkeeping and, below, writes every output
    cfg, resume_from = sft.start_run(cfg, kind="full")
    # 2. Tokenize train/val with the chat template (prompt masked; rows over MAX_LENGTH skipped and counted;
    #    NO_THINK_RATIO of the train rows in Qwen3's non-thinking forms, so both switches keep working)
    tokenizer = load_tokenizer(MODEL)
    train_examples, train_stats = sft.prepare_examples(f"{DATA_DIR}/train.jsonl", tokenizer, MAX_LENGTH,
                                                       no_think_ratio=NO_THINK_RATIO, seed=SEED)
    val_examples, val_stats = sft.prepare_examples(f"{DATA_DIR}/val.jsonl", tokenizer, MAX_LENGTH)
    # 3. Start SwanLab (never prompts), load the model, train; Ctrl-C saves a checkpoint and exits 130
    run_callbacks = callbacks.make(cfg, kind="full", resume_from=resume_from)
    model = sft.load_training_model(cfg)
    trainer = sft.build_trainer(model, tokenizer, train_examples, val_examples, cfg, run_callbacks)
    summary = run.train(trainer, resume_from, cfg, lora=False)
    # 4. Save results, charts and the model (its trainer_state.json, last, marks the run finished); answer a few
    #    val questions as a preview
    stats = {"train": train_stats, "val": val_stats}
    written = on_main(lambda: [results.write_results(trainer, cfg, "full", summary, stats),
                               *charts.write_charts(RESULTS_DIR)])
    written += run.save_final(trainer, tokenizer, cfg)  # every process: ZeRO-3 gathers the weights to rank 0
    on_main(results.preview, trainer.model, tokenizer, f"{DATA_DIR}/val.jsonl", cfg)
    print(f"done: {trainer.state.global_step} steps, {summary['tokens_per_s']:,.0f} tokens/s, "
          f"{summary['wall_time_s']:.0f} s")
    run.finish(trainer, written)  # SwanLab ends; several processes: each ends the group it joined in step 1


if __name__ == "__main__":
    main()
