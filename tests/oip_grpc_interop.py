#!/usr/bin/env python3
"""Cross-checks edgesplit's protobuf codec of the Open Inference Protocol over gRPC
(include/edgesplit/wire/oip_grpc.hpp) against real protobuf.

Generates Python classes from proto/grpc_service.proto with grpc_tools.protoc (Debian's
python3-grpc-tools) in a temporary directory, then:

1. C++ -> Python: `oip_grpc_codec_tool encode DIR` writes every sample message; each must parse
   with the generated classes to the dump the C++ decoder printed for it, and protobuf's own
   deterministic serialization of the parsed message must be the same bytes the C++ wrote.
2. Python -> C++: messages built here (edge values: unicode, oneof members holding default
   values, int32 sign extension, extreme integers, infinities, -0, NaN, subnormals, a raw tensor
   past 64 KiB, a map entry without value) are serialized by protobuf and decoded by
   `oip_grpc_codec_tool decode KIND FILE`, whose dump must be this script's dump of the message.
3. Bytes protobuf refuses (truncation, a length past the end, an 11-byte varint, wire types 6
   and 7, field number 0, a string that is not UTF-8, a nested length past its parent) must be
   refused by the C++ decoder too. Two refusals are the C++ decoder's own (protobuf accepts
   them): negative dimensions in an inference tensor and (well-formed) groups; they are checked
   as such.

Usage: oip_grpc_interop.py PATH/TO/oip_grpc_codec_tool
Exit 0: every check passed; 1: a mismatch (each is printed); 77: skipped (no grpc_tools).
"""

import math
import os
import struct
import subprocess
import sys
import tempfile
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "..", "proto")


def find_grpc_tools():
    """Imports grpc_tools, re-running under Debian's /usr/bin/python3 when the python3 found
    first (a virtualenv, pyenv) does not have it; exits 77 when none does."""
    try:
        import grpc_tools.protoc  # noqa: F401
        return
    except ImportError:
        pass
    system = "/usr/bin/python3"
    if os.path.exists(system) and os.path.realpath(sys.executable) != os.path.realpath(system) \
            and not os.environ.get("EDGESPLIT_OIP_GRPC_REEXEC"):
        os.environ["EDGESPLIT_OIP_GRPC_REEXEC"] = "1"
        os.execv(system, [system] + sys.argv)
    print("skipped: no python3 with grpc_tools (Debian package python3-grpc-tools)")
    sys.exit(77)


def import_grpc():
    """grpc (python3-grpcio), after find_grpc_tools(); exits 77 when it is missing."""
    find_grpc_tools()
    try:
        import grpc
    except ImportError:
        print("skipped: no grpcio (Debian package python3-grpcio)")
        sys.exit(77)
    return grpc


def generate(gen):
    """grpc_service_pb2 and grpc_service_pb2_grpc (messages and service stubs), generated from
    proto/grpc_service.proto into the directory gen and imported. For the scripts that talk gRPC
    to or as edgesplit (oip_grpc_client_interop.py, oip_grpc_edge_interop.py)."""
    from grpc_tools import protoc
    proto_dir = os.path.abspath(PROTO_DIR)
    rc = protoc.main(["grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={gen}", f"--grpc_python_out={gen}",
                      os.path.join(proto_dir, "grpc_service.proto")])
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc failed ({rc}) on proto/grpc_service.proto")
    sys.path.insert(0, gen)
    import grpc_service_pb2
    import grpc_service_pb2_grpc
    return grpc_service_pb2, grpc_service_pb2_grpc


def expect_code(grpc, call, code, what):
    """call() must fail with the gRPC status code code; prints "ok: what: CODE"."""
    try:
        call()
    except grpc.RpcError as e:
        if e.code() != code:
            raise AssertionError(f"{what}: expected {code.name}, got {e.code().name}: {e.details()!r}")
        print(f"ok: {what}: {code.name} ({e.details()!r})")
        return
    raise AssertionError(f"{what}: the RPC succeeded, expected {code.name}")


# ---- the dump: the same text oip_grpc_codec_tool prints (see the top of that file) ----

def hexs(s):
    return s.encode("utf-8").hex() if isinstance(s, str) else bytes(s).hex()


def f32(v):
    return struct.pack("<f", v)[::-1].hex()


def f64(v):
    return struct.pack("<d", v)[::-1].hex()


def join(values, f=str):
    return ",".join(f(v) for v in values)


def dump_parameters(lines, path, params):
    lines.append(f"{path}.count={len(params)}")
    for key in sorted(params.keys(), key=lambda k: k.encode("utf-8")):
        p = params[key]
        which = p.WhichOneof("parameter_choice")
        if which is None:
            v = "none"
        elif which == "bool_param":
            v = "bool:" + ("1" if p.bool_param else "0")
        elif which == "int64_param":
            v = f"int64:{p.int64_param}"
        elif which == "string_param":
            v = "string:" + hexs(p.string_param)
        elif which == "double_param":
            v = "double:" + f64(p.double_param)
        else:
            v = f"uint64:{p.uint64_param}"
        lines.append(f"{path}[{hexs(key)}]={v}")


def dump_contents(lines, path, c):
    lines.append(f"{path}.bool=" + join(c.bool_contents, lambda b: "1" if b else "0"))
    lines.append(f"{path}.int=" + join(c.int_contents))
    lines.append(f"{path}.int64=" + join(c.int64_contents))
    lines.append(f"{path}.uint=" + join(c.uint_contents))
    lines.append(f"{path}.uint64=" + join(c.uint64_contents))
    lines.append(f"{path}.fp32=" + join(c.fp32_contents, f32))
    lines.append(f"{path}.fp64=" + join(c.fp64_contents, f64))
    lines.append(f"{path}.bytes=" + join(c.bytes_contents, hexs))


def dump_tensors(lines, path, tensors):
    lines.append(f"{path}.count={len(tensors)}")
    for i, t in enumerate(tensors):
        p = f"{path}[{i}]"
        lines.append(f"{p}.name={hexs(t.name)}")
        lines.append(f"{p}.datatype={hexs(t.datatype)}")
        lines.append(f"{p}.shape=" + join(t.shape))
        dump_parameters(lines, p + ".parameters", t.parameters)
        dump_contents(lines, p + ".contents", t.contents)


def dump_raw(lines, path, raw):
    lines.append(f"{path}.count={len(raw)}")
    for i, r in enumerate(raw):
        lines.append(f"{path}[{i}]={hexs(r)}")


def dump_metadata(lines, path, tensors):
    lines.append(f"{path}.count={len(tensors)}")
    for i, t in enumerate(tensors):
        p = f"{path}[{i}]"
        lines.append(f"{p}.name={hexs(t.name)}")
        lines.append(f"{p}.datatype={hexs(t.datatype)}")
        lines.append(f"{p}.shape=" + join(t.shape))


def dump(kind, m):
    lines = []
    if kind in ("server_live_request", "server_ready_request", "server_metadata_request"):
        pass
    elif kind == "server_live_response":
        lines.append("live=" + ("1" if m.live else "0"))
    elif kind in ("server_ready_response", "model_ready_response"):
        lines.append("ready=" + ("1" if m.ready else "0"))
    elif kind in ("model_ready_request", "model_metadata_request"):
        lines.append("name=" + hexs(m.name))
        lines.append("version=" + hexs(m.version))
    elif kind == "server_metadata_response":
        lines.append("name=" + hexs(m.name))
        lines.append("version=" + hexs(m.version))
        lines.append("extensions=" + join(m.extensions, hexs))
    elif kind == "model_metadata_response":
        lines.append("name=" + hexs(m.name))
        lines.append("versions=" + join(m.versions, hexs))
        lines.append("platform=" + hexs(m.platform))
        dump_metadata(lines, "inputs", m.inputs)
        dump_metadata(lines, "outputs", m.outputs)
    elif kind == "model_infer_request":
        lines.append("model_name=" + hexs(m.model_name))
        lines.append("model_version=" + hexs(m.model_version))
        lines.append("id=" + hexs(m.id))
        dump_parameters(lines, "parameters", m.parameters)
        dump_tensors(lines, "inputs", m.inputs)
        lines.append(f"outputs.count={len(m.outputs)}")
        for i, o in enumerate(m.outputs):
            lines.append(f"outputs[{i}].name={hexs(o.name)}")
            dump_parameters(lines, f"outputs[{i}].parameters", o.parameters)
        dump_raw(lines, "raw_input_contents", m.raw_input_contents)
    elif kind == "model_infer_response":
        lines.append("model_name=" + hexs(m.model_name))
        lines.append("model_version=" + hexs(m.model_version))
        lines.append("id=" + hexs(m.id))
        dump_parameters(lines, "parameters", m.parameters)
        dump_tensors(lines, "outputs", m.outputs)
        dump_raw(lines, "raw_output_contents", m.raw_output_contents)
    else:
        raise ValueError(kind)
    return "".join(line + "\n" for line in lines)


def classes(pb):
    return {
        "server_live_request": pb.ServerLiveRequest,
        "server_live_response": pb.ServerLiveResponse,
        "server_ready_request": pb.ServerReadyRequest,
        "server_ready_response": pb.ServerReadyResponse,
        "model_ready_request": pb.ModelReadyRequest,
        "model_ready_response": pb.ModelReadyResponse,
        "server_metadata_request": pb.ServerMetadataRequest,
        "server_metadata_response": pb.ServerMetadataResponse,
        "model_metadata_request": pb.ModelMetadataRequest,
        "model_metadata_response": pb.ModelMetadataResponse,
        "model_infer_request": pb.ModelInferRequest,
        "model_infer_response": pb.ModelInferResponse,
    }


def python_messages(pb):
    """(kind, name, message) built with the generated classes: the edge values."""
    out = []
    req = pb.ModelInferRequest(model_name="mödel-tail ✓", model_version="", id="α-1")
    req.parameters["b"].bool_param = False  # a oneof member holding its default is still set
    req.parameters["i"].int64_param = -(2 ** 63)
    req.parameters["z"].int64_param = 0
    req.parameters["s"].string_param = ""
    req.parameters["d"].double_param = -0.0
    req.parameters["u"].uint64_param = 2 ** 64 - 1
    req.parameters["none"].CopyFrom(pb.InferParameter())
    req.parameters["é"].double_param = float("inf")
    t = req.inputs.add(name="x", datatype="FP32", shape=[0, 3, 2 ** 62])
    t.contents.fp32_contents.extend([float("inf"), -float("inf"), -0.0, float("nan"), 1e-45, 3.4028234663852886e38, 0.1])
    t.parameters["binary_data_size"].int64_param = 24
    t2 = req.inputs.add(name="ints", datatype="INT32", shape=[6])
    t2.contents.int_contents.extend([-1, -(2 ** 31), 2 ** 31 - 1, 0, 1, -300])
    t3 = req.inputs.add(name="all", datatype="MIXED", shape=[1])
    t3.contents.bool_contents.extend([True, False])
    t3.contents.int64_contents.extend([-(2 ** 63), 2 ** 63 - 1])
    t3.contents.uint_contents.extend([2 ** 32 - 1, 0])
    t3.contents.uint64_contents.extend([2 ** 64 - 1])
    t3.contents.fp64_contents.extend([math.pi, 5e-324, -1e308])
    t3.contents.bytes_contents.extend([b"", b"\x00\xff\x80", "ü".encode()])
    o = req.outputs.add(name="logits")
    o.parameters["binary_data"].bool_param = True
    req.outputs.add(name="")
    req.raw_input_contents.append(bytes(range(256)) * 300)  # 76800 bytes: a 3-byte length
    req.raw_input_contents.append(b"")
    out.append(("model_infer_request", "python-edge", req))

    resp = pb.ModelInferResponse(model_name="m", model_version="7", id="")
    resp.parameters["queue_us"].uint64_param = 12
    r = resp.outputs.add(name="probs", datatype="FP32", shape=[1, 3])
    r.contents.fp32_contents.extend([0.25, 0.5, 0.25])
    resp.outputs.add(name="raw", datatype="UINT8", shape=[4])
    resp.raw_output_contents.append(b"")
    resp.raw_output_contents.append(b"\x01\x02\x03\x04")
    out.append(("model_infer_response", "python", resp))

    md = pb.ModelMetadataResponse(name="m", versions=["1", "2", ""], platform="onnx")
    md.inputs.add(name="in", datatype="FP32", shape=[-1, 28, 28])
    md.outputs.add(name="out", datatype="INT64", shape=[])
    out.append(("model_metadata_response", "python", md))
    out.append(("server_metadata_response", "python", pb.ServerMetadataResponse(name="triton", version="2.40", extensions=["classification", "sequence"])))
    out.append(("model_ready_request", "python", pb.ModelReadyRequest(name="日本", version="")))
    out.append(("model_metadata_request", "python", pb.ModelMetadataRequest(name="m", version="9")))
    out.append(("server_live_response", "python-false", pb.ServerLiveResponse(live=False)))
    out.append(("server_ready_response", "python", pb.ServerReadyResponse(ready=True)))
    out.append(("model_ready_response", "python", pb.ModelReadyResponse(ready=True)))
    out.append(("server_live_request", "python", pb.ServerLiveRequest()))
    out.append(("server_ready_request", "python", pb.ServerReadyRequest()))
    out.append(("server_metadata_request", "python", pb.ServerMetadataRequest()))
    return out


def malformed():
    """(kind, name, bytes, whether protobuf refuses them too)."""
    return [
        ("model_infer_request", "truncated-length", b"\x0a\x80", True),
        ("model_infer_request", "length-past-end", b"\x0a\x05ab", True),
        ("model_infer_request", "varint-11-bytes", b"\x98\x06" + b"\x80" * 10 + b"\x00", True),
        ("model_infer_request", "wire-type-6", b"\x0e\x00", True),
        ("model_infer_request", "wire-type-7", b"\x0f\x00", True),
        ("model_infer_request", "field-0", b"\x00\x00", True),
        ("model_ready_request", "not-utf8", b"\x0a\x02\xc0\xaf", True),
        ("model_infer_request", "nested-past-parent", b"\x2a\x02\x0a\x03abc\x1a\x00", True),
        # The C++ decoder's own refusals: protobuf takes both.
        ("model_infer_request", "negative-dim", b"\x2a\x0b\x18" + b"\xff" * 9 + b"\x01", False),
        ("model_infer_request", "group", b"\x9b\x06\x9c\x06", False),
    ]


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    tool = sys.argv[1]
    find_grpc_tools()
    from grpc_tools import protoc

    failures = []
    checks = 0
    with tempfile.TemporaryDirectory(prefix="oip-grpc-interop-") as tmp:
        gen = os.path.join(tmp, "gen")
        os.mkdir(gen)
        rc = protoc.main(["grpc_tools.protoc", f"-I{os.path.abspath(PROTO_DIR)}", f"--python_out={gen}",
                          os.path.abspath(os.path.join(PROTO_DIR, "grpc_service.proto"))])
        if rc != 0:
            print(f"grpc_tools.protoc failed ({rc}) on proto/grpc_service.proto")
            return 1
        sys.path.insert(0, gen)
        import grpc_service_pb2 as pb
        from google.protobuf.message import DecodeError
        kinds = classes(pb)

        # 1. C++ -> Python.
        cpp = os.path.join(tmp, "cpp")
        subprocess.run([tool, "encode", cpp], check=True)
        names = sorted(n[:-4] for n in os.listdir(cpp) if n.endswith(".bin"))
        if len(names) < 10:
            failures.append(f"the tool wrote {len(names)} samples, expected 10 or more")
        for name in names:
            kind = name.split("-")[0]
            with open(os.path.join(cpp, name + ".bin"), "rb") as f:
                data = f.read()
            with open(os.path.join(cpp, name + ".txt"), encoding="utf-8") as f:
                cpp_dump = f.read()
            m = kinds[kind]()
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a partial parse is a failure here
                m.ParseFromString(data)
            checks += 1
            if dump(kind, m) != cpp_dump:
                failures.append(f"C++ -> Python {name}: values differ\n--- C++\n{cpp_dump}--- Python\n{dump(kind, m)}")
            checks += 1
            again = m.SerializeToString(deterministic=True)
            if again != data:
                failures.append(f"C++ -> Python {name}: protobuf re-serializes to other bytes\n  C++    {data.hex()}\n  Python {again.hex()}")

        # 2. Python -> C++.
        def decode_with_tool(kind, name, data):
            path = os.path.join(tmp, f"py-{kind}-{name}.bin")
            with open(path, "wb") as f:
                f.write(data)
            return subprocess.run([tool, "decode", kind, path], capture_output=True, text=True)

        for kind, name, m in python_messages(pb):
            data = m.SerializeToString()
            r = decode_with_tool(kind, name, data)
            checks += 1
            if r.returncode != 0:
                failures.append(f"Python -> C++ {kind} {name}: the C++ decoder refused it: {r.stdout.strip()} {r.stderr.strip()}")
            elif r.stdout != dump(kind, m):
                failures.append(f"Python -> C++ {kind} {name}: values differ\n--- Python\n{dump(kind, m)}--- C++\n{r.stdout}")

        # 3. Malformed bytes.
        for kind, name, data, protobuf_refuses in malformed():
            # protobuf 4.21's C++-backed Python classes stop at a zero tag or a lone end-group
            # tag with a RuntimeWarning ("Not all data was converted") instead of an error: a
            # parse that leaves bytes behind counts as a refusal.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    m = kinds[kind]()
                    used = m.ParseFromString(data)
                    py_refused = bool(caught) or (used is not None and used != len(data))
                except DecodeError:
                    py_refused = True
            r = decode_with_tool(kind, name, data)
            checks += 1
            if py_refused != protobuf_refuses:
                failures.append(f"malformed {name}: protobuf {'refused' if py_refused else 'accepted'} it, expected otherwise")
            if r.returncode != 3 or r.stdout.strip() != "error corrupt_frame":
                failures.append(f"malformed {name}: the C++ decoder gave rc {r.returncode}, {r.stdout.strip()!r} {r.stderr.strip()!r}")

    for f in failures:
        print("FAIL:", f)
    print(f"{checks} checks, {len(failures)} failures (protobuf {__import__('google.protobuf').protobuf.__version__})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
