// address.h — RFC 5321 path and ESMTP parameter parsing (MAIL FROM / RCPT TO arguments).
//
// SECURITY: input is untrusted client text. Lengths are checked against RFC 5321 §4.5.3.1
// before anything is kept; non-ASCII is accepted only when the transaction declared SMTPUTF8
// (RFC 6531).
//
// STANDARDS: RFC 5321 §4.1.2, §4.5.3.1; RFC 6531 (SMTPUTF8); RFC 3461 (NOTIFY, ORCPT, RET, ENVID).
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mailseal::smtp {

struct EsmtpParam {
  std::string keyword;  // upper-cased
  std::string value;    // as given; empty when the parameter has no "="
  bool has_value = false;
};

struct PathArgs {
  std::string address;               // mailbox without <>; empty for the null path <>
  std::vector<EsmtpParam> params;
};

enum class PathError {
  kOk,
  kSyntax,        // 501 5.1.7 / 5.1.3 / 5.5.4
  kTooLong,       // 501 5.1.x path too long
  kNeedsUtf8,     // 553 5.6.7 non-ASCII without SMTPUTF8
};

// ParsePathArgs parses `<path> [params]` after "FROM:" or "TO:". A source route (@a,@b:) is
// accepted and dropped (RFC 5321 §4.1.2). `allow_null` allows "<>".
PathError ParsePathArgs(std::string_view args, bool allow_null, bool allow_utf8, PathArgs* out);

// HasNonAscii tells whether any byte is >= 0x80.
bool HasNonAscii(std::string_view s);

// DomainOf returns the part after the last '@' (lower-cased ASCII), or "" when none.
std::string DomainOf(std::string_view address);

// XtextDecode decodes RFC 3461 xtext ("+2B" -> "+"). Returns false on bad syntax.
bool XtextDecode(std::string_view in, std::string* out);
std::string XtextEncode(std::string_view in);

}  // namespace mailseal::smtp
