// ProgressBar: how far training is. On a terminal, one line redrawn in place like tqdm's
// `  37%|███████▍            | 37/100 [00:12<00:20, 3.10it/s, loss=2.314]`; elsewhere (a log
// file, a pipe) one plain line per update, with no carriage returns to garble the log.
#pragma once

#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace gemma {

class ProgressBar {
 public:
  using Clock = std::function<double()>;  // seconds, any origin; injectable for tests
  using Fields = std::vector<std::pair<std::string, std::string>>;  // shown as key=value

  // `start_step`: where a resumed run begins, so the rate counts only this run's steps.
  ProgressBar(int64_t total_steps, std::ostream& out, bool terminal, Clock clock = steady_seconds,
              int64_t start_step = 0);

  // Redraws the bar (terminal) or prints one line (plain) for `step` steps done.
  void update(int64_t step, const Fields& fields = {});
  // A line of its own above the bar (an eval result, a checkpoint saved); the bar stays below.
  void message(const std::string& line);
  // Ends the bar's line on a terminal; nothing more is drawn after.
  void finish();

  // The text of one update: the bar (terminal) or the plain line, without \r or \n.
  std::string render(int64_t step, const Fields& fields, double now) const;

  // Plain output prints a line per update(): call it on logging steps only when !terminal().
  bool terminal() const { return terminal_; }

  static bool stderr_is_terminal();
  static double steady_seconds();

 private:
  void clear_line();

  int64_t total_steps_;
  std::ostream& out_;
  bool terminal_;
  Clock clock_;
  int64_t start_step_;
  double start_time_;
  std::string last_line_;  // the bar as last drawn ("" when none is on screen)
  bool finished_ = false;
};

// tqdm's format_interval: "MM:SS", or "H:MM:SS" from an hour on.
std::string format_interval(double seconds);

}  // namespace gemma
