"""`make bench`: vislib side by side with Captum, pytorch-grad-cam and torchcam, and against the
cost floor (the forward and backward passes a method cannot avoid), in one run.

Machines are noisy, so every case alternates its contenders within one run and reports the
median of several repeats after a warm-up, as ratios: vislib / fastest peer and vislib / floor.
Peak memory is the largest rise of the process's resident memory during one call (sampled).
Writes the table to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn as nn

from vislib import activations, cam, saliency
from vislib.data import make_shapes
from vislib.models import shapes_net, torchvision_model

ROOT = Path(__file__).resolve().parent.parent
PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def peak_rise_mib(fn) -> float:
    """Run ``fn`` once while a thread samples resident memory; the largest rise in MiB. Memory
    that earlier calls freed is first handed back to the system (glibc's ``malloc_trim``), or
    ``fn`` would reuse it unseen."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base, peak, running = resident_bytes(), [0], [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], resident_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        fn()
    finally:
        running[0] = False
        sampler.join()
    return max(0, max(peak[0], resident_bytes()) - base) / 2**20


def race(contenders: dict, repeats: int) -> tuple[dict, float]:
    """Median seconds per contender (one warm-up each, then ``repeats`` rounds, alternating) and
    vislib's peak memory rise, sampled during its warm-up call."""
    memory = 0.0
    for name, fn in contenders.items():
        if name == "vislib":
            memory = peak_rise_mib(fn)
        else:
            fn()
    names = list(contenders)
    times = {name: [] for name in names}
    for round_ in range(repeats):  # each round starts with the next contender: no one always runs first
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, memory


def fastest(candidates: dict):
    """The key of the candidate that ran fastest in one timed call each (a peer's best setting,
    or the batching at which the floor's passes cost least)."""
    seconds = {}
    for key, fn in candidates.items():
        start = time.perf_counter()
        fn()
        seconds[key] = time.perf_counter() - start
    return min(seconds, key=seconds.get)


def non_inplace(model: nn.Module) -> nn.Module:
    """A copy whose ReLUs are not inplace: Captum's module hooks need that."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return twin


def backward_to_input_floor(model: nn.Module, x: torch.Tensor, target: torch.Tensor, batch_sizes=(None,)):
    """Forward and backward passes to the input, the cost of any input-gradient method: in one
    batch, or over ``x`` in chunks at the fastest of ``batch_sizes``."""
    model = copy.deepcopy(model).requires_grad_(False)

    def passes(batch_size):
        def run():
            for part in range(0, len(x), batch_size or len(x)):
                chunk = slice(part, part + (batch_size or len(x)))
                inputs = x[chunk].detach().requires_grad_(True)
                torch.autograd.grad(model(inputs).gather(1, target[chunk, None]).sum(), inputs)
        return run

    return passes(fastest({b: passes(b) for b in batch_sizes}) if len(batch_sizes) > 1 else batch_sizes[0])


def backward_to_layer_floor(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str):
    """One forward pass and the backward pass from the class scores down to ``layer``: what
    Grad-CAM needs (the layer's activations and their gradient), and nothing below it."""
    model = copy.deepcopy(model).requires_grad_(False)
    seen = []

    def start_graph_here(module, inputs, output):
        seen.append(output.detach().requires_grad_(True))
        return seen[-1].clone()

    model.get_submodule(layer).register_forward_hook(start_graph_here)

    def run():
        seen.clear()
        torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), seen[-1])

    return run


def forwards_floor(model: nn.Module, x: torch.Tensor, passes: int, batch_sizes):
    """``passes`` forward passes of images like ``x`` without gradients, at the fastest batching."""
    copies = x[:1].expand(max(batch_sizes), *x.shape[1:]).contiguous()

    def forwards(batch_size):
        @torch.no_grad()
        def run():
            for start in range(0, passes, batch_size):
                model(copies[: min(batch_size, passes - start)])
        return run

    return forwards(fastest({b: forwards(b) for b in batch_sizes}))


# --------------------------------------------------------------------------- cases
# Each case returns its contenders {name: zero-argument call}; "vislib" and "floor" are always there.


def grad_cam_case(model, x, target, layer):
    from captum.attr import LayerAttribution, LayerGradCam
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import GradCAM as TorchcamGradCAM

    pgc_model, tc_model, cap_model = copy.deepcopy(model), copy.deepcopy(model), non_inplace(model)
    pgc = GradCAM(pgc_model, target_layers=[pgc_model.get_submodule(layer)])
    pgc_targets = [ClassifierOutputTarget(int(t)) for t in target]
    tc = TorchcamGradCAM(tc_model, target_layer=layer, input_shape=tuple(x.shape[1:]))
    cap = LayerGradCam(cap_model, cap_model.get_submodule(layer))
    classes = target.tolist()

    def torchcam_run():
        tc(classes, tc_model(x))

    def captum_run():
        maps = cap.attribute(x, target=target, relu_attributions=True)
        LayerAttribution.interpolate(maps, x.shape[-2:], interpolate_mode="bilinear")

    return {
        "vislib": lambda: cam.grad_cam(model, x, target, layer=layer),
        "pytorch-grad-cam": lambda: pgc(x, pgc_targets),
        "torchcam": torchcam_run,
        "Captum": captum_run,
        "floor": backward_to_layer_floor(model, x, target, layer),
    }


def gradient_case(model, x, target, method):
    from captum.attr import GuidedBackprop, Saliency

    cap_model = non_inplace(model)
    reference = {"gradient": Saliency(cap_model), "guided backprop": GuidedBackprop(cap_model)}[method]
    ours = {"gradient": saliency.gradient, "guided backprop": saliency.guided_backprop}[method]
    kwargs = {"abs": False} if method == "gradient" else {}
    return {
        "vislib": lambda: ours(model, x, target),
        "Captum": lambda: reference.attribute(x, target=target, **kwargs),
        "floor": backward_to_input_floor(model, x, target),
    }


def integrated_gradients_case(model, x, target, steps=50):
    """vislib at its default batching; Captum at its best ``internal_batch_size``; the floor is
    one forward and backward pass per point of the path, at its best batching."""
    from captum.attr import IntegratedGradients

    reference = IntegratedGradients(non_inplace(model))
    batch_sizes = (16, 32, 64, steps * len(x))

    def captum(batch_size):
        return lambda: reference.attribute(x, target=target, n_steps=steps, internal_batch_size=batch_size)

    best = fastest({b: captum(b) for b in batch_sizes})
    path = x.repeat_interleave(steps, 0)
    return {
        "vislib": lambda: saliency.integrated_gradients(model, x, target, steps=steps, progress=False),
        f"Captum (internal_batch_size={best})": captum(best),
        "floor": backward_to_input_floor(model, path, target.repeat_interleave(steps), batch_sizes),
    }


def occlusion_case(model, x, target, window=16, stride=8):
    """vislib at its default batching; Captum at its best ``perturbations_per_eval``; the floor is
    one forward pass per window position plus the original image, at its best batching."""
    from captum.attr import Occlusion

    reference = Occlusion(model)
    positions = ((x.shape[-2] - window) // stride + 1) * ((x.shape[-1] - window) // stride + 1)

    def captum(per_eval):
        return lambda: reference.attribute(x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                                           target=target, baselines=0.0, perturbations_per_eval=per_eval)

    best = fastest({n: captum(n) for n in (2, 4, 16, 64)})
    return {
        "vislib": lambda: saliency.occlusion(model, x, target, window=window, stride=stride, progress=False),
        f"Captum (perturbations_per_eval={best})": captum(best),
        "floor": forwards_floor(model, x, (positions + 1) * len(x), batch_sizes=(2, 3, 4, 8)),
    }


def top_patches_case(model, images, layer, floor_batch):
    @torch.no_grad()
    def floor():  # a bare forward pass over the same data
        for batch in images.split(floor_batch):
            model(batch)

    return {
        "vislib": lambda: activations.top_patches(model, images, layer, k=9, progress=False),
        "floor": floor,
    }


# --------------------------------------------------------------------------- the run


def notebook_times() -> dict:
    """Each notebook executed top to bottom in a fresh kernel, as a learner would run it."""
    times = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        print(f"notebook {path.stem} ...", flush=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                        "--stdout", str(path)], check=True, capture_output=True)
        times[path.stem] = time.perf_counter() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--no-notebooks", action="store_true", help="skip timing the notebooks")
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()

    shapes = shapes_net()
    resnet = torchvision_model("resnet18", pretrained=False)
    photos = torch.randn(8, 3, 224, 224)
    photo_targets = torch.arange(8) * 111 % 1000
    small = make_shapes(256, seed=1)
    big = make_shapes(1, seed=2, size=224)
    cases = [
        ("Grad-CAM", "ResNet-18 (random)", photos, args.repeats,
         lambda: grad_cam_case(resnet, photos, photo_targets, "layer4")),
        ("Grad-CAM", "ShapesNet", small.images, args.repeats,
         lambda: grad_cam_case(shapes, small.images, small.labels, "features.relu4")),
        ("gradient", "ResNet-18 (random)", photos, args.repeats,
         lambda: gradient_case(resnet, photos, photo_targets, "gradient")),
        ("guided backprop", "ResNet-18 (random)", photos, args.repeats,
         lambda: gradient_case(resnet, photos, photo_targets, "guided backprop")),
        ("integrated gradients, 50 steps", "ShapesNet", small.images[:16], args.repeats,
         lambda: integrated_gradients_case(shapes, small.images[:16], small.labels[:16])),
        ("occlusion, window 16, stride 8", "ShapesNet", big.images, max(2, args.repeats // 3),
         lambda: occlusion_case(shapes, big.images, big.labels)),
    ]

    rows = []
    for name, model_name, x, repeats, build in cases:
        print(f"{name} on {model_name} ({time.perf_counter() - started:.0f} s) ...", flush=True)
        contenders = build()
        times, memory = race(contenders, repeats)
        rows.append(row(name, model_name, x, times, memory))

    floor_batch = None
    for n in (1000, 10_000):
        data = make_shapes(n, seed=3)
        print(f"top_patches over {n:,} shapes ({time.perf_counter() - started:.0f} s) ...", flush=True)
        if floor_batch is None:  # the batching at which a bare forward pass runs fastest, found on 1,000 images
            floor_batch = fastest({b: top_patches_case(shapes, data.images, "features.relu3", b)["floor"]
                                   for b in (16, 32, 64, 256)})
        times, memory = race(top_patches_case(shapes, data.images, "features.relu3", floor_batch),
                             repeats=3 if n == 10_000 else args.repeats)
        rows.append(row(f"top_patches, {n:,} images", "ShapesNet", data.images[:1], times, memory, batch=n))

    notebooks = {} if args.no_notebooks else notebook_times()
    write(rows, notebooks, time.perf_counter() - started)


def row(case, model_name, x, times, memory, batch=None):
    peers = {k: v for k, v in times.items() if k not in ("vislib", "floor")}
    fastest_peer = min(peers.values()) if peers else None
    return {
        "case": case, "model": model_name, "input": f"{x.shape[-1]} px", "batch": batch or len(x),
        "vislib": times["vislib"], "peers": peers, "floor": times["floor"],
        "vs_peer": times["vislib"] / fastest_peer if fastest_peer else None,
        "vs_floor": times["vislib"] / times["floor"], "memory": memory,
    }


def write(rows, notebooks, seconds) -> None:
    def ms(t):
        return f"{1000 * t:,.0f} ms"

    lines = [
        "# Benchmarks",
        "",
        f"`make bench` on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {time.strftime('%Y-%m-%d')}. Each time is the median of several repeats after a "
        "warm-up; contenders alternate within one run. Ratios below 1 mean vislib is faster. vislib runs with "
        "its defaults; a peer with a batching option runs at its fastest setting, found in the same run.",
        "",
        "The floor is the work a method cannot avoid, measured on the same model and input: for Grad-CAM, "
        "one forward pass and the backward pass from the class scores down to the layer; for the gradient "
        "methods, one forward and one backward pass to the input per image (per point of the path for "
        "integrated gradients, at the fastest batching); for occlusion, one forward pass per window "
        "position plus the original, at the fastest batching; for top_patches, a bare forward pass over the "
        "data. Peak memory is the largest rise of resident memory during one vislib call.",
        "",
        "| case | model | input | batch | vislib | peers | vislib / fastest peer | floor | vislib / floor "
        "| peak memory |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        peers = "; ".join(f"{k} {ms(v)}" for k, v in r["peers"].items()) or "none"
        vs_peer = f"{r['vs_peer']:.2f}" if r["vs_peer"] is not None else "n/a"
        lines.append(f"| {r['case']} | {r['model']} | {r['input']} | {r['batch']:,} | {ms(r['vislib'])} | {peers} "
                     f"| {vs_peer} | {ms(r['floor'])} | {r['vs_floor']:.2f} | {r['memory']:.0f} MiB |")
    if notebooks:
        lines += ["", "| notebook | run time (fresh kernel, top to bottom) |", "| --- | --- |"]
        lines += [f"| {name} | {t:.1f} s |" for name, t in notebooks.items()]
        lines.append(f"| whole course | {sum(notebooks.values()):.1f} s |")
    lines += ["", f"Benchmark run time: {seconds / 60:.1f} min.", ""]
    text = "\n".join(lines)
    (ROOT / "benchmarks" / "RESULTS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
