// The Open Inference Protocol over gRPC (runtime/oip_grpc_server.hpp, runtime/oip_grpc_client.hpp):
// every RPC, typed and raw inference against the tail run locally, a graph tail of two inputs,
// every bad request with its status code, bytes that are not protobuf, the memory budget, the
// batcher's and the front end's own queue limits, and the front end's metrics; and an EdgeClient
// over the OIP transport (runtime/oip_grpc_transport.hpp): exact answers, refusals, a dead server
// and a missed deadline. Loopback only, ephemeral ports.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "edgesplit/edgesplit.hpp"
#include "edgesplit/runtime/cloud_server.hpp"
#include "edgesplit/runtime/oip_grpc_client.hpp"
#include "edgesplit/runtime/oip_grpc_server.hpp"
#include "edgesplit/runtime/oip_grpc_transport.hpp"
#include "model_fixtures.hpp"
#include "runtime_fixtures.hpp"

using namespace edgesplit;
using namespace edgesplit_test;
using namespace std::chrono_literals;
namespace oip = edgesplit::wire::oip;
using Code = grpc::StatusCode;

namespace {

std::string target(const OipGrpcServer& g) { return "127.0.0.1:" + std::to_string(g.port()); }

GrpcClientOptions client_options() {
  GrpcClientOptions o;
  o.timeout = 20s;
  return o;
}

oip::InferTensor typed(const std::string& name, const Tensor<float>& t) {
  oip::InferTensor x;
  x.name = name;
  x.datatype = "FP32";
  for (std::size_t d : t.shape().dims()) x.shape.push_back(static_cast<std::int64_t>(d));
  x.contents.fp32_contents.assign(t.data(), t.data() + t.size());
  return x;
}

std::vector<std::byte> raw(const Tensor<float>& t) {
  std::vector<std::byte> b(t.size() * sizeof(float));
  std::memcpy(b.data(), t.data(), b.size());  // the test hosts are little-endian, as the protocol
  return b;
}

oip::ModelInferRequest infer_request(const std::string& model, const std::string& version, const Tensor<float>& x) {
  oip::ModelInferRequest q;
  q.model_name = model;
  q.model_version = version;
  q.inputs.push_back(typed("features", x));
  return q;
}

// The status of ModelInfer with `q`, as the server answers it.
grpc::Status infer_status(OipGrpcClient& c, const oip::ModelInferRequest& q) {
  std::vector<std::byte> bytes, answer;
  oip::encode(q, bytes);
  return c.call_raw(oip::method::model_infer, bytes, answer);
}

// The answer's one output as floats, checked against `want` bit for bit.
void check_answer(const oip::ModelInferResponse& r, const std::string& output, const Tensor<float>& want) {
  REQUIRE(r.outputs.size() == 1);
  CHECK(r.outputs[0].name == output);
  CHECK(r.outputs[0].datatype == "FP32");
  std::vector<std::int64_t> shape;
  for (std::size_t d : want.shape().dims()) shape.push_back(static_cast<std::int64_t>(d));
  CHECK(r.outputs[0].shape == shape);
  CHECK(r.outputs[0].contents.empty());  // answered raw, as Triton does
  REQUIRE(r.raw_output_contents.size() == 1);
  REQUIRE(r.raw_output_contents[0].size() == want.size() * sizeof(float));
  CHECK(std::memcmp(r.raw_output_contents[0].data(), want.data(), want.size() * sizeof(float)) == 0);
}

}  // namespace

TEST_CASE("OIP gRPC: health, server and model metadata, readiness", "[grpc]") {
  CloudServer server(small_server_options());
  OipGrpcServer g(server, "127.0.0.1", 0);
  OipGrpcClient c(target(g), client_options());

  CHECK(c.server_live());
  CHECK_FALSE(c.server_ready());  // no model yet

  const Split s = make_split();
  server.register_model(kModel, s.tail);
  server.register_model({"toy", 1, 0, 1}, s.whole.split(1).second);
  CHECK(c.server_ready());

  const oip::ServerMetadataResponse sm = c.server_metadata();
  CHECK(sm.name == "edgesplit");
  CHECK(sm.version == std::string(oip_server_version));

  const oip::ModelMetadataResponse mm = c.model_metadata("toy", "2");
  CHECK(mm.name == "toy");
  CHECK(mm.versions == std::vector<std::string>{"1", "2"});
  CHECK(mm.platform == "edgesplit");
  REQUIRE(mm.inputs.size() == 1);
  CHECK(mm.inputs[0] == oip::TensorMetadata{"features", "FP32", {-1, static_cast<std::int64_t>(kHidden)}});
  REQUIRE(mm.outputs.size() == 1);
  CHECK(mm.outputs[0] == oip::TensorMetadata{"output", "FP32", {-1, static_cast<std::int64_t>(kOut)}});
  CHECK(c.model_metadata("toy").inputs[0].shape == std::vector<std::int64_t>{-1, static_cast<std::int64_t>(kHidden)});

  CHECK(c.model_ready("toy", "2"));
  CHECK(c.model_ready("toy"));
  const auto not_found = [&](auto&& f) {
    try {
      f();
      FAIL("no error");
    } catch (const error& e) {
      CHECK(e.code() == errc::unsupported);  // NOT_FOUND
      CHECK(std::string(e.what()).find("no model") != std::string::npos);
    }
  };
  not_found([&] { (void)c.model_ready("nope"); });
  not_found([&] { (void)c.model_ready("toy", "7"); });
  not_found([&] { (void)c.model_ready("toy", "x1"); });
  not_found([&] { (void)c.model_metadata("toy", "99999999"); });
  not_found([&] { (void)c.model_metadata("nope"); });

  std::vector<std::byte> answer;
  CHECK(c.call_raw("/inference.GRPCInferenceService/RepositoryIndex", {}, answer).error_code() == Code::UNIMPLEMENTED);

  server.shutdown(0ms);
  CHECK_FALSE(c.server_live());
  CHECK_FALSE(c.server_ready());
}

TEST_CASE("OIP gRPC inference: typed and raw inputs answer the tail's floats bit for bit", "[grpc]") {
  CloudServer server(small_server_options());
  Split s = make_split();
  server.register_model(kModel, s.tail);
  OipGrpcServer g(server, "127.0.0.1", 0);
  OipGrpcClient c(target(g), client_options());

  const std::size_t batch = GENERATE(std::size_t{1}, std::size_t{3});
  INFO("batch " << batch);
  const Tensor<float> x = random_input(batch, kHidden, 100 + batch);
  const Tensor<float> want = s.tail.predict(x.cview());

  SECTION("typed fp32_contents, id echoed") {
    oip::ModelInferRequest q = infer_request("toy", "2", x);
    q.id = "req-7";
    const oip::ModelInferResponse r = c.model_infer(q);
    CHECK(r.model_name == "toy");
    CHECK(r.model_version == "2");
    CHECK(r.id == "req-7");
    check_answer(r, "output", want);
  }
  SECTION("raw_input_contents, no version, the output asked for by name") {
    oip::ModelInferRequest q = infer_request("toy", "", x);
    q.inputs[0].contents = {};
    q.raw_input_contents.push_back(raw(x));
    q.outputs.push_back({"output", {}});
    const oip::ModelInferResponse r = c.model_infer(q);
    CHECK(r.model_version == "2");
    check_answer(r, "output", want);
  }
  CHECK(server.stats().memory_in_use == 0);
}

TEST_CASE("OIP gRPC inference on a graph tail of two inputs: matched by name", "[grpc][graph]") {
  Graph<float> whole = two_branch_graph(5);
  const wire::ModelIdentity id{"branches", 1, 0, 2};
  auto [head, tail] = whole.split(id.split);
  CloudServer server(small_server_options());
  server.register_model(id, tail);
  OipGrpcServer g(server, "127.0.0.1", 0);
  OipGrpcClient c(target(g), client_options());

  const oip::ModelMetadataResponse mm = c.model_metadata("branches");
  REQUIRE(mm.inputs.size() == 2);
  CHECK(mm.inputs[0] == oip::TensorMetadata{"a", "FP32", {-1, 3}});
  CHECK(mm.inputs[1] == oip::TensorMetadata{"b", "FP32", {-1, 3}});
  CHECK(mm.outputs[0] == oip::TensorMetadata{"y", "FP32", {-1, 2}});

  const Tensor<float> a = random_input(2, 3, 1), b = random_input(2, 3, 2);
  Tensor<float> want(Shape{2, 2});
  const std::array<TensorView<const float>, 2> in{a.cview(), b.cview()};
  tail.forward(in, std::array{want.view()});
  oip::ModelInferRequest q;
  q.model_name = "branches";
  q.inputs = {typed("b", b), typed("a", a)};  // b before a: by name, not by place
  check_answer(c.model_infer(q), "y", want);
  // raw, in the same (request) order
  q.inputs[0].contents = {};
  q.inputs[1].contents = {};
  q.raw_input_contents = {raw(b), raw(a)};
  check_answer(c.model_infer(q), "y", want);

  oip::ModelInferRequest one;
  one.model_name = "branches";
  one.inputs = {typed("a", a)};
  CHECK(infer_status(c, one).error_code() == Code::INVALID_ARGUMENT);  // one of two
  one.inputs = {typed("a", a), typed("a", a)};
  CHECK(infer_status(c, one).error_code() == Code::INVALID_ARGUMENT);  // the same twice
  one.inputs = {typed("a", a), typed("b", random_input(3, 3, 3))};
  const grpc::Status differ = infer_status(c, one);
  CHECK(differ.error_code() == Code::INVALID_ARGUMENT);
  CHECK(differ.error_message() == "inputs differ in batch: 2 and 3");
}

TEST_CASE("Bad OIP gRPC requests: each its status code and message, and the server keeps serving", "[grpc]") {
  CloudServer server(small_server_options());
  Split s = make_split();
  server.register_model(kModel, s.tail);
  OipGrpcServer g(server, "127.0.0.1", 0);
  OipGrpcClient c(target(g), client_options());
  const Tensor<float> x = random_input(2, kHidden, 3);

  const auto refused = [&](oip::ModelInferRequest q, Code code, const std::string& text) {
    const grpc::Status st = infer_status(c, q);
    INFO(st.error_message());
    CHECK(st.error_code() == code);
    CHECK(st.error_message().find(text) != std::string::npos);
  };
  oip::ModelInferRequest q = infer_request("toy", "2", x);
  refused(infer_request("nope", "", x), Code::NOT_FOUND, "no model 'nope'");
  refused(infer_request("toy", "3", x), Code::NOT_FOUND, "no model 'toy' at version 3");
  {
    auto bad = q;
    bad.inputs[0].datatype = "INT64";
    refused(bad, Code::INVALID_ARGUMENT, "has datatype 'INT64'; the model takes FP32");
  }
  refused(infer_request("toy", "2", random_input(1, kHidden + 1, 1)), Code::INVALID_ARGUMENT,
          "has shape [1,17]; the model takes [-1,16]");
  {
    auto bad = q;
    bad.inputs[0].shape = {2, 4, 4};  // the same count, another shape: refused, not reshaped
    refused(bad, Code::INVALID_ARGUMENT, "has shape [2,4,4]; the model takes [-1,16]");
    bad.inputs[0].shape = {32};
    refused(bad, Code::INVALID_ARGUMENT, "needs a shape of 2 to");
    bad.inputs[0].shape = {0, 16};
    refused(bad, Code::INVALID_ARGUMENT, "dimensions must be integers 1 to 2^32-1");
    bad.inputs[0].shape = {4294967295, 4294967295};
    refused(bad, Code::INVALID_ARGUMENT, "");  // overflow or over the element cap, before anything is sized
  }
  {
    auto bad = q;
    bad.inputs[0].contents.fp32_contents.pop_back();
    refused(bad, Code::INVALID_ARGUMENT, "has 31 values; shape [2,16] takes 32");
    bad = q;
    bad.inputs[0].contents.int_contents = {1};
    refused(bad, Code::INVALID_ARGUMENT, "carries values outside fp32_contents");
    bad = q;
    bad.inputs[0].name = "pixels";
    refused(bad, Code::INVALID_ARGUMENT, "model 'toy' has no input 'pixels' (its inputs: 'features')");
    bad = q;
    bad.outputs.push_back({"probabilities", {}});
    refused(bad, Code::INVALID_ARGUMENT, "the model has no output 'probabilities' (its output: 'output')");
  }
  {
    auto bad = q;
    bad.raw_input_contents.push_back(raw(x));  // and typed contents too
    refused(bad, Code::INVALID_ARGUMENT, "has both contents and raw_input_contents");
    bad.inputs[0].contents = {};
    bad.raw_input_contents[0].resize(bad.raw_input_contents[0].size() - 8);
    refused(bad, Code::INVALID_ARGUMENT, "has 120 bytes of raw contents; shape [2,16] of FP32 takes 128");
    bad.raw_input_contents = {raw(x), raw(x)};
    refused(bad, Code::INVALID_ARGUMENT, "raw_input_contents has 2 entries for 1 inputs");
  }
  {
    // INT8 codes: raw, with a valid scale and zero point, of one byte per element.
    auto bad = q;
    bad.inputs[0].datatype = "INT8";
    refused(bad, Code::INVALID_ARGUMENT, "INT8 codes go in raw_input_contents");
    bad.inputs[0].contents = {};
    bad.raw_input_contents.push_back(std::vector<std::byte>(x.size()));
    refused(bad, Code::INVALID_ARGUMENT, "INT8 codes need the parameters scale");
    bad.inputs[0].parameters["scale"] = 0.5;
    bad.inputs[0].parameters["zero_point"] = std::int64_t{200};
    refused(bad, Code::INVALID_ARGUMENT, "INT8 codes need the parameters scale");
    bad.inputs[0].parameters["zero_point"] = std::int64_t{-3};
    bad.inputs[0].parameters["scale"] = 0.1;  // not exactly a float
    refused(bad, Code::INVALID_ARGUMENT, "INT8 codes need the parameters scale");
    bad.inputs[0].parameters["scale"] = 0.5;
    bad.raw_input_contents[0].pop_back();
    refused(bad, Code::INVALID_ARGUMENT, "has 31 bytes of raw contents; shape [2,16] of INT8 takes 32");
    bad.raw_input_contents[0].push_back(std::byte{0});
    // well formed: codes 0 dequantize to 0.5 * (0 - (-3)) = 1.5
    const oip::ModelInferResponse r = c.model_infer(bad);
    check_answer(r, "output", s.tail.predict(Tensor<float>(Shape{2, kHidden}, 1.5f).cview()));
  }
  // Bytes that are not protobuf: a length past the end, and a varint of 11 bytes.
  std::vector<std::byte> answer;
  for (const std::vector<std::byte>& junk :
       {std::vector<std::byte>{std::byte{0x0a}, std::byte{0xff}, std::byte{0xff}, std::byte{0xff}, std::byte{0xff}, std::byte{0x0f}},
        std::vector<std::byte>(11, std::byte{0x80})}) {
    const grpc::Status st = c.call_raw(oip::method::model_infer, junk, answer);
    CHECK(st.error_code() == Code::INVALID_ARGUMENT);
    CHECK(c.call_raw(oip::method::model_ready, junk, answer).error_code() == Code::INVALID_ARGUMENT);
  }
  // A message with trailing bytes of another call's kind is still a ServerLive request: unknown
  // fields are skipped, as protobuf does.
  CHECK(c.call_raw(oip::method::server_live, std::vector<std::byte>{std::byte{0x08}, std::byte{0x01}}, answer).ok());

  check_answer(c.model_infer(q), "output", s.tail.predict(x.cview()));  // still serving
  CHECK(server.stats().memory_in_use == 0);
}

TEST_CASE("OIP gRPC messages over the caps or the memory budget are refused before they are held", "[grpc]") {
  ServerOptions o = small_server_options();  // 2 MiB budget, 1 MiB frames
  CloudServer server(o);
  Split s = make_split();
  server.register_model(kModel, s.tail);
  GrpcOptions go;
  go.max_message_bytes = std::size_t{4} << 20;  // above what the budget affords: the budget must refuse
  OipGrpcServer g(server, "127.0.0.1", 0, go);
  GrpcClientOptions co = client_options();
  OipGrpcClient c(target(g), co);

  std::vector<std::byte> answer;
  // Over the message cap: gRPC refuses it before it is read.
  const std::vector<std::byte> over((std::size_t{4} << 20) + 64, std::byte{0});
  CHECK(c.call_raw(oip::method::model_infer, over, answer).error_code() == Code::RESOURCE_EXHAUSTED);
  // Within the cap, but its bytes and their decoding would pass the budget (3 x 1 MiB > 2 MiB).
  oip::ModelInferRequest big = infer_request("toy", "2", random_input(1, kHidden, 1));
  big.inputs[0].contents = {};
  big.raw_input_contents.push_back(std::vector<std::byte>(std::size_t{1} << 20));
  const grpc::Status full = infer_status(c, big);
  CHECK(full.error_code() == Code::UNAVAILABLE);
  CHECK(full.error_message() == "server memory budget full");
  // One-byte elements that would each become a 32-byte string: refused by the decoder's memory
  // cap (twice the message) before they are allocated.
  oip::ModelInferRequest strings = infer_request("toy", "2", random_input(1, kHidden, 1));
  strings.inputs[0].contents = {};
  strings.inputs[0].contents.bytes_contents.assign(20000, std::string());
  const grpc::Status expand = infer_status(c, strings);
  CHECK(expand.error_code() == Code::INVALID_ARGUMENT);
  CHECK(expand.error_message().find("would take more memory than the limit") != std::string::npos);

  CHECK(server.stats().memory_peak <= o.memory_budget);
  CHECK(server.stats().memory_in_use == 0);
  const Tensor<float> x = random_input(1, kHidden, 2);
  check_answer(c.model_infer(infer_request("toy", "2", x)), "output", s.tail.predict(x.cview()));
}

TEST_CASE("OIP gRPC calls share the batcher's limits, and the front end bounds its own queue", "[grpc]") {
  ServerOptions o = small_server_options();
  o.queue_capacity = 1;
  o.max_batch = 1;
  CloudServer server(o);
  Gate gate;  // the first request holds the worker until the gate opens
  server.register_model(kModel, gate.gated(make_split().tail));
  GrpcOptions go;
  go.threads = 3;
  go.max_queued = 1;
  OipGrpcServer g(server, "127.0.0.1", 0, go);
  OipGrpcClient c(target(g), client_options());
  const oip::ModelInferRequest q = infer_request("toy", "2", random_input(1, kHidden, 9));

  std::vector<Code> codes(4, Code::UNKNOWN);
  std::vector<std::thread> senders;
  const auto send = [&](std::size_t i) { codes[i] = infer_status(c, q).error_code(); };
  senders.emplace_back(send, 0);
  REQUIRE(gate.wait_entered());  // the batcher's worker holds the first (a bounded wait, no timing asserted)
  senders.emplace_back(send, 1);
  for (int i = 0; i < 2000 && server.stats().queue_depth < 1; ++i) std::this_thread::sleep_for(5ms);
  REQUIRE(server.stats().queue_depth == 1);  // the batcher's queue is full
  // The third front-end thread takes the next call to the batcher, which refuses it at once.
  CHECK(infer_status(c, q).error_code() == Code::UNAVAILABLE);
  // Two front-end threads wait for their answers; the third still answers a ServerLive.
  CHECK(c.server_live());
  gate.open();
  for (auto& t : senders) t.join();
  CHECK(codes[0] == Code::OK);
  CHECK(codes[1] == Code::OK);
  CHECK(server.stats().memory_in_use == 0);

  MetricsWriter w;
  g.write_metrics(w);
  const std::string text = w.text();
  CHECK(text.find("edgesplit_grpc_requests_total{code=\"OK\"} 3") != std::string::npos);
  CHECK(text.find("edgesplit_grpc_requests_total{code=\"UNAVAILABLE\"} 1") != std::string::npos);
  CHECK(g.stats().requests == 4);
  CHECK(g.stats().bytes_received > 0);
  CHECK(g.stats().bytes_sent > 0);
}

TEST_CASE("OIP gRPC front end: a full queue of its own refuses calls at once, UNAVAILABLE", "[grpc]") {
  CloudServer server(small_server_options());
  Gate gate;  // the first request holds the worker until the gate opens
  server.register_model(kModel, gate.gated(make_split().tail));
  GrpcOptions go;
  go.threads = 1;     // held by the first call, waiting for its answer
  go.max_queued = 1;  // the second waits for the thread
  OipGrpcServer g(server, "127.0.0.1", 0, go);
  OipGrpcClient c(target(g), client_options());
  const oip::ModelInferRequest q = infer_request("toy", "2", random_input(1, kHidden, 9));

  std::vector<Code> codes(2, Code::UNKNOWN);
  std::vector<std::thread> senders;
  senders.emplace_back([&] { codes[0] = infer_status(c, q).error_code(); });
  REQUIRE(gate.wait_entered());
  senders.emplace_back([&] { codes[1] = c.server_live() ? Code::OK : Code::INTERNAL; });
  for (int i = 0; i < 2000 && g.stats().in_flight < 2; ++i) std::this_thread::sleep_for(5ms);
  REQUIRE(g.stats().in_flight == 2);  // one running, one queued
  const grpc::Status busy = infer_status(c, q);
  CHECK(busy.error_code() == Code::UNAVAILABLE);
  CHECK(busy.error_message().find("the server is busy") != std::string::npos);
  CHECK(g.stats().refused_busy == 1);
  gate.open();
  for (auto& t : senders) t.join();
  CHECK(codes == std::vector<Code>{Code::OK, Code::OK});
}

TEST_CASE("An EdgeClient over the OIP gRPC transport: answers equal the whole model, fp32 and quantized", "[grpc][runtime]") {
  CloudServer server(small_server_options());
  Split s = make_split();
  server.register_model(kModel, s.tail);
  OipGrpcServer g(server, "127.0.0.1", 0);
  auto oip = std::make_shared<OipGrpcClient>(target(g), client_options());
  const EdgeClient::Connector connect = [oip] { return Channel(OipGrpcTransport(oip)); };

  {
    EdgeClient edge(s.head, connect, edge_options());
    for (std::uint64_t i = 0; i < 4; ++i) {
      const Tensor<float> x = random_input(1 + i % 3, kIn, 60 + i);
      const InferResult r = edge.infer(x.cview(), deadline_after(20s));
      REQUIRE(r.path == AnswerPath::cloud);
      const Tensor<float> want = s.whole.predict(x.cview());
      REQUIRE(r.output.shape() == want.shape());
      for (std::size_t j = 0; j < want.size(); ++j) CHECK(r.output[j] == want[j]);  // fp32 end to end: exact
    }
    CHECK(edge.stats().cloud_answers == 4);
    CHECK(edge.connected());
    // A PING is a ServerLive; its PONG feeds the link estimate (from its initial 20 ms).
    const double rtt0 = edge.link_estimate().rtt_s;
    edge.ping();
    for (int i = 0; i < 2000 && edge.link_estimate().rtt_s == rtt0; ++i) std::this_thread::sleep_for(5ms);
    CHECK(edge.link_estimate().rtt_s != rtt0);
  }
  {
    // 8-bit features travel as their dequantized values: the answer is the tail of exactly
    // what the codec decodes, as over the native protocol.
    EdgeClient edge(s.head, connect, edge_options(8));
    const Tensor<float> x = random_input(3, kIn, 70);
    const InferResult r = edge.infer(x.cview(), deadline_after(20s));
    REQUIRE(r.path == AnswerPath::cloud);
    CodecConfig cfg;
    cfg.bits = 8;
    FeatureCodec codec(cfg);
    std::vector<std::byte> frame;
    Tensor<float> decoded;
    codec.decode(codec.encode(s.head.predict(x.cview()).cview(), frame), decoded);
    const Tensor<float> want = s.tail.predict(decoded.cview());
    for (std::size_t j = 0; j < want.size(); ++j) CHECK(r.output[j] == want[j]);
  }
  {
    // With int8_features the same 8-bit features travel as INT8 codes with their scale and zero
    // point: the same answer, bit for bit, from about a quarter of the bytes.
    OipTransportOptions to;
    to.int8_features = true;
    EdgeClient fp32(s.head, connect, edge_options(8));
    EdgeClient int8(s.head, [oip, to] { return Channel(OipGrpcTransport(oip, to)); }, edge_options(8));
    const Tensor<float> x = random_input(32, kIn, 71);
    std::size_t before = g.stats().bytes_received;
    const InferResult a = fp32.infer(x.cview(), deadline_after(20s));
    const std::size_t fp32_bytes = g.stats().bytes_received - before;
    before = g.stats().bytes_received;
    const InferResult b = int8.infer(x.cview(), deadline_after(20s));
    const std::size_t int8_bytes = g.stats().bytes_received - before;
    REQUIRE(a.path == AnswerPath::cloud);
    REQUIRE(b.path == AnswerPath::cloud);
    REQUIRE(a.output.shape() == b.output.shape());
    for (std::size_t j = 0; j < a.output.size(); ++j) CHECK(a.output[j] == b.output[j]);
    INFO("ModelInfer bytes: fp32 " << fp32_bytes << ", int8 " << int8_bytes);
    CHECK(fp32_bytes > 32 * kHidden * 4);
    CHECK(int8_bytes * 3 < fp32_bytes);  // 512 codes and two parameters against 2048 bytes of floats
  }
  CHECK(server.stats().requests == 7);
  CHECK(server.stats().memory_in_use == 0);
}

TEST_CASE("OIP gRPC transport: refusals, a dead server and a missed deadline end in the fallback", "[grpc][runtime]") {
  Split s = make_split();
  const Fallback local{s.whole, Fallback::Input::input};
  const Tensor<float> x = random_input(2, kIn, 80);
  const Tensor<float> whole = s.whole.predict(x.cview());
  const auto is_whole = [&](const InferResult& r) {
    REQUIRE(r.output.shape() == whole.shape());
    for (std::size_t j = 0; j < whole.size(); ++j) CHECK(r.output[j] == whole[j]);
  };

  SECTION("an unknown model: the HELLO is refused with the server's reason") {
    CloudServer server(small_server_options());
    server.register_model(kModel, s.tail);
    OipGrpcServer g(server, "127.0.0.1", 0);
    auto oip = std::make_shared<OipGrpcClient>(target(g), client_options());
    OipTransportOptions to;
    to.model_name = "elsewhere";
    EdgeClient edge(s.head, [oip, to] { return Channel(OipGrpcTransport(oip, to)); }, edge_options(), local);
    const InferResult r = edge.infer(x.cview(), deadline_after(20s));
    CHECK(r.path == AnswerPath::fallback);
    is_whole(r);
    CHECK_FALSE(edge.connected());
    CHECK(edge.last_error().find("no model 'elsewhere' at version 2") != std::string::npos);
  }
  SECTION("a head of another width: refused by the shape check, as a native HELLO") {
    CloudServer server(small_server_options());
    server.register_model(kModel, s.tail);  // takes 16 features per sample
    Sequential<float> wide = mlp({kIn, kHidden + 1, 12, kOut}, 3);
    auto [wide_head, wide_tail] = wide.split(kModel.split);  // sends 17
    OipGrpcServer g(server, "127.0.0.1", 0);
    auto oip = std::make_shared<OipGrpcClient>(target(g), client_options());
    EdgeClient edge(wide_head, [oip] { return Channel(OipGrpcTransport(oip)); }, edge_options(),
                    Fallback{wide, Fallback::Input::input});
    const InferResult r = edge.infer(x.cview(), deadline_after(20s));
    CHECK(r.path == AnswerPath::fallback);
    INFO(edge.last_error());
    CHECK(edge.last_error().find("takes features of shape [16] per sample, the head produces [17]") != std::string::npos);
    CHECK(server.stats().requests == 0);
  }
  SECTION("no server: the connection fails, the fallback answers") {
    std::uint16_t port = 0;
    {
      CloudServer server(small_server_options());
      OipGrpcServer g(server, "127.0.0.1", 0);
      port = g.port();
    }  // gone: nothing listens there now
    GrpcClientOptions co = client_options();
    co.timeout = 2s;
    auto oip = std::make_shared<OipGrpcClient>("127.0.0.1:" + std::to_string(port), co);
    EdgeClient edge(s.head, [oip] { return Channel(OipGrpcTransport(oip)); }, edge_options(), local);
    const InferResult r = edge.infer(x.cview(), deadline_after(5s));
    CHECK(r.path == AnswerPath::fallback);
    CHECK(r.fallback_reason == errc::unreachable);
    is_whole(r);
    CHECK(edge.stats().connect_failures >= 1);
  }
  SECTION("a server that stops answering PINGs ends the connection") {
    CloudServer server(small_server_options());
    server.register_model(kModel, s.tail);
    auto g = std::make_unique<OipGrpcServer>(server, "127.0.0.1", 0);
    GrpcClientOptions co = client_options();
    co.timeout = 2s;
    auto oip = std::make_shared<OipGrpcClient>(target(*g), co);
    EdgeClient edge(s.head, [oip] { return Channel(OipGrpcTransport(oip)); }, edge_options(), local);
    REQUIRE(edge.infer(x.cview(), deadline_after(20s)).path == AnswerPath::cloud);
    REQUIRE(edge.connected());
    g.reset();  // the server goes away
    edge.ping();
    for (int i = 0; i < 2000 && edge.connected(); ++i) std::this_thread::sleep_for(5ms);
    CHECK_FALSE(edge.connected());
    const InferResult r = edge.infer(x.cview(), deadline_after(5s));
    CHECK(r.path == AnswerPath::fallback);
    is_whole(r);
  }
  SECTION("a tail held past the request's deadline: the fallback answers, the late reply is dropped") {
    CloudServer server(small_server_options());
    Gate gate;
    server.register_model(kModel, gate.gated(s.tail));
    OipGrpcServer g(server, "127.0.0.1", 0);
    auto oip = std::make_shared<OipGrpcClient>(target(g), client_options());
    EdgeClient edge(s.head, [oip] { return Channel(OipGrpcTransport(oip)); }, edge_options(), local);
    const InferResult r = edge.infer(x.cview(), deadline_after(300ms));
    CHECK(r.path == AnswerPath::fallback);
    CHECK(r.fallback_reason == errc::timeout);
    is_whole(r);
    gate.open();
    edge.close();
  }
}
