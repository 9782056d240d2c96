// The loss plot of a run: train loss and eval loss against step on the left axis, the learning
// rate on a right axis, as a self-contained SVG. The trainer writes it as loss.svg at the end of a
// run from the points it logged; `gemma-train plot` draws one from a run's metrics.jsonl.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "io/atomic_output.h"

namespace gemma {

// One logged line of metrics.jsonl (TRL's log keys); a key the line lacks is empty.
struct MetricsPoint {
  int64_t step = 0;
  std::optional<double> loss;
  std::optional<double> eval_loss;
  std::optional<double> learning_rate;
};

// Each line is one JSON object with an integer `step`; `loss`, `eval_loss` and `learning_rate`
// are read when present (null counts as absent); other keys are ignored, blank lines skipped.
// InputError naming file:line for a line that is not a JSON object, a missing or non-integer
// step, or one of the three keys holding something other than a number.
std::vector<MetricsPoint> read_metrics_jsonl(const std::filesystem::path& metrics_jsonl);

// The SVG text. InputError when no point has a loss or an eval_loss (nothing to draw).
std::string render_metrics_svg(const std::vector<MetricsPoint>& points, const std::string& title);

// render_metrics_svg, written atomically to `svg_out`; a symlink there is refused (InputError),
// and an existing file is replaced only with ExistingOutput::kReplace (the trainer's own
// loss.svg, `plot --overwrite`).
void write_metrics_svg(const std::vector<MetricsPoint>& points,
                       const std::filesystem::path& svg_out, const std::string& title,
                       ExistingOutput existing = ExistingOutput::kReplace);

// read_metrics_jsonl + write_metrics_svg; refuses an `svg_out` that is the input file itself.
void write_metrics_plot(const std::filesystem::path& metrics_jsonl,
                        const std::filesystem::path& svg_out, const std::string& title,
                        ExistingOutput existing = ExistingOutput::kRefuse);

}  // namespace gemma
