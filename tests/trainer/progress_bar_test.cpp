#include "trainer/progress_bar.h"

#include <gtest/gtest.h>

#include <sstream>
#include <string>

namespace gemma {
namespace {

// A clock the test moves by hand.
struct FakeClock {
  double now = 100.0;
  ProgressBar::Clock function() {
    return [this] { return now; };
  }
};

TEST(ProgressBar, FormatsIntervalsLikeTqdm) {
  EXPECT_EQ(format_interval(0), "00:00");
  EXPECT_EQ(format_interval(12.7), "00:12");
  EXPECT_EQ(format_interval(20 * 60 + 5), "20:05");
  EXPECT_EQ(format_interval(3 * 3600 + 4 * 60 + 5), "3:04:05");
  EXPECT_EQ(format_interval(-3), "00:00");
}

TEST(ProgressBar, TerminalLineLooksLikeTqdm) {
  FakeClock clock;
  std::ostringstream out;
  ProgressBar bar(100, out, true, clock.function());
  clock.now += 12;
  EXPECT_EQ(bar.render(37, {{"loss", "2.314"}, {"tok/s", "812"}}, clock.now),
            " 37%|███████▍            | 37/100 [00:12<00:20, 3.08it/s, loss=2.314, tok/s=812]");
  EXPECT_EQ(bar.render(0, {}, 100.0), "  0%|                    | 0/100 [00:00<?, ?it/s]");
  EXPECT_EQ(bar.render(100, {}, 100.0 + 50),
            "100%|████████████████████| 100/100 [00:50<00:00, 2.00it/s]");
  EXPECT_EQ(bar.render(1, {}, 100.0 + 4),
            "  1%|▏                   | 1/100 [00:04<06:36, 4.00s/it]");
}

TEST(ProgressBar, TerminalRedrawsOneLineAndKeepsItUnderMessages) {
  FakeClock clock;
  std::ostringstream out;
  ProgressBar bar(4, out, true, clock.function());
  clock.now += 2;
  bar.update(1, {{"loss", "10.0"}});
  const std::string first = " 25%|█████               | 1/4 [00:02<00:06, 2.00s/it, loss=10.0]";
  EXPECT_EQ(out.str(), "\r" + first);
  out.str("");
  clock.now += 2;
  bar.update(2);  // shorter than the last line: padded with spaces over its tail
  const std::string second = " 50%|██████████          | 2/4 [00:04<00:04, 2.00s/it]";
  EXPECT_EQ(out.str(), "\r" + second + std::string(65 - 54, ' '));  // widths in characters
  out.str("");
  bar.message("eval_loss=1.5");
  const std::string blank(54, ' ');  // the bar's width in characters, not bytes
  EXPECT_EQ(out.str(), "\r" + blank + "\reval_loss=1.5\n" + second);
  out.str("");
  bar.finish();
  EXPECT_EQ(out.str(), "\n");
  bar.update(3);  // after finish, nothing
  bar.finish();
  EXPECT_EQ(out.str(), "\n");
}

TEST(ProgressBar, PlainOutputIsOneLinePerUpdateWithoutCarriageReturns) {
  FakeClock clock;
  std::ostringstream out;
  ProgressBar bar(100, out, false, clock.function());
  clock.now += 12;
  bar.update(37, {{"loss", "2.314"}});
  bar.message("saved checkpoint-37");
  clock.now += 1;
  bar.update(40);
  bar.finish();
  EXPECT_EQ(out.str(),
            "step 37/100 (37%) [00:12<00:20, 3.08it/s] loss=2.314\n"
            "saved checkpoint-37\n"
            "step 40/100 (40%) [00:13<00:19, 3.08it/s]\n");
  EXPECT_EQ(out.str().find('\r'), std::string::npos);
}

TEST(ProgressBar, RateCountsOnlyThisRunsStepsWhenResumed) {
  FakeClock clock;
  std::ostringstream out;
  ProgressBar bar(1000, out, false, clock.function(), 500);
  EXPECT_EQ(bar.render(510, {}, clock.now + 5), "step 510/1000 (51%) [00:05<04:05, 2.00it/s]");
}

TEST(ProgressBar, UnknownTotalShowsCountAndRate) {
  FakeClock clock;
  std::ostringstream out;
  ProgressBar bar(0, out, true, clock.function());
  EXPECT_EQ(bar.render(6, {{"loss", "1"}}, clock.now + 3), "6it [00:03, 2.00it/s, loss=1]");
}

}  // namespace
}  // namespace gemma
