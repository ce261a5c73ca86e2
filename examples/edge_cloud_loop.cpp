// edge_cloud_loop: the whole loop of collaborative edge-cloud learning in one program, on
// Fashion-MNIST:
//
//   collect -> edge model -> upload -> cloud model -> feedback -> edge
//
// One model is cut in two: the head runs on the edge, the tail in the cloud, and a small exit on
// the edge answers from the head's features when the cloud cannot (an early exit, BranchyNet
// style, serving as the EdgeClient's Fallback). The edge and the cloud talk through the runtime
// (an in-process connection: the same frames as over TCP). Round 0 trains on the cloud's own
// seed data; then each round:
//
//   1. collect: the edge answers a new slice of the training stream through its EdgeClient (head
//      here, int8 features over the runtime, tail in the cloud) and keeps the samples and their
//      labels (in a deployment labels come later: a user's correction, a sensor's ground truth);
//   2. upload: the edge hands what it collected to the cloud. The runtime carries features and
//      weights; raw training data goes over the application's own channel (a file upload, a
//      queue). Here, in one process, the cloud's pool grows by the slice;
//   3. cloud model: head, exit and tail train together on the pool (MultiExit: the exit's
//      cross-entropy, the whole model's, and the exit distilled from the whole model);
//   4. feedback: the cloud replaces its tail's weights (CloudServer::update_weights, minor
//      version = round) and pushes the head's and the exit's to the edge over the runtime
//      (CloudServer::push_weights(deployment, head, exit));
//   5. edge: its next request runs the new head. The round's line shows the accuracy on the test
//      set through the runtime (head, link, tail) and the exit's alone.
//
// At the end the server shuts down and the edge answers the test set by itself, from the exit it
// was pushed: the program checks that this matches the cloud's copy of the exit, answer for
// answer (the pushes landed), and that the split model gained --min-gain over round 0.
//
//   edge_cloud_loop [--rounds 4] [--per-round 3000] [--bootstrap 1000] [--epochs 4] [--limit 2000]
//                   [--min-gain 0] [--data DIR]
//
// Exit status: 0 done; 2 bad arguments; 77 the data set is missing; 1 a check failed or an error.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <edgesplit/edgesplit.hpp>
#include <edgesplit/io/idx.hpp>

#include "cli.hpp"
#include "fmnist_main.hpp"

using namespace edgesplit;
using namespace edgesplit_examples;

namespace {

struct Args {
  std::size_t rounds = 4, per_round = 3000, bootstrap = 1000, epochs = 4, limit = 2000;
  double min_gain = 0;
  std::filesystem::path data = fashion_mnist_dir;
};

Args parse(int argc, char** argv) {
  Args a;
  cli::options(argc, argv, [&](std::string_view k, std::string_view v) {
    if (k == "--rounds") a.rounds = cli::number<std::size_t>(v, k, 1, 20);
    else if (k == "--per-round") a.per_round = cli::number<std::size_t>(v, k, 100, 20000);
    else if (k == "--bootstrap") a.bootstrap = cli::number<std::size_t>(v, k, 100, 20000);
    else if (k == "--epochs") a.epochs = cli::number<std::size_t>(v, k, 1, 100);
    else if (k == "--limit") a.limit = cli::number<std::size_t>(v, k, 100, 10000);
    else if (k == "--min-gain") a.min_gain = cli::number<double>(v, k, -1, 1);
    else if (k == "--data") a.data = std::string(v);
    else fail(errc::invalid_argument, "unknown option " + std::string(k));
  });
  if (a.bootstrap + a.rounds * a.per_round > 60000)
    fail(errc::invalid_argument, "--bootstrap + --rounds x --per-round must be at most 60000 (the training set)");
  return a;
}

// Top-1 accuracy of `answer(x)` over `data`, in batches of 100 (requests of 100 samples).
template <class Answer>
double accuracy(const Dataset<float>& data, Answer&& answer) {
  std::size_t hits = 0;
  for (std::size_t b = 0; b < data.size(); b += 100) {
    const std::size_t end = std::min(data.size(), b + 100);
    const Tensor<float> out = answer(data.inputs.batch(b, end));
    hits += count_correct(out.cview(), std::span<const std::int32_t>(data.labels.data() + b, end - b));
  }
  return static_cast<double>(hits) / static_cast<double>(data.size());
}

int run(const Args& a) {
  const auto [train_set, test_set] = load_fashion_mnist<float>(a.data);
  const Dataset<float>& train = train_set;  // (clang 14 cannot capture structured bindings)
  const Dataset<float> test = test_set.slice(0, a.limit);

  // The model: head (edge) -> exit (edge) | tail (cloud).
  Rng rng(2026);
  Sequential<float> head, exit, tail;
  head.add<Dense<float>>(784, 64, rng);
  head.add<ReLU<float>>();
  exit.add<Dense<float>>(64, 10, rng);
  tail.add<Dense<float>>(64, 256, rng);
  tail.add<ReLU<float>>();
  tail.add<Dense<float>>(256, 10, rng);
  MultiExit<float> objective(head, exit, tail, {1.0, 1.0, 0.5, Consistency::kl_softened, 4});
  Adam<float> optimizer(2e-3);

  // The cloud trains on its pool: rows [0, pooled) of the training stream.
  std::size_t pooled = a.bootstrap;
  auto train_on_pool = [&](std::size_t round) {
    TrainOptions o;
    o.epochs = a.epochs;
    o.batch_size = 64;
    o.seed = 100 + round;
    Trainer<float> trainer(o, {});  // silent: one line per round below
    const Dataset<float> pool = train.slice(0, pooled);
    (void)trainer.fit(objective, optimizer, pool);
  };
  train_on_pool(0);

  // Deploy: the tail in the cloud, the head and the exit on the edge.
  CodecConfig int8;
  int8.bits = 8;
  Deployment d("fmnist-loop", head.size(), int8);
  CloudServer server;
  server.register_model(d, tail);
  EdgeClient edge(head, [&] { return server.connect_in_process(); }, d, Fallback{exit, Fallback::Input::features});
  auto through_runtime = [&](TensorView<const float> x) {
    InferResult r = edge.infer(x, deadline_after(std::chrono::seconds(10)));
    if (r.path != AnswerPath::cloud) fail(errc::unreachable, "the cloud did not answer: " + r.fallback_message);
    return std::move(r.output);
  };
  auto exit_alone = [&](TensorView<const float> x) { return exit.predict(head.predict(x).cview()); };

  std::printf("edge: head 784->64 + exit 64->10 (%zu parameters); cloud: tail 64->256->10 (%zu); int8 features\n",
              head.parameter_count() + exit.parameter_count(), tail.parameter_count());
  std::printf("test accuracy on %zu test images; the split model answers through the runtime\n\n", test.size());
  std::printf("%5s %12s %12s %16s %14s %12s\n", "round", "collected", "cloud pool", "split model", "edge exit", "push bytes");
  const double first = accuracy(test, through_runtime);
  std::printf("%5d %12s %12zu %15.2f%% %13.2f%% %12s\n", 0, "-", pooled, 100 * first, 100 * accuracy(test, exit_alone),
              "-");

  double last = first, last_exit = 0;
  for (std::size_t round = 1; round <= a.rounds; ++round) {
    // 1. collect: the edge answers the round's slice through the runtime and keeps it.
    const Dataset<float> collected = train.slice(pooled, pooled + a.per_round);
    (void)accuracy(collected, through_runtime);
    // 2. upload: the cloud's pool grows by what the edge collected.
    pooled += collected.size();
    // 3. cloud model: head, exit and tail train together on the pool.
    train_on_pool(round);
    // 4. feedback: the tail in place, the head and the exit to the edge.
    d.minor = static_cast<std::uint32_t>(round);
    server.update_weights(d, tail);
    const std::size_t before = edge.stats().weight_updates;
    if (server.push_weights(d, head, exit) != 1) fail(errc::unreachable, "the push reached no edge");
    for (int i = 0; i < 5000 && edge.stats().weight_updates == before; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (edge.stats().weight_updates == before)
      fail(errc::timeout, "the edge did not take the push: " + edge.last_error());
    std::size_t push_bytes = 0;
    for (const auto& p : std::as_const(head).parameters()) push_bytes += p.value.bytes();
    for (const auto& p : std::as_const(exit).parameters()) push_bytes += p.value.bytes();
    // 5. edge: the next requests run the new head.
    last = accuracy(test, through_runtime);
    last_exit = accuracy(test, exit_alone);
    std::printf("%5zu %12zu %12zu %15.2f%% %13.2f%% %12zu\n", round, collected.size(), pooled, 100 * last,
                100 * last_exit, push_bytes);
  }

  // The link goes down: the edge answers alone, from the exit it was pushed.
  server.shutdown(std::chrono::seconds(1));
  std::size_t same = 0, fallbacks = 0, batches = 0;
  for (std::size_t b = 0; b < test.size(); b += 100, ++batches) {
    const std::size_t end = std::min(test.size(), b + 100);
    const auto x = test.inputs.batch(b, end);
    const InferResult r = edge.infer(x, deadline_after(std::chrono::seconds(10)));
    fallbacks += r.path == AnswerPath::fallback;
    const Tensor<float> want = exit_alone(x);
    for (std::size_t i = 0; i < end - b; ++i) same += argmax_row(r.output.cview(), i) == argmax_row(want.cview(), i);
  }
  std::printf("\nlink down: the edge answered %zu/%zu images alone, %zu as the cloud's copy of the exit does\n",
              test.size(), test.size(), same);
  std::printf("split model: %.2f%% -> %.2f%% over %zu rounds (%+.2f points)\n", 100 * first, 100 * last, a.rounds,
              100 * (last - first));
  int status = 0;
  if (fallbacks != batches || same != test.size()) {
    std::fprintf(stderr, "edge_cloud_loop: the edge's exit does not answer as the pushed one does\n");
    status = 1;
  }
  if (last - first < a.min_gain) {
    std::fprintf(stderr, "edge_cloud_loop: gained %.4f, below --min-gain %.4f\n", last - first, a.min_gain);
    status = 1;
  }
  return status;
}

}  // namespace

int main(int argc, char** argv) { return fmnist_main("edge_cloud_loop", argc, argv, parse, run); }
