"""swin_jax against timm on this machine: inference and a full train step, side by side in one process.

  python benchmarks/model_speed.py                                  # Swin-T and Swin-B at 224, fp32 and bf16
  python benchmarks/model_speed.py --models tiny --dtypes float32 --modes infer --rounds 3
  python benchmarks/model_speed.py --torch-compile default max-autotune --json out.json  # GPU: the issue's run
  python benchmarks/model_speed.py --attention-impl cudnn            # swin_jax's attention kernel (layers.py)
  LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python benchmarks/model_speed.py

For each case (model, inference or train step, compute dtype) both sides are built and warmed up, then
timed in alternating rounds (swin_jax, timm, swin_jax, timm, ...), so drift in the machine's speed
hits both alike; the table shows the median round. The train step is the one train.py runs, built from
the model's config (configs/swin_t.py, swin_b.py) by `build_training`: on-device normalisation, random
erasing and Mixup/CutMix with label smoothing, forward and backward with the config's drop path,
global-norm clipping, AdamW with the decay mask and the warm-up/cosine schedule. timm runs the official
step: timm's Mixup, SoftTargetCrossEntropy, clip_grad_norm_, torch.optim.AdamW with the official
parameter groups and CosineLRScheduler.step_update (random erasing is host-side in the official
pipeline, so it is not timed there); eager `model.train()`, bf16 through `torch.autocast`. timm runs
twice: as it comes (its Swin attention is the explicit softmax; `fused_attn` is off by default there)
and with `fused_attn` on (F.scaled_dot_product_attention), each eager and, with `--torch-compile`,
under torch.compile in the given modes; "best torch" is the fastest of them. FLOPs are the official count (the papers' "FLOPs" are multiply-adds: Swin-T is
4.49 GMAC, 8.98 GFLOP per 224 image); a train step counts three forward passes. The machine's peak is
measured here, as the best of XLA's, OpenBLAS's (NumPy) and PyTorch's matrix product at 2048 and 4096
(on a GPU: XLA's and PyTorch's at 8192, in the case's dtype), so "of peak" is the fraction of what this
machine's matmul actually sustains; on known GPUs the fraction of the datasheet's dense peak is
reported too. Peak memory is measured in a child process per side (CPU: peak resident memory of the
whole process; GPU: the frameworks' peak device allocation). The input pipeline's throughput is
measured in the same run (one host core, full augmentation), so the report says whether input or
compute bounds training here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

# Both frameworks share one GPU: JAX must not take most of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

MODELS = {"tiny": "swin_tiny_patch4_window7_224", "base": "swin_base_patch4_window7_224"}
BATCH = {("tiny", "infer"): 8, ("base", "infer"): 8, ("tiny", "train"): 16, ("base", "train"): 8}
GPU_BATCH = {("tiny", "infer"): 256, ("base", "infer"): 256, ("tiny", "train"): 128, ("base", "train"): 128}
# Dense (no sparsity) peaks of the datasheets, TFLOP/s; float32 means TF32, which both sides use on a GPU.
DATASHEET_TFLOPS = {"H200": {"bfloat16": 989.4, "float32": 494.7}, "H100": {"bfloat16": 989.4, "float32": 494.7},
                    "A100": {"bfloat16": 312.0, "float32": 156.0}}


def datasheet_peak_gflops(device_kind: str, dtype: str) -> float | None:
    for chip, peaks in DATASHEET_TFLOPS.items():
        if chip in device_kind:
            return peaks[dtype] * 1e3
    return None


def swin_macs(model) -> int:
    """Multiply-adds of one forward pass at `img_size`, counted as the official `flops()` methods do."""
    h, w = model.patch_grid
    c, p = model.embed_dim, model.patch_size
    macs = h * w * c * model.in_chans * p * p + (h * w * c if model.patch_norm else 0)
    for i, (depth, heads) in enumerate(zip(model.depths, model.num_heads)):
        if i:
            macs += h * w * c + (h // 2) * (w // 2) * 4 * c * 2 * c  # patch merging: norm + reduction
            h, w, c = h // 2, w // 2, 2 * c
        window = model.stage_windows()[i]
        n, windows_ = window * window, (h // window) * (w // window)
        attention = n * c * 3 * c + 2 * n * n * c + n * c * c
        macs += depth * (2 * h * w * c + windows_ * attention + 2 * h * w * c * c * model.mlp_ratio)
    macs += c * h * w + c * model.num_classes
    return int(macs)


def allocator() -> str:
    preload = os.environ.get("LD_PRELOAD", "")
    return "tcmalloc" if "tcmalloc" in preload else "jemalloc" if "jemalloc" in preload else "glibc malloc"


# ----------------------------------------------------------------------------------------------------
# swin_jax

def jax_case(name: str, mode: str, dtype: str, batch: int, remat: bool = False, unroll: bool = False,
             attention_impl: str = "auto"):
    """(a function that runs one step and waits for it, compile seconds, MACs per image, memory analysis)."""
    import jax
    import jax.numpy as jnp

    import swin_jax

    if mode == "infer":
        model = swin_jax.create_model(name, dtype=jnp.dtype(dtype), remat=remat, scan_unroll=unroll,
                                      attention_impl=attention_impl)
        images = jax.random.normal(jax.random.key(1), (batch, *model.input_hw, 3), jnp.float32)
        params = jax.jit(model.init)(jax.random.key(0), images[:1])["params"]
        fn = jax.jit(lambda p, x: model.apply({"params": p}, x))
        args = [params, images]
    else:
        fn, args, model = shipped_train_step(name, dtype, batch, remat, unroll, attention_impl)

    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()

    def run():
        if mode == "infer":
            compiled(*args).block_until_ready()
        else:
            args[0], metrics = compiled(*args)
            metrics["train_loss"].block_until_ready()

    return run, compile_s, swin_macs(model), memory


CONFIGS = {"swin_tiny_patch4_window7_224": "swin_t", "swin_base_patch4_window7_224": "swin_b"}


def train_config(name: str, dtype: str, batch: int, remat: bool = False, unroll: bool = False,
                 attention_impl: str = "auto"):
    """The training config of model `name` (configs/swin_t.py, swin_b.py) at this batch size."""
    import importlib

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    config = importlib.import_module(f"configs.{CONFIGS[name]}").get_config()
    config.update(dict(dataset="synthetic", batch_size=batch, model_dtype=dtype, remat=remat, scan_unroll=unroll,
                       attention_impl=attention_impl, total_steps=10_000))
    return config


def shipped_train_step(name: str, dtype: str, batch: int, remat: bool, unroll: bool, attention_impl: str):
    """train.py's jitted train step on one device, its state and a batch of uint8 images and labels."""
    import jax

    from swin_jax.train import optim, sharding
    from swin_jax.train.loop import build_model, build_training

    config = train_config(name, dtype, batch, remat, unroll, attention_impl)
    model = build_model(config, 1000)
    lr = optim.schedule(config, config.total_steps, 1000)
    mesh = sharding.make_mesh(jax.devices()[:1])
    rng = np.random.RandomState(0)
    host = {"image": rng.randint(0, 256, (batch, *model.input_hw, 3)).astype(np.uint8),
            "label": rng.randint(0, 1000, (batch,)).astype(np.int32)}
    with jax.set_mesh(mesh):
        state, _, train_step = build_training(config, model, lr, mesh, 1000)
    return train_step, [state, jax.device_put(host, sharding.batch_sharding(mesh))], model


# ----------------------------------------------------------------------------------------------------
# timm

def timm_model(name: str, fused_attn: bool, **kwargs):
    """timm's model; `fused_attn` switches its window attention to F.scaled_dot_product_attention."""
    import timm

    model = timm.create_model(name, **kwargs)
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused_attn
    return model


def torch_case(name: str, mode: str, dtype: str, batch: int, compile_mode: str | None = None,
               fused_attn: bool = False):
    """(a function that runs one step and waits for it, seconds of its first call: compilation or warm-up)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    # JAX multiplies float32 matrices on a GPU in TF32 by default; PyTorch must do the same to compare.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    images = torch.randn(batch, 3, 224, 224, device=device)
    if mode == "infer":
        model = timm_model(name, fused_attn).to(device).eval()
        forward = torch.compile(model, mode=compile_mode) if compile_mode else model

        def run():
            with torch.inference_mode(), autocast:
                forward(images)
            sync()
    else:
        run = official_torch_step(name, dtype, batch, device, autocast, sync, compile_mode, fused_attn)

    start = time.perf_counter()
    run()  # torch.compile compiles here; eager allocates its buffers
    return run, time.perf_counter() - start


def official_torch_step(name, dtype, batch, device, autocast, sync, compile_mode, fused_attn):
    """The official Swin train step (main.py's train_one_epoch) with the recipe of our config for `name`."""
    import torch
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy
    from timm.scheduler.cosine_lr import CosineLRScheduler

    config = train_config(name, dtype, batch)
    model = timm_model(name, fused_attn, drop_path_rate=config.model_overrides.drop_path_rate).to(device).train()
    forward = torch.compile(model, mode=compile_mode) if compile_mode else model
    decay, no_decay = [], []
    for key, p in model.named_parameters():  # the official set_weight_decay
        exempt = p.ndim == 1 or key.endswith(".bias") or "relative_position_bias_table" in key
        (no_decay if exempt else decay).append(p)
    lr = config.base_lr * batch / config.lr_base_batch_size
    optimizer = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr,
                                  betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay)
    scheduler = CosineLRScheduler(optimizer, t_initial=config.total_steps, lr_min=lr / 100, warmup_lr_init=lr / 1000,
                                  warmup_t=config.total_steps // 15, t_in_epochs=False, warmup_prefix=True)
    c = config.input
    mixup = Mixup(mixup_alpha=c.mixup_alpha, cutmix_alpha=c.cutmix_alpha, prob=c.mixup_prob,
                  switch_prob=c.mixup_switch_prob, mode="batch", label_smoothing=c.label_smoothing, num_classes=1000)
    criterion = SoftTargetCrossEntropy()
    images = torch.randn(batch, 3, 224, 224, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    step = [0]

    def run():
        x, y = mixup(images, labels)
        with autocast:
            loss = criterion(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
        optimizer.step()
        step[0] += 1
        scheduler.step_update(step[0])
        sync()

    return run


# ----------------------------------------------------------------------------------------------------
# the machine

def matmul_peak(gpu: bool, dtype: str) -> dict:
    """Sustained GFLOP/s of square matrix products, per library and size (CPU: 2048 and 4096 in float32;
    GPU: 8192 in `dtype`)."""
    import jax
    import jax.numpy as jnp
    import torch

    out = {}
    for n in ((8192,) if gpu else (2048, 4096)):
        flop = 2 * n ** 3
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype) if gpu else jnp.float32)
        mm = jax.jit(lambda x: x @ x)
        out[f"xla_{n}"] = flop / best_time(lambda: mm(a).block_until_ready()) / 1e9
        if gpu:
            t = torch.randn(n, n, device="cuda", dtype=getattr(torch, dtype))
            out[f"torch_{n}"] = flop / best_time(lambda: (t @ t, torch.cuda.synchronize())) / 1e9
        else:
            x = np.random.RandomState(0).standard_normal((n, n)).astype(np.float32)
            out[f"numpy_{n}"] = flop / best_time(lambda: x @ x) / 1e9
            t = torch.from_numpy(x)
            out[f"torch_{n}"] = flop / best_time(lambda: t @ t) / 1e9
    return out


def best_time(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def probe_memory(side: str, name: str, mode: str, dtype: str, batch: int, remat: bool, unroll: bool,
                 attention_impl: str) -> dict:
    """Run one side alone in a child process (timm with fused_attn); its peak memory in MiB."""
    cmd = [sys.executable, os.path.abspath(__file__), "--probe", side, name, mode, dtype, str(batch),
           str(int(remat)), str(int(unroll)), attention_impl]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if result.returncode:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def probe_main(side: str, name: str, mode: str, dtype: str, batch: int, remat: bool, unroll: bool,
               attention_impl: str) -> None:
    if side == "jax":
        import jax

        run = jax_case(name, mode, dtype, batch, remat, unroll, attention_impl)[0]
    else:
        run = torch_case(name, mode, dtype, batch, fused_attn=True)[0]
    for _ in range(3):
        run()
    report = {"peak_rss_mib": peak_rss_mib()}
    if side == "jax" and jax.devices()[0].platform == "gpu":
        report["peak_device_mib"] = jax.devices()[0].memory_stats()["peak_bytes_in_use"] / 2 ** 20
    if side == "torch":
        import torch

        if torch.cuda.is_available():
            report["peak_device_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    print(json.dumps(report))


def input_pipeline_rate(seconds: float) -> float:
    """Training images/s of the full augmentation pipeline on one host thread."""
    import tempfile

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from input_pipeline import make_folder, measure

    from swin_jax import data

    with tempfile.TemporaryDirectory() as root:
        make_folder(root, 128)
        os.symlink(os.path.join(root, "train"), os.path.join(root, "val"))
        config = data.default_config()
        config.update(dict(dataset="folder", data_dir=root, batch_size=32, threads=1, cache=True,
                           shuffle_buffer=128))
        return measure(iter(data.train_input(config, seed=0)), 32, seconds)


# ----------------------------------------------------------------------------------------------------

def time_sides(sides: dict, rounds: int, iters: int) -> dict:
    """Seconds per step of each side in every round, the sides alternating within a round."""
    for run in sides.values():
        run()
    times = {k: [] for k in sides}
    for _ in range(rounds):
        for key, run in sides.items():
            start = time.perf_counter()
            for _ in range(iters):
                run()
            times[key].append((time.perf_counter() - start) / iters)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "base"], choices=sorted(MODELS))
    parser.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=0, help="one batch size for every case (default: per case)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timed rounds per case")
    parser.add_argument("--iters", type=int, default=3, help="steps per round")
    parser.add_argument("--attention-impl", default="auto", help="swin_jax's attention kernel (models/layers.py)")
    parser.add_argument("--torch-compile", nargs="*", default=None, choices=["default", "max-autotune"],
                        help="also time timm (fused_attn) under torch.compile in these modes (none given: default)")
    parser.add_argument("--no-memory", action="store_true", help="skip the child processes that measure memory")
    parser.add_argument("--pipeline-seconds", type=float, default=10.0, help="0 skips the input pipeline")
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument("--remat", action="store_true",
                        help="swin_jax recomputes each block pair in the backward pass (config.remat): less memory")
    parser.add_argument("--scan-unroll", action="store_true",
                        help="swin_jax compiles its scanned block pairs unrolled (config.scan_unroll): on CPU a few "
                             "percent faster train steps, more memory, longer compilation")
    parser.add_argument("--probe", nargs=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        side, name, mode, dtype, batch, remat, unroll, impl = args.probe
        return probe_main(side, name, mode, dtype, int(batch), remat == "1", unroll == "1", impl)
    compile_modes = [] if args.torch_compile is None else (args.torch_compile or ["default"])

    import torchvision  # noqa: F401  # before TensorFlow (input pipeline): it crashes when loaded after TF
    import jax
    import torch

    gpu = jax.devices()[0].platform == "gpu"
    if not gpu:
        torch.set_num_threads(os.cpu_count())
    machine = {"device": str(jax.devices()[0].device_kind), "host_cores": os.cpu_count(), "allocator": allocator(),
               "jax": jax.__version__, "torch": torch.__version__, "python": platform.python_version(),
               "swin_jax_remat": args.remat, "swin_jax_scan_unroll": args.scan_unroll,
               "swin_jax_attention_impl": args.attention_impl}
    print(f"{machine['device']} | {machine['host_cores']} host cores | {machine['allocator']} | "
          f"jax {machine['jax']}, torch {machine['torch']} | attention_impl={args.attention_impl}"
          + (" | swin_jax with remat" if args.remat else "") + (" | swin_jax with scan_unroll" if args.scan_unroll else ""))
    peaks = {dtype: matmul_peak(gpu, dtype) for dtype in (args.dtypes if gpu else ["float32"])}
    for dtype, peak in peaks.items():
        print(f"matmul peak ({dtype}): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items()))

    rows = []
    header = (f"{'case':<24} {'batch':>5} {'swin_jax':>9} {'timm':>8} {'timm sdpa':>9} {'best torch':>16} "
              f"{'vs best':>7} {'GFLOP/s':>8} {'of peak':>7} {'of sheet':>8} {'compile s':>9} {'jax MiB':>8} "
              f"{'timm MiB':>8}")
    print("images/s; best torch names the fastest timm configuration; MiB: peak " +
          ("device memory" if gpu else "resident memory of the process") + "\n" + header)
    for model_key in args.models:
        for mode in args.modes:
            for dtype in args.dtypes:
                name = MODELS[model_key]
                batch = args.batch or (GPU_BATCH if gpu else BATCH)[(model_key, mode)]
                jax_run, compile_s, macs, memory = jax_case(name, mode, dtype, batch, args.remat, args.scan_unroll,
                                                            args.attention_impl)
                sides = {"swin_jax": jax_run, "timm": torch_case(name, mode, dtype, batch)[0],
                         "timm_sdpa": torch_case(name, mode, dtype, batch, fused_attn=True)[0]}
                torch_compile_s = {}
                for compile_mode in compile_modes:
                    key = f"timm_sdpa_compiled_{compile_mode}"
                    try:
                        sides[key], torch_compile_s[key] = torch_case(name, mode, dtype, batch, compile_mode, True)
                    except Exception as e:  # noqa: BLE001  torch.compile needs a working toolchain
                        print(f"  torch.compile ({compile_mode}) failed: {type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}")
                times = time_sides(sides, args.rounds, args.iters)
                rate = {k: batch / statistics.median(v) for k, v in times.items()}
                best_torch = max((k for k in rate if k != "swin_jax"), key=rate.get)
                flops = 2 * macs * batch * (3 if mode == "train" else 1)
                gflops = flops / statistics.median(times["swin_jax"]) / 1e9
                peak = max(peaks[dtype if gpu else "float32"].values())
                sheet = datasheet_peak_gflops(machine["device"], dtype) if gpu else None
                row = dict(model=name, mode=mode, dtype=dtype, batch=batch, images_per_sec=rate,
                           ratio=rate["swin_jax"] / rate["timm"], best_torch=best_torch,
                           ratio_vs_best_torch=rate["swin_jax"] / rate[best_torch], jax_gflops=gflops,
                           peak_gflops=peak, fraction_of_peak=gflops / peak, datasheet_peak_gflops=sheet,
                           fraction_of_datasheet=gflops / sheet if sheet else None, compile_s=compile_s,
                           torch_compile_s=torch_compile_s,
                           xla_memory_mib=(memory.temp_size_in_bytes + memory.argument_size_in_bytes +
                                           memory.output_size_in_bytes - memory.alias_size_in_bytes) / 2 ** 20,
                           round_seconds=times)
                if not args.no_memory:
                    row["memory"] = {side: probe_memory(side, name, mode, dtype, batch, args.remat, args.scan_unroll,
                                                        args.attention_impl) for side in ("jax", "torch")}
                rows.append(row)
                mem = row.get("memory", {})
                key = "peak_device_mib" if gpu else "peak_rss_mib"
                jm, tm = (mem.get(s, {}).get(key, float("nan")) for s in ("jax", "torch"))
                of_sheet = f"{row['fraction_of_datasheet']:.0%}" if sheet else "-"
                print(f"{model_key + ' ' + mode + ' ' + dtype:<24} {batch:>5} {rate['swin_jax']:>9.1f} "
                      f"{rate['timm']:>8.1f} {rate['timm_sdpa']:>9.1f} {best_torch.replace('timm_', ''):>16} "
                      f"{row['ratio_vs_best_torch']:>6.2f}x {gflops:>8.0f} {row['fraction_of_peak']:>6.0%} "
                      f"{of_sheet:>8} {compile_s:>9.1f} {jm:>8.0f} {tm:>8.0f}", flush=True)
                for key, value in rate.items():
                    if key.startswith("timm_sdpa_compiled"):
                        print(f"  {key}: {value:.1f} img/s, compiled in {torch_compile_s[key]:.0f} s")
                del sides, jax_run

    report = {"machine": machine, "matmul_peak_gflops": peaks, "cases": rows}
    if args.pipeline_seconds:
        rate = input_pipeline_rate(args.pipeline_seconds)
        report["input_pipeline_images_per_sec_per_core"] = rate
        print(f"input pipeline (full augmentation at 224, 1 host core): {rate:.0f} train images/s")
        for row in rows:
            if row["mode"] == "train":
                need = row["images_per_sec"]["swin_jax"] / rate
                print(f"  {row['model']} {row['dtype']} train step consumes {row['images_per_sec']['swin_jax']:.1f} "
                      f"img/s: {need:.2f} host cores of input")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
