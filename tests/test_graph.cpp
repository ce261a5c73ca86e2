// Tests for nn/graph.hpp and nn/merge.hpp: graphs against the same layers run by hand, cuts
// (every candidate cut, head then tail, equals the whole graph bit for bit), bad cuts and bad
// graphs, gradients by central differences, buffer reuse, and no allocation in steady state.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "alloc_counter.hpp"
#include "edgesplit/edgesplit.hpp"
#include "edgesplit/nn/testing.hpp"
#include "test_util.hpp"
#if EDGESPLIT_TEST_JSON
#include "edgesplit/io/safetensors.hpp"
#endif

using namespace edgesplit;
using edgesplit_test::expect_errc;

namespace {

template <class T>
Tensor<T> random_t(const Shape& s, std::uint64_t seed, double lo = -1, double hi = 1) {
  Rng rng(seed);
  Tensor<T> t(s);
  for (T& v : t.span()) v = static_cast<T>(rng.uniform(lo, hi));
  return t;
}

Conv2DOptions same3() {
  Conv2DOptions o;
  o.padding = same_padding(3, 3);
  return o;
}

// x [C,6,6] -> conv -> ReLU -> conv -> Add(., x) -> ReLU, and a side branch
// x -> 1x1 conv -> Concat with the block's output -> Dense(10): a residual join, a concat join,
// and a tensor (x) read by three nodes.
template <class T>
Graph<T> block_graph(std::uint64_t seed, std::size_t c = 3) {
  Rng rng(seed);
  Graph<T> g;
  const std::string x = g.input("x", Shape{c, 6, 6});
  std::string y = g.add(std::string("conv1"), {x}, std::make_unique<Conv2D<T>>(c, c, 3, 3, same3(), rng));
  y = g.template add<ReLU<T>>(y);
  y = g.add(std::string("conv2"), {y}, std::make_unique<Conv2D<T>>(c, c, 3, 3, same3(), rng));
  y = g.template add<Add<T>>({y, x});
  y = g.template add<ReLU<T>>(y);
  const std::string side = g.template add<Conv2D<T>>(x, c, 2, 1, 1, Conv2DOptions{}, rng);
  y = g.template add<Concat<T>>({y, side});
  y = g.add(std::string("logits"), {y}, std::make_unique<Dense<T>>((c + 2) * 36, 10, rng));
  g.output(y);
  for (auto& p : g.parameters())
    if (p.name.ends_with(".bias"))
      for (T& b : p.value.span()) b = static_cast<T>(rng.uniform(-0.2, 0.2));
  return g;
}

}  // namespace

TEST_CASE("Graph: a residual and a concatenating block equal the same layers run by hand", "[nn][graph]") {
  Graph<float> g = block_graph<float>(1);
  REQUIRE(g.node_count() == 8);
  CHECK(g.input_names() == std::vector<std::string>{"x"});
  CHECK(g.output_names() == std::vector<std::string>{"logits"});
  CHECK(g.sample_shape("Concat_6") == Shape{5, 6, 6});
  CHECK(g.node_inputs(3) == std::vector<std::string>{"conv2", "x"});
  CHECK(g.node_output(5) == "Conv2D_5");

  for (std::size_t batch : {1, 3}) {
    const auto x = random_t<float>(Shape{batch, 3, 6, 6}, 10 + batch);
    // by hand, with copies of the graph's own layers
    auto run = [](const Layer<float>& l, TensorView<const float> in) {
      auto c = l.clone();
      Tensor<float> out(c->output_shape(in.shape()));
      c->forward(in, out.view());
      return out;
    };
    Tensor<float> a = run(*g.layer(0), x);
    a = run(*g.layer(1), a);
    a = run(*g.layer(2), a);
    Tensor<float> sum(a.shape());
    for (std::size_t i = 0; i < a.size(); ++i) sum[i] = a[i] + x[i];
    sum = run(*g.layer(4), sum);
    const Tensor<float> side = run(*g.layer(5), x);
    Tensor<float> cat(Shape{batch, 5, 6, 6});
    for (std::size_t n = 0; n < batch; ++n) {
      std::copy_n(sum.data() + n * 108, 108, cat.data() + n * 180);
      std::copy_n(side.data() + n * 72, 72, cat.data() + n * 180 + 108);
    }
    const Tensor<float> want = run(*g.layer(7), cat);

    const TensorView<const float> got = g.forward(x);
    REQUIRE(got.shape() == Shape{batch, 10});
    for (std::size_t i = 0; i < want.size(); ++i) CHECK(got[i] == want[i]);  // same operations, same order
    Tensor<float> out(g.output_shape(x.shape()));
    g.forward(x, out.view());
    for (std::size_t i = 0; i < want.size(); ++i) CHECK(out[i] == want[i]);
  }
  // the FLOPs are the nodes' sums; the parameters are named after the nodes' outputs
  std::uint64_t f = 0;
  for (std::size_t i = 0; i < g.node_count(); ++i) f += g.node_flops(i);
  CHECK(g.flops(2) == 2 * f);
  CHECK(g.node_flops(3) == 3u * 36u);  // Add: one addition per element
  const auto params = g.parameters();
  REQUIRE(params.size() == 8);
  CHECK(params[0].name == "conv1.weight");
  CHECK(params[7].name == "logits.bias");
  CHECK(g.parameter_count() == 2 * (81 + 3) + (3 * 2 + 2) + (180 * 10 + 10));
}

TEST_CASE("Graph: every candidate cut, head then tail, equals the whole graph bit for bit", "[nn][graph][cut]") {
  Graph<float> g = block_graph<float>(2);
  const auto cuts = g.candidate_cuts();
  // frontiers of the node order: the block's inner cuts cross two tensors (x rides along)
  std::vector<std::vector<std::string>> want = {{"x"},
                                                {"x", "conv1"},
                                                {"x", "ReLU_1"},
                                                {"x", "conv2"},
                                                {"x", "Add_3"},
                                                {"x", "ReLU_4"},
                                                {"ReLU_4", "Conv2D_5"},
                                                {"Concat_6"},
                                                {"logits"}};
  REQUIRE(cuts.size() == want.size());
  for (std::size_t k = 0; k < cuts.size(); ++k) {
    INFO("cut " << k);
    CHECK(cuts[k].tensors == want[k]);
    std::size_t bytes = 0;
    for (const auto& t : cuts[k].tensors) bytes += g.sample_shape(t).count() * sizeof(float);
    CHECK(cuts[k].bytes == bytes);
    CHECK(cuts[k].head_flops + cuts[k].tail_flops == g.flops(1));
  }
  CHECK(cuts[0].head_flops == 0);
  CHECK(cuts.back().tail_flops == 0);
  CHECK(cuts[1].bytes == 2 * 108 * sizeof(float));

  const auto x = random_t<float>(Shape{2, 3, 6, 6}, 5);
  const Tensor<float> whole = g.predict(x);
  for (const CutInfo& c : cuts) {
    INFO("cut {" << c.tensors.front() << (c.tensors.size() > 1 ? ", ..." : "") << "}");
    auto [head, tail] = g.cut(c.tensors);
    CHECK(head.output_names() == c.tensors);
    CHECK(tail.input_names() == c.tensors);
    CHECK(head.node_count() == c.head_nodes);
    CHECK(head.node_count() + tail.node_count() == g.node_count());
    std::vector<Tensor<float>> mid;
    for (const auto& t : c.tensors) mid.emplace_back(head.shape(t, 2));
    std::vector<TensorView<float>> mid_out(mid.begin(), mid.end());
    const TensorView<const float> in[] = {x};
    head.forward(in, mid_out);
    std::vector<TensorView<const float>> mid_in(mid.begin(), mid.end());
    Tensor<float> y(Shape{2, 10});
    const TensorView<float> out[] = {y};
    tail.forward(mid_in, out);
    for (std::size_t i = 0; i < y.size(); ++i) CHECK(y[i] == whole[i]);
  }
  // the halves are deep copies
  auto [head, tail] = g.cut({"x", "conv2"});
  for (auto& p : head.parameters()) std::fill_n(p.value.data(), p.value.size(), 0.f);
  const Tensor<float> again = g.predict(x);
  for (std::size_t i = 0; i < again.size(); ++i) CHECK(again[i] == whole[i]);
}

TEST_CASE("Graph: bad cuts are refused, naming what is wrong", "[nn][graph][cut]") {
  const Graph<float> g = block_graph<float>(3);
  const auto message = [&](const std::vector<std::string>& c) {
    try {
      (void)g.cut(c);
    } catch (const error& e) {
      CHECK(e.code() == errc::invalid_argument);
      return std::string(e.what());
    }
    FAIL("no error for a bad cut");
    return std::string();
  };
  // the residual's skip and the side branch bypass conv2 alone
  std::string m = message({"conv2"});
  INFO(m);
  CHECK(m.find("bypasses") != std::string::npos);
  CHECK(m.find("x -> ") == m.find("path ") + 5);  // the path starts at the input...
  CHECK(m.find("-> logits") != std::string::npos);  // ...and ends at the output
  CHECK(message({"ReLU_4"}).find("x -> Conv2D_5") != std::string::npos);
  CHECK(message({"x", "nope"}).find("'nope'") != std::string::npos);
  CHECK(message({"x", "x"}).find("twice") != std::string::npos);
  CHECK(message({}).find("at least one") != std::string::npos);
  // conv1 is not read once ReLU_1 crosses
  CHECK(message({"x", "conv1", "ReLU_1"}).find("'conv1' is not read by the tail") != std::string::npos);
}

TEST_CASE("Graph: bad graphs are refused when built, naming the node", "[nn][graph]") {
  Rng rng(4);
  Graph<float> g;
  const std::string x = g.input("x", Shape{3, 8, 8});
  expect_errc(errc::invalid_argument, [&] { g.input("x", Shape{4}); });  // duplicated name
  expect_errc(errc::invalid_argument, [&] { g.input("empty", Shape{0, 3}); });
  expect_errc(errc::invalid_argument, [&] { g.input("", Shape{3}); });
  expect_errc(errc::invalid_argument, [&] { g.input("bad\nname", Shape{3}); });
  expect_errc(errc::invalid_argument, [&] { g.input(std::string(Graph<float>::max_name + 1, 'a'), Shape{3}); });
  auto message = [&](auto&& f, errc code) {
    try {
      f();
    } catch (const error& e) {
      CHECK(e.code() == code);
      return std::string(e.what());
    }
    FAIL("no error");
    return std::string();
  };
  // wrong channel count: the node and the layer are named
  std::string m = message([&] { g.add(std::string("c"), {x}, std::make_unique<Conv2D<float>>(4, 8, 3, 3)); },
                          errc::shape_mismatch);
  CHECK(m.find("node 'c'") != std::string::npos);
  CHECK(m.find("Conv2D(4 -> 8") != std::string::npos);
  // a kernel larger than the padded input
  m = message([&] { g.add(std::string("big"), {x}, std::make_unique<Conv2D<float>>(3, 8, 9, 9)); }, errc::shape_mismatch);
  CHECK(m.find("node 'big'") != std::string::npos);
  // a name read before it is defined (how a cycle or a dangling name shows)
  m = message([&] { g.add(std::string("y"), {"later"}, std::make_unique<ReLU<float>>()); }, errc::invalid_argument);
  CHECK(m.find("'later', which is not defined before it") != std::string::npos);
  m = message([&] { g.add(std::string("self"), {"self"}, std::make_unique<ReLU<float>>()); }, errc::invalid_argument);
  CHECK(m.find("'self'") != std::string::npos);
  const std::string a = g.add<Conv2D<float>>(x, 3, 4, 3, 3, same3(), rng);
  m = message([&] { g.add(std::string("s"), {a, x}, std::make_unique<Add<float>>()); }, errc::shape_mismatch);
  CHECK(m.find("node 's' (Add)") != std::string::npos);
  message([&] { g.add(std::string("one"), {a}, std::make_unique<Add<float>>()); }, errc::invalid_argument);
  message([&] { g.add(std::string("two"), {a, x}, std::make_unique<ReLU<float>>()); }, errc::invalid_argument);
  message([&] { g.add(std::string("null"), {a}, std::unique_ptr<Layer<float>>()); }, errc::invalid_argument);
  message([&] { g.add(std::string(a), {x}, std::make_unique<ReLU<float>>()); }, errc::invalid_argument);  // taken
  const Shape cat = g.sample_shape(g.add<Concat<float>>({a, x}));
  CHECK(cat == Shape{7, 8, 8});
  Graph<float> down = g;
  const std::string pooled = down.add<Conv2D<float>>(x, 3, 3, 2, 2, [] {
    Conv2DOptions o;
    o.stride_h = o.stride_w = 2;
    return o;
  }());
  message([&] { down.add<Concat<float>>({pooled, x}); }, errc::shape_mismatch);  // 4x4 against 8x8

  // running before outputs are declared, and with the wrong inputs
  const auto in = random_t<float>(Shape{2, 3, 8, 8}, 1);
  expect_errc(errc::invalid_argument, [&] { (void)g.forward(in); });
  g.output(a);
  expect_errc(errc::invalid_argument, [&] { g.output(a); });
  expect_errc(errc::invalid_argument, [&] { g.output("missing"); });
  expect_errc(errc::shape_mismatch, [&] { (void)g.forward(random_t<float>(Shape{2, 3, 8, 7}, 1)); });
  expect_errc(errc::shape_mismatch, [&] { (void)g.forward(random_t<float>(Shape{2, 192}, 1)); });
  Tensor<float> wrong(Shape{2, 4, 8, 7});
  expect_errc(errc::shape_mismatch, [&] { g.forward(in, wrong.view()); });
  g.output("x");  // two outputs: the one-tensor forms refuse
  expect_errc(errc::invalid_argument, [&] { (void)g.forward(in); });
  // backward needs a forward pass in training mode
  Tensor<float> ga(Shape{2, 4, 8, 8}), gx(Shape{2, 3, 8, 8});
  const TensorView<const float> ins[] = {in};
  const TensorView<const float> gouts[] = {ga, gx};
  std::vector<Tensor<float>> outs;
  outs.emplace_back(Shape{2, 4, 8, 8});
  outs.emplace_back(Shape{2, 3, 8, 8});
  std::vector<TensorView<float>> ov(outs.begin(), outs.end());
  g.forward(ins, ov);
  expect_errc(errc::invalid_argument, [&] { g.backward(ins, gouts); });
}

namespace {

// Central differences of loss = sum_k <out_k, R_k> against backward(), in double
// (edgesplit/nn/testing.hpp); every parameter and input must see a gradient.
void check_graph_gradients(Graph<double>& g, std::size_t batch, std::uint64_t seed) {
  const testing::GradientReport r = testing::check_graph_gradients(g, batch, seed);
  INFO(r.str());
  CHECK(r.entries.size() == g.parameters().size() + g.input_names().size());
  for (const auto& e : r.entries) CHECK(e.norm > 0);
  CHECK(r.ok());
}

}  // namespace

TEST_CASE("Graph: gradients through residual, concatenating and shared tensors match central differences",
          "[nn][graph][train]") {
  Graph<double> g = block_graph<double>(6);
  check_graph_gradients(g, 2, 100);

  // a tensor read twice by one node, two inputs, two outputs, and an output that is also read
  Rng rng(7);
  Graph<double> m;
  const std::string a = m.input("a", Shape{5});
  const std::string b = m.input("b", Shape{5});
  const std::string d = m.add(std::string("d"), {a}, std::make_unique<Dense<double>>(5, 5, rng));
  const std::string twice = m.add<Add<double>>({d, d, b});
  const std::string t = m.add<Tanh<double>>(twice);
  const std::string e = m.add(std::string("e"), {t}, std::make_unique<Dense<double>>(5, 3, rng));
  const std::string j = m.add<Concat<double>>({e, t, b});
  m.output(j);
  m.output(t);
  check_graph_gradients(m, 3, 200);
}

TEST_CASE("Graph: inference reuses buffers by liveness and steady state allocates nothing", "[nn][graph][alloc]") {
  Rng rng(8);
  Graph<float> chain;
  std::string y = chain.input("x", Shape{64});
  for (int i = 0; i < 10; ++i) y = chain.add<Tanh<float>>(y);
  chain.output(y);
  const auto x = random_t<float>(Shape{4, 64}, 3);
  const Tensor<float> want = chain.predict(x);
  CHECK(chain.buffers_in_use() == 2);  // two ping-pong buffers, the last one holding the output
  chain.set_training(true);
  const TensorView<const float> y2 = chain.forward(x);
  CHECK(chain.buffers_in_use() == 10);  // training keeps every tensor for backward
  for (std::size_t i = 0; i < want.size(); ++i) CHECK(y2[i] == want[i]);

  if (edgesplit_test::allocations() < 0) {
    WARN("allocation counting is unavailable in this build (sanitizer allocator)");
    return;
  }
  Graph<float> g = block_graph<float>(9);
  for (std::size_t batch : {4, 1, 8}) {
    const auto in = random_t<float>(Shape{batch, 3, 6, 6}, batch);
    Tensor<float> out(g.output_shape(in.shape()));
    g.set_training(false);
    g.forward(in, out.view());  // warm-up
    long long before = edgesplit_test::allocations();
    for (int i = 0; i < 3; ++i) g.forward(in, out.view());
    (void)g.forward(in.batch(0, batch / 2 + 1));
    long long made = edgesplit_test::allocations() - before;  // before CHECK, which allocates
    INFO("inference, batch " << batch);
    CHECK(made == 0);

    g.set_training(true);
    const Tensor<float> grad(out.shape(), 0.01f);
    g.zero_grad();
    (void)g.forward(in);
    g.backward(in, grad);  // warm-up of the gradient buffers
    before = edgesplit_test::allocations();
    for (int i = 0; i < 2; ++i) {
      (void)g.forward(in);
      g.backward(in, grad);
    }
    made = edgesplit_test::allocations() - before;
    INFO("training step, batch " << batch);
    CHECK(made == 0);
  }
}

TEST_CASE("Graph: copies are deep and describe() lists nodes and cuts", "[nn][graph]") {
  Graph<float> g = block_graph<float>(10);
  Graph<float> copy = g;
  const auto x = random_t<float>(Shape{1, 3, 6, 6}, 2);
  const Tensor<float> before = g.predict(x);
  for (auto& p : copy.parameters()) std::fill_n(p.value.data(), p.value.size(), 1.f);
  const Tensor<float> after = g.predict(x);
  for (std::size_t i = 0; i < before.size(); ++i) CHECK(after[i] == before[i]);
  const std::string d = g.describe();
  INFO(d);
  CHECK(d.find("input  x [3, 6, 6]") != std::string::npos);
  CHECK(d.find("3  Add_3 = Add(conv2, x) [3, 6, 6], 0 parameters, 108 FLOPs") != std::string::npos);
  CHECK(d.find("after 5 nodes: {x, ReLU_4} 864 bytes") != std::string::npos);
}

#if EDGESPLIT_TEST_JSON
TEST_CASE("Graph: rebuilt from its safetensors file alone, and a file that disagrees is refused whole",
          "[nn][graph][io]") {
  Graph<float> g = block_graph<float>(11);
  const auto bytes = to_safetensors(g, {{"note", "residual block"}});
  const SafetensorsFile file = SafetensorsFile::parse(bytes);
  CHECK(file.metadata().at("format") == "edgesplit.graph");
  CHECK(file.find("conv1.weight") != nullptr);
  Graph<float> back = graph_from_safetensors<float>(file);
  CHECK(architecture_json(back) == architecture_json(g));
  const auto x = random_t<float>(Shape{2, 3, 6, 6}, 12);
  const Tensor<float> want = g.predict(x), got = back.predict(x);
  for (std::size_t i = 0; i < want.size(); ++i) CHECK(got[i] == want[i]);
  expect_errc(errc::version_mismatch, [&] { (void)model_from_safetensors<float>(file); });  // not a Sequential

  // the same tensors under an edited architecture
  const std::string arch = architecture_json(g);
  auto with = [&](std::string a, std::vector<Parameter<float>> state) {
    return SafetensorsFile::parse(detail::safetensors_bytes(read_only(state), "edgesplit.graph", a, {}));
  };
  auto edited = [&](const std::string& from, const std::string& to) {
    std::string a = arch;
    const auto at = a.find(from);
    REQUIRE(at != std::string::npos);
    return a.replace(at, from.size(), to);
  };
  const auto state = g.state();
  auto refused = [&](errc code, const std::string& a, const std::string& says, std::vector<Parameter<float>> st = {}) {
    try {
      (void)graph_from_safetensors<float>(with(a, st.empty() ? state : st));
      FAIL("accepted: " << a);
    } catch (const error& e) {
      INFO(e.what());
      CHECK(e.code() == code);
      CHECK(std::string(e.what()).find(says) != std::string::npos);
    }
  };
  // conv2 reads the Add after it: a cycle, or a name read before it is defined
  refused(errc::corrupt_frame, edited("\"inputs\":[\"ReLU_1\"]", "\"inputs\":[\"Add_3\"]"), "'Add_3', which is not defined before it");
  refused(errc::corrupt_frame, edited("\"inputs\":[\"ReLU_1\"]", "\"inputs\":[\"ghost\"]"), "'ghost'");
  refused(errc::corrupt_frame, edited("\"output\":\"ReLU_1\"", "\"output\":\"conv1\""), "defined twice");
  refused(errc::corrupt_frame, edited("\"shape\":[3,6,6]", "\"shape\":[4,6,6]"), "node 'conv1'");  // channels
  refused(errc::corrupt_frame, edited("\"shape\":[3,6,6]", "\"shape\":[3,2,2]"), "node 'logits'");  // 20 features
  refused(errc::corrupt_frame, edited("\"shape\":[3,6,6]", "\"shape\":[3,-6,6]"), "not a size");
  refused(errc::corrupt_frame, edited("\"outputs\":[\"logits\"]", "\"outputs\":[]"), "no outputs");
  refused(errc::corrupt_frame, edited("\"outputs\":[\"logits\"]", "\"outputs\":[\"nothing\"]"), "'nothing'");
  refused(errc::corrupt_frame, edited("\"type\":\"Add\"", "\"type\":\"Concat\""), "node 'logits'");  // 8 channels
  refused(errc::unsupported, edited("\"type\":\"Add\"", "\"type\":\"Mul\""), "Mul");
  refused(errc::too_large, edited("\"in\":180", "\"in\":180000"), "more weights than the file holds");
  refused(errc::corrupt_frame, "[1,2]", "not an object");
  refused(errc::corrupt_frame, "{\"inputs\":[],\"nodes\":[{\"op\":{\"type\":\"ReLU\",\"x\":[[1]]}}],\"outputs\":[]}", "nested");
  auto missing = state;
  missing.pop_back();
  refused(errc::too_large, arch, "more weights than the file holds", missing);
  auto extra = state;
  extra.push_back({"stray", state[1].value, {}});
  refused(errc::corrupt_frame, arch, "no tensor named 'stray'", extra);
  auto renamed = state;
  renamed[0].name = "conv9.weight";
  refused(errc::corrupt_frame, arch, "conv9.weight", renamed);
}
#endif

TEST_CASE("Graph: the Trainer trains a residual CNN graph on a toy image task", "[nn][graph][train]") {
  // 1x8x8 images: a bright vertical (class 0) or horizontal (class 1) bar at a random place, in noise.
  auto images = [](std::size_t n, std::uint64_t seed) {
    Rng rng(seed);
    Dataset<float> d;
    d.classes = 2;
    d.inputs = Tensor<float>(Shape{n, 1, 8, 8});
    d.labels.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      const auto y = static_cast<std::size_t>(rng.below(2)), at = static_cast<std::size_t>(rng.below(8));
      d.labels[i] = static_cast<std::int32_t>(y);
      for (std::size_t p = 0; p < 64; ++p) {
        const bool bar = y == 0 ? p % 8 == at : p / 8 == at;
        d.inputs[i * 64 + p] = (bar ? 1.0f : 0.0f) + 0.3f * static_cast<float>(rng.normal());
      }
    }
    return d;
  };
  const Dataset<float> train = images(512, 1), test = images(256, 2);
  Rng rng(3);
  Graph<float> g;
  const std::string x = g.input("x", Shape{1, 8, 8});
  std::string c = g.add<Conv2D<float>>(x, 1, 4, 3, 3, same3(), rng);
  std::string y = g.add<ReLU<float>>(c);
  y = g.add<Conv2D<float>>(y, 4, 4, 3, 3, same3(), rng);
  y = g.add<Add<float>>({y, c});
  y = g.add<ReLU<float>>(y);
  y = g.add<Dense<float>>(y, 4 * 64, 2, rng);
  g.output(y);
  Classifier<float> objective(g);
  Adam<float> adam(1e-2);
  TrainOptions o;
  o.epochs = 4;
  o.batch_size = 32;
  Trainer<float> trainer(o, {});
  const double before = evaluate<float>(objective, test).accuracy[0];
  const auto h = trainer.fit(objective, adam, train, &test);
  const double after = h.epochs.back().validation.accuracy[0];
  INFO("accuracy " << before << " -> " << after);
  CHECK(before < 0.8);
  CHECK(after > 0.95);
  CHECK(h.epochs.back().train_loss < h.epochs.front().train_loss);
}

TEST_CASE("Graph: fold_batchnorm folds each Conv2D read only by a BatchNorm2D, and keeps the outputs", "[nn][graph][batchnorm]") {
  Rng rng(12);
  Graph<double> g;
  const std::string x = g.input("x", Shape{3, 6, 6});
  g.add(std::string("c1"), {x}, std::make_unique<Conv2D<double>>(3, 4, 3, 3, same3(), rng));
  g.add(std::string("bn1"), {"c1"}, std::make_unique<BatchNorm2D<double>>(4));  // folds
  g.add(std::string("c2"), {"bn1"}, std::make_unique<Conv2D<double>>(4, 4, 3, 3, same3(), rng));
  g.add(std::string("bn2"), {"c2"}, std::make_unique<BatchNorm2D<double>>(4));  // c2 is also read by the Add: kept
  g.add(std::string("sum"), {"bn2", "c2"}, std::make_unique<Add<double>>());
  g.add(std::string("logits"), {"sum"}, std::make_unique<Dense<double>>(144, 3, rng));
  g.output("logits");
  // non-trivial statistics and affine parameters: a few training-mode passes, then random gamma/beta
  g.set_training(true);
  for (std::uint64_t s = 0; s < 3; ++s) (void)g.forward(random_t<double>(Shape{8, 3, 6, 6}, 50 + s, -2, 3));
  g.set_training(false);
  for (auto& p : g.parameters())
    if (p.name.starts_with("bn"))
      for (double& v : p.value.span()) v = rng.uniform(0.5, 1.5);
  const Graph<double> folded = fold_batchnorm(g);
  CHECK(folded.node_count() == g.node_count() - 1);
  CHECK(folded.node_inputs(1) == std::vector<std::string>{"bn1"});  // c2 reads the fold, named bn1
  CHECK(folded.contains("c2"));
  CHECK_FALSE(folded.contains("c1"));
  const auto in = random_t<double>(Shape{4, 3, 6, 6}, 60, -2, 3);
  const Tensor<double> want = g.predict(in);
  Graph<double> f = folded;
  const Tensor<double> got = f.predict(in);
  // Folding changes only rounding: each output is a sum of a few hundred products of doubles,
  // so the two agree to far better than 1e-10 of the output's scale.
  double scale = 0, diff = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    scale = std::max(scale, std::abs(want[i]));
    diff = std::max(diff, std::abs(want[i] - got[i]));
  }
  INFO("max difference " << diff << " at scale " << scale);
  CHECK(scale > 0.1);
  CHECK(diff <= 1e-10 * scale);
}

TEST_CASE("Graph: insert_after splices a block in after a tensor and rewires its readers", "[nn][graph]") {
  Rng rng(71);
  Conv2DOptions one;  // 1x1, stride 1
  // x [2,5,5] -> c1 -> r1 (read twice: c2 and the residual add) -> c2 -> sum(c2, r1) -> gap -> logits
  Graph<double> g;
  const std::string x = g.input("x", Shape{2, 5, 5});
  g.add(std::string("c1"), {x}, std::make_unique<Conv2D<double>>(2, 4, 3, 3, same3(), rng));
  g.add(std::string("r1"), {"c1"}, std::make_unique<ReLU<double>>());
  g.add(std::string("c2"), {"r1"}, std::make_unique<Conv2D<double>>(4, 4, 3, 3, same3(), rng));
  g.add(std::string("sum"), {"c2", "r1"}, std::make_unique<Add<double>>());
  g.add(std::string("gap"), {"sum"}, std::make_unique<GlobalAvgPool<double>>());
  g.add(std::string("logits"), {"gap"}, std::make_unique<Dense<double>>(4, 3, rng));
  g.output("logits");
  // the block: an encoder 4 -> 1 channel, a bounded code, a decoder 1 -> 4 (its input's name is free)
  Graph<double> block;
  block.input("in", Shape{4, 5, 5});
  block.add(std::string("enc"), {"in"}, std::make_unique<Conv2D<double>>(4, 1, 1, 1, one, rng));
  block.add(std::string("code"), {"enc"}, std::make_unique<Sigmoid<double>>());
  block.add(std::string("dec"), {"code"}, std::make_unique<Conv2D<double>>(1, 4, 1, 1, one, rng));
  block.output("dec");

  const Graph<double> b = insert_after(g, "r1", block);
  REQUIRE(b.node_count() == g.node_count() + 3);
  CHECK(b.node_output(2) == "enc");  // right after r1's producer
  CHECK(b.node_inputs(2) == std::vector<std::string>{"r1"});
  CHECK(b.node_inputs(5) == std::vector<std::string>{"dec"});  // c2 reads the decoder
  CHECK(b.node_inputs(6) == std::vector<std::string>{"c2", "dec"});  // so does the residual add
  CHECK(b.output_names() == g.output_names());
  CHECK(b.parameter_count() == g.parameter_count() + block.parameter_count());

  // the same numbers as running the pieces by hand: head to r1, the block, the tail from r1
  const auto in = random_t<double>(Shape{3, 2, 5, 5}, 72);
  auto [head, tail] = g.cut({"r1"});
  Graph<double> blk = block;
  const Tensor<double> features = head.predict(in);
  const Tensor<double> decoded = blk.predict(features);
  const Tensor<double> want = tail.predict(decoded);
  Graph<double> copy = b;
  const Tensor<double> got = copy.predict(in);
  REQUIRE(got.shape() == want.shape());
  for (std::size_t i = 0; i < want.size(); ++i) CHECK(got[i] == want[i]);

  // the code is a single-tensor cut: the edge runs the encoder, the cloud the decoder
  auto [edge, cloud] = b.cut({"code"});
  CHECK(edge.output_names() == std::vector<std::string>{"code"});
  CHECK(cloud.sample_shape("code") == Shape{1, 5, 5});
  const Tensor<double> split = cloud.predict(edge.predict(in));
  for (std::size_t i = 0; i < want.size(); ++i) CHECK(split[i] == want[i]);

  // at an input and at an output: the block runs first, or its output becomes the model's
  Graph<double> pre;
  pre.input("y", Shape{4, 5, 5});
  pre.add(std::string("act"), {"y"}, std::make_unique<ReLU<double>>());
  pre.output("act");
  const Graph<double> at_input = insert_after(pre, "y", block);
  CHECK(at_input.node_output(0) == "enc");
  CHECK(at_input.node_inputs(3) == std::vector<std::string>{"dec"});
  const Graph<double> at_output = insert_after(pre, "act", block);
  CHECK(at_output.output_names() == std::vector<std::string>{"dec"});

  // refused: an unknown tensor, a block input of another shape, a name the model has, two inputs
  expect_errc(errc::invalid_argument, [&] { (void)insert_after(g, "nope", block); });
  expect_errc(errc::shape_mismatch, [&] { (void)insert_after(g, "x", block); });
  Graph<double> clash;
  clash.input("in", Shape{4, 5, 5});
  clash.add(std::string("c2"), {"in"}, std::make_unique<ReLU<double>>());
  clash.output("c2");
  expect_errc(errc::invalid_argument, [&] { (void)insert_after(g, "r1", clash); });
  Graph<double> two;
  two.input("a", Shape{4, 5, 5});
  two.input("b", Shape{4, 5, 5});
  two.add(std::string("ab"), {"a", "b"}, std::make_unique<Add<double>>());
  two.output("ab");
  expect_errc(errc::invalid_argument, [&] { (void)insert_after(g, "r1", two); });
  // a block whose output the readers cannot take: their own shape error
  Graph<double> narrow;
  narrow.input("in", Shape{4, 5, 5});
  narrow.add(std::string("squeeze"), {"in"}, std::make_unique<Conv2D<double>>(4, 2, 1, 1, one, rng));
  narrow.output("squeeze");
  CHECK_THROWS_AS(insert_after(g, "r1", narrow), error);
}
