// reply.h — an SMTP reply (RFC 5321 §4.2) with its enhanced status code (RFC 3463).
//
// SECURITY: replies parsed from a next hop are untrusted: ClientSession bounds their lines and
// count before a Reply is made.
//
// STANDARDS: RFC 5321 §4.2, RFC 3463, RFC 2034 (enhanced status codes in replies).
#pragma once

#include <string>
#include <string_view>

namespace mailseal::smtp {

struct Reply {
  int code = 0;              // 3-digit reply code; 0 means "no reply"
  std::string enhanced;      // "2.1.0", empty when none (greeting, EHLO, 354)
  std::string text;          // human text; may contain '\n' for multi-line replies

  bool ok() const { return code >= 200 && code < 400; }
  bool transient() const { return code >= 400 && code < 500; }
  bool permanent() const { return code >= 500; }

  // Wire renders the reply as CRLF-terminated lines, "250-..." continuations as needed.
  std::string Wire() const;
  // OneLine renders "250 2.1.0 text" on one line for logs and DSNs.
  std::string OneLine() const;
};

inline Reply MakeReply(int code, std::string_view enhanced, std::string_view text) {
  return Reply{code, std::string(enhanced), std::string(text)};
}

}  // namespace mailseal::smtp
