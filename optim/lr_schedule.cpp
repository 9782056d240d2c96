// transformers/optimization.py's lr lambdas, in the same double arithmetic.
#include "optim/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace gemma {

LrScheduleKind lr_schedule_kind_from_name(const std::string& name) {
  if (name == "constant") return LrScheduleKind::kConstant;
  if (name == "constant_with_warmup") return LrScheduleKind::kConstantWithWarmup;
  if (name == "linear") return LrScheduleKind::kLinear;
  if (name == "cosine") return LrScheduleKind::kCosine;
  throw std::invalid_argument(
      "lr scheduler: expected constant, constant_with_warmup, linear or "
      "cosine, found " +
      name);
}

int64_t warmup_steps_for(double warmup_steps, int64_t total_steps) {
  if (warmup_steps >= 1) return static_cast<int64_t>(warmup_steps);
  return static_cast<int64_t>(std::ceil(static_cast<double>(total_steps) * warmup_steps));
}

LrSchedule::LrSchedule(LrScheduleKind kind, int64_t warmup_steps, int64_t total_steps)
    : kind_(kind), warmup_steps_(warmup_steps), total_steps_(total_steps) {}

double LrSchedule::lr_at(int64_t step) const {
  const double current = static_cast<double>(step);
  switch (kind_) {
    case LrScheduleKind::kConstant:
      return 1.0;
    case LrScheduleKind::kConstantWithWarmup:
      if (step < warmup_steps_) return current / std::max(1.0, double(warmup_steps_));
      return 1.0;
    case LrScheduleKind::kLinear:
      if (step < warmup_steps_) return current / double(std::max<int64_t>(1, warmup_steps_));
      return std::max(0.0, double(total_steps_ - step) /
                               double(std::max<int64_t>(1, total_steps_ - warmup_steps_)));
    case LrScheduleKind::kCosine: {
      if (step < warmup_steps_) return current / double(std::max<int64_t>(1, warmup_steps_));
      const double progress =
          double(step - warmup_steps_) / double(std::max<int64_t>(1, total_steps_ - warmup_steps_));
      constexpr double kNumCycles = 0.5;
      return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * kNumCycles * 2.0 * progress)));
    }
  }
  return 1.0;
}

}  // namespace gemma
