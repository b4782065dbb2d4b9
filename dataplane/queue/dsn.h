// dsn.h — delivery status notifications (RFC 3464) from postmaster@.
//
// SECURITY: the original message is quoted, never interpreted. Notifications are never made
// for the null sender or for a notification (no loops, SEE-2.12).
// STANDARDS: RFC 3461 (NOTIFY/RET/ENVID/ORCPT), RFC 3462/6522 (multipart/report), RFC 3464.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "dataplane/base/status.h"
#include "dataplane/queue/spool.h"

namespace mailseal::queue {

struct FailedRecipient {
  uint32_t index = 0;          // into the envelope's recipients
  std::string status;          // enhanced status "5.1.1"
  std::string diagnostic;      // "smtp; 550 5.1.1 no such user" or our own text
  std::string remote_mta;      // host name of the next hop, empty when none answered
  // content_refused: a content scanner refused the message (issue #19): the notice quotes its
  // header only, never the content that was refused (no malware sent back).
  bool content_refused = false;
};

// WantsFailureDsn: whether a failure notice goes to the sender for this recipient.
bool WantsFailureDsn(const mailseal::v1::SpoolEnvelope& env, uint32_t rcpt_index);

// WantsDelayDsn: a "delayed" notice may go to the sender for this recipient: NOTIFY not given
// (the MTA's choice, RFC 3461 §4.1) or including DELAY; never for <> or a notification.
bool WantsDelayDsn(const mailseal::v1::SpoolEnvelope& env, uint32_t rcpt_index);

// WantsSuccessDsn: NOTIFY=SUCCESS was asked for this recipient (a delivery receipt, RFC 3461).
bool WantsSuccessDsn(const mailseal::v1::SpoolEnvelope& env, uint32_t rcpt_index);

// BuildFailureDsn renders the notification. `body` streams the original message. At most
// `max_quote` bytes of the original are quoted in full; a larger one (or RET=HDRS) gets its
// header only.
Result<std::string> BuildFailureDsn(const std::string& reporting_host, const SpoolMessage& msg,
                                    const std::vector<FailedRecipient>& failed,
                                    const std::function<Status(
                                        const std::function<Status(std::string_view)>&)>& body,
                                    int64_t now_unix_ms, size_t max_quote = 1u << 20);

// BuildRelayedDsn: the delivery receipt for recipients handed to a next hop that cannot report
// success itself (RFC 3461 §6.2.6 "relayed"); headers of the original only.
Result<std::string> BuildRelayedDsn(const std::string& reporting_host, const SpoolMessage& msg,
                                    const std::vector<FailedRecipient>& relayed,
                                    const std::function<Status(
                                        const std::function<Status(std::string_view)>&)>& body,
                                    int64_t now_unix_ms);

// BuildDelayedDsn: "not delivered yet, still trying until retry_until" (RFC 3464 Action:
// delayed, Will-Retry-Until; SEE-2.8c); headers of the original only.
Result<std::string> BuildDelayedDsn(const std::string& reporting_host, const SpoolMessage& msg,
                                    const std::vector<FailedRecipient>& delayed,
                                    const std::function<Status(
                                        const std::function<Status(std::string_view)>&)>& body,
                                    int64_t now_unix_ms, int64_t retry_until_unix_ms);

// ParseRfc5322Date reads "Sun, 22 Nov 2026 05:21:47 +0000" (day name optional); 0 when it
// is not such a date.
int64_t ParseRfc5322Date(std::string_view text);

// MessageExpiry: the time in the message's "Expires:" (RFC 4021) or "Expiry-Date:" (RFC 2156)
// header field, in unix ms; 0 when it has none (DE-6). Reads the header block only (≤ 64 KiB).
int64_t MessageExpiry(const std::string& path, const SpoolMessage& msg);

// Rfc5322Date formats a time as "Sun, 22 Nov 2026 05:21:47 +0000".
std::string Rfc5322Date(int64_t unix_ms);

// EnhancedStatusOf picks the enhanced code from a reply, or derives one from its basic code.
std::string EnhancedStatusOf(int code, const std::string& enhanced);

}  // namespace mailseal::queue
