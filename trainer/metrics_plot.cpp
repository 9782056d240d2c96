#include "trainer/metrics_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>
#include <system_error>

#include <nlohmann/json.hpp>

#include "io/atomic_output.h"
#include "io/bounded_json.h"
#include "io/input_error.h"

namespace gemma {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// The canvas and the plot area inside it, in SVG user units (pixels).
constexpr double kWidth = 800, kHeight = 480;
constexpr double kPlotLeft = 80, kPlotRight = 710, kPlotTop = 50, kPlotBottom = 420;
constexpr int kTargetTicks = 5;

// matplotlib's first colours, so the plot reads like TRL users' own.
constexpr char kLossColour[] = "#1f77b4";
constexpr char kEvalLossColour[] = "#ff7f0e";
constexpr char kLearningRateColour[] = "#2ca02c";

std::optional<double> read_number(const json& line, const char* key, const std::string& where) {
  const auto it = line.find(key);
  if (it == line.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) {
    throw InputError(where + ": \"" + key + "\" must be a number, found " +
                     error_excerpt(it->dump()));
  }
  return it->get<double>();
}

MetricsPoint parse_line(const std::string& text, const std::string& where) {
  const json line = parse_json_input(text, where);
  if (!line.is_object()) {
    throw InputError(where + ": expected a JSON object (one logged step), found " +
                     std::string(line.type_name()));
  }
  const auto step = line.find("step");
  if (step == line.end()) throw InputError(where + ": missing \"step\"");
  // An unsigned step of 2^63 or more would wrap in int64.
  if (!step->is_number_integer() ||
      (step->is_number_unsigned() &&
       step->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))) {
    throw InputError(where + ": \"step\" must be an integer below 2^63, found " +
                     error_excerpt(step->dump()));
  }
  MetricsPoint point;
  point.step = step->get<int64_t>();
  point.loss = read_number(line, "loss", where);
  point.eval_loss = read_number(line, "eval_loss", where);
  point.learning_rate = read_number(line, "learning_rate", where);
  return point;
}

// An axis from lo to hi with ticks every `step`, all round numbers.
struct Axis {
  double lo = 0, hi = 1, step = 1;
  int tick_count() const { return static_cast<int>(std::lround((hi - lo) / step)) + 1; }
  double tick(int i) const { return lo + i * step; }
};

Axis nice_axis(double min, double max, double min_step) {
  if (!(max > min)) {
    const double pad = min == 0 ? 1 : std::abs(min) * 0.1;
    min -= pad;
    max += pad;
  }
  const double raw = (max - min) / kTargetTicks;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / magnitude;
  const double nice = f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10;
  Axis axis;
  axis.step = std::max(nice * magnitude, min_step);
  axis.lo = std::floor(min / axis.step + 1e-9) * axis.step;
  axis.hi = std::ceil(max / axis.step - 1e-9) * axis.step;
  return axis;
}

// The fewest decimals (up to 6) that write `x` exactly, e.g. 2.5 -> 1.
int decimals_of(double x) {
  for (int d = 0; d < 6; ++d) {
    const double scaled = x * std::pow(10.0, d);
    if (std::abs(scaled - std::round(scaled)) < 1e-6 * std::max(1.0, std::abs(scaled))) return d;
  }
  return 6;
}

// "0", "12", "2.5", "0.25"; learning rates as "5e-5", "1.5e-4".
std::string format_tick(double value, double step) {
  char text[64];
  if (std::abs(value) < step * 1e-6) return "0";
  if (step >= 1e-3 && std::abs(value) < 1e7) {
    std::snprintf(text, sizeof(text), "%.*f", decimals_of(step), value);
    return text;
  }
  const int exponent = static_cast<int>(std::floor(std::log10(std::abs(value))));
  const double mantissa = value / std::pow(10.0, exponent);
  std::snprintf(text, sizeof(text), "%.*fe%d", std::min(decimals_of(mantissa), 3), mantissa,
                exponent);
  return text;
}

std::string xml_escape(const std::string& text) {
  std::string out;
  for (const char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string coord(double v) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f", v);
  return text;
}

// Maps data values to the plot area.
struct Frame {
  Axis x, left, right;
  double px(double step) const {
    return kPlotLeft + (step - x.lo) / (x.hi - x.lo) * (kPlotRight - kPlotLeft);
  }
  static double py(const Axis& axis, double v) {
    return kPlotBottom - (v - axis.lo) / (axis.hi - axis.lo) * (kPlotBottom - kPlotTop);
  }
};

using Series = std::vector<std::pair<double, double>>;  // (step, value)

Series series_of(const std::vector<MetricsPoint>& points,
                 std::optional<double> MetricsPoint::*member) {
  Series out;
  for (const MetricsPoint& p : points) {
    if (p.*member) out.emplace_back(static_cast<double>(p.step), *(p.*member));
  }
  return out;
}

void draw_series(std::ostringstream& svg, const Series& series, const Frame& frame,
                 const Axis& axis, const char* name, const char* colour, bool dashed,
                 bool markers) {
  if (series.empty()) return;
  svg << "<polyline class=\"" << name << "\" fill=\"none\" stroke=\"" << colour
      << "\" stroke-width=\"1.5\"" << (dashed ? " stroke-dasharray=\"6,3\"" : "") << " points=\"";
  for (size_t i = 0; i < series.size(); ++i) {
    svg << (i ? " " : "") << coord(frame.px(series[i].first)) << ","
        << coord(Frame::py(axis, series[i].second));
  }
  svg << "\"/>\n";
  if (!markers && series.size() > 1) return;
  for (const auto& [step, value] : series) {
    svg << "<circle class=\"" << name << "\" cx=\"" << coord(frame.px(step)) << "\" cy=\""
        << coord(Frame::py(axis, value)) << "\" r=\"3\" fill=\"" << colour << "\"/>\n";
  }
}

void draw_axes(std::ostringstream& svg, const Frame& frame, bool has_right) {
  svg << "<g class=\"grid\" stroke=\"#e6e6e6\">\n";
  for (int i = 0; i < frame.left.tick_count(); ++i) {
    const std::string y = coord(Frame::py(frame.left, frame.left.tick(i)));
    svg << "<line x1=\"" << coord(kPlotLeft) << "\" y1=\"" << y << "\" x2=\"" << coord(kPlotRight)
        << "\" y2=\"" << y << "\"/>\n";
  }
  svg << "</g>\n<rect x=\"" << coord(kPlotLeft) << "\" y=\"" << coord(kPlotTop) << "\" width=\""
      << coord(kPlotRight - kPlotLeft) << "\" height=\"" << coord(kPlotBottom - kPlotTop)
      << "\" fill=\"none\" stroke=\"#333\"/>\n";

  svg << "<g class=\"x-axis\" text-anchor=\"middle\">\n";
  for (int i = 0; i < frame.x.tick_count(); ++i) {
    const std::string x = coord(frame.px(frame.x.tick(i)));
    svg << "<line x1=\"" << x << "\" y1=\"" << coord(kPlotBottom) << "\" x2=\"" << x << "\" y2=\""
        << coord(kPlotBottom + 5) << "\" stroke=\"#333\"/><text x=\"" << x << "\" y=\""
        << coord(kPlotBottom + 19) << "\">" << format_tick(frame.x.tick(i), frame.x.step)
        << "</text>\n";
  }
  svg << "<text x=\"" << coord((kPlotLeft + kPlotRight) / 2) << "\" y=\"" << coord(kPlotBottom + 42)
      << "\">step</text>\n</g>\n";

  svg << "<g class=\"left-axis\" text-anchor=\"end\">\n";
  for (int i = 0; i < frame.left.tick_count(); ++i) {
    const std::string y = coord(Frame::py(frame.left, frame.left.tick(i)));
    svg << "<line x1=\"" << coord(kPlotLeft - 5) << "\" y1=\"" << y << "\" x2=\""
        << coord(kPlotLeft) << "\" y2=\"" << y << "\" stroke=\"#333\"/><text x=\""
        << coord(kPlotLeft - 8) << "\" y=\"" << y << "\" dy=\"4\">"
        << format_tick(frame.left.tick(i), frame.left.step) << "</text>\n";
  }
  const double middle = (kPlotTop + kPlotBottom) / 2;
  svg << "<text x=\"20\" y=\"" << coord(middle)
      << "\" text-anchor=\"middle\" transform=\"rotate(-90 20 " << coord(middle)
      << ")\">loss</text>\n</g>\n";
  if (!has_right) return;

  svg << "<g class=\"right-axis\" text-anchor=\"start\" fill=\"" << kLearningRateColour << "\">\n";
  for (int i = 0; i < frame.right.tick_count(); ++i) {
    const std::string y = coord(Frame::py(frame.right, frame.right.tick(i)));
    svg << "<line x1=\"" << coord(kPlotRight) << "\" y1=\"" << y << "\" x2=\""
        << coord(kPlotRight + 5) << "\" y2=\"" << y << "\" stroke=\"" << kLearningRateColour
        << "\"/><text x=\"" << coord(kPlotRight + 8) << "\" y=\"" << y << "\" dy=\"4\">"
        << format_tick(frame.right.tick(i), frame.right.step) << "</text>\n";
  }
  const double x = kWidth - 14;
  svg << "<text x=\"" << coord(x) << "\" y=\"" << coord(middle)
      << "\" text-anchor=\"middle\" transform=\"rotate(90 " << coord(x) << " " << coord(middle)
      << ")\">learning rate</text>\n</g>\n";
}

struct LegendEntry {
  const char* name;
  const char* colour;
  bool dashed;
};

void draw_legend(std::ostringstream& svg, const std::vector<LegendEntry>& entries) {
  const double width = 120, row = 18;
  const double x = kPlotRight - width - 10, y = kPlotTop + 10;
  svg << "<g class=\"legend\">\n<rect x=\"" << coord(x) << "\" y=\"" << coord(y) << "\" width=\""
      << coord(width) << "\" height=\"" << coord(row * entries.size() + 8)
      << "\" fill=\"white\" fill-opacity=\"0.85\" stroke=\"#bbb\"/>\n";
  for (size_t i = 0; i < entries.size(); ++i) {
    const std::string line_y = coord(y + 13 + row * i);
    svg << "<line x1=\"" << coord(x + 8) << "\" y1=\"" << line_y << "\" x2=\"" << coord(x + 32)
        << "\" y2=\"" << line_y << "\" stroke=\"" << entries[i].colour << "\" stroke-width=\"2\""
        << (entries[i].dashed ? " stroke-dasharray=\"6,3\"" : "") << "/><text x=\"" << coord(x + 38)
        << "\" y=\"" << line_y << "\" dy=\"4\">" << entries[i].name << "</text>\n";
  }
  svg << "</g>\n";
}

}  // namespace

std::vector<MetricsPoint> read_metrics_jsonl(const fs::path& metrics_jsonl) {
  const std::string text = read_text_file(metrics_jsonl);
  std::vector<MetricsPoint> points;
  size_t begin = 0;
  for (int64_t line_number = 1; begin < text.size(); ++line_number) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(begin, end - begin);
    begin = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    points.push_back(parse_line(line, metrics_jsonl.string() + ":" + std::to_string(line_number)));
  }
  if (points.empty()) {
    throw InputError(metrics_jsonl.string() +
                     ": empty; expected one JSON object per logged step (metrics.jsonl)");
  }
  const bool has_loss = std::any_of(points.begin(), points.end(), [](const MetricsPoint& p) {
    return p.loss.has_value() || p.eval_loss.has_value();
  });
  if (!has_loss) {
    throw InputError(metrics_jsonl.string() + ": no line has a \"loss\" or \"eval_loss\"");
  }
  return points;
}

std::string render_metrics_svg(const std::vector<MetricsPoint>& points, const std::string& title) {
  std::vector<MetricsPoint> sorted = points;
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const MetricsPoint& a, const MetricsPoint& b) { return a.step < b.step; });
  const Series loss = series_of(sorted, &MetricsPoint::loss);
  const Series eval_loss = series_of(sorted, &MetricsPoint::eval_loss);
  const Series learning_rate = series_of(sorted, &MetricsPoint::learning_rate);
  if (loss.empty() && eval_loss.empty()) {
    throw InputError("metrics plot \"" + title + "\": no loss or eval_loss to draw");
  }

  double loss_min = HUGE_VAL, loss_max = -HUGE_VAL, step_min = HUGE_VAL, step_max = -HUGE_VAL;
  for (const Series* s : {&loss, &eval_loss}) {
    for (const auto& [step, value] : *s) {
      loss_min = std::min(loss_min, value);
      loss_max = std::max(loss_max, value);
    }
  }
  double lr_max = 0;  // the right axis starts at 0: schedules warm up from and decay towards it
  for (const auto& [step, value] : learning_rate) lr_max = std::max(lr_max, value);
  for (const MetricsPoint& p : sorted) {
    step_min = std::min(step_min, static_cast<double>(p.step));
    step_max = std::max(step_max, static_cast<double>(p.step));
  }
  Frame frame;
  frame.x = nice_axis(step_min, step_max, 1.0);  // steps are whole numbers
  frame.left = nice_axis(loss_min, loss_max, 0.0);
  frame.right = nice_axis(0.0, lr_max, 0.0);

  std::ostringstream svg;
  svg << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kWidth << "\" height=\"" << kHeight
      << "\" viewBox=\"0 0 " << kWidth << " " << kHeight
      << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
      << "<title>" << xml_escape(title) << "</title>\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text class=\"title\" x=\"" << coord(kWidth / 2)
      << "\" y=\"30\" text-anchor=\"middle\" font-size=\"16\">" << xml_escape(title) << "</text>\n";
  draw_axes(svg, frame, !learning_rate.empty());
  draw_series(svg, learning_rate, frame, frame.right, "learning_rate", kLearningRateColour, true,
              false);
  draw_series(svg, loss, frame, frame.left, "loss", kLossColour, false, false);
  draw_series(svg, eval_loss, frame, frame.left, "eval_loss", kEvalLossColour, false, true);

  std::vector<LegendEntry> legend;
  if (!loss.empty()) legend.push_back({"train loss", kLossColour, false});
  if (!eval_loss.empty()) legend.push_back({"eval loss", kEvalLossColour, false});
  if (!learning_rate.empty()) legend.push_back({"learning rate", kLearningRateColour, true});
  draw_legend(svg, legend);
  svg << "</svg>\n";
  return svg.str();
}

void write_metrics_svg(const std::vector<MetricsPoint>& points, const fs::path& svg_out,
                       const std::string& title, ExistingOutput existing) {
  std::error_code ec;
  if (fs::is_symlink(fs::symlink_status(svg_out, ec))) {
    throw InputError(svg_out.string() + ": is a symlink; refusing to replace it");
  }
  write_file_atomically(svg_out, render_metrics_svg(points, title), existing);
}

void write_metrics_plot(const fs::path& metrics_jsonl, const fs::path& svg_out,
                        const std::string& title, ExistingOutput existing) {
  std::error_code ec;
  if (fs::exists(svg_out, ec) && fs::equivalent(svg_out, metrics_jsonl, ec)) {
    throw InputError(svg_out.string() + ": is the input " + metrics_jsonl.string() +
                     "; choose another --out");
  }
  write_metrics_svg(read_metrics_jsonl(metrics_jsonl), svg_out, title, existing);
}

}  // namespace gemma
