#!/usr/bin/env python3
"""edge_node's Open Inference Protocol (KServe v2) gRPC transport against a server edgesplit did
not write: a minimal OIP gRPC server in Python, built here from proto/grpc_service.proto with
grpc_tools.protoc (Debian's python3-grpc-tools) and python3-grpcio, with Triton-like names.

Writes an MLP for Fashion-MNIST (Dense 784->32, ReLU, Dense 32->16, ReLU, Dense 16->10; weights
from the fixed seed of oip_interop.make_model), starts the Python server in this process (model
"mlp-tail", version "1", input "INPUT__0" FP32 [-1,32], output "OUTPUT__0" FP32 [-1,10]: the
tail from split 2, computed per row in double precision by oip_interop.tail_forward and answered
as raw little-endian float32), checks that server with a Python stub first, then runs edge_node
--oip-grpc 127.0.0.1:PORT:
  a. --bits 32: every image answered by the cloud; the server saw FP32 [N,32] rows, 40 in all;
  b. --bits 8: every image answered by the cloud (the server accepts FP32 only); what arrived
     (datatype, data field, parameters) is printed;
  c. --oip-model nothing: every image answered by the local fallback, and edge_node prints the
     server's NOT_FOUND reason ("edge_node: the cloud said: ...");
  d. (a) again after the server stopped: every image answered by the local fallback (the whole
     model in float32), with the same accuracy as (a).
Every RPC, wait and run is bounded; the server is always stopped.

Usage: oip_grpc_edge_interop.py <path to edge_node>
Exit 0: every check passed; 1: a failure; 77: skipped (no grpc_tools or grpcio; an edge_node
built without gRPC, "gRPC (EDGESPLIT_WITH_GRPC)"; Fashion-MNIST not found: edge_node exits 77).
"""
import concurrent.futures
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ left in the source tree by the imports below
sys.path.insert(0, HERE)
import oip_grpc_interop  # noqa: E402  (find_grpc_tools, PROTO_DIR; no side effects at import)

from oip_interop import check, close, f32, make_model, tail_forward  # noqa: E402

WIDTHS = [784, 32, 16, 10]  # Dense 784->32, ReLU, Dense 32->16, ReLU, Dense 16->10
SPLIT = 2                   # the server runs Dense 32->16, ReLU, Dense 16->10
WIDTH = WIDTHS[1]           # features per image sent by the edge
CLASSES = WIDTHS[-1]
MODEL, VERSION = "mlp-tail", "1"
IN_NAME, OUT_NAME = "INPUT__0", "OUTPUT__0"
LIMIT = 40
RUN_TIMEOUT = 120  # seconds, for each edge_node run
TIMEOUT = 20       # seconds, for each RPC of the self-check
SUMMARY = re.compile(r"edge_node: (\d+) images, accuracy ([0-9.]+)%, (\d+) answered by the cloud, "
                     r"(\d+) by the local fallback")


class Skip(Exception):
    pass


def parameters(params):
    """An InferParameter map as a plain dict (the oneof member's value, None when unset)."""
    out = {}
    for key in sorted(params.keys()):
        p = params[key]
        which = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, which) if which else None
    return out


def make_servicer(grpc, pb, pb_grpc, layers):
    """The Python OIP server: a GRPCInferenceService servicer recording every ModelInfer."""

    class Servicer(pb_grpc.GRPCInferenceServiceServicer):
        def __init__(self):
            self.lock = threading.Lock()
            self.requests = []  # one dict per ModelInfer, in arrival order
            self.calls = {}     # (method, model name, version, status) -> count, for the other RPCs

        def record(self, entry):
            with self.lock:
                self.requests.append(entry)

        def count(self, method, name="", version="", status="OK"):
            with self.lock:
                key = (method, name, version, status)
                self.calls[key] = self.calls.get(key, 0) + 1

        def take(self):
            """The ModelInfer requests recorded since the last take (and the other calls, printed)."""
            with self.lock:
                out, self.requests = self.requests, []
                calls, self.calls = self.calls, {}
            for (method, name, version, status), n in sorted(calls.items()):
                print(f"  server saw {n} x {method}" + (f"({name!r}, {version!r})" if name or version else "")
                      + f": {status}")
            return out

        @staticmethod
        def known(name, version):
            return name == MODEL and version in ("", VERSION)

        def ServerLive(self, request, context):
            self.count("ServerLive")
            return pb.ServerLiveResponse(live=True)

        def ServerReady(self, request, context):
            self.count("ServerReady")
            return pb.ServerReadyResponse(ready=True)

        def ServerMetadata(self, request, context):
            self.count("ServerMetadata")
            return pb.ServerMetadataResponse(name="python-oip", version="1", extensions=[])

        def ModelReady(self, request, context):
            known = self.known(request.name, request.version)
            self.count("ModelReady", request.name, request.version, "OK" if known else "NOT_FOUND")
            if not known:
                context.abort(grpc.StatusCode.NOT_FOUND,
                              f"python-oip: unknown model {request.name!r} version {request.version!r}")
            return pb.ModelReadyResponse(ready=True)

        def ModelMetadata(self, request, context):
            known = self.known(request.name, request.version)
            self.count("ModelMetadata", request.name, request.version, "OK" if known else "NOT_FOUND")
            if not known:
                context.abort(grpc.StatusCode.NOT_FOUND,
                              f"python-oip: unknown model {request.name!r} version {request.version!r}")
            tm = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(name=MODEL, versions=[VERSION], platform="python",
                                            inputs=[tm(name=IN_NAME, datatype="FP32", shape=[-1, WIDTH])],
                                            outputs=[tm(name=OUT_NAME, datatype="FP32", shape=[-1, CLASSES])])

        def ModelInfer(self, request, context):
            entry = {"model": request.model_name, "version": request.model_version, "id": request.id,
                     "parameters": parameters(request.parameters), "inputs": len(request.inputs),
                     "raw_count": len(request.raw_input_contents), "outputs_requested":
                         [o.name for o in request.outputs], "status": "OK"}
            if request.inputs:
                t = request.inputs[0]
                entry.update(name=t.name, datatype=t.datatype, shape=list(t.shape),
                             input_parameters=parameters(t.parameters))

            def refuse(code, reason):
                entry["status"] = f"{code.name}: {reason}"
                self.record(entry)
                context.abort(code, "python-oip: " + reason)

            if not self.known(request.model_name, request.model_version):
                refuse(grpc.StatusCode.NOT_FOUND,
                       f"unknown model {request.model_name!r} version {request.model_version!r}")
            INVALID = grpc.StatusCode.INVALID_ARGUMENT
            if len(request.inputs) != 1:
                refuse(INVALID, f"expected exactly one input, got {len(request.inputs)}")
            t = request.inputs[0]
            if t.name != IN_NAME:
                refuse(INVALID, f"unknown input {t.name!r}, expected {IN_NAME!r}")
            if t.datatype != "FP32":
                refuse(INVALID, f"input datatype {t.datatype!r}, expected 'FP32'")
            shape = list(t.shape)
            if len(shape) != 2 or shape[0] < 1 or shape[1] != WIDTH:
                refuse(INVALID, f"input shape {shape}, expected [N,{WIDTH}]")
            n = shape[0] * WIDTH
            typed = len(t.contents.fp32_contents)
            if request.raw_input_contents:
                entry["field"] = "raw_input_contents"
                if typed:
                    refuse(INVALID, "both raw_input_contents and contents.fp32_contents")
                if len(request.raw_input_contents) != 1:
                    refuse(INVALID, f"{len(request.raw_input_contents)} raw_input_contents, expected 1")
                raw = request.raw_input_contents[0]
                if len(raw) != 4 * n:
                    refuse(INVALID, f"raw_input_contents[0] has {len(raw)} bytes, expected {4 * n}")
                x = list(struct.unpack("<%df" % n, raw))
            else:
                entry["field"] = "fp32_contents"
                if typed != n:
                    refuse(INVALID, f"contents.fp32_contents has {typed} values, expected {n}")
                x = list(t.contents.fp32_contents)
            y = []
            for r in range(shape[0]):
                y += tail_forward(layers, x[r * WIDTH:(r + 1) * WIDTH], SPLIT)
            self.record(entry)
            answer = pb.ModelInferResponse(model_name=MODEL, model_version=VERSION, id=request.id)
            answer.outputs.add(name=OUT_NAME, datatype="FP32", shape=[shape[0], CLASSES])
            answer.raw_output_contents.append(struct.pack("<%df" % len(y), *y))
            return answer

    return Servicer()


def self_check(grpc, pb, pb_grpc, port, servicer, layers):
    """The Python server, called with a Python stub: it must be right before it judges edge_node."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)])
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        check(stub.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT, wait_for_ready=True).live,
              "server self-check: ServerLive")
        check(stub.ServerReady(pb.ServerReadyRequest(), timeout=TIMEOUT).ready, "server self-check: ServerReady")
        check(stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=TIMEOUT).name == "python-oip",
              "server self-check: ServerMetadata name python-oip")
        for v in ("", VERSION):
            check(stub.ModelReady(pb.ModelReadyRequest(name=MODEL, version=v), timeout=TIMEOUT).ready,
                  f"server self-check: ModelReady({MODEL}, {v!r})")
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), timeout=TIMEOUT)
        check(meta.platform == "python" and list(meta.versions) == [VERSION]
              and [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [(IN_NAME, "FP32", [-1, WIDTH])]
              and [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [(OUT_NAME, "FP32", [-1, CLASSES])],
              f"server self-check: ModelMetadata {IN_NAME} FP32 [-1,{WIDTH}], {OUT_NAME} FP32 [-1,{CLASSES}]")
        NOT_FOUND, INVALID = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT
        oip_grpc_interop.expect_code(grpc, lambda: stub.ModelReady(pb.ModelReadyRequest(name="nothing"), timeout=TIMEOUT),
                    NOT_FOUND, "server self-check: ModelReady of an unknown model")
        oip_grpc_interop.expect_code(grpc, lambda: stub.ModelReady(pb.ModelReadyRequest(name=MODEL, version="2"), timeout=TIMEOUT),
                    NOT_FOUND, "server self-check: ModelReady of an unknown version")
        oip_grpc_interop.expect_code(grpc, lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="nothing"), timeout=TIMEOUT),
                    NOT_FOUND, "server self-check: ModelMetadata of an unknown model")

        rng = random.Random(7)
        batch = 3
        x = [f32(rng.uniform(0, 2)) for _ in range(batch * WIDTH)]
        want = []
        for r in range(batch):
            want += tail_forward(layers, x[r * WIDTH:(r + 1) * WIDTH], SPLIT)

        def infer(rid, raw=True, model=MODEL, datatype="FP32", shape=(batch, WIDTH), values=x, name=IN_NAME):
            req = pb.ModelInferRequest(model_name=model, model_version=VERSION, id=rid)
            t = req.inputs.add(name=name, datatype=datatype, shape=list(shape))
            if raw:
                req.raw_input_contents.append(struct.pack("<%df" % len(values), *values))
            else:
                t.contents.fp32_contents.extend(values)
            return stub.ModelInfer(req, timeout=TIMEOUT)

        answers = []
        for rid, raw in (("self-raw", True), ("self-typed", False)):
            a = infer(rid, raw)
            check(a.id == rid and a.model_name == MODEL and a.model_version == VERSION and len(a.outputs) == 1
                  and a.outputs[0].name == OUT_NAME and a.outputs[0].datatype == "FP32"
                  and list(a.outputs[0].shape) == [batch, CLASSES] and len(a.raw_output_contents) == 1
                  and len(a.raw_output_contents[0]) == 4 * batch * CLASSES,
                  f"server self-check: ModelInfer ({'raw' if raw else 'typed'}) answered FP32 [{batch},{CLASSES}]")
            values = list(struct.unpack("<%df" % (batch * CLASSES), a.raw_output_contents[0]))
            close(values, want, "server self-check answer")
            check(values == [f32(v) for v in want], "server self-check: the answer is tail_forward in float32")
            answers.append(a.raw_output_contents[0])
        check(answers[0] == answers[1], "server self-check: raw and typed answers the same bytes")
        oip_grpc_interop.expect_code(grpc, lambda: infer("bad", model="nothing"), NOT_FOUND,
                    "server self-check: ModelInfer of an unknown model")
        oip_grpc_interop.expect_code(grpc, lambda: infer("bad", shape=(1, WIDTH + 1), values=[0.0] * (WIDTH + 1)), INVALID,
                    f"server self-check: ModelInfer of shape [1,{WIDTH + 1}]")
        oip_grpc_interop.expect_code(grpc, lambda: infer("bad", datatype="UINT8"), INVALID,
                    "server self-check: ModelInfer of datatype UINT8")
        oip_grpc_interop.expect_code(grpc, lambda: infer("bad", name="x"), INVALID, "server self-check: ModelInfer of input 'x'")
        oip_grpc_interop.expect_code(grpc, lambda: infer("bad", values=x[:-1]), INVALID,
                    "server self-check: ModelInfer with a value short")
        seen = servicer.take()
        check([e["status"].split(":")[0] for e in seen] == ["OK", "OK", "NOT_FOUND"] + ["INVALID_ARGUMENT"] * 4
              and [e.get("field") for e in seen[:2]] == ["raw_input_contents", "fp32_contents"],
              "server self-check: every ModelInfer recorded")
    finally:
        channel.close()


def run_edge(edge_node, args):
    """Runs edge_node; returns (exit code, output, summary dict or None)."""
    cmd = [edge_node] + args
    print("$", " ".join(cmd), flush=True)
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT)
    except OSError as e:
        raise AssertionError(f"cannot run edge_node: {e}")
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace")
        print(out)
        raise AssertionError(f"edge_node did not finish within {RUN_TIMEOUT} s")
    out = p.stdout.decode(errors="replace")
    print(out.rstrip())
    if "gRPC (EDGESPLIT_WITH_GRPC)" in out:
        raise Skip("edge_node was built without gRPC (EDGESPLIT_WITH_GRPC)")
    if p.returncode == 77:
        raise Skip("edge_node did not find Fashion-MNIST (exit 77)")
    m = SUMMARY.search(out)
    summary = None
    if m:
        summary = {"images": int(m.group(1)), "accuracy": m.group(2), "cloud": int(m.group(3)),
                   "fallback": int(m.group(4))}
    if p.returncode != 0:
        raise AssertionError(f"edge_node exited {p.returncode}")
    if summary is None:
        raise AssertionError("edge_node printed no summary line")
    return p.returncode, out, summary


def describe(seen):
    """What the server saw, grouped: {(status, datatype, shape, field, parameters): count}."""
    groups = {}
    for e in seen:
        key = (e["status"], e.get("datatype"), str(e.get("shape")), e.get("field"),
               str(e["parameters"]), str(e.get("input_parameters")))
        groups[key] = groups.get(key, 0) + 1
    for (status, dt, shape, field, params, in_params), count in groups.items():
        print(f"  server saw {count} x ModelInfer: status {status}, datatype {dt}, shape {shape}, data in {field}, "
              f"request parameters {params}, input parameters {in_params}")


def check_all_cloud(seen, summary, what):
    check(summary["images"] == LIMIT and summary["cloud"] == LIMIT and summary["fallback"] == 0,
          f"{what}: {LIMIT} images, all answered by the cloud (saw {summary['images']} images, {summary['cloud']} "
          f"by the cloud, {summary['fallback']} by the fallback, accuracy {summary['accuracy']}%)")
    ok = [e for e in seen if e["status"] == "OK"]
    check(len(ok) == len(seen), f"{what}: the server refused none of the {len(seen)} ModelInfer requests")
    check(all(e["datatype"] == "FP32" and e["shape"][1:] == [WIDTH] and e["model"] == MODEL
              and e["version"] in ("", VERSION) for e in ok),
          f"{what}: every request FP32 [N,{WIDTH}] for {MODEL}")
    rows = sum(e["shape"][0] for e in ok)
    check(rows == LIMIT, f"{what}: {len(ok)} requests carried {rows} rows (expected {LIMIT})")


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    edge_node = sys.argv[1]
    grpc = oip_grpc_interop.import_grpc()  # exits 77, or re-runs this script under /usr/bin/python3

    work = tempfile.mkdtemp(prefix="edgesplit-oip-grpc-edge-")
    server = None
    try:
        gen = os.path.join(work, "gen")
        os.mkdir(gen)
        pb, pb_grpc = oip_grpc_interop.generate(gen)
        model = os.path.join(work, "model.safetensors")
        layers = make_model(model, WIDTHS)

        servicer = make_servicer(grpc, pb, pb_grpc, layers)
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        if not port:
            raise AssertionError("the Python gRPC server could not bind 127.0.0.1:0")
        server.start()
        print(f"python-oip server on 127.0.0.1:{port}")
        self_check(grpc, pb, pb_grpc, port, servicer, layers)

        base = ["--model", model, "--split", str(SPLIT), "--model-id", MODEL, "--limit", str(LIMIT),
                "--timeout-ms", "10000", "--oip-grpc", f"127.0.0.1:{port}", "--oip-version", VERSION]

        # a. 32-bit features
        _, _, a = run_edge(edge_node, base + ["--bits", "32"])
        seen = servicer.take()
        describe(seen)
        check_all_cloud(seen, a, "run a (--bits 32)")

        # b. 8-bit features: the server accepts FP32 only
        _, _, b = run_edge(edge_node, base + ["--bits", "8"])
        seen = servicer.take()
        describe(seen)
        check_all_cloud(seen, b, "run b (--bits 8)")
        print(f"run b (--bits 8): accuracy {b['accuracy']}% (run a: {a['accuracy']}%)")

        # c. a model the server does not know
        _, out, c = run_edge(edge_node, base + ["--bits", "32", "--oip-model", "nothing"])
        seen = servicer.take()
        describe(seen)
        check(c["images"] == LIMIT and c["cloud"] == 0 and c["fallback"] == LIMIT,
              f"run c (--oip-model nothing): 0 answered by the cloud, {LIMIT} by the local fallback")
        said = [line for line in out.splitlines() if line.startswith("edge_node: the cloud said: ")]
        check(len(said) == 1 and "unknown model 'nothing'" in said[0],
              "run c: edge_node reports the server's NOT_FOUND reason: " + (said[0] if said else "(no such line)"))
        check(all(e["status"].startswith("NOT_FOUND") for e in seen),
              f"run c: the server refused all {len(seen)} ModelInfer requests it saw with NOT_FOUND")

        # d. the server gone
        server.stop(5).wait(10)
        server = None
        _, _, d = run_edge(edge_node, base + ["--bits", "32"])
        check(d["images"] == LIMIT and d["cloud"] == 0 and d["fallback"] == LIMIT,
              f"run d (server stopped): 0 answered by the cloud, {LIMIT} by the local fallback")
        check(d["accuracy"] == a["accuracy"],
              f"run d: the local fallback's accuracy {d['accuracy']}% equals run a's (cloud tail) {a['accuracy']}%")
        print("all checks passed")
        return 0
    except Skip as e:
        print("skipped:", e)
        return 77
    except (AssertionError, grpc.RpcError) as e:
        if isinstance(e, grpc.RpcError):
            print(f"FAIL: an RPC failed: {e.code().name}: {e.details()!r}")
        else:
            print("FAIL:", e)
        return 1
    finally:
        if server is not None:
            server.stop(5).wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
