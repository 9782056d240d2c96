// The learning-rate schedules of transformers' get_scheduler (5.23), as the LambdaLR multiplier
// of the initial lr after `step` optimizer steps: constant, constant_with_warmup, linear and
// cosine (num_cycles 0.5). The trainer calls Optimizer::set_lr_multiplier(schedule.lr_at(step)).
#pragma once

#include <cstdint>
#include <string>

namespace gemma {

enum class LrScheduleKind { kConstant, kConstantWithWarmup, kLinear, kCosine };

// "constant", "constant_with_warmup", "linear", "cosine" (transformers' SchedulerType names);
// throws std::invalid_argument on another name.
LrScheduleKind lr_schedule_kind_from_name(const std::string& name);

// TrainingArguments.get_warmup_steps: a value >= 1 is a step count (truncated), a value < 1 is a
// ratio of the total, ceil(ratio * total).
int64_t warmup_steps_for(double warmup_steps, int64_t total_steps);

class LrSchedule {
 public:
  LrSchedule(LrScheduleKind kind, int64_t warmup_steps, int64_t total_steps);

  // The multiplier for the step about to be taken after `step` completed steps (0 first).
  double lr_at(int64_t step) const;

  LrScheduleKind kind() const { return kind_; }
  int64_t warmup_steps() const { return warmup_steps_; }
  int64_t total_steps() const { return total_steps_; }

 private:
  LrScheduleKind kind_;
  int64_t warmup_steps_;
  int64_t total_steps_;
};

}  // namespace gemma
