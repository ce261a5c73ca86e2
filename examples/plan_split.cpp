// plan_split: choose the split point and the codec for the Fashion-MNIST MLP from measurements,
// and check the choice against ground truth on the simulated Wi-Fi, LTE and 3G links.
//
// 1. Trains (or loads, from the cache split_demo also uses) the 784-256-128-10 MLP.
// 2. Profiles it on this machine (the cloud) and derives the edge board from that profile,
//    scaled and labelled as scaled: by each --slowdown factor with the edge's compute measured
//    in the ground truth (this machine's time x factor), and by each --emulate factor with the
//    edge's compute charged from the scaled profile and candidates (an emulated board: checks
//    the network, codec and cloud parts of the model, not the edge profile; for factors so
//    large that this machine's timing noise, multiplied, would swamp the comparison).
// 3. Measures every (split, codec) candidate on held-out test images: INFER frame bytes,
//    accuracy drop against float, encode and decode time.
// 4. For each link preset and edge board: plans, then runs every (split, codec) end to end
//    through the runtime (EdgeClient, the server's request handler and batcher) over a
//    SimulatedLink on a virtual clock (edge compute measured and scaled, network exact) and
//    prints a Neurosurgeon-style table: all-edge, all-cloud, the planner's pick, the best
//    measured, speedups, and whether the pick is within 5% of the best measured and its
//    predicted latency within 10% of measured.
// 5. With --sweep PREFIX: writes PREFIX-xF.dat, predicted latency against bandwidth for each
//    split point (best codec within the budget, RTT of --sweep-rtt-ms), and PREFIX-xF-measured.dat,
//    end-to-end measurements at a few bandwidths, for scripts/plot_planning.sh.
//
//   plan_split [--slowdown 8] [--emulate 2000,10000] [--budget 1.0] [--calib 2000] [--requests 15] [--epochs 4]
//              [--sweep PREFIX] [--sweep-rtt-ms 60] [--cache FILE] [--data DIR]
//
// Exit status: 0 when every claim holds, 3 when one does not, 2 on bad arguments, 77 when the
// data set is missing, 1 otherwise.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include <edgesplit/edgesplit.hpp>
#include <edgesplit/eval/ground_truth.hpp>
#include <edgesplit/io/idx.hpp>
#include <edgesplit/io/safetensors.hpp>
#include <edgesplit/plan/candidates.hpp>
#include <edgesplit/plan/planner.hpp>
#include <edgesplit/plan/profile.hpp>

#include "fmnist_mlp.hpp"
#include "cli.hpp"
#include "fmnist_main.hpp"

using namespace edgesplit;
using edgesplit_examples::fmnist_mlp;

namespace {

struct Args {
  std::vector<double> slowdowns{8};
  std::vector<double> emulated{2000, 10000};
  double budget = 1.0, sweep_rtt_ms = 60;
  std::size_t calib = 2000, requests = 15, epochs = 4;
  std::string sweep;
  std::filesystem::path cache = std::filesystem::temp_directory_path() / "edgesplit-split-demo-mlp.safetensors";
  std::filesystem::path data = fashion_mnist_dir;
};

Args parse(int argc, char** argv) {
  Args a;
  cli::options(argc, argv, [&](std::string_view k, std::string_view v) {
    if (k == "--slowdown" || k == "--emulate") {
      auto& list = k == "--slowdown" ? a.slowdowns : a.emulated;
      list.clear();
      if (v != "none") list = cli::numbers(v, k, 0.01, 1e6);
    } else if (k == "--budget") a.budget = cli::number(v, k, 0.0, 100.0);
    else if (k == "--calib") a.calib = cli::number<std::size_t>(v, k, 10, 10000);
    else if (k == "--requests") a.requests = cli::number<std::size_t>(v, k, 1, 10000);
    else if (k == "--epochs") a.epochs = cli::number<std::size_t>(v, k, 1, 200);
    else if (k == "--sweep") a.sweep = std::string(v);
    else if (k == "--sweep-rtt-ms") a.sweep_rtt_ms = cli::number(v, k, 0.0, 10000.0);
    else if (k == "--cache") a.cache = std::string(v);
    else if (k == "--data") a.data = std::string(v);
    else fail(errc::invalid_argument, "unknown option " + std::string(k));
  });
  return a;
}

std::string plan_name(std::size_t k, const std::string& codec, std::size_t L) {
  if (k == L) return "all-edge";
  return "k=" + std::to_string(k) + " " + codec;
}

// The best plan at split k (any codec within the budget; all-edge at k = L) under `link`.
const Plan* best_at(const std::vector<Plan>& plans, std::size_t k) {
  for (const Plan& p : plans)
    if (p.split == k) return &p;  // plans are ranked best first
  return nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  return edgesplit_examples::fmnist_main("plan_split", argc, argv, parse, [&](Args& a) {
    bool all_hold = true;
    auto [train, test] = load_fashion_mnist<float>(a.data);
    Sequential<float> model = fmnist_mlp(a.cache, a.epochs, train, test);
    const std::size_t L = model.size(), n = std::min(a.calib, test.size());
    const auto calib_x = test.inputs.cview().batch(0, n);
    const std::span<const std::int32_t> calib_y(test.labels.data(), n);

    const auto specs = standard_codecs();
    std::printf("measuring %zu codecs x %zu split points on %zu held-out test images...\n", specs.size(), L, n);
    const CandidateSet set = measure_candidates(model, calib_x, calib_y, specs, {"fmnist-mlp", 64});
    std::printf("float accuracy %.2f%%, response frame %.0f bytes\n\n", set.float_accuracy, set.response_bytes);
    std::printf("%-10s", "codec");
    for (std::size_t k = 0; k < L; ++k) std::printf("   k=%zu bytes  drop  enc us", k);
    std::printf("\n");
    for (const auto& c : set.codecs) {
      std::printf("%-10s", c.name.c_str());
      for (std::size_t k = 0; k < L; ++k)
        std::printf("  %9.0f %5.2f %7.1f", c.bytes_per_sample[k], c.accuracy_drop[k], 1e6 * c.encode_seconds[k]);
      std::printf("\n");
    }

    ProfileOptions po;
    po.runs = 101;
    po.device = "this machine (cloud)";
    const DeviceProfile cloud = profile_model(model, 784, po);
    std::printf("\ncloud profile (measured, batch 1, median of %d runs): all layers %.1f us\n", po.runs,
                1e6 * cloud.seconds(0, L, 1));

    PlanRequest req;
    req.accuracy_budget = a.budget;
    req.response_bytes_per_sample = set.response_bytes;
    GroundTruthOptions gt;
    gt.requests = a.requests;
    gt.warmup = 3;
    gt.model_id = "fmnist-mlp";

    std::vector<std::pair<double, bool>> boards;
    for (double f : a.slowdowns) boards.emplace_back(f, false);
    for (double f : a.emulated) boards.emplace_back(f, true);
    for (const auto& [f, emulate] : boards) {
      char label[96];
      std::snprintf(label, sizeof label, "this machine x%g (scaled%s)", f, emulate ? ", emulated" : "");
      DeviceProfile cloud_now = cloud, edge = scaled(cloud, f, label);
      const auto codecs = scale_codec_costs(set.codecs, f);
      gt.edge_slowdown = f;
      gt.edge_profile = emulate ? &edge : nullptr;
      gt.edge_codec_costs = emulate ? &codecs : nullptr;
      std::printf("\n=== edge: %s, all layers %.1f us; accuracy budget %.2f points ===\n", label,
                  1e6 * edge.seconds(0, L, 1), a.budget);
      for (const LinkProfile& link : LinkProfile::presets()) {
        if (!emulate) {
          // Profile again right before the run: on a shared machine the load drifts over seconds,
          // and the edge's measured time is this machine's time x f.
          cloud_now = profile_model(model, 784, po);
          edge = scaled(cloud_now, f, label);
        }
        const LinkModel lm = link_model(link);
        const auto plans = plan_split(edge, cloud_now, lm, codecs, req);
        const auto measured = measure_all(model, specs, calib_x, link, link, gt);
        const Measured* best = nullptr;
        for (const Measured& r : measured) {
          if (r.split < L) {
            const auto& c = *std::find_if(codecs.begin(), codecs.end(), [&](const auto& x) { return x.name == r.codec; });
            if (!(c.accuracy_drop[r.split] <= a.budget)) continue;
          }
          if (!best || r.latency_s < best->latency_s) best = &r;
        }
        const Plan& pick = plans.front();
        const Measured& got = find_measured(measured, pick.split, pick.codec);
        const Measured& edge_only = find_measured(measured, L, "-");
        const Measured& cloud_only = find_measured(measured, 0, "fp32");
        const double within = got.latency_s / best->latency_s - 1;
        const double err = (pick.latency_s - got.latency_s) / got.latency_s;
        double worst_err = 0;
        for (const Plan& p : plans)
          worst_err = std::max(worst_err, std::abs(p.latency_s / find_measured(measured, p.split, p.codec).latency_s - 1));
        const bool holds = within <= 0.05 && std::abs(err) <= 0.10;
        all_hold = all_hold && holds;
        std::printf("\n%s (%.2f Mbit/s, RTT %.0f ms)\n", link.name.c_str(), link.bandwidth_bps / 1e6, 1e3 * lm.rtt_s);
        std::printf("  %-22s %10s %10s\n", "plan", "measured", "predicted");
        std::printf("  %-22s %8.2f ms %8.2f ms\n", "all-edge", 1e3 * edge_only.latency_s,
                    1e3 * best_at(plans, L)->latency_s);
        std::printf("  %-22s %8.2f ms %8.2f ms\n", "all-cloud (k=0 fp32)", 1e3 * cloud_only.latency_s,
                    1e3 * [&] {
                      for (const Plan& p : plans)
                        if (p.split == 0 && p.codec == "fp32") return p.latency_s;
                      return std::nan("");
                    }());
        std::printf("  %-22s %8.2f ms %8.2f ms   (drop %.2f points, %.0f bytes)\n",
                    ("pick: " + plan_name(pick.split, pick.codec, L)).c_str(), 1e3 * got.latency_s,
                    1e3 * pick.latency_s, pick.accuracy_drop, pick.bytes);
        std::printf("  %-22s %8.2f ms\n", ("best: " + plan_name(best->split, best->codec, L)).c_str(),
                    1e3 * best->latency_s);
        std::printf("  speedup of the pick: %.2fx over all-edge, %.2fx over all-cloud\n",
                    edge_only.latency_s / got.latency_s, cloud_only.latency_s / got.latency_s);
        std::printf("  pick vs best measured: +%.2f%% (claim <= 5%%); predicted vs measured: %+.2f%% (claim <= 10%%); "
                    "worst over all %zu plans: %.2f%%  %s\n",
                    100 * within, 100 * err, plans.size(), 100 * worst_err, holds ? "HOLDS" : "FAILS");
        // The same link under the other objectives.
        PlanRequest er = req;
        er.objective = Objective::edge_energy;
        const Plan e = plan_split(edge, cloud_now, lm, codecs, er).front();
        er.objective = Objective::bytes;
        const Plan b = plan_split(edge, cloud_now, lm, codecs, er).front();
        std::printf("  min edge energy: %s (%.2f mJ, %.2f ms); min bytes: %s (%.0f bytes)\n",
                    plan_name(e.split, e.codec, L).c_str(), 1e3 * e.energy_j, 1e3 * e.latency_s,
                    plan_name(b.split, b.codec, L).c_str(), b.bytes);
      }

      if (!a.sweep.empty()) {
        char suffix[32];
        std::snprintf(suffix, sizeof suffix, "-x%g%s", f, emulate ? "e" : "");
        const std::string base = a.sweep + suffix;
        std::ofstream pred(base + ".dat"), meas(base + "-measured.dat");
        if (!pred || !meas) fail(errc::io_error, "cannot write " + base + ".dat");
        pred << "# predicted latency (ms) against uplink bandwidth, RTT " << a.sweep_rtt_ms << " ms, edge " << label
             << "\n# Mbit/s";
        for (std::size_t k = 0; k <= L; ++k) pred << " k" << k;
        pred << "\n";
        for (int i = 0; i <= 60; ++i) {
          LinkModel lm;
          lm.uplink_bps = lm.downlink_bps = 0.1e6 * std::pow(1000.0, i / 60.0);  // 0.1 .. 100 Mbit/s
          lm.rtt_s = a.sweep_rtt_ms / 1e3;
          const auto plans = plan_split(edge, cloud_now, lm, codecs, req);
          pred << lm.uplink_bps / 1e6;
          for (std::size_t k = 0; k <= L; ++k) {
            const Plan* p = best_at(plans, k);
            pred << ' ' << (p ? 1e3 * p->latency_s : std::nan(""));
          }
          pred << "\n";
        }
        meas << "# measured end to end (ms), same link shape; columns: Mbit/s k latency codec\n";
        for (double mbps : {0.25, 1.1, 5.85, 18.88, 80.0}) {
          LinkProfile lp;
          lp.name = "sweep";
          lp.bandwidth_bps = mbps * 1e6;
          lp.latency = LinkProfile::seconds_to_duration(a.sweep_rtt_ms / 2e3);
          const auto plans = plan_split(edge, cloud_now, link_model(lp), codecs, req);
          for (std::size_t k = 0; k <= L; ++k) {
            const Plan* p = best_at(plans, k);
            if (!p) continue;
            const CodecSpec& spec = k < L ? find_codec(specs, p->codec) : specs.front();
            const Measured r = measure_end_to_end(model, k, spec, calib_x, lp, lp, gt);
            meas << mbps << ' ' << k << ' ' << 1e3 * r.latency_s << ' ' << r.codec << "\n";
          }
        }
        std::printf("\nwrote %s.dat and %s-measured.dat\n", base.c_str(), base.c_str());
      }
    }
    std::printf("\nenergy model (edge): compute %.2f W, radio %.2f W, idle %.2f W\n", req.energy.compute_watts,
                req.energy.radio_watts, req.energy.idle_watts);
    std::printf("claims: %s\n", all_hold ? "every pick within 5% of the best measured, every prediction within 10%"
                                         : "NOT ALL HOLD");
    return all_hold ? 0 : 3;
  });
}
