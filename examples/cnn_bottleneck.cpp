// cnn_bottleneck: a trained bottleneck at a cut of the Fashion-MNIST CNN (BottleFit's first stage,
// docs/compression.md, "A trained bottleneck").
//
// The CNN of fmnist_cnn.hpp is cut at one tensor (--cut, default pool2 [32, 7, 7]; pool1
// [32, 14, 14] also cuts it in one tensor). insert_after splices in a small block there: an edge
// encoder (a convolution, 3x3 by default, --encoder-kernel 1 for 1x1, from the cut's channels down
// to C, then a sigmoid, so the code the edge sends lies in [0, 1] and quantizes evenly) and a cloud decoder (a 3x3 convolution back to
// the cut's channels, ReLU, a 1x1 convolution, ReLU: the cut's non-negative features again). The
// edge then runs the CNN's head and the encoder and sends the code, C channels instead of 32.
//
// Stage 1, distillation: only the block trains (head and tail frozen: their parameters are not
// given to the optimizer), to reproduce the head's features, mean squared error of
// decoder(encoder(head(x))) against head(x) on the training images (Adam 2e-3). Stage 2: the block
// and the tail fine-tune on cross-entropy (Adam --finetune-lr, default 1e-3), the head still frozen
// (the edge keeps the CNN's weights), or with --train-head 1 the whole model. Cosine schedules,
// batch 128, both stages.
//
// Then, on the test images, through the real wire path: the code in INFER frames, one FeatureCodec,
// per tensor, min-max calibrated on each frame, fp32, int8, int4 and int2, without and with zstd,
// one sample per frame and --batch per frame; each frame decoded as the cloud decodes it, and the
// decoder and tail run on it. Beside it: the CNN in float, the original cut through the same
// codecs, and the image itself, uint8 through zstd (rate_study.hpp's send_images). Bytes are whole
// frames; bits per element divide by the ORIGINAL cut's elements, so the rows compare directly.
// Last, the configurations that meet all three goals: within 1 point of the float CNN, fewer bytes
// per single-sample request than the image through zstd, at most 1 bit per element of the
// original cut at --batch samples per frame.
//
//   cnn_bottleneck [--cache FILE] [--epochs N] [--cut NAME] [--channels LIST] [--distill-epochs N]
//                  [--finetune-epochs N] [--finetune-lr R] [--train-head 0|1] [--encoder-kernel K]
//                  [--subset N] [--limit N] [--batch N] [--seed N] [--csv FILE] [--data DIR]
//
// The CNN is loaded from --cache (default fmnist-cnn.safetensors), or trained for --epochs (15) and
// saved there (about 15 minutes on two cores). --channels lists the code widths C to try
// (default 2,4,8). --subset trains (the CNN when it is not cached, and both stages) on the first N
// training images; --limit measures on the first N test images (all 10,000 by default).
//
// Exit status: 0 on success, 1 on an error, 2 on bad arguments, 77 without the data set.
#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <edgesplit/edgesplit.hpp>
#include <edgesplit/io/idx.hpp>
#include <edgesplit/wire/feature_codec.hpp>
#include <edgesplit/wire/protocol.hpp>
#include "cli.hpp"
#include "fmnist_cnn.hpp"
#include "rate_study.hpp"

using namespace edgesplit;
using namespace edgesplit_examples;
namespace fs = std::filesystem;

namespace {

struct Args {
  fs::path cache = "fmnist-cnn.safetensors", csv, data = fashion_mnist_dir;
  std::string cut = "pool2";
  std::vector<std::size_t> channels{2, 4, 8};
  std::size_t epochs = 15, distill_epochs = 3, finetune_epochs = 3, subset = 0, limit = 10000, batch = 100;
  std::size_t encoder_kernel = 3;
  double finetune_lr = 1e-3;
  bool train_head = false;
  std::uint64_t seed = 1;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (i + 1 >= argc) fail(errc::invalid_argument, "option " + k + " needs a value");
    const std::string_view v = argv[++i];
    if (k == "--cache") a.cache = std::string(v);
    else if (k == "--csv") a.csv = std::string(v);
    else if (k == "--data") a.data = std::string(v);
    else if (k == "--cut") a.cut = std::string(v);
    else if (k == "--channels") a.channels = cli::numbers<std::size_t>(v, k, 1, 64);
    else if (k == "--epochs") a.epochs = cli::number<std::size_t>(v, k, 1, 200);
    else if (k == "--distill-epochs") a.distill_epochs = cli::number<std::size_t>(v, k, 1, 200);
    else if (k == "--finetune-epochs") a.finetune_epochs = cli::number<std::size_t>(v, k, 0, 200);
    else if (k == "--subset") a.subset = cli::number<std::size_t>(v, k, 0, 60000);
    else if (k == "--limit") a.limit = cli::number<std::size_t>(v, k, 1, 10000);
    else if (k == "--batch") a.batch = cli::number<std::size_t>(v, k, 2, 1000);
    else if (k == "--encoder-kernel") a.encoder_kernel = cli::number<std::size_t>(v, k, 1, 7);
    else if (k == "--finetune-lr") a.finetune_lr = cli::number(v, k, 1e-6, 1.0);
    else if (k == "--train-head") a.train_head = cli::number<int>(v, k, 0, 1) == 1;
    else if (k == "--seed") a.seed = cli::number<std::uint64_t>(v, k, 0, ~std::uint64_t{0});
    else fail(errc::invalid_argument, "unknown option " + k);
  }
  return a;
}

/// The block spliced in at the cut, for features of `sample` = [C0, H, W]: encoder (edge) and
/// decoder (cloud). Its tensors are named after the cut ("pool2.code" is what the edge sends).
Graph<float> bottleneck(const std::string& cut, const Shape& sample, std::size_t channels, std::size_t encoder_kernel,
                        Rng& rng) {
  const std::size_t c0 = sample[0], k = encoder_kernel;
  Conv2DOptions one, same, enc;
  same.padding = same_padding(3, 3);
  enc.padding = same_padding(k, k);
  Graph<float> b;
  b.input("features", sample);
  b.add(cut + ".encoder", {"features"}, std::make_unique<Conv2D<float>>(c0, channels, k, k, enc, rng));
  b.add(cut + ".code", {cut + ".encoder"}, std::make_unique<Sigmoid<float>>());
  b.add(cut + ".decoder", {cut + ".code"}, std::make_unique<Conv2D<float>>(channels, c0, 3, 3, same, rng));
  b.add(cut + ".decoder.relu", {cut + ".decoder"}, std::make_unique<ReLU<float>>());
  b.add(cut + ".decoder.mix", {cut + ".decoder.relu"}, std::make_unique<Conv2D<float>>(c0, c0, 1, 1, one, rng));
  b.add(cut + ".decoded", {cut + ".decoder.mix"}, std::make_unique<ReLU<float>>());
  b.output(cut + ".decoded");
  return b;
}

/// Stage 1: the block learns to give back the frozen head's features (mean squared error); only
/// its parameters reach the optimizer. The frozen tail scores the decoded features (accuracy).
class Distillation {
 public:
  Distillation(Graph<float>& head, Graph<float>& block, Graph<float>& tail) : head_(head), block_(block), tail_(tail) {}
  std::vector<Parameter<float>> parameters() { return block_.parameters(); }
  void zero_grad() { block_.zero_grad(); }
  void set_training(bool on) { block_.set_training(on); }  // head and tail stay in inference mode
  std::vector<std::string> output_names() const { return {"decoded"}; }

  double train_step(TensorView<const float> x, std::span<const std::int32_t>) {
    const TensorView<const float> f = features(x);
    const TensorView<const float> z = block_.forward(f);
    grad_.resize(z.shape());
    std::fill_n(grad_.data(), grad_.size(), 0.0f);
    const double loss = mse_loss(z, f, grad_.view());
    block_.backward(f, grad_.cview());
    return loss;
  }
  double evaluate(TensorView<const float> x, std::span<const std::int32_t> y, std::span<std::size_t> hits) {
    const TensorView<const float> f = features(x);
    const TensorView<const float> z = block_.forward(f);
    hits[0] += count_correct(tail_.forward(z), y);
    return mse_loss(z, f);
  }

 private:
  TensorView<const float> features(TensorView<const float> x) {
    const TensorView<const float> f = head_.forward(x);
    features_.resize(f.shape());
    copy(f, features_.view());
    return features_.cview();
  }
  Graph<float>&head_, &block_, &tail_;
  Tensor<float> features_, grad_;
};

/// Stage 2: everything after the frozen head (block and tail) trains on cross-entropy.
class FrozenHead {
 public:
  FrozenHead(Graph<float>& head, Graph<float>& rest) : head_(head), rest_(rest) {}
  std::vector<Parameter<float>> parameters() { return rest_.parameters(); }
  void zero_grad() { rest_.zero_grad(); }
  void set_training(bool on) { rest_.set_training(on); }
  std::vector<std::string> output_names() const { return {"model"}; }

  double train_step(TensorView<const float> x, std::span<const std::int32_t> y) {
    const TensorView<const float> f = features(x);
    const TensorView<const float> z = rest_.forward(f);
    grad_.resize(z.shape());
    std::fill_n(grad_.data(), grad_.size(), 0.0f);
    const double loss = softmax_cross_entropy(z, y, grad_.view());
    rest_.backward(f, grad_.cview());
    return loss;
  }
  double evaluate(TensorView<const float> x, std::span<const std::int32_t> y, std::span<std::size_t> hits) {
    const TensorView<const float> z = rest_.forward(features(x));
    hits[0] += count_correct(z, y);
    return softmax_cross_entropy(z, y);
  }

 private:
  TensorView<const float> features(TensorView<const float> x) {
    const TensorView<const float> f = head_.forward(x);
    features_.resize(f.shape());
    copy(f, features_.view());
    return features_.cview();
  }
  Graph<float>&head_, &rest_;
  Tensor<float> features_, grad_;
};

constexpr std::array<int, 4> codec_bits{32, 8, 4, 2};
std::string codec_name(int bits) { return bits == 32 ? "fp32" : "int" + std::to_string(bits); }

/// One way of sending: what crosses, the codec, accuracy and bytes at 1 and at --batch per frame.
struct Row {
  std::string what;  ///< "cut", "C=4" or "image"
  std::string codec;
  std::size_t elements = 0;  ///< per sample, of what crosses
  std::array<double, 2> accuracy{};
  std::array<FrameBytes, 2> sent{};
};

/// The edge graph's single output through every codec into the cloud graph, as EdgeClient sends it
/// (INFER frames), `frames[f]` samples per frame: one row per codec.
std::vector<Row> measure(const std::string& what, Graph<float>& edge, Graph<float> cloud_graph,
                         TensorView<const float> images, const std::vector<std::int32_t>& labels,
                         const std::array<std::size_t, 2>& frames, std::uint16_t split) {
  Sequential<float> cloud = as_sequential(std::move(cloud_graph));
  cloud.set_training(false);
  edge.set_training(false);
  const wire::InferRequest request{"fmnist-cnn", split, 0};
  const std::size_t n = images.shape().batch();
  std::vector<std::array<std::size_t, 2>> hits(codec_bits.size());
  std::vector<std::array<FrameBytes, 2>> sent(codec_bits.size());
  std::vector<std::array<FeatureCodec, 2>> codecs;  // without and with zstd
  for (int bits : codec_bits) {
    CodecConfig cfg;
    cfg.bits = bits;
    CodecConfig z = cfg;
    z.lossless = wire::Lossless::zstd;
    codecs.push_back({FeatureCodec(cfg), FeatureCodec(z)});
  }
  Tensor<float> decoded;
  const std::size_t step = frames[1] * std::max<std::size_t>(1, 100 / frames[1]);  // whole frames per chunk
  for (std::size_t b = 0; b < n; b += step) {
    const std::size_t e = std::min(n, b + step);
    const TensorView<const float> code = edge.forward(images.batch(b, e));
    for (std::size_t c = 0; c < codec_bits.size(); ++c)
      for (std::size_t f = 0; f < 2; ++f) {
        sent[c][f] += send_frames(std::span(&codecs[c][0], 1), std::span(&codecs[c][1], 1), {}, std::span(&code, 1),
                                  frames[f], request, decoded);
        hits[c][f] += top1_hits(cloud.forward(decoded.cview()), labels.data() + b);
      }
  }
  std::vector<Row> rows;
  for (std::size_t c = 0; c < codec_bits.size(); ++c) {
    Row r{what, codec_name(codec_bits[c]), edge.sample_shape(edge.output_names()[0]).count(), {}, sent[c]};
    for (std::size_t f = 0; f < 2; ++f) r.accuracy[f] = 100.0 * static_cast<double>(hits[c][f]) / static_cast<double>(n);
    rows.push_back(r);
  }
  return rows;
}

void print_header(std::size_t batch) {
  const std::string acc = "acc/" + std::to_string(batch), bytes = "bytes/" + std::to_string(batch);
  std::printf("%-6s %-6s %6s %8s %7s %9s %8s   %8s %7s %9s %8s %7s %7s\n", "what", "codec", "elems", "acc/1", "delta",
              "bytes/1", "+zstd", acc.c_str(), "delta", bytes.c_str(), "+zstd", "bit/el", "+zstd");
}

/// bits per element of the original cut, `cut_elements` per sample
double bits_per_element(double bytes, std::size_t cut_elements) { return 8.0 * bytes / static_cast<double>(cut_elements); }

void print(const Row& r, double reference, std::size_t cut_elements) {
  std::printf("%-6s %-6s %6zu %7.2f%% %+7.2f %9.1f %8.1f   %7.2f%% %+7.2f %9.1f %8.1f %7.3f %7.3f\n", r.what.c_str(),
              r.codec.c_str(), r.elements, r.accuracy[0], r.accuracy[0] - reference, r.sent[0].per_sample(false),
              r.sent[0].per_sample(true), r.accuracy[1], r.accuracy[1] - reference, r.sent[1].per_sample(false),
              r.sent[1].per_sample(true), bits_per_element(r.sent[1].per_sample(false), cut_elements),
              bits_per_element(r.sent[1].per_sample(true), cut_elements));
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse(argc, argv);
    {  // the cut is checked on the architecture first, before any data or training
      const Graph<float> arch = fmnist_cnn_graph(fmnist_cnn_seed);
      if (!arch.contains(a.cut) || arch.sample_shape(a.cut).rank() != 3)
        fail(errc::invalid_argument, "--cut must name a [C, H, W] tensor of the CNN, got '" + a.cut + "'");
      (void)arch.cut({a.cut});  // errc::invalid_argument when the tensor alone does not cut the CNN
    }
    if (!fashion_mnist_available(a.data)) {
      std::printf("Fashion-MNIST not found in %s (Debian package dataset-fashion-mnist): skipped\n", a.data.c_str());
      return 77;
    }
    auto loaded = load_fashion_mnist<float>(a.data);
    Dataset<float> train = as_images(std::move(loaded.first)), test = as_images(std::move(loaded.second));
    if (a.subset && a.subset < train.size()) train = train.slice(0, a.subset);
    if (a.limit < test.size()) test = test.slice(0, a.limit);
    Graph<float> model = fmnist_cnn(a.cache, a.epochs, train, test);
    model.set_training(false);
    auto [head, tail] = model.cut({a.cut});
    const Shape cut_shape = model.sample_shape(a.cut);
    const std::size_t cut_elements = cut_shape.count(), n = test.size();
    const TensorView<const float> images = test.inputs.cview();
    const std::vector<std::int32_t>& labels = test.labels;
    const std::array<std::size_t, 2> frames{1, a.batch};

    Sequential<float> whole = as_sequential(model);
    const double float_acc = accuracy(whole, images, labels);
    std::printf("float CNN: %.2f%% on %zu test images; cut %s %s, %zu elements per sample; training on %zu images\n",
                float_acc, n, a.cut.c_str(), cut_shape.str().c_str(), cut_elements, train.size());
    std::printf("frames: INFER, model id \"fmnist-cnn\", one FeatureCodec, per tensor, min-max calibrated on each "
                "frame;\n        bytes are whole frames per sample at 1 and %zu samples per frame; bit/el = 8 x bytes "
                "per sample at %zu per frame / %zu (the original cut's elements)\n\n",
                a.batch, a.batch, cut_elements);

    print_header(a.batch);
    std::vector<Row> rows;
    Tensor<float> received;
    Row image{"image", "uint8", images.shape().features(), {}, {}};
    for (std::size_t f = 0; f < 2; ++f) {
      image.sent[f] = send_images(8, images, frames[f], wire::InferRequest{"fmnist-cnn", 0, 0}, received);
      image.accuracy[f] = accuracy(whole, received.cview(), labels);
    }
    print(image, float_acc, cut_elements);
    rows.push_back(image);
    const std::uint16_t split = static_cast<std::uint16_t>(head.node_count());
    for (Row& r : measure("cut", head, tail, images, labels, frames, split)) {
      print(r, float_acc, cut_elements);
      rows.push_back(r);
    }

    for (std::size_t channels : a.channels) {
      Rng rng(a.seed + channels);
      Graph<float> block = bottleneck(a.cut, cut_shape, channels, a.encoder_kernel, rng);
      const std::string code = a.cut + ".code";
      std::printf("\nC=%zu: code %s [%zu, %zu, %zu], %zu elements; encoder %.3f MFLOPs on the edge, decoder %.3f in "
                  "the cloud\n",
                  channels, code.c_str(), channels, cut_shape[1], cut_shape[2], channels * cut_shape[1] * cut_shape[2],
                  static_cast<double>(block.cut({code}).first.flops(1)) / 1e6,
                  static_cast<double>(block.cut({code}).second.flops(1)) / 1e6);
      TrainOptions to;
      to.seed = a.seed;
      to.schedule = LrSchedule::cosine();
      to.epochs = a.distill_epochs;
      std::printf("stage 1: the block distils the head's features (MSE), head and tail frozen, %zu epochs\n",
                  a.distill_epochs);
      {
        Distillation objective(head, block, tail);
        Adam<float> adam(2e-3);
        Trainer<float>(to).fit(objective, adam, train, &test);
      }
      Graph<float> bottlenecked = insert_after(model, a.cut, block);
      if (a.finetune_epochs > 0 && a.train_head) {
        std::printf("stage 2: the whole model fine-tunes on cross-entropy, %zu epochs\n", a.finetune_epochs);
        Classifier<float> objective(bottlenecked);
        Adam<float> adam(a.finetune_lr);
        to.epochs = a.finetune_epochs;
        Trainer<float>(to).fit(objective, adam, train, &test);
      } else if (a.finetune_epochs > 0) {
        std::printf("stage 2: block and tail fine-tune on cross-entropy, head frozen, %zu epochs\n", a.finetune_epochs);
        Graph<float> rest = bottlenecked.cut({a.cut}).second;
        FrozenHead objective(head, rest);
        Adam<float> adam(a.finetune_lr);
        to.epochs = a.finetune_epochs;
        Trainer<float>(to).fit(objective, adam, train, &test);
        Weights<float>(rest).apply_to(bottlenecked, /*partial*/ true);
      }
      bottlenecked.set_training(false);
      auto [edge, cloud] = bottlenecked.cut({code});
      print_header(a.batch);
      for (Row& r : measure("C=" + std::to_string(channels), edge, cloud, images, labels, frames,
                            static_cast<std::uint16_t>(edge.node_count()))) {
        print(r, float_acc, cut_elements);
        rows.push_back(r);
      }
    }

    // The goal: within 1 point of float, fewer bytes per single request than the image through
    // zstd, at most 1 bit per element of the original cut at --batch per frame.
    const double image_bytes = image.sent[0].per_sample(true);
    std::printf("\ngoal: accuracy >= %.2f%% (float - 1) at 1 and %zu per frame, < %.1f bytes per single request (the "
                "image through zstd),\n      <= 1 bit per element of %s at %zu per frame (<= %.1f bytes per sample)\n",
                float_acc - 1, a.batch, image_bytes, a.cut.c_str(), a.batch, cut_elements / 8.0);
    std::size_t met = 0;
    for (const Row& r : rows) {
      if (r.what == "image") continue;
      for (bool z : {false, true}) {
        const bool accurate = r.accuracy[0] >= float_acc - 1 && r.accuracy[1] >= float_acc - 1;
        const double single = r.sent[0].per_sample(z), bits = bits_per_element(r.sent[1].per_sample(z), cut_elements);
        if (accurate && single < image_bytes && bits <= 1.0) {
          std::printf("  met: %-6s %s%-5s %6.2f%% %6.2f%%  %7.1f bytes per request (%.1fx fewer)  %.3f bit/el\n",
                      r.what.c_str(), r.codec.c_str(), z ? "+zstd" : "", r.accuracy[0], r.accuracy[1], single,
                      image_bytes / single, bits);
          ++met;
        }
      }
    }
    if (met == 0) std::printf("  met by no configuration\n");

    if (!a.csv.empty()) {
      std::ofstream out(a.csv);
      out << "what,codec,elements,frame,accuracy,bytes,bytes_zstd,bits_per_cut_element,bits_per_cut_element_zstd\n";
      for (const Row& r : rows)
        for (std::size_t f = 0; f < 2; ++f)
          out << r.what << ',' << r.codec << ',' << r.elements << ',' << frames[f] << ',' << r.accuracy[f] << ','
              << r.sent[f].per_sample(false) << ',' << r.sent[f].per_sample(true) << ','
              << bits_per_element(r.sent[f].per_sample(false), cut_elements) << ','
              << bits_per_element(r.sent[f].per_sample(true), cut_elements) << '\n';
      out << "float,fp32,0,0," << float_acc << ",0,0,0,0\n";
      if (!out) fail(errc::io_error, "cannot write " + a.csv.string());
    }
    return 0;
  } catch (const error& e) {
    std::fprintf(stderr, "cnn_bottleneck: %s\n", e.what());
    return e.code() == errc::invalid_argument ? 2 : 1;
  }
}
