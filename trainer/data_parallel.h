// Data parallelism over a ProcessGroup, the pieces the loop composes: which rows of a global
// micro-batch are this rank's, the gradients summed over the ranks in flat float32 buckets, and
// the objective's metrics of each micro-batch merged as TRL gathers them.
// With N ranks of micro-batch b, a global micro-batch is N·b consecutive rows of the epoch's
// order; the loss divides by the global micro-batch's loss units, so N ranks × b is 1 rank × N·b.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "optim/optimizer.h"
#include "trainer/process_group.h"
#include "trainer/training_objective.h"

namespace gemma {

// Rank `rank`'s rows of a global micro-batch of `rows` (at most world · per_rank): the rank's
// `per_rank` rows when the batch is full; an even split when it is the short last one of an
// epoch (a rank then may have none).
std::vector<int64_t> rank_rows(const std::vector<int64_t>& rows, int rank, int world_size,
                               int64_t per_rank);

// Every trainable parameter's gradient becomes its sum over the ranks (an undefined gradient
// counts as zeros), in float32 buckets of at most `bucket_bytes`.
void all_reduce_gradients(ProcessGroup& group, const NamedTensors& params,
                          int64_t bucket_bytes = int64_t{25} << 20);

// Per micro-batch of a window, a rank's metrics as sums and counts; merged over the ranks: each
// name's sums and counts added, then divided, as TRL divides what it gathered. A name whose
// count is 0 on every rank is left out (KTO's rewards/chosen of a batch without a chosen row);
// then the objective's derived metrics are added (KTO's rewards/margins).
using WindowMetrics = std::vector<MicroBatchMetrics>;
std::vector<std::map<std::string, double>> merge_rank_metrics(ProcessGroup& group,
                                                              const TrainingObjective& objective,
                                                              const WindowMetrics& mine);

}  // namespace gemma
