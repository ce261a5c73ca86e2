#!/usr/bin/env python3
"""The PyTorch side of scripts/onnx_demo.sh: trains a small CNN on Fashion-MNIST in PyTorch and
exports it to ONNX, as a user of edgesplit would, then writes test images and labels as .npy.

    /usr/bin/python3 scripts/onnx_demo_model.py --out DIR [--epochs 2] [--samples 1000]

Writes DIR/cnn.onnx (input "image" [N, 1, 28, 28], pixels in [0, 1]; output "logits" [N, 10]),
DIR/x.npy (the first --samples test images) and DIR/labels.npy (their classes). Reads Debian's
dataset-fashion-mnist (/usr/share/datasets/fashion-mnist). A cnn.onnx already in DIR is kept.
"""
import argparse
import gzip
import os
import struct
import sys

import numpy as np
import torch

DATA = "/usr/share/datasets/fashion-mnist"


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, rank = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        sys.exit(f"{path}: not an IDX file of bytes")
    dims = struct.unpack(">" + "I" * rank, data[4:4 + 4 * rank])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def images(name):
    return idx(os.path.join(DATA, name)).astype(np.float32)[:, None, :, :] / 255.0


def model():
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Dropout(0.25), torch.nn.Linear(32 * 7 * 7, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 10))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--samples", type=int, default=1000)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    test_x = images("t10k-images-idx3-ubyte.gz")
    test_y = idx(os.path.join(DATA, "t10k-labels-idx1-ubyte.gz"))
    np.save(os.path.join(a.out, "x.npy"), np.ascontiguousarray(test_x[:a.samples]))
    np.save(os.path.join(a.out, "labels.npy"), test_y[:a.samples].astype(np.float32))
    path = os.path.join(a.out, "cnn.onnx")
    if os.path.exists(path):
        print(f"keeping {path}")
        return
    torch.manual_seed(2026)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    train_x = torch.from_numpy(images("train-images-idx3-ubyte.gz"))
    train_y = torch.from_numpy(idx(os.path.join(DATA, "train-labels-idx1-ubyte.gz")).astype(np.int64))
    m = model()
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    for epoch in range(a.epochs):
        m.train()
        order = torch.randperm(len(train_x))
        for i in range(0, len(order), 128):
            b = order[i:i + 128]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(m(train_x[b]), train_y[b])
            loss.backward()
            opt.step()
        m.eval()
        with torch.no_grad():
            acc = (m(torch.from_numpy(test_x)).argmax(1).numpy() == test_y).mean()
        print(f"PyTorch: epoch {epoch + 1}: test accuracy {100 * acc:.2f}%", flush=True)
    torch.onnx.export(m, torch.zeros(1, 1, 28, 28), path, opset_version=17, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    print(f"exported {path}")


if __name__ == "__main__":
    main()
