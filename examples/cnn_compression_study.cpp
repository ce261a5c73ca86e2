// cnn_compression_study: rate and accuracy of split inference for the Fashion-MNIST CNN at every
// candidate cut (docs/compression.md, "CNN cuts"; compression_study does the same for the MLP).
//
// For every candidate cut of the CNN of fmnist_cnn.hpp (Graph::candidate_cuts: the frontier after
// k nodes, k = 0 .. all; none skipped) it runs the head on the test images and sends the cut's
// tensors as EdgeClient does: one FeatureCodec per tensor, per tensor, min-max calibrated on each
// frame, in an INFER frame for one tensor and an INFER_TENSORS frame for several; fp32, int8, int4
// and int2, without and with zstd; one sample per frame and --batch samples per frame. Each frame
// is decoded as the cloud decodes it (the zstd frame must give the same floats as the plain one)
// and the tail runs on the decoded rows: test accuracy and whole-frame bytes per sample. Beside it
// the baseline that sends the image itself (uint8 through zstd, and at 4, 2 and 1 bits per pixel),
// in the same INFER frames, with the CNN's accuracy on the images as received. Last, per cut: its
// cheapest codec within 1 point of fp32 against the lossless image through zstd.
//
//   cnn_compression_study [--cache FILE] [--epochs N] [--train-subset N] [--limit N] [--batch N]
//                         [--csv FILE] [--data DIR] [--max-int8-loss P]
//
// The CNN is loaded from --cache (default fmnist-cnn.safetensors), or trained for --epochs (15) on
// the training images (the first --train-subset of them) and saved there. --limit evaluates on the
// first N test images (all 10,000 by default). --max-int8-loss fails the run (exit 1) when int8
// features lose more than P points against the float model at any cut.
//
// Exit status: 0 on success, 1 when a check fails, 2 on bad arguments, 77 without the data set.
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
  std::size_t epochs = 15, train_subset = 0, limit = 10000, batch = 100;
  double max_int8_loss = -1;
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
    else if (k == "--epochs") a.epochs = cli::number<std::size_t>(v, k, 1, 200);
    else if (k == "--train-subset") a.train_subset = cli::number<std::size_t>(v, k, 0, 60000);
    else if (k == "--limit") a.limit = cli::number<std::size_t>(v, k, 1, 10000);
    else if (k == "--batch") a.batch = cli::number<std::size_t>(v, k, 2, 1000);
    else if (k == "--max-int8-loss") a.max_int8_loss = cli::number(v, k, 0.0, 100.0);
    else fail(errc::invalid_argument, "unknown option " + k);
  }
  return a;
}

constexpr std::array<int, 4> codec_bits{32, 8, 4, 2};

std::string codec_name(int bits) { return bits == 32 ? "fp32" : "int" + std::to_string(bits); }

/// Test accuracy and bytes of one way of sending, at one and at many samples per frame.
struct Measured {
  std::array<std::size_t, 2> hits{};
  std::array<FrameBytes, 2> sent{};
};

/// One row of the table: a cut (or the image) sent one way.
struct Row {
  std::string what;     ///< "k=5" or "image"
  std::string after;    ///< the last node the edge runs ("-" for none)
  std::string tensors;  ///< the tensors that cross, with their per-sample shapes
  std::size_t elements = 0;  ///< per sample, over all tensors
  double edge_mflops = 0;    ///< the head's work per sample
  std::string codec;
  std::array<double, 2> accuracy{};  ///< one sample per frame, many
  std::array<FrameBytes, 2> sent{};
};

/// The per-frame codecs EdgeClient would use for `parts` tensors at `bits`, without and with zstd.
std::array<std::vector<FeatureCodec>, 2> codecs_for(int bits, std::size_t parts) {
  std::array<std::vector<FeatureCodec>, 2> c;
  CodecConfig cfg;
  cfg.bits = bits;
  for (auto lossless : {wire::Lossless::none, wire::Lossless::zstd}) {
    cfg.lossless = lossless;
    for (std::size_t t = 0; t < parts; ++t) c[lossless == wire::Lossless::zstd].emplace_back(cfg);
  }
  return c;
}

void print_header(std::size_t batch) {
  const std::string acc = "acc/" + std::to_string(batch), bytes = "bytes/" + std::to_string(batch);
  std::printf("%-5s %-14s %-6s %8s %7s %10s %9s   %8s %7s %9s %9s\n", "cut", "after", "codec", "acc/1", "delta",
              "bytes/1", "+zstd", acc.c_str(), "delta", bytes.c_str(), "+zstd");
}

void print(const Row& r, double reference) {
  std::printf("%-5s %-14s %-6s %7.2f%% %+7.2f %10.1f %9.1f   %7.2f%% %+7.2f %9.1f %9.1f\n", r.what.c_str(),
              r.after.c_str(), r.codec.c_str(), r.accuracy[0], r.accuracy[0] - reference, r.sent[0].per_sample(false),
              r.sent[0].per_sample(true), r.accuracy[1], r.accuracy[1] - reference, r.sent[1].per_sample(false),
              r.sent[1].per_sample(true));
  std::fflush(stdout);
}

/// "pool1 32x14x14 block.relu1 32x14x14": the tensors and their per-sample shapes (no commas, for the CSV).
std::string describe_tensors(const Graph<float>& g, const std::vector<std::string>& names) {
  std::string s;
  for (const auto& name : names) {
    if (!s.empty()) s += ' ';
    s += name;
    char sep = ' ';
    for (std::size_t d : g.sample_shape(name).dims()) {
      s += sep;
      s += std::to_string(d);
      sep = 'x';
    }
  }
  return s;
}

/// The cheapest way of sending among `rows` (one cut's, or the image's) within `tolerance` points of
/// the first row (fp32, or the lossless image), at frame size `f` (0: one sample per frame, 1:
/// many): the row, whether with zstd, the bytes.
struct Best {
  const Row* row = nullptr;
  bool zstd = false;
  double bytes = 0;
};
Best cheapest(const std::vector<Row>& rows, std::size_t f, double tolerance) {
  const double floor = rows.front().accuracy[f] - tolerance;
  Best best;
  for (const Row& r : rows)
    if (r.accuracy[f] >= floor)
      for (bool z : {false, true})
        if (!best.row || r.sent[f].per_sample(z) < best.bytes) best = {&r, z, r.sent[f].per_sample(z)};
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse(argc, argv);
    if (!fashion_mnist_available(a.data)) {
      std::printf("Fashion-MNIST not found in %s (Debian package dataset-fashion-mnist): skipped\n", a.data.c_str());
      return 77;
    }
    auto loaded = load_fashion_mnist<float>(a.data);
    Dataset<float> train = as_images(std::move(loaded.first)), test = as_images(std::move(loaded.second));
    if (a.train_subset && a.train_subset < train.size()) train = train.slice(0, a.train_subset);
    if (a.limit < test.size()) test = test.slice(0, a.limit);
    Graph<float> model = fmnist_cnn(a.cache, a.epochs, train, test);
    model.set_training(false);
    const std::size_t n = test.size();
    const TensorView<const float> images = test.inputs.cview();
    const std::vector<std::int32_t>& labels = test.labels;
    Sequential<float> whole = as_sequential(model);
    const double float_acc = accuracy(whole, images, labels);
    std::printf("float model: %.2f%% on %zu test images; %zu parameters, %.2f MFLOPs per image\n", float_acc, n,
                model.parameter_count(), static_cast<double>(model.flops(1)) / 1e6);
    std::printf("frames: INFER (one tensor) or INFER_TENSORS (several), model id \"fmnist-cnn\", one FeatureCodec per "
                "tensor,\n        per tensor, min-max calibrated on each frame; bytes are whole frames per sample, at 1 "
                "and %zu samples per frame\n\n",
                a.batch);

    const std::array<std::size_t, 2> frame_sizes{1, a.batch};
    std::vector<Row> rows;
    Tensor<float> decoded;
    bool ok = true;
    print_header(a.batch);

    // The baseline: the image itself, at 8 (lossless), 4, 2 and 1 bits per pixel.
    std::vector<Row> image_rows;
    const wire::InferRequest image_request{"fmnist-cnn", 0, 0};
    for (int bits : {8, 4, 2, 1}) {
      Row r{"image", "-", describe_tensors(model, model.input_names()), images.shape().features(), 0,
            std::to_string(bits) + "-bit", {}, {}};
      for (std::size_t f = 0; f < 2; ++f) {
        r.sent[f] = send_images(bits, images, frame_sizes[f], image_request, decoded);
        r.accuracy[f] = accuracy(whole, decoded.cview(), labels);
      }
      print(r, float_acc);
      image_rows.push_back(r);
    }
    rows.insert(rows.end(), image_rows.begin(), image_rows.end());

    // Every candidate cut, each way of sending.
    const std::vector<CutInfo> cuts = model.candidate_cuts();
    std::printf("\n%zu candidate cuts, all measured (cuts of equal size are kept: their tensors differ)\n", cuts.size());
    std::vector<std::vector<Row>> per_cut;
    for (const CutInfo& cut : cuts) {
      const std::size_t k = cut.head_nodes;
      auto [head, tail_graph] = model.cut(cut.tensors);
      Sequential<float> tail = as_sequential(std::move(tail_graph));
      const wire::InferRequest request{"fmnist-cnn", static_cast<std::uint16_t>(k), 0};
      std::vector<Measured> m(codec_bits.size());
      std::vector<std::array<std::vector<FeatureCodec>, 2>> codecs;
      for (int bits : codec_bits) codecs.push_back(codecs_for(bits, cut.tensors.size()));
      std::vector<TensorView<const float>> parts(cut.tensors.size());
      for (std::size_t b = 0; b < n; b += a.batch) {
        const std::size_t e = std::min(n, b + a.batch);
        const TensorView<const float> x = images.batch(b, e);
        head.forward(std::span(&x, 1));
        for (std::size_t t = 0; t < parts.size(); ++t) parts[t] = head.result(t);
        for (std::size_t c = 0; c < codec_bits.size(); ++c)
          for (std::size_t f = 0; f < 2; ++f) {
            m[c].sent[f] += send_frames(codecs[c][0], codecs[c][1], cut.tensors, parts, frame_sizes[f], request, decoded);
            m[c].hits[f] += top1_hits(tail.forward(decoded.cview()), labels.data() + b);
          }
      }
      std::vector<Row> cut_rows;
      for (std::size_t c = 0; c < codec_bits.size(); ++c) {
        Row r{"k=" + std::to_string(k), k ? model.node_output(k - 1) : "-", describe_tensors(model, cut.tensors),
              cut.bytes / sizeof(float), static_cast<double>(cut.head_flops) / 1e6, codec_name(codec_bits[c]), {},
              m[c].sent};
        for (std::size_t f = 0; f < 2; ++f)
          r.accuracy[f] = 100.0 * static_cast<double>(m[c].hits[f]) / static_cast<double>(n);
        print(r, float_acc);
        if (a.max_int8_loss >= 0 && codec_bits[c] == 8)
          for (std::size_t f = 0; f < 2; ++f)
            if (float_acc - r.accuracy[f] > a.max_int8_loss) {
              std::printf("CHECK FAILED: cut k=%zu, int8 at %zu per frame loses more than %.2f points\n", k,
                          frame_sizes[f], a.max_int8_loss);
              ok = false;
            }
        cut_rows.push_back(r);
      }
      std::printf("      sends %s: %zu elements per sample\n", cut_rows[0].tensors.c_str(), cut_rows[0].elements);
      rows.insert(rows.end(), cut_rows.begin(), cut_rows.end());
      per_cut.push_back(std::move(cut_rows));
    }

    // Where the split wins: each cut's cheapest codec within 1 point of its fp32 row against the
    // lossless image through zstd, at the same frame size.
    std::printf("\nagainst the image (8-bit through zstd: %.1f bytes per sample at 1 per frame, %.1f at %zu): the "
                "cheapest codec within 1 point of fp32\n(of the 8-bit image for the image); ties: within 5 %% of the "
                "image's bytes\n",
                image_rows[0].sent[0].per_sample(true), image_rows[0].sent[1].per_sample(true), a.batch);
    std::printf("%-5s %-14s %8s %7s   %-12s %9s %7s %-11s   %-12s %9s %7s %-11s\n", "cut", "after", "elements",
                "edge MF", "1/frame", "bytes", "acc", "", (std::to_string(a.batch) + "/frame").c_str(), "bytes", "acc",
                "");
    // rows.front() is the reference: fp32 for a cut, the 8-bit image for the image
    auto summary = [&](const std::vector<Row>& ways) {
      std::printf("%-5s %-14s %8zu %7.2f", ways[0].what.c_str(), ways[0].after.c_str(), ways[0].elements,
                  ways[0].edge_mflops);
      for (std::size_t f = 0; f < 2; ++f) {
        const Best best = cheapest(ways, f, 1.0);
        const double image = image_rows[0].sent[f].per_sample(true);
        const std::string how = best.row->codec + (best.zstd ? "+zstd" : "");
        const char* verdict = best.bytes < 0.95 * image ? "wins " : best.bytes > 1.05 * image ? "loses" : "ties ";
        const double ratio = best.bytes < image ? image / best.bytes : best.bytes / image;
        std::printf("   %-12s %9.1f %6.2f%% %s %4.1fx", how.c_str(), best.bytes, best.row->accuracy[f], verdict, ratio);
      }
      std::printf("\n");
    };
    summary(image_rows);
    for (const auto& cut_rows : per_cut) summary(cut_rows);

    if (!a.csv.empty()) {
      std::ofstream out(a.csv);
      out << "cut,after,tensors,elements,edge_mflops,codec,frame,accuracy,bytes,bytes_zstd\n";
      for (const Row& r : rows)
        for (std::size_t f = 0; f < 2; ++f)
          out << r.what << ',' << r.after << ',' << r.tensors << ',' << r.elements << ',' << r.edge_mflops << ','
              << r.codec << ',' << frame_sizes[f] << ',' << r.accuracy[f] << ',' << r.sent[f].per_sample(false) << ','
              << r.sent[f].per_sample(true) << '\n';
      out << "float,-,-,0,0,fp32 model,0," << float_acc << ",0,0\n";
      if (!out) fail(errc::io_error, "cannot write " + a.csv.string());
    }
    return ok ? 0 : 1;
  } catch (const error& e) {
    std::fprintf(stderr, "cnn_compression_study: %s\n", e.what());
    return e.code() == errc::invalid_argument ? 2 : 1;
  }
}
