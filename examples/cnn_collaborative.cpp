// cnn_collaborative: a small CNN for the edge beside the Fashion-MNIST CNN of fmnist_cnn.hpp (the
// cloud model), trained alone and distilled from the cloud CNN through the collaborative loss
// (the cloud frozen: a fixed teacher), over several seeds; prints each edge model's test accuracy
// and its agreement with the cloud CNN (the share of test images on which both give the same
// class: what a cascade needs), then a summary (docs/training.md shows the full run).
//
//   edge CNN: image [1, 28, 28] -> norm -> conv 3x3 1->W, BN, ReLU -> max pool 2x2
//             -> conv 3x3 W->2W, BN, ReLU -> max pool 2x2 -> flatten -> Dense 2W*49 -> 10
//
// Methods: alone (cross-entropy on the labels); kd-kl (CE + T^2 KL(edge || cloud) at T = 4,
// weight 1); kd-mse (CE + MSE between logits). Adam 2e-3, cosine, batch 128.
//
//   cnn_collaborative [--widths 8] [--seeds 3] [--epochs 10] [--methods alone,kd-kl,kd-mse]
//                     [--train-subset N] [--limit N] [--cloud-epochs 15] [--cache FILE] [--data DIR]
//
// Exit status: 0 done; 2 bad arguments; 77 the data set is missing; 1 otherwise.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <edgesplit/edgesplit.hpp>
#include <edgesplit/io/idx.hpp>

#include "cli.hpp"
#include "fmnist_main.hpp"
#include "fmnist_cnn.hpp"

using namespace edgesplit;
using namespace edgesplit_examples;

namespace {

struct Args {
  std::vector<std::size_t> widths{8};
  std::size_t seeds = 3, epochs = 10, cloud_epochs = 15, train_subset = 0, limit = 10000;
  std::vector<std::string> methods{"alone", "kd-kl", "kd-mse"};
  std::filesystem::path cache = "fmnist-cnn.safetensors";
  std::filesystem::path data = fashion_mnist_dir;
};

Args parse(int argc, char** argv) {
  Args a;
  cli::options(argc, argv, [&](std::string_view k, std::string_view v) {
    if (k == "--widths") a.widths = cli::numbers<std::size_t>(v, k, 1, 256);
    else if (k == "--seeds") a.seeds = cli::number<std::size_t>(v, k, 1, 100);
    else if (k == "--epochs") a.epochs = cli::number<std::size_t>(v, k, 1, 200);
    else if (k == "--cloud-epochs") a.cloud_epochs = cli::number<std::size_t>(v, k, 1, 200);
    else if (k == "--train-subset") a.train_subset = cli::number<std::size_t>(v, k, 1, 60000);
    else if (k == "--limit") a.limit = cli::number<std::size_t>(v, k, 1, 10000);
    else if (k == "--methods") {
      a.methods.clear();
      std::string_view rest = v;
      while (true) {
        const auto comma = rest.find(',');
        const std::string m(rest.substr(0, comma));
        if (m != "alone" && m != "kd-kl" && m != "kd-mse")
          fail(errc::invalid_argument, "--methods takes alone, kd-kl and kd-mse, got '" + m + "'");
        a.methods.push_back(m);
        if (comma == std::string_view::npos) break;
        rest.remove_prefix(comma + 1);
      }
    } else if (k == "--cache") a.cache = std::string(v);
    else if (k == "--data") a.data = std::string(v);
    else fail(errc::invalid_argument, "unknown option " + std::string(k));
  });
  return a;
}

/// The edge CNN above, width W, weights from `seed`; its Standardizer fitted on `train`.
Graph<float> edge_cnn(std::size_t w, std::uint64_t seed, const Dataset<float>& train) {
  Rng rng(seed);
  Graph<float> g;
  Conv2DOptions same;
  same.padding = same_padding(3, 3);
  same.bias = false;
  std::string x = g.input("image", Shape{1, 28, 28});
  auto norm = std::make_unique<Standardizer<float>>(784, Standardize::global);
  norm->fit(train.inputs.cview());
  x = g.add(std::string("norm"), {x}, std::move(norm));
  x = g.add(std::string("conv1"), {x}, std::make_unique<Conv2D<float>>(1, w, 3, 3, same, rng));
  x = g.add(std::string("conv1.bn"), {x}, std::make_unique<BatchNorm2D<float>>(w));
  x = g.add(std::string("conv1.relu"), {x}, std::make_unique<ReLU<float>>());
  x = g.add(std::string("pool1"), {x}, std::make_unique<MaxPool2D<float>>(2, 2));
  x = g.add(std::string("conv2"), {x}, std::make_unique<Conv2D<float>>(w, 2 * w, 3, 3, same, rng));
  x = g.add(std::string("conv2.bn"), {x}, std::make_unique<BatchNorm2D<float>>(2 * w));
  x = g.add(std::string("conv2.relu"), {x}, std::make_unique<ReLU<float>>());
  x = g.add(std::string("pool2"), {x}, std::make_unique<MaxPool2D<float>>(2, 2));
  x = g.add(std::string("flatten"), {x}, std::make_unique<Flatten<float>>());
  x = g.add(std::string("logits"), {x}, std::make_unique<Dense<float>>(2 * w * 49, 10, rng));
  g.output(x);
  return g;
}

/// Top-1 class of every image.
std::vector<std::size_t> predictions(Sequential<float>& m, const Dataset<float>& test) {
  m.set_training(false);
  const Tensor<float> z = m.predict(test.inputs.cview());
  std::vector<std::size_t> p(test.size());
  for (std::size_t r = 0; r < p.size(); ++r) p[r] = argmax_row(z.cview(), r);
  return p;
}

struct Stats {
  std::vector<double> acc, agree;
};

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}
double sd(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}

}  // namespace

int main(int argc, char** argv) {
  return edgesplit_examples::fmnist_main("cnn_collaborative", argc, argv, parse, [&](Args& a) {
    auto loaded = load_fashion_mnist<float>(a.data);
    Dataset<float> train = as_images(std::move(loaded.first)), test = as_images(std::move(loaded.second));
    if (a.train_subset && a.train_subset < train.size()) train = train.slice(0, a.train_subset);
    if (a.limit < test.size()) test = test.slice(0, a.limit);
    Sequential<float> cloud = as_sequential(fmnist_cnn(a.cache, a.cloud_epochs, train, test));
    const std::vector<std::size_t> cloud_pred = predictions(cloud, test);
    {
      Classifier<float> c(cloud);
      std::printf("cloud CNN: %.2f%% on %zu test images\n", 100 * evaluate<float>(c, test).accuracy[0], test.size());
    }
    std::map<std::string, Stats> stats;
    std::vector<std::string> order;
    for (std::size_t w : a.widths) {
      for (std::size_t s = 1; s <= a.seeds; ++s) {
        for (const std::string& method : a.methods) {
          const std::uint64_t seed = 100 * s + w;  // every method of one seed starts from the same weights
          Graph<float> g = edge_cnn(w, seed, train);
          const std::string name = "edge CNN W=" + std::to_string(w) + " (" + std::to_string(g.parameter_count()) +
                                   " parameters, " + std::to_string(g.flops(1) / 1000) + " kFLOPs)";
          Sequential<float> edge = as_sequential(std::move(g));
          TrainOptions to;
          to.epochs = a.epochs;
          to.seed = seed;
          to.schedule = LrSchedule::cosine();
          Adam<float> adam(2e-3);
          Trainer<float> trainer(to, ProgressCallback{});
          if (method == "alone") {
            Classifier<float> obj(edge);
            trainer.fit(obj, adam, train);
          } else {
            CollaborativeLoss loss;
            loss.train_cloud = false;  // a fixed teacher
            loss.consistency = method == "kd-kl" ? Consistency::kl_softened : Consistency::mse_logits;
            Collaborative<float> obj(cloud, {&edge}, loss);
            trainer.fit(obj, adam, train);
          }
          Classifier<float> c(edge);
          const double acc = 100 * evaluate<float>(c, test).accuracy[0];
          const std::vector<std::size_t> p = predictions(edge, test);
          std::size_t same = 0;
          for (std::size_t i = 0; i < p.size(); ++i) same += p[i] == cloud_pred[i];
          const double agree = 100.0 * static_cast<double>(same) / static_cast<double>(p.size());
          std::printf("[seed %zu] %s %-7s test %.2f%%  agrees with cloud %.2f%%\n", s, name.c_str(), method.c_str(), acc,
                      agree);
          const std::string key = name + " | " + method;
          if (!stats.count(key)) order.push_back(key);
          stats[key].acc.push_back(acc);
          stats[key].agree.push_back(agree);
        }
      }
    }
    std::printf("\n| edge model | method | accuracy (mean ± sd over %zu seeds) | agrees with cloud |\n|---|---|---|---|\n",
                a.seeds);
    for (const std::string& key : order) {
      const Stats& st = stats[key];
      const auto bar = key.find(" | ");
      std::printf("| %s | %s | %.2f ± %.2f | %.2f |\n", key.substr(0, bar).c_str(), key.substr(bar + 3).c_str(),
                  mean(st.acc), sd(st.acc), mean(st.agree));
    }
    return 0;
  });
}
