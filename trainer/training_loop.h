// The one training loop (torchtune's lora_finetune_single_device is the model): a recipe in, a
// PEFT adapter out. It loads the base (NF4 when asked) and attaches or loads the adapter, prepares
// the objective's data, builds the optimizer and schedule, and runs optimizer steps of
// gradient_accumulation_steps micro-batches with the loss normalised by the window's loss tokens,
// clipping, logging (metrics.jsonl, TensorBoard, the progress bar), evaluation, checkpoints with
// exact resume, SIGINT/SIGTERM, the final adapter, loss.svg and the recipe's export.
#pragma once

#include "trainer/recipe.h"

namespace gemma {

// Exit status: 0 when the run finished, 130 / 143 when SIGINT / SIGTERM stopped it after saving
// a checkpoint. Bad input (model, data, output_dir) is an InputError before anything is written.
int run_training(const Recipe& recipe);

}  // namespace gemma
