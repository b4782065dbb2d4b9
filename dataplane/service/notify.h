// notify.h — telling systemd how the daemon is (sd_notify(3), libsystemd): ready, reloading,
// stopping, a status line, and the watchdog's keep-alive. Without NOTIFY_SOCKET (not started
// by systemd as Type=notify) every call does nothing.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace mailseal::service {

void Ready(const std::string& status);       // READY=1: listeners up, mail accepted
void Reloading();                            // RELOADING=1: SIGHUP taken (then Ready again)
void Stopping();                             // STOPPING=1: draining
void Status(const std::string& status);      // STATUS=...: one line for `systemctl status`
// WatchdogIntervalMs: how often to send the keep-alive (half of WatchdogSec; 0: no watchdog).
int64_t WatchdogIntervalMs();
void Watchdog();                             // WATCHDOG=1

// Privileges: what the process runs with, for the start-up log — user, effective capabilities
// (cap_to_text form, "=" for none), no_new_privs and the seccomp mode.
std::vector<std::pair<std::string, std::string>> Privileges();

// ProcStatus: the kernel's own account of the process from /proc/self/status — uids, gids and
// every capability set as the kernel shows them (Uid, Gid, CapInh, CapPrm, CapEff, CapBnd,
// CapAmb), for the log line after the drop, which the image test reads.
std::vector<std::pair<std::string, std::string>> ProcStatus();

}  // namespace mailseal::service
