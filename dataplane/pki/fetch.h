// fetch.h — one bounded GET of revocation data (CRLs) over HTTP(S) with libcurl, or LDAP(S)
// with libldap (pki/ldap.h: an RFC 4516 URL's first attribute value).
//
// SECURITY: the URL comes from a certificate (outside input). Only http, https, ldap and ldaps
// are fetched; redirects only to http/https, at most 3; the body is bounded (max_bytes: the
// transfer is cut when it grows past it, whatever Content-Length said), the connection and the
// whole transfer have deadlines, and a transfer slower than 1 KiB/s for 10 s is dropped (a
// slow-drip server). Never called on a mail-path thread (pki/crl_cache.h's refresher only).
//
// STANDARDS: RFC 5280 §4.2.1.13 (CRL distribution points), RFC 4516 (LDAP URLs), RFC 9110.
#pragma once

#include <openssl/x509.h>

#include <cstddef>
#include <string>
#include <vector>

#include "dataplane/base/status.h"

namespace mailseal::pki {

struct FetchLimits {
  long connect_timeout_ms = 5000;
  long total_timeout_ms = 20000;
  size_t max_bytes = 16u << 20;
};

// Fetch: the body of `url`, or why not ("http://ca.test/x.crl: HTTP 404", "...: Timeout was
// reached", "...: larger than 16777216 bytes").
Result<std::string> Fetch(const std::string& url, const FetchLimits& limits);
// Post: the body of an HTTP(S) POST of `body` as `content_type` (OCSP requests, RFC 6960 A.1).
Result<std::string> Post(const std::string& url, const std::string& body, const std::string& content_type,
                         const FetchLimits& limits);

// FetchHttpsStrict: the body of an https:// URL, following no redirect, the server's
// certificate verified against `ca_file` (PEM; empty: libcurl's default store) for the URL's
// host (MTA-STS policies, RFC 8461 §3.3). `connect_to`: libcurl CONNECT_TO entries
// ("host:443:127.0.0.1:8443"), for tests and air-gapped sites.
Result<std::string> FetchHttpsStrict(const std::string& url, const FetchLimits& limits, const std::string& ca_file,
                                     const std::vector<std::string>& connect_to = {});

// CrlUrls: the http(s)/ldap(s) URLs among the fullName entries of a certificate's CRL
// distribution points (RFC 5280 §4.2.1.13), at most 8.
std::vector<std::string> CrlUrls(X509* cert);
// OcspUrls: the http(s) URLs of a certificate's OCSP responders (authorityInfoAccess, RFC 5280
// §4.2.2.1), at most 4.
std::vector<std::string> OcspUrls(X509* cert);

}  // namespace mailseal::pki
