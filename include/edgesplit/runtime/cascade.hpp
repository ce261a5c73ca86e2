// edgesplit/runtime/cascade.hpp - answer on the edge when confident, ask the cloud otherwise.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/kernels.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/nn/sequential.hpp"
#include "edgesplit/runtime/edge_client.hpp"

namespace edgesplit {

/// How the edge model's confidence in one sample is measured.
enum class Confidence {
  max_probability,  ///< largest softmax probability; confident when >= threshold
  entropy,          ///< softmax entropy in nats; confident when <= threshold
};

/// When the edge model may answer by itself.
struct CascadeOptions {
  Confidence measure = Confidence::max_probability;  ///< which confidence measure
  double threshold = 0.9;  ///< the confidence an edge answer needs
  /// The edge model's outputs are logits (softmax is applied to judge confidence); set false when
  /// the model already ends in a softmax.
  bool edge_outputs_logits = true;
};

/// Counts of which path answered and, when labels are given, how well.
struct CascadeStats {
  /// Samples answered on the edge.
  std::size_t local = 0, cloud = 0, fallback = 0;
  /// \var cloud
  /// Samples answered by the cloud.
  /// \var fallback
  /// Samples answered by the client's fallback because the cloud could not.
  std::size_t local_correct = 0, cloud_correct = 0;
  /// \var local_correct
  /// Of the edge's answers, the correct ones (when labels are given).
  /// \var cloud_correct
  /// Of the cloud's answers, the correct ones (when labels are given).

  /// Edge answers over edge and cloud answers.
  double local_share() const { return local + cloud ? double(local) / double(local + cloud) : 0; }
  /// Accuracy of the edge's answers.
  double local_accuracy() const { return local ? double(local_correct) / double(local) : 0; }
  /// Accuracy of the cloud's answers.
  double cloud_accuracy() const { return cloud ? double(cloud_correct) / double(cloud) : 0; }
  /// Accuracy over both paths.
  double accuracy() const { return local + cloud ? double(local_correct + cloud_correct) / double(local + cloud) : 0; }
};

/// The result for one batch: the predicted class of each sample and who answered it.
struct CascadeResult {
  std::vector<std::size_t> predictions;  ///< predicted class per sample
  std::vector<bool> answered_locally;  ///< true where the edge answered
};

/// A two-stage classifier: the edge model answers the samples it is confident about; the rest go,
/// as one sub-batch, to the cloud through an EdgeClient (which may itself run a head first).
class Cascade {
 public:
  /// Classifies with `edge_model` first and sends the samples it is not confident about through `cloud` (kept
  /// by reference).
  Cascade(Sequential<float> edge_model, EdgeClient& cloud, CascadeOptions options = {})
      : edge_(std::move(edge_model)), cloud_(cloud), opt_(options) {
    if (!std::isfinite(opt_.threshold)) fail(errc::invalid_argument, "cascade threshold must be finite");
    if (opt_.measure == Confidence::max_probability && !(opt_.threshold >= 0 && opt_.threshold <= 1))
      fail(errc::invalid_argument, "max-probability threshold must be in [0, 1]");
    if (opt_.measure == Confidence::entropy && !(opt_.threshold >= 0))
      fail(errc::invalid_argument, "entropy threshold must be >= 0");
  }

  /// Classifies `x` ({batch, features}). `labels`, when given (one per sample), update the
  /// per-path accuracy in stats().
  CascadeResult classify(TensorView<const float> x, Deadline deadline, std::span<const std::int32_t> labels = {}) {
    const std::size_t n = x.shape().batch();
    if (!labels.empty() && labels.size() != n)
      fail(errc::shape_mismatch, "cascade got " + std::to_string(labels.size()) + " labels for " + std::to_string(n) + " samples");
    const TensorView<const float> scores = edge_.forward(x);
    const std::size_t classes = scores.shape().features();
    probs_.resize(scores.shape());
    if (opt_.edge_outputs_logits)
      kernels::softmax_rows(scores.data(), probs_.data(), n, classes);
    else
      copy(scores, probs_.view());

    CascadeResult r;
    r.predictions.resize(n);
    r.answered_locally.resize(n);
    std::vector<std::size_t> ask;
    for (std::size_t i = 0; i < n; ++i) {
      const float* p = probs_.data() + i * classes;
      r.predictions[i] = argmax(p, classes);
      r.answered_locally[i] = confident(p, classes);
      if (!r.answered_locally[i]) ask.push_back(i);
    }
    if (!ask.empty()) {
      const std::size_t width = x.shape().features();
      Tensor<float> sub(Shape{ask.size(), width});
      for (std::size_t j = 0; j < ask.size(); ++j)
        std::copy_n(x.data() + ask[j] * width, width, sub.data() + j * width);
      const InferResult answer = cloud_.infer(sub.cview(), deadline);
      if (answer.path == AnswerPath::fallback) stats_.fallback += ask.size();
      const std::size_t c = answer.output.shape().features();
      for (std::size_t j = 0; j < ask.size(); ++j) r.predictions[ask[j]] = argmax(answer.output.data() + j * c, c);
    }
    for (std::size_t i = 0; i < n; ++i) {
      const bool hit = !labels.empty() && static_cast<std::int64_t>(r.predictions[i]) == labels[i];
      if (r.answered_locally[i]) {
        ++stats_.local;
        stats_.local_correct += hit;
      } else {
        ++stats_.cloud;
        stats_.cloud_correct += hit;
      }
    }
    return r;
  }

  /// Counts since construction or reset_stats().
  const CascadeStats& stats() const noexcept { return stats_; }
  /// Zeroes the counts.
  void reset_stats() noexcept { stats_ = {}; }

 private:
  static std::size_t argmax(const float* p, std::size_t n) {
    std::size_t best = 0;
    for (std::size_t i = 1; i < n; ++i)
      if (p[i] > p[best]) best = i;
    return best;
  }
  bool confident(const float* p, std::size_t n) const {
    if (opt_.measure == Confidence::max_probability) return p[argmax(p, n)] >= opt_.threshold;
    double h = 0;
    for (std::size_t i = 0; i < n; ++i)
      if (p[i] > 0) h -= double(p[i]) * std::log(double(p[i]));
    return h <= opt_.threshold;
  }

  Sequential<float> edge_;
  EdgeClient& cloud_;
  CascadeOptions opt_;
  Tensor<float> probs_;
  CascadeStats stats_;
};

}  // namespace edgesplit
