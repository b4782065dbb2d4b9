// clock.h — the queue's clock: wall-clock time that a stepped system clock does not move.
//
// Retry times and message ages are wall-clock milliseconds (they are written to the spool and
// read back after a restart), but a system clock that is stepped while mailseald runs — set by
// hand, or NTP correcting a clock that started days off — must not make every deferred message
// wait a day (a step back) or bounce the whole queue as expired (a step forward). QueueNowMs
// follows the system clock's slow corrections (slewing, under a second between two readings)
// and absorbs steps: after a step it keeps counting from where it was, by the monotonic clock,
// until mailseald restarts (then the system clock is taken as it is). Logs, headers and audit
// records keep the system's time: they say what the clock said.
#pragma once

#include <cstdint>

namespace mailseal::base {

// SteadyMs: monotonic milliseconds (timeouts, rate limits, event loops).
int64_t SteadyMs();

// QueueNowMs: milliseconds since the epoch on the queue's clock (thread-safe).
int64_t QueueNowMs();

// ClockStep is one step of the system clock that QueueNowMs absorbed.
struct ClockStep {
  int64_t step_ms = 0;       // how far the system clock jumped (negative: back)
  int64_t absorbed_ms = 0;   // all steps absorbed since start: system clock minus QueueNowMs
};
// TakeClockStep: the last step not yet reported (step_ms 0 if none), for the caller to log.
ClockStep TakeClockStep();

// For tests: readings of the two clocks to use instead of the system's (null: the system's).
void SetClockSourcesForTest(int64_t (*wall_ms)(), int64_t (*steady_ms)());

}  // namespace mailseal::base
