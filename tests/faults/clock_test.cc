// clock_test.cc — the queue's clock under system clock steps (issue #13: clock jumps).
#include "dataplane/base/clock.h"

#include <gtest/gtest.h>

namespace mailseal::base {
namespace {

int64_t g_wall = 0, g_steady = 0;
int64_t Wall() { return g_wall; }
int64_t Steady() { return g_steady; }

class ClockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    g_wall = 1'800'000'000'000;
    g_steady = 5'000;
    SetClockSourcesForTest(Wall, Steady);
  }
  void TearDown() override { SetClockSourcesForTest(nullptr, nullptr); }
  void Advance(int64_t ms) {
    g_wall += ms;
    g_steady += ms;
  }
};

TEST_F(ClockTest, FollowsTheSystemClockWithoutSteps) {
  EXPECT_EQ(QueueNowMs(), g_wall);
  Advance(60'000);
  EXPECT_EQ(QueueNowMs(), g_wall);
  EXPECT_EQ(TakeClockStep().step_ms, 0);
}

TEST_F(ClockTest, AStepBackIsAbsorbedAndReported) {
  int64_t before = QueueNowMs();
  g_wall -= 86'400'000;   // set back a day
  Advance(1'000);
  EXPECT_EQ(QueueNowMs(), before + 1'000) << "the queue's time goes on from before the step";
  ClockStep s = TakeClockStep();
  EXPECT_EQ(s.step_ms, -86'400'000);
  EXPECT_EQ(s.absorbed_ms, -86'400'000);
  EXPECT_EQ(TakeClockStep().step_ms, 0) << "reported once";
  Advance(5'000);
  EXPECT_EQ(QueueNowMs(), before + 6'000);
}

TEST_F(ClockTest, AStepForwardIsAbsorbed) {
  int64_t before = QueueNowMs();
  g_wall += 10LL * 86'400'000;   // ten days ahead: nothing in the queue may age by ten days
  EXPECT_EQ(QueueNowMs(), before);
  EXPECT_EQ(TakeClockStep().step_ms, 10LL * 86'400'000);
}

TEST_F(ClockTest, SlewingIsFollowed) {
  int64_t start = QueueNowMs();
  // NTP slewing: the system clock gains 200 ms per reading for 100 readings (20 s in all).
  for (int i = 0; i < 100; ++i) {
    Advance(1'000);
    g_wall += 200;
    QueueNowMs();
  }
  EXPECT_EQ(QueueNowMs(), g_wall) << "small corrections are the system's time, not steps";
  EXPECT_EQ(QueueNowMs() - start, 120'000);
  EXPECT_EQ(TakeClockStep().step_ms, 0);
}

}  // namespace
}  // namespace mailseal::base
