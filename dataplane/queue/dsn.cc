// dsn.cc — see dsn.h.
#include "dataplane/queue/dsn.h"

#include "dataplane/mime/parser.h"

#include <cctype>
#include <algorithm>
#include <ctime>

namespace mailseal::queue {

std::string Rfc5322Date(int64_t unix_ms) {
  std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S +0000", &tm);
  return buf;
}

std::string EnhancedStatusOf(int code, const std::string& enhanced) {
  if (!enhanced.empty() && enhanced[0] == static_cast<char>('0' + code / 100)) return enhanced;
  if (code >= 500) return "5.0.0";
  if (code >= 400) return "4.0.0";
  return "2.0.0";
}

bool WantsFailureDsn(const mailseal::v1::SpoolEnvelope& env, uint32_t rcpt_index) {
  if (env.mail_from().empty() || env.is_dsn()) return false;
  if (rcpt_index >= static_cast<uint32_t>(env.recipients_size())) return false;
  const std::string& notify = env.recipients(static_cast<int>(rcpt_index)).notify();
  return notify.empty() || notify.find("FAILURE") != std::string::npos;
}

bool WantsDelayDsn(const mailseal::v1::SpoolEnvelope& env, uint32_t rcpt_index) {
  if (env.mail_from().empty() || env.is_dsn()) return false;
  if (rcpt_index >= static_cast<uint32_t>(env.recipients_size())) return false;
  const std::string& notify = env.recipients(static_cast<int>(rcpt_index)).notify();
  return notify.empty() || notify.find("DELAY") != std::string::npos;
}

bool WantsSuccessDsn(const mailseal::v1::SpoolEnvelope& env, uint32_t rcpt_index) {
  if (env.mail_from().empty() || env.is_dsn()) return false;
  if (rcpt_index >= static_cast<uint32_t>(env.recipients_size())) return false;
  return env.recipients(static_cast<int>(rcpt_index)).notify().find("SUCCESS") != std::string::npos;
}

namespace {
enum class Report { kFailed, kRelayed, kDelayed };

// BuildReport: one RFC 3464 report: "failed", "relayed" (a delivery receipt) or "delayed".
Result<std::string> BuildReport(
    const std::string& reporting_host, const SpoolMessage& msg,
    const std::vector<FailedRecipient>& failed,
    const std::function<Status(const std::function<Status(std::string_view)>&)>& body,
    int64_t now_unix_ms, size_t max_quote, Report kind, int64_t retry_until_unix_ms = 0) {
  bool relayed = kind == Report::kRelayed;
  bool delayed = kind == Report::kDelayed;
  const auto& env = msg.envelope;
  std::string boundary = StrCat(msg.id, "/", reporting_host);
  std::string out;
  out += StrCat("From: Mail Delivery System <postmaster@", reporting_host, ">\r\n");
  out += StrCat("To: <", env.mail_from(), ">\r\n");
  out += relayed ? "Subject: Successful Mail Delivery Report\r\n"
         : delayed ? "Subject: Delayed Mail (still being retried)\r\n"
                   : "Subject: Undelivered Mail Returned to Sender\r\n";
  out += StrCat("Date: ", Rfc5322Date(now_unix_ms), "\r\n");
  out += StrCat("Message-ID: <", msg.id, relayed ? ".receipt@" : delayed ? ".delay@" : ".dsn@", reporting_host, ">\r\n");
  out += "Auto-Submitted: auto-replied\r\n";
  out += "MIME-Version: 1.0\r\n";
  out += StrCat("Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"",
                boundary, "\"\r\n");
  out += "\r\nThis is a MIME-encapsulated message.\r\n\r\n";
  out += StrCat("--", boundary, "\r\n");
  out += "Content-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n";
  out += StrCat("This is the mail gateway at ", reporting_host, ".\r\n\r\n");
  if (relayed) {
    out += "Your message was delivered to the next mail system for these recipients, which does not\r\n"
           "send delivery receipts itself. No further notice will follow.\r\n\r\n";
  } else if (delayed) {
    int64_t hours = std::max<int64_t>(1, (retry_until_unix_ms - now_unix_ms + 1800000) / 3600000);
    out += StrCat("Your message has not been delivered yet to the recipients below. This is a warning\r\n"
                  "only: you do not need to send it again. The gateway will keep trying for another\r\n",
                  hours, " hours (until ", Rfc5322Date(retry_until_unix_ms),
                  "); if it still cannot deliver it then, you will be told.\r\n\r\n");
  } else {
    out += "Your message could not be delivered to one or more recipients. It is attached below.\r\n\r\n";
  }
  for (const FailedRecipient& f : failed) {
    out += StrCat("<", env.recipients(static_cast<int>(f.index)).address(), ">: ", f.diagnostic,
                  "\r\n");
  }
  out += StrCat("\r\n--", boundary, "\r\n");
  out += "Content-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n";
  out += StrCat("Reporting-MTA: dns; ", reporting_host, "\r\n");
  out += StrCat("X-Mailseal-Queue-ID: ", msg.id, "\r\n");
  if (!env.envid().empty()) out += StrCat("Original-Envelope-Id: ", env.envid(), "\r\n");
  out += StrCat("Arrival-Date: ", Rfc5322Date(env.arrival_unix_ms()), "\r\n");
  for (const FailedRecipient& f : failed) {
    const auto& r = env.recipients(static_cast<int>(f.index));
    out += StrCat("\r\nFinal-Recipient: rfc822; ", r.address(), "\r\n");
    if (!r.orcpt().empty()) {
      size_t semi = r.orcpt().find(';');
      out += StrCat("Original-Recipient: ", r.orcpt().substr(0, semi), "; ",
                    r.orcpt().substr(semi + 1), "\r\n");
    }
    out += relayed ? "Action: relayed\r\n" : delayed ? "Action: delayed\r\n" : "Action: failed\r\n";
    out += StrCat("Status: ", f.status, "\r\n");
    if (!f.remote_mta.empty()) out += StrCat("Remote-MTA: dns; ", f.remote_mta, "\r\n");
    out += StrCat("Diagnostic-Code: ", f.diagnostic, "\r\n");
    out += StrCat("Last-Attempt-Date: ", Rfc5322Date(now_unix_ms), "\r\n");
    if (delayed) out += StrCat("Will-Retry-Until: ", Rfc5322Date(retry_until_unix_ms), "\r\n");
  }
  out += StrCat("\r\n--", boundary, "\r\n");
  bool refused = false;
  for (const FailedRecipient& f : failed) refused = refused || f.content_refused;
  bool headers_only = relayed || delayed || refused || env.ret() == "HDRS" || msg.body_size > max_quote;
  std::string original;
  Status st = body([&](std::string_view chunk) {
    if (original.size() < max_quote) original.append(chunk.substr(0, max_quote - original.size()));
    return OkStatus();
  });
  if (!st.ok()) return st;
  if (headers_only) {
    size_t end = original.find("\r\n\r\n");
    original = end == std::string::npos ? original : original.substr(0, end + 2);
    out += relayed || delayed ? "Content-Description: Message Headers\r\n"
                              : "Content-Description: Undelivered Message Headers\r\n";
    out += "Content-Type: text/rfc822-headers\r\n\r\n";
  } else {
    out += "Content-Description: Undelivered Message\r\nContent-Type: message/rfc822\r\n";
    if (env.body_type() == "8BITMIME") out += "Content-Transfer-Encoding: 8bit\r\n";
    out += "\r\n";
  }
  out += original;
  if (!original.empty() && original.back() != '\n') out += "\r\n";
  out += StrCat("\r\n--", boundary, "--\r\n");
  return out;
}
}  // namespace

Result<std::string> BuildFailureDsn(
    const std::string& reporting_host, const SpoolMessage& msg, const std::vector<FailedRecipient>& failed,
    const std::function<Status(const std::function<Status(std::string_view)>&)>& body, int64_t now_unix_ms,
    size_t max_quote) {
  return BuildReport(reporting_host, msg, failed, body, now_unix_ms, max_quote, Report::kFailed);
}

Result<std::string> BuildDelayedDsn(
    const std::string& reporting_host, const SpoolMessage& msg, const std::vector<FailedRecipient>& delayed,
    const std::function<Status(const std::function<Status(std::string_view)>&)>& body, int64_t now_unix_ms,
    int64_t retry_until_unix_ms) {
  return BuildReport(reporting_host, msg, delayed, body, now_unix_ms, 1u << 20, Report::kDelayed, retry_until_unix_ms);
}

Result<std::string> BuildRelayedDsn(
    const std::string& reporting_host, const SpoolMessage& msg, const std::vector<FailedRecipient>& relayed,
    const std::function<Status(const std::function<Status(std::string_view)>&)>& body, int64_t now_unix_ms) {
  return BuildReport(reporting_host, msg, relayed, body, now_unix_ms, 1u << 20, Report::kRelayed);
}

int64_t ParseRfc5322Date(std::string_view text) {
  std::string t(text.substr(0, 128));
  size_t b = t.find_first_not_of(" \t");
  if (b == std::string::npos) return 0;
  t = t.substr(b);
  for (const char* fmt : {"%a, %d %b %Y %H:%M:%S %z", "%d %b %Y %H:%M:%S %z"}) {
    std::tm tm{};
    const char* end = strptime(t.c_str(), fmt, &tm);
    if (!end) continue;
    long offset = tm.tm_gmtoff;   // timegm resets it
    return (static_cast<int64_t>(timegm(&tm)) - offset) * 1000;
  }
  return 0;
}

int64_t MessageExpiry(const std::string& path, const SpoolMessage& msg) {
  std::string head;
  constexpr size_t kMax = 64 * 1024;
  (void)ReadBody(path, msg, [&](std::string_view chunk) {
    head.append(chunk.substr(0, kMax - head.size()));
    if (head.size() >= kMax || head.find("\r\n\r\n") != std::string::npos) return FailedPreconditionError("header read");
    return OkStatus();
  });
  for (std::string_view name : {"Expires", "Expiry-Date"}) {
    std::string v = mime::FirstHeaderValue(head, name);
    if (!v.empty()) return ParseRfc5322Date(v);
  }
  return 0;
}

}  // namespace mailseal::queue
