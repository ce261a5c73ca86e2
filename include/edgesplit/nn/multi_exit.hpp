// edgesplit/nn/multi_exit.hpp - a model with an early exit at its split point, trained jointly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "edgesplit/nn/collaborative.hpp"
#include "edgesplit/nn/loss.hpp"
#include "edgesplit/nn/sequential.hpp"

namespace edgesplit {

/// The joint multi-exit loss (BranchyNet, Teerapittayanon et al. 2016):
///
///   L = exit_weight CE(exit) + final_weight CE(final) + distill_weight D(exit, final)
///
/// where the exit head reads the features at the split point (the edge's answer) and the final
/// output is the whole model's (the cloud's answer). D is the optional consistency term of
/// `CollaborativeLoss` (the final output as teacher; it is not pulled towards the exit).
struct MultiExitLoss {
  double exit_weight = 1;  ///< weight of the exit's cross-entropy (the edge's answer)
  double final_weight = 1;  ///< weight of the final output's cross-entropy (the cloud's answer)
  double distill_weight = 0;  ///< weight of the exit's consistency with the final output; 0: none
  Consistency consistency = Consistency::kl_softened;  ///< D, as in CollaborativeLoss
  double temperature = 4;  ///< for kl_softened

  /// errc::invalid_argument for negative weights or a non-positive temperature with kl_softened.
  void validate() const {
    if (!(exit_weight >= 0) || !(final_weight >= 0) || !(distill_weight >= 0))
      fail(errc::invalid_argument, "multi-exit loss weights must be >= 0");
    if (consistency == Consistency::kl_softened && !(temperature > 0))
      fail(errc::invalid_argument, "multi-exit temperature must be > 0");
  }
};

/// head -> (exit | tail): the head runs on the edge, the exit answers there, the tail continues
/// in the cloud from the same features. As a Trainer objective, the gradients of both branches
/// meet at the split point and flow into the head together. Outputs: "exit", "final".
/// The three parts are not owned; they must outlive this object.
template <Real T>
class MultiExit {
 public:
  /// Trains `head`, `exit` and `tail` jointly (owned by the caller): the exit reads the head's output, as the
  /// tail does.
  MultiExit(Sequential<T>& head, Sequential<T>& exit, Sequential<T>& tail, MultiExitLoss loss = {})
      : head_(&head), exit_(&exit), tail_(&tail), loss_(loss) {
    loss_.validate();
  }

  /// The edge's model: head then exit (deep copies).
  Sequential<T> edge_model() const { return join(*head_, *exit_); }
  /// The cloud path as one model: head then tail (deep copies).
  Sequential<T> full_model() const { return join(*head_, *tail_); }

  /// Every trainable tensor: head, exit, tail.
  std::vector<Parameter<T>> parameters() {
    std::vector<Parameter<T>> all;
    append(all, "head.", *head_);
    append(all, "exit.", *exit_);
    append(all, "tail.", *tail_);
    return all;
  }
  /// Zeroes every gradient.
  void zero_grad() {
    head_->zero_grad();
    exit_->zero_grad();
    tail_->zero_grad();
  }
  /// Training mode for all three parts.
  void set_training(bool on) {
    head_->set_training(on);
    exit_->set_training(on);
    tail_->set_training(on);
  }
  /// Names of the outputs the Trainer reports: "exit" and "final".
  std::vector<std::string> output_names() const { return {"exit", "final"}; }

  /// One step's loss and gradients on batch `x` with labels `y`; the two gradients meet in the head.
  double train_step(TensorView<const T> x, std::span<const std::int32_t> y) {
    const auto h = head_->forward(x);
    const auto ze = exit_->forward(h);
    const auto zf = tail_->forward(h);
    reset(ge_, ze.shape());
    reset(gf_, zf.shape());
    double total = loss_.exit_weight * softmax_cross_entropy(ze, y, ge_.view(), loss_.exit_weight);
    total += loss_.final_weight * softmax_cross_entropy(zf, y, gf_.view(), loss_.final_weight);
    if (loss_.distill_weight > 0) total += loss_.distill_weight * distill(ze, zf, ge_.view());
    gh_exit_.resize(h.shape());
    gh_tail_.resize(h.shape());
    exit_->backward(h, ge_.cview(), gh_exit_.view());
    tail_->backward(h, gf_.cview(), gh_tail_.view());
    kernels::map3(gh_exit_.data(), gh_tail_.data(), gh_tail_.data(), gh_exit_.data(), gh_exit_.size(),
                  [](auto a, auto b, auto) { return a + b; });
    head_->backward(x, gh_exit_.cview());
    return total;
  }

  /// Inference-mode loss of a batch; adds top-1 hits of the exit and the final output to `hits`.
  double evaluate(TensorView<const T> x, std::span<const std::int32_t> y, std::span<std::size_t> hits) {
    const auto h = head_->forward(x);
    const auto ze = exit_->forward(h);
    const auto zf = tail_->forward(h);
    hits[0] += count_correct(ze, y);
    hits[1] += count_correct(zf, y);
    double total = loss_.exit_weight * softmax_cross_entropy(ze, y) + loss_.final_weight * softmax_cross_entropy(zf, y);
    if (loss_.distill_weight > 0) total += loss_.distill_weight * distill(ze, zf, TensorView<T>{});
    return total;
  }

 private:
  double distill(TensorView<const T> ze, TensorView<const T> zf, TensorView<T> ge) const {
    const CollaborativeLoss c{loss_.consistency, loss_.temperature, 1, 1, false, 0};
    return c.consistency_term(ze, zf, ge, TensorView<T>{}, loss_.distill_weight, 0);
  }
  static void reset(Tensor<T>& t, const Shape& s) {
    t.resize(s);
    std::fill_n(t.data(), t.size(), T(0));
  }
  static void append(std::vector<Parameter<T>>& all, const std::string& prefix, Sequential<T>& m) {
    for (auto& p : m.parameters()) {
      p.name = prefix + p.name;
      all.push_back(std::move(p));
    }
  }
  static Sequential<T> join(const Sequential<T>& a, const Sequential<T>& b) {
    Sequential<T> m;
    for (std::size_t i = 0; i < a.size(); ++i) m.add(a[i].clone());
    for (std::size_t i = 0; i < b.size(); ++i) m.add(b[i].clone());
    return m;
  }

  Sequential<T>* head_;
  Sequential<T>* exit_;
  Sequential<T>* tail_;
  MultiExitLoss loss_;
  Tensor<T> ge_, gf_, gh_exit_, gh_tail_;
};

}  // namespace edgesplit
