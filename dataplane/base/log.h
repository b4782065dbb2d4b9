// log.h — structured, single-line log records for operators.
//
// SECURITY: values come from the network (addresses, HELO names, replies). Every value is
// escaped so a hostile peer cannot forge log lines (CR, LF and other control bytes become
// \xNN). Never log message bodies, keys, PINs or shares.
//
// Format: "<RFC 3339 UTC time> <level> <component>: <message> key=value key="value with space"";
// when stderr is journald's stream (JOURNAL_STREAM), "<priority><level> <component>: ..." —
// the journal keeps the syslog priority and its own time.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mailseal::base {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

using LogField = std::pair<std::string_view, std::string_view>;

void SetLogLevel(LogLevel level);
bool LogEnabled(LogLevel level);
[[nodiscard]] bool ParseLogLevel(std::string_view name, LogLevel* level);

// Log writes one record to stderr (which systemd hands to journald). Thread safe.
void Log(LogLevel level, std::string_view component, std::string_view message,
         std::initializer_list<LogField> fields = {});
// The same with fields built at run time (e.g. a component's counters).
void Log(LogLevel level, std::string_view component, std::string_view message,
         const std::vector<std::pair<std::string, std::string>>& fields);

// EscapeForLog returns `value` with control bytes, backslashes and quotes escaped.
std::string EscapeForLog(std::string_view value);

}  // namespace mailseal::base
