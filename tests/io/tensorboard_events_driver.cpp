// Writes scalars with TensorBoardWriter, for tests/reference/test_tensorboard.py, which reads
// them back with tensorboard's own EventAccumulator.
// Usage: tensorboard_events_driver LOGDIR (TAG STEP VALUE WALL_TIME)...   prints the file written.
#include <cstdio>
#include <exception>
#include <string>

#include "io/tensorboard_events.h"

int main(int argc, char** argv) {
  if (argc < 2 || (argc - 2) % 4 != 0) {
    std::fprintf(stderr, "usage: %s LOGDIR (TAG STEP VALUE WALL_TIME)...\n", argv[0]);
    return 2;
  }
  try {
    gemma::TensorBoardWriter writer(argv[1]);
    for (int i = 2; i < argc; i += 4) {
      writer.add_scalar(argv[i], std::stod(argv[i + 2]), std::stoll(argv[i + 1]),
                        std::stod(argv[i + 3]));
      writer.flush();  // as the trainer does after each logging step
    }
    std::printf("%s\n", writer.path().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
