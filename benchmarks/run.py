"""`make bench`: vislib side by side with Captum, pytorch-grad-cam and torchcam, and against the
cost floor (the forward and backward passes a method cannot avoid), in one run.

Machines are noisy, so every case runs in a fresh process, alternates its contenders within one
run and reports the median of several rounds after a warm-up, as ratios: vislib / fastest peer and
vislib / floor.
Peak memory is the largest rise of the process's resident memory during one call (sampled).
Writes the table to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn

from vislib import activations, cam, saliency
from vislib.conventions import fast_layout, reuse_freed_memory
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


def race(contenders: dict, budget_s: float, min_rounds: int = 3, max_rounds: int = 25) -> tuple[dict, float]:
    """Seconds per round for each contender, and vislib's peak memory rise: one warm-up call
    each, which pays the one-time costs (kernels, caches); one more vislib call, untimed, whose
    memory is sampled; then as many rounds as fit in ``budget_s`` (within ``min_rounds`` and
    ``max_rounds``), every contender once per round."""
    started = time.perf_counter()
    for fn in contenders.values():
        fn()
    per_round = time.perf_counter() - started
    memory = peak_rise_mib(contenders["vislib"])
    rounds = int(max(min_rounds, min(max_rounds, budget_s // per_round)))
    names = list(contenders)
    times = {name: [] for name in names}
    for round_ in range(rounds):  # each round starts with the next contender: no one always runs first
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return times, memory


def non_inplace(model: nn.Module) -> nn.Module:
    """A copy whose ReLUs are not inplace: Captum's module hooks need that."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return twin


def backward_to_input_floor(model: nn.Module, x: torch.Tensor, target: torch.Tensor, batch_size: int | None = None):
    """Forward and backward passes to the input, the cost of any input-gradient method: over
    ``x`` in one batch, or in chunks of ``batch_size``."""
    model, x = copy.deepcopy(model).requires_grad_(False), fast_layout(x)
    size = batch_size or len(x)

    def run():
        for start in range(0, len(x), size):
            inputs = x[start : start + size].detach().requires_grad_(True)
            torch.autograd.grad(model(inputs).gather(1, target[start : start + size, None]).sum(), inputs)

    return run


def backward_to_layer_floor(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str):
    """One forward pass and the backward pass from the class scores down to ``layer``: what
    Grad-CAM needs (the layer's activations and their gradient), and nothing below it."""
    model, x = copy.deepcopy(model).requires_grad_(False), fast_layout(x)
    seen = []

    def start_graph_here(module, inputs, output):
        seen.append(output.detach().requires_grad_(True))
        return seen[-1].clone()

    model.get_submodule(layer).register_forward_hook(start_graph_here)

    def run():
        seen.clear()
        torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), seen[-1])

    return run


def forwards_floor(model: nn.Module, x: torch.Tensor, passes: int, batch_size: int):
    """``passes`` forward passes of images like ``x`` without gradients, ``batch_size`` at a time."""
    copies = fast_layout(x[:1].expand(batch_size, *x.shape[1:]))

    @torch.no_grad()
    def run():
        for start in range(0, passes, batch_size):
            model(copies[: min(batch_size, passes - start)])

    return run


# --------------------------------------------------------------------------- cases
# Each case returns its contenders {name: zero-argument call}: "vislib", the peers, and the floor.
# Where batching matters, each setting of a peer ("Captum (internal_batch_size=32)") and of the
# floor ("floor (batches of 32)") races on its own, and the table keeps the fastest of each.


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


PGC_NAMES = {"grad_cam_pp": "GradCAMPlusPlus", "xgrad_cam": "XGradCAM", "layer_cam": "LayerCAM",
             "hires_cam": "HiResCAM", "eigen_cam": "EigenCAM", "score_cam": "ScoreCAM", "ablation_cam": "AblationCAM"}
TORCHCAM_NAMES = {"grad_cam_pp": "GradCAMpp", "xgrad_cam": "XGradCAM", "layer_cam": "LayerCAM", "score_cam": "ScoreCAM"}
PERTURBATION_BATCHES = (16, 32, 64)


def forward_to_layer_floor(model: nn.Module, x: torch.Tensor, layer: str):
    """One forward pass up to ``layer`` and no further, without gradients: all Eigen-CAM must run."""
    model, x = copy.deepcopy(model), fast_layout(x)

    class Reached(Exception):
        pass

    def stop(module, inputs, output):
        raise Reached

    model.get_submodule(layer).register_forward_hook(stop)

    @torch.no_grad()
    def run():
        try:
            model(x)
        except Reached:
            pass

    return run


def cam_family_case(model, x, target, layer, method):
    """A CAM variant against pytorch-grad-cam's and (where it has it) torchcam's. Floors: the forward
    and backward passes to the layer for the gradient methods; the forward pass to the layer for
    Eigen-CAM; for Score-CAM and Ablation-CAM one forward pass per channel and image, in batches."""
    import pytorch_grad_cam
    import torchcam.methods
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    perturbation = method in ("score_cam", "ablation_cam")
    pgc_targets = [ClassifierOutputTarget(int(t)) for t in target]
    contenders = {"vislib": (lambda: getattr(cam, method)(model, x, target, layer=layer, progress=False))
                  if perturbation else (lambda: getattr(cam, method)(model, x, target, layer=layer))}
    pgc_model = copy.deepcopy(model)
    pgc_class = getattr(pytorch_grad_cam, PGC_NAMES[method])
    for batch in PERTURBATION_BATCHES if perturbation else (None,):
        extractor = pgc_class(pgc_model, target_layers=[pgc_model.get_submodule(layer)])
        label = "pytorch-grad-cam" if batch is None else f"pytorch-grad-cam (batch_size={batch})"
        if batch is not None:
            extractor.batch_size = batch
        contenders[label] = lambda extractor=extractor: extractor(x, pgc_targets)
    if method in TORCHCAM_NAMES:
        tc_model = copy.deepcopy(model)
        tc_class = getattr(torchcam.methods, TORCHCAM_NAMES[method])
        for batch in PERTURBATION_BATCHES if perturbation else (None,):
            options = {} if batch is None else {"batch_size": batch}
            extractor = tc_class(tc_model, target_layer=layer, input_shape=tuple(x.shape[1:]), **options)
            label = "torchcam" if batch is None else f"torchcam (batch_size={batch})"
            if perturbation:
                def run(extractor=extractor):
                    with torch.no_grad():
                        tc_model(x)
                    extractor(target.tolist())
            else:
                def run(extractor=extractor):
                    extractor(target.tolist(), tc_model(x))
            contenders[label] = run
    if perturbation:
        channels = _channels_of(model, x, layer)
        for batch in PERTURBATION_BATCHES:
            contenders[f"floor (batches of {batch})"] = forwards_floor(model, x, len(x) * channels, batch)
    elif method == "eigen_cam":
        contenders["floor"] = forward_to_layer_floor(model, x, layer)
    else:
        contenders["floor"] = backward_to_layer_floor(model, x, target, layer)
    return contenders


def _channels_of(model: nn.Module, x: torch.Tensor, layer: str) -> int:
    """How many channels ``layer`` outputs for images like ``x``."""
    seen = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    with torch.no_grad():
        model(x[:1])
    handle.remove()
    return seen[0]


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
    """vislib at its default batching; Captum at each batching; the floor (one forward and
    backward pass per point of the path) in batches of 32 and 64: batches of 16 were slower in
    both full runs since the allocator setting (``run_case``)."""
    from captum.attr import IntegratedGradients

    reference = IntegratedGradients(non_inplace(model))
    path, path_target = x.repeat_interleave(steps, 0), target.repeat_interleave(steps)

    def captum(batch_size):
        return lambda: reference.attribute(x, target=target, n_steps=steps, internal_batch_size=batch_size)

    return {
        "vislib": lambda: saliency.integrated_gradients(model, x, target, steps=steps, progress=False),
        **{f"Captum (internal_batch_size={b})": captum(b) for b in (16, 32, 64)},
        **{f"floor (batches of {b})": backward_to_input_floor(model, path, path_target, b) for b in (32, 64)},
    }


def occlusion_case(model, x, target, window=16, stride=8):
    """vislib at its default batching; Captum at each ``perturbations_per_eval``; the floor (one
    forward pass per window position, plus the original image) in batches of 8: batches of 3
    were slower in both full runs since the allocator setting (``run_case``)."""
    from captum.attr import Occlusion

    reference = Occlusion(model)
    passes = (((x.shape[-2] - window) // stride + 1) * ((x.shape[-1] - window) // stride + 1) + 1) * len(x)

    def captum(per_eval):
        return lambda: reference.attribute(x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                                           target=target, baselines=0.0, perturbations_per_eval=per_eval)

    return {
        "vislib": lambda: saliency.occlusion(model, x, target, window=window, stride=stride, progress=False),
        **{f"Captum (perturbations_per_eval={n})": captum(n) for n in (4, 8, 16)},
        "floor (batches of 8)": forwards_floor(model, x, passes, 8),
    }


def top_patches_case(n: int):
    """top_patches over ``n`` shapes; the floor is a bare forward pass over them in batches of 64
    (batches of 32 were slower in every full run)."""
    model, images = shapes_net(), make_shapes(n, seed=3).images
    laid_out = fast_layout(images)

    def forwards(batch_size):
        @torch.no_grad()
        def run():
            for batch in laid_out.split(batch_size):
                model(batch)
        return run

    return {
        "vislib": lambda: activations.top_patches(model, images, "features.relu3", k=9, progress=False),
        "floor (batches of 64)": forwards(64),
    }


# --------------------------------------------------------------------------- the run


NOTEBOOK_TARGET_S = 60.0  # each notebook, top to bottom on a quiet 2-core CPU


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


class Case(NamedTuple):
    """One row of the table. ``build()`` makes the models and data and returns the contenders;
    it runs in the case's own process. ``min_rounds``: five where several batchings race and a
    round is long, so that the median ratio rests on more than the three pairs the budget allows;
    nine for Score-CAM and Ablation-CAM, whose ten contenders make a round last about 3 s: with five
    rounds their ratio moved between 0.90 and 1.05 from run to run (the control row: 1.04)."""

    name: str
    model: str
    size: int
    batch: int
    build: Callable[[], dict]
    min_rounds: int = 3


def cases() -> list[Case]:
    def photos():
        torch.manual_seed(0)
        model = torchvision_model("resnet18", pretrained=False)
        return model, torch.randn(8, 3, 224, 224), torch.arange(8) * 111 % 1000

    def shapes(n, size=64):
        data = make_shapes(n, seed=1 if size == 64 else 2, size=size)
        return shapes_net(), data.images, data.labels

    def control():
        model, x, target = photos()
        return {"vislib": lambda: saliency.gradient(model, x, target),
                "the same call": lambda: saliency.gradient(model, x, target),
                "floor": backward_to_input_floor(model, x, target)}

    return [
        Case("Grad-CAM", "ResNet-18 (random)", 224, 8, lambda: grad_cam_case(*photos(), "layer4")),
        Case("Grad-CAM", "ShapesNet", 64, 256, lambda: grad_cam_case(*shapes(256), "features.relu4")),
        Case("gradient", "ResNet-18 (random)", 224, 8, lambda: gradient_case(*photos(), "gradient")),
        Case("control: vislib's gradient against itself", "ResNet-18 (random)", 224, 8, control),
        Case("guided backprop", "ResNet-18 (random)", 224, 8, lambda: gradient_case(*photos(), "guided backprop")),
        Case("integrated gradients, 50 steps", "ShapesNet", 64, 16, lambda: integrated_gradients_case(*shapes(16)),
             min_rounds=5),
        Case("occlusion, window 16, stride 8", "ShapesNet", 224, 1, lambda: occlusion_case(*shapes(1, size=224)),
             min_rounds=5),
        *[Case(label, "ResNet-18 (random)", 224, 8, lambda method=method: cam_family_case(*photos(), "layer4", method))
          for label, method in (("Grad-CAM++", "grad_cam_pp"), ("XGrad-CAM", "xgrad_cam"), ("LayerCAM", "layer_cam"),
                                ("HiResCAM", "hires_cam"), ("Eigen-CAM", "eigen_cam"))],
        *[Case(f"{label}, 128 channels", "ShapesNet", 64, 8,
               lambda method=method: cam_family_case(*shapes(8), "features.relu4", method), min_rounds=9)
          for label, method in (("Score-CAM", "score_cam"), ("Ablation-CAM", "ablation_cam"))],
        Case("top_patches, 1,000 images", "ShapesNet", 64, 1000, lambda: top_patches_case(1000)),
        Case("top_patches, 10,000 images", "ShapesNet", 64, 10_000, lambda: top_patches_case(10_000)),
    ]


PAGE_FAULTS_OF_FORWARD_PASSES = """
import resource, sys, torch
from vislib.conventions import reuse_freed_memory
from vislib.models import shapes_net

model, x = shapes_net(), torch.rand(3, 3, 224, 224).contiguous(memory_format=torch.channels_last)
if sys.argv[1] == "reuse":
    reuse_freed_memory()
faults = []
with torch.no_grad():
    for _ in range(30):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        model(x)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[10:]))
"""


def page_faults_of_forward_passes(mode: str) -> int:
    """Page faults of ShapesNet's passes 11 to 30 over 3 images of 224 px in a fresh process (the
    allocator's state belongs to the process), without (``"plain"``) or after (``"reuse"``)
    ``reuse_freed_memory``. A measurement of this machine, so it is reported here, never asserted
    in a unit test."""
    done = subprocess.run([sys.executable, "-c", PAGE_FAULTS_OF_FORWARD_PASSES, mode], capture_output=True,
                          text=True, check=True)
    return int(done.stdout)


def run_case(index: int, budget_s: float) -> None:
    """Run one case in this process and print its result as JSON (the parent collects it). The
    allocator is first set to keep freed memory, as vislib's many-pass methods do on their first
    call, so that every contender runs in the same state from the start."""
    reuse_freed_memory()
    case = cases()[index]
    times, memory = race(case.build(), budget_s, case.min_rounds)
    print(json.dumps({"times": times, "memory": memory}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=10, help="seconds of timed rounds per case")
    parser.add_argument("--no-notebooks", action="store_true", help="skip timing the notebooks")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args()
    if args.case is not None:
        return run_case(args.case, args.budget)

    started, rows = time.perf_counter(), []
    for index, (name, model_name, size, batch, *_) in enumerate(cases()):
        print(f"{name} on {model_name} ({time.perf_counter() - started:.0f} s) ...", flush=True)
        # a fresh process per case, so no case inherits another's memory state
        done = subprocess.run([sys.executable, __file__, "--case", str(index), "--budget", str(args.budget)],
                              check=True, capture_output=True, text=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row(name, model_name, size, batch, result))

    faults = {mode: page_faults_of_forward_passes(mode) for mode in ("plain", "reuse")}
    notebooks = {} if args.no_notebooks else notebook_times()
    write(rows, faults, notebooks, time.perf_counter() - started)
    over = {name: t for name, t in notebooks.items() if t > NOTEBOOK_TARGET_S}
    if over:  # the 60 s target is enforced here, on a quiet machine, not by make test
        sys.exit(f"notebooks over the {NOTEBOOK_TARGET_S:.0f} s target: "
                 + ", ".join(f"{name} {t:.1f} s" for name, t in over.items()))


def row(case, model_name, size, batch, result):
    """One line of the table: for each peer and for the floor, its fastest setting (lowest median
    time over the rounds). A ratio is the median of the per-round ratios, whose two times were
    taken seconds apart, so a slow spell of the machine does not land on one contender only."""
    rounds = result["times"]
    medians = {name: statistics.median(times) for name, times in rounds.items()}

    def best_setting(names):
        return min(names, key=medians.get) if names else None

    floor = best_setting([n for n in medians if n.startswith("floor")])
    libraries = {n.split(" (")[0] for n in medians if n != "vislib" and not n.startswith("floor")}
    peers = {best_setting([n for n in medians if n.split(" (")[0] == lib]) for lib in sorted(libraries)}
    peers = {n: medians[n] for n in sorted(peers)}

    def ratio(other):
        return statistics.median(ours / theirs for ours, theirs in zip(rounds["vislib"], rounds[other]))

    return {
        "case": case, "model": model_name, "input": f"{size} px", "batch": batch, "rounds": len(rounds["vislib"]),
        "vislib": medians["vislib"], "peers": peers, "floor": medians[floor], "floor_setting": floor,
        "vs_peer": ratio(min(peers, key=peers.get)) if peers else None,
        "vs_floor": ratio(floor), "memory": result["memory"],
    }


def write(rows, faults, notebooks, seconds) -> None:
    def ms(t):
        return f"{1000 * t:,.0f} ms"

    lines = [
        "# Benchmarks",
        "",
        f"`make bench` on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {time.strftime('%Y-%m-%d')}. Each case runs in a fresh process; each time is "
        "the median of several rounds after a warm-up, the contenders taking turns within each round and a "
        "different one starting each round. A ratio is the median of the per-round ratios (vislib against the "
        "peer with the lowest median, or against the floor). Ratios below 1 mean vislib is faster. vislib "
        "runs with its defaults; a peer with a batching option runs at several settings in the same race, "
        "and the table shows its fastest. "
        "The control row times one vislib call against itself: its distance from 1.00 is the noise of "
        "this machine.",
        "",
        "The floor is the work a method cannot avoid, measured on the same model and input: for Grad-CAM, "
        "one forward pass and the backward pass from the class scores down to the layer; for the gradient "
        "methods, one forward and one backward pass to the input per image (per point of the path for "
        "integrated gradients); for occlusion, one forward pass per window position plus the original; "
        "for top_patches, a bare forward pass over the data. Each floor runs at the batchings that were "
        "fastest in earlier runs; where two race, the table keeps the faster. The floors read channels-last "
        "inputs, prepared beforehand. Peak "
        "memory is the largest rise of resident memory during one vislib call after the warm-up.",
        "",
        "Allocator: each case's process first calls `vislib.conventions.reuse_freed_memory`, as vislib's "
        "many-pass methods do on their first call, so glibc keeps freed memory for every contender. Without "
        "it, glibc may hand each pass's memory back to the system and fault it in again on the next pass, "
        "and which contender it happens to is a matter of the process's history, not of the method: one "
        "occlusion call took 4.1 s in one process and 6.8 s, with 1.1 million page faults, in another. "
        "vislib's default batches (`vislib.conventions.copies_per_pass`, on a CPU about 2^18 pixels per "
        "forward pass, 2^17 when a backward pass follows) keep each activation below 32 MB, above which "
        "glibc always maps memory afresh. Measured in this run over ShapesNet's forward passes 11 to 30 "
        f"(3 images of 224 px, fresh processes): {faults['plain']:,} page faults without it, "
        f"{faults['reuse']:,} with it.",
        "",
        "| case | model | input | batch | rounds | vislib | peers | vislib / fastest peer | floor "
        "| vislib / floor | peak memory |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        peers = "; ".join(f"{k} {ms(v)}" for k, v in r["peers"].items()) or "none"
        vs_peer = f"{r['vs_peer']:.2f}" if r["vs_peer"] is not None else "n/a"
        lines.append(f"| {r['case']} | {r['model']} | {r['input']} | {r['batch']:,} | {r['rounds']} "
                     f"| {ms(r['vislib'])} | {peers} | {vs_peer} | {ms(r['floor'])}{r['floor_setting'][5:]} "
                     f"| {r['vs_floor']:.2f} | {r['memory']:.0f} MiB |")
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
