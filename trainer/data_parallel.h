// Data parallelism over a ProcessGroup, the pieces the loop composes: which rows of a global
// micro-batch are this rank's, the gradients summed over the ranks in flat float32 buckets, and
// the objective's metrics of each micro-batch merged as TRL reports them (the mean over ranks).
// With N ranks of micro-batch b, a global micro-batch is N·b consecutive rows of the epoch's
// order; the loss divides by the global micro-batch's loss units, so N ranks × b is 1 rank × N·b.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "optim/optimizer.h"
#include "trainer/process_group.h"

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

// Per micro-batch of a window, a rank's metrics by name; merged over ranks: each name's mean over
// the ranks that report it (a rank with no rows, or without a chosen row in KTO, reports none).
using WindowMetrics = std::vector<std::map<std::string, double>>;
WindowMetrics merge_rank_metrics(ProcessGroup& group, const WindowMetrics& mine);

}  // namespace gemma
