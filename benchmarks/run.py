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
    """Run ``fn`` once while a thread samples resident memory; the largest rise in MiB."""
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


def race(contenders: dict, repeats: int) -> dict:
    """Median seconds per contender: one warm-up each, then ``repeats`` rounds, alternating."""
    for fn in contenders.values():
        fn()
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def non_inplace(model: nn.Module) -> nn.Module:
    """A copy whose ReLUs are not inplace: Captum's module hooks need that."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return twin


def forward_backward_floor(model: nn.Module, x: torch.Tensor, target: torch.Tensor):
    """One forward and one backward pass to the input: what any gradient method must pay."""
    model = copy.deepcopy(model).requires_grad_(False)

    def run():
        xg = x.detach().requires_grad_(True)
        model(xg).gather(1, target[:, None]).sum().backward()

    return run


# --------------------------------------------------------------------------- cases


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

    contenders = {
        "vislib": lambda: cam.grad_cam(model, x, target, layer=layer),
        "pytorch-grad-cam": lambda: pgc(x, pgc_targets),
        "torchcam": torchcam_run,
        "Captum": captum_run,
        "floor": forward_backward_floor(model, x, target),
    }
    return contenders, lambda: tc.remove_hooks() or pgc.activations_and_grads.release()


def gradient_case(model, x, target, method):
    from captum.attr import GuidedBackprop, Saliency

    cap_model = non_inplace(model)
    reference = {"gradient": Saliency(cap_model), "guided backprop": GuidedBackprop(cap_model)}[method]
    ours = {"gradient": saliency.gradient, "guided backprop": saliency.guided_backprop}[method]
    kwargs = {"abs": False} if method == "gradient" else {}
    return {
        "vislib": lambda: ours(model, x, target),
        "Captum": lambda: reference.attribute(x, target=target, **kwargs),
        "floor": forward_backward_floor(model, x, target),
    }, None


def integrated_gradients_case(model, x, target, steps=50):
    from captum.attr import IntegratedGradients

    reference = IntegratedGradients(non_inplace(model))
    path = x.repeat_interleave(steps, 0)
    floor = forward_backward_floor(model, path, target.repeat_interleave(steps))
    return {
        "vislib": lambda: saliency.integrated_gradients(model, x, target, steps=steps, batch_size=len(path),
                                                        progress=False),
        "Captum": lambda: reference.attribute(x, target=target, n_steps=steps, internal_batch_size=len(path)),
        "floor": floor,
    }, None


def occlusion_case(model, x, target, window=16, stride=8, batch_size=64):
    from captum.attr import Occlusion

    reference = Occlusion(model)
    positions = ((x.shape[-2] - window) // stride + 1) * ((x.shape[-1] - window) // stride + 1)
    copies = x.repeat(batch_size, 1, 1, 1)

    @torch.no_grad()
    def floor():  # the forward passes occlusion cannot avoid: one per window position, plus the original
        for start in range(0, positions * len(x) + len(x), batch_size):
            model(copies[: min(batch_size, positions * len(x) + len(x) - start)])

    def captum(per_eval):
        return lambda: reference.attribute(x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                                           target=target, baselines=0.0, perturbations_per_eval=per_eval)

    # Captum at its best perturbations_per_eval: one timed call of each candidate picks it.
    candidates = {n: captum(n) for n in (16, 64, 256)}
    best = min(candidates, key=lambda n: race({n: candidates[n]}, repeats=1)[n])
    return {
        "vislib": lambda: saliency.occlusion(model, x, target, window=window, stride=stride, batch_size=batch_size,
                                             progress=False),
        f"Captum (perturbations_per_eval={best})": candidates[best],
        "floor": floor,
    }, None


def top_patches_case(model, images, layer):
    @torch.no_grad()
    def floor():  # the bare forward pass over the same data, with the same batches
        for batch in images.split(256):
            model(batch)

    return {
        "vislib": lambda: activations.top_patches(model, images, layer, k=9, progress=False),
        "floor": floor,
    }, None


# --------------------------------------------------------------------------- the run


def notebook_times() -> dict:
    """Each notebook executed top to bottom in a fresh kernel, as a learner would run it."""
    times = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                        "--stdout", str(path)], check=True, capture_output=True)
        times[path.stem] = time.perf_counter() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-notebooks", action="store_true", help="skip timing the notebooks")
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()

    shapes = shapes_net()
    resnet = torchvision_model("resnet18", pretrained=False)
    photos = torch.randn(8, 3, 224, 224)
    photo_targets = torch.arange(8) * 111 % 1000
    small = make_shapes(256, seed=1)
    cases = [
        ("Grad-CAM", "ResNet-18 (random)", photos, photo_targets,
         lambda: grad_cam_case(resnet, photos, photo_targets, "layer4")),
        ("Grad-CAM", "ShapesNet", small.images, small.labels,
         lambda: grad_cam_case(shapes, small.images, small.labels, "features.relu4")),
        ("gradient", "ResNet-18 (random)", photos, photo_targets,
         lambda: gradient_case(resnet, photos, photo_targets, "gradient")),
        ("guided backprop", "ResNet-18 (random)", photos, photo_targets,
         lambda: gradient_case(resnet, photos, photo_targets, "guided backprop")),
        ("integrated gradients, 50 steps", "ShapesNet", small.images[:16], small.labels[:16],
         lambda: integrated_gradients_case(shapes, small.images[:16], small.labels[:16])),
    ]
    big = make_shapes(1, seed=2, size=224)
    cases.append(("occlusion, window 16, stride 8", "ShapesNet", big.images, big.labels,
                  lambda: occlusion_case(shapes, big.images, big.labels)))

    rows = []
    for name, model_name, x, _, build in cases:
        print(f"{name} on {model_name} ...", flush=True)
        contenders, cleanup = build()
        times = race(contenders, args.repeats)
        memory = peak_rise_mib(contenders["vislib"])
        if cleanup:
            cleanup()
        rows.append(row(name, model_name, x, times, memory))

    for n in (1000, 10_000):
        data = make_shapes(n, seed=3)
        print(f"top_patches over {n:,} shapes ...", flush=True)
        contenders, _ = top_patches_case(shapes, data.images, "features.relu3")
        times = race(contenders, args.repeats if n == 10_000 else 1)
        memory = peak_rise_mib(contenders["vislib"])
        rows.append(row(f"top_patches, {n:,} images", "ShapesNet", data.images[:1], times, memory, batch=n))

    notebooks = {} if args.no_notebooks else notebook_times()
    write(rows, notebooks, time.perf_counter() - started)


def row(case, model_name, x, times, memory, batch=None):
    peers = {k: v for k, v in times.items() if k not in ("vislib", "floor")}
    fastest = min(peers.values()) if peers else None
    return {
        "case": case, "model": model_name, "input": f"{x.shape[-1]} px", "batch": batch or len(x),
        "vislib": times["vislib"], "peers": peers, "floor": times["floor"],
        "vs_peer": times["vislib"] / fastest if fastest else None, "vs_floor": times["vislib"] / times["floor"],
        "memory": memory,
    }


def write(rows, notebooks, seconds) -> None:
    def ms(t):
        return f"{1000 * t:,.0f} ms"

    lines = [
        "# Benchmarks",
        "",
        f"`make bench` on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {time.strftime('%Y-%m-%d')}. Median of several repeats after a warm-up; "
        "contenders alternate within one run. Ratios below 1 mean vislib is faster. The floor is the "
        "forward and backward passes the method cannot avoid (forward + backward to the input for gradient "
        "methods and Grad-CAM; one forward per window position for occlusion; a bare forward pass for "
        "top_patches). Peak memory: the largest rise of resident memory during one vislib call.",
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
