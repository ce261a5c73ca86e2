// compression_study: rate and accuracy of split inference on Fashion-MNIST (docs/compression.md).
//
// Cuts the cloud MLP 784-512-256-10 after each hidden ReLU and sends the features through
// FeatureCodec: fp32, int8, int4, int2; per tensor and per channel; calibrated per frame or once
// on training features (static); min-max or MSE ranges; with and without zstd; one sample per
// frame and batches of --batch samples. For each it measures test accuracy (the tail run on the
// decoded features) and bytes per sample (whole frames). Beside it: the naive baseline that sends
// the image itself (8-bit through zstd, and at 4, 2 and 1 bits per pixel), int8 edge inference
// of the whole model (quantize_model), and the tail fine-tuned on dequantized int2 features with
// the head frozen (the whole model likewise on the reduced-depth images, for the baseline).
//
//   compression_study [--model FILE | --cache FILE --epochs N] [--train-subset N] [--limit N]
//                     [--batch N] [--finetune-epochs N] [--csv FILE] [--data DIR]
//                     [--max-int8-loss P] [--max-edge-int8-loss P]
//
// --model loads a trained cloud model (train_fashion_mnist's 784-512-256-10_alone_seed1); without
// it the model is loaded from --cache, or trained with train_fashion_mnist's recipe (Adam 1e-3,
// cosine schedule, dropout 0.2, batch 128) for --epochs and saved there. --max-int8-loss fails
// the run (exit 1) when int8 per-tensor features lose more than P accuracy points at any split,
// --max-edge-int8-loss likewise for quantize_model.
//
// Exit status: 0 on success, 1 when a check fails, 2 on bad arguments, 77 without the data set.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include <edgesplit/edgesplit.hpp>
#include <edgesplit/io/idx.hpp>
#include <edgesplit/io/safetensors.hpp>
#include <edgesplit/quant/quantized_dense.hpp>
#include <edgesplit/wire/feature_codec.hpp>
#include "cli.hpp"
#include "rate_study.hpp"

using namespace edgesplit;
using edgesplit_examples::accuracy;
using edgesplit_examples::FrameBytes;
using edgesplit_examples::send_frames;
namespace fs = std::filesystem;

namespace {

struct Args {
  fs::path model, cache = "compression-study-model.safetensors", csv, data = fashion_mnist_dir;
  std::size_t epochs = 15, train_subset = 0, limit = 10000, batch = 100, finetune_epochs = 3;
  double max_int8_loss = -1, max_edge_int8_loss = -1;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (i + 1 >= argc) fail(errc::invalid_argument, "option " + k + " needs a value");
    const std::string_view v = argv[++i];
    if (k == "--model") a.model = std::string(v);
    else if (k == "--cache") a.cache = std::string(v);
    else if (k == "--csv") a.csv = std::string(v);
    else if (k == "--data") a.data = std::string(v);
    else if (k == "--epochs") a.epochs = cli::number<std::size_t>(v, k, 1, 200);
    else if (k == "--train-subset") a.train_subset = cli::number<std::size_t>(v, k, 0, 60000);
    else if (k == "--limit") a.limit = cli::number<std::size_t>(v, k, 1, 10000);
    else if (k == "--batch") a.batch = cli::number<std::size_t>(v, k, 2, 10000);
    else if (k == "--finetune-epochs") a.finetune_epochs = cli::number<std::size_t>(v, k, 0, 100);
    else if (k == "--max-int8-loss") a.max_int8_loss = cli::number(v, k, 0.0, 100.0);
    else if (k == "--max-edge-int8-loss") a.max_edge_int8_loss = cli::number(v, k, 0.0, 100.0);
    else fail(errc::invalid_argument, "unknown option " + k);
  }
  return a;
}

Sequential<float> make_cloud(const Dataset<float>& train) {
  Rng rng(1001);  // train_fashion_mnist's seed 1
  Sequential<float> m;
  m.add<Standardizer<float>>(784, Standardize::global).fit(train.inputs.cview());
  m.add<Dense<float>>(784, 512, rng);
  m.add<ReLU<float>>();
  m.add<Dropout<float>>(0.2, 1002);
  m.add<Dense<float>>(512, 256, rng);
  m.add<ReLU<float>>();
  m.add<Dropout<float>>(0.2, 1003);
  m.add<Dense<float>>(256, 10, rng);
  return m;
}

/// Trains `m` with Adam on `data` (the cosine schedule over `epochs`), silently.
void fit(Sequential<float>& m, const Dataset<float>& data, std::size_t epochs, double lr, std::uint64_t seed) {
  Classifier<float> c(m);
  Adam<float> adam(lr);
  TrainOptions t;
  t.epochs = epochs;
  t.seed = seed;
  t.schedule = LrSchedule::cosine();
  Trainer<float> trainer(t, {});
  trainer.fit(c, adam, data);
}

Sequential<float> load_or_train(const Args& a, const Dataset<float>& train) {
  const fs::path file = a.model.empty() ? a.cache : a.model;
  std::error_code ec;
  if (!a.model.empty() || fs::is_regular_file(file, ec)) {
    auto m = load_safetensors<float>(file);
    if (m.output_shape(Shape{1, 784}) != Shape{1, 10})
      fail(errc::shape_mismatch, file.string() + " is not a 784-input, 10-class model");
    std::printf("model: %s\n", file.c_str());
    return m;
  }
  std::printf("model: training 784-512-256-10 for %zu epochs on %zu images, cached in %s\n", a.epochs, train.size(),
              file.c_str());
  std::fflush(stdout);
  auto m = make_cloud(train);
  fit(m, train, a.epochs, 1e-3, 1);
  save_safetensors(file, m);
  return m;
}

Tensor<float> run(Sequential<float>& m, TensorView<const float> x) {
  m.set_training(false);
  const std::size_t n = x.shape().batch();
  Tensor<float> out(m.output_shape(x.shape()));
  for (std::size_t b = 0; b < n; b += 1000) {
    const std::size_t e = std::min(n, b + 1000);
    copy(m.forward(x.batch(b, e)), out.batch(b, e));
  }
  return out;
}

/// How a feature tensor is sent.
struct Method {
  int bits = 32;
  Granularity granularity = Granularity::per_tensor;
  bool frozen = false;  ///< static: parameters calibrated once on training features
  CalibrationMethod calibration = CalibrationMethod::min_max;

  std::string name() const {
    if (bits == 32) return "fp32";
    return "int" + std::to_string(bits) + (granularity == Granularity::per_tensor ? " tensor " : " channel ") +
           (frozen ? "static " : "frame ") + (calibration == CalibrationMethod::mse ? "mse" : "minmax");
  }
  CodecConfig config(bool zstd) const {
    CodecConfig c;
    c.bits = bits;
    c.granularity = granularity;
    c.calibration.method = calibration;
    c.lossless = zstd ? wire::Lossless::zstd : wire::Lossless::none;
    return c;
  }
};

struct Row {
  std::string what;  ///< "split1", "split2", "input", "input-finetuned", "split1-finetuned", ...
  std::string method;
  std::size_t batch = 1, elements = 0;  ///< samples per frame; elements per sample
  double accuracy = 0, bytes = 0, bytes_zstd = 0;  ///< bytes: whole frames, per sample
  double bits_per_element(bool zstd) const { return 8 * (zstd ? bytes_zstd : bytes) / static_cast<double>(elements); }
};

Row row(std::string method, TensorView<const float> x, std::size_t batch, const FrameBytes& sent) {
  Row r;
  r.method = std::move(method);
  r.batch = batch;
  r.elements = x.shape().features();
  r.bytes = sent.per_sample(false);
  r.bytes_zstd = sent.per_sample(true);
  return r;
}

/// Sends `x` (samples in rows) through the codec of `m`, `batch` samples per frame, and back:
/// the decoded features in `out`, the mean frame bytes per sample without and with zstd in the row.
Row transmit(const Method& m, TensorView<const float> x, std::size_t batch, TensorView<const float> calibration,
             Tensor<float>& out) {
  FeatureCodec plain(m.config(false)), packed(m.config(true));
  if (m.frozen) packed.set_params(plain.calibrate(calibration));
  return row(m.name(), x, batch, send_frames(std::span(&plain, 1), std::span(&packed, 1), {}, std::span(&x, 1), batch,
                                             std::nullopt, out));
}

/// The image itself at `bits` per pixel, in TENSOR frames (see edgesplit_examples::send_images).
Row send_images(int bits, TensorView<const float> x, std::size_t batch, Tensor<float>& out) {
  return row(std::to_string(bits) + "-bit image", x, batch,
             edgesplit_examples::send_images(bits, x, batch, std::nullopt, out));
}

Dataset<float> with_inputs(Tensor<float> x, const Dataset<float>& like) {
  Dataset<float> d;
  d.inputs = std::move(x);
  d.labels = like.labels;
  d.classes = like.classes;
  return d;
}

void print(const Row& r, double reference) {
  std::printf("%-18s %-26s %5zu  %6.2f%%  %+6.2f  %9.1f  %9.1f  %6.2f  %6.2f\n", r.what.c_str(), r.method.c_str(), r.batch,
              r.accuracy, r.accuracy - reference, r.bytes, r.bytes_zstd, r.bits_per_element(false),
              r.bits_per_element(true));
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse(argc, argv);
    if (!fashion_mnist_available(a.data)) {
      std::printf("Fashion-MNIST not found in %s (Debian package dataset-fashion-mnist): skipped\n", a.data.c_str());
      return 77;
    }
    auto [train, test] = load_fashion_mnist<float>(a.data);
    if (a.train_subset && a.train_subset < train.size()) train = train.slice(0, a.train_subset);
    if (a.limit < test.size()) test = test.slice(0, a.limit);
    auto model = load_or_train(a, train);
    const auto x_test = test.inputs.cview();
    const double float_acc = accuracy(model, x_test, test.labels);
    const std::size_t calib_n = std::min<std::size_t>(train.size(), 2000);
    const auto x_calib = train.inputs.batch(0, calib_n);
    std::printf("float model: %.2f%% on %zu test images\n", float_acc, test.size());

    auto edge = quantize_model(model, x_calib);
    const double edge_acc = accuracy(edge, x_test, test.labels);
    std::printf("int8 edge inference (quantize_model, calibrated on %zu training images): %.2f%% (%+.2f points)\n\n",
                calib_n, edge_acc, edge_acc - float_acc);

    std::printf("%-18s %-26s %5s  %7s  %6s  %9s  %9s  %6s  %6s\n", "what", "method", "batch", "acc", "delta", "B/sample",
                "+zstd", "bit/el", "+zstd");
    std::vector<Row> rows;
    const std::vector<std::size_t> batches{1, a.batch};
    Tensor<float> decoded;
    bool ok = true;
    // Runs `m` on the decoded features of `r`, prints and keeps the row.
    const std::vector<std::int32_t>& labels = test.labels;  // clang 14 cannot capture a structured binding
    auto record = [&](Row r, const std::string& what, Sequential<float>& m) {
      r.what = what;
      r.accuracy = accuracy(m, decoded.cview(), labels);
      print(r, float_acc);
      rows.push_back(r);
      return r;
    };

    // The naive baseline: the image itself, at 8, 4, 2 and 1 bits per pixel.
    for (int bits : {8, 4, 2, 1})
      for (std::size_t batch : batches) {
        record(send_images(bits, x_test, batch, decoded), "input", model);
      }

    // Split after each hidden ReLU.
    std::vector<std::size_t> cuts;
    for (std::size_t k = 0; k + 1 < model.size(); ++k)
      if (model[k].name() == "ReLU") cuts.push_back(k + 1);
    std::vector<Method> methods{Method{}};
    for (int bits : {8, 4, 2})
      for (auto g : {Granularity::per_tensor, Granularity::per_channel})
        for (bool frozen : {false, true})
          for (auto c : {CalibrationMethod::min_max, CalibrationMethod::mse}) methods.push_back({bits, g, frozen, c});

    struct Tuned {
      std::string what;
      Sequential<float> head, tail;
    };
    std::vector<Tuned> parts;
    for (std::size_t s = 0; s < cuts.size(); ++s) {
      auto [head, tail] = model.split(cuts[s]);
      const std::string what = "split" + std::to_string(s + 1);
      const Tensor<float> f_test = run(head, x_test), f_calib = run(head, x_calib);
      for (const Method& m : methods)
        for (std::size_t batch : batches) {
          const Row r = record(transmit(m, f_test.cview(), batch, f_calib.cview(), decoded), what, tail);
          if (a.max_int8_loss >= 0 && m.bits == 8 && m.granularity == Granularity::per_tensor &&
              float_acc - r.accuracy > a.max_int8_loss) {
            std::printf("CHECK FAILED: %s %s loses more than %.2f points\n", what.c_str(), r.method.c_str(), a.max_int8_loss);
            ok = false;
          }
        }
      parts.push_back({what, std::move(head), std::move(tail)});
    }

    // Fine-tuning on what the receiver sees: the tail on dequantized int2 features (head frozen),
    // the whole model on reduced-depth images.
    if (a.finetune_epochs > 0) {
      std::printf("\nfine-tuned (%zu epochs, Adam 3e-4, cosine, on the %zu training images as decoded):\n",
                  a.finetune_epochs, train.size());
      const std::vector<Method> tuned_methods{{2, Granularity::per_tensor, true, CalibrationMethod::min_max},
                                              {2, Granularity::per_tensor, true, CalibrationMethod::mse}};
      for (auto& p : parts) {
        const Tensor<float> f_train = run(p.head, train.inputs.cview()), f_test = run(p.head, x_test);
        const Tensor<float> f_calib = run(p.head, x_calib);
        for (const Method& m : tuned_methods) {
          Tensor<float> train_decoded;
          transmit(m, f_train.cview(), 1, f_calib.cview(), train_decoded);
          auto tail = p.tail.split(0).second;
          fit(tail, with_inputs(std::move(train_decoded), train), a.finetune_epochs, 3e-4, 7);
          for (std::size_t batch : batches) {
            record(transmit(m, f_test.cview(), batch, f_calib.cview(), decoded), p.what + "-tuned", tail);
          }
        }
      }
      for (int bits : {4, 2, 1}) {
        Tensor<float> train_decoded;
        send_images(bits, train.inputs.cview(), 1, train_decoded);
        auto tuned = model.split(0).second;
        fit(tuned, with_inputs(std::move(train_decoded), train), a.finetune_epochs, 3e-4, 7);
        for (std::size_t batch : batches) {
          record(send_images(bits, x_test, batch, decoded), "input-tuned", tuned);
        }
      }
    }

    if (!a.csv.empty()) {
      std::ofstream out(a.csv);
      out << "what,method,batch,accuracy,bytes,bytes_zstd,bits_per_element,bits_per_element_zstd\n";
      for (const Row& r : rows)
        out << r.what << ',' << r.method << ',' << r.batch << ',' << r.accuracy << ',' << r.bytes << ',' << r.bytes_zstd
            << ',' << r.bits_per_element(false) << ',' << r.bits_per_element(true) << '\n';
      out << "float,fp32 model,0," << float_acc << ",0,0,0,0\n";
      out << "edge-int8,quantize_model,0," << edge_acc << ",0,0,0,0\n";
      if (!out) fail(errc::io_error, "cannot write " + a.csv.string());
    }
    if (a.max_edge_int8_loss >= 0 && float_acc - edge_acc > a.max_edge_int8_loss) {
      std::printf("CHECK FAILED: int8 edge inference loses more than %.2f points\n", a.max_edge_int8_loss);
      ok = false;
    }
    return ok ? 0 : 1;
  } catch (const error& e) {
    std::fprintf(stderr, "compression_study: %s\n", e.what());
    return e.code() == errc::invalid_argument ? 2 : 1;
  }
}
