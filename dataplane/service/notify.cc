// notify.cc — see notify.h.
#include "dataplane/service/notify.h"

#include <systemd/sd-daemon.h>

namespace mailseal::service {

void Ready(const std::string& status) { sd_notifyf(0, "READY=1\nSTATUS=%s", status.c_str()); }
void Reloading() { sd_notify(0, "RELOADING=1\nSTATUS=reloading the configuration"); }
void Stopping() { sd_notify(0, "STOPPING=1\nSTATUS=draining sessions"); }
void Status(const std::string& status) { sd_notifyf(0, "STATUS=%s", status.c_str()); }

int64_t WatchdogIntervalMs() {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return 0;
  return static_cast<int64_t>(usec / 2000);
}

void Watchdog() { sd_notify(0, "WATCHDOG=1"); }

}  // namespace mailseal::service
