// plan_cnn_split: the graph planner (minimum cut) for the Fashion-MNIST CNN of fmnist_cnn.hpp,
// checked against ground truth on the simulated Wi-Fi, LTE and 3G links.
//
// 1. Trains (or loads, from the cache split_demo --model cnn also uses) the CNN.
// 2. Profiles every node on this machine (the cloud) and derives edge boards from it, scaled
//    and labelled as scaled: by each --slowdown factor with the edge's compute measured in the
//    ground truth (this machine's time x factor), and by each --emulate factor with the head
//    charged from the scaled profile (an emulated board, for factors so large that this
//    machine's timing noise, multiplied, would swamp the comparison; the client's encoding is
//    then charged at this machine's speed).
// 3. For each codec (fp32, int8: every crossing tensor quantized with its own range) and link:
//    plans with plan_graph_cut, then runs every candidate cut of the graph (a frontier of its
//    node order; a cut inside the residual block crosses two tensors) end to end through the
//    runtime (EdgeClient, the server's request handler and batcher) over a SimulatedLink on a
//    virtual clock, with measure_graph_cut, and prints each cut's predicted and measured
//    latency, the planner's pick and the best measured cut.
//
//   plan_cnn_split [--slowdown 8] [--emulate 100,1000] [--requests 15] [--epochs 15] [--train-subset N] [--cache FILE] [--data DIR]
//
// (--train-subset trains a fresh CNN on the first N training images only: for a quick run, as
// the latencies do not depend on the weights.)
//
// Exit status: 0 when every pick is within 5% of the best measured cut, 3 when one is not, 2 on
// bad arguments, 77 when the data set is missing, 1 otherwise.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include <edgesplit/edgesplit.hpp>
#include <edgesplit/eval/ground_truth.hpp>
#include <edgesplit/io/idx.hpp>
#include <edgesplit/plan/candidates.hpp>
#include <edgesplit/plan/graph_planner.hpp>
#include <edgesplit/plan/graph_profile.hpp>

#include "cli.hpp"
#include "fmnist_main.hpp"
#include "fmnist_cnn.hpp"

using namespace edgesplit;

namespace {

struct Args {
  std::vector<double> slowdowns{8};
  std::vector<double> emulated{100, 1000};
  std::size_t requests = 15, epochs = 15, train_subset = 0;
  std::filesystem::path cache = "fmnist-cnn.safetensors";
  std::filesystem::path data = fashion_mnist_dir;
};

Args parse(int argc, char** argv) {
  Args a;
  cli::options(argc, argv, [&](std::string_view k, std::string_view v) {
    if (k == "--slowdown" || k == "--emulate") {
      auto& list = k == "--slowdown" ? a.slowdowns : a.emulated;
      list.clear();
      if (v != "none") list = cli::numbers(v, k, 0.01, 1e6);
    }
    else if (k == "--requests") a.requests = cli::number<std::size_t>(v, k, 1, 10000);
    else if (k == "--epochs") a.epochs = cli::number<std::size_t>(v, k, 1, 200);
    else if (k == "--train-subset") a.train_subset = cli::number<std::size_t>(v, k, 1, 60000);
    else if (k == "--cache") a.cache = std::string(v);
    else if (k == "--data") a.data = std::string(v);
    else fail(errc::invalid_argument, "unknown option " + std::string(k));
  });
  return a;
}

std::string times(double f) {
  char b[32];
  std::snprintf(b, sizeof b, "x%g", f);
  return b;
}

std::string joined(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : "+") + n;
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  return edgesplit_examples::fmnist_main("plan_cnn_split", argc, argv, parse, [&](Args& a) {
    bool all_hold = true;
    auto [train, test] = load_fashion_mnist<float>(a.data);
    if (a.train_subset && a.train_subset < train.size()) train = train.slice(0, a.train_subset);
    Graph<float> model = edgesplit_examples::fmnist_cnn(a.cache, a.epochs, edgesplit_examples::as_images(std::move(train)),
                                                        edgesplit_examples::as_images(test));
    model.set_training(false);
    const Dataset<float> images = edgesplit_examples::as_images(test.slice(0, 64));

    ProfileOptions po;
    po.runs = 51;
    po.device = "this machine (cloud)";
    const DeviceProfile cloud = profile_graph(model, po);
    const std::vector<CutInfo> cuts = model.candidate_cuts();
    std::printf("CNN: %zu nodes, %zu candidate cuts, %.2f MFLOPs per image; this machine runs it in %.3f ms\n\n",
                model.node_count(), cuts.size(), static_cast<double>(model.flops(1)) / 1e6,
                1e3 * cloud.seconds(0, model.node_count(), 1));

    // The RESPONSE frame of one sample (10 fp32 logits), which every plan that sends pays.
    CodecConfig rc;
    rc.bits = wire::raw_f32_bits;
    FeatureCodec resp_codec(rc);
    std::vector<std::byte> reply;
    wire::encode_response(reply, 1, wire::InferResponse{}, resp_codec,
                          model.predict(images.inputs.cview().batch(0, 1)).cview());
    GraphPlanRequest req;
    req.response_bytes_per_sample = static_cast<double>(reply.size());

    struct Board {
      std::string label;
      DeviceProfile profile;
      bool emulated;
      double factor;
    };
    std::vector<Board> boards;
    for (double f : a.slowdowns) boards.push_back({"measured " + times(f), scaled(cloud, f, "this machine " + times(f)), false, f});
    for (double f : a.emulated) boards.push_back({"emulated " + times(f), scaled(cloud, f, "this machine " + times(f)), true, f});
    const std::vector<CodecSpec> specs = standard_codecs(false);
    for (const Board& board : boards)
    for (const char* codec : {"fp32", "int8"}) {
      const DeviceProfile& edge = board.profile;
      GroundTruthOptions gt;
      gt.requests = a.requests;
      gt.warmup = 2;
      gt.model_id = "fmnist-cnn";
      gt.edge_slowdown = board.emulated ? 1 : board.factor;
      gt.edge_profile = board.emulated ? &edge : nullptr;
      const CodecSpec& spec = *std::find_if(specs.begin(), specs.end(), [&](const CodecSpec& s) { return s.name == codec; });
      req.codec.name = codec;
      req.codec.bytes_per_element = spec.name == "fp32" ? 4 : 1;
      for (const LinkProfile& link : LinkProfile::presets()) {
        const LinkModel lm = link_model(link);
        const GraphPlan pick = plan_graph_cut(model, edge, cloud, lm, req);
        std::printf("%s, %s (%.2f Mbit/s, RTT %.0f ms), edge %s (all-edge %.2f ms):\n", codec, link.name.c_str(),
                    link.bandwidth_bps / 1e6, 1e3 * lm.rtt_s, board.label.c_str(),
                    1e3 * edge.seconds(0, model.node_count(), 1));
        std::printf("  %3s  %-28s %9s %12s %12s\n", "k", "cut", "bytes", "predicted ms", "measured ms");
        double best = std::numeric_limits<double>::infinity();
        std::size_t best_k = 0;
        std::vector<double> measured;
        for (std::size_t k = 0; k < cuts.size(); ++k) {
          const Measured m = measure_graph_cut(model, cuts[k].tensors, spec, images.inputs.cview(), link, link, gt);
          std::vector<std::size_t> head(cuts[k].head_nodes);
          for (std::size_t i = 0; i < head.size(); ++i) head[i] = i;
          const GraphPlan p = evaluate_graph_cut(model, edge, cloud, lm, head, req);
          const bool all_edge = k + 1 == cuts.size();
          std::printf("  %3zu  %-28s %9.0f %12.2f %12.2f%s\n", k, all_edge ? "all-edge" : joined(cuts[k].tensors).c_str(),
                      m.bytes, 1e3 * p.latency_s, 1e3 * m.latency_s,
                      pick.frontier && *pick.frontier == k ? "   <- pick" : "");
          measured.push_back(m.latency_s);
          if (m.latency_s < best) best = m.latency_s, best_k = k;
        }
        double got = 0;
        if (pick.frontier) {
          got = measured[*pick.frontier];
        } else {  // a head that is no frontier: measure it too
          got = measure_graph_cut(model, pick.cut, spec, images.inputs.cview(), link, link, gt).latency_s;
          std::printf("  pick off the frontiers: %s, measured %.2f ms\n", joined(pick.cut).c_str(), 1e3 * got);
        }
        const bool holds = got <= 1.05 * best;
        all_hold = all_hold && holds;
        std::printf("  pick %s: predicted %.2f ms, measured %.2f ms; best measured k=%zu %.2f ms; pick/best %.3f %s\n\n",
                    pick.all_edge ? "all-edge" : joined(pick.cut).c_str(), 1e3 * pick.latency_s, 1e3 * got, best_k,
                    1e3 * best, got / best, holds ? "(within 5%)" : "(NOT within 5%)");
      }
    }
    std::printf(all_hold ? "every pick within 5%% of the best measured cut\n"
                         : "a pick is NOT within 5%% of the best measured cut\n");
    return all_hold ? 0 : 3;
  });
}
