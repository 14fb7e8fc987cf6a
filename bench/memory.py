"""Memory and speed of full fine-tuning, LoRA and QLoRA, measured, against the estimator.

    python bench/memory.py                 # ~100M-parameter Qwen2-shaped model, CPU (a few minutes)
    python bench/memory.py --size smoke    # a 2-layer model, seconds (CI)
    python bench/memory.py --model Qwen/Qwen2.5-0.5B-Instruct --device cuda   # any Qwen2.5 on a GPU

Each configuration runs in its own process, so one run's allocations never
inflate the next one's peak. A run loads the model, then trains `--steps`
optimizer steps (AdamW) on fixed-length batches of `--seq-len` tokens; the
peak is taken over the training steps only (resident high-water mark reset
after loading on Linux CPUs, `max_memory_allocated` on CUDA). Step time and
tokens/s exclude the first step. The estimator (`peftlab.memory.estimate`)
predicts the same peak from the config alone; the error is
(estimated - measured) / measured.

Writes records.json, table.md and memory.png under --out (default runs/bench/memory).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Qwen2-shaped models built offline with the course tokenizer (random weights: memory and speed
# do not depend on what the weights are).
SIZES = {
    "100m": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=2),
    "smoke": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
}
ALL_LINEAR = "all-linear"
# glibc keeps freed large blocks in its heap, so a CPU process's resident peak can exceed its live
# tensors by gigabytes, depending on allocation order. Serving blocks of 64 KiB and up with mmap
# returns them to the OS when freed, so the resident peak tracks what training really holds.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
CONFIGS = {
    "full fine-tuning": dict(method="full"),
    "LoRA r=8 q+v": dict(method="lora", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    "LoRA r=16 all linear": dict(method="lora", r=16, lora_alpha=32, target_modules=ALL_LINEAR),
    "LoRA r=64 all linear": dict(method="lora", r=64, lora_alpha=128, target_modules=ALL_LINEAR),
    "QLoRA NF4+DQ r=16 all linear": dict(method="qlora", r=16, lora_alpha=32, target_modules=ALL_LINEAR,
                                         quant_type="nf4", double_quant=True),
}
# Bytes per parameter of the weights' training state, as the papers count them.
THEORY = [
    ("full fine-tuning, AdamW, mixed precision", "16", "bf16 weights 2 + fp32 master 4 + grads 2 + Adam m, v 8 "
     "(ZeRO paper, Rajbhandari et al. 2020, section 3.1)"),
    ("full fine-tuning, AdamW, fp32 (Session 4 on any device; this benchmark where `auto` picks float32)", "16", "weights 4 + grads 4 + Adam m, v 8"),
    ("full fine-tuning, AdamW, pure bf16 (the estimator's GPU rows below; this benchmark on a CPU with native "
     "bfloat16)", "8",
     "weights 2 + grads 2 + Adam m, v 4 in bf16, no fp32 master copy: what `dtype=bfloat16` with torch's AdamW does"),
    ("LoRA: frozen base in bf16", "2", "plus 16 per trainable LoRA parameter (fp32 weight, grad, Adam m, v)"),
    ("QLoRA: frozen base in NF4 + double quantization", "0.516", "4 bits + 8-bit absmax per 64 + fp32 per 256 "
     "blocks = 4.127 bits (Dettmers et al. 2023, section 3)"),
]


def build_model(size: str, cache: Path) -> Path:
    """A Qwen2-shaped model of the given size with the course tokenizer, saved once."""
    import torch
    from peftlab import models
    from transformers import AutoModelForCausalLM, Qwen2Config

    target = cache / f"bench-qwen2-{size}"
    if (target / "config.json").is_file():
        return target
    tokenizer = models.load_tokenizer("tiny-qwen2")
    config = Qwen2Config(**SIZES[size], vocab_size=len(tokenizer), tie_word_embeddings=True,
                         max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    tmp = Path(tempfile.mkdtemp(prefix=target.name, dir=cache))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return target


def run_one(name: str, model_dir: str, device: str, steps: int, seq_len: int, batch: int) -> dict:
    """One configuration, in this process: load, train, measure."""
    import torch
    from peftlab import adapters, measure, memory, models
    from peftlab.config import RunConfig

    config = RunConfig(model_name=model_dir, device=device, lora_dropout=0.0, seed=0,
                       per_device_train_batch_size=batch, **CONFIGS[name])
    dev = models.pick_device(device)
    model = models.load_model(config)
    # transformers may leave weights as views of the memory-mapped checkpoint (zero copy), which the
    # resident peak then counts as file pages, or not at all until touched. Copy them into ordinary
    # memory so every configuration holds its weights the same way, and drop the mapping.
    with torch.no_grad():
        for p in model.parameters():
            if type(p).__name__ != "Params4bit":
                p.data = p.data.clone()
    gc.collect()
    total_step = 1000
    model = adapters.attach(model, config, total_step=total_step)
    model.train()
    counts = adapters.count_parameters(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    batches = [torch.randint(0, vocab, (batch, seq_len), generator=g).to(dev) for _ in range(steps)]
    times = []
    with measure.track_peak_memory(dev) as peak:
        for n, ids in enumerate(batches, start=1):
            start = time.perf_counter()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            if n == len(batches):
                state = _training_state_bytes(model, optimizer)  # weights, grads and AdamW moments, all alive
            optimizer.zero_grad(set_to_none=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    step = sum(times[1:]) / max(1, len(times) - 1)
    with tempfile.TemporaryDirectory() as tmp:
        if hasattr(model, "peft_config"):
            disk = adapters.dir_size(adapters.save_adapter(model, Path(tmp) / "adapter"))
        else:
            disk = sum(p.numel() * p.element_size() for p in model.parameters())  # a full checkpoint
    est = memory.estimate(model_dir, config, seq_len=seq_len, batch_size=batch,
                          device="cuda" if dev.type == "cuda" else "cpu")
    return {
        "config": name, "method": config.method, "device": dev.type, "steps": steps, "seq_len": seq_len,
        "batch": batch, "trainable": counts.trainable, "total": counts.total,
        "peak_bytes": peak.bytes, "peak_source": peak.source, "estimated_bytes": est.total,
        "estimate": est.as_dict(), "error_pct": 100 * (est.total - peak.bytes) / peak.bytes,
        "step_s": step, "tokens_per_s": batch * seq_len / step, "saved_bytes": disk,
        "state_bytes": state, "state_bytes_per_param": state / counts.total,
        "base_linear_bytes_per_param": _linear_bytes_per_param(model),
        "final_loss": float(loss),
    }


def _training_state_bytes(model, optimizer) -> int:
    """Bytes of the weights (4-bit state included), their gradients and the optimizer's moments."""
    import torch
    from peftlab import memory

    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    moments = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                  if torch.is_tensor(t) and t.dim() > 0)
    return memory.measured_weights_bytes(model) + grads + moments


def _linear_bytes_per_param(model) -> float:
    """Measured bytes per weight of the decoder's frozen (base) linear layers, quantization state included."""
    import torch
    from peftlab.memory import measured_weights_bytes

    total, count = 0, 0
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if ".layers." in name and leaf == "base_layer" or (type(module).__name__ == "Linear4bit"):
            if isinstance(module, torch.nn.Linear):
                total += measured_weights_bytes(module) - (module.bias.numel() * module.bias.element_size()
                                                           if module.bias is not None else 0)
                count += module.in_features * module.out_features
    return total / count if count else float("nan")


def predictions(seq_len: int = 512, batch: int = 4) -> list[dict]:
    """The estimator's training peaks for Qwen2.5 sizes on a GPU (bf16, gradient checkpointing off)."""
    from peftlab import memory
    from peftlab.config import RunConfig

    rows = []
    for size in ("0.5B", "1.5B", "3B", "7B"):
        name = f"Qwen/Qwen2.5-{size}-Instruct"
        row = {"model": name}
        for label, kw in [("full", dict(method="full")),
                          ("LoRA r=16 all", dict(method="lora", r=16, target_modules=ALL_LINEAR)),
                          ("QLoRA r=16 all", dict(method="qlora", r=16, target_modules=ALL_LINEAR,
                                                  compute_dtype="bfloat16"))]:
            cfg = RunConfig(dtype="bfloat16", per_device_train_batch_size=batch, **kw)
            row[label] = memory.estimate(name, cfg, seq_len=seq_len, batch_size=batch, device="cuda").total
        rows.append(row)
    return rows


def table(records: list[dict]) -> str:
    GiB = 2**30
    lines = ["| configuration | trainable | measured peak | estimated | error | step | tokens/s | saved |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(
            f"| {r['config']} | {r['trainable']:,} ({100 * r['trainable'] / r['total']:.2f}%) "
            f"| {r['peak_bytes'] / GiB:.2f} GiB | {r['estimated_bytes'] / GiB:.2f} GiB | {r['error_pct']:+.1f}% "
            f"| {r['step_s']:.2f} s | {r['tokens_per_s']:,.0f} | {r['saved_bytes'] / 2**20:.1f} MiB |")
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    from peftlab.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = [r["config"] for r in records]
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [r["peak_bytes"] / 2**30 for r in records], width=0.4, label="measured peak")
    ax.bar([i + 0.2 for i in x], [r["estimated_bytes"] / 2**30 for r in records], width=0.4, label="estimated")
    ax.set_xticks(list(x), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("GiB")
    ax.set_title("Training peak memory: measured vs estimated")
    ax.legend()
    save_figure(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="100m")
    parser.add_argument("--model", default=None, help="a local directory or hub name instead of --size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of: " + ", ".join(CONFIGS))
    parser.add_argument("--out", default="runs/bench/memory")
    parser.add_argument("--allocator-check", action=argparse.BooleanOptionalAction, default=True,
                        help="also run LoRA r=16 with glibc's default malloc settings, for comparison")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one config here
    args = parser.parse_args(argv)

    if args.one:
        print(json.dumps(run_one(args.one, args.model, args.device, args.steps, args.seq_len, args.batch)))
        return 0

    from peftlab import record
    from peftlab.tiny import cache_root

    model_dir = args.model or str(build_model(args.size, cache_root()))
    records = []
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        if name not in CONFIGS:
            parser.error(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}")
        cmd = [sys.executable, __file__, "--one", name, "--model", model_dir, "--device", args.device,
               "--steps", str(args.steps), "--seq-len", str(args.seq_len), "--batch", str(args.batch)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **MALLOC_ENV})
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        rec = json.loads(proc.stdout.strip().splitlines()[-1])
        records.append(rec)
        print(f"{name:<30} peak {rec['peak_bytes'] / 2**30:6.2f} GiB, estimated {rec['estimated_bytes'] / 2**30:6.2f} GiB "
              f"({rec['error_pct']:+.1f}%), {rec['step_s']:.2f} s/step, {rec['tokens_per_s']:,.0f} tokens/s", flush=True)

    allocator = None
    if args.allocator_check and "LoRA r=16 all linear" in CONFIGS:
        # The same LoRA run with glibc's default settings: how much freed memory the heap keeps resident.
        cmd = [sys.executable, __file__, "--one", "LoRA r=16 all linear", "--model", model_dir, "--device",
               args.device, "--steps", str(args.steps), "--seq-len", str(args.seq_len), "--batch", str(args.batch)]
        env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode == 0:
            allocator = json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"]
            print(f"LoRA r=16 all linear with glibc's default malloc settings: peak {allocator / 2**30:.2f} GiB")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from peftlab import models

    dev = models.pick_device(args.device)
    dtype = str(models.pick_dtype(dev)).removeprefix("torch.")  # what dtype='auto' gives every run here
    result = {"default_malloc_lora16_peak_bytes": allocator, "model": model_dir, "size": args.model or args.size,
              "command": "python bench/memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "hardware": record.hardware(),
              "cpu_count": os.cpu_count(), "versions": record.versions(), "commit": record.git_commit(),
              "conditions": {"device": args.device, "steps": args.steps, "seq_len": args.seq_len,
                             "batch": args.batch, "optimizer": "torch AdamW",
                             "dtype": f"{dtype} on {'GPU' if dev.type == 'cuda' else 'CPU'}"},
              "records": records, "theory": THEORY, "predictions": predictions()}
    (out / "records.json").write_text(json.dumps(result, indent=2))
    (out / "table.md").write_text(table(records) + "\n")
    plot(records, out / "memory.png")
    print(table(records))
    worst = max(abs(r["error_pct"]) for r in records)
    print(f"largest estimator error: {worst:.1f}% (target: within 15%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
