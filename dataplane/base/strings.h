// strings.h — small ASCII helpers shared across modules (domain names, addresses, header
// names are ASCII; bytes above 0x7f are left as they are).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace mailseal::base {

// AsciiLower: `s` with A-Z lowered.
std::string AsciiLower(std::string_view s);

// DomainListCovers: `domain` (lower case) is in `list`, where an entry ".example.test" covers
// the sub-domains of example.test (not example.test itself, as in Postfix's tables).
bool DomainListCovers(const std::vector<std::string>& list, std::string_view domain);

// InDomain: `domain` is `parent` or one of its sub-domains (both lower case; RFC 3183: a domain
// certificate covers the domain's sub-domains).
bool InDomain(std::string_view domain, std::string_view parent);

// PercentEncode: every byte but RFC 3986's unreserved ones (A-Z a-z 0-9 - . _ ~) as %XX
// (upper-case hex). For PKCS#11 URIs (RFC 7512) and SPF's upper-case macros (RFC 7208 §7.3).
std::string PercentEncode(std::string_view s);

// ValidDomainName: letters, digits, '-' and '.', at most 253 bytes, no empty label.
bool ValidDomainName(std::string_view d);

// HexLower: the bytes as lower-case hex. FromHexLower: back; false for anything else (upper
// case included: the files that use it are written by HexLower).
std::string HexLower(std::string_view bytes);
bool FromHexLower(std::string_view hex, std::string* out);

}  // namespace mailseal::base
