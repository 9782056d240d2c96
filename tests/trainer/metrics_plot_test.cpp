#include "trainer/metrics_plot.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>

#include "io/input_error.h"
#include "tests/model/test_models.h"

namespace gemma {
namespace {

using testing::ScratchDir;

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

size_t count(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

// Expects `fn` to throw an InputError whose one-line message contains each of `needles`.
template <typename Fn>
void expect_input_error(Fn fn, const std::vector<std::string>& needles) {
  try {
    fn();
    FAIL() << "no error; expected one mentioning " << needles.front();
  } catch (const InputError& e) {
    const std::string msg = e.what();
    for (const std::string& needle : needles) {
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    }
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

// What TRL logs: train lines, an eval line, and the end-of-training summary.
const char kRun[] =
    R"({"loss": 2.5, "grad_norm": 1.2, "learning_rate": 0.0001, "epoch": 0.1, "step": 10})"
    "\n"
    R"({"loss": 2.1, "grad_norm": 0.9, "learning_rate": 0.0002, "epoch": 0.2, "step": 20})"
    "\n"
    R"({"eval_loss": 2.2, "eval_runtime": 1.5, "epoch": 0.2, "step": 20})"
    "\n"
    "\n"
    R"({"loss": 1.7, "learning_rate": 0.00015, "epoch": 0.3, "step": 30})"
    "\n"
    R"({"train_runtime": 12.5, "train_loss": 2.1, "epoch": 0.3, "step": 30})"
    "\n";

TEST(MetricsPlot, ReadsTrlLinesWithMissingKeys) {
  ScratchDir dir;
  write_text(dir / "metrics.jsonl", kRun);
  const std::vector<MetricsPoint> points = read_metrics_jsonl(dir / "metrics.jsonl");
  ASSERT_EQ(points.size(), 5U);  // the blank line is skipped
  EXPECT_EQ(points[0].step, 10);
  EXPECT_DOUBLE_EQ(*points[0].loss, 2.5);
  EXPECT_DOUBLE_EQ(*points[0].learning_rate, 1e-4);
  EXPECT_FALSE(points[0].eval_loss);
  EXPECT_FALSE(points[2].loss);
  EXPECT_DOUBLE_EQ(*points[2].eval_loss, 2.2);
  EXPECT_FALSE(points[4].loss);  // train_loss is the run's mean, not a point of the curve
}

TEST(MetricsPlot, WritesAnSvgWithTheThreeCurves) {
  ScratchDir dir;
  write_text(dir / "metrics.jsonl", kRun);
  write_metrics_plot(dir / "metrics.jsonl", dir / "loss.svg", "run <a & b>");
  const std::string svg = read_text(dir / "loss.svg");
  EXPECT_EQ(svg.rfind("<?xml", 0), 0U);
  EXPECT_NE(svg.find("<svg xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_EQ(count(svg, "<polyline class=\"loss\""), 1U);
  EXPECT_EQ(count(svg, "<polyline class=\"eval_loss\""), 1U);
  EXPECT_EQ(count(svg, "<polyline class=\"learning_rate\""), 1U);
  EXPECT_EQ(count(svg, "<circle class=\"eval_loss\""), 1U);         // a lone eval point still shows
  EXPECT_NE(svg.find("run &lt;a &amp; b&gt;"), std::string::npos);  // the title, escaped
  EXPECT_EQ(svg.find("<a & b>"), std::string::npos);
  for (const char* label : {"train loss", "eval loss", "learning rate", ">step<"}) {
    EXPECT_NE(svg.find(label), std::string::npos) << label;
  }
  EXPECT_NE(svg.find(">2e-4<"), std::string::npos);  // right-axis tick labels
  EXPECT_NE(svg.find(">30<"), std::string::npos);    // x-axis tick labels
}

TEST(MetricsPlot, PlacesPointsInsideThePlotArea) {
  const std::vector<MetricsPoint> points = {{1, 3.0, std::nullopt, 0.0}, {2, 1.0, 2.0, 1e-3}};
  const std::string svg = render_metrics_svg(points, "t");
  const size_t at = svg.find("<polyline class=\"loss\"");
  ASSERT_NE(at, std::string::npos);
  const size_t begin = svg.find("points=\"", at) + 8;
  const std::string coords = svg.substr(begin, svg.find('"', begin) - begin);
  std::istringstream in(coords);
  std::string pair;
  int n = 0;
  while (in >> pair) {
    const double x = std::stod(pair.substr(0, pair.find(',')));
    const double y = std::stod(pair.substr(pair.find(',') + 1));
    EXPECT_GE(x, 80);
    EXPECT_LE(x, 710);
    EXPECT_GE(y, 50);
    EXPECT_LE(y, 420);
    ++n;
  }
  EXPECT_EQ(n, 2);
}

TEST(MetricsPlot, DrawsWithoutALearningRateOrWithOnePoint) {
  const std::string svg = render_metrics_svg({{5, 1.5, std::nullopt, std::nullopt}}, "one");
  EXPECT_NE(svg.find("<polyline class=\"loss\""), std::string::npos);
  EXPECT_NE(svg.find("<circle class=\"loss\""), std::string::npos);
  EXPECT_EQ(svg.find("class=\"right-axis\""), std::string::npos);
  EXPECT_EQ(svg.find("nan"), std::string::npos);
}

TEST(MetricsPlot, BadLinesNameFileAndLine) {
  ScratchDir dir;
  const auto path = dir / "metrics.jsonl";
  const std::string good = R"({"loss": 1.0, "step": 1})"
                           "\n";
  const std::string where = path.string() + ":2";
  write_text(path, good + "{not json\n");
  expect_input_error([&] { read_metrics_jsonl(path); }, {where, "not valid JSON"});
  write_text(path, good + R"({"loss": 1.0})" + "\n");
  expect_input_error([&] { read_metrics_jsonl(path); }, {where, "missing \"step\""});
  write_text(path, good + R"({"loss": 1.0, "step": "3"})" + "\n");
  expect_input_error([&] { read_metrics_jsonl(path); }, {where, "\"step\" must be an integer"});
  write_text(path, good + R"({"loss": 1.0, "step": 2.5})" + "\n");
  expect_input_error([&] { read_metrics_jsonl(path); }, {where, "\"step\" must be an integer"});
  write_text(path, good + R"({"loss": "low", "step": 2})" + "\n");
  expect_input_error([&] { read_metrics_jsonl(path); }, {where, "\"loss\" must be a number"});
  write_text(path, good + "[1, 2]\n");
  expect_input_error([&] { read_metrics_jsonl(path); }, {where, "expected a JSON object"});
  // A number past double's range is nlohmann's out_of_range, not its parse_error: still an
  // InputError; a step past int64 is refused rather than wrapped.
  write_text(path, good + R"({"loss": 1e999, "step": 2})" + "\n");
  expect_input_error([&] { read_metrics_jsonl(path); }, {where, "not valid JSON"});
  write_text(path, good + R"({"loss": 1.0, "step": 9223372036854775808})" + "\n");
  expect_input_error([&] { read_metrics_jsonl(path); }, {where, "below 2^63"});
}

TEST(MetricsPlot, EmptyFilesAndFilesWithoutLossAreInputErrors) {
  ScratchDir dir;
  const auto path = dir / "metrics.jsonl";
  write_text(path, "");
  expect_input_error([&] { read_metrics_jsonl(path); }, {path.string(), "empty"});
  write_text(path, "\n  \n");
  expect_input_error([&] { read_metrics_jsonl(path); }, {path.string(), "empty"});
  write_text(path, R"({"learning_rate": 0.1, "step": 1})"
                   "\n");
  expect_input_error([&] { write_metrics_plot(path, dir / "out.svg", "t"); },
                     {path.string(), "no line has a \"loss\""});
  EXPECT_FALSE(std::filesystem::exists(dir / "out.svg"));
  expect_input_error([&] { read_metrics_jsonl(dir / "absent.jsonl"); }, {"absent.jsonl"});
  expect_input_error([&] { render_metrics_svg({}, "t"); }, {"no loss"});
}

TEST(MetricsPlot, RefusesToOverwriteItsInput) {
  ScratchDir dir;
  const auto path = dir / "metrics.jsonl";
  write_text(path, kRun);
  expect_input_error([&] { write_metrics_plot(path, path, "t"); }, {"is the input"});
  std::filesystem::create_symlink(path, dir / "link.svg");
  expect_input_error([&] { write_metrics_plot(path, dir / "link.svg", "t"); }, {"is the input"});
  EXPECT_EQ(read_text(path), kRun);
}

TEST(MetricsPlot, RefusesToReplaceASymlinkAndReplacesAPlainFileOnlyWhenAsked) {
  ScratchDir dir;
  write_text(dir / "metrics.jsonl", kRun);
  write_text(dir / "other.txt", "keep");
  std::filesystem::create_symlink(dir / "other.txt", dir / "loss.svg");
  expect_input_error([&] { write_metrics_plot(dir / "metrics.jsonl", dir / "loss.svg", "t"); },
                     {"symlink"});
  EXPECT_EQ(read_text(dir / "other.txt"), "keep");
  write_text(dir / "old.svg", "old");
  // An existing file is kept unless replacing is asked for (`plot --overwrite`).
  expect_input_error([&] { write_metrics_plot(dir / "metrics.jsonl", dir / "old.svg", "t"); },
                     {"already exists"});
  EXPECT_EQ(read_text(dir / "old.svg"), "old");
  write_metrics_plot(dir / "metrics.jsonl", dir / "old.svg", "t", ExistingOutput::kReplace);
  EXPECT_NE(read_text(dir / "old.svg").find("<svg"), std::string::npos);
}

}  // namespace
}  // namespace gemma
