// Tests for plan/: device profiles, the link model and estimator, and the split planner on
// hand-computed cases.
#include <catch2/catch.hpp>

#include <cmath>

#include "edgesplit/edgesplit.hpp"
#include "edgesplit/plan/link.hpp"
#include "edgesplit/plan/planner.hpp"
#include "edgesplit/plan/profile.hpp"
#include "test_util.hpp"

using namespace edgesplit;
using edgesplit_test::expect_errc;

namespace {

// A two-layer profile with round numbers: layer costs in seconds at batch 1 and 4.
DeviceProfile toy_profile(double l0, double l1, double scale4 = 2.0) {
  DeviceProfile p;
  p.device = "toy";
  p.input_features = 4;
  p.batches = {{1, {{"a", 10, 16, l0}, {"b", 10, 8, l1}}}, {4, {{"a", 40, 64, l0 * scale4}, {"b", 40, 32, l1 * scale4}}}};
  return p;
}

}  // namespace

TEST_CASE("DeviceProfile: exact, interpolated and extrapolated latencies", "[plan]") {
  const auto p = toy_profile(1.0, 3.0);
  CHECK(p.seconds(0, 2, 1) == 4.0);
  CHECK(p.seconds(1, 2, 4) == 6.0);
  CHECK(p.seconds(0, 0, 4) == 0.0);
  // batch 2 lies a third of the way from 1 to 4: 4 + (8 - 4) / 3
  CHECK(p.seconds(0, 2, 2) == Approx(4.0 + 4.0 / 3).epsilon(1e-12));
  // beyond the largest batch: per-sample cost of batch 4 times 8
  CHECK(p.seconds(0, 2, 8) == Approx(16.0).epsilon(1e-12));
  expect_errc(errc::out_of_range, [&] { (void)p.seconds(1, 3, 1); });
  expect_errc(errc::invalid_argument, [&] { (void)p.seconds(0, 1, 0); });

  auto bad = p;
  bad.batches[1].batch = 1;
  expect_errc(errc::invalid_argument, [&] { bad.validate(); });
  bad = p;
  bad.batches[1].layers.pop_back();
  expect_errc(errc::shape_mismatch, [&] { bad.validate(); });
  bad = p;
  bad.batches[0].layers[0].seconds = -1;
  expect_errc(errc::invalid_argument, [&] { bad.validate(); });
  bad = p;
  bad.batches[0].layers[0].seconds = std::nan("");
  expect_errc(errc::invalid_argument, [&] { bad.validate(); });
}

TEST_CASE("Profiles: measured, analytic and scaled", "[plan]") {
  Rng rng(3);
  Sequential<float> m;
  m.add<Dense<float>>(32, 16, rng);
  m.add<ReLU<float>>();
  m.add<Dense<float>>(16, 4, rng);

  ProfileOptions opt;
  opt.batch_sizes = {4, 1, 4};
  opt.runs = 5;
  opt.warmup = 1;
  const auto measured = profile_model(m, 32, opt);
  REQUIRE(measured.batches.size() == 2);  // sorted, duplicates removed
  CHECK(measured.batches[0].batch == 1);
  CHECK(measured.layer_count() == 3);
  CHECK(measured.source == ProfileSource::measured);
  const auto info = m.describe(Shape{4, 32});
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(measured.batches[1].layers[i].flops == info[i].flops);
    CHECK(measured.batches[1].layers[i].output_bytes == info[i].output_bytes);
    CHECK(measured.batches[1].layers[i].seconds >= 0);
  }
  measured.validate();
  expect_errc(errc::invalid_argument, [&] { (void)profile_model(m, 0, opt); });
  opt.batch_sizes = {0};
  expect_errc(errc::invalid_argument, [&] { (void)profile_model(m, 32, opt); });

  const auto analytic = analytic_profile(m, 32, {1, 8}, 2.0, "board");
  CHECK(analytic.source == ProfileSource::analytic);
  CHECK(analytic.batches[1].layers[0].seconds == Approx(double(8 * 16 * (2 * 32 + 1)) / 2e9).epsilon(1e-12));
  expect_errc(errc::invalid_argument, [&] { (void)analytic_profile(m, 32, {1}, 0.0, "x"); });

  const auto slow = scaled(analytic, 4.0, "slow board");
  CHECK(slow.source == ProfileSource::scaled);
  CHECK(slow.device == "slow board");
  CHECK(slow.seconds(0, 3, 8) == Approx(4.0 * analytic.seconds(0, 3, 8)).epsilon(1e-12));
}

TEST_CASE("Planner: hand-computed latencies, ranking, budget and objectives", "[plan]") {
  // Edge: layers cost 10 ms and 30 ms; cloud: 1 ms and 3 ms (batch 1).
  const auto edge = toy_profile(0.010, 0.030);
  const auto cloud = toy_profile(0.001, 0.003);
  LinkModel link;
  link.uplink_bps = 8e6;   // 1 byte = 1 microsecond
  link.downlink_bps = 8e6;
  link.rtt_s = 0.020;
  CodecCandidate fp32{"fp32", {4000, 2000, 0}, {0, 0, 0}, {}, {}};
  CodecCandidate int8{"int8", {1000, 500, 0}, {0.2, 0.1, 0}, {0.0001, 0.0001, 0}, {0.0002, 0.0002, 0}};

  PlanRequest req;
  req.response_bytes_per_sample = 40;  // 40 us back
  const auto plans = plan_split(edge, cloud, link, {fp32, int8}, req);
  REQUIRE(plans.size() == 5);  // all-edge + 2 codecs x 2 splits
  // k=0 int8: 0 + 0.1 ms + 1 ms + 20 ms + 0.2 ms + 4 ms + 0.04 ms = 25.34 ms: the best
  CHECK(plans[0].split == 0);
  CHECK(plans[0].codec == "int8");
  CHECK(plans[0].latency_s == Approx(0.02534).epsilon(1e-9));
  CHECK(plans[0].transfer_s == Approx(0.001).epsilon(1e-12));
  // k=0 fp32: 4 ms + 20 ms + 4 ms + 0.04 ms = 28.04 ms
  CHECK(plans[1].codec == "fp32");
  CHECK(plans[1].split == 0);
  CHECK(plans[1].latency_s == Approx(0.02804).epsilon(1e-9));
  // all edge: 40 ms, the worst
  CHECK(plans.back().split == 2);
  CHECK(plans.back().latency_s == Approx(0.040).epsilon(1e-12));

  // A budget of 0.15 points removes int8 at k=0 (drop 0.2) but keeps it at k=1 (0.1).
  req.accuracy_budget = 0.15;
  const auto tight = plan_split(edge, cloud, link, {fp32, int8}, req);
  REQUIRE(tight.size() == 4);
  for (const auto& p : tight) CHECK(!(p.split == 0 && p.codec == "int8"));
  CHECK(tight[0].codec == "fp32");

  // Bytes objective: all-edge sends nothing.
  req.objective = Objective::bytes;
  CHECK(plan_split(edge, cloud, link, {fp32, int8}, req)[0].split == 2);

  // Energy: with a very expensive radio, all-edge wins; with a cheap radio, all-cloud.
  req.objective = Objective::edge_energy;
  req.accuracy_budget = 1;
  req.energy = {1.0, 1000.0, 0.0};
  CHECK(plan_split(edge, cloud, link, {fp32, int8}, req)[0].split == 2);
  req.energy = {1.0, 0.0, 0.0};
  const auto cheap = plan_split(edge, cloud, link, {fp32, int8}, req);
  // fp32 at k=0 spends no edge compute at all; int8 at k=0 spends its 0.1 ms encode at 1 W.
  CHECK(cheap[0].split == 0);
  CHECK(cheap[0].codec == "fp32");
  CHECK(cheap[0].energy_j == 0.0);
  CHECK(cheap[1].codec == "int8");
  CHECK(cheap[1].energy_j == Approx(0.0001).epsilon(1e-9));

  // Mismatched shapes are refused.
  CodecCandidate short_one{"x", {1, 2}, {0, 0}, {}, {}};
  expect_errc(errc::shape_mismatch, [&] { (void)plan_split(edge, cloud, link, {short_one}, req); });
  auto three = toy_profile(1, 1);
  for (auto& b : three.batches) b.layers.push_back({"c", 1, 1, 1});
  expect_errc(errc::shape_mismatch, [&] { (void)plan_split(edge, three, link, {fp32}, req); });
  link.loss = 1.0;
  expect_errc(errc::invalid_argument, [&] { (void)plan_split(edge, cloud, link, {fp32}, req); });
}

TEST_CASE("LinkEstimator converges geometrically to the true link", "[plan]") {
  LinkModel prior;
  prior.uplink_bps = 1e6;
  prior.rtt_s = 0.1;
  const double alpha = 0.25;
  LinkEstimator est(prior, alpha);
  const double true_rtt = 0.05, true_bps = 5e6;
  for (int i = 0; i < 40; ++i) est.observe_rtt(true_rtt);
  // EWMA error after n samples is (1 - alpha)^n times the initial error.
  CHECK(std::abs(est.estimate().rtt_s - true_rtt) <= std::pow(1 - alpha, 40) * 0.05 * (1 + 1e-9));
  for (int i = 0; i < 60; ++i) {
    const std::size_t bytes = 100000;
    est.observe_transfer(bytes, true_rtt + bytes * 8 / true_bps + 0.002, 0.002);
  }
  // The RTT estimate is within 1e-6 s of the truth, so each throughput sample is within
  // 0.1 % of 5 Mbps (1e-6 s of 0.16 s); the EWMA of such samples is as well, up to the decayed prior.
  CHECK(est.estimate().uplink_bps == Approx(true_bps).epsilon(1e-3));
  CHECK(est.transfer_samples() == 60);
  est.observe_transfer(10, 0.01);  // shorter than the RTT: no information
  CHECK(est.transfer_samples() == 60);
  expect_errc(errc::invalid_argument, [] { LinkEstimator(LinkModel{}, 0.0); });
}

#if __has_include(<nlohmann/json.hpp>)
#include "edgesplit/io/profile_json.hpp"

TEST_CASE("Profile JSON: exact round trip and every malformed file refused", "[plan][io]") {
  auto p = toy_profile(0.001234567890123, 3e-7);
  p.simd = "avx2";
  p.note = "unit test";
  p.source = ProfileSource::scaled;
  const auto back = parse_profile(profile_to_json(p).dump());
  CHECK(back.device == p.device);
  CHECK(back.simd == "avx2");
  CHECK(back.source == ProfileSource::scaled);
  CHECK(back.input_features == 4);
  REQUIRE(back.batches.size() == 2);
  for (std::size_t b = 0; b < 2; ++b)
    for (std::size_t l = 0; l < 2; ++l) {
      CHECK(back.batches[b].layers[l].seconds == p.batches[b].layers[l].seconds);  // bit-exact
      CHECK(back.batches[b].layers[l].name == p.batches[b].layers[l].name);
      CHECK(back.batches[b].layers[l].flops == p.batches[b].layers[l].flops);
    }

  const nlohmann::json good = profile_to_json(p);
  auto mutated = [&](auto edit) {
    nlohmann::json j = good;
    edit(j);
    return j.dump();
  };
  expect_errc(errc::corrupt_frame, [&] { (void)parse_profile("{\"format\": "); });
  expect_errc(errc::corrupt_frame, [&] { (void)parse_profile("[1, 2]"); });
  expect_errc(errc::corrupt_frame, [&] { (void)parse_profile(mutated([](auto& j) { j["format"] = "other"; })); });
  expect_errc(errc::version_mismatch, [&] { (void)parse_profile(mutated([](auto& j) { j["version"] = 2; })); });
  expect_errc(errc::corrupt_frame, [&] { (void)parse_profile(mutated([](auto& j) { j.erase("device"); })); });
  expect_errc(errc::corrupt_frame, [&] { (void)parse_profile(mutated([](auto& j) { j["input_features"] = -4; })); });
  expect_errc(errc::corrupt_frame, [&] { (void)parse_profile(mutated([](auto& j) { j["source"] = "guessed"; })); });
  expect_errc(errc::corrupt_frame, [&] { (void)parse_profile(mutated([](auto& j) { j["batches"] = 7; })); });
  expect_errc(errc::corrupt_frame,
              [&] { (void)parse_profile(mutated([](auto& j) { j["batches"][0]["layers"][0]["seconds"] = -1.0; })); });
  expect_errc(errc::corrupt_frame,
              [&] { (void)parse_profile(mutated([](auto& j) { j["batches"][0]["layers"][0]["seconds"] = "fast"; })); });
  expect_errc(errc::corrupt_frame, [&] { (void)parse_profile(mutated([](auto& j) { j["batches"][1]["batch"] = 1; })); });
  expect_errc(errc::corrupt_frame, [&] { (void)parse_profile(mutated([](auto& j) { j["batches"][0]["batch"] = 0; })); });
  expect_errc(errc::corrupt_frame,
              [&] { (void)parse_profile(mutated([](auto& j) { j["batches"][1]["layers"].erase(0); })); });
  expect_errc(errc::corrupt_frame, [&] { (void)parse_profile(mutated([](auto& j) { j["batches"] = nlohmann::json::array(); })); });
  ProfileLimits small;
  small.max_layers = 1;
  expect_errc(errc::too_large, [&] { (void)parse_profile(good.dump(), small); });
  small = {};
  small.max_string = 3;
  expect_errc(errc::too_large, [&] { (void)parse_profile(good.dump(), small); });
  small = {};
  small.max_file_bytes = 10;
  expect_errc(errc::too_large, [&] { (void)parse_profile(good.dump(), small); });
  expect_errc(errc::io_error, [&] { (void)load_profile("/nonexistent/profile.json"); });
}
#endif
