// ldap.h — bounded LDAP searches for certificates and CRLs, with libldap (OpenLDAP).
//
// Two uses (issue #15): a partner's certificates looked up in a CA's directory by the RFC 3183
// authority address (SEE-2.8b: base "C=NZ", filter on
// "domain-confidentiality-authority@<domain>", attribute "userCertificate;binary"), and the
// ldap:// and ldaps:// URLs of CRL distribution points (RFC 4516).
//
// SECURITY: the server and the URL are outside input. Anonymous bind, LDAPv3; the domain is
// escaped into the filter (RFC 4515), never spliced raw; referrals are not chased. Every
// answer is bounded — one PDU at most `max_bytes`, at most `max_entries` entries and
// `max_values` values, all values together at most `max_bytes` — and the connection and the
// whole search have deadlines: a server that answers too much or too slowly is abandoned and
// the error says which bound it hit. Never called on a mail-path thread.
//
// STANDARDS: RFC 4511 (LDAPv3), RFC 4515 (filters), RFC 4516 (URLs), RFC 4523 (certificate
// attributes, ";binary").
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "dataplane/base/status.h"

namespace mailseal::pki {

struct LdapLimits {
  long connect_timeout_ms = 5000;
  long total_timeout_ms = 20000;
  size_t max_bytes = 4u << 20;
  size_t max_entries = 64;
  size_t max_values = 256;
};

struct LdapSearch {
  std::string server;      // "ldap://host:port" or "ldaps://host:port"
  std::string base;        // "c=NZ"
  std::string filter;      // RFC 4515, already escaped
  std::string attribute;   // "userCertificate;binary"
  bool one_level = false;  // scope one level under base (else the whole subtree; base-only for URLs)
  bool base_only = false;
  // A simple bind as `bind_dn` (else anonymous); the password is wiped after the bind. The
  // recipient directory (issue #19) binds; certificate and CRL lookups stay anonymous.
  std::string bind_dn;
  std::string bind_password;
  // TLS: ldaps:// URLs, or StartTLS (RFC 4513 §3) on ldap:// when `starttls`; the server's
  // certificate is checked against `ca_file` (else the system's) and its name — always.
  bool starttls = false;
  std::string ca_file;
};

// Search: every value of `attribute` in the entries found (none found: an empty vector).
// Errors name the server and what failed ("ldap://127.0.0.1:1: Can't contact LDAP server").
Result<std::vector<std::string>> Search(const LdapSearch& q, const LdapLimits& limits);

// CountEntries: how many entries match (bounded by limits.max_entries: more is an error).
// Errors: Unavailable (server down, refused bind, TLS failure), DeadlineExceeded, ResourceExhausted.
Result<size_t> CountEntries(const LdapSearch& q, const LdapLimits& limits);

// FetchLdapUrl: the first value of the attribute an RFC 4516 URL names (a CRL distribution
// point: "ldap://host/cn=CA,c=NZ?certificateRevocationList;binary"). A URL naming no
// attribute, or with extensions marked critical, is refused.
Result<std::string> FetchLdapUrl(const std::string& url, const LdapLimits& limits);

// FilterFor: `filter_template` with every "%s" replaced by `value` escaped for a filter
// (RFC 4515 §3: '*', '(', ')', '\', NUL as \XX).
std::string FilterFor(const std::string& filter_template, const std::string& value);

}  // namespace mailseal::pki
