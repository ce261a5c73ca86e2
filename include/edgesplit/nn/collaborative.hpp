// edgesplit/nn/collaborative.hpp - training edge models together with the cloud model.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "edgesplit/nn/loss.hpp"
#include "edgesplit/nn/sequential.hpp"

namespace edgesplit {

/// How agreement between two models' outputs is measured.
enum class Consistency {
  mse_logits,  ///< mse_loss(edge logits, cloud logits): matches the raw scores
  kl_softened, ///< kl_distillation(edge, cloud, temperature): matches the softened distributions
};

/// The collaborative loss for one cloud model c and edge models e = 1..n:
///
///   L = [cloud trains] CE(c) + sum_e ( task_weight CE(e) + weight D(e, c) )
///
/// with D the consistency term (`Consistency`). Each edge model gets the gradient of its own task
/// loss and of its consistency term. The cloud model, when it trains, gets its own task gradient
/// plus `cloud_weight` times the consistency gradients (1: the joint objective
/// min over (w_edge_1..n, w_cloud); 0: the cloud is a teacher that is not pulled towards the
/// edges). A frozen cloud (`train_cloud = false`) is plain distillation from a fixed teacher:
/// it runs in inference mode (no dropout) and its weights never change.
struct CollaborativeLoss {
  /// D: MSE between logits, or KL between softened outputs.
  Consistency consistency = Consistency::kl_softened;
  double temperature = 4;    ///< for kl_softened
  double weight = 1;         ///< lambda: weight of each edge's consistency term
  double task_weight = 1;    ///< weight of each edge's own cross-entropy
  bool train_cloud = true;  ///< false: the cloud is a fixed teacher (inference mode, weights never change)
  double cloud_weight = 1;   ///< share of the consistency gradient the cloud receives

  /// errc::invalid_argument for negative weights or a non-positive temperature with kl_softened.
  void validate() const {
    if (!(weight >= 0) || !(task_weight >= 0) || !(cloud_weight >= 0))
      fail(errc::invalid_argument, "collaborative loss weights must be >= 0");
    if (consistency == Consistency::kl_softened && !(temperature > 0))
      fail(errc::invalid_argument, "collaborative loss temperature must be > 0");
  }

  /// D(edge, cloud), adding `w * dD/d edge` into `grad_edge` and `w * dD/d cloud` into
  /// `grad_cloud` (each skipped when empty).
  template <Real T>
  double consistency_term(TensorView<const T> edge, TensorView<const T> cloud, TensorView<T> grad_edge,
                          TensorView<T> grad_cloud, double w_edge, double w_cloud) const {
    if (consistency == Consistency::mse_logits) {
      const double d = mse_loss(edge, cloud, grad_edge, w_edge);
      if (grad_cloud.data() != nullptr) (void)mse_loss(cloud, edge, grad_cloud, w_cloud);  // symmetric
      return d;
    }
    // KL's teacher gradient is scaled by w_cloud / w_edge relative to the student's: run it
    // with the teacher's own weight so each side gets exactly its share.
    const double d = kl_distillation(edge, cloud, temperature, grad_edge, TensorView<T>{}, w_edge);
    if (grad_cloud.data() != nullptr) (void)kl_distillation(edge, cloud, temperature, TensorView<T>{}, grad_cloud, w_cloud);
    return d;
  }
};

/// The Trainer objective for one cloud model and several edge models trained on the same
/// batches with a `CollaborativeLoss`. The models are not owned; they must outlive this object.
/// Outputs are named "cloud", "edge0", "edge1", ...; parameters are the cloud's (when it trains)
/// then each edge's.
template <Real T>
class Collaborative {
 public:
  /// Trains `cloud` and every model in `edges` together on the same batches (the models stay owned by the
  /// caller).
  Collaborative(Sequential<T>& cloud, std::vector<Sequential<T>*> edges, CollaborativeLoss loss = {})
      : cloud_(&cloud), edges_(std::move(edges)), loss_(loss) {
    loss_.validate();
    if (edges_.empty()) fail(errc::invalid_argument, "Collaborative needs at least one edge model");
    for (auto* e : edges_)
      if (e == nullptr || e == cloud_) fail(errc::invalid_argument, "Collaborative edge models must be distinct, non-null");
    edge_grads_.resize(edges_.size());
  }

  const CollaborativeLoss& loss() const noexcept { return loss_; }  ///< the loss settings

  /// Every trainable tensor: the cloud's (when it trains), then each edge's.
  std::vector<Parameter<T>> parameters() {
    std::vector<Parameter<T>> all;
    if (loss_.train_cloud) all = cloud_->parameters();
    for (auto* e : edges_)
      for (auto& p : e->parameters()) all.push_back(std::move(p));
    return all;
  }
  /// Zeroes every model's gradients.
  void zero_grad() {
    if (loss_.train_cloud) cloud_->zero_grad();
    for (auto* e : edges_) e->zero_grad();
  }
  /// Training mode for the edges, and for the cloud when it trains (a fixed teacher stays in inference mode).
  void set_training(bool on) {
    cloud_->set_training(on && loss_.train_cloud);
    for (auto* e : edges_) e->set_training(on);
  }
  /// Names of the outputs the Trainer reports: "cloud", then "edge0", "edge1", ...
  std::vector<std::string> output_names() const {
    std::vector<std::string> names{"cloud"};
    for (std::size_t i = 0; i < edges_.size(); ++i) names.push_back("edge" + std::to_string(i));
    return names;
  }

  /// One step's loss and gradients on batch `x` with labels `y` (the optimizer then applies them).
  double train_step(TensorView<const T> x, std::span<const std::int32_t> y) {
    const auto zc = cloud_->forward(x);
    TensorView<T> gc;
    double total = 0;
    if (loss_.train_cloud) {
      cloud_grad_.resize(zc.shape());
      std::fill_n(cloud_grad_.data(), cloud_grad_.size(), T(0));
      gc = cloud_grad_.view();
      total += softmax_cross_entropy(zc, y, gc);
    }
    for (std::size_t i = 0; i < edges_.size(); ++i) {
      const auto ze = edges_[i]->forward(x);
      Tensor<T>& ge = edge_grads_[i];
      ge.resize(ze.shape());
      std::fill_n(ge.data(), ge.size(), T(0));
      total += loss_.task_weight * softmax_cross_entropy(ze, y, ge.view(), loss_.task_weight);
      total += loss_.weight * loss_.consistency_term(ze, zc, ge.view(), gc, loss_.weight, loss_.weight * loss_.cloud_weight);
      edges_[i]->backward(x, ge.cview());
    }
    if (loss_.train_cloud) cloud_->backward(x, cloud_grad_.cview());
    return total;
  }

  /// Inference-mode loss of a batch; adds top-1 hits of each output to `hits`.
  double evaluate(TensorView<const T> x, std::span<const std::int32_t> y, std::span<std::size_t> hits) {
    const auto zc = cloud_->forward(x);
    hits[0] += count_correct(zc, y);
    double total = loss_.train_cloud ? softmax_cross_entropy(zc, y) : 0.0;
    for (std::size_t i = 0; i < edges_.size(); ++i) {
      const auto ze = edges_[i]->forward(x);
      hits[i + 1] += count_correct(ze, y);
      total += loss_.task_weight * softmax_cross_entropy(ze, y) +
               loss_.weight * loss_.consistency_term(ze, zc, TensorView<T>{}, TensorView<T>{}, 0, 0);
    }
    return total;
  }

 private:
  Sequential<T>* cloud_;
  std::vector<Sequential<T>*> edges_;
  CollaborativeLoss loss_;
  Tensor<T> cloud_grad_;
  std::vector<Tensor<T>> edge_grads_;
};

}  // namespace edgesplit
