// The one training loop (torchtune's lora_finetune_single_device is the model): a recipe in, a
// PEFT adapter out. It loads the base (NF4 when asked) and attaches or loads the adapter, prepares
// the objective's data, builds the optimizer and schedule, and runs optimizer steps of
// gradient_accumulation_steps micro-batches with the loss normalised by the window's loss tokens,
// clipping, logging (metrics.jsonl, TensorBoard, the progress bar), evaluation, checkpoints with
// exact resume, SIGINT/SIGTERM, the final adapter, loss.svg and the recipe's export.
#pragma once

#include "peft/adapter_spec.h"
#include "trainer/process_group.h"
#include "trainer/recipe.h"

namespace gemma {

// Exit status: 0 when the run finished, 130 / 143 when SIGINT / SIGTERM stopped it after saving
// a checkpoint. Bad input (model, data, output_dir) is an InputError before anything is written.
// With a group of several ranks (data parallel), each rank reads its rows of every global
// micro-batch, the gradients are summed over the ranks before each optimizer step and rank 0
// alone writes (logs, checkpoints, the adapter, exports); every rank returns the same status.
// The group's first collective is where the ranks agree that each is ready (agree_ranks_ready):
// a rank whose preparation failed must call it with its error (cli/train_command.cpp does).
int run_training(const Recipe& recipe, ProcessGroup& group);
int run_training(const Recipe& recipe);

// The recipe's peft section as an AdapterSpec; "all-linear" leaves target_modules to be filled
// from the loaded model's Linear names.
AdapterSpec adapter_spec(const Recipe& recipe);

}  // namespace gemma
