// Cloud server throughput and latency with 1, 8 and 64 concurrent edge clients, with and without
// dynamic batching, for the tails of the Fashion-MNIST cloud MLP (784-512-256-10).
//
// BM_Server: each iteration is one closed-loop run; every client sends `requests_per_client(N)`
// single-sample requests one after another through the whole runtime (EdgeClient -> in-process
// transport -> CloudServer -> reply), one server worker. BM_ServerRaw: the same server (1 or 2
// workers) under a light load generator that sends pre-encoded frames and reads replies on the
// client thread itself, so less of the 2 cores goes to the clients. BM_TailForward: the tail
// alone on one core at batch 1..64, the ceiling of what batching can gain. BM_Protocol (with
// EDGESPLIT_WITH_HTTP): the native TCP protocol beside the Open Inference Protocol over HTTP, and
// over gRPC (with EDGESPLIT_WITH_GRPC too).
// Counters: samples/s (items_per_second); p50 and p99 request latency in microseconds;
// mean_batch; cpu_us, the CPU time of the whole process (clients included) per request.
// batching: 0 = off (max_batch = 1); 1 = max_batch 64, max_queue_delay 500 us (a worker waits
// for company while some client has nothing queued); 2 = max_batch 64 and no waiting (whatever
// is queued when a worker is free). On a shared machine compare modes within one run, interleaved:
//
//   build/gcc/bench/server_bench --benchmark_filter='clients:64/.*split:0' --benchmark_min_time=1
//       --benchmark_repetitions=5 --benchmark_enable_random_interleaving=true
//       --benchmark_display_aggregates_only=true
#include <algorithm>
#include <atomic>
#include <chrono>
#include <ctime>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>

#include <edgesplit/edgesplit.hpp>
#include <edgesplit/runtime/cloud_server.hpp>
#include <edgesplit/runtime/edge_client.hpp>
#include <edgesplit/transport/inproc.hpp>
#include <edgesplit/transport/tcp.hpp>
#if EDGESPLIT_HAS_HTTP
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#if EDGESPLIT_HAS_GRPC
#include <edgesplit/runtime/oip_grpc_client.hpp>
#include <edgesplit/runtime/oip_grpc_server.hpp>
#endif
// Last: httplib.h must come after Eigen (see the header).
#include <edgesplit/runtime/oip_http.hpp>
#endif

using namespace edgesplit;

namespace {

// CPU time of the whole process (every thread: clients, server, transport), in microseconds.
double process_cpu_us() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) * 1e6 + double(ts.tv_nsec) * 1e-3;
}

Sequential<float> cloud_mlp() {
  Rng rng(1);
  Sequential<float> m;
  m.add<Dense<float>>(784, 512, rng);
  m.add<ReLU<float>>();
  m.add<Dense<float>>(512, 256, rng);
  m.add<ReLU<float>>();
  m.add<Dense<float>>(256, 10, rng);
  return m;
}

// The server both BM_Server and BM_ServerRaw run: batching mode as above, `workers` threads,
// the tail after `split` registered under model_id(split).
ServerOptions server_options(std::int64_t mode, std::size_t workers) {
  ServerOptions so;
  so.workers = workers;
  so.max_batch = mode != 0 ? 64 : 1;
  so.max_queue_delay = std::chrono::microseconds(mode == 1 ? 500 : 0);
  so.queue_capacity = 4096;
  return so;
}
wire::ModelIdentity model_id(std::size_t split) {
  return {"fmnist-mlp", 1, 0, static_cast<std::uint16_t>(split)};
}
// Long enough runs that ramp-up and ramp-down weigh little.
std::size_t requests_per_client(std::size_t clients) { return std::max<std::size_t>(64, 4096 / clients); }
// Counters of both: samples/s, CPU per request since cpu0, mean batch size.
void set_server_counters(benchmark::State& state, const CloudServer& server, std::size_t done, double cpu0) {
  state.counters["cpu_us"] = (process_cpu_us() - cpu0) / double(done);
  state.SetItemsProcessed(static_cast<std::int64_t>(done));
  const auto st = server.stats();
  state.counters["mean_batch"] = st.batches ? double(st.responses) / double(st.batches) : 0;
}

// The benchmark's iterations, each a closed-loop run: `clients` threads, each calling
// round_trip(client index) `per_client` times one after another. Sets the p50_us and p99_us
// counters from every call's latency; returns the requests made.
template <class RoundTrip>
std::size_t closed_loop(benchmark::State& state, std::size_t clients, std::size_t per_client, RoundTrip round_trip) {
  std::vector<double> latencies;
  std::size_t done = 0;
  for (auto _ : state) {
    std::vector<std::vector<double>> per(clients);
    std::vector<std::thread> threads;
    for (std::size_t c = 0; c < clients; ++c)
      threads.emplace_back([&, c] {
        name_this_thread("bench-client");
        per[c].reserve(per_client);
        for (std::size_t i = 0; i < per_client; ++i) {
          const auto t0 = std::chrono::steady_clock::now();
          round_trip(c);
          per[c].push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
        }
      });
    for (auto& t : threads) t.join();
    for (auto& v : per) latencies.insert(latencies.end(), v.begin(), v.end());
    done += clients * per_client;
  }
  std::sort(latencies.begin(), latencies.end());
  state.counters["p50_us"] = latencies[latencies.size() / 2];
  state.counters["p99_us"] = latencies[latencies.size() * 99 / 100];
  return done;
}

// state.range(0): clients; range(1): batching mode (above); range(2): split point; range(3):
// connection: 0 = in-process pair served by a reader thread each, 1 = connect_in_process() (the
// server half on the client's thread when a batch is due at once), 2 = TCP on 127.0.0.1 (the
// server's event loop).
void BM_Server(benchmark::State& state) {
  const auto clients = static_cast<std::size_t>(state.range(0));
  const auto split = static_cast<std::size_t>(state.range(2));
  const auto connection = state.range(3);
  const std::size_t per_client = requests_per_client(clients);
  auto [head, tail] = cloud_mlp().split(split);
  CloudServer server(server_options(state.range(1), 1));  // one core for the server, one for the clients
  const wire::ModelIdentity id = model_id(split);
  server.register_model(id, std::move(tail));
  std::uint16_t port = 0;
  if (connection == 2) {
    auto listener = TcpListener::bind("127.0.0.1", 0);
    port = listener.port();
    server.listen(std::move(listener));
  }
  EdgeOptions eo;
  eo.model = id;
  eo.codec.bits = wire::raw_f32_bits;
  std::vector<std::unique_ptr<EdgeClient>> edge;
  for (std::size_t c = 0; c < clients; ++c)
    edge.push_back(std::make_unique<EdgeClient>(
        head,
        [&server, connection, port] {
          if (connection == 1) return server.connect_in_process();
          if (connection == 2) return Channel(TcpTransport::connect("127.0.0.1", port));
          auto [a, b] = InProcTransport::make_pair();
          server.serve(std::move(b));
          return Channel(std::move(a));
        },
        eo));
  Tensor<float> x(Shape{1, 784}, 0.5f);

  const double cpu0 = process_cpu_us();
  const std::size_t done = closed_loop(state, clients, per_client, [&](std::size_t c) {
    const InferResult r = edge[c]->infer(x.cview(), deadline_after(std::chrono::seconds(30)));
    if (r.path != AnswerPath::cloud) std::abort();
  });
  set_server_counters(state, server, done, cpu0);
}

// The same server under a light load generator: each client thread sends a pre-encoded INFER
// frame over its own in-process connection and reads the reply itself (no EdgeClient, no
// receiver thread), so more of the machine goes to the server.
void BM_ServerRaw(benchmark::State& state) {
  const auto clients = static_cast<std::size_t>(state.range(0));
  const auto split = static_cast<std::size_t>(state.range(2));
  const std::size_t per_client = requests_per_client(clients);
  auto [head, tail] = cloud_mlp().split(split);
  CloudServer server(server_options(state.range(1), static_cast<std::size_t>(state.range(3))));
  const wire::ModelIdentity id = model_id(split);
  server.register_model(id, std::move(tail));
  Tensor<float> x(Shape{1, 784}, 0.5f);
  CodecConfig cfg;
  cfg.bits = wire::raw_f32_bits;
  FeatureCodec codec(cfg);
  std::vector<std::byte> frame;
  wire::encode_infer(frame, 1, {id.model_id, id.split, 0}, codec, head.predict(x.cview()).cview());
  std::vector<InProcTransport> ends;
  std::vector<std::byte> hello;
  wire::encode_hello(hello, id, 0, {});
  for (std::size_t c = 0; c < clients; ++c) {
    auto [a, b] = InProcTransport::make_pair();
    server.serve(std::move(b));
    Message m;  // HELLO first, as the server requires
    a.send(hello, no_deadline);
    if (!a.receive(no_deadline, m) || wire::peek(m.view()).type != wire::MessageType::hello) std::abort();
    ends.push_back(std::move(a));
  }
  std::size_t done = 0;
  const double cpu0 = process_cpu_us();
  for (auto _ : state) {
    std::vector<std::thread> threads;
    for (std::size_t c = 0; c < clients; ++c)
      threads.emplace_back([&, c] {
        name_this_thread("bench-client");
        Message m;
        for (std::size_t i = 0; i < per_client; ++i) {
          ends[c].send(frame, no_deadline);
          if (!ends[c].receive(no_deadline, m) || wire::peek(m.view()).type != wire::MessageType::response) std::abort();
        }
      });
    for (auto& t : threads) t.join();
    done += clients * per_client;
  }
  set_server_counters(state, server, done, cpu0);
}

// One edge, one request at a time, batch 1, split 2, from the caller's view: the head and tail
// run directly on the calling thread (path 0, the baseline), or the whole runtime (EdgeClient,
// codec, server, reply) over connect_in_process() (path 1: the server half runs on the caller's
// thread) or over an in-process pair served by a reader thread (path 2). Compare each path's time
// with path 0's in the same run: the runtime's cost beyond the compute, mostly thread hand-offs.
void BM_InProcRoundTrip(benchmark::State& state) {
  const auto path = state.range(0);
  auto whole = cloud_mlp();
  auto [head, tail] = whole.split(2);
  head.pack_weights();
  tail.pack_weights();
  Tensor<float> x(Shape{1, 784}, 0.5f);
  ServerOptions so;
  so.workers = 1;
  CloudServer server(so);
  const wire::ModelIdentity id = model_id(2);
  server.register_model(id, tail);
  EdgeOptions eo;
  eo.model = id;
  eo.codec.bits = wire::raw_f32_bits;
  std::unique_ptr<EdgeClient> edge;
  if (path == 1) edge = std::make_unique<EdgeClient>(head, [&server] { return server.connect_in_process(); }, eo);
  if (path == 2)
    edge = std::make_unique<EdgeClient>(
        head,
        [&server] {
          auto [a, b] = InProcTransport::make_pair();
          server.serve(std::move(b));
          return Channel(std::move(a));
        },
        eo);
  for (auto _ : state) {
    if (path == 0) {
      benchmark::DoNotOptimize(tail.forward(head.forward(x.cview())).data());
    } else {
      const InferResult r = edge->infer(x.cview(), deadline_after(std::chrono::seconds(30)));
      if (r.path != AnswerPath::cloud) std::abort();
      benchmark::DoNotOptimize(r.output.data());
    }
  }
  state.SetItemsProcessed(state.iterations());
}

// The ceiling for the ratio above: the tail alone on one core, one forward pass of `batch` samples
// (no transport, no threads). Server throughput with batching over without it cannot exceed
// this pass's samples/s at batch 64 over batch 1 unless the unbatched server pays more per
// request outside the model than the batched one does. packed: 1 = Sequential::pack_weights()
// first, as the server does with its copies (weights packed once, not on every batch).
void BM_TailForward(benchmark::State& state) {
  const auto batch = static_cast<std::size_t>(state.range(0));
  const auto split = static_cast<std::size_t>(state.range(1));
  auto tail = cloud_mlp().split(split).second;
  if (state.range(2)) tail.pack_weights();  // as a CloudServer worker's copy is
  Tensor<float> x(Shape{batch, split == 0 ? std::size_t{784} : std::size_t{512}}, 0.5f);  // split 2: after Dense 784-512 + ReLU
  for (auto _ : state) benchmark::DoNotOptimize(tail.forward(x.cview()).data());
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * batch));
}

#if EDGESPLIT_HAS_HTTP
// BM_Protocol: the cost of the standard protocols. One CloudServer, the tail after split 2 and the
// same features (one sample of 512 fp32 in, 10 scores out), answered over the native TCP protocol
// and over the Open Inference Protocol (KServe v2 REST) with JSON tensors and with the binary data
// extension, and over OIP gRPC with raw tensor contents, by 1 and 64 closed-loop clients. Every
// client is a light generator: its request is encoded once (a native INFER frame, a JSON body, a
// binary body, a ModelInferRequest) and it reads each answer on its own thread, so the figures are
// the protocols' and the server's, not a client library's. One server worker, batching up to 64
// with no waiting; the HTTP and gRPC front ends have a thread per client (HttpOptions::threads =
// 64: a kept-alive connection holds its thread; GrpcOptions::threads = 64: a request holds its
// thread until answered). Each gRPC client has its own channel (HTTP/2 connection).
constexpr std::size_t kSplit = 2;
const wire::ModelIdentity kId = model_id(kSplit);

// One client's connection and its pre-encoded request, for one protocol:
// 0 = native TCP (INFER frame, raw fp32 features), 1 = OIP JSON, 2 = OIP binary data extension,
// 3 = OIP gRPC (raw_input_contents).
class Client {
 public:
  Client(int protocol, std::uint16_t native_port, std::uint16_t http_port, std::uint16_t grpc_port,
         const Tensor<float>& features)
      : protocol_(protocol) {
    if (protocol == 0) {
      tcp_ = std::make_unique<TcpTransport>(TcpTransport::connect("127.0.0.1", native_port));
      std::vector<std::byte> hello;
      wire::encode_hello(hello, kId, 0, {});
      tcp_->send(hello, no_deadline);
      Message m;
      if (!tcp_->receive(no_deadline, m) || wire::peek(m.view()).type != wire::MessageType::hello) std::abort();
      CodecConfig cfg;
      cfg.bits = wire::raw_f32_bits;
      FeatureCodec codec(cfg);
      wire::encode_infer(frame_, 1, {kId.model_id, kId.split, 0}, codec, features.cview());
      return;
    }
#if EDGESPLIT_HAS_GRPC
    if (protocol == 3) {
      grpc_ = std::make_unique<OipGrpcClient>("127.0.0.1:" + std::to_string(grpc_port));
      wire::oip::ModelInferRequest q;
      q.model_name = kId.model_id;
      q.model_version = std::to_string(kId.split);
      auto& in = q.inputs.emplace_back();
      in.name = "features";
      in.datatype = "FP32";
      in.shape = {1, static_cast<std::int64_t>(features.size())};
      wire::oip::write_fp32(features.span(), q.raw_input_contents.emplace_back(features.size() * sizeof(float)).data());
      wire::oip::encode(q, frame_);
      return;
    }
#else
    (void)grpc_port;
#endif
    http_ = std::make_unique<httplib::Client>("127.0.0.1", http_port);
    http_->set_keep_alive(true);
    http_->set_tcp_nodelay(true);  // else each body waits for the server's delayed ACK: ~40 ms a request
    http_->set_read_timeout(30, 0);
    const std::string dims = "[1," + std::to_string(features.size()) + "]";
    if (protocol == 1) {
      body_ = R"({"inputs":[{"name":"features","datatype":"FP32","shape":)" + dims + R"(,"data":[)";
      for (std::size_t i = 0; i < features.size(); ++i) {
        if (i) body_ += ',';
        body_ += std::to_string(features[i]);
      }
      body_ += "]}]}";
      type_ = "application/json";
    } else {
      const std::size_t bytes = features.size() * sizeof(float);
      body_ = R"({"inputs":[{"name":"features","datatype":"FP32","shape":)" + dims +
              R"(,"parameters":{"binary_data_size":)" + std::to_string(bytes) +
              R"(}}],"parameters":{"binary_data_output":true}})";
      header_length_ = std::to_string(body_.size());
      body_.resize(body_.size() + bytes);
      std::memcpy(body_.data() + body_.size() - bytes, features.data(), bytes);  // little-endian hosts
      type_ = "application/octet-stream";
    }
  }

  // One request and its answer; aborts on anything but a successful answer.
  void round_trip() {
    if (protocol_ == 0) {
      tcp_->send(frame_, no_deadline);
      if (!tcp_->receive(no_deadline, reply_) || wire::peek(reply_.view()).type != wire::MessageType::response) std::abort();
      return;
    }
#if EDGESPLIT_HAS_GRPC
    if (protocol_ == 3) {
      const grpc::Status st = grpc_->call_raw(wire::oip::method::model_infer, frame_, reply_.bytes);
      if (!st.ok()) {
        std::fprintf(stderr, "BM_Protocol: gRPC %d %s\n", static_cast<int>(st.error_code()), st.error_message().c_str());
        std::abort();
      }
      return;
    }
#endif
    httplib::Headers headers;
    if (protocol_ == 2) headers.emplace("Inference-Header-Content-Length", header_length_);
    auto r = http_->Post("/v2/models/fmnist-mlp/versions/2/infer", headers, body_, type_.c_str());
    if (!r || r->status != 200) {
      std::fprintf(stderr, "BM_Protocol: %s\n", r ? (std::to_string(r->status) + " " + r->body).c_str()
                                                   : httplib::to_string(r.error()).c_str());
      std::abort();
    }
  }

 private:
  int protocol_;
  std::unique_ptr<TcpTransport> tcp_;
  std::vector<std::byte> frame_;
  Message reply_;
  std::unique_ptr<httplib::Client> http_;
  std::string body_, type_, header_length_;
#if EDGESPLIT_HAS_GRPC
  std::unique_ptr<OipGrpcClient> grpc_;
#endif
};

// state.range(0): protocol (above); range(1): clients.
void BM_Protocol(benchmark::State& state) {
  const int protocol = static_cast<int>(state.range(0));
  const auto clients = static_cast<std::size_t>(state.range(1));
  const std::size_t per_client = requests_per_client(clients);
  auto [head, tail] = cloud_mlp().split(kSplit);
  ServerOptions so;
  so.workers = 1;
  so.max_batch = 64;
  so.max_queue_delay = std::chrono::microseconds(0);
  so.queue_capacity = 4096;
  CloudServer server(so);
  server.register_model(kId, std::move(tail));
  auto listener = TcpListener::bind("127.0.0.1", 0);
  const std::uint16_t native_port = listener.port();
  server.listen(std::move(listener));
  HttpOptions ho;
  ho.threads = 64;
  OipHttpServer http(server, "127.0.0.1", 0, ho);
  std::uint16_t grpc_port = 0;
#if EDGESPLIT_HAS_GRPC
  GrpcOptions go;
  go.threads = 64;
  OipGrpcServer grpc_front(server, "127.0.0.1", 0, go);
  grpc_port = grpc_front.port();
#endif

  const Tensor<float> features = head.predict(Tensor<float>(Shape{1, 784}, 0.5f).cview());
  std::vector<std::unique_ptr<Client>> ends;
  for (std::size_t c = 0; c < clients; ++c)
    ends.push_back(std::make_unique<Client>(protocol, native_port, http.port(), grpc_port, features));
  for (auto& e : ends) e->round_trip();  // connected and warm

  const auto batches0 = server.stats().batches;
  const auto responses0 = server.stats().responses;
  const double cpu0 = process_cpu_us();
  const std::size_t done = closed_loop(state, clients, per_client, [&](std::size_t c) { ends[c]->round_trip(); });
  state.counters["cpu_us"] = (process_cpu_us() - cpu0) / double(done);
  state.SetItemsProcessed(static_cast<std::int64_t>(done));
  const auto st = server.stats();
  state.counters["mean_batch"] =
      st.batches > batches0 ? double(st.responses - responses0) / double(st.batches - batches0) : 0;
}

#endif  // EDGESPLIT_HAS_HTTP

}  // namespace

BENCHMARK(BM_InProcRoundTrip)->ArgName("path")->DenseRange(0, 2)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_TailForward)
    ->ArgNames({"batch", "split", "packed"})
    ->ArgsProduct({{1, 16, 32, 64}, {0, 2}, {0, 1}})->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_ServerRaw)
    ->ArgNames({"clients", "batching", "split", "workers"})
    ->ArgsProduct({{1, 8, 64}, {0, 1, 2}, {0, 2}, {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Server)
    ->ArgNames({"clients", "batching", "split", "conn"})
    ->ArgsProduct({{1, 8, 64}, {0, 1, 2}, {0, 2}, {0, 1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

#if EDGESPLIT_HAS_HTTP
BENCHMARK(BM_Protocol)
    ->ArgNames({"protocol", "clients"})
#if EDGESPLIT_HAS_GRPC
    ->ArgsProduct({{0, 1, 2, 3}, {1, 64}})
#else
    ->ArgsProduct({{0, 1, 2}, {1, 64}})
#endif
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
#endif

BENCHMARK_MAIN();
