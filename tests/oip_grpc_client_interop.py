#!/usr/bin/env python3
"""A foreign client of cloud_node's Open Inference Protocol (KServe v2) gRPC front end, with
classes generated from proto/grpc_service.proto by grpc_tools.protoc (Debian's
python3-grpc-tools) and python3-grpcio: the gRPC twin of oip_interop.py (HTTP), whose model,
reference tail and helpers it imports.

Writes the same small MLP as oip_interop.py, starts cloud_node on it with --grpc-port, then
checks over a channel to 127.0.0.1: ServerLive, ServerReady, ServerMetadata; ModelReady and
ModelMetadata, by name and by version, and NOT_FOUND for an unknown model; ModelInfer with typed
contents (fp32_contents) and with raw_input_contents, each answer (raw little-endian float32 in
raw_output_contents, as Triton answers) against the tail computed here in double precision, and
the two answers the same floats bit for bit; the status codes of bad requests (wrong shape,
wrong datatype, short raw contents, unknown model, typed and raw contents for one input, bytes
that are not protobuf, sent through a generic call), and that the server still answers after
them. Every RPC and every wait is bounded; cloud_node is stopped with SIGTERM at the end.

Usage: oip_grpc_client_interop.py <path to cloud_node>
Exit 0: every check passed; 1: a failure; 77: skipped (no grpc_tools or grpcio, or a cloud_node
built without the gRPC front end: it prints "no gRPC front end" and exits).
"""
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ left in the source tree by the imports below
sys.path.insert(0, HERE)
import oip_grpc_interop  # noqa: E402  (find_grpc_tools, PROTO_DIR; no side effects at import)

from oip_interop import MODEL, SPLIT, WIDTHS, check, close, f32, free_port, make_model, stop, tail_forward  # noqa: E402

TIMEOUT = 20  # seconds, for every RPC
SERVICE = "/inference.GRPCInferenceService/"


def run(grpc, pb, stub, channel, layers):
    # 1. health
    check(stub.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT).live is True, "ServerLive: live")
    check(stub.ServerReady(pb.ServerReadyRequest(), timeout=TIMEOUT).ready is True, "ServerReady: ready")

    # 2. server metadata
    sm = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=TIMEOUT)
    check(sm.name == "edgesplit" and sm.version != "", f"ServerMetadata: name edgesplit, version {sm.version!r}")

    # 3. model readiness
    version = str(SPLIT)
    check(stub.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=TIMEOUT).ready is True, "ModelReady(name): ready")
    check(stub.ModelReady(pb.ModelReadyRequest(name=MODEL, version=version), timeout=TIMEOUT).ready is True,
          f"ModelReady(name, version {version}): ready")
    oip_grpc_interop.expect_code(grpc, lambda: stub.ModelReady(pb.ModelReadyRequest(name="nothing"), timeout=TIMEOUT),
                grpc.StatusCode.NOT_FOUND, "ModelReady of an unknown model")

    # 4. model metadata
    width = next(layer["in"] for layer in layers[SPLIT:] if layer["type"] == "Dense")  # 16: the cloud's input
    n_out = WIDTHS[-1]
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), timeout=TIMEOUT)
    check(meta.name == MODEL and version in meta.versions and meta.platform == "edgesplit",
          f"ModelMetadata: name {MODEL}, versions {list(meta.versions)} contain {version}, platform edgesplit")
    check(len(meta.inputs) == 1 and meta.inputs[0].datatype == "FP32" and list(meta.inputs[0].shape) == [-1, width],
          f"ModelMetadata: input FP32 [-1,{width}]")
    check(len(meta.outputs) == 1 and meta.outputs[0].datatype == "FP32"
          and list(meta.outputs[0].shape) == [-1, n_out], f"ModelMetadata: output FP32 [-1,{n_out}]")
    oip_grpc_interop.expect_code(grpc, lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="nothing"), timeout=TIMEOUT),
                grpc.StatusCode.NOT_FOUND, "ModelMetadata of an unknown model")
    in_name, out_name = meta.inputs[0].name, meta.outputs[0].name

    rng = random.Random(99)
    batch = 3
    x = [f32(rng.uniform(-1, 1)) for _ in range(batch * width)]
    want = []
    for r in range(batch):
        want += tail_forward(layers, x[r * width:(r + 1) * width])
    raw_x = struct.pack("<%df" % len(x), *x)

    def typed_request(rid="py-grpc-1", model=MODEL, shape=(batch, width), datatype="FP32", values=x):
        req = pb.ModelInferRequest(model_name=model, model_version=version if model == MODEL else "", id=rid)
        t = req.inputs.add(name=in_name, datatype=datatype, shape=list(shape))
        if datatype == "FP32":
            t.contents.fp32_contents.extend(values)
        else:
            t.contents.int64_contents.extend([0] * len(values))
        return req

    def raw_request(rid="py-grpc-2", data=raw_x):
        req = pb.ModelInferRequest(model_name=MODEL, model_version=version, id=rid)
        req.inputs.add(name=in_name, datatype="FP32", shape=[batch, width])
        req.raw_input_contents.append(data)
        return req

    def answer_values(answer, rid, what):
        check(answer.id == rid and answer.model_name == MODEL and answer.model_version == version,
              f"{what}: id {rid!r}, model {MODEL}, version {version} echoed")
        out = answer.outputs[0] if len(answer.outputs) == 1 else None
        check(out is not None and out.name == out_name and out.datatype == "FP32" and list(out.shape) == [batch, n_out],
              f"{what}: one output {out_name!r}, FP32 [{batch},{n_out}]")
        check(len(answer.raw_output_contents) == 1 and len(answer.raw_output_contents[0]) == 4 * batch * n_out
              and len(out.contents.fp32_contents) == 0,
              f"{what}: the values raw ({4 * batch * n_out} bytes in raw_output_contents[0]), no typed contents")
        data = answer.raw_output_contents[0]
        values = list(struct.unpack("<%df" % (len(data) // 4), data))
        close(values, want, what)
        print(f"ok: {what}: the answer equals the tail computed here")
        return data

    # 5. typed contents in
    typed = answer_values(stub.ModelInfer(typed_request(), timeout=TIMEOUT), "py-grpc-1", "ModelInfer, fp32_contents")

    # 6. raw contents in
    raw = answer_values(stub.ModelInfer(raw_request(), timeout=TIMEOUT), "py-grpc-2", "ModelInfer, raw_input_contents")
    check(raw == typed, "typed and raw requests: the same floats bit for bit")

    # 7. errors
    INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    oip_grpc_interop.expect_code(grpc, lambda: stub.ModelInfer(typed_request(shape=(1, width + 1), values=[0.0] * (width + 1)),
                                              timeout=TIMEOUT), INVALID, f"ModelInfer, shape [1,{width + 1}]")
    oip_grpc_interop.expect_code(grpc, lambda: stub.ModelInfer(typed_request(datatype="INT64"), timeout=TIMEOUT), INVALID,
                "ModelInfer, datatype INT64")
    oip_grpc_interop.expect_code(grpc, lambda: stub.ModelInfer(raw_request(data=raw_x[:-8]), timeout=TIMEOUT), INVALID,
                "ModelInfer, raw contents 8 bytes short")
    oip_grpc_interop.expect_code(grpc, lambda: stub.ModelInfer(typed_request(model="nothing"), timeout=TIMEOUT), NOT_FOUND,
                "ModelInfer of an unknown model")
    both = typed_request()
    both.raw_input_contents.append(raw_x)
    oip_grpc_interop.expect_code(grpc, lambda: stub.ModelInfer(both, timeout=TIMEOUT), INVALID,
                "ModelInfer, typed and raw contents for one input")
    again = stub.ModelInfer(typed_request(rid="py-grpc-3"), timeout=TIMEOUT)
    check(again.id == "py-grpc-3" and len(again.raw_output_contents) == 1 and again.raw_output_contents[0] == typed,
          "after the errors, a good request is answered (the same floats)")

    # 8. bytes that are not protobuf (a length-delimited model_name 2^32-1 bytes long), through a generic call
    generic = channel.unary_unary(SERVICE + "ModelInfer", request_serializer=None, response_deserializer=None)
    oip_grpc_interop.expect_code(grpc, lambda: generic(b"\x0a\xff\xff\xff\xff\x0f", timeout=TIMEOUT), INVALID,
                "ModelInfer of bytes that are not protobuf")
    check(stub.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT).live is True, "ServerLive after the bad bytes")
    again = stub.ModelInfer(raw_request(rid="py-grpc-4"), timeout=TIMEOUT)
    check(again.id == "py-grpc-4" and len(again.raw_output_contents) == 1 and again.raw_output_contents[0] == typed,
          "after the bad bytes, a good request is answered (the same floats)")


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    cloud_node = sys.argv[1]
    grpc = oip_grpc_interop.import_grpc()  # exits 77, or re-runs this script under /usr/bin/python3

    work = tempfile.mkdtemp(prefix="edgesplit-oip-grpc-client-")
    proc = channel = log = None

    def show_log():
        """Prints cloud_node's output so far and returns it."""
        if log is None:
            return ""
        log.flush()
        log.seek(0)
        text = log.read()
        print(text)
        return text

    try:
        gen = os.path.join(work, "gen")
        os.mkdir(gen)
        pb, pb_grpc = oip_grpc_interop.generate(gen)

        model = os.path.join(work, "model.safetensors")
        layers = make_model(model)
        grpc_port = free_port()
        log = open(os.path.join(work, "cloud.log"), "w+")
        proc = subprocess.Popen([cloud_node, "--model", model, "--split", str(SPLIT), "--model-id", MODEL,
                                 "--port", "0", "--grpc-port", str(grpc_port)], stdout=log, stderr=subprocess.STDOUT)
        # No proxy (127.0.0.1 only) and short reconnection backoffs, so that the wait below
        # notices the server soon after it listens.
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}",
                                        options=[("grpc.enable_http_proxy", 0),
                                                 ("grpc.initial_reconnect_backoff_ms", 100),
                                                 ("grpc.min_reconnect_backoff_ms", 100),
                                                 ("grpc.max_reconnect_backoff_ms", 500)])
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        deadline = time.monotonic() + 20  # bounded: 20 s
        live = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                live = stub.ServerLive(pb.ServerLiveRequest(), timeout=1).live
                if live:
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        if proc.poll() is not None:
            if "no gRPC front end" in show_log():
                print("skipped: cloud_node has no gRPC front end")
                return 77
            print(f"FAIL: cloud_node exited ({proc.returncode}) before its gRPC front end answered")
            return 1
        if not live:
            show_log()
            print("FAIL: cloud_node's gRPC front end did not answer ServerLive within 20 s")
            return 1

        try:
            run(grpc, pb, stub, channel, layers)
        except (AssertionError, grpc.RpcError) as e:
            show_log()
            if isinstance(e, grpc.RpcError):
                print(f"FAIL: an RPC failed: {e.code().name}: {e.details()!r}")
            else:
                print("FAIL:", e)
            return 1
        print("all checks passed")
        return 0
    finally:
        if channel is not None:
            channel.close()
        stop(proc)
        if log is not None:
            log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
