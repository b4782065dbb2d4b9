// dns.h — MX and address lookups for delivery, through libunbound.
//
// SECURITY: answers are untrusted network data; at most 32 MX hosts and 16 addresses per host
// are used. DNSSEC validation arrives with the DANE/transport-security issue.
// STANDARDS: RFC 5321 §5.1 (MX, implicit MX), RFC 7505 (null MX).
#pragma once

#include <sys/socket.h>

#include <string>
#include <vector>

#include "dataplane/base/status.h"
#include "dataplane/spf/spf.h"

struct ub_ctx;

namespace mailseal::io {

struct MxHost {
  int preference = 0;
  std::string host;
};

class Resolver {
 public:
  // forwarder: "ip" or "ip@port", empty for /etc/resolv.conf. local_zones: unbound
  // "name type" zones; local_data: unbound RRs.
  Resolver(const std::string& forwarder, const std::vector<std::string>& local_zones,
           const std::vector<std::string>& local_data);
  ~Resolver();
  Resolver(const Resolver&) = delete;
  Resolver& operator=(const Resolver&) = delete;

  Status init_status() const { return init_; }
  // AddTrustAnchorFile turns DNSSEC validation on (DS or DNSKEY lines; issue #16's DANE): then
  // every answer says whether it was secure, and a bogus one is an error (an attack or a
  // broken zone: never used).
  Status AddTrustAnchorFile(const std::string& path);
  bool validating() const { return validating_; }
  // LookupMx: the MX hosts by preference, or the domain itself (implicit MX) when it has
  // addresses but no MX. NotFound: the domain does not exist (permanent). FailedPrecondition:
  // null MX (permanent). Unavailable: try again later.
  // `secure`: the MX RRset (or its denial) was DNSSEC-validated.
  Result<std::vector<MxHost>> LookupMx(const std::string& domain, bool* secure = nullptr);
  // LookupTlsa: the TLSA records at _<port>._tcp.<host> (RFC 7672 §2.2), with `secure` set when
  // the answer (or the denial) validated. A bogus answer is FailedPrecondition; a failed
  // lookup Unavailable.
  struct TlsaAnswer {
    bool secure = false;
    std::vector<std::string> rdata;   // each: usage, selector, matching type, data (RFC 6698 §2.1)
  };
  Result<TlsaAnswer> LookupTlsa(const std::string& host, uint16_t port);
  // LookupAddresses: A then AAAA records of a host (port left 0).
  Result<std::vector<sockaddr_storage>> LookupAddresses(const std::string& host);
  // Query answers one SPF question (RFC 7208): TXT, A, AAAA, MX or PTR, at most 64 records,
  // CNAMEs followed by unbound.
  spf::Answer Query(const std::string& name, spf::RrType type);

 private:
  ub_ctx* ctx_ = nullptr;
  Status init_;
  bool validating_ = false;
};

// SpfDns: the SPF evaluator's DNS through a Resolver.
class SpfDns : public spf::Dns {
 public:
  explicit SpfDns(Resolver* r) : r_(r) {}
  spf::Answer Query(const std::string& name, spf::RrType type) override { return r_->Query(name, type); }

 private:
  Resolver* r_;
};

}  // namespace mailseal::io
