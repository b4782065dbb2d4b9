// log.cc — see log.h.
#include "dataplane/base/log.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <chrono>
#include <cstdio>
#include <ctime>

namespace mailseal::base {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};

// Journal: stderr is a stream to journald (JOURNAL_STREAM names its device and inode, as
// systemd.exec(5) says): each record starts with its syslog priority ("<3>" error ... "<7>"
// debug, sd-daemon(3)) so the journal keeps it, and carries no time of its own.
bool ToJournal() {
  static const bool journal = [] {
    const char* js = std::getenv("JOURNAL_STREAM");
    struct stat st {};
    if (!js || ::fstat(STDERR_FILENO, &st) != 0) return false;
    unsigned long long dev = 0, ino = 0;
    if (std::sscanf(js, "%llu:%llu", &dev, &ino) != 2) return false;
    return dev == static_cast<unsigned long long>(st.st_dev) && ino == static_cast<unsigned long long>(st.st_ino);
  }();
  return journal;
}

const char* Priority(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "<7>";
    case LogLevel::kInfo: return "<6>";
    case LogLevel::kWarning: return "<4>";
    case LogLevel::kError: return "<3>";
  }
  return "<6>";
}

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kError: return "error";
  }
  return "?";
}
}  // namespace

void SetLogLevel(LogLevel level) { g_level.store(static_cast<int>(level)); }
bool LogEnabled(LogLevel level) { return static_cast<int>(level) >= g_level.load(); }

bool ParseLogLevel(std::string_view name, LogLevel* level) {
  if (name == "debug") *level = LogLevel::kDebug;
  else if (name == "info" || name.empty()) *level = LogLevel::kInfo;
  else if (name == "warning") *level = LogLevel::kWarning;
  else if (name == "error") *level = LogLevel::kError;
  else return false;
  return true;
}

std::string EscapeForLog(std::string_view value) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(value.size());
  for (unsigned char c : value) {
    if (c < 0x20 || c == 0x7f || c == '\\' || c == '"') {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

namespace {
void Write(LogLevel level, std::string_view component, std::string_view message, const LogField* begin,
           const LogField* end) {
  auto now = std::chrono::system_clock::now();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char ts[96];
  std::snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(ms % 1000));
  std::string line;
  line.reserve(160);
  if (ToJournal()) {
    line += Priority(level);
  } else {
    line += ts;
    line += ' ';
  }
  line += LevelName(level);
  line += ' ';
  line += component;
  line += ": ";
  line += EscapeForLog(message);
  for (const LogField* f = begin; f != end; ++f) {
    const auto& [key, value] = *f;
    line += ' ';
    line += key;
    line += '=';
    std::string v = EscapeForLog(value);
    if (v.empty() || v.find(' ') != std::string::npos) {
      line += '"';
      line += v;
      line += '"';
    } else {
      line += v;
    }
  }
  line += '\n';
  // One write() per record keeps records from different threads whole.
  ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
}
}  // namespace

void Log(LogLevel level, std::string_view component, std::string_view message,
         std::initializer_list<LogField> fields) {
  if (!LogEnabled(level)) return;
  Write(level, component, message, fields.begin(), fields.end());
}

void Log(LogLevel level, std::string_view component, std::string_view message,
         const std::vector<std::pair<std::string, std::string>>& fields) {
  if (!LogEnabled(level)) return;
  std::vector<LogField> f(fields.begin(), fields.end());
  Write(level, component, message, f.data(), f.data() + f.size());
}

}  // namespace mailseal::base
