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
#include <memory>
#include <numeric>
#include <span>
#include <string>
#include <variant>
#include <vector>

#if __has_include(<unistd.h>)
#include <unistd.h>  // isatty: the progress bar is drawn on terminals only
#endif

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
  /// Early stopping ends the run after this epoch: `patience` epochs passed without improvement.
  bool stopping_early = false;
  /// With `stopping_early` and TrainOptions::restore_best: the 1-based epoch whose weights the
  /// model ends with (0: it keeps this last epoch's).
  std::size_t restored_epoch = 0;
  std::size_t patience = 0;                ///< TrainOptions::patience, for the stopping message
  std::string monitored;                   ///< what early stopping watches: "val_loss" or the accuracy's name
};

/// Receives each epoch's report (print_progress() prints it; an empty one prints nothing).
using ProgressCallback = std::function<void(const EpochReport&)>;

/// The progress inside an epoch, after each training step: what a progress bar shows.
struct BatchReport {
  std::size_t epoch = 0;              ///< 1-based epoch
  std::size_t epochs = 0;             ///< planned total of epochs
  std::size_t step = 0;               ///< 1-based step within the epoch
  std::size_t steps = 0;              ///< steps per epoch
  std::size_t samples = 0;            ///< training samples seen this epoch
  double running_loss = 0;            ///< mean training loss over this epoch so far
  double samples_per_second = 0;      ///< this epoch so far
  double eta_seconds = 0;             ///< estimate for the rest of this epoch's training steps
};

/// Receives a report after every training step (print_batch_progress() draws a bar from them).
using BatchCallback = std::function<void(const BatchReport&)>;

namespace detail {
// True when `out` is the process's standard output or error and that is a terminal.
inline bool is_terminal(const std::ostream& out) {
#if __has_include(<unistd.h>)
  return (&out == &std::cout && ::isatty(1) == 1) || ((&out == &std::cerr || &out == &std::clog) && ::isatty(2) == 1);
#else
  (void)out;
  return false;
#endif
}
}  // namespace detail

/// One progress-bar line, `width` cells of bar: "epoch 2/10 [=======>      ] 41/94  loss 0.4123
/// 5321 samples/s  eta 3 s" (no line end: print_batch_progress redraws it in place).
inline std::string format_progress_bar(const BatchReport& r, std::size_t width = 24) {
  const std::size_t done = r.steps ? std::min(width, r.step * width / r.steps) : width;
  std::string bar(width, ' ');
  for (std::size_t i = 0; i < done; ++i) bar[i] = '=';
  if (done < width) bar[done] = '>';
  char buf[160];
  std::snprintf(buf, sizeof buf, "epoch %zu/%zu [%s] %zu/%zu  loss %.4f  %.0f samples/s  eta %.0f s", r.epoch,
                r.epochs, bar.c_str(), r.step, r.steps, r.running_loss, r.samples_per_second, r.eta_seconds);
  return buf;
}

/// A callback drawing a progress bar on `out`, redrawn in place at most ten times a second, when
/// `out` is a terminal (std::cout or std::cerr attached to one); elsewhere (a log file, a pipe) it
/// prints nothing, and print_progress's one line per epoch is the whole record.
inline BatchCallback print_batch_progress(std::ostream& out = std::cout) {
  if (!detail::is_terminal(out)) return {};
  auto last = std::make_shared<std::chrono::steady_clock::time_point>();
  return [&out, last](const BatchReport& r) {
    const auto now = std::chrono::steady_clock::now();
    if (r.step != r.steps && now - *last < std::chrono::milliseconds(100)) return;
    *last = now;
    out << "\r\033[K" << format_progress_bar(r) << std::flush;
  };
}

/// A callback printing one line per epoch to `out` ("epoch 3/15 loss 0.3121 val_loss ..."), and
/// a line saying so when early stopping ends the run, with the epoch whose weights were restored.
/// On a terminal each line replaces print_batch_progress's bar.
inline ProgressCallback print_progress(std::ostream& out = std::cout) {
  const bool terminal = detail::is_terminal(out);
  return [&out, terminal](const EpochReport& r) {
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
    if (terminal) out << "\r\033[K";
    out << line << buf << std::endl;
    if (r.stopping_early) {
      std::snprintf(buf, sizeof buf, "early stopping after epoch %zu: %s did not improve for %zu epochs; ", r.epoch,
                    r.monitored.c_str(), r.patience);
      out << buf;
      if (r.restored_epoch)
        out << "the weights of epoch " << r.restored_epoch << " (the best) are restored" << std::endl;
      else
        out << "the model keeps this epoch's weights" << std::endl;
    }
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
  bool stopped_by_request = false;  ///< true when Trainer::request_stop() ended the run
  double samples_per_second = 0; ///< over the whole run's training time
};

/// Runs mini-batch training. Deterministic: the data order comes from `TrainOptions::seed` through
/// edgesplit's portable `Rng`, and nothing else in a step depends on time or threads, so two runs
/// with the same seeds (model, dropout, shuffle) give bit-identical weights.
template <Real T>
class Trainer {
 public:
  /// A trainer that reports as Keras does: a progress bar through each epoch on a terminal
  /// (print_batch_progress), and one line per epoch on standard output (print_progress).
  /// `options` are validated (errc::invalid_argument for zero epochs or batch sizes).
  explicit Trainer(TrainOptions options = {})
      : Trainer(std::move(options), print_progress()) {
    batch_progress_ = print_batch_progress();
  }
  /// A trainer whose per-epoch reports go to `progress` alone (an empty one: silent), without a
  /// bar unless set_batch_progress() adds one.
  Trainer(TrainOptions options, ProgressCallback progress) : options_(options), progress_(std::move(progress)) {
    if (options.epochs == 0 || options.batch_size == 0 || options.eval_batch_size == 0)
      fail(errc::invalid_argument, "Trainer needs epochs, batch_size and eval_batch_size > 0");
    if (!(options.validation_split >= 0 && options.validation_split < 1))
      fail(errc::invalid_argument, "TrainOptions::validation_split must be in [0, 1)");
  }

  const TrainOptions& options() const noexcept { return options_; }  ///< the options in use
  /// Replaces the per-epoch callback; an empty one silences the trainer.
  void set_progress(ProgressCallback progress) { progress_ = std::move(progress); }
  /// Replaces the per-step callback (a progress bar); an empty one draws nothing.
  void set_batch_progress(BatchCallback progress) { batch_progress_ = std::move(progress); }
  /// Ends the running fit() after the current step, keeping the weights as they are (for a
  /// callback that decides training is over: a target reached, a time budget spent).
  /// TrainHistory::stopped_by_request says so. The next fit() starts afresh.
  void request_stop() noexcept { stop_requested_ = true; }
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

    stop_requested_ = false;
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
    std::size_t samples_total = 0;
    const auto run_start = clock::now();

    for (std::size_t epoch = 0; epoch < options_.epochs; ++epoch) {
      const auto epoch_start = clock::now();
      if (options_.shuffle) rng.shuffle(std::span<std::size_t>(order));
      objective.set_training(true);
      double loss_sum = 0;
      std::size_t seen = 0;  // samples trained on this epoch (fewer than n after request_stop)
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
        seen += m;
        if (batch_progress_) {
          const double t = std::max(std::chrono::duration<double>(clock::now() - epoch_start).count(), 1e-9);
          BatchReport br;
          br.epoch = epoch + 1;
          br.epochs = options_.epochs;
          br.step = s + 1;
          br.steps = steps_per_epoch;
          br.samples = b + m;
          br.running_loss = loss_sum / static_cast<double>(b + m);
          br.samples_per_second = static_cast<double>(b + m) / t;
          br.eta_seconds = t / static_cast<double>(b + m) * static_cast<double>(n - b - m);
          batch_progress_(br);
        }
        if (stop_requested_) break;
      }
      const double train_seconds = std::chrono::duration<double>(clock::now() - epoch_start).count();
      train_seconds_total += train_seconds;
      samples_total += seen;

      EpochReport r;
      r.epoch = epoch + 1;
      r.epochs = options_.epochs;
      r.train_loss = loss_sum / static_cast<double>(seen);
      r.learning_rate = optimizer.learning_rate();
      r.samples_per_second = static_cast<double>(seen) / std::max(train_seconds, 1e-9);
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
      if (validation && options_.patience > 0 && since_best >= options_.patience) {
        r.stopping_early = true;
        r.patience = options_.patience;
        r.monitored = options_.monitor == Monitor::validation_loss ? "val_loss"
                                                                   : "the accuracy of " + r.validation.outputs[options_.monitor_output];
        if (!best.empty() && history.best_epoch != r.epoch) r.restored_epoch = history.best_epoch;
      }
      history.epochs.push_back(r);
      if (progress_) progress_(r);
      if (r.stopping_early) {
        history.stopped_early = true;
        break;
      }
      if (stop_requested_) {
        history.stopped_by_request = true;
        break;
      }
    }
    if (!best.empty() && history.best_epoch != history.epochs.size())
      for (std::size_t i = 0; i < params.size(); ++i) copy(best[i].cview(), params[i].value);
    objective.set_training(false);
    history.samples_per_second =
        static_cast<double>(samples_total) / std::max(train_seconds_total, 1e-9);
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
  BatchCallback batch_progress_;
  bool stop_requested_ = false;
  std::function<void(TensorView<T>, Rng&)> augment_;
};

}  // namespace edgesplit
