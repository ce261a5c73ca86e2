// The code shown in the guides under docs/, compiled and run by the test suite (ctest -R docs_).
//
// Each region between `// [snippet NAME]` and `// [end]` appears word for word in a guide, in the
// code block after `<!-- snippet: NAME -->`; tests/doc_snippets.sh checks that they agree, so a
// guide cannot drift from code that compiles. One translation unit for all guides, because each
// one that includes Eigen costs seconds to compile.
//
//   docs_snippets           runs every snippet that needs no data set, checking its results
//   docs_snippets --list    the snippet functions
#include <edgesplit/edgesplit.hpp>
#include <edgesplit/eval/ground_truth.hpp>
#include <edgesplit/plan/candidates.hpp>
#include <edgesplit/plan/graph_planner.hpp>
#include <edgesplit/plan/graph_profile.hpp>
#include <edgesplit/plan/planner.hpp>
#include <edgesplit/plan/profile.hpp>
#include <edgesplit/runtime/cascade.hpp>
#include <edgesplit/runtime/cloud_server.hpp>
#include <edgesplit/runtime/edge_client.hpp>
#if EDGESPLIT_DOCS_FASHION_MNIST
#include <edgesplit/io/idx.hpp>
#include <edgesplit/io/safetensors.hpp>
#endif

#include "../../tests/model_fixtures.hpp"  // mlp(): the small models of the setup code

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

using namespace edgesplit;
using namespace std::chrono_literals;

// docs/training.md: a layer of your own that weights files can hold.
// [snippet training-custom-layer]
/// y = x * w: one learnt scale per feature.
class Scale : public edgesplit::Layer<float> {
 public:
  explicit Scale(std::size_t features) : w_(edgesplit::Shape{features}, 1.0f) {}
  std::string_view name() const noexcept override { return "Scale"; }
  std::unique_ptr<Layer<float>> clone() const override { return std::make_unique<Scale>(*this); }
  edgesplit::LayerSpec spec() const override { return {"Scale", {{"features", w_.size()}}, {}}; }
  std::size_t parameter_count() const override { return w_.size(); }
  void zero_grad() override { g_ = edgesplit::Tensor<float>(w_.shape(), 0.0f); }

  // What register_layer needs: the storage a spec implies (checked against a file before
  // anything is built, so it validates with typed errors and allocates nothing) and the layer.
  static std::size_t storage(const edgesplit::LayerSpec& s) {
    const auto it = s.integers.find("features");
    if (it == s.integers.end() || it->second == 0 || it->second > (std::uint64_t{1} << 24))
      edgesplit::fail(edgesplit::errc::invalid_argument, "Scale needs 1 to 2^24 'features'");
    return static_cast<std::size_t>(it->second);
  }
  static std::unique_ptr<Scale> from_spec(const edgesplit::LayerSpec& s) { return std::make_unique<Scale>(storage(s)); }

 protected:
  void check_input(const edgesplit::Shape& in) const override {
    Layer::check_input(in);
    if (in.features() != w_.size()) edgesplit::fail(edgesplit::errc::shape_mismatch, "Scale: wrong input width");
  }
  edgesplit::Shape output_shape_impl(const edgesplit::Shape& in) const override { return in; }
  void forward_impl(edgesplit::TensorView<const float> in, edgesplit::TensorView<float> out) override {
    for (std::size_t i = 0; i < in.size(); ++i) out[i] = in[i] * w_[i % w_.size()];
  }
  void backward_impl(edgesplit::TensorView<const float> in, edgesplit::TensorView<const float>,
                     edgesplit::TensorView<const float> grad_out, edgesplit::TensorView<float> grad_in) override {
    if (g_.size() != w_.size()) zero_grad();
    for (std::size_t i = 0; i < in.size(); ++i) {
      g_[i % w_.size()] += grad_out[i] * in[i];
      if (grad_in.data() != nullptr) grad_in[i] = grad_out[i] * w_[i % w_.size()];
    }
  }
  std::uint64_t flops_impl(const edgesplit::Shape& in) const override { return in.count(); }
  std::vector<edgesplit::Parameter<float>> parameters_impl() override { return {{"weight", w_.view(), g_.view()}}; }

 private:
  edgesplit::Tensor<float> w_, g_;
};
// [end]

namespace docs {

// A labelled toy problem standing in for the reader's own data: `classes` Gaussian blobs in
// `features` dimensions (centres uniform in [-1, 1], noise sd 0.35), drawn from a fixed seed.
Dataset<float> blobs(std::size_t n, std::size_t features, std::size_t classes, std::uint64_t seed) {
  Rng centres_rng(99);  // the same centres for the training and the test set
  std::vector<float> centres(classes * features);
  for (float& c : centres) c = static_cast<float>(centres_rng.uniform(-1, 1));
  Rng rng(seed);
  Dataset<float> d;
  d.classes = classes;
  d.inputs = Tensor<float>(Shape{n, features});
  d.labels.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    const auto y = static_cast<std::size_t>(rng.below(classes));
    d.labels[i] = static_cast<std::int32_t>(y);
    for (std::size_t f = 0; f < features; ++f)
      d.inputs[i * features + f] = centres[y * features + f] + 0.35f * static_cast<float>(rng.normal());
  }
  return d;
}

std::size_t argmax(const float* p, std::size_t n) {
  std::size_t best = 0;
  for (std::size_t i = 1; i < n; ++i)
    if (p[i] > p[best]) best = i;
  return best;
}

// Rows of `a` and `b` ({N, C}) whose largest entry is in the same place.
std::size_t same_top1(TensorView<const float> a, TensorView<const float> b) {
  const std::size_t n = a.shape().batch(), c = a.shape().features();
  std::size_t same = 0;
  for (std::size_t i = 0; i < n; ++i) same += argmax(a.data() + i * c, c) == argmax(b.data() + i * c, c);
  return same;
}

double accuracy(Sequential<float>& model, const Dataset<float>& data) {
  const Tensor<float> logits = model.predict(data.inputs);
  return double(count_correct(logits.cview(), std::span<const std::int32_t>(data.labels))) / double(data.size());
}

void check(bool ok, const std::string& what) {
  if (!ok) fail(errc::invalid_argument, "docs snippet check failed: " + what);
  std::printf("  ok: %s\n", what.c_str());
}

// docs/getting-started.md: your own model, trained, split, served and run over a simulated link.
void getting_started() {
  const Dataset<float> train = blobs(2000, 20, 3, 1);
  const Dataset<float> test = blobs(500, 20, 3, 2);

  // [snippet getting-started-model]
  Rng rng(7);                                  // every weight comes from a seeded Rng
  Sequential<float> model(Shape{20});          // 20 features in
  model.add<Dense<float>>(64, rng);            // each Dense takes the width before it
  model.add<ReLU<float>>();
  model.add<Dense<float>>(32, rng);
  model.add<ReLU<float>>();
  model.add<Dense<float>>(3, rng);             // logits: 3 classes
  // [end]

  // [snippet getting-started-train]
  Classifier<float> objective(model);          // softmax cross-entropy on the logits
  Adam<float> adam(1e-3);
  TrainOptions options;
  options.epochs = 5;
  options.batch_size = 32;
  Trainer<float>(options, {}).fit(objective, adam, train, &test);  // {}: no progress lines
  // [end]
  const double acc = accuracy(model, test);
  // Blobs 0.35 apart in sd with centres ~1 apart per dimension over 20 dimensions are separable
  // almost surely; a model that learnt anything scores far above chance (1/3).
  check(acc > 0.9, "getting started: trained model scores " + std::to_string(acc) + " > 0.9 on the test set");

  // [snippet getting-started-split]
  Deployment d("my-model", 2);                 // model id, split point (version 1.0)
  d.codec.bits = 8;                            // int8 features on the link (32: exact floats)
  auto [head, tail] = d.cut(model);            // edge: Dense + ReLU; cloud: the other three layers

  CloudServer server;                          // the cloud: serves registered tails
  server.register_model(d, tail);

  std::uint64_t seed = 1;                      // the edge: runs the head, sends the features
  EdgeClient client(head, [&] {                // how to (re)connect: here an in-process pair
    auto [edge_end, cloud_end] = InProcTransport::make_pair();  // shaped like an LTE uplink
    server.serve(SimulatedLink<InProcTransport>(std::move(cloud_end), LinkProfile::lte(), seed++));
    return Channel(SimulatedLink<InProcTransport>(std::move(edge_end), LinkProfile::lte(), seed++));
  }, d);

  const InferResult r = client.infer(test.inputs.batch(0, 16), deadline_after(5s));
  std::printf("answered by %s: %s, %zu bytes sent, %.1f ms on the network\n", to_string(r.path),
              r.output.shape().str().c_str(), r.bytes_sent, r.timings.network() * 1e3);
  // [end]
  check(r.path == AnswerPath::cloud, "getting started: the cloud answered");
  const Tensor<float> local = model.predict(test.inputs.batch(0, 16));
  // int8 features move each logit by a fraction of a quantization step; a top-1 flip needs two
  // logits closer than that, which one or two samples out of 16 may be.
  const std::size_t agree = same_top1(r.output.cview(), local.cview());
  check(agree >= 14, "getting started: split answer agrees with the whole model on " + std::to_string(agree) + "/16");
}

// docs/split-inference.md: a tail served over TCP, a head with a local fallback, a cascade.
void split_inference() {
  const Dataset<float> data = blobs(64, 20, 3, 3);
  using edgesplit_test::mlp;
  Sequential<float> model = mlp({20, 64, 3}, 11);
  Sequential<float> exit_head = mlp({64, 3}, 12);   // answers from the features when the cloud cannot
  Sequential<float> edge_model = mlp({20, 3}, 13);  // a small whole model for the cascade

  // [snippet split-inference-serve]
  const Deployment d("fmnist-mlp", 2);                 // model id, split point (int8 features)
  auto [head, tail] = d.cut(model);                     // edge: layers 0..1, cloud: 2..L-1
  ServerOptions so;
  so.workers = 2;                                       // threads running tails
  so.max_batch = 32;                                    // dynamic batching
  so.max_queue_delay = std::chrono::microseconds(1000);
  CloudServer server(so);
  server.register_model(d, tail);
  TcpListener listener = TcpListener::bind("127.0.0.1", 0);  // port 0: the system picks one
  const std::uint16_t port = listener.port();
  server.listen(std::move(listener));
  // [end]

  // [snippet split-inference-client]
  EdgeOptions eo(d);                                    // model, split and codec from d
  Fallback local{exit_head, Fallback::Input::features}; // answers when the cloud cannot
  EdgeClient client(head, [port] { return Channel(TcpTransport::connect("127.0.0.1", port)); }, eo, local);

  InferResult r = client.infer(data.inputs.batch(0, 4), deadline_after(std::chrono::milliseconds(2000)));
  // r.output, r.path (cloud or fallback), r.fallback_reason, r.timings, r.bytes_sent
  // [end]
  check(r.path == AnswerPath::cloud && r.output.shape() == Shape({4, 3}), "split inference: TCP answer [4, 3] from the cloud");

  // [snippet split-inference-cascade]
  Cascade cascade(edge_model, client, {Confidence::max_probability, 0.9});
  CascadeResult c = cascade.classify(data.inputs, deadline_after(std::chrono::seconds(1)), data.labels);
  std::printf("answered on the edge: %.0f%%\n", 100 * cascade.stats().local_share());
  // [end]
  check(c.predictions.size() == data.size() &&
            cascade.stats().local + cascade.stats().cloud + cascade.stats().fallback == data.size(),
        "split inference: the cascade answered every sample once");
  server.shutdown(std::chrono::milliseconds(500));
}

// A residual block, cut where the skip connection crosses: two tensors per request.
void graphs() {
  Rng rng(21);
  // [snippet split-inference-graph]
  Conv2DOptions same;
  same.padding = same_padding(3, 3);                   // keeps H x W
  Graph<float> g;
  std::string x = g.input("image", Shape{1, 28, 28});  // per-sample shape: C, H, W
  std::string c1 = g.add<Conv2D<float>>(x, 1, 8, 3, 3, same, rng);
  std::string y = g.add<ReLU<float>>(c1);
  y = g.add<Conv2D<float>>(y, 8, 8, 3, 3, same, rng);
  y = g.add<Add<float>>({y, c1});                       // the residual join
  y = g.add<ReLU<float>>(y);
  y = g.add<Dense<float>>(y, 8 * 28 * 28, 10, rng);
  g.output(y);
  std::printf("%s", g.describe().c_str());             // nodes, and every candidate cut

  const Deployment d("resnet-toy", 2);                 // int8: each tensor with its own range
  auto [head, tail] = d.cut(g);                         // after Conv2D_0 and ReLU_1: {Conv2D_0, ReLU_1}
  CloudServer server;
  server.register_model(d, tail);
  EdgeClient client(head, [&server] { return server.connect_in_process(); }, d);
  Tensor<float> images(Shape{4, 1, 28, 28}, 0.5f);
  InferResult r = client.infer(images, deadline_after(std::chrono::milliseconds(2000)));
  // [end]
  check(head.output_names() == std::vector<std::string>{"Conv2D_0", "ReLU_1"}, "graphs: the cut crosses two tensors");
  check(r.path == AnswerPath::cloud && r.output.shape() == Shape({4, 10}), "graphs: a [4, 10] answer from the cloud");
  server.shutdown(std::chrono::milliseconds(500));

  // [snippet planning-graph]
  const DeviceProfile here = profile_graph(g);                        // every node, measured here
  const DeviceProfile board = scaled(here, 50, "board (this machine x50)");
  GraphPlanRequest gr;
  gr.codec.bytes_per_element = 1;                                     // int8 on the wire
  const GraphPlan cut = plan_graph_cut(g, board, here, link_model(LinkProfile::lte()), gr);
  std::string sent;
  for (const std::string& t : cut.cut) sent += (sent.empty() ? "" : ", ") + t;
  std::printf("edge runs %zu of %zu nodes, sends {%s}: %.2f ms predicted\n", cut.head_nodes.size(), g.node_count(),
              sent.c_str(), cut.latency_s * 1e3);
  auto [edge_part, cloud_part] = g.cut(cut.cut);                      // for EdgeClient and CloudServer
  // [end]
  check(edge_part.node_count() == cut.head_nodes.size() && cloud_part.node_count() == cut.tail_nodes.size(),
        "graphs: the planned cut splits the nodes as planned");
}


// docs/training.md: one cloud model and one edge model trained together.
void collaborative_training() {
  const Dataset<float> train = blobs(2000, 20, 3, 4);
  const Dataset<float> test = blobs(500, 20, 3, 5);
  Sequential<float> cloud = edgesplit_test::mlp({20, 64, 3}, 3);
  Sequential<float> edge = edgesplit_test::mlp({20, 3}, 4);

  // [snippet training-collaborative]
  CollaborativeLoss loss;                      // CE(cloud) + sum over edges of CE(edge) + weight * D(edge, cloud)
  loss.consistency = Consistency::kl_softened; // D: KL between softened outputs (or mse_logits)
  loss.temperature = 4;
  loss.weight = 1;
  loss.train_cloud = true;                     // false: plain distillation from a fixed cloud
  Collaborative<float> objective(cloud, {&edge}, loss);
  Adam<float> adam(1e-3);
  TrainOptions options;
  options.epochs = 5;
  options.batch_size = 32;
  TrainHistory h = Trainer<float>(options, {}).fit(objective, adam, train, &test);
  // h.epochs.back().validation: loss and top-1 hits of each output (cloud, then the edges)
  // [end]
  const Tensor<float> zc = cloud.predict(test.inputs), ze = edge.predict(test.inputs);
  const std::size_t agree = same_top1(zc.cview(), ze.cview());
  std::printf("  edge agrees with cloud on %zu/%zu test points\n", agree, test.size());
  check(h.epochs.size() == 5 && accuracy(cloud, test) > 0.9 && accuracy(edge, test) > 0.9,
        "collaborative training: cloud and edge above 0.9 on separable blobs");
}

// docs/quantization.md: a quantizer, the feature codec and an int8 model.
void quantization() {
  const Dataset<float> data = blobs(256, 20, 3, 6);
  Sequential<float> model = edgesplit_test::mlp({20, 64, 3}, 5);
  const Tensor<float> x = model.split(2).first.predict(data.inputs);  // features {256, 64}

  // [snippet quantization-codec]
  Quantizer q(QuantConfig{4, Granularity::per_channel});   // 4 bits, one scale per feature
  q.calibrate(x);                                           // min-max range of each channel
  Tensor<std::int8_t> codes(x.shape());
  Tensor<float> back(x.shape());
  q.quantize(x, codes.view());
  q.dequantize(codes.cview(), back.view());                 // |x - back| <= scale / 2 in range

  CodecConfig cc;                                           // what EdgeOptions::codec holds
  cc.bits = 8;                                              // 32 (exact floats), 8, 4 or 2
  wire::FeatureEncoder encoder(cc);                         // the sending side
  std::vector<std::byte> frame;
  encoder.encode(x, frame);                                 // calibrate, quantize, pack, frame + CRC
  wire::FeatureDecoder decoder;                             // the receiving side: caps only
  Tensor<float> decoded;
  decoder.decode(frame, decoded);                           // validate, unpack, dequantize

  Sequential<float> int8_model = quantize_model(model, data.inputs);  // int8 Dense layers
  // [end]
  double worst = 0;
  const QuantParams& p = q.params();
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double step = p.scale[i % 64];
    worst = std::max(worst, std::abs(double(x[i]) - double(back[i])) / step);
  }
  // Min-max calibration keeps every value in range, so each error is at most half a step, plus
  // float rounding (quantization.md: 3u(|x| + scale)); 0.5 + 1e-3 covers it.
  check(worst <= 0.5 + 1e-3, "quantization: 4-bit error " + std::to_string(worst) + " steps <= 0.5");
  check(decoded.shape() == x.shape() && frame.size() < x.bytes() / 3,
        "quantization: int8 frame of " + std::to_string(frame.size()) + " bytes for " + std::to_string(x.bytes()));
  const Tensor<float> zf = model.predict(data.inputs), zq = int8_model.predict(data.inputs);
  check(same_top1(zf.cview(), zq.cview()) >= 250, "quantization: int8 model agrees with float on >= 250/256");
}

// docs/transports.md: a message over a simulated LTE uplink on virtual time.
void transports() {
  const std::vector<std::byte> request(100'000, std::byte{1});
  // [snippet transports-simulated]
  VirtualClock clock;
  auto [e, c] = InProcTransport::make_pair();
  SimulatedLink edge(std::move(e), LinkProfile::lte(), /*seed*/ 1, clock);
  SimulatedLink cloud(std::move(c), LinkProfile::lte(), /*seed*/ 2, clock);

  std::optional<Clock::time_point> due = edge.send(request);    // nullopt: the link lost it
  std::optional<Message> m = cloud.receive(clock.now() + 1s);   // the clock is now at *due
  Clock::duration upload = m->transfer_time();                 // delivered_at - sent_at, exact
  // [end]
  // 100,000 bytes at 5.85 Mbit/s is 136.75 ms, plus 30 ms one-way latency (transports.md table).
  const double ms = std::chrono::duration<double, std::milli>(upload).count();
  check(due.has_value() && std::abs(ms - 166.752) < 0.01, "transports: 100 kB over LTE in " + std::to_string(ms) + " ms");
}

// docs/planning.md: where to split, from measured costs.
void planning() {
  const Dataset<float> data = blobs(200, 20, 3, 7);
  Sequential<float> model = edgesplit_test::mlp({20, 256, 16, 3}, 9);

  // [snippet planning-plan]
  ProfileOptions po;
  po.runs = 11;
  const DeviceProfile cloud = profile_model(model, 20, po);          // measured here
  const DeviceProfile edge = scaled(cloud, 50, "board (this machine x50)");  // or profile on the board
  const CandidateSet measured = measure_candidates(model, data.inputs, data.labels, standard_codecs());

  PlanRequest req;
  req.accuracy_budget = 1.0;                                         // points of top-1 we may lose
  req.response_bytes_per_sample = measured.response_bytes;
  const std::vector<Plan> plans = plan_split(edge, cloud, link_model(LinkProfile::lte()), measured.codecs, req);
  const Plan& best = plans.front();                                  // ranked best first
  std::printf("split at %zu with %s: %.2f ms predicted, %.0f bytes sent\n", best.split, best.codec.c_str(),
              best.latency_s * 1e3, best.bytes);
  // [end]
  check(!plans.empty() && best.latency_s <= plans.back().latency_s, "planning: plans ranked by latency");

  // [snippet planning-deploy]
  InferResult served;                          // stays empty when the plan is all-edge
  if (best.codec != "-") {                     // "-": all on the edge, no tail to serve
    const Deployment d = to_deployment(best, "fmnist-mlp", standard_codecs());
    auto [head, tail] = d.cut(model);          // layers [0, split) and [split, L)
    CloudServer server;                        // in-process here; over TCP in split-inference.md
    server.register_model(d, tail);
    EdgeClient client(head, [&server] { return server.connect_in_process(); }, d);
    served = client.infer(data.inputs.batch(0, 4), deadline_after(std::chrono::seconds(2)));
  }
  // [end]
  check(best.codec == "-" || (served.path == AnswerPath::cloud && served.output.shape().batch() == 4),
        "planning: the planner's choice deployed and answered by the cloud");

  // [snippet planning-ground-truth]
  GroundTruthOptions gt;
  gt.edge_slowdown = 50;                      // the board above: this machine's compute x50
  const CodecSpec spec = best.split < model.size() ? find_codec(standard_codecs(), best.codec) : standard_codecs().front();
  const Measured m = measure_end_to_end(model, best.split, spec, data.inputs, LinkProfile::lte(), LinkProfile::lte(), gt);
  std::printf("measured end to end: %.2f ms (uplink %.2f ms, cloud %.3f ms)\n", m.latency_s * 1e3, m.uplink_s * 1e3,
              m.cloud_s * 1e3);
  // [end]
  check(m.split == best.split && m.latency_s > 0, "planning: the best plan measured end to end");
}

// docs/boards.md: which SIMD instruction set this build's kernels use.
void boards() {
  // [snippet boards-arch]
  std::printf("SIMD kernels: %s\n", kernels::simd_arch_name());  // e.g. fma3+avx2, arm64+neon, arm32+neon
  // [end]
}

#if EDGESPLIT_DOCS_FASHION_MNIST
// docs/training.md: a model holding a layer of your own, saved and loaded.
void custom_layers() {
  // [snippet training-register-layer]
  register_layer<Scale>("Scale");            // once, before a file holding one is loaded
  Rng rng(3);
  Sequential<float> model(Shape{4});
  model.add<Dense<float>>(3, rng);
  model.add<Scale>(3);
  const std::vector<std::byte> bytes = to_safetensors(model);  // or save_safetensors(path, model)
  Sequential<float> again = model_from_safetensors<float>(SafetensorsFile::parse(bytes));
  // [end]
  check(again.size() == 2 && again[1].name() == "Scale", "custom layers: the file rebuilds the Scale layer");
  // Scales other than their initial 1, so that the loaded values are seen.
  std::vector<Parameter<float>> scales = model[1].parameters();
  scales[0].value[0] = 0.5f;
  scales[0].value[1] = -2.0f;
  Sequential<float> loaded = model_from_safetensors<float>(SafetensorsFile::parse(to_safetensors(model)));
  Tensor<float> x(Shape{2, 4});
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = 0.25f * static_cast<float>(i) - 1.0f;
  const Tensor<float> want = model.predict(x.cview()), got = loaded.predict(x.cview());
  check(std::memcmp(want.data(), got.data(), want.bytes()) == 0, "custom layers: the loaded model answers as the saved one");
  bool refused = false;
  try {
    register_layer<Scale>("Scale");
  } catch (const error& e) {
    refused = e.code() == errc::invalid_argument;
  }
  check(refused, "custom layers: a kind is registered once");
}

// docs/training.md: the cloud model of the Fashion-MNIST study. Compiled, not run (it trains for
// minutes); examples/train_fashion_mnist.cpp runs the same recipe.
void training_fashion_mnist() {
  // [snippet training-fashion-mnist]
  auto [train, test] = load_fashion_mnist<float>();          // /usr/share/datasets/fashion-mnist
  Rng rng(1);
  Sequential<float> cloud;
  cloud.add<Standardizer<float>>(784, Standardize::global).fit(train.inputs.cview());
  cloud.add<Dense<float>>(784, 512, rng);
  cloud.add<ReLU<float>>();
  cloud.add<Dropout<float>>(0.2, /*seed*/ 2);
  cloud.add<Dense<float>>(512, 256, rng);
  cloud.add<ReLU<float>>();
  cloud.add<Dropout<float>>(0.2, 3);
  cloud.add<Dense<float>>(256, 10, rng);

  Classifier<float> objective(cloud);
  Adam<float> adam(1e-3);
  TrainOptions options;                 // epochs 10, batch 128, seed 1, no early stopping
  options.epochs = 15;
  options.schedule = LrSchedule::cosine();
  Trainer<float>(options).fit(objective, adam, train, &test);  // one progress line per epoch
  save_safetensors("cloud.safetensors", cloud);
  auto again = load_safetensors<float>("cloud.safetensors");   // rebuilt from the file alone
  // [end]
  (void)again;
}
#endif

}  // namespace docs

int main(int argc, char** argv) {
  const std::vector<std::pair<const char*, std::function<void()>>> snippets{
      {"getting_started", docs::getting_started}, {"split_inference", docs::split_inference},
      {"graphs", docs::graphs},
      {"collaborative_training", docs::collaborative_training}, {"quantization", docs::quantization},
      {"transports", docs::transports}, {"planning", docs::planning}, {"boards", docs::boards},
#if EDGESPLIT_DOCS_FASHION_MNIST
      {"custom_layers", docs::custom_layers},
#endif
  };
  const bool list = argc > 1 && std::strcmp(argv[1], "--list") == 0;
  try {
    for (const auto& [name, run] : snippets) {
      if (list) {
        std::printf("%s\n", name);
        continue;
      }
      if (argc > 1 && std::strcmp(argv[1], name) != 0) continue;
      std::printf("%s\n", name);
      run();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "docs_snippets: %s\n", e.what());
    return 1;
  }
  return 0;
}
