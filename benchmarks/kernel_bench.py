"""Microbenchmarks of the MAGPO loss: eager reference vs torch.compile(reference) vs Triton.

    python benchmarks/kernel_bench.py                    # full sweep on the CUDA device
    python benchmarks/kernel_bench.py --family categorical --sizes 16 --rows 20 --modes full
    python benchmarks/kernel_bench.py --device cpu --providers eager,compile --rows 12 --sizes 4   # smoke

Sweeps rows = 2^12 .. 2^22 (``--rows`` takes exponents) x A in {2, 4, 16, 64} (categorical)
or D in {1, 4, 16} (normal), fp32, in three modes:

* ``forward``: the loss terms, inputs requiring grad (as in training: Triton then also writes
  its gradient buffers);
* ``full``: forward, then ``autograd.grad`` of ``loss_guider + loss_learner - 0.01 *
  guider_entropy`` with respect to the policy parameters;
* ``backward``: full - forward, quantile by quantile. It is derived, not timed alone, because
  replaying one graph (``retain_graph``) is what torch.compile's donated buffers forbid, and
  every provider is treated the same way.

Each time is ``triton.testing.do_bench``'s p20 / p50 / p80 (a perf_counter loop on CPU).
Effective bandwidth = the minimum bytes the op must move / p50, where forward must read the
inputs once, backward must write the gradients once and full does both; it is reported
against the device's copy bandwidth measured in the same run. Results are printed, upserted
into ``--csv`` (one row per device, provider, family, mode, rows, size, dtype) with the
device name, versions and date, and drawn into ``--png``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import platform
import statistics
import time
from pathlib import Path

import magpo_kernels
import torch
from magpo_kernels import reference

PROVIDERS = ("eager", "compile", "triton")
MODES = ("forward", "backward", "full")
DEFAULT_SIZES = {"categorical": (2, 4, 16, 64), "normal": (1, 4, 16)}
OPTIONS = magpo_kernels.LossOptions()  # the package defaults
CSV_KEY = ("device", "provider", "family", "mode", "rows", "size", "dtype")
CSV_FIELDS = CSV_KEY + (
    "p20_ms", "p50_ms", "p80_ms", "min_bytes", "effective_gbps", "copy_gbps", "fraction_of_copy",
    "torch", "triton", "date",
)


def make_inputs(family: str, rows: int, size: int, device: str, dtype=torch.float32):
    """Random inputs for one shape; the differentiable ones first, with requires_grad."""
    g = torch.Generator(device=device).manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=g, device=device, dtype=dtype)  # noqa: E731
    if family == "categorical":
        guider = randn(rows, size).requires_grad_()
        learner = (guider.detach() + 0.3 * randn(rows, size)).requires_grad_()
        action = torch.randint(size, (rows,), generator=g, device=device)
        behavior = torch.log_softmax(guider.detach(), -1).gather(-1, action[:, None]).squeeze(-1)
        return (guider, learner), (action, behavior, randn(rows))
    loc, learner_loc = randn(rows, size).requires_grad_(), randn(rows, size).requires_grad_()
    scale = (0.5 + torch.rand(rows, size, generator=g, device=device)).requires_grad_()
    learner_scale = (0.5 + torch.rand(rows, size, generator=g, device=device)).requires_grad_()
    action = loc.detach() + scale.detach() * randn(rows, size)
    behavior = torch.distributions.Normal(loc.detach(), scale.detach()).log_prob(action).sum(-1)
    return (loc, scale, learner_loc, learner_scale), (action, behavior, randn(rows))


def min_bytes(family: str, rows: int, size: int, mode: str, dtype=torch.float32) -> int:
    """What the op cannot avoid moving: forward reads the inputs, backward writes the gradients."""
    item = torch.tensor([], dtype=dtype).element_size()
    per_row_params = (2 if family == "categorical" else 4) * size * item
    action = 8 if family == "categorical" else size * item
    read = rows * (per_row_params + action + 2 * 4)  # + behaviour log-prob and advantage
    write = rows * per_row_params
    return {"forward": read, "backward": write, "full": read + write}[mode]


def loss_function(family: str, provider: str):
    """A callable (differentiable, data) -> MAGPOLossTerms for one provider."""
    if provider == "triton":
        entry = magpo_kernels.magpo_loss_categorical if family == "categorical" else magpo_kernels.magpo_loss_normal
        return lambda diff, data: entry(*diff, *data, dataclasses.replace(OPTIONS, backend="triton"))
    ref = reference.categorical_terms if family == "categorical" else reference.normal_terms
    fn = lambda diff, data: ref(*diff, *data, OPTIONS)  # noqa: E731
    return torch.compile(fn) if provider == "compile" else fn


def objective(terms) -> torch.Tensor:
    return terms.loss_guider + terms.loss_learner - 0.01 * terms.guider_entropy


def timer(device: str):
    """(fn) -> (p20, p50, p80) in ms."""
    if device.startswith("cuda"):
        import triton.testing

        return lambda fn: tuple(triton.testing.do_bench(fn, quantiles=[0.2, 0.5, 0.8], warmup=25, rep=100))

    def cpu_bench(fn, reps: int = 7):
        fn()
        samples = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
        q = statistics.quantiles(samples, n=10, method="inclusive")
        return q[1], statistics.median(samples), q[7]

    return cpu_bench


def copy_bandwidth_gbps(device: str, bench) -> float:
    """Device-to-device copy bandwidth (read + write bytes / p50) of a 1 GiB (CPU: 64 MiB) buffer."""
    numel = (1 << 28) if device.startswith("cuda") else (1 << 24)
    src = torch.empty(numel, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    _, p50, _ = bench(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (p50 * 1e-3) / 1e9


def measure(family, provider, rows, size, device, bench) -> dict[str, tuple[float, float, float]]:
    """(p20, p50, p80) ms per mode; backward is derived as full - forward, quantile by quantile."""
    diff, data = make_inputs(family, rows, size, device)
    fn = loss_function(family, provider)
    forward = bench(lambda: fn(diff, data))
    full = bench(lambda: torch.autograd.grad(objective(fn(diff, data)), diff))
    backward = tuple(max(f - w, 0.0) for f, w in zip(full, forward))
    return {"forward": forward, "backward": backward, "full": full}


def upsert(path: Path, new_rows: list[dict]) -> None:
    """Replace rows with the same key, keep the others, write atomically."""
    existing = []
    if path.exists():
        with path.open(newline="") as f:
            existing = list(csv.DictReader(f))
    keys = {tuple(str(r[k]) for k in CSV_KEY) for r in new_rows}
    kept = [r for r in existing if tuple(r[k] for k in CSV_KEY) not in keys]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(kept + new_rows)
    tmp.replace(path)


def plot(path: Path, results: list[dict], device_name: str, copy_gbps: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = sorted({r["family"] for r in results})
    modes = [m for m in MODES if any(r["mode"] == m for r in results)]
    fig, axes = plt.subplots(len(families), len(modes), figsize=(4.5 * len(modes), 4 * len(families)), squeeze=False)
    colors = {"eager": "tab:blue", "compile": "tab:orange", "triton": "tab:green"}
    panels = [(family, mode) for family in families for mode in modes]
    for ax, (family, mode) in zip(axes.flat, panels):
        for provider in PROVIDERS:
            for size in sorted({r["size"] for r in results if r["family"] == family}):
                pts = sorted(
                    (r["rows"], r["effective_gbps"])
                    for r in results
                    if (r["family"], r["mode"], r["provider"], r["size"]) == (family, mode, provider, size)
                )
                if pts:
                    x, y = zip(*pts)
                    label = f"{provider} {'A' if family == 'categorical' else 'D'}={size}"
                    ax.plot(x, y, marker="o", ms=3, color=colors[provider], alpha=0.35 + 0.65 * (size / 64) ** 0.3, label=label)
        ax.axhline(copy_gbps, color="gray", ls="--", lw=1, label="copy bandwidth")
        ax.set(xscale="log", yscale="log", xlabel="rows (envs x time x agents)", ylabel="effective GB/s",
               title=f"{family} {mode}")
        ax.legend(fontsize=6)
    fig.suptitle(f"MAGPO loss, fp32, {device_name}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (eager/compile only)")
    parser.add_argument("--family", choices=("categorical", "normal", "both"), default="both")
    parser.add_argument("--providers", default=",".join(PROVIDERS), help=f"comma list of {PROVIDERS}")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {MODES}")
    parser.add_argument("--rows", default="12,14,16,18,20,22", help="comma list of log2(rows), each in 1..26")
    parser.add_argument("--sizes", default=None, help="comma list of A (categorical) or D (normal) values")
    parser.add_argument("--csv", type=Path, default=Path("benchmarks/results/kernels.csv"))
    parser.add_argument("--png", type=Path, default=None, help="default: next to --csv, named after the device")
    args = parser.parse_args(argv)

    providers = tuple(p for p in args.providers.split(",") if p)
    modes = tuple(m for m in args.modes.split(",") if m)
    for name, values, allowed in (("--providers", providers, PROVIDERS), ("--modes", modes, MODES)):
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            parser.error(f"{name} must be a non-empty comma list of {allowed}, got {bad or values}")
    try:
        exponents = [int(e) for e in args.rows.split(",")]
        sizes = None if args.sizes is None else [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error("--rows and --sizes take comma lists of integers")
    if not all(1 <= e <= 26 for e in exponents):
        parser.error(f"--rows exponents must be in 1..26, got {exponents}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here: benchmark the kernels on a GPU, or pass --device cpu --providers eager,compile")
    if args.device == "cpu" and "triton" in providers:
        parser.error("--device cpu cannot time the Triton provider (the interpreter is a simulator, not a benchmark)")
    families = ("categorical", "normal") if args.family == "both" else (args.family,)
    if sizes is not None and not all(s >= 1 for s in sizes):
        parser.error(f"--sizes must be >= 1, got {sizes}")

    bench = timer(args.device)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU {platform.processor() or platform.machine()}"
    copy_gbps = copy_bandwidth_gbps(args.device, bench)
    import triton

    stamp = dict(torch=torch.__version__, triton=triton.__version__, date=datetime.date.today().isoformat())
    print(f"{device_name}: copy bandwidth {copy_gbps:.1f} GB/s; torch {stamp['torch']}, triton {stamp['triton']}")
    print(f"{'family':12s}{'mode':10s}{'rows':>9s}{'size':>6s}{'provider':>10s}{'p50 ms':>10s}{'GB/s':>9s}{'of copy':>9s}")
    results = []
    for family in families:
        for size in sizes or DEFAULT_SIZES[family]:
            if family == "normal" and size > 64:
                parser.error(f"normal sizes (D) must be <= 64, got {size}")
            for exponent in exponents:
                rows = 1 << exponent
                for provider in providers:
                    timings = measure(family, provider, rows, size, args.device, bench)
                    for mode in modes:
                        p20, p50, p80 = timings[mode]
                        nbytes = min_bytes(family, rows, size, mode)
                        gbps = nbytes / (p50 * 1e-3) / 1e9 if p50 > 0 else float("nan")
                        results.append(dict(
                            device=device_name, provider=provider, family=family, mode=mode, rows=rows, size=size,
                            dtype="float32", p20_ms=round(p20, 5), p50_ms=round(p50, 5), p80_ms=round(p80, 5),
                            min_bytes=nbytes, effective_gbps=round(gbps, 2), copy_gbps=round(copy_gbps, 2),
                            fraction_of_copy=round(gbps / copy_gbps, 4), **stamp,
                        ))
                        print(f"{family:12s}{mode:10s}{rows:9d}{size:6d}{provider:>10s}{p50:10.4f}{gbps:9.1f}{gbps / copy_gbps:9.1%}")
                    if args.device.startswith("cuda"):
                        torch.cuda.empty_cache()
    upsert(args.csv, results)
    png = args.png or args.csv.with_name(f"kernels_{''.join(c if c.isalnum() else '_' for c in device_name)}.png")
    plot(png, results, device_name, copy_gbps)
    print(f"wrote {args.csv} and {png}")


if __name__ == "__main__":
    main()
