#!/usr/bin/python3
"""Cross-check of edgesplit's ONNX importer against PyTorch: the same models, the same inputs, the
same answers, and how long each takes. Optional: edgesplit itself never needs Python. Needs
Debian's python3-torch, python3-torchvision, python3-onnx and python3-numpy (run it with
/usr/bin/python3) and the `edgesplit` tool, built with the examples when ONNX import is on.

    /usr/bin/python3 scripts/onnx_torch_check.py [--tool build/dev/tools/edgesplit] [--work DIR]
        [--models resnet18 mobilenet_v2 squeezenet1_1 fmnist_cnn] [--runs 20]

For each model (torchvision's ResNet-18, MobileNetV2 and SqueezeNet 1.1 with weights=None, and the
Fashion-MNIST CNN of examples/fmnist_cnn.hpp rebuilt layer for layer, input [N, 1, 28, 28]):

  1. random weights from a fixed seed (torch.manual_seed), every BatchNorm given non-trivial
     statistics and affine parameters (running_mean ~ U(-0.5, 0.5), running_var ~ U(0.5, 2),
     weight ~ U(0.5, 1.5), bias ~ U(-0.5, 0.5)), then model.eval();
  2. torch.onnx.export at opset 17, input "input", output "logits", the batch axis dynamic,
     do_constant_folding=True (the file is checked with onnx.checker and its operators listed);
  3. at batch 1 and 8: random inputs (fixed seed) written as .npy, PyTorch's output against
     `edgesplit run`'s: max |diff| / max |torch output| must be <= --tol (1e-4) and the top-1
     class equal on every sample;
  4. timing, one thread, median of --runs calls after a warm-up: PyTorch eager under
     torch.no_grad(); PyTorch TorchScript, torch.jit.optimize_for_inference(torch.jit.freeze(
     torch.jit.script(model))) (torch.jit.trace when scripting fails; "-" when neither works);
     edgesplit through `run --repeat N` (its own timing of the forward pass only, no process
     start, file reading or import). The ratios are edgesplit's time over PyTorch's.

Exits with 1 when any accuracy check fails or the tool cannot import or run a model (its one-line
error is printed), with 2 on bad arguments or a missing tool. Files go to --work (kept) or to a
temporary directory (removed).

Timing notes: calls are timed by the wall clock (as `run --repeat` does), so run it on a quiet
machine. PyTorch's convolutions run in oneDNN; its Linear layers go to libblas.so.3, which is the
reference BLAS unless an optimized one (OpenBLAS) is installed: that weighs on the Fashion-MNIST
CNN's 3136x128 layer, little on the others.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torchvision

ALL_MODELS = ["resnet18", "mobilenet_v2", "squeezenet1_1", "fmnist_cnn"]
BATCHES = (1, 8)
SEED = 2026


sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_vision_bench import FmnistCnn as _FmnistCnn  # noqa: E402  examples/fmnist_cnn.hpp, layer for layer


def FmnistCnn():  # noqa: N802  Fashion-MNIST's pixel mean and std, as the examples standardize
    return _FmnistCnn(0.2860, 0.3530)


def build(name, seed):
    """The model `name` with random weights from `seed`, BatchNorm made non-trivial, in eval mode;
    and the shape of one sample."""
    torch.manual_seed(seed)
    if name == "fmnist_cnn":
        model, sample = FmnistCnn(), (1, 28, 28)
    else:
        model, sample = getattr(torchvision.models, name)(weights=None), (3, 224, 224)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval(), sample


def export(model, sample, path):
    """Writes `model` as ONNX (opset 17, dynamic batch) and returns the operators it uses."""
    x = torch.randn(2, *sample)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, x, str(path), opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, do_constant_folding=True)
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    return sorted({n.op_type for n in m.graph.node})


def median_ms(f, runs, warmup=5):
    """The median wall time of `runs` calls of f after `warmup` calls, in ms (the upper median for
    an even count, as `edgesplit run --repeat` reports)."""
    for _ in range(warmup):
        f()
    t = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        f()
        t.append((time.perf_counter_ns() - t0) * 1e-6)
    return sorted(t)[runs // 2]


def torchscript(model, x):
    """optimize_for_inference(freeze(script(model))), or from trace when scripting fails; (module,
    how) or (None, why not)."""
    why = []
    for how in ("script", "trace"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = torch.jit.script(model) if how == "script" else torch.jit.trace(model, x)
                m = torch.jit.optimize_for_inference(torch.jit.freeze(m.eval()))
                with torch.no_grad():
                    for _ in range(3):  # the profiling executor specialises over the first calls
                        m(x)
            return m, how
        except Exception as e:  # noqa: BLE001 - any failure means "not this way"
            why.append(f"{how}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    return None, "; ".join(why)


def run_tool(tool, model_path, x_path, y_path, runs):
    """`edgesplit run` on one input: (output or None, ms or None, error line or None)."""
    cmd = [str(tool), "run", str(model_path), "--input", str(x_path), "--output", str(y_path), "--repeat", str(runs)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        lines = [ln for ln in (p.stderr + p.stdout).splitlines() if ln.strip()]
        return None, None, (lines[0] if lines else f"exit status {p.returncode}, no message")
    m = re.search(r"median of \d+ runs at batch \d+: ([0-9.]+) ms", p.stdout)
    return np.load(y_path), (float(m.group(1)) if m else None), None


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main():
    repo = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tool", default=str(repo / "build/dev/tools/edgesplit"),
                    help="the edgesplit binary (default: build/dev/tools/edgesplit in this repository)")
    ap.add_argument("--work", help="directory for the .onnx and .npy files (kept); default a temporary one, removed")
    ap.add_argument("--models", nargs="+", default=ALL_MODELS,
                    help=f"models, space- or comma-separated (default: {' '.join(ALL_MODELS)})")
    ap.add_argument("--runs", type=int, default=20, help="timed calls per variant, median reported (default 20)")
    ap.add_argument("--tol", type=float, default=1e-4, help="max |diff| / max |torch output| allowed (default 1e-4)")
    args = ap.parse_args()
    models = [m for arg in args.models for m in arg.split(",") if m]
    for m in models:
        if m not in ALL_MODELS:
            ap.error(f"unknown model {m!r}; choose from {', '.join(ALL_MODELS)}")
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    tool = Path(args.tool)
    if not (tool.is_file() and os.access(tool, os.X_OK)):
        print(f"onnx_torch_check: no edgesplit tool at {tool} (build it, or pass --tool)", file=sys.stderr)
        return 2

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    print(f"PyTorch {torch.__version__}, torchvision {torchvision.__version__}, onnx {onnx.__version__}, "
          f"NumPy {np.__version__}; {torch.get_num_threads()} thread; CPU {cpu}")
    print(f"tool {tool}; tolerance {args.tol:g}; {args.runs} timed runs per variant")
    sys.stdout.flush()

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="onnx_torch_check_"))
    work.mkdir(parents=True, exist_ok=True)
    acc_rows, time_rows, failures, notes = [], [], [], []
    try:
        for name in models:
            i = ALL_MODELS.index(name)  # seeds follow the model, not its place in --models
            model, sample = build(name, SEED + i)
            onnx_path = work / f"{name}.onnx"
            ops = export(model, sample, onnx_path)
            print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, "
                  f"{onnx_path.stat().st_size / 1e6:.1f} MB ONNX; operators: {', '.join(ops)}")
            sys.stdout.flush()
            for batch in BATCHES:
                g = torch.Generator().manual_seed(SEED * 100 + i * 10 + batch)
                if name == "fmnist_cnn":  # pixels in [0, 1], as the Standardizer expects
                    x = torch.rand(batch, *sample, generator=g)
                else:
                    x = torch.randn(batch, *sample, generator=g)
                x_path, y_path = work / f"{name}_b{batch}_x.npy", work / f"{name}_b{batch}_y.npy"
                np.save(x_path, x.numpy().astype(np.float32))
                with torch.no_grad():
                    ref = model(x)
                ref_np = ref.numpy()

                y, es_ms, err_line = run_tool(tool, onnx_path, x_path, y_path, args.runs)
                if err_line is not None:
                    acc_rows.append((name, batch, None, None, None, "FAIL (edgesplit)"))
                    failures.append(f"{name} batch {batch}: {err_line}")
                    print(f"  batch {batch}: edgesplit failed: {err_line}")
                elif y.shape != ref_np.shape:
                    acc_rows.append((name, batch, None, None, None, "FAIL (shape)"))
                    failures.append(f"{name} batch {batch}: output shape {y.shape}, torch {ref_np.shape}")
                else:
                    rel = float(np.abs(y - ref_np).max() / np.abs(ref_np).max())
                    same = int((y.argmax(1) == ref_np.argmax(1)).sum())
                    top2 = np.sort(ref_np, axis=1)[:, -2:]
                    margin = float((top2[:, 1] - top2[:, 0]).min() / np.abs(ref_np).max())
                    ok = rel <= args.tol and same == batch
                    acc_rows.append((name, batch, rel, same, margin, "ok" if ok else "FAIL"))
                    if not ok:
                        failures.append(f"{name} batch {batch}: rel err {rel:.2e}, top-1 equal {same}/{batch}")

                with torch.no_grad():
                    eager_ms = median_ms(lambda: model(x), args.runs)
                    jit, how = torchscript(model, x)
                    jit_ms, jit_err = None, None
                    if jit is None:
                        notes.append(f"{name} batch {batch}: no TorchScript variant ({how})")
                    else:
                        jit_err = float((jit(x) - ref).abs().max() / ref.abs().max())
                        jit_ms = median_ms(lambda: jit(x), args.runs)
                time_rows.append((name, batch, eager_ms, jit_ms, how if jit is not None else "-", jit_err, es_ms))
                print(f"  batch {batch}: done")
                sys.stdout.flush()
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"Accuracy: edgesplit run against PyTorch eager (rel err = max |diff| / max |torch|, must be <= {args.tol:g};"
          " margin = smallest top-1 minus top-2 torch logit gap / max |torch|)")
    print(f"{'model':14s} {'batch':>5s} {'rel err':>9s} {'top-1 equal':>11s} {'margin':>9s}  result")
    for name, batch, rel, same, margin, res in acc_rows:
        print(f"{name:14s} {batch:5d} {fmt(rel, '9.2e')} {(f'{same}/{batch}' if same is not None else '-'):>11s} "
              f"{fmt(margin, '9.2e')}  {res}")
    print()
    print(f"Timing: one thread, median of {args.runs} runs, ms (jit = optimize_for_inference(freeze(script|trace)); "
          "jit err = its max |diff| / max |eager|)")
    print(f"{'model':14s} {'batch':>5s} {'eager':>9s} {'jit':>9s} {'(how)':>7s} {'jit err':>9s} {'edgesplit':>9s} "
          f"{'es/eager':>8s} {'es/jit':>8s}")
    for name, batch, eager_ms, jit_ms, how, jit_err, es_ms in time_rows:
        r_e = es_ms / eager_ms if es_ms is not None else None
        r_j = es_ms / jit_ms if es_ms is not None and jit_ms is not None else None
        print(f"{name:14s} {batch:5d} {eager_ms:9.3f} {fmt(jit_ms, '9.3f')} {how:>7s} {fmt(jit_err, '9.2e')} "
              f"{fmt(es_ms, '9.3f')} {fmt(r_e, '8.2f')} {fmt(r_j, '8.2f')}")
    for n in notes:
        print(f"note: {n}")
    print()
    if failures:
        print(f"{len(failures)} check(s) FAILED:")
        for f in failures:
            print(f"  {f}")
        return 1
    print(f"all {len(acc_rows)} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
