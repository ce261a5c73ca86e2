#!/usr/bin/python3
"""PyTorch's training speed on the cloud model of examples/train_fashion_mnist.cpp, for the
same-run ratio in docs/performance.md. Optional cross-check: needs Debian's python3-torch and
python3-numpy; edgesplit itself never needs Python.

Same model and step as `train_fashion_mnist --throughput`: 784-512-256-10 with ReLU (and dropout
0.2 after each hidden layer in the second run), standardized inputs, softmax cross-entropy, Adam
1e-3, batch 128, seeded shuffling, 2 epochs over the 60,000 training images, one thread.

    OPENBLAS_NUM_THREADS=1 LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread \
        /usr/bin/python3 scripts/torch_train_throughput.py [DATA_DIR]

(Debian's libtorch uses whatever libblas.so.3 the system selects; the reference BLAS is ~50x
slower, so point it at OpenBLAS as above. docs/performance.md says which kernels OpenBLAS picks.)
"""
import gzip
import sys
import time

import numpy as np
import torch


def idx_images(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n, rows, cols = np.frombuffer(data[:16], dtype=">u4")
    if magic != 2051:
        raise SystemExit(f"{path}: not an IDX image file")
    return np.frombuffer(data[16:], dtype=np.uint8).reshape(n, rows * cols).astype(np.float32) / 255


def idx_labels(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = np.frombuffer(data[:8], dtype=">u4")
    if magic != 2049:
        raise SystemExit(f"{path}: not an IDX label file")
    return np.frombuffer(data[8:], dtype=np.uint8).astype(np.int64)


def model(dropout):
    layers = [torch.nn.Linear(784, 512), torch.nn.ReLU()]
    if dropout:
        layers.append(torch.nn.Dropout(dropout))
    layers += [torch.nn.Linear(512, 256), torch.nn.ReLU()]
    if dropout:
        layers.append(torch.nn.Dropout(dropout))
    layers.append(torch.nn.Linear(256, 10))
    return torch.nn.Sequential(*layers)


def main():
    data = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
    torch.set_num_threads(1)
    torch.manual_seed(1)
    x = idx_images(f"{data}/train-images-idx3-ubyte.gz")
    y = idx_labels(f"{data}/train-labels-idx1-ubyte.gz")
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)  # the per-feature Standardizer
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    batch, epochs = 128, 2
    for dropout in (0.0, 0.2):
        m = model(dropout)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        loss_fn = torch.nn.CrossEntropyLoss()
        g = torch.Generator().manual_seed(1)
        m.train()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), batch):
                idx = order[i:i + batch]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(m(x[idx]), y[idx])
                loss.backward()
                opt.step()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = epochs * len(x)
        label = "with dropout" if dropout else "no dropout  "
        print(f"PyTorch {torch.__version__} 784-512-256-10 {label}, Adam, batch {batch}, {len(x)} samples x "
              f"{epochs} epochs, 1 thread: {n / wall:.0f} samples/s wall clock, {n / cpu:.0f} samples per CPU second")


if __name__ == "__main__":
    main()
