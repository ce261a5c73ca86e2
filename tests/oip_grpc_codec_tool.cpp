// The C++ side of the protobuf cross-check (tests/oip_grpc_interop.py): wire/oip_grpc.hpp's
// encoder and decoder driven from the command line, so that a script can compare them with
// protoc-generated classes.
//
//   oip_grpc_codec_tool encode DIR        writes every sample message (oip_grpc_entry.hpp) as
//                                         DIR/<kind>-<name>.bin, with DIR/<kind>-<name>.txt, its
//                                         dump as the decoder reads it back
//   oip_grpc_codec_tool decode KIND FILE  decodes FILE as KIND and prints its dump; a refusal
//                                         prints "error <errc>" and exits 3
//
// The dump is one "path=value" line per field, every field printed (defaults too): strings and
// bytes as lowercase hex, integers in decimal, bools 0/1, floats and doubles as the hex of
// their IEEE bits (so NaN payloads and -0 compare exactly), lists comma-separated, parameters
// as "kind:value" sorted by key. The script prints the same dump from its Python messages.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "edgesplit/wire/oip_grpc.hpp"
#include "fuzz/oip_grpc_entry.hpp"

namespace {

namespace oip = edgesplit::wire::oip;

std::string hex(const void* data, std::size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < n; ++i) {
    s += digits[p[i] >> 4];
    s += digits[p[i] & 15];
  }
  return s;
}
std::string hex(const std::string& s) { return hex(s.data(), s.size()); }
std::string hex(const std::vector<std::byte>& b) { return hex(b.data(), b.size()); }

std::string bits(float v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08x", static_cast<unsigned>(std::bit_cast<std::uint32_t>(v)));
  return buf;
}
std::string bits(double v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(std::bit_cast<std::uint64_t>(v)));
  return buf;
}

template <class V, class F>
std::string join(const V& list, F f) {
  std::string s;
  bool first = true;
  for (const auto& x : list) {
    if (!first) s += ',';
    first = false;
    s += f(x);
  }
  return s;
}
template <class V>
std::string join_num(const V& list) {
  return join(list, [](auto x) { return std::to_string(x); });
}

struct Dump {
  std::ostringstream out;
  void line(const std::string& path, const std::string& value) { out << path << '=' << value << '\n'; }

  void parameters(const std::string& path, const oip::Parameters& p) {
    line(path + ".count", std::to_string(p.size()));
    for (const auto& [key, value] : p) {
      std::string v;
      switch (value.index()) {
        case 0: v = "none"; break;
        case 1: v = std::string("bool:") + (std::get<1>(value) ? "1" : "0"); break;
        case 2: v = "int64:" + std::to_string(std::get<2>(value)); break;
        case 3: v = "string:" + hex(std::get<3>(value)); break;
        case 4: v = "double:" + bits(std::get<4>(value)); break;
        case 5: v = "uint64:" + std::to_string(std::get<5>(value)); break;
      }
      line(path + "[" + hex(key) + "]", v);
    }
  }
  void contents(const std::string& path, const oip::InferTensorContents& c) {
    line(path + ".bool", join(c.bool_contents, [](bool b) { return std::string(b ? "1" : "0"); }));
    line(path + ".int", join_num(c.int_contents));
    line(path + ".int64", join_num(c.int64_contents));
    line(path + ".uint", join_num(c.uint_contents));
    line(path + ".uint64", join_num(c.uint64_contents));
    line(path + ".fp32", join(c.fp32_contents, [](float v) { return bits(v); }));
    line(path + ".fp64", join(c.fp64_contents, [](double v) { return bits(v); }));
    line(path + ".bytes", join(c.bytes_contents, [](const std::string& s) { return hex(s); }));
  }
  void tensors(const std::string& path, const std::vector<oip::InferTensor>& ts) {
    line(path + ".count", std::to_string(ts.size()));
    for (std::size_t i = 0; i < ts.size(); ++i) {
      const std::string p = path + "[" + std::to_string(i) + "]";
      line(p + ".name", hex(ts[i].name));
      line(p + ".datatype", hex(ts[i].datatype));
      line(p + ".shape", join_num(ts[i].shape));
      parameters(p + ".parameters", ts[i].parameters);
      contents(p + ".contents", ts[i].contents);
    }
  }
  void raw(const std::string& path, const std::vector<std::vector<std::byte>>& r) {
    line(path + ".count", std::to_string(r.size()));
    for (std::size_t i = 0; i < r.size(); ++i) line(path + "[" + std::to_string(i) + "]", hex(r[i]));
  }
  void metadata(const std::string& path, const std::vector<oip::TensorMetadata>& ts) {
    line(path + ".count", std::to_string(ts.size()));
    for (std::size_t i = 0; i < ts.size(); ++i) {
      const std::string p = path + "[" + std::to_string(i) + "]";
      line(p + ".name", hex(ts[i].name));
      line(p + ".datatype", hex(ts[i].datatype));
      line(p + ".shape", join_num(ts[i].shape));
    }
  }

  void message(const oip::ServerLiveRequest&) {}
  void message(const oip::ServerReadyRequest&) {}
  void message(const oip::ServerMetadataRequest&) {}
  void message(const oip::ServerLiveResponse& m) { line("live", m.live ? "1" : "0"); }
  void message(const oip::ServerReadyResponse& m) { line("ready", m.ready ? "1" : "0"); }
  void message(const oip::ModelReadyResponse& m) { line("ready", m.ready ? "1" : "0"); }
  void message(const oip::ModelReadyRequest& m) {
    line("name", hex(m.name));
    line("version", hex(m.version));
  }
  void message(const oip::ModelMetadataRequest& m) {
    line("name", hex(m.name));
    line("version", hex(m.version));
  }
  void message(const oip::ServerMetadataResponse& m) {
    line("name", hex(m.name));
    line("version", hex(m.version));
    line("extensions", join(m.extensions, [](const std::string& s) { return hex(s); }));
  }
  void message(const oip::ModelMetadataResponse& m) {
    line("name", hex(m.name));
    line("versions", join(m.versions, [](const std::string& s) { return hex(s); }));
    line("platform", hex(m.platform));
    metadata("inputs", m.inputs);
    metadata("outputs", m.outputs);
  }
  void message(const oip::ModelInferRequest& m) {
    line("model_name", hex(m.model_name));
    line("model_version", hex(m.model_version));
    line("id", hex(m.id));
    parameters("parameters", m.parameters);
    tensors("inputs", m.inputs);
    line("outputs.count", std::to_string(m.outputs.size()));
    for (std::size_t i = 0; i < m.outputs.size(); ++i) {
      line("outputs[" + std::to_string(i) + "].name", hex(m.outputs[i].name));
      parameters("outputs[" + std::to_string(i) + "].parameters", m.outputs[i].parameters);
    }
    raw("raw_input_contents", m.raw_input_contents);
  }
  void message(const oip::ModelInferResponse& m) {
    line("model_name", hex(m.model_name));
    line("model_version", hex(m.model_version));
    line("id", hex(m.id));
    parameters("parameters", m.parameters);
    tensors("outputs", m.outputs);
    raw("raw_output_contents", m.raw_output_contents);
  }
};

template <class Message>
std::string decode_and_dump(const std::vector<std::byte>& bytes) {
  const auto m = oip::decode_as<Message>(bytes);
  Dump d;
  d.message(m);
  return d.out.str();
}

// Decodes `bytes` as the message `kind` names and returns its dump.
std::string dump_as(const std::string& kind, const std::vector<std::byte>& bytes) {
  if (kind == "server_live_request") return decode_and_dump<oip::ServerLiveRequest>(bytes);
  if (kind == "server_live_response") return decode_and_dump<oip::ServerLiveResponse>(bytes);
  if (kind == "server_ready_request") return decode_and_dump<oip::ServerReadyRequest>(bytes);
  if (kind == "server_ready_response") return decode_and_dump<oip::ServerReadyResponse>(bytes);
  if (kind == "model_ready_request") return decode_and_dump<oip::ModelReadyRequest>(bytes);
  if (kind == "model_ready_response") return decode_and_dump<oip::ModelReadyResponse>(bytes);
  if (kind == "server_metadata_request") return decode_and_dump<oip::ServerMetadataRequest>(bytes);
  if (kind == "server_metadata_response") return decode_and_dump<oip::ServerMetadataResponse>(bytes);
  if (kind == "model_metadata_request") return decode_and_dump<oip::ModelMetadataRequest>(bytes);
  if (kind == "model_metadata_response") return decode_and_dump<oip::ModelMetadataResponse>(bytes);
  if (kind == "model_infer_request") return decode_and_dump<oip::ModelInferRequest>(bytes);
  if (kind == "model_infer_response") return decode_and_dump<oip::ModelInferResponse>(bytes);
  throw std::runtime_error("unknown message kind " + kind);
}

std::vector<std::byte> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  const std::vector<char> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> b(raw.size());
  for (std::size_t i = 0; i < raw.size(); ++i) b[i] = static_cast<std::byte>(raw[i]);
  return b;
}

void write_file(const std::filesystem::path& path, const void* data, std::size_t n) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::vector<std::string> args(argv + 1, argv + argc);
    if (args.size() == 2 && args[0] == "encode") {
      const std::filesystem::path dir = args[1];
      std::filesystem::create_directories(dir);
      for (const auto& s : edgesplit_fuzz::oip_sample_messages()) {
        const std::string base = s.kind + "-" + s.name;
        write_file(dir / (base + ".bin"), s.bytes.data(), s.bytes.size());
        const std::string text = dump_as(s.kind, s.bytes);
        write_file(dir / (base + ".txt"), text.data(), text.size());
      }
      return 0;
    }
    if (args.size() == 3 && args[0] == "decode") {
      const auto bytes = read_file(args[2]);
      std::string text;
      try {
        text = dump_as(args[1], bytes);
      } catch (const edgesplit::error& e) {
        std::cout << "error " << edgesplit::to_string(e.code()) << '\n';
        std::cerr << e.what() << '\n';
        return 3;
      }
      std::cout << text;
      return 0;
    }
    std::cerr << "usage: oip_grpc_codec_tool encode DIR | decode KIND FILE\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "oip_grpc_codec_tool: " << e.what() << '\n';
    return 1;
  }
}
