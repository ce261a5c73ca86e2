// The Open Inference Protocol front end, health routes and Prometheus metrics
// (runtime/oip_http.hpp, runtime/metrics.hpp): every route, JSON and binary inference against the
// tail run locally, a graph tail of two inputs, every bad request, the memory budget, and a
// scrape checked against the exposition format. Loopback only, ephemeral ports.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "edgesplit/edgesplit.hpp"
#include "edgesplit/runtime/cloud_server.hpp"
#include "model_fixtures.hpp"
#include "runtime_fixtures.hpp"
// Last: it includes httplib.h, which must come after Eigen (see the header).
#include "edgesplit/runtime/oip_http.hpp"

using namespace edgesplit;
using namespace edgesplit_test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

httplib::Client client(std::uint16_t port) {
  httplib::Client c("127.0.0.1", port);
  c.set_connection_timeout(5, 0);
  c.set_read_timeout(20, 0);
  c.set_write_timeout(20, 0);
  return c;
}

json parse(const std::string& body) { return json::parse(body, nullptr, false); }

// Whether `r` is the protocol's error object with `status`.
bool is_error(const httplib::Result& r, int status) {
  if (!r || r->status != status) return false;
  const json j = parse(r->body);
  return j.is_object() && j.contains("error") && j["error"].is_string() && !j["error"].get<std::string>().empty();
}

json tensor_json(const std::string& name, const Tensor<float>& t) {
  json shape = json::array();
  for (std::size_t d : t.shape().dims()) shape.push_back(d);
  json data = json::array();
  for (std::size_t i = 0; i < t.size(); ++i) data.push_back(t[i]);
  return json{{"name", name}, {"datatype", "FP32"}, {"shape", shape}, {"data", data}};
}

std::string raw_bytes(const Tensor<float>& t) {
  std::string s(t.size() * sizeof(float), '\0');
  std::memcpy(s.data(), t.data(), s.size());  // the test hosts are little-endian, as the extension
  return s;
}

// One HTTP exchange over a plain socket, for requests httplib's client will not send (a body
// announced but never sent). Reads until the server closes or 2 s of silence.
std::string raw_http(std::uint16_t port, const std::string& request) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  timeval tv{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  REQUIRE(::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size()));
  std::string out;
  char buf[4096];
  while (true) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
    if (out.find("\r\n\r\n") != std::string::npos) {
      // Content-Length of the answer: stop once it has all arrived.
      const std::smatch m = [&] {
        std::smatch mm;
        std::regex_search(out, mm, std::regex("Content-Length: ([0-9]+)", std::regex::icase));
        return mm;
      }();
      if (!m.empty() && out.size() >= out.find("\r\n\r\n") + 4 + std::stoul(m[1].str())) break;
    }
  }
  ::close(fd);
  return out;
}

// A checker of the Prometheus text format 0.0.4, strict enough to catch what a scraper rejects:
// every sample belongs to a family declared by # TYPE before it, names and label names are
// valid, label values are quoted with valid escapes, values parse; a histogram's buckets are
// cumulative, end with le="+Inf", and that bucket equals _count. Returns every sample as
// "name{labels}" -> value.
std::map<std::string, double> check_exposition(const std::string& text) {
  std::map<std::string, std::string> types;
  std::map<std::string, double> samples;
  const std::regex metric_name("[a-zA-Z_:][a-zA-Z0-9_:]*");
  const std::regex label_name("[a-zA-Z_][a-zA-Z0-9_]*");
  std::size_t at = 0;
  REQUIRE(!text.empty());
  REQUIRE(text.back() == '\n');
  std::map<std::string, std::vector<double>> buckets;  // histogram series -> bucket values in order
  std::map<std::string, std::string> last_le;
  while (at < text.size()) {
    const std::size_t nl = text.find('\n', at);
    const std::string line = text.substr(at, nl - at);
    at = nl + 1;
    INFO(line);
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::smatch m;
      if (std::regex_match(line, m, std::regex("# (HELP|TYPE) ([^ ]+) (.*)"))) {
        REQUIRE(std::regex_match(m[2].str(), metric_name));
        if (m[1] == "TYPE") {
          REQUIRE((m[3] == "counter" || m[3] == "gauge" || m[3] == "histogram" || m[3] == "summary" || m[3] == "untyped"));
          REQUIRE(types.count(m[2].str()) == 0);  // one TYPE per family
          types[m[2].str()] = m[3].str();
        }
      }
      continue;
    }
    // name, optional {labels}, space, value
    std::size_t p = 0;
    while (p < line.size() && line[p] != '{' && line[p] != ' ') ++p;
    const std::string name = line.substr(0, p);
    REQUIRE(std::regex_match(name, metric_name));
    std::string labels, le;
    if (p < line.size() && line[p] == '{') {
      ++p;
      while (true) {
        REQUIRE(p < line.size());
        if (line[p] == '}') {
          ++p;
          break;
        }
        const std::size_t eq = line.find('=', p);
        REQUIRE(eq != std::string::npos);
        const std::string lname = line.substr(p, eq - p);
        REQUIRE(std::regex_match(lname, label_name));
        REQUIRE(line.at(eq + 1) == '"');
        std::string value;
        std::size_t q = eq + 2;
        for (;; ++q) {
          REQUIRE(q < line.size());
          if (line[q] == '\\') {
            ++q;
            REQUIRE(q < line.size());
            REQUIRE((line[q] == '\\' || line[q] == '"' || line[q] == 'n'));
            value += line[q] == 'n' ? '\n' : line[q];
          } else if (line[q] == '"') {
            break;
          } else {
            value += line[q];
          }
        }
        if (lname == "le") le = value;
        else labels += (labels.empty() ? "" : ",") + lname + "=" + value;
        p = q + 1;
        if (line.at(p) == ',') ++p;
      }
    }
    REQUIRE(p < line.size());
    REQUIRE(line[p] == ' ');
    const std::string v = line.substr(p + 1);
    std::size_t used = 0;
    const double value = v == "+Inf" ? INFINITY : v == "-Inf" ? -INFINITY : std::stod(v, &used);
    if (v != "+Inf" && v != "-Inf") REQUIRE(used == v.size());
    // The family: the name itself, or a histogram's name_bucket / _sum / _count.
    std::string family = name;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string s = suffix;
      if (!types.count(family) && name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0 &&
          types.count(name.substr(0, name.size() - s.size())) && types[name.substr(0, name.size() - s.size())] == "histogram")
        family = name.substr(0, name.size() - s.size());
    }
    REQUIRE(types.count(family) == 1);
    if (types[family] == "counter") REQUIRE(value >= 0);
    if (types[family] == "histogram" && name == family + "_bucket") {
      REQUIRE(!le.empty());
      auto& b = buckets[family + "{" + labels + "}"];
      if (!b.empty()) REQUIRE(value >= b.back());  // cumulative
      b.push_back(value);
      last_le[family + "{" + labels + "}"] = le;
    }
    if (types[family] == "histogram" && name == family + "_count") {
      const std::string key = family + "{" + labels + "}";
      REQUIRE(last_le[key] == "+Inf");
      REQUIRE(buckets[key].back() == value);
    }
    const std::string key = name + "{" + labels + (le.empty() ? "" : (labels.empty() ? "" : ",") + std::string("le=") + le) + "}";
    REQUIRE(samples.count(key) == 0);  // no duplicate series
    samples[key] = value;
  }
  return samples;
}

double metric(const std::map<std::string, double>& m, const std::string& key) {
  const auto it = m.find(key);
  return it == m.end() ? 0.0 : it->second;
}

}  // namespace

TEST_CASE("Metrics writer: escaped labels, histograms, and a checker that reads them back", "[http][metrics]") {
  MetricsWriter w;
  w.family("t_requests_total", "counter", "Requests\nby model");
  w.sample("t_requests_total", {{"model", "a\"b\\c\nd"}, {"code", "ok"}}, std::uint64_t{3});
  w.family("t_seconds", "gauge", "A real number");
  w.sample("t_seconds", {}, 0.25);
  DurationHistogram h;
  h.observe(10);
  h.observe(70);
  h.observe(99'999'999);
  w.family("t_duration_microseconds", "histogram", "Durations");
  w.histogram("t_duration_microseconds", {{"model", "m"}}, h.snapshot());
  const auto m = check_exposition(w.text());
  CHECK(metric(m, "t_requests_total{model=a\"b\\c\nd,code=ok}") == 3);
  CHECK(metric(m, "t_seconds{}") == 0.25);
  CHECK(metric(m, "t_duration_microseconds_bucket{model=m,le=50}") == 1);
  CHECK(metric(m, "t_duration_microseconds_bucket{model=m,le=100}") == 2);
  CHECK(metric(m, "t_duration_microseconds_bucket{model=m,le=+Inf}") == 3);
  CHECK(metric(m, "t_duration_microseconds_count{model=m}") == 3);
  CHECK(metric(m, "t_duration_microseconds_sum{model=m}") == 10 + 70 + 99'999'999.0);
}

TEST_CASE("OIP routes: health, server and model metadata, readiness", "[http]") {
  CloudServer server(small_server_options());
  OipHttpServer http(server, "127.0.0.1", 0);
  auto c = client(http.port());

  auto live = c.Get("/v2/health/live");
  REQUIRE(live);
  CHECK(live->status == 200);
  CHECK(parse(live->body)["live"] == true);
  auto ready = c.Get("/v2/health/ready");
  REQUIRE(ready);
  CHECK(ready->status == 503);  // no model yet

  const Split s = make_split();
  server.register_model(kModel, s.tail);
  server.register_model({"toy", 1, 0, 1}, s.whole.split(1).second);
  ready = c.Get("/v2/health/ready");
  REQUIRE(ready);
  CHECK(ready->status == 200);
  CHECK(parse(ready->body)["ready"] == true);

  auto meta = c.Get("/v2");
  REQUIRE(meta);
  CHECK(meta->status == 200);
  const json sm = parse(meta->body);
  CHECK(sm["name"] == "edgesplit");
  CHECK(sm["version"].is_string());
  CHECK(sm["extensions"] == json::array({"binary_tensor_data"}));

  auto model = c.Get("/v2/models/toy/versions/2");
  REQUIRE(model);
  REQUIRE(model->status == 200);
  const json mm = parse(model->body);
  CHECK(mm["name"] == "toy");
  CHECK(mm["versions"] == json::array({"1", "2"}));
  CHECK(mm["inputs"] == json::array({json{{"name", "features"}, {"datatype", "FP32"}, {"shape", {-1, kHidden}}}}));
  CHECK(mm["outputs"] == json::array({json{{"name", "output"}, {"datatype", "FP32"}, {"shape", {-1, kOut}}}}));
  // Without a version: the lowest split, 1 (ReLU, then Dense 16 -> 12: it takes 16 features too).
  auto lowest = c.Get("/v2/models/toy");
  REQUIRE(lowest);
  REQUIRE(lowest->status == 200);
  CHECK(parse(lowest->body)["inputs"][0]["shape"] == json::array({-1, kHidden}));

  auto mr = c.Get("/v2/models/toy/versions/2/ready");
  REQUIRE(mr);
  CHECK(mr->status == 200);
  CHECK(parse(mr->body)["ready"] == true);
  CHECK(c.Get("/v2/models/toy/ready")->status == 200);

  CHECK(is_error(c.Get("/v2/models/nope"), 404));
  CHECK(is_error(c.Get("/v2/models/nope/ready"), 404));
  CHECK(is_error(c.Get("/v2/models/toy/versions/7"), 404));
  CHECK(is_error(c.Get("/v2/models/toy/versions/x1"), 404));
  CHECK(is_error(c.Get("/v2/models/toy/versions/99999999"), 404));
  CHECK(is_error(c.Get("/v3/nothing"), 404));

  server.shutdown(0ms);
  CHECK(c.Get("/v2/health/live")->status == 503);
  CHECK(c.Get("/v2/health/ready")->status == 503);
}

TEST_CASE("OIP inference: JSON and binary answers equal the tail run locally, bit for bit", "[http]") {
  CloudServer server(small_server_options());
  Split s = make_split();
  server.register_model(kModel, s.tail);
  OipHttpServer http(server, "127.0.0.1", 0);
  auto c = client(http.port());
  const std::string path = "/v2/models/toy/versions/2/infer";

  {
    const std::size_t batch = GENERATE(std::size_t{1}, std::size_t{3});
    INFO("batch " << batch);
    const Tensor<float> x = random_input(batch, kHidden, 100 + batch);
    const Tensor<float> want = s.tail.predict(x.cview());
    const auto same = [&](const json& out) {
      REQUIRE(out["name"] == "output");
      REQUIRE(out["datatype"] == "FP32");
      REQUIRE(out["shape"] == json::array({batch, kOut}));
      REQUIRE(out["data"].size() == want.size());
      for (std::size_t i = 0; i < want.size(); ++i) CHECK(out["data"][i].get<float>() == want[i]);
    };

    SECTION("JSON in, JSON out, id echoed") {
      json req{{"id", "req-7"}, {"inputs", json::array({tensor_json("features", x)})}};
      auto r = c.Post(path, req.dump(), "application/json");
      REQUIRE(r);
      INFO(r->body);
      REQUIRE(r->status == 200);
      const json a = parse(r->body);
      CHECK(a["model_name"] == "toy");
      CHECK(a["model_version"] == "2");
      CHECK(a["id"] == "req-7");
      same(a["outputs"][0]);
    }
    SECTION("JSON data nested as the shape, on the route without a version") {
      json t = tensor_json("features", x);
      json nested = json::array();
      for (std::size_t b = 0; b < batch; ++b) {
        json row = json::array();
        for (std::size_t i = 0; i < kHidden; ++i) row.push_back(x[b * kHidden + i]);
        nested.push_back(row);
      }
      t["data"] = nested;
      auto r = c.Post("/v2/models/toy/infer", json{{"inputs", json::array({t})}}.dump(), "application/json");
      REQUIRE(r);
      REQUIRE(r->status == 200);
      same(parse(r->body)["outputs"][0]);
    }
    SECTION("binary in, binary out") {
      json t = tensor_json("features", x);
      t.erase("data");
      t["parameters"] = json{{"binary_data_size", x.size() * 4}};
      const std::string header =
          json{{"inputs", json::array({t})}, {"outputs", json::array({json{{"name", "output"}, {"parameters", {{"binary_data", true}}}}})}}
              .dump();
      httplib::Headers h{{"Inference-Header-Content-Length", std::to_string(header.size())}};
      auto r = c.Post(path, h, header + raw_bytes(x), "application/octet-stream");
      REQUIRE(r);
      INFO(r->body);
      REQUIRE(r->status == 200);
      REQUIRE(r->has_header("Inference-Header-Content-Length"));
      const std::size_t hl = std::stoul(r->get_header_value("Inference-Header-Content-Length"));
      REQUIRE(hl <= r->body.size());
      const json a = parse(r->body.substr(0, hl));
      const json& out = a["outputs"][0];
      CHECK(out["shape"] == json::array({batch, kOut}));
      REQUIRE(out["parameters"]["binary_data_size"] == want.size() * 4);
      REQUIRE(r->body.size() - hl == want.size() * 4);
      CHECK(std::memcmp(r->body.data() + hl, want.data(), want.size() * 4) == 0);  // bit for bit
    }
    SECTION("binary in, JSON out; JSON in, binary out (binary_data_output)") {
      json t = tensor_json("features", x);
      t.erase("data");
      t["parameters"] = json{{"binary_data_size", x.size() * 4}};
      const std::string header = json{{"inputs", json::array({t})}}.dump();
      auto r = c.Post(path, httplib::Headers{{"Inference-Header-Content-Length", std::to_string(header.size())}},
                      header + raw_bytes(x), "application/octet-stream");
      REQUIRE(r);
      REQUIRE(r->status == 200);
      same(parse(r->body)["outputs"][0]);

      json req{{"inputs", json::array({tensor_json("features", x)})}, {"parameters", {{"binary_data_output", true}}}};
      auto b = c.Post(path, req.dump(), "application/json");
      REQUIRE(b);
      REQUIRE(b->status == 200);
      const std::size_t hl = std::stoul(b->get_header_value("Inference-Header-Content-Length"));
      REQUIRE(b->body.size() - hl == want.size() * 4);
      CHECK(std::memcmp(b->body.data() + hl, want.data(), want.size() * 4) == 0);
    }
  }
  CHECK(server.stats().memory_in_use == 0);
}

TEST_CASE("OIP inference on a graph tail of two inputs: one OIP input per tensor, by name", "[http][graph]") {
  Graph<float> whole = two_branch_graph(5);
  const wire::ModelIdentity id{"branches", 1, 0, 2};
  auto [head, tail] = whole.split(id.split);
  REQUIRE(tail.input_names() == std::vector<std::string>{"a", "b"});
  CloudServer server(small_server_options());
  server.register_model(id, tail);
  OipHttpServer http(server, "127.0.0.1", 0);
  auto c = client(http.port());

  auto meta = c.Get("/v2/models/branches/versions/2");
  REQUIRE(meta);
  REQUIRE(meta->status == 200);
  const json mm = parse(meta->body);
  CHECK(mm["inputs"] == json::array({json{{"name", "a"}, {"datatype", "FP32"}, {"shape", {-1, 3}}},
                                     json{{"name", "b"}, {"datatype", "FP32"}, {"shape", {-1, 3}}}}));
  CHECK(mm["outputs"][0]["name"] == "y");
  CHECK(mm["outputs"][0]["shape"] == json::array({-1, 2}));

  const Tensor<float> a = random_input(2, 3, 1), b = random_input(2, 3, 2);
  Tensor<float> want(Shape{2, 2});
  const std::array<TensorView<const float>, 2> in{a.cview(), b.cview()};
  tail.forward(in, std::array{want.view()});
  // b before a: OIP inputs are matched by name, not by place
  json req{{"inputs", json::array({tensor_json("b", b), tensor_json("a", a)})}};
  auto r = c.Post("/v2/models/branches/versions/2/infer", req.dump(), "application/json");
  REQUIRE(r);
  INFO(r->body);
  REQUIRE(r->status == 200);
  const json out = parse(r->body)["outputs"][0];
  CHECK(out["name"] == "y");
  CHECK(out["shape"] == json::array({2, 2}));
  for (std::size_t i = 0; i < want.size(); ++i) CHECK(out["data"][i].get<float>() == want[i]);

  // binary, a then b
  json ta = tensor_json("a", a), tb = tensor_json("b", b);
  ta.erase("data");
  tb.erase("data");
  ta["parameters"] = json{{"binary_data_size", 24}};
  tb["parameters"] = json{{"binary_data_size", 24}};
  const std::string header = json{{"inputs", json::array({ta, tb})}}.dump();
  auto rb = c.Post("/v2/models/branches/versions/2/infer",
                   httplib::Headers{{"Inference-Header-Content-Length", std::to_string(header.size())}},
                   header + raw_bytes(a) + raw_bytes(b), "application/octet-stream");
  REQUIRE(rb);
  REQUIRE(rb->status == 200);
  const json outb = parse(rb->body)["outputs"][0];
  for (std::size_t i = 0; i < want.size(); ++i) CHECK(outb["data"][i].get<float>() == want[i]);

  CHECK(is_error(c.Post("/v2/models/branches/versions/2/infer", json{{"inputs", json::array({tensor_json("a", a)})}}.dump(),
                        "application/json"),
                 400));  // one of two
  CHECK(is_error(c.Post("/v2/models/branches/versions/2/infer",
                        json{{"inputs", json::array({tensor_json("a", a), tensor_json("a", a)})}}.dump(), "application/json"),
                 400));  // the same twice
  const Tensor<float> b3 = random_input(3, 3, 3);
  CHECK(is_error(c.Post("/v2/models/branches/versions/2/infer",
                        json{{"inputs", json::array({tensor_json("a", a), tensor_json("b", b3)})}}.dump(), "application/json"),
                 400));  // batches differ
}

TEST_CASE("Bad OIP requests: the error object with 400 or 404, and the server keeps serving", "[http]") {
  CloudServer server(small_server_options());
  Split s = make_split();
  server.register_model(kModel, s.tail);
  OipHttpServer http(server, "127.0.0.1", 0);
  auto c = client(http.port());
  const std::string path = "/v2/models/toy/versions/2/infer";
  const Tensor<float> x = random_input(1, kHidden, 3);
  const json good = tensor_json("features", x);
  const auto with = [&](const char* key, json value) {
    json t = good;
    t[key] = std::move(value);
    return json{{"inputs", json::array({t})}}.dump();
  };
  const auto post = [&](const std::string& body) { return c.Post(path, body, "application/json"); };

  CHECK(is_error(post("{not json"), 400));
  CHECK(is_error(post("[1, 2]"), 400));
  CHECK(is_error(post("{}"), 400));
  CHECK(is_error(post(R"({"inputs": []})"), 400));
  CHECK(is_error(post(R"({"inputs": [7]})"), 400));
  CHECK(is_error(post(R"({"inputs": [{"name": "features"}]})"), 400));
  CHECK(is_error(post(with("datatype", "INT32")), 400));
  CHECK(is_error(post(with("datatype", "FP64")), 400));
  CHECK(is_error(post(with("name", "pixels")), 400));
  CHECK(is_error(post(with("shape", json::array({1, kHidden - 1}))), 400));   // the model's shape differs
  CHECK(is_error(post(with("shape", json::array({kHidden}))), 400));          // no batch dimension
  CHECK(is_error(post(with("shape", json::array({0, kHidden}))), 400));       // an empty batch
  CHECK(is_error(post(with("shape", json::array({-1, kHidden}))), 400));
  CHECK(is_error(post(with("shape", json::array({1.5, kHidden}))), 400));
  CHECK(is_error(post(with("shape", json::array({2, kHidden}))), 400));       // data for one row only
  CHECK(is_error(post(with("shape", json::array({1, 2, 3, 4, 5, 6, 7, 8, 9}))), 400));  // rank over 8
  CHECK(is_error(post(with("shape", json::array({4294967295u, 4294967295u, 4294967295u}))), 400));  // overflows
  CHECK(is_error(post(with("shape", json::array({1u << 30, kHidden}))), 400));  // over the element cap
  CHECK(is_error(post(with("data", json::array({1, 2, 3}))), 400));
  CHECK(is_error(post(with("data", "sixteen floats")), 400));
  CHECK(is_error(post(with("data", json::array({"1"}))), 400));
  json too_big = good["data"];
  too_big[0] = 1e39;  // not an FP32
  CHECK(is_error(post(with("data", too_big)), 400));
  CHECK(is_error(post(with("data", json::array({json::array({json::array({1.0})})}))), 400));  // nested deeper than the shape
  CHECK(is_error(post(with("parameters", json{{"binary_data_size", 64}})), 400));  // data and binary both
  CHECK(is_error(post(json{{"inputs", json::array({good})}, {"id", 7}}.dump()), 400));
  CHECK(is_error(post(json{{"inputs", json::array({good})}, {"outputs", json::array({json{{"name", "logits"}}})}}.dump()), 400));
  CHECK(is_error(post(json{{"inputs", json::array({good})}, {"parameters", {{"binary_data_output", "yes"}}}}.dump()), 400));
  CHECK(is_error(c.Post("/v2/models/nope/infer", with("name", "features"), "application/json"), 404));
  CHECK(is_error(c.Post("/v2/models/toy/versions/3/infer", with("name", "features"), "application/json"), 404));

  // The binary extension.
  json t = good;
  t.erase("data");
  t["parameters"] = json{{"binary_data_size", x.size() * 4}};
  const std::string header = json{{"inputs", json::array({t})}}.dump();
  const auto binary = [&](const std::string& hl, const std::string& body) {
    return c.Post(path, httplib::Headers{{"Inference-Header-Content-Length", hl}}, body, "application/octet-stream");
  };
  CHECK(binary(std::to_string(header.size()), header + raw_bytes(x))->status == 200);
  CHECK(is_error(binary(std::to_string(header.size()), header + raw_bytes(x).substr(0, 60)), 400));  // truncated
  CHECK(is_error(binary(std::to_string(header.size()), header + raw_bytes(x) + "xx"), 400));  // bytes of no input
  CHECK(is_error(binary(std::to_string(header.size() + 1000), header + raw_bytes(x)), 400));  // header past the body
  CHECK(is_error(binary("-5", header + raw_bytes(x)), 400));
  CHECK(is_error(binary("12abc", header + raw_bytes(x)), 400));
  CHECK(is_error(binary(std::to_string(header.size() - 3), header + raw_bytes(x)), 400));  // cut JSON
  json lying = t;
  lying["parameters"]["binary_data_size"] = 32;  // the shape takes 64
  const std::string lh = json{{"inputs", json::array({lying})}}.dump();
  CHECK(is_error(binary(std::to_string(lh.size()), lh + raw_bytes(x)), 400));
  json huge = t;
  huge["shape"] = json::array({1u << 20, kHidden});
  huge["parameters"]["binary_data_size"] = std::uint64_t{1u << 20} * kHidden * 4;
  const std::string hh = json{{"inputs", json::array({huge})}}.dump();
  CHECK(is_error(binary(std::to_string(hh.size()), hh + raw_bytes(x)), 400));

  // Still serving, nothing held.
  auto r = post(json{{"inputs", json::array({good})}}.dump());
  REQUIRE(r);
  CHECK(r->status == 200);
  CHECK(server.stats().memory_in_use == 0);
  CHECK(server.stats().ready);
}

TEST_CASE("OIP requests declaring huge sizes hold nothing beyond the memory budget", "[http]") {
  ServerOptions o = small_server_options();  // 2 MiB budget, 1 MiB frames
  CloudServer server(o);
  Split s = make_split();
  server.register_model(kModel, s.tail);
  HttpOptions ho;
  ho.max_body_bytes = std::size_t{8} << 20;  // above the budget: the budget must refuse
  OipHttpServer http(server, "127.0.0.1", 0, ho);
  const std::uint16_t port = http.port();

  // A body over the cap, announced and never sent: 413 before a byte is read.
  const std::string over = raw_http(port, "POST /v2/models/toy/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                          "Content-Length: 1000000000000\r\n\r\n");
  CHECK(over.rfind("HTTP/1.1 413", 0) == 0);
  // Within the cap but over the budget: 503 before the body is kept (it is read past).
  const std::string body(std::size_t{3} << 20, ' ');
  auto c = client(port);
  CHECK(is_error(c.Post("/v2/models/toy/infer", body, "application/json"), 503));
  // A JSON text whose parsed document could pass the budget: refused before parsing.
  CHECK(is_error(c.Post("/v2/models/toy/infer", std::string(std::size_t{100} << 10, ' ') + "{}", "application/json"), 503));
  // A huge declared shape with a little data: refused from the shape.
  const std::string huge =
      R"({"inputs":[{"name":"features","datatype":"FP32","shape":[4294967295,4294967295],"data":[1,2,3]}]})";
  CHECK(is_error(c.Post("/v2/models/toy/infer", huge, "application/json"), 400));
  CHECK(server.stats().memory_peak <= o.memory_budget);
  CHECK(server.stats().memory_in_use == 0);
  CHECK(c.Post("/v2/models/toy/infer", json{{"inputs", json::array({tensor_json("features", random_input(1, kHidden, 1))})}}.dump(),
               "application/json")
            ->status == 200);
}

TEST_CASE("OIP requests share the batcher's limits with native ones: a full queue answers 503", "[http]") {
  ServerOptions o = small_server_options();
  o.queue_capacity = 2;
  o.max_batch = 1;
  CloudServer server(o);
  Gate gate;  // the first request holds the worker until the gate opens
  server.register_model(kModel, gate.gated(make_split().tail));
  OipHttpServer http(server, "127.0.0.1", 0);
  const std::string req = json{{"inputs", json::array({tensor_json("features", random_input(1, kHidden, 9))})}}.dump();
  std::vector<int> status(3, 0);
  std::vector<std::thread> senders;
  const auto send = [&](std::size_t i) {
    auto c = client(http.port());
    auto r = c.Post("/v2/models/toy/infer", req, "application/json");
    status[i] = r ? r->status : -1;
  };
  senders.emplace_back(send, 0);
  REQUIRE(gate.wait_entered());  // the worker holds the first (a bounded wait, no timing asserted)
  senders.emplace_back(send, 1);
  senders.emplace_back(send, 2);
  for (int i = 0; i < 2000 && server.stats().queue_depth < 2; ++i) std::this_thread::sleep_for(5ms);
  REQUIRE(server.stats().queue_depth == 2);  // the queue is full
  auto c = client(http.port());
  auto refused = c.Post("/v2/models/toy/infer", req, "application/json");
  CHECK(is_error(refused, 503));
  gate.open();
  for (auto& t : senders) t.join();
  CHECK(status == std::vector<int>{200, 200, 200});
  CHECK(server.stats().memory_in_use == 0);
}

TEST_CASE("/metrics parses as Prometheus text and its counters move as requests are served", "[http][metrics]") {
  CloudServer server(small_server_options());
  Split s = make_split();
  server.register_model(kModel, s.tail);
  OipHttpServer http(server, "127.0.0.1", 0);
  auto c = client(http.port());
  const auto scrape = [&] {
    auto r = c.Get("/metrics");
    REQUIRE(r);
    REQUIRE(r->status == 200);
    CHECK(r->get_header_value("Content-Type").rfind("text/plain; version=0.0.4", 0) == 0);
    return check_exposition(r->body);
  };
  const auto before = scrape();
  const std::string model = "model=toy,version=2";
  CHECK(metric(before, "edgesplit_requests_total{" + model + ",code=ok}") == 0);
  CHECK(metric(before, "edgesplit_memory_budget_bytes{}") == static_cast<double>(small_server_options().memory_budget));
  CHECK(before.count("edgesplit_request_duration_microseconds_count{" + model + "}") == 1);
  CHECK(before.count("edgesplit_connections_open{}") == 1);

  const std::string path = "/v2/models/toy/versions/2/infer";
  for (std::size_t batch : {1, 3})
    REQUIRE(c.Post(path, json{{"inputs", json::array({tensor_json("features", random_input(batch, kHidden, batch))})}}.dump(),
                   "application/json")
                ->status == 200);
  // A request the front end refuses itself (no inputs): an HTTP 400, not a model's request.
  REQUIRE(c.Post(path, "{}", "application/json")->status == 400);
  // A request the tail answers ERROR: features so large that its outputs overflow.
  const Tensor<float> hot(Shape{1, kHidden}, 3e38f);
  const auto overflow = c.Post(path, json{{"inputs", json::array({tensor_json("features", hot)})}}.dump(), "application/json");
  CHECK(is_error(overflow, 400));
  // A native request through an in-process connection counts in the same series.
  {
    EdgeOptions eo = edge_options();
    EdgeClient edge(s.head, [&] { return server.connect_in_process(); }, eo);
    REQUIRE(edge.infer(random_input(1, kIn, 4).cview(), deadline_after(5s)).path == AnswerPath::cloud);
  }
  const auto after = scrape();
  CHECK(metric(after, "edgesplit_requests_total{" + model + ",code=ok}") == 3);
  CHECK(metric(after, "edgesplit_inferences_total{" + model + "}") == 5);
  CHECK(metric(after, "edgesplit_executions_total{" + model + "}") >= 1);
  CHECK(metric(after, "edgesplit_executions_total{" + model + "}") <= 4);  // the overflowing request ran too
  CHECK(metric(after, "edgesplit_request_duration_microseconds_count{" + model + "}") == 3);
  CHECK(metric(after, "edgesplit_queue_duration_microseconds_count{" + model + "}") == 3);
  CHECK(metric(after, "edgesplit_compute_duration_microseconds_count{" + model + "}") == 3);
  CHECK(metric(after, "edgesplit_http_requests_total{status=200}") - metric(before, "edgesplit_http_requests_total{status=200}") >= 3);
  CHECK(metric(after, "edgesplit_http_requests_total{status=400}") == 2);
  CHECK(metric(after, "edgesplit_requests_total{" + model + ",code=non_finite}") == 1);
  CHECK(metric(after, "edgesplit_http_received_bytes_total{}") > metric(before, "edgesplit_http_received_bytes_total{}"));
  CHECK(metric(after, "edgesplit_http_sent_bytes_total{}") > metric(before, "edgesplit_http_sent_bytes_total{}"));
  CHECK(metric(after, "edgesplit_memory_in_use_bytes{}") == 0);
  CHECK(metric(after, "edgesplit_memory_peak_bytes{}") > 0);
  CHECK(metric(after, "edgesplit_ready{}") == 1);
}

TEST_CASE("Edge metrics: answers by path, the link estimate and the connection, as Prometheus text", "[http][metrics]") {
  Split s = make_split();
  CloudServer server(small_server_options());
  server.register_model(kModel, s.tail);
  EdgeClient edge(s.head, [&] { return server.connect_in_process(); }, edge_options(), Fallback{s.tail, Fallback::Input::features});
  for (std::uint64_t i = 0; i < 3; ++i)
    REQUIRE(edge.infer(random_input(1, kIn, i).cview(), deadline_after(5s)).path == AnswerPath::cloud);
  const auto scrape = [&] {
    MetricsWriter w;
    write_edge_metrics(w, edge, "toy");
    return check_exposition(w.text());
  };
  const auto m = scrape();
  CHECK(metric(m, "edgesplit_edge_requests_total{model=toy,path=cloud}") == 3);
  CHECK(m.count("edgesplit_edge_requests_total{model=toy,path=fallback}") == 1);
  CHECK(metric(m, "edgesplit_edge_requests_total{model=toy,path=fallback}") == 0);
  CHECK(metric(m, "edgesplit_edge_submitted_total{model=toy}") == 3);
  CHECK(metric(m, "edgesplit_edge_connected{model=toy}") == 1);
  const LinkModel link = edge.link_estimate();
  CHECK(metric(m, "edgesplit_edge_link_uplink_bits_per_second{model=toy}") == link.uplink_bps);
  CHECK(metric(m, "edgesplit_edge_link_rtt_seconds{model=toy}") == link.rtt_s);
  CHECK(metric(m, "edgesplit_edge_weight_updates_total{model=toy,result=refused}") == 0);

  // The cloud goes away: the next request is answered by the fallback, and the gauge says so.
  server.shutdown(0ms);
  CHECK(edge.infer(random_input(1, kIn, 9).cview(), deadline_after(2s)).path == AnswerPath::fallback);
  const auto after = scrape();
  CHECK(metric(after, "edgesplit_edge_requests_total{model=toy,path=cloud}") == 3);
  CHECK(metric(after, "edgesplit_edge_requests_total{model=toy,path=fallback}") == 1);
  CHECK(metric(after, "edgesplit_edge_submitted_total{model=toy}") == 4);
  CHECK(metric(after, "edgesplit_edge_connected{model=toy}") == 0);
}

TEST_CASE("Duration histogram quantiles interpolate inside their bucket as Prometheus does", "[http][metrics]") {
  DurationHistogram h;
  CHECK(h.snapshot().quantile(0.5) == 0.0);  // no observations
  for (int i = 0; i < 100; ++i) h.observe(75);  // bucket (50, 100]
  const auto one = h.snapshot();
  CHECK(one.quantile(0.5) == Approx(75.0));   // 50 + 50 * 50/100
  CHECK(one.quantile(0.99) == Approx(99.5));  // 50 + 50 * 99/100
  for (int i = 0; i < 100; ++i) h.observe(20);  // bucket [0, 50]
  const auto two = h.snapshot();
  CHECK(two.quantile(0.25) == Approx(25.0));  // rank 50 of the 100 in [0, 50]
  CHECK(two.quantile(0.75) == Approx(75.0));  // rank 50 of the 100 in (50, 100]
  const auto later = two.since(one);          // the 100 observations of 20 µs alone
  CHECK(later.count() == 100);
  CHECK(later.sum_us == 2000);
  CHECK(later.quantile(0.5) == Approx(25.0));
  h.observe(60'000'000);  // past the last bound: +Inf, reported as the largest finite bound
  CHECK(h.snapshot().since(two).quantile(0.5) == Approx(static_cast<double>(duration_buckets_us.back())));
  auto sum = one;
  sum += later;
  CHECK(sum.count() == 200);
  CHECK(sum.quantile(0.75) == Approx(two.quantile(0.75)));
  CHECK_THROWS_AS(StatusHistory(CloudServer(small_server_options()), 0ms), error);
}

TEST_CASE("Status report: the last minute per model and summed, and a self-contained page", "[http][status]") {
  CloudServer server(small_server_options());
  Split s = make_split();
  server.register_model(kModel, s.tail);
  HttpOptions ho;
  ho.status_interval = 20ms;
  OipHttpServer http(server, "127.0.0.1", 0, ho);
  auto c = client(http.port());
  const auto status = [&] {
    auto r = c.Get("/status");
    REQUIRE(r);
    REQUIRE(r->status == 200);
    CHECK(r->get_header_value("Content-Type") == "application/json");
    return parse(r->body);
  };
  const json before = status();
  CHECK(before["server"]["name"] == "edgesplit");
  CHECK(before["server"]["ready"] == true);
  CHECK(before["now"]["requests_total"] == 0);
  CHECK(before["now"]["memory_budget"] == small_server_options().memory_budget);
  REQUIRE(before["models"].size() == 1);
  CHECK(before["models"][0]["name"] == "toy");
  CHECK(before["models"][0]["version"] == "2");

  const std::string path = "/v2/models/toy/versions/2/infer";
  for (std::size_t batch : {1, 2, 3})
    REQUIRE(c.Post(path, json{{"inputs", json::array({tensor_json("features", random_input(batch, kHidden, batch))})}}.dump(),
                   "application/json")
                ->status == 200);
  const Tensor<float> hot(Shape{1, kHidden}, 3e38f);  // answered ERROR non_finite by the tail
  CHECK(is_error(c.Post(path, json{{"inputs", json::array({tensor_json("features", hot)})}}.dump(), "application/json"), 400));
  std::this_thread::sleep_for(100ms);  // a few samples after the requests

  const json after = status();
  CHECK(after["now"]["requests_total"] == 4);
  CHECK(after["now"]["errors_total"] == 1);
  CHECK(after["now"]["http_requests"].get<std::uint64_t>() >= 5);
  const json& minute = after["last_minute"];
  CHECK(minute["requests"] == 4);
  CHECK(minute["errors"] == 1);
  CHECK(minute["requests_per_s"].get<double>() > 0);
  CHECK(minute["p50_us"].get<double>() > 0);
  CHECK(minute["p99_us"].get<double>() >= minute["p50_us"].get<double>());
  // Rows answered per forward pass: the refused request's pass ran too, its row is not counted.
  const double passes = after["models"][0]["executions"].get<double>();
  CHECK(passes >= 1);
  CHECK(passes <= 4);
  CHECK(minute["mean_batch"].get<double>() == Approx(6.0 / passes));
  CHECK(after["models"][0]["requests"] == 4);
  CHECK(after["models"][0]["inferences"] == 6);  // the refused request's row is not an inference
  CHECK(after["models"][0]["last_minute"]["requests"] == 4);
  // One series point per interval; every request falls in exactly one: rate x interval sums to 4.
  const json& z = after["series"];
  const std::size_t points = z["t_s"].size();
  CHECK(points >= 5);
  for (const char* k : {"requests_per_s", "errors_per_s", "p50_us", "p99_us", "mean_batch", "queue_depth", "memory_in_use",
                        "connections_open", "http_in_flight"})
    CHECK(z[k].size() == points);
  double counted = 0, previous = -after["window_s"].get<double>();
  for (std::size_t i = 0; i < points; ++i) {
    const double t = z["t_s"][i].get<double>();
    counted += z["requests_per_s"][i].get<double>() * (t - previous);
    previous = t;
  }
  CHECK(counted == Approx(4.0).epsilon(1e-9));
  CHECK(z["t_s"][points - 1].get<double>() == 0.0);

  auto page = c.Get("/");
  REQUIRE(page);
  CHECK(page->status == 200);
  CHECK(page->get_header_value("Content-Type") == "text/html; charset=utf-8");
  CHECK(page->body.find("fetch('/status'") != std::string::npos);
  // Self-contained: nothing loaded from elsewhere.
  CHECK(page->body.find("://") == std::string::npos);
  CHECK(page->body.find("src=") == std::string::npos);
  CHECK(page->body.find("href=") == std::string::npos);
  CHECK(page->body.find("@import") == std::string::npos);
}

namespace {
// Output of `command` (its stdout), run through the shell.
std::string run_output(const std::string& command) {
  std::string out;
  if (FILE* p = ::popen(command.c_str(), "r")) {
    char buf[4096];
    while (const std::size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
    ::pclose(p);
  }
  return out;
}
// The integer inside the element `id` of a page's DOM, or -1.
long long element_number(const std::string& dom, const std::string& id) {
  std::smatch m;
  if (!std::regex_search(dom, m, std::regex("id=\"" + id + "\"[^>]*>([0-9]+)<"))) return -1;
  return std::stoll(m[1]);
}
}  // namespace

TEST_CASE("Status page in a real browser: headless Chromium shows the figures and they change under load", "[http][status][browser]") {
  const std::string chromium = run_output("command -v chromium || command -v chromium-browser");
  if (chromium.empty()) {
    WARN("chromium is not installed (Debian package chromium): the status page was not loaded in a browser");
    return;
  }
  CloudServer server(small_server_options());
  Split s = make_split();
  server.register_model(kModel, s.tail);
  HttpOptions ho;
  ho.status_interval = 200ms;
  OipHttpServer http(server, "127.0.0.1", 0, ho);
  const std::string url = "http://127.0.0.1:" + std::to_string(http.port()) + "/";

  // Load: OIP requests one after another until the browser has looked (bounded in count too).
  std::atomic<bool> stop{false};
  std::atomic<int> answered{0};
  std::thread load([&] {
    auto c = client(http.port());
    const std::string body = json{{"inputs", json::array({tensor_json("features", random_input(2, kHidden, 9))})}}.dump();
    for (int i = 0; i < 20000 && !stop; ++i) {
      if (auto r = c.Post("/v2/models/toy/versions/2/infer", body, "application/json"); r && r->status == 200) ++answered;
      std::this_thread::sleep_for(2ms);
    }
  });
  struct Stop {
    std::atomic<bool>& flag;
    std::thread& t;
    ~Stop() {
      flag = true;
      t.join();
    }
  } joiner{stop, load};

  char dir_template[] = "/tmp/edgesplit-chromium-XXXXXX";
  REQUIRE(::mkdtemp(dir_template) != nullptr);
  const std::string profile = dir_template;
  const std::string browser = "timeout 90 chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage "
                              "--no-first-run --hide-scrollbars --user-data-dir=" + profile +
                              " --window-size=1100,760 --virtual-time-budget=2500 ";
  while (answered < 20) std::this_thread::sleep_for(10ms);
  const std::string first = run_output(browser + "--dump-dom " + url + " 2>/dev/null");
  INFO(first.substr(0, 2000));
  REQUIRE(first.find("data-updates=\"") != std::string::npos);
  CHECK(first.find("data-updates=\"0\"") == std::string::npos);  // the script ran and drew a report
  const long long seen = element_number(first, "requests-total");
  CHECK(seen >= 20);
  CHECK(first.find("<td>toy</td><td>2</td>") != std::string::npos);
  CHECK(std::regex_search(first, std::regex("id=\"chart-rps\"[^>]*><polyline")));
  CHECK(std::regex_search(first, std::regex("id=\"rps\"[^>]*>[0-9.]+<")));
  CHECK(first.find(">ready<") != std::string::npos);

  std::this_thread::sleep_for(500ms);
  const std::string second = run_output(browser + "--dump-dom " + url + " 2>/dev/null");
  CHECK(element_number(second, "requests-total") > seen);

  // The screenshot the docs show, kept as a test artifact in the build tree.
  const std::string png = std::string(EDGESPLIT_TEST_ARTIFACT_DIR) + "/status-page.png";
  std::remove(png.c_str());
  run_output(browser + "--screenshot=" + png + " " + url + " >/dev/null 2>&1");
  std::FILE* f = std::fopen(png.c_str(), "rb");
  REQUIRE(f != nullptr);
  unsigned char sig[8] = {};
  const std::size_t n = std::fread(sig, 1, sizeof sig, f);
  std::fseek(f, 0, SEEK_END);
  const long size = std::ftell(f);
  std::fclose(f);
  CHECK(n == 8);
  CHECK(std::memcmp(sig, "\x89PNG\r\n\x1a\n", 8) == 0);
  CHECK(size > 10000);  // a rendered page, not a blank image
  run_output("rm -rf " + profile);
}
