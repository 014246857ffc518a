// edkm/util/progress.h: the rate reads s/it below one item per second, long ETAs in minutes and
// hours, and a log (not a terminal) gets one line per 10%.
#include <edkm/util/progress.h>

#include <sstream>

#include "test_util.h"

namespace edkm {
namespace {

TEST(ProgressBar, RateAndDurationFormats) {
  EXPECT_EQ(ProgressBar::format_rate(12.34), "12.3 it/s");
  EXPECT_EQ(ProgressBar::format_rate(1.0), "1.0 it/s");
  EXPECT_EQ(ProgressBar::format_rate(1.0 / 12.6), "12.6 s/it");  // a DKM step of a real model
  EXPECT_EQ(ProgressBar::format_rate(0.0), "- it/s");
  EXPECT_EQ(ProgressBar::format_duration(4.94), "4.9s");
  EXPECT_EQ(ProgressBar::format_duration(187.0), "3m07s");
  EXPECT_EQ(ProgressBar::format_duration(59.96), "60.0s");
  EXPECT_EQ(ProgressBar::format_duration(7500.0), "2h05m");
  EXPECT_EQ(ProgressBar::format_duration(-1.0), "?");
}

TEST(ProgressBar, OneLinePerTenthInALog) {
  std::ostringstream log;
  {
    ProgressBar bar(20, "steps", &log);
    for (int i = 0; i < 20; ++i) bar.tick("loss 1.0");
  }
  const std::string s = log.str();
  int lines = 0;
  for (char c : s) lines += c == '\n';
  EXPECT_EQ(lines, 11) << s;  // the first tick (decile 0), then deciles 1..10
  EXPECT_NE(s.find("steps [########################] 20/20"), std::string::npos) << s;
  EXPECT_NE(s.find("it/s ETA 0.0s  loss 1.0"), std::string::npos) << s;
}

}  // namespace
}  // namespace edkm
