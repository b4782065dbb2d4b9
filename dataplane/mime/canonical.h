// canonical.h — the canonical form of a MIME entity for a detached signature (RFC 8551
// §3.1.1–3.1.3): CRLF line ends, 7-bit, no line over 998 octets, so that no relay on the way
// can change a byte the signature covers.
//
// SECURITY: input is an untrusted message; the output grows by at most one line break per 998
// octets and is linear in the input.
//
// STANDARDS: RFC 8551 §3.1.1–3.1.3, RFC 2045 §6.
#pragma once

#include <string>
#include <string_view>

#include "dataplane/base/status.h"
#include "dataplane/mime/parser.h"

namespace mailseal::mime {

// ToSevenBit returns `entity` (CRLF line ends) in that form. Already 7-bit input is returned
// byte-exact. Leaf parts with 8-bit or binary content, or over-long lines, are re-encoded —
// text/* as quoted-printable, everything else as base64 — and their Content-Transfer-Encoding
// is set to match. A signed part (multipart/signed, application/pkcs7-mime) and everything in
// it is never touched: if such content is not 7-bit already, or a header is 8-bit, the answer
// is FAILED_PRECONDITION (sign opaquely instead). Parser limits bound the work.
Result<std::string> ToSevenBit(std::string_view entity, const Limits& limits = Limits());

// IsSevenBitSafe: only 7-bit bytes (no NUL), CRLF line ends only, lines of at most 998 octets.
bool IsSevenBitSafe(std::string_view s);

// EncodeQuotedPrintable (RFC 2045 §6.7) for text whose line breaks are CRLF; output lines are
// at most 76 characters. EncodeBase64Lines: 76-character lines, each ending CRLF.
std::string EncodeQuotedPrintable(std::string_view text);
std::string EncodeBase64Lines(std::string_view data);
void AppendBase64Lines(std::string* out, std::string_view data);

}  // namespace mailseal::mime
