#!/usr/bin/env python3
"""A foreign client of cloud_node's Open Inference Protocol front end, with Python's standard
library only (urllib, json, struct) and, when it is installed, curl.

Writes a small MLP as a safetensors file (weights from a fixed seed, so the script knows them),
starts cloud_node on it with --http-port, then checks: the health, metadata and readiness routes;
JSON and binary inference answers against the tail computed here in double precision; error
objects for bad requests; /metrics in the text format with the request counters moved. Every
wait is bounded; cloud_node is stopped with SIGTERM at the end.

Usage: oip_interop.py <path to cloud_node>     (exit 77: skipped, e.g. cloud_node without HTTP)
"""
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

WIDTHS = [8, 16, 12, 4]  # Dense 8->16, ReLU, Dense 16->12, ReLU, Dense 12->4
SPLIT = 2                # the cloud runs layers 2.. : Dense 16->12, ReLU, Dense 12->4
MODEL = "interop-mlp"


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def make_model(path, widths=None):
    """Writes the MLP of widths (default WIDTHS) to path; returns its layers. Fixed seed."""
    widths = WIDTHS if widths is None else widths
    rng = random.Random(1234)
    layers, tensors = [], []
    index = 0
    for i in range(len(widths) - 1):
        if i:
            layers.append({"type": "ReLU"})
            index += 1
        n_in, n_out = widths[i], widths[i + 1]
        w = [[f32(rng.uniform(-0.5, 0.5)) for _ in range(n_in)] for _ in range(n_out)]
        b = [f32(rng.uniform(-0.1, 0.1)) for _ in range(n_out)]
        layers.append({"type": "Dense", "in": n_in, "out": n_out, "w": w, "b": b})
        tensors.append((f"{index}.weight", [n_out, n_in], [v for row in w for v in row]))
        tensors.append((f"{index}.bias", [n_out], b))
        index += 1
    arch = [{"type": "Dense", "in": l["in"], "out": l["out"]} if l["type"] == "Dense" else {"type": "ReLU"} for l in layers]
    header = {"__metadata__": {"format": "edgesplit.sequential", "format_version": "1",
                               "architecture": json.dumps(arch)}}
    data = b""
    for name, shape, values in tensors:
        blob = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
    return layers


def tail_forward(layers, x, split=None):
    """The cloud's part (layers from split, default SPLIT, on) in double precision."""
    for layer in layers[SPLIT if split is None else split:]:
        if layer["type"] == "ReLU":
            x = [max(0.0, v) for v in x]
        else:
            x = [sum(wi * xi for wi, xi in zip(row, x)) + bi for row, bi in zip(layer["w"], layer["b"])]
    return x


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def request(port, method, path, body=None, headers=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def close(a, b, what):
    for i, (u, v) in enumerate(zip(a, b)):
        if abs(u - v) > 1e-5 * max(1.0, abs(v)):
            raise AssertionError(f"{what}: value {i} is {u}, expected {v}")
    if len(a) != len(b):
        raise AssertionError(f"{what}: {len(a)} values, expected {len(b)}")


PROMETHEUS_PARSE = """
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families, values = {}, {}
for f in text_string_to_metric_families(sys.stdin.read()):
    families[f.name] = f.type
    for s in f.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in s.labels.items())
        values[s.name + ("{" + labels + "}" if labels else "")] = s.value
print(json.dumps([families, values]))
"""


def prometheus_parse(text):
    """The exposition text read by prometheus_client's parser: ({family: type}, {sample: value}),
    or None without python3-prometheus-client (tried in this python3, then Debian's)."""
    for python in (sys.executable, "/usr/bin/python3"):
        if not os.path.exists(python):
            continue
        r = subprocess.run([python, "-c", PROMETHEUS_PARSE], input=text, capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            return tuple(json.loads(r.stdout))
        if "No module named" not in r.stderr:
            raise AssertionError("Prometheus' parser refused the /metrics text: " + r.stderr)
    return None


def stop(proc):
    """SIGTERM to a child still running; killed if it has not exited 20 s later."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what)


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    cloud_node = sys.argv[1]
    work = tempfile.mkdtemp(prefix="edgesplit-oip-")
    proc = None
    try:
        model = os.path.join(work, "model.safetensors")
        layers = make_model(model)
        http_port = free_port()
        log = open(os.path.join(work, "cloud.log"), "w+")
        proc = subprocess.Popen([cloud_node, "--model", model, "--split", str(SPLIT), "--model-id", MODEL, "--port", "0",
                                 "--http-port", str(http_port)], stdout=log, stderr=subprocess.STDOUT)
        for _ in range(200):  # bounded: 20 s
            if proc.poll() is not None:
                break
            try:
                status, _, _ = request(http_port, "GET", "/v2/health/live")
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        if proc.poll() is not None:
            log.seek(0)
            out = log.read()
            print(out)
            if "no HTTP front end" in out:
                return 77
            return 1

        status, _, body = request(http_port, "GET", "/v2/health/ready")
        check(status == 200 and json.loads(body)["ready"] is True, "GET /v2/health/ready")
        status, _, body = request(http_port, "GET", "/v2")
        check(status == 200 and "binary_tensor_data" in json.loads(body)["extensions"], "GET /v2")
        status, _, body = request(http_port, "GET", f"/v2/models/{MODEL}/versions/{SPLIT}")
        meta = json.loads(body)
        check(status == 200 and meta["inputs"][0]["shape"] == [-1, 16]
              and meta["outputs"][0]["shape"] == [-1, WIDTHS[-1]], "model metadata: input [-1,16], output [-1,4]")
        in_name, out_name = meta["inputs"][0]["name"], meta["outputs"][0]["name"]
        status, _, _ = request(http_port, "GET", f"/v2/models/{MODEL}/ready")
        check(status == 200, "GET /v2/models/{name}/ready")

        rng = random.Random(99)
        width = 16
        batch = 3
        x = [f32(rng.uniform(-1, 1)) for _ in range(batch * width)]
        want = []
        for r in range(batch):
            want += tail_forward(layers, x[r * width:(r + 1) * width])
        infer = f"/v2/models/{MODEL}/versions/{SPLIT}/infer"

        # JSON in, JSON out
        doc = {"id": "py-1", "inputs": [{"name": in_name, "shape": [batch, width], "datatype": "FP32", "data": x}]}
        status, _, body = request(http_port, "POST", infer, json.dumps(doc).encode(), {"Content-Type": "application/json"})
        answer = json.loads(body)
        check(status == 200 and answer["id"] == "py-1" and answer["model_version"] == str(SPLIT)
              and answer["outputs"][0]["shape"] == [batch, 4], "JSON inference answered")
        close(answer["outputs"][0]["data"], want, "JSON answer")
        print("ok: JSON answer equals the tail computed here")
        json_values = answer["outputs"][0]["data"]

        # binary in, binary out
        header = json.dumps({"inputs": [{"name": in_name, "shape": [batch, width], "datatype": "FP32",
                                         "parameters": {"binary_data_size": 4 * len(x)}}],
                             "outputs": [{"name": out_name, "parameters": {"binary_data": True}}]}).encode()
        payload = header + struct.pack("<%df" % len(x), *x)
        status, headers, body = request(http_port, "POST", infer, payload,
                                        {"Content-Type": "application/octet-stream",
                                         "Inference-Header-Content-Length": str(len(header))})
        hl = int({k.lower(): v for k, v in headers.items()}["inference-header-content-length"])
        out = json.loads(body[:hl])["outputs"][0]
        values = list(struct.unpack("<%df" % (len(body[hl:]) // 4), body[hl:]))
        check(status == 200 and out["parameters"]["binary_data_size"] == 4 * batch * 4 and len(values) == batch * 4,
              "binary inference answered")
        close(values, want, "binary answer")
        check(values == json_values, "binary and JSON answers are the same floats")

        # errors
        status, _, body = request(http_port, "POST", infer, b"{oops", {"Content-Type": "application/json"})
        check(status == 400 and "error" in json.loads(body), "bad JSON: 400 with an error object")
        bad = {"inputs": [{"name": in_name, "shape": [1, width + 1], "datatype": "FP32", "data": [0.0] * (width + 1)}]}
        status, _, body = request(http_port, "POST", infer, json.dumps(bad).encode(), {"Content-Type": "application/json"})
        check(status == 400 and "error" in json.loads(body), "wrong shape: 400 with an error object")
        status, _, body = request(http_port, "POST", "/v2/models/nothing/infer", json.dumps(doc).encode(),
                                  {"Content-Type": "application/json"})
        check(status == 404 and "error" in json.loads(body), "unknown model: 404 with an error object")
        truncated = payload[:-8]
        status, _, body = request(http_port, "POST", infer, truncated,
                                  {"Content-Type": "application/octet-stream",
                                   "Inference-Header-Content-Length": str(len(header))})
        check(status == 400 and "error" in json.loads(body), "truncated binary data: 400 with an error object")

        # curl, when installed: JSON inference from a file
        curl = shutil.which("curl")
        if curl:
            path = os.path.join(work, "req.json")
            with open(path, "w") as f:
                json.dump(doc, f)
            out = subprocess.run([curl, "-sS", "--max-time", "20", "-H", "Content-Type: application/json",
                                  "--data-binary", "@" + path, f"http://127.0.0.1:{http_port}{infer}"],
                                 capture_output=True, check=True, timeout=30).stdout
            close(json.loads(out)["outputs"][0]["data"], want, "curl answer")
            print("ok: curl's JSON answer equals the tail computed here")
        else:
            print("curl not installed: its check skipped")

        # metrics
        status, headers, body = request(http_port, "GET", "/metrics")
        text = body.decode()
        check(status == 200 and text.endswith("\n"), "GET /metrics")
        samples = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
        ok_key = 'edgesplit_requests_total{model="%s",version="%d",code="ok"}' % (MODEL, SPLIT)
        want_ok = 3 if curl else 2
        check(samples.get(ok_key) == want_ok, f"{ok_key} == {want_ok}")
        check(samples.get('edgesplit_inferences_total{model="%s",version="%d"}' % (MODEL, SPLIT)) == 3 * want_ok,
              "edgesplit_inferences_total counts the rows")

        # The same text through Prometheus' own parser (Debian's python3-prometheus-client), and
        # its counter moved by one more request.
        parsed = prometheus_parse(text)
        if parsed is None:
            print("python3-prometheus-client not installed: the check with Prometheus' parser skipped")
            return 0
        families, values = parsed
        check({"counter", "gauge", "histogram"} <= set(families.values()),
              f"Prometheus' parser reads {len(families)} families: counters, gauges, histograms")
        check(families.get("edgesplit_request_duration_microseconds") == "histogram"
              and families.get("edgesplit_requests") == "counter", "the request counter and duration histogram")
        check(values.get(ok_key) == want_ok, f"Prometheus' parser: {ok_key} == {want_ok}")
        status, _, _ = request(http_port, "POST", infer, json.dumps(doc).encode(), {"Content-Type": "application/json"})
        _, after = prometheus_parse(request(http_port, "GET", "/metrics")[2].decode())
        check(status == 200 and after.get(ok_key) == want_ok + 1, f"after one more request: {ok_key} == {want_ok + 1}")
        return 0
    finally:
        stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
