#include "trainer/progress_bar.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

namespace gemma {

namespace {

constexpr int kBarWidth = 20;
// tqdm's unicode bar: full blocks, then one of eight partial blocks for the fraction left.
constexpr const char* kPartialBlocks[] = {"", "▏", "▎", "▍", "▌", "▋", "▊", "▉"};
constexpr const char* kFullBlock = "█";

std::string bar_text(double fraction) {
  fraction = std::clamp(fraction, 0.0, 1.0);
  const double length = fraction * kBarWidth;
  const int full = static_cast<int>(length);
  std::string bar;
  for (int i = 0; i < full; ++i) bar += kFullBlock;
  int cells = full;
  if (full < kBarWidth) {
    const int partial = static_cast<int>((length - full) * 8);
    if (partial > 0) {
      bar += kPartialBlocks[partial];
      ++cells;
    }
  }
  bar.append(kBarWidth - cells, ' ');
  return bar;
}

// tqdm's rate_fmt: "3.10it/s", or "2.50s/it" below one step a second; "?it/s" before any.
std::string rate_text(double steps_per_second) {
  char text[32];
  if (!(steps_per_second > 0) || !std::isfinite(steps_per_second)) return "?it/s";
  if (steps_per_second >= 1) {
    std::snprintf(text, sizeof(text), "%.2fit/s", steps_per_second);
  } else {
    std::snprintf(text, sizeof(text), "%.2fs/it", 1 / steps_per_second);
  }
  return text;
}

size_t display_width(const std::string& utf8) {
  size_t width = 0;
  for (const char c : utf8) width += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return width;
}

}  // namespace

std::string format_interval(double seconds) {
  const auto total = static_cast<int64_t>(std::max(0.0, seconds));
  const int64_t hours = total / 3600, minutes = total / 60 % 60, secs = total % 60;
  char text[48];
  if (hours > 0) {
    std::snprintf(text, sizeof(text), "%lld:%02lld:%02lld",
                  static_cast<long long>(hours),  // NOLINT(google-runtime-int)
                  static_cast<long long>(minutes), static_cast<long long>(secs));
  } else {
    std::snprintf(text, sizeof(text), "%02lld:%02lld", static_cast<long long>(minutes),
                  static_cast<long long>(secs));  // NOLINT(google-runtime-int)
  }
  return text;
}

ProgressBar::ProgressBar(int64_t total_steps, std::ostream& out, bool terminal, Clock clock,
                         int64_t start_step)
    : total_steps_(total_steps),
      out_(out),
      terminal_(terminal),
      clock_(std::move(clock)),
      start_step_(start_step),
      start_time_(clock_()) {}

std::string ProgressBar::render(int64_t step, const Fields& fields, double now) const {
  const double elapsed = now - start_time_;
  const double rate = elapsed > 0 ? static_cast<double>(step - start_step_) / elapsed : 0;
  const bool known_total = total_steps_ > 0;
  const double fraction =
      known_total ? static_cast<double>(step) / static_cast<double>(total_steps_) : 0;
  std::string timing = format_interval(elapsed);
  if (known_total) {
    const auto left = static_cast<double>(std::max<int64_t>(total_steps_ - step, 0));
    timing += '<';
    timing += rate > 0 ? format_interval(left / rate) : "?";
  }
  timing += ", ";
  timing += rate_text(rate);
  std::string count = std::to_string(step);
  if (known_total) {
    count += '/';
    count += std::to_string(total_steps_);
  } else {
    count += "it";
  }
  char percent[16];
  std::snprintf(percent, sizeof(percent), "%3.0f%%", 100.0 * fraction);

  if (!terminal_) {  // step 37/100 (37%) [00:12<00:20, 3.10it/s] loss=2.314
    std::string line = "step " + count;
    if (known_total) {
      std::string trimmed = percent;
      trimmed.erase(0, trimmed.find_first_not_of(' '));
      line += " (" + trimmed + ")";
    }
    line += " [" + timing + "]";
    for (const auto& [key, value] : fields) line += " " + key + "=" + value;
    return line;
  }
  std::string postfix;
  for (const auto& [key, value] : fields) postfix += ", " + key + "=" + value;
  if (!known_total) return count + " [" + timing + postfix + "]";  // tqdm without a total
  return std::string(percent) + "|" + bar_text(fraction) + "| " + count + " [" + timing + postfix +
         "]";
}

void ProgressBar::update(int64_t step, const Fields& fields) {
  if (finished_) return;
  const std::string line = render(step, fields, clock_());
  if (!terminal_) {
    out_ << line << "\n" << std::flush;
    return;
  }
  // Pad with spaces over whatever of the previous, longer line would still show.
  const size_t width = display_width(line), last = display_width(last_line_);
  out_ << "\r" << line << std::string(last > width ? last - width : 0, ' ') << std::flush;
  last_line_ = line;
}

void ProgressBar::clear_line() {
  if (last_line_.empty()) return;
  out_ << "\r" << std::string(display_width(last_line_), ' ') << "\r";
}

void ProgressBar::message(const std::string& line) {
  if (!terminal_ || finished_) {
    out_ << line << "\n" << std::flush;
    return;
  }
  clear_line();
  out_ << line << "\n";
  if (!last_line_.empty()) out_ << last_line_;
  out_ << std::flush;
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  if (terminal_ && !last_line_.empty()) out_ << "\n" << std::flush;
}

bool ProgressBar::stderr_is_terminal() { return ::isatty(STDERR_FILENO) == 1; }

double ProgressBar::steady_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

}  // namespace gemma
