// edgesplit/nn/trainer.hpp - the training loop: mini-batches, epochs, validation, early stopping.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <iostream>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "edgesplit/core/random.hpp"
#include "edgesplit/nn/dataset.hpp"
#include "edgesplit/nn/graph.hpp"
#include "edgesplit/nn/loss.hpp"
#include "edgesplit/nn/optimizer.hpp"
#include "edgesplit/nn/sequential.hpp"

namespace edgesplit {

/// What the Trainer trains: one model with its loss (`Classifier`), several models trained
/// together (`Collaborative`), a model with an early exit (`MultiExit`), or your own.
/// - `parameters()`: every tensor the optimizer updates, in a fixed order (gradients allocated:
///   the Trainer calls `zero_grad()` first);
/// - `train_step(x, y)`: forward and backward on one batch, adding gradients; returns the loss;
/// - `evaluate(x, y, correct)`: inference-mode loss of a batch, adding top-1 hits of each output
///   to `correct[k]`;
/// - `output_names()`: one name per output whose accuracy is reported ("model", "edge0", ...).
template <class O, class T>
concept TrainingObjective = requires(O& o, TensorView<const T> x, std::span<const std::int32_t> y,
                                     std::span<std::size_t> hits, bool on) {
  { o.parameters() } -> std::same_as<std::vector<Parameter<T>>>;
  o.zero_grad();
  o.set_training(on);
  { o.train_step(x, y) } -> std::convertible_to<double>;
  { o.evaluate(x, y, hits) } -> std::convertible_to<double>;
  { o.output_names() } -> std::convertible_to<std::vector<std::string>>;
};

/// One model (a Sequential or a Graph of one input and one output) trained with softmax
/// cross-entropy on class labels.
template <Real T>
class Classifier {
 public:
  /// Trains `model` (owned by the caller) on its logits.
  explicit Classifier(Sequential<T>& model) : model_(&model) {}
  /// Trains a graph of one input and one output (owned by the caller) on its logits.
  explicit Classifier(Graph<T>& model) : model_(&model) {}

  /// The model's trainable tensors.
  std::vector<Parameter<T>> parameters() {
    return std::visit([](auto* m) { return m->parameters(); }, model_);
  }
  /// Zeroes the model's gradients.
  void zero_grad() {
    std::visit([](auto* m) { m->zero_grad(); }, model_);
  }
  /// Training or inference mode for the model.
  void set_training(bool on) {
    std::visit([on](auto* m) { m->set_training(on); }, model_);
  }
  /// One output, named "model".
  std::vector<std::string> output_names() const { return {"model"}; }

  /// Softmax cross-entropy of one batch and its gradients through the model.
  double train_step(TensorView<const T> x, std::span<const std::int32_t> y) {
    return std::visit(
        [&](auto* m) {
          const auto z = m->forward(x);
          grad_.resize(z.shape());
          std::fill_n(grad_.data(), grad_.size(), T(0));
          const double loss = softmax_cross_entropy(z, y, grad_.view());
          m->backward(x, grad_.cview());
          return loss;
        },
        model_);
  }
  /// Inference-mode loss of a batch; adds the top-1 hits to `hits[0]`.
  double evaluate(TensorView<const T> x, std::span<const std::int32_t> y, std::span<std::size_t> hits) {
    const auto z = std::visit([&](auto* m) { return m->forward(x); }, model_);
    hits[0] += count_correct(z, y);
    return softmax_cross_entropy(z, y);
  }

 private:
  std::variant<Sequential<T>*, Graph<T>*> model_;
  Tensor<T> grad_;
};

/// Mean loss and top-1 accuracy of each output of an objective over a data set.
struct Evaluation {
  double loss = 0;  ///< mean loss per sample
  std::vector<std::string> outputs;  ///< the objective's output names, one per accuracy
  std::vector<double> accuracy;  ///< in [0, 1], one per output
};

/// Evaluates in inference mode (dropout off), in batches of `batch_size`.
template <Real T, class O>
  requires TrainingObjective<O, T>
Evaluation evaluate(O& objective, const Dataset<T>& data, std::size_t batch_size = 1000) {
  data.validate();
  if (batch_size == 0) fail(errc::invalid_argument, "evaluate needs batch_size > 0");
  Evaluation e;
  e.outputs = objective.output_names();
  std::vector<std::size_t> hits(e.outputs.size(), 0);
  objective.set_training(false);
  const std::size_t n = data.size();
  for (std::size_t b = 0; b < n; b += batch_size) {
    const std::size_t end = std::min(n, b + batch_size);
    const std::span<const std::int32_t> y(data.labels.data() + b, end - b);
    e.loss += objective.evaluate(data.inputs.batch(b, end), y, hits) * static_cast<double>(end - b);
  }
  e.loss /= static_cast<double>(n);
  for (std::size_t h : hits) e.accuracy.push_back(static_cast<double>(h) / static_cast<double>(n));
  return e;
}

/// The progress of one epoch, as passed to the progress callback.
struct EpochReport {
  /// 1-based epoch; `epochs` is the planned total.
  std::size_t epoch = 0, epochs = 0;       ///< 1-based epoch, planned total
  double train_loss = 0;                   ///< mean training loss over the epoch
  bool validated = false;  ///< true when a validation set was given
  Evaluation validation;                   ///< when `validated`
  double learning_rate = 0;                ///< at the end of the epoch
  double seconds = 0;                      ///< wall time of the epoch, validation included
  double samples_per_second = 0;           ///< training samples per second of training time
  double eta_seconds = 0;                  ///< estimate for the remaining planned epochs
  bool improved = false;                   ///< the monitored validation figure improved
};

/// Receives each epoch's report (print_progress() prints it; an empty one prints nothing).
using ProgressCallback = std::function<void(const EpochReport&)>;

/// A callback printing one line per epoch to `out` ("epoch 3/15 loss 0.3121 val_loss ...").
inline ProgressCallback print_progress(std::ostream& out = std::cout) {
  return [&out](const EpochReport& r) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "epoch %zu/%zu  loss %.4f", r.epoch, r.epochs, r.train_loss);
    std::string line = buf;
    if (r.validated) {
      std::snprintf(buf, sizeof buf, "  val_loss %.4f", r.validation.loss);
      line += buf;
      for (std::size_t k = 0; k < r.validation.outputs.size(); ++k) {
        std::snprintf(buf, sizeof buf, "  %s %.2f%%", r.validation.outputs[k].c_str(), 100 * r.validation.accuracy[k]);
        line += buf;
      }
    }
    std::snprintf(buf, sizeof buf, "  lr %.2e  %.0f samples/s  %.1f s  eta %.0f s%s", r.learning_rate,
                  r.samples_per_second, r.seconds, r.eta_seconds, r.improved ? "  *" : "");
    out << line << buf << std::endl;
  };
}

/// What early stopping watches.
enum class Monitor { validation_loss, validation_accuracy };

/// How a Trainer runs: epochs, batches, order, schedule and early stopping.
struct TrainOptions {
  std::size_t epochs = 10;  ///< passes over the training set (at most, with early stopping)
  std::size_t batch_size = 128;  ///< samples per training step
  std::size_t eval_batch_size = 1000;  ///< samples per evaluation batch (memory only, not results)
  std::uint64_t seed = 1;        ///< shuffling; the same seed gives the same weights bit for bit
  bool shuffle = true;  ///< reshuffle the training set every epoch
  LrSchedule schedule{};         ///< applied to the optimizer's rate at the start of `fit`
  std::size_t patience = 0;      ///< stop after this many epochs without improvement; 0: never
  Monitor monitor = Monitor::validation_loss;  ///< what early stopping watches
  std::size_t monitor_output = 0;  ///< which output's accuracy, for Monitor::validation_accuracy
  double min_delta = 0;          ///< smallest change that counts as an improvement
  bool restore_best = true;      ///< with early stopping, end with the best epoch's weights
  /// When `fit` is given no validation set: hold out this fraction of the training set (its last
  /// rows, Dataset::split) and validate on it; 0 trains on everything without validation.
  double validation_split = 0;
};

/// What a `fit` did: one report per epoch and the best epoch.
struct TrainHistory {
  std::vector<EpochReport> epochs;  ///< one report per epoch run
  std::size_t best_epoch = 0;    ///< 1-based; 0 without validation
  bool stopped_early = false;  ///< true when early stopping ended the run
  double samples_per_second = 0; ///< over the whole run's training time
};

/// Runs mini-batch training. Deterministic: the data order comes from `TrainOptions::seed` through
/// edgesplit's portable `Rng`, and nothing else in a step depends on time or threads, so two runs
/// with the same seeds (model, dropout, shuffle) give bit-identical weights.
template <Real T>
class Trainer {
 public:
  /// `options` are validated (errc::invalid_argument for zero epochs or batch sizes); `progress` gets each
  /// epoch's report.
  explicit Trainer(TrainOptions options = {}, ProgressCallback progress = print_progress())
      : options_(options), progress_(std::move(progress)) {
    if (options.epochs == 0 || options.batch_size == 0 || options.eval_batch_size == 0)
      fail(errc::invalid_argument, "Trainer needs epochs, batch_size and eval_batch_size > 0");
    if (!(options.validation_split >= 0 && options.validation_split < 1))
      fail(errc::invalid_argument, "TrainOptions::validation_split must be in [0, 1)");
  }

  const TrainOptions& options() const noexcept { return options_; }  ///< the options in use
  /// Replaces the per-epoch callback; an empty one silences the trainer.
  void set_progress(ProgressCallback progress) { progress_ = std::move(progress); }
  /// Changes each training batch in place before its step (data augmentation, e.g. shift_and_flip),
  /// drawing from the Trainer's own random stream, so a seed still gives the same run.
  /// Validation data is never augmented. An empty function turns it off.
  void set_augment(std::function<void(TensorView<T>, Rng&)> augment) { augment_ = std::move(augment); }

  /// Trains `objective` with `optimizer` on `train`, validating on `validation` after each epoch when given.
  template <class O>
    requires TrainingObjective<O, T>
  TrainHistory fit(O& objective, Optimizer<T>& optimizer, const Dataset<T>& train,
                   const Dataset<T>* validation = nullptr) {
    using clock = std::chrono::steady_clock;
    train.validate();
    if (validation) validation->validate();
    if (train.size() == 0) fail(errc::invalid_argument, "Trainer::fit on an empty data set");
    if (options_.validation_split != 0 && !validation) {
      const auto [rest, held] = train.split(options_.validation_split);
      return fit(objective, optimizer, rest, &held);
    }

    objective.zero_grad();  // allocates gradients, so the parameter views below are complete
    const std::vector<Parameter<T>> params = objective.parameters();
    const double base_lr = optimizer.learning_rate();
    const std::size_t n = train.size(), bs = std::min(options_.batch_size, n);
    const std::size_t steps_per_epoch = (n + bs - 1) / bs, row = train.inputs.shape().features();
    Rng rng(options_.seed);
    std::vector<std::size_t> order(n);
    std::iota(order.begin(), order.end(), std::size_t{0});
    Tensor<T> xb(train.inputs.shape().with_batch(bs));
    std::vector<std::int32_t> yb(bs);

    TrainHistory history;
    std::vector<Tensor<T>> best;
    double best_score = std::numeric_limits<double>::infinity();
    std::size_t since_best = 0;
    double train_seconds_total = 0;
    const auto run_start = clock::now();

    for (std::size_t epoch = 0; epoch < options_.epochs; ++epoch) {
      const auto epoch_start = clock::now();
      if (options_.shuffle) rng.shuffle(std::span<std::size_t>(order));
      objective.set_training(true);
      double loss_sum = 0;
      for (std::size_t s = 0; s < steps_per_epoch; ++s) {
        const std::size_t b = s * bs, m = std::min(bs, n - b);
        xb.resize(train.inputs.shape().with_batch(m));
        for (std::size_t i = 0; i < m; ++i) {
          std::copy_n(train.inputs.data() + order[b + i] * row, row, xb.data() + i * row);
          yb[i] = train.labels[order[b + i]];
        }
        if (augment_) augment_(xb.view(), rng);
        const double progress = static_cast<double>(epoch) + static_cast<double>(s) / static_cast<double>(steps_per_epoch);
        optimizer.set_learning_rate(base_lr * options_.schedule.factor(progress, static_cast<double>(options_.epochs)));
        objective.zero_grad();
        const double loss = objective.train_step(xb.cview(), std::span<const std::int32_t>(yb.data(), m));
        optimizer.step(params);
        loss_sum += loss * static_cast<double>(m);
      }
      const double train_seconds = std::chrono::duration<double>(clock::now() - epoch_start).count();
      train_seconds_total += train_seconds;

      EpochReport r;
      r.epoch = epoch + 1;
      r.epochs = options_.epochs;
      r.train_loss = loss_sum / static_cast<double>(n);
      r.learning_rate = optimizer.learning_rate();
      r.samples_per_second = static_cast<double>(n) / std::max(train_seconds, 1e-9);
      if (validation) {
        r.validated = true;
        r.validation = evaluate<T>(objective, *validation, options_.eval_batch_size);
        if (options_.monitor == Monitor::validation_accuracy && options_.monitor_output >= r.validation.accuracy.size())
          fail(errc::invalid_argument, "monitor_output past the objective's outputs");
        const double score = options_.monitor == Monitor::validation_loss
                                 ? r.validation.loss
                                 : -r.validation.accuracy[options_.monitor_output];
        if (score < best_score - options_.min_delta) {
          best_score = score;
          since_best = 0;
          r.improved = true;
          history.best_epoch = r.epoch;
          if (options_.patience > 0 && options_.restore_best) snapshot(params, best);
        } else {
          ++since_best;
        }
      }
      r.seconds = std::chrono::duration<double>(clock::now() - epoch_start).count();
      const double elapsed = std::chrono::duration<double>(clock::now() - run_start).count();
      r.eta_seconds = elapsed / static_cast<double>(epoch + 1) * static_cast<double>(options_.epochs - epoch - 1);
      history.epochs.push_back(r);
      if (progress_) progress_(r);
      if (validation && options_.patience > 0 && since_best >= options_.patience) {
        history.stopped_early = true;
        break;
      }
    }
    if (!best.empty() && history.best_epoch != history.epochs.size())
      for (std::size_t i = 0; i < params.size(); ++i) copy(best[i].cview(), params[i].value);
    objective.set_training(false);
    history.samples_per_second =
        static_cast<double>(n) * static_cast<double>(history.epochs.size()) / std::max(train_seconds_total, 1e-9);
    return history;
  }

 private:
  static void snapshot(const std::vector<Parameter<T>>& params, std::vector<Tensor<T>>& out) {
    out.resize(params.size());
    for (std::size_t i = 0; i < params.size(); ++i) {
      out[i].resize(params[i].value.shape());
      copy(TensorView<const T>(params[i].value), out[i].view());
    }
  }

  TrainOptions options_;
  ProgressCallback progress_;
  std::function<void(TensorView<T>, Rng&)> augment_;
};

}  // namespace edgesplit
