// smimea.h — certificates published in DNSSEC-validated SMIMEA records (RFC 8162), with
// libunbound as a validating stub resolver.
//
// A partner domain may publish its domain certificates in DNS: the SMIMEA record at
// <hex SHA-256 of the local part, first 28 octets>._smimecert.<domain> (RFC 8162 §3) for the
// RFC 3183 authority addresses. Only answers that libunbound validated as secure against the
// configured trust anchors are believed — bogus, insecure or indeterminate answers are refused
// with the validator's reason — and only records carrying a whole certificate (selector 0,
// matching type 0) can give one; the certificate found must still validate against the managed
// trust list (SEE-2.7) before it is used (the caller's duty: smime/discovery.h).
//
// SECURITY: the resolver is not trusted (validation is done here); the answer is bounded (at
// most 16 records, 64 KiB each) and the lookup has a deadline. One thread at a time per object.
//
// STANDARDS: RFC 8162 (SMIMEA), RFC 6698 §2 (the TLSA-like RDATA), RFC 4033–4035 (DNSSEC).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "dataplane/base/status.h"

struct ub_ctx;

namespace mailseal::pki {

struct SmimeaOptions {
  std::string forwarder;           // "ip" or "ip@port"; empty: /etc/resolv.conf
  std::string trust_anchor_file;   // DS or DNSKEY records (zone-file lines), e.g. /usr/share/dns/root.key
  long timeout_ms = 10000;
};

class SmimeaResolver {
 public:
  static Result<std::unique_ptr<SmimeaResolver>> Create(const SmimeaOptions& o);
  ~SmimeaResolver();
  SmimeaResolver(const SmimeaResolver&) = delete;
  SmimeaResolver& operator=(const SmimeaResolver&) = delete;

  struct Found {
    std::vector<std::string> certificates;   // DER, from secure records with selector 0, matching 0
    size_t other_records = 0;                // records giving only a hash or a public key
  };
  // Lookup: what `address`'s SMIMEA records hold. NotFound: none (a validated denial, or no
  // such name); FailedPrecondition: the answer did not validate ("bogus: ..." with the reason,
  // or "insecure"); Unavailable/DeadlineExceeded: no answer.
  Result<Found> Lookup(const std::string& address);

 private:
  SmimeaResolver() = default;
  ub_ctx* ctx_ = nullptr;
  long timeout_ms_ = 10000;
};

// SmimeaOwner: the owner name of `address`'s SMIMEA records ("<56 hex>._smimecert.<domain>."),
// or "" when `address` is not local@domain.
std::string SmimeaOwner(const std::string& address);
// SmimeaZoneLine: a zone-file line publishing `der` for `address` (usage 1 PKIX-EE: it must
// also chain to the reader's trust list, as SEE-2.7 asks; selector 0 full certificate, matching
// 0 exact, so that a reader gets the certificate itself), for `mailsealctl certs smimea`.
std::string SmimeaZoneLine(const std::string& address, const std::string& der, int ttl = 3600);

}  // namespace mailseal::pki
