// clock.cc — see clock.h.
#include "dataplane/base/clock.h"

#include <chrono>
#include <cstdlib>
#include <mutex>

namespace mailseal::base {
namespace {
// A reading whose wall-clock advance differs from the monotonic advance by more than this is a
// step; less is slewing, which the queue clock follows.
constexpr int64_t kStepThresholdMs = 1000;

int64_t SystemWallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}
int64_t SystemSteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct State {
  std::mutex mu;
  int64_t (*wall)() = SystemWallMs;
  int64_t (*steady)() = SystemSteadyMs;
  bool started = false;
  int64_t last_wall = 0, last_steady = 0;
  int64_t absorbed = 0;        // system clock minus queue clock
  int64_t unreported = 0;      // steps since the last TakeClockStep
};
State& S() {
  static State s;
  return s;
}
}  // namespace

int64_t SteadyMs() { return SystemSteadyMs(); }

int64_t QueueNowMs() {
  State& s = S();
  std::lock_guard<std::mutex> l(s.mu);
  int64_t wall = s.wall(), steady = s.steady();
  if (s.started) {
    int64_t drift = (wall - s.last_wall) - (steady - s.last_steady);
    if (std::llabs(drift) > kStepThresholdMs) {
      s.absorbed += drift;
      s.unreported += drift;
    }
  }
  s.started = true;
  s.last_wall = wall;
  s.last_steady = steady;
  return wall - s.absorbed;
}

ClockStep TakeClockStep() {
  State& s = S();
  std::lock_guard<std::mutex> l(s.mu);
  ClockStep c{s.unreported, s.absorbed};
  s.unreported = 0;
  return c;
}

void SetClockSourcesForTest(int64_t (*wall_ms)(), int64_t (*steady_ms)()) {
  State& s = S();
  std::lock_guard<std::mutex> l(s.mu);
  s.wall = wall_ms ? wall_ms : SystemWallMs;
  s.steady = steady_ms ? steady_ms : SystemSteadyMs;
  s.started = false;
  s.absorbed = s.unreported = 0;
}

}  // namespace mailseal::base
