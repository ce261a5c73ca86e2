// train_fashion_mnist: trains the cloud model and edge models of several sizes on Fashion-MNIST,
// alone and collaboratively, over several seeds; saves every model as safetensors, checks that
// each file rebuilds its model exactly, and prints each model's test accuracy and agreement with
// the cloud model, then a summary table (docs/training.md shows the full run and its command).
//
//   train_fashion_mnist [--data DIR] [--out DIR] [--epochs N] [--edge-epochs N] [--subset N]
//                       [--edge-subset N] [--seeds N] [--edges 16,32,64] [--methods LIST]
//                       [--temperature T] [--kd-weight W] [--cloud-weight C] [--teacher DIR] [--dropout P]
//                       [--schedule cosine|constant] [--quick] [--quiet] [--min-accuracy X]
//   train_fashion_mnist --evaluate DIR     re-evaluate every model saved in DIR from its file
//   train_fashion_mnist --throughput       the cloud model's training speed (2 epochs, no output)
//
// The cloud model is 784-512-256-10 with ReLU and dropout; it is trained first for each seed (or
// loaded from --teacher DIR, a previous run's --out). Methods, for each edge size H (each edge
// model 784-H-10, starting from the same initial weights):
//   alone       the edge model trained on the labels only;
//   kd-kl       distilled from that seed's cloud model (frozen): CE + w T^2 KL (T = 4, w = 1);
//   kd-mse      distilled on logits: CE + w MSE(edge logits, cloud logits);
//   joint       the cloud and all edge models trained together from scratch (the collaborative
//               objective, consistency KL at T; the cloud gets C = 1 times the edges' pull);
//   multi-exit  one model 784-H | exit H-10 | tail H-256-10 trained with the joint multi-exit
//               loss; its edge half (784-H-10) and its whole path are reported.
// --edge-subset N trains the edge models of alone, kd-* and multi-exit on the first N training
// images only (the cloud model still sees --subset): the few-labels case.
// Exit status: 0 done; 1 the cloud model missed --min-accuracy; 2 bad arguments or files;
// 77 the data set is missing (the test suite's "skipped").
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <tuple>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "edgesplit/edgesplit.hpp"
#include "edgesplit/io/idx.hpp"
#include "edgesplit/io/safetensors.hpp"
#include "cli.hpp"

using namespace edgesplit;
namespace fs = std::filesystem;

namespace {

struct Options {
  fs::path data = fashion_mnist_dir;
  fs::path out = "fashion-mnist-models";
  fs::path teacher, evaluate;
  std::size_t epochs = 15, edge_epochs = 15, subset = 0, edge_subset = 0, seeds = 3, batch = 128;
  double temperature = 4, kd_weight = 1, cloud_weight = 1;
  std::vector<std::size_t> edges{16, 32, 64};
  std::set<std::string> methods{"alone", "kd-kl", "kd-mse", "joint", "multi-exit"};
  double lr = 1e-3, dropout = 0.2, min_accuracy = 0;
  bool cosine = true, throughput = false;
  bool quiet = false;
};

std::size_t parse_count(const std::string& opt, const std::string& v, bool zero_ok = false) {
  return cli::number<std::size_t>(v, opt, zero_ok ? 0 : 1, 1000000);
}

double parse_fraction(const std::string& opt, const std::string& v, bool one_ok) {
  const double x = cli::number(v, opt, 0.0, 1.0);
  if (!one_ok && x == 1) fail(errc::invalid_argument, opt + " must be below 1, got '" + v + "'");
  return x;
}

double parse_positive(const std::string& opt, const std::string& v) {
  const double x = cli::number(v, opt, 0.0, 1000.0);
  if (x == 0) fail(errc::invalid_argument, opt + " must be above 0, got '" + v + "'");
  return x;
}

Options parse_args(int argc, char** argv) {
  Options o;
  const std::set<std::string> known{"alone", "kd-kl", "kd-mse", "joint", "multi-exit"};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) fail(errc::invalid_argument, a + " needs a value");
      return argv[++i];
    };
    if (a == "--data") o.data = value();
    else if (a == "--out") o.out = value();
    else if (a == "--epochs") o.epochs = parse_count(a, value());
    else if (a == "--edge-epochs") o.edge_epochs = parse_count(a, value());
    else if (a == "--subset") o.subset = parse_count(a, value(), true);
    else if (a == "--edge-subset") o.edge_subset = parse_count(a, value(), true);
    else if (a == "--teacher") o.teacher = value();
    else if (a == "--evaluate") o.evaluate = value();
    else if (a == "--temperature") o.temperature = parse_positive(a, value());
    else if (a == "--kd-weight") o.kd_weight = parse_positive(a, value());
    else if (a == "--cloud-weight") o.cloud_weight = parse_fraction(a, value(), true);
    else if (a == "--seeds") o.seeds = parse_count(a, value());
    else if (a == "--quiet") o.quiet = true;
    else if (a == "--throughput") o.throughput = true;
    else if (a == "--min-accuracy") o.min_accuracy = parse_fraction(a, value(), true);
    else if (a == "--dropout") o.dropout = parse_fraction(a, value(), false);
    else if (a == "--schedule") {
      const std::string v = value();
      if (v != "cosine" && v != "constant") fail(errc::invalid_argument, "--schedule is cosine or constant, not '" + v + "'");
      o.cosine = v == "cosine";
    } else if (a == "--edges" || a == "--methods") {
      std::stringstream ss(value());
      std::string item;
      std::vector<std::string> items;
      while (std::getline(ss, item, ',')) items.push_back(item);
      if (items.empty()) fail(errc::invalid_argument, a + " needs a comma-separated list");
      if (a == "--edges") {
        o.edges.clear();
        for (const auto& it : items) o.edges.push_back(parse_count(a, it));
      } else {
        o.methods.clear();
        for (const auto& it : items) {
          if (!known.count(it)) fail(errc::invalid_argument, "unknown method '" + it + "'");
          o.methods.insert(it);
        }
      }
    } else if (a == "--quick") {  // the test suite's reduced run: seconds, one seed, one edge size
      o.subset = 5000;
      o.epochs = o.edge_epochs = 3;
      o.seeds = 1;
      o.edges = {16};
    } else {
      fail(errc::invalid_argument, "unknown option '" + a + "' (see the comment at the top of train_fashion_mnist.cpp)");
    }
  }
  return o;
}

Sequential<float> make_cloud(const Dataset<float>& train, std::uint64_t seed, double dropout) {
  Rng rng(1000 * seed + 1);
  Sequential<float> m;
  m.add<Standardizer<float>>(784, Standardize::global).fit(train.inputs.cview());
  m.add<Dense<float>>(784, 512, rng);
  m.add<ReLU<float>>();
  if (dropout > 0) m.add<Dropout<float>>(dropout, 1000 * seed + 2);
  m.add<Dense<float>>(512, 256, rng);
  m.add<ReLU<float>>();
  if (dropout > 0) m.add<Dropout<float>>(dropout, 1000 * seed + 3);
  m.add<Dense<float>>(256, 10, rng);
  return m;
}

Sequential<float> make_edge(const Dataset<float>& train, std::size_t hidden, std::uint64_t seed) {
  Rng rng(1000 * seed + 10 + hidden);
  Sequential<float> m;
  m.add<Standardizer<float>>(784, Standardize::global).fit(train.inputs.cview());
  m.add<Dense<float>>(784, hidden, rng);
  m.add<ReLU<float>>();
  m.add<Dense<float>>(hidden, 10, rng);
  return m;
}

std::string arch_name(const Sequential<float>& m) {
  std::string s = "784";
  for (std::size_t i = 0; i < m.size(); ++i)
    if (m[i].name() == "Dense") s += "-" + std::to_string(static_cast<const Dense<float>&>(m[i]).out_features());
  return s;
}

/// One measured result.
struct Result {
  std::string model, method;
  std::uint64_t seed;
  double accuracy, agreement, seconds, samples_per_second;  // agreement: NaN for cloud models
};

std::string cloud_name = "784-512-256-10";

fs::path model_file(const fs::path& dir, const std::string& model, const std::string& method, std::uint64_t seed) {
  return dir / (model + "_" + method + "_seed" + std::to_string(seed) + ".safetensors");
}

/// Top-1 class of every test image.
std::vector<std::size_t> predictions(Sequential<float>& m, const Dataset<float>& test) {
  const auto z = m.predict(test.inputs.cview());
  std::vector<std::size_t> p(test.size());
  for (std::size_t r = 0; r < p.size(); ++r) p[r] = argmax_row(z.cview(), r);
  return p;
}

double agreement(const std::vector<std::size_t>& a, const std::vector<std::size_t>& b) {
  std::size_t same = 0;
  for (std::size_t i = 0; i < a.size(); ++i) same += a[i] == b[i];
  return static_cast<double>(same) / static_cast<double>(a.size());
}

class Experiment {
 public:
  Experiment(Options o, Dataset<float> train, Dataset<float> test)
      : o_(std::move(o)), train_(std::move(train)), test_(std::move(test)) {
    edge_train_ = o_.edge_subset && o_.edge_subset < train_.size() ? train_.slice(0, o_.edge_subset) : train_;
  }

  TrainOptions train_options(std::size_t epochs, std::uint64_t seed) const {
    TrainOptions t;
    t.epochs = epochs;
    t.batch_size = o_.batch;
    t.seed = seed;
    if (o_.cosine) t.schedule = LrSchedule::cosine();
    return t;
  }

  ProgressCallback progress(const std::string& label) const {
    if (o_.quiet) return {};
    return [label](const EpochReport& r) {
      std::ostringstream line;
      print_progress(line)(r);
      std::cout << "  " << label << "  " << line.str() << std::flush;
    };
  }

  /// Trains through `objective` with Adam on `data`.
  template <class O>
  TrainHistory train(O& objective, std::size_t epochs, std::uint64_t seed, const std::string& label,
                     const Dataset<float>& data) {
    Adam<float> adam(o_.lr);
    Trainer<float> trainer(train_options(epochs, seed), progress(label));
    const std::clock_t c0 = std::clock();
    auto h = trainer.fit(objective, adam, data);
    cpu_seconds_ = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
    return h;
  }

  /// Saves, reloads from the file alone, checks the reloaded model gives the same accuracy, and
  /// records accuracy and agreement with `reference` (the cloud model's predictions; none for a
  /// cloud model).
  double record(Sequential<float>& m, const std::string& method, std::uint64_t seed, const TrainHistory& h,
                double seconds, const std::vector<std::size_t>* reference) {
    Classifier<float> c(m);
    const double acc = evaluate<float>(c, test_).accuracy[0];
    const std::string model = arch_name(m);
    const fs::path file = model_file(o_.out, model, method, seed);
    save_safetensors(file, m,
                     {{"dataset", "fashion-mnist"}, {"method", method}, {"seed", std::to_string(seed)},
                      {"test_accuracy", std::to_string(acc)}});
    auto back = load_safetensors<float>(file);
    Classifier<float> cb(back);
    const double acc_back = evaluate<float>(cb, test_).accuracy[0];
    if (acc_back != acc) fail(errc::corrupt_frame, file.string() + " reloads with accuracy " + std::to_string(acc_back));
    const double agree = reference ? agreement(predictions(m, test_), *reference) : std::nan("");
    std::printf("[seed %llu] %-16s %-15s test %.2f%%", static_cast<unsigned long long>(seed), model.c_str(),
                method.c_str(), 100 * acc);
    if (reference) std::printf("  agrees with cloud %.2f%%", 100 * agree);
    std::printf("  (%zu epochs, %.0f samples/s, %.1f s)\n", h.epochs.size(), h.samples_per_second, seconds);
    std::fflush(stdout);
    results_.push_back({model, method, seed, acc, agree, seconds, h.samples_per_second});
    return acc;
  }

  void run_seed(std::uint64_t seed) {
    using clock = std::chrono::steady_clock;
    // the cloud model alone: the teacher of the distillation runs and the reference
    auto t0 = clock::now();
    Sequential<float> cloud;
    if (!o_.teacher.empty()) {
      const auto file = model_file(o_.teacher, cloud_name, "alone", seed);
      cloud = load_safetensors<float>(file);
      Classifier<float> cc(cloud);
      const double acc = evaluate<float>(cc, test_).accuracy[0];
      std::printf("[seed %llu] %-16s %-15s test %.2f%%  (loaded from %s)\n", static_cast<unsigned long long>(seed),
                  cloud_name.c_str(), "alone", 100 * acc, file.string().c_str());
      results_.push_back({cloud_name, "alone", seed, acc, std::nan(""), 0, 0});
      cloud_acc_.push_back(acc);
    } else {
      cloud = make_cloud(train_, seed, o_.dropout);
      Classifier<float> cc(cloud);
      const auto hc = train(cc, o_.epochs, seed, "cloud", train_);
      const double secs = std::chrono::duration<double>(clock::now() - t0).count();
      cloud_acc_.push_back(record(cloud, "alone", seed, hc, secs, nullptr));
      cloud_sps_.push_back(hc.samples_per_second);
      cloud_cpu_sps_.push_back(static_cast<double>(train_.size() * hc.epochs.size()) / cpu_seconds_);
    }
    const auto cloud_pred = predictions(cloud, test_);

    for (std::size_t hidden : o_.edges) {
      const std::string tag = "784-" + std::to_string(hidden) + "-10";
      if (o_.methods.count("alone")) {
        t0 = clock::now();
        auto e = make_edge(edge_train_, hidden, seed);
        Classifier<float> obj(e);
        const auto h = train(obj, o_.edge_epochs, seed, tag + " alone", edge_train_);
        record(e, "alone", seed, h, std::chrono::duration<double>(clock::now() - t0).count(), &cloud_pred);
      }
      for (const char* kind : {"kd-kl", "kd-mse"}) {
        if (!o_.methods.count(kind)) continue;
        t0 = clock::now();
        auto e = make_edge(edge_train_, hidden, seed);
        CollaborativeLoss loss;
        loss.train_cloud = false;
        loss.consistency = std::string(kind) == "kd-kl" ? Consistency::kl_softened : Consistency::mse_logits;
        loss.temperature = o_.temperature;
        loss.weight = o_.kd_weight;
        Collaborative<float> obj(cloud, {&e}, loss);
        const auto h = train(obj, o_.edge_epochs, seed, tag + " " + kind, edge_train_);
        record(e, kind, seed, h, std::chrono::duration<double>(clock::now() - t0).count(), &cloud_pred);
      }
      if (o_.methods.count("multi-exit")) {
        t0 = clock::now();
        Rng rng(1000 * seed + 10 + hidden);  // the head starts as the edge models do
        Sequential<float> head, exit, tail;
        head.add<Standardizer<float>>(784, Standardize::global).fit(edge_train_.inputs.cview());
        head.add<Dense<float>>(784, hidden, rng);
        head.add<ReLU<float>>();
        exit.add<Dense<float>>(hidden, 10, rng);
        Rng rt(1000 * seed + 500 + hidden);
        tail.add<Dense<float>>(hidden, 256, rt);
        tail.add<ReLU<float>>();
        tail.add<Dropout<float>>(o_.dropout, 1000 * seed + 4);
        tail.add<Dense<float>>(256, 10, rt);
        MultiExit<float> obj(head, exit, tail, {1.0, 1.0, 0.0, Consistency::kl_softened, 4});
        const auto h = train(obj, o_.edge_epochs, seed, tag + " multi-exit", edge_train_);
        auto edge = obj.edge_model();
        auto full = obj.full_model();
        const double secs2 = std::chrono::duration<double>(clock::now() - t0).count();
        record(edge, "multi-exit", seed, h, secs2, &cloud_pred);
        record(full, "multi-exit-full", seed, h, secs2, &cloud_pred);
      }
    }

    if (o_.methods.count("joint")) {
      // the cloud and every edge model from scratch, trained together
      t0 = clock::now();
      auto joint_cloud = make_cloud(train_, seed, o_.dropout);
      std::vector<Sequential<float>> edges;
      for (std::size_t hidden : o_.edges) edges.push_back(make_edge(train_, hidden, seed));
      std::vector<Sequential<float>*> ptrs;
      for (auto& e : edges) ptrs.push_back(&e);
      CollaborativeLoss loss;
      loss.consistency = Consistency::kl_softened;
      loss.temperature = o_.temperature;
      loss.weight = o_.kd_weight;
      loss.train_cloud = true;
      loss.cloud_weight = o_.cloud_weight;
      Collaborative<float> obj(joint_cloud, ptrs, loss);
      const auto h = train(obj, o_.epochs, seed, "joint", train_);
      const double secs = std::chrono::duration<double>(clock::now() - t0).count();
      record(joint_cloud, "joint", seed, h, secs, nullptr);
      const auto joint_pred = predictions(joint_cloud, test_);
      for (auto& e : edges) record(e, "joint", seed, h, secs, &joint_pred);
    }
  }

  /// Re-evaluates every model saved in `dir` from its file alone (accuracy, and agreement with
  /// the cloud model of the same seed: the joint one for joint models).
  void evaluate_dir(const fs::path& dir) {
    struct Saved {
      std::string model, method;
      std::uint64_t seed;
      Sequential<float> net;
    };
    std::vector<Saved> saved;
    std::vector<fs::path> files;
    for (const auto& f : fs::directory_iterator(dir))
      if (f.path().extension() == ".safetensors") files.push_back(f.path());
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      const auto file = SafetensorsFile::read(f);
      const auto& meta = file.metadata();
      if (!meta.count("method") || !meta.count("seed")) continue;
      auto net = model_from_safetensors<float>(file);
      saved.push_back({arch_name(net), meta.at("method"), parse_count("seed", meta.at("seed")), std::move(net)});
    }
    std::map<std::pair<std::uint64_t, std::string>, std::vector<std::size_t>> clouds;
    for (auto& s : saved)
      if (s.model == cloud_name) clouds[{s.seed, s.method}] = predictions(s.net, test_);
    for (auto& s : saved) {
      Classifier<float> c(s.net);
      const double acc = evaluate<float>(c, test_).accuracy[0];
      double agree = std::nan("");
      if (s.model != cloud_name) {
        const auto it = clouds.find({s.seed, s.method == "joint" ? "joint" : "alone"});
        if (it != clouds.end()) agree = agreement(predictions(s.net, test_), it->second);
      }
      results_.push_back({s.model, s.method, s.seed, acc, agree, 0, 0});
    }
    std::stable_sort(results_.begin(), results_.end(), [](const Result& a, const Result& b) {
      auto rank = [](const Result& r) { return r.model == cloud_name ? 0 : 1; };
      return std::make_tuple(rank(a), a.model.size(), a.model, a.method) <
             std::make_tuple(rank(b), b.model.size(), b.model, b.method);
    });
  }

  void summary() const {
    std::map<std::pair<std::string, std::string>, std::vector<const Result*>> by;
    std::vector<std::pair<std::string, std::string>> order;
    for (const auto& r : results_) {
      const auto key = std::make_pair(r.model, r.method);
      if (!by.count(key)) order.push_back(key);
      by[key].push_back(&r);
    }
    std::printf("\nTest accuracy (%%) on the %zu test images: mean, sample std, min, max over seeds; mean agreement\n"
                "with the cloud model's top-1 (the joint cloud for joint models)\n",
                test_.size());
    std::printf("%-16s %-16s %5s %7s %6s %7s %7s %7s\n", "model", "method", "seeds", "mean", "std", "min", "max", "agree");
    for (const auto& key : order) {
      const auto& v = by.at(key);
      const double n = static_cast<double>(v.size());
      double mean = 0, sd = 0, lo = 1, hi = 0, agree = 0;
      for (const Result* r : v) {
        mean += r->accuracy / n;
        agree += r->agreement / n;
        lo = std::min(lo, r->accuracy);
        hi = std::max(hi, r->accuracy);
      }
      for (const Result* r : v) sd += (r->accuracy - mean) * (r->accuracy - mean);
      sd = v.size() > 1 ? std::sqrt(sd / (n - 1)) : 0.0;
      std::printf("%-16s %-16s %5zu %7.2f %6.2f %7.2f %7.2f", key.first.c_str(), key.second.c_str(), v.size(),
                  100 * mean, 100 * sd, 100 * lo, 100 * hi);
      if (std::isnan(agree)) std::printf("       -\n");
      else std::printf(" %7.2f\n", 100 * agree);
    }
    if (!o_.evaluate.empty()) return;
    std::ofstream csv(o_.out / "results.csv");
    csv << "model,method,seed,test_accuracy,agreement_with_cloud,seconds,samples_per_second\n";
    for (const auto& r : results_)
      csv << r.model << ',' << r.method << ',' << r.seed << ',' << r.accuracy << ',' << r.agreement << ','
          << r.seconds << ',' << r.samples_per_second << '\n';
    if (cloud_sps_.empty()) return;
    double sps = 0, cpu = 0;
    for (std::size_t i = 0; i < cloud_sps_.size(); ++i) {
      sps += cloud_sps_[i] / static_cast<double>(cloud_sps_.size());
      cpu += cloud_cpu_sps_[i] / static_cast<double>(cloud_sps_.size());
    }
    std::printf("\nCloud model training throughput (784-512-256-10 with dropout, Adam, batch %zu, 1 thread, %s): "
                "%.0f samples/s wall clock, %.0f samples per CPU second\n",
                o_.batch, kernels::simd_arch_name(), sps, cpu);
  }

  const std::vector<double>& cloud_accuracy() const { return cloud_acc_; }

 private:
  Options o_;
  Dataset<float> train_, test_, edge_train_;
  std::vector<Result> results_;
  std::vector<double> cloud_acc_, cloud_sps_, cloud_cpu_sps_;
  double cpu_seconds_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    o = parse_args(argc, argv);
  } catch (const error& e) {
    std::cerr << "train_fashion_mnist: " << e.what() << "\n";
    return 2;
  }
  if (!fashion_mnist_available(o.data)) {
    std::cout << "SKIPPED: Fashion-MNIST not found in " << o.data.string()
              << " (install Debian's dataset-fashion-mnist, or pass --data DIR)\n";
    return 77;
  }
  try {
    auto [train, test] = load_fashion_mnist<float>(o.data);
    if (o.subset && o.subset < train.size()) train = train.slice(0, o.subset);
    if (o.throughput) {
      // the cloud model's training speed, without dropout (the peers' figure) and with it
      for (double p : {0.0, o.dropout}) {
        auto m = make_cloud(train, 1, p);
        Classifier<float> obj(m);
        Adam<float> adam(o.lr);
        TrainOptions t;
        t.epochs = 2;
        t.batch_size = o.batch;
        const std::clock_t c0 = std::clock();
        const auto h = Trainer<float>(t, {}).fit(obj, adam, train);
        const double cpu = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
        std::printf("784-512-256-10 %s, Adam, batch %zu, %zu samples x 2 epochs, 1 thread, %s: %.0f samples/s wall "
                    "clock, %.0f samples per CPU second\n",
                    p > 0 ? "with dropout" : "no dropout  ", o.batch, train.size(), kernels::simd_arch_name(),
                    h.samples_per_second, static_cast<double>(2 * train.size()) / cpu);
      }
      return 0;
    }
    if (!o.evaluate.empty()) {
      Experiment ex(o, std::move(train), std::move(test));
      ex.evaluate_dir(o.evaluate);
      ex.summary();
      return 0;
    }
    fs::create_directories(o.out);
    std::printf("Fashion-MNIST: %zu training and %zu test images; %zu seed(s); cloud %zu epochs, edges %zu epochs; "
                "models to %s\n",
                train.size(), test.size(), o.seeds, o.epochs, o.edge_epochs, o.out.string().c_str());
    Experiment ex(o, std::move(train), std::move(test));
    for (std::uint64_t s = 1; s <= o.seeds; ++s) ex.run_seed(s);
    ex.summary();
    for (double a : ex.cloud_accuracy())
      if (a < o.min_accuracy) {
        std::printf("FAILED: cloud accuracy %.4f below --min-accuracy %.4f\n", a, o.min_accuracy);
        return 1;
      }
  } catch (const error& e) {
    std::cerr << "train_fashion_mnist: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
