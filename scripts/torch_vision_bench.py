#!/usr/bin/python3
"""PyTorch's side of bench/vision_bench.cpp: ResNet-18 and MobileNetV2 latency at batch 1 and the
Fashion-MNIST CNN's training throughput, one thread, float. Optional cross-check: needs Debian's
python3-torch, python3-torchvision and python3-numpy; edgesplit itself never needs Python.

    OPENBLAS_NUM_THREADS=1 LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread \\
        taskset -c 1 /usr/bin/python3 scripts/torch_vision_bench.py [--rounds N] [--only resnet18,mobilenet_v2,cnn]

Models: torchvision.models.resnet18() and mobilenet_v2() (1000 classes, random weights), in eval
mode under torch.inference_mode(), on a random 1x3x224x224 input, three ways:
  eager     the module as it is: BatchNorm runs as its own op after every convolution (PyTorch
            does not fold it in eager mode)
  frozen    torch.jit.freeze(torch.jit.script(model)): TorchScript with the weights as constants
            and BatchNorm folded into the convolutions
  optimized torch.jit.optimize_for_inference(torch.jit.script(model)): freeze plus PyTorch's
            inference passes (the convolutions as oneDNN ops with prepacked weights, on oneDNN's
            blocked layout)
The convolutions run in oneDNN (MKL-DNN), which picks its kernels for the CPU at run time
(AVX-512 where present); Linear layers and the rest go to libblas.so.3, hence OpenBLAS above (the
reference BLAS the system falls back to is far slower for them).

Training: the CNN of examples/fmnist_cnn.hpp, rebuilt here layer for layer (the script prints its
layers and parameter count; bench/vision_bench prints edgesplit's, and the two must agree):
standardized input (one global mean and std), Adam 2e-3, batch 128, softmax cross-entropy, one
step = zero_grad, forward, loss, backward, Adam step, on successive shuffled batches of the
Fashion-MNIST training set (random images when it is absent).

Timing as in bench/vision_bench.cpp: the variants alternate in blocks of calls, every call timed
on its own, by the thread's CPU time when calls last over 0.5 ms; the figures are medians.
glibc's allocator returning freed memory to the system costs PyTorch's training step much of its
time; MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=1000000000 in the environment
turns that off (docs/performance.md reports both).
"""
import argparse
import gzip
import os
import statistics
import sys
import time

import numpy as np
import torch
import torchvision

FASHION = "/usr/share/datasets/fashion-mnist"


def timed(f, cpu):
    if cpu:
        t0 = time.thread_time_ns()
        f()
        return (time.thread_time_ns() - t0) * 1e-3
    t0 = time.perf_counter_ns()
    f()
    return (time.perf_counter_ns() - t0) * 1e-3


def run_paired(variants, rounds):
    """Median µs per call of each (name, f), run in alternating blocks of calls (~2 ms, >= 3)."""
    slowest = 0.0
    for _, f in variants:
        timed(f, False)
        slowest = max(slowest, timed(f, False))
    cpu = slowest > 500
    block = min(200, max(3, int(2000 / max(slowest, 1e-3))))
    t = [[] for _ in variants]
    first = 0
    for _ in range(rounds):
        for j in range(len(variants)):
            v = (first + j) % len(variants)
            for i in range(block):
                us = timed(variants[v][1], cpu)
                if i > 0:
                    t[v].append(us)
        first = (first + 1) % len(variants)
    return [statistics.median(x) for x in t], cpu, len(t[0])


def latency(name, rounds):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.rand(1, 3, 224, 224) * 2 - 1
    with torch.inference_mode():
        scripted = torch.jit.script(model)
        frozen = torch.jit.freeze(scripted)
        optimized = torch.jit.optimize_for_inference(torch.jit.script(model))
        ref = model(x)
        for label, m in (("frozen", frozen), ("optimized", optimized)):
            for _ in range(3):  # TorchScript's profiling executor specialises over the first calls
                y = m(x)
            err = (y - ref).abs().max().item() / ref.abs().max().item()
            if err > 1e-3:
                print(f"  warning: {label} differs from eager by {err:.2e} (relative to the largest logit)")
        variants = [("eager", lambda: model(x)), ("frozen", lambda: frozen(x)), ("optimized", lambda: optimized(x))]
        med, cpu, calls = run_paired(variants, rounds)
    best = min(range(len(med)), key=lambda i: med[i])
    print(f"{name}: {params} parameters; batch 1, median of {calls} calls per variant"
          f"{' (thread CPU time)' if cpu else ''}:")
    for (label, _), us in zip(variants, med):
        print(f"  {label:9s} {us / 1000:8.2f} ms{'   <- fastest' if label == variants[best][0] else ''}")


def idx(path, magic, header):
    with gzip.open(path, "rb") as f:
        data = f.read()
    if int.from_bytes(data[:4], "big") != magic:
        raise SystemExit(f"{path}: not an IDX file of magic {magic}")
    return np.frombuffer(data[header:], dtype=np.uint8)


class Standardizer(torch.nn.Module):
    """edgesplit's Standardizer(784, global): (x - mean) / std with one fitted mean and std."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x):
        return (x - self.mean) / self.std


class FmnistCnn(torch.nn.Module):
    """examples/fmnist_cnn.hpp's fmnist_cnn_graph, layer for layer."""

    def __init__(self, mean, std):
        super().__init__()
        nn = torch.nn
        conv = lambda cin, cout: nn.Conv2d(cin, cout, 3, padding=1, bias=False)  # noqa: E731
        self.norm = Standardizer(mean, std)
        self.stem = nn.Sequential(conv(1, 32), nn.BatchNorm2d(32), nn.ReLU())
        self.pool1 = nn.MaxPool2d(2)
        self.block = nn.Sequential(conv(32, 32), nn.BatchNorm2d(32), nn.ReLU(), conv(32, 32), nn.BatchNorm2d(32))
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.head = nn.Sequential(conv(32, 64), nn.BatchNorm2d(64), nn.ReLU())
        self.drop1 = nn.Dropout(0.3)
        self.fc = nn.Sequential(nn.Linear(64 * 7 * 7, 128), nn.ReLU())
        self.drop = nn.Dropout(0.3)
        self.logits = nn.Linear(128, 10)

    def forward(self, x):
        p = self.pool1(self.stem(self.norm(x)))
        y = self.pool2(self.relu2(self.block(p) + p))
        y = torch.flatten(self.head(y), 1)
        return self.logits(self.drop(self.fc(self.drop1(y))))


def training(rounds):
    torch.manual_seed(1)
    if os.path.exists(f"{FASHION}/train-images-idx3-ubyte.gz"):
        images = idx(f"{FASHION}/train-images-idx3-ubyte.gz", 2051, 16).reshape(-1, 1, 28, 28)
        labels = idx(f"{FASHION}/train-labels-idx1-ubyte.gz", 2049, 8).astype(np.int64)
        real = True
    else:
        rng = np.random.default_rng(1)
        images = rng.integers(0, 256, size=(8192, 1, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=8192).astype(np.int64)
        real = False
    x = torch.from_numpy(images.astype(np.float32) / 255)
    y = torch.from_numpy(labels)
    model = FmnistCnn(x.mean().item(), x.std(unbiased=False).item())
    params = sum(p.numel() for p in model.parameters())
    print(f"fmnist_cnn: {params} parameters; layers:")
    for name, m in model.named_modules():
        if len(list(m.children())) == 0 and name:
            print(f"  {name:10s} {m}")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    batch = 128
    state = {"order": torch.randperm(len(x)), "next": 0}

    def step():
        if state["next"] + batch > len(x):
            state["order"], state["next"] = torch.randperm(len(x)), 0
        i = state["order"][state["next"]:state["next"] + batch]
        state["next"] += batch
        opt.zero_grad()
        loss = loss_fn(model(x[i]), y[i])
        loss.backward()
        opt.step()

    med, cpu, calls = run_paired([("step", step)], rounds)
    malloc = "MALLOC_TRIM_THRESHOLD_" in os.environ or "MALLOC_MMAP_THRESHOLD_" in os.environ
    print(f"fmnist_cnn training, Adam, batch {batch}, {'Fashion-MNIST' if real else 'random images'}, "
          f"malloc thresholds {'set' if malloc else 'default'}: median of {calls} steps"
          f"{' (thread CPU time)' if cpu else ''}: {med[0] / 1000:.2f} ms per step, "
          f"{batch / med[0] * 1e6:.0f} samples/s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20, help="blocks of calls per variant (default 20)")
    ap.add_argument("--only", default="resnet18,mobilenet_v2,cnn", help="comma-separated subset")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"PyTorch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} thread, "
          f"oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}")
    sys.stdout.flush()
    for what in args.only.split(","):
        if what == "cnn":
            training(args.rounds)
        else:
            latency(what, args.rounds)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
