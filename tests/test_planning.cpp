// Tests for planning against ground truth: measured codec candidates, the end-to-end harness
// (eval/: the runtime over a virtual-time link, compute charged through a MeteredClock) and the
// EdgeClient on a virtual clock it relies on, the planner's pick and predictions checked against
// measured latencies, and re-planning (PlanSelector hysteresis, AdaptiveClient over a link whose
// bandwidth drops).
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cmath>
#include <deque>
#include <future>
#include <initializer_list>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "edgesplit/edgesplit.hpp"
#include "edgesplit/eval/ground_truth.hpp"
#include "edgesplit/eval/metered_clock.hpp"
#include "edgesplit/plan/candidates.hpp"
#include "edgesplit/plan/planner.hpp"
#include "edgesplit/plan/profile.hpp"
#include "edgesplit/runtime/adaptive_client.hpp"
#include "edgesplit/runtime/cloud_server.hpp"
#include "edgesplit/transport/inproc.hpp"
#include "edgesplit/transport/simulated_link.hpp"
#include "model_fixtures.hpp"
#include "test_util.hpp"

using namespace edgesplit;
using edgesplit_test::expect_errc;

namespace {

// 64-48-16-8 MLP: five layers, so split points 0..5 (Dense, ReLU, Dense, ReLU, Dense).
Sequential<float> small_mlp(std::uint64_t seed) {
  Rng rng(seed);
  Sequential<float> m;
  m.add<Dense<float>>(64, 48, rng);
  m.add<ReLU<float>>();
  m.add<Dense<float>>(48, 16, rng);
  m.add<ReLU<float>>();
  m.add<Dense<float>>(16, 8, rng);
  return m;
}

// Random inputs, labelled by the float model itself: its accuracy is 100%, so the drop of a
// codec is exactly the share of samples whose top-1 it changes.
struct CalibrationSet {
  Tensor<float> x;
  std::vector<std::int32_t> y;
};
CalibrationSet self_labelled(Sequential<float>& m, std::size_t n, std::size_t features, std::uint64_t seed) {
  Rng rng(seed);
  CalibrationSet c{Tensor<float>(Shape{n, features}), {}};
  for (float& v : c.x.span()) v = static_cast<float>(rng.uniform(-1, 1));
  const Tensor<float> out = m.predict(c.x.cview());
  const std::size_t k = out.shape().count() / n;
  for (std::size_t i = 0; i < n; ++i)
    c.y.push_back(static_cast<std::int32_t>(std::max_element(out.data() + i * k, out.data() + (i + 1) * k) - (out.data() + i * k)));
  return c;
}

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Polls `done` until it holds or 10 s of real time pass (a bound on a wait, not a measurement).
template <class F>
bool eventually(F done) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < until) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return done();
}

}  // namespace

TEST_CASE("link_model: a SimulatedLink preset as the planner sees it", "[planning]") {
  const LinkModel m = link_model(LinkProfile::lte());
  CHECK(m.uplink_bps == 5.85e6);
  CHECK(m.downlink_bps == 5.85e6);
  CHECK(m.rtt_s == Approx(0.060).epsilon(1e-12));  // 30 ms one way, each direction
  LinkProfile unlimited;
  unlimited.latency = std::chrono::milliseconds(5);
  const LinkModel u = link_model(LinkProfile::wifi(), unlimited);
  CHECK(u.uplink_bps == 18.88e6);
  CHECK(u.downlink_bps >= 1e15);
  CHECK(u.rtt_s == Approx(0.015).epsilon(1e-12));
  LinkProfile traced = LinkProfile::wifi();
  traced.trace = std::make_shared<const DeliveryTrace>(DeliveryTrace::parse("1\n2\n"));
  expect_errc(errc::invalid_argument, [&] { (void)link_model(traced); });
}

TEST_CASE("measure_candidates: bytes, accuracy drop and timings per split and codec", "[planning]") {
  Sequential<float> m = small_mlp(11);
  const CalibrationSet cal = self_labelled(m, 200, 64, 12);
  const auto specs = standard_codecs(false);
  REQUIRE(specs.size() == 4);
  const CandidateSet set = measure_candidates(m, cal.x.cview(), cal.y, specs, {"mlp", 16});
  CHECK(set.float_accuracy == 100.0);
  CHECK(set.response_bytes > 8 * 4);  // 8 logits as fp32 plus the frame
  REQUIRE(set.codecs.size() == 4);
  const std::size_t width[5] = {64, 48, 48, 16, 16};  // features crossing the link at k = 0..4
  for (std::size_t k = 0; k < 5; ++k) {
    const auto& fp32 = set.codecs[0];
    const auto& i8 = set.codecs[1];
    const auto& i4 = set.codecs[2];
    const auto& i2 = set.codecs[3];
    // fp32 is lossless; the frame is the same size for every sample (fixed header, no zstd).
    CHECK(fp32.accuracy_drop[k] == 0.0);
    // fp32 carries 4 bytes per feature, int8 1 byte plus its scale and zero point: the
    // difference is 3 bytes per feature less the few bytes of quantization parameters.
    const double d = fp32.bytes_per_sample[k] - i8.bytes_per_sample[k];
    CHECK(d <= 3.0 * double(width[k]));
    CHECK(d >= 3.0 * double(width[k]) - 16);
    // Packing: int4 holds two codes a byte, int2 four (ceil), the rest of the frame equal.
    CHECK(i8.bytes_per_sample[k] - i4.bytes_per_sample[k] == double(width[k] - (width[k] + 1) / 2));
    CHECK(i4.bytes_per_sample[k] - i2.bytes_per_sample[k] == double((width[k] + 1) / 2 - (width[k] + 3) / 4));
    // Coarser codes never beat finer ones by much; at 2 bits some top-1 decisions change.
    CHECK(fp32.encode_seconds[k] >= 0);
    CHECK(i2.decode_seconds[k] >= 0);
    CHECK(i2.accuracy_drop[k] >= 0);
  }
  for (const auto& c : set.codecs) CHECK(c.bytes_per_sample[5] == 0);
  expect_errc(errc::invalid_argument,
              [&] { (void)measure_candidates(m, cal.x.cview(), std::span(cal.y).first(10), specs); });
  expect_errc(errc::invalid_argument, [&] { (void)find_codec(specs, "int3"); });
}

TEST_CASE("Ground truth on a virtual-time link: transfers are exact, the planner's pick and predictions hold",
          "[planning]") {
  Sequential<float> m = small_mlp(21);
  const CalibrationSet cal = self_labelled(m, 300, 64, 22);
  const auto specs = standard_codecs();
  const CandidateSet set = measure_candidates(m, cal.x.cview(), cal.y, specs, {"mlp", 32});

  // The edge is an emulated slow board (0.2 MFLOP/s, analytic, charged to the virtual clock
  // from its profile: deterministic); the cloud is this machine, measured. All-edge then costs
  // 8072 FLOPs (2 in out + out per Dense, one per ReLU element: 6192 + 48 + 1552 + 16 + 264) at
  // 2e5 FLOP/s = 40.36 ms, between the Wi-Fi and LTE round trips: the best plan differs by link.
  const DeviceProfile edge = analytic_profile(m, 64, {1}, 2e-4, "emulated board");
  ProfileOptions po;
  po.runs = 15;
  const DeviceProfile cloud = profile_model(m, 64, po);
  CHECK(edge.seconds(0, 5, 1) == Approx(8072 / 2e5).epsilon(1e-9));

  PlanRequest req;
  req.accuracy_budget = 1.0;
  req.response_bytes_per_sample = set.response_bytes;
  GroundTruthOptions gt;
  gt.requests = 5;
  gt.warmup = 1;
  gt.edge_profile = &edge;
  gt.model_id = "mlp";

  std::vector<std::size_t> picks;
  for (const LinkProfile& link : LinkProfile::presets()) {
    const LinkModel lm = link_model(link);
    const auto plans = plan_split(edge, cloud, lm, set.codecs, req);
    const auto measured = measure_all(m, specs, cal.x.cview(), link, link, gt);
    REQUIRE(measured.size() == 5 * specs.size() + 1);

    double best = std::numeric_limits<double>::infinity();
    for (std::size_t i = 0; i < measured.size(); ++i) {
      const Measured& r = measured[i];
      if (r.split < 5) {
        // Without zstd every frame has the same size, and its transfer is exactly serialization
        // at the link rate plus the one-way latency: the clock is virtual and the link has no
        // jitter, so only rounding to a clock tick (1 ns) remains. With zstd the size varies by
        // sample: the harness's mean over its 6 samples is near the candidates' mean over 300.
        const auto& cand = set.codecs[i % specs.size()];
        if (specs[i % specs.size()].config.lossless == wire::Lossless::none) {
          CHECK(r.uplink_s == Approx(r.bytes * 8 / link.bandwidth_bps + seconds(link.latency)).margin(1e-8));
          CHECK(r.bytes == cand.bytes_per_sample[r.split]);
          // The reply, as the server's batcher encoded it, crosses the same way.
          CHECK(r.downlink_s ==
                Approx(set.response_bytes * 8 / link.bandwidth_bps + seconds(link.latency)).margin(1e-8));
        } else {
          CHECK(r.bytes == Approx(cand.bytes_per_sample[r.split]).epsilon(0.1));
        }
        if (!(cand.accuracy_drop[r.split] <= req.accuracy_budget)) continue;
      } else {
        CHECK(r.latency_s == Approx(edge.seconds(0, 5, 1)).epsilon(1e-6));
      }
      best = std::min(best, r.latency_s);
    }
    const Plan& pick = plans.front();
    const Measured& got = find_measured(measured, pick.split, pick.codec);
    INFO(link.name << ": pick k=" << pick.split << " " << pick.codec << " predicted " << pick.latency_s
                   << " s, measured " << got.latency_s << " s, best measured " << best << " s");
    // The claims of the issue. Every latency here is >= 20 ms of exact virtual network time or
    // profile-charged edge time; what is wall-clock (cloud tail, codec) is tens of microseconds,
    // so even a 10x scheduling hiccup moves a total by well under 1%.
    CHECK(got.latency_s <= 1.05 * best);
    CHECK(std::abs(pick.latency_s - got.latency_s) <= 0.10 * got.latency_s);
    // And every plan's prediction, not only the pick's.
    for (const Plan& p : plans) {
      const Measured& r = find_measured(measured, p.split, p.codec);
      CHECK(std::abs(p.latency_s - r.latency_s) <= 0.10 * r.latency_s);
    }
    picks.push_back(pick.split);
  }
  // Wi-Fi (20 ms RTT) sends the input to the cloud; LTE (60 ms) and 3G (150 ms) stay on the edge.
  CHECK(picks == std::vector<std::size_t>{0, 5, 5});
}

TEST_CASE("Ground truth: an emulated board's charges add up exactly, the runtime's answers are the model's",
          "[planning]") {
  // Every edge charge from the profile and the codec costs: then a request's latency is exactly
  // head + encode + uplink + cloud + downlink + reply decode, each part taken from the same run.
  Sequential<float> m = small_mlp(51);
  const CalibrationSet cal = self_labelled(m, 40, 64, 52);
  const std::vector<CodecSpec> specs{find_codec(standard_codecs(false), "int8")};
  const CandidateSet set = measure_candidates(m, cal.x.cview(), cal.y, specs, {"mlp", 32});
  const DeviceProfile edge = analytic_profile(m, 64, {1}, 1e-3, "emulated board");
  const auto costs = scale_codec_costs(set.codecs, 1000);
  GroundTruthOptions gt;
  gt.requests = 3;
  gt.warmup = 1;
  gt.edge_profile = &edge;
  gt.edge_codec_costs = &costs;
  gt.model_id = "mlp";
  const LinkProfile link = LinkProfile::lte();
  for (const std::size_t k : std::initializer_list<std::size_t>{0, 2, 4}) {
    INFO("k = " << k);
    const Measured r = measure_end_to_end(m, k, specs[0], cal.x.cview(), link, link, gt);
    CHECK(r.edge_s == Approx(edge.seconds(0, k, 1)).epsilon(1e-12));
    CHECK(r.encode_s == Approx(costs[0].encode_seconds[k]).epsilon(1e-12));
    CHECK(r.uplink_s == Approx(r.bytes * 8 / link.bandwidth_bps + seconds(link.latency)).margin(1e-8));
    CHECK(r.cloud_s > 0);
    CHECK(r.decode_reply_s >= 0);
    // The medians of the parts sum to the median latency within the spread of the measured parts
    // (cloud and reply decode: microseconds; the rest is exact).
    const double sum = r.edge_s + r.encode_s + r.uplink_s + r.cloud_s + r.downlink_s + r.decode_reply_s;
    CHECK(r.latency_s == Approx(sum).margin(1e-3));
  }
  // A lossy link would leave a request unanswered: refused up front.
  LinkProfile lossy = link;
  lossy.loss = 0.1;
  expect_errc(errc::invalid_argument, [&] { (void)measure_end_to_end(m, 1, specs[0], cal.x.cview(), lossy, link, gt); });
  expect_errc(errc::out_of_range, [&] { (void)measure_end_to_end(m, 6, specs[0], cal.x.cview(), link, link, gt); });
}

TEST_CASE("MeteredClock: a metered thread's compute moves the clock, other threads' readings do not", "[planning]") {
  using namespace std::chrono_literals;
  MeteredClock clock;
  REQUIRE(clock.is_virtual());
  const Clock::time_point zero{};
  std::this_thread::sleep_for(2ms);
  CHECK(clock.now() == zero);  // no meter: reading costs nothing, however long the thread took
  Clock::time_point t;
  {
    MeteredClock::Meter meter(clock, 100);
    REQUIRE(meter.running());
    std::this_thread::sleep_for(2ms);
    t = clock.now();  // charges this thread's time since the meter started, x 100
    CHECK(t - zero >= 200ms);
    CHECK(t - zero == meter.charged());
    // Another thread's reading charges nothing, and sees what was charged.
    Clock::time_point other{};
    std::thread([&] { other = clock.now(); }).join();
    CHECK(other == t);
    expect_errc(errc::invalid_argument, [&] { MeteredClock::Meter second(clock, 1); });  // one per thread
    std::this_thread::sleep_for(1ms);
    meter.stop();
    CHECK_FALSE(meter.running());
    CHECK(clock.now() == t);  // the time after the last reading is not charged
  }
  {
    MeteredClock::Meter free(clock, 0);  // factor 0: readings charge nothing
    std::this_thread::sleep_for(1ms);
    CHECK(clock.now() == t);
    CHECK(free.charged() == Clock::duration::zero());
  }
  clock.advance_by(1s);
  clock.sleep_until(t);  // never backwards
  CHECK(clock.now() == t + 1s);
  clock.advance_by_seconds(0.5);
  CHECK(clock.now() == t + 1500ms);
  expect_errc(errc::invalid_argument, [&] { MeteredClock::Meter bad(clock, -1); });
  expect_errc(errc::invalid_argument, [&] { MeteredClock::Meter bad(clock, std::nan("")); });
}

TEST_CASE("EdgeClient on a virtual clock: deadlines, round trips and reconnection follow the clock",
          "[planning][runtime]") {
  using namespace std::chrono_literals;
  // The cloud is played by hand over an in-process pair, so that nothing answers unless the test
  // says so; time moves only when the test advances the clock. The short real-time waits below
  // check that nothing happens while virtual time stands still.
  Sequential<float> whole = edgesplit_test::mlp({6, 5, 4}, 41);
  const auto parts = whole.split(1);
  const Sequential<float>& head = parts.first;
  Sequential<float> tail = parts.second;
  const wire::ModelIdentity id{"virtual", 1, 0, 1};
  const Tensor<float> x = edgesplit_test::random_input(1, 6, 42);
  const Tensor<float> want = whole.predict(x.cview());
  VirtualClock clock;
  auto ends = InProcTransport::make_pair();
  InProcTransport& cloud_end = ends.second;
  std::atomic<bool> hello_ok{false};
  std::thread hello([&] {
    Message m;
    if (!cloud_end.receive(deadline_after(10s), m) || wire::peek(m.view()).type != wire::MessageType::hello) return;
    std::vector<std::byte> out;
    wire::encode_hello(out, id, wire::peek(m.view()).request_id);
    cloud_end.send(out, deadline_after(10s));
    hello_ok = true;
  });
  std::atomic<int> connects{0};
  std::optional<InProcTransport> first(std::move(ends.first));
  EdgeOptions eo;
  eo.model = id;
  eo.codec.bits = wire::raw_f32_bits;
  eo.backoff_initial = 100ms;
  eo.keepalive = 0ms;
  EdgeClient client(
      head,
      [&]() -> Channel {
        ++connects;
        if (!first) fail(errc::unreachable, "no cloud any more");
        Channel c(std::move(*first));
        first.reset();
        return c;
      },
      eo, Fallback{tail, Fallback::Input::features}, clock);
  hello.join();
  REQUIRE(hello_ok);
  REQUIRE(client.connected());
  CHECK(&client.clock() == &clock);

  CodecConfig raw;
  raw.bits = wire::raw_f32_bits;
  FeatureCodec codec(raw);
  Message m;

  // A deadline 50 ms ahead on the virtual clock: the request waits, unanswered, for as long as
  // the clock stands still, and falls back `timeout` once the clock passes it.
  auto late = client.submit(x.cview(), clock.now() + 50ms);
  REQUIRE(cloud_end.receive(deadline_after(10s), m));  // sent; the cloud never answers it
  CHECK(late.wait_for(50ms) == std::future_status::timeout);
  clock.advance_by(50ms);
  REQUIRE(late.wait_for(10s) == std::future_status::ready);
  const InferResult fell = late.get();
  CHECK(fell.path == AnswerPath::fallback);
  CHECK(fell.fallback_reason == errc::timeout);
  for (std::size_t j = 0; j < 4; ++j) CHECK(fell.output[j] == Approx(want[j]).margin(1e-5));

  // The round trip is read on the clock: 7 ms of virtual time, exactly, however long it took.
  auto answered = client.submit(x.cview(), no_deadline);
  REQUIRE(cloud_end.receive(deadline_after(10s), m));
  Tensor<float> features;
  std::uint32_t request_id = 0;
  (void)wire::decode_infer(m.view(), codec, features, &request_id);
  const Tensor<float> y = tail.predict(features.cview());
  std::vector<std::byte> reply;
  wire::InferResponse resp;
  resp.queue_us = 1000;
  resp.compute_us = 2000;
  wire::encode_response(reply, request_id, resp, codec, y.cview());
  clock.advance_by(7ms);
  cloud_end.send(reply, deadline_after(10s));
  REQUIRE(answered.wait_for(10s) == std::future_status::ready);
  const InferResult got = answered.get();
  CHECK(got.path == AnswerPath::cloud);
  CHECK(got.timings.round_trip == Approx(0.007).margin(1e-12));
  CHECK(got.timings.network() == Approx(0.004).margin(1e-12));
  for (std::size_t j = 0; j < 4; ++j) CHECK(got.output[j] == Approx(want[j]).margin(1e-5));

  // The cloud goes away: the client tries again after its backoff on the virtual clock (100 ms,
  // 100 ms, then doubling: 200 ms), whatever real time passes.
  cloud_end.close();
  REQUIRE(eventually([&] { return !client.connected(); }));
  std::this_thread::sleep_for(50ms);
  CHECK(connects == 1);
  clock.advance_by(100ms);
  REQUIRE(eventually([&] { return client.stats().connect_failures == 1; }));
  CHECK(connects == 2);
  clock.advance_by(50ms);
  std::this_thread::sleep_for(50ms);
  CHECK(connects == 2);
  clock.advance_by(50ms);
  REQUIRE(eventually([&] { return client.stats().connect_failures == 2; }));
  CHECK(connects == 3);
  clock.advance_by(150ms);
  std::this_thread::sleep_for(50ms);
  CHECK(connects == 3);  // the backoff doubled
  clock.advance_by(50ms);
  REQUIRE(eventually([&] { return client.stats().connect_failures == 3; }));
  CHECK(connects == 4);
  client.close();
}

namespace {

// Two layers; the edge spends 10 ms in the first, the cloud nothing; fp32 sends 10,000 bytes at
// k = 0 and 100 at k = 1. With no RTT, k = 0 costs 80,000 / bw s and all-edge 10 ms (k = 1 costs
// 10 ms + 800 / bw, never better): the boundary is at bw = 8 Mbit/s.
PlanSelector toy_selector(double hysteresis, double start_bps) {
  DeviceProfile e;
  e.input_features = 4;
  e.batches = {{1, {{"a", 1, 1, 0.010}, {"b", 1, 1, 0.0}}}};
  DeviceProfile c = e;
  c.batches[0].layers[0].seconds = 0;
  CodecCandidate fp32{"fp32", {10000, 100, 0}, {0, 0, 0}, {}, {}};
  LinkModel l;
  l.uplink_bps = start_bps;
  l.downlink_bps = 1e15;
  l.rtt_s = 0;
  return PlanSelector(e, c, {fp32}, PlanRequest{}, l, hysteresis);
}
LinkModel at(double bps) {
  LinkModel l;
  l.uplink_bps = bps;
  l.downlink_bps = 1e15;
  l.rtt_s = 0;
  return l;
}

}  // namespace

TEST_CASE("PlanSelector: switches past a plan boundary, hysteresis stops flapping", "[planning]") {
  // With hysteresis h = 0.15 the plan leaves k = 0 when 80,000 / bw > 1.15 x 10 ms, i.e. below
  // 6.96 Mbit/s, and comes back when 10 ms > 1.15 x 80,000 / bw, i.e. above 9.2 Mbit/s.
  PlanSelector s = toy_selector(0.15, 20e6);
  REQUIRE(s.current().split == 0);
  const double wobble[] = {7.5e6, 8.5e6, 7.1e6, 9.0e6, 7.2e6, 8.9e6, 7.6e6, 8.1e6};
  for (double bps : wobble) CHECK_FALSE(s.update(at(bps)));
  CHECK(s.current().split == 0);
  CHECK(s.update(at(6.5e6)));
  CHECK(s.current().split == 2);  // all-edge
  for (double bps : wobble) CHECK_FALSE(s.update(at(bps)));
  CHECK(s.current().split == 2);
  CHECK(s.update(at(10e6)));
  CHECK(s.current().split == 0);
  CHECK(s.switches() == 2);

  // Without hysteresis the same wobble around 8 Mbit/s flips the plan at every crossing.
  PlanSelector flappy = toy_selector(0, 20e6);
  std::size_t flips = 0;
  for (double bps : wobble) flips += flappy.update(at(bps)) ? 1 : 0;
  CHECK(flips == 8);
  expect_errc(errc::invalid_argument, [] { (void)toy_selector(-0.1, 1e6); });
}

namespace {

// A Mahimahi trace for a link built now whose capacity is `fast_bps` until `switch_at` (steady
// clock) and `slow_bps` after, for `seconds`: one 1500-byte opportunity each time the credit at
// the current rate reaches a packet.
std::shared_ptr<const DeliveryTrace> switching_trace(std::chrono::steady_clock::time_point switch_at, double fast_bps,
                                                     double slow_bps, int seconds) {
  const auto now = std::chrono::steady_clock::now();
  std::string text;
  double credit = 0;
  for (int ms = 0; ms < seconds * 1000; ++ms) {
    credit += (now + std::chrono::milliseconds(ms) < switch_at ? fast_bps : slow_bps) / 8 / 1000;
    for (; credit >= 1500; credit -= 1500) text += std::to_string(ms) + '\n';
  }
  text += std::to_string(seconds * 1000) + '\n';
  return std::make_shared<const DeliveryTrace>(DeliveryTrace::parse(text));
}

}  // namespace

TEST_CASE("AdaptiveClient: follows a bandwidth drop, answers every request exactly once", "[planning][runtime]") {
  using namespace std::chrono_literals;
  // 2048 inputs -> 16 -> 8: k = 0 sends ~8 KB, k = 1, 2 send 64 bytes. The edge profile says the
  // first layer takes 20 ms on the board, so all-edge costs ~20 ms: at 100 Mbit/s k = 0 wins
  // (0.7 ms + 2 ms RTT), at 1 Mbit/s all-edge does (k = 0 would take 66 ms). Boundary: ~3.6 Mbit/s.
  Rng rng(31);
  Sequential<float> m;
  m.add<Dense<float>>(2048, 16, rng);
  m.add<ReLU<float>>();
  m.add<Dense<float>>(16, 8, rng);
  CalibrationSet cal = self_labelled(m, 40, 2048, 32);
  std::vector<CodecSpec> specs{find_codec(standard_codecs(false), "fp32")};
  const CandidateSet set = measure_candidates(m, cal.x.cview(), cal.y, specs, {"adaptive", 8});
  DeviceProfile edge;
  edge.input_features = 2048;
  edge.batches = {{1, {{"dense", 1, 1, 0.020}, {"relu", 1, 1, 0.0}, {"dense", 1, 1, 0.0001}}}};
  DeviceProfile cloud = edge;
  cloud.batches[0].layers[0].seconds = 0.0001;
  LinkModel prior;
  prior.uplink_bps = 100e6;
  prior.downlink_bps = 100e6;
  prior.rtt_s = 0.002;
  PlanRequest req;
  req.response_bytes_per_sample = set.response_bytes;
  PlanSelector selector(edge, cloud, set.codecs, req, prior, 0.15);
  REQUIRE(selector.current().split == 0);

  ServerOptions so;
  so.max_queue_delay = 0us;
  CloudServer server(so);
  for (std::uint16_t k = 0; k < 3; ++k) {
    auto parts = m.split(k);
    server.register_model({"adaptive", 1, 0, k}, std::move(parts.second));
  }
  const auto switch_at = std::chrono::steady_clock::now() + 600ms;
  std::uint64_t seed = 1;
  LinkProfile down;
  down.name = "down";
  down.bandwidth_bps = 100e6;
  down.latency = 1ms;
  EdgeOptions eo;
  eo.model.model_id = "adaptive";
  AdaptiveOptions ao;
  ao.estimator_alpha = 0.3;
  ao.probe_every = 4;
  AdaptiveClient client(
      m,
      [&] {
        LinkProfile up;
        up.name = "up";
        up.latency = 1ms;
        up.trace = switching_trace(switch_at, 100e6, 1e6, 30);
        auto [edge_end, cloud_end] = InProcTransport::make_pair();
        server.serve(SimulatedLink<InProcTransport>(std::move(cloud_end), down, seed++));
        return Channel(SimulatedLink<InProcTransport>(std::move(edge_end), up, seed++));
      },
      specs, std::move(selector), prior, eo, ao);

  const Tensor<float> expected = m.predict(cal.x.cview());
  std::deque<std::pair<std::future<AdaptiveResult>, std::size_t>> in_flight;  // future, input row
  std::size_t submitted = 0, answered = 0, remote = 0, fast_phase_other = 0;
  const auto collect = [&] {
    AdaptiveResult r = in_flight.front().first.get();
    const std::size_t row = in_flight.front().second;
    in_flight.pop_front();
    ++answered;
    REQUIRE(r.result.output.shape() == Shape{1, 8});
    // The same answer whichever plan served it (fp32 on the wire: float rounding only).
    for (std::size_t j = 0; j < 8; ++j) CHECK(r.result.output.data()[j] == Approx(expected.data()[row * 8 + j]).margin(1e-4));
    if (!r.local) {
      ++remote;
      CHECK(r.result.path == AnswerPath::cloud);
    }
  };
  const auto submit = [&] {
    const std::size_t row = submitted % cal.y.size();
    in_flight.emplace_back(client.submit(cal.x.cview().batch(row, row + 1), deadline_after(10s)), row);
    ++submitted;
  };
  // Fast phase: two requests in flight at a time.
  while (std::chrono::steady_clock::now() < switch_at - 50ms) {
    submit();
    if (in_flight.size() >= 2) collect();
    if (client.plan().split != 0) ++fast_phase_other;
  }
  while (!in_flight.empty()) collect();
  CHECK(fast_phase_other == 0);
  CHECK(client.switches() == 0);
  while (std::chrono::steady_clock::now() < switch_at + 20ms) std::this_thread::sleep_for(5ms);
  // Slow phase: until the plan has moved and 40 more requests have been answered.
  std::size_t after = 0;
  for (int i = 0; i < 400 && after < 40; ++i) {
    submit();
    if (in_flight.size() >= 2) collect();
    if (client.plan().split == 3) ++after;
  }
  while (!in_flight.empty()) collect();
  CHECK(client.plan().split == 3);
  CHECK(client.switches() >= 1);
  CHECK(client.switches() <= 2);  // at most one probe-driven hesitation, no flapping
  CHECK(answered == submitted);
  client.close();
  server.shutdown(1s);
  CHECK(server.stats().responses == remote);  // each remote request was computed once
}
