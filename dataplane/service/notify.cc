// notify.cc — see notify.h.
#include "dataplane/service/notify.h"

#include <pwd.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <fstream>

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

std::vector<std::pair<std::string, std::string>> Privileges() {
  std::vector<std::pair<std::string, std::string>> out;
  uid_t uid = geteuid();
  passwd* pw = getpwuid(uid);
  out.emplace_back("user", pw ? pw->pw_name : std::to_string(uid));
  std::string caps = "?";
  if (cap_t c = cap_get_proc()) {
    if (char* text = cap_to_text(c, nullptr)) {
      caps = text;
      cap_free(text);
    }
    cap_free(c);
  }
  out.emplace_back("capabilities", caps);
  out.emplace_back("no_new_privs", std::to_string(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)));
  std::string seccomp = "?";
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("Seccomp:", 0) == 0) seccomp = line.substr(line.find_first_not_of(" \t", 8));
  out.emplace_back("seccomp", seccomp == "0" ? "off" : seccomp == "2" ? "filter" : seccomp);
  return out;
}

std::vector<std::pair<std::string, std::string>> ProcStatus() {
  std::vector<std::pair<std::string, std::string>> out;
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    if (key != "Uid" && key != "Gid" && key.rfind("Cap", 0) != 0) continue;
    std::string value = line.substr(std::min(line.size(), line.find_first_not_of(" \t", colon + 1)));
    for (char& ch : value)
      if (ch == '\t') ch = ',';
    for (char& ch : key) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    out.emplace_back(key, value);
  }
  return out;
}

}  // namespace mailseal::service
