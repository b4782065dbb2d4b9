// snapshot.cc — see snapshot.h.
#include "dataplane/policy/snapshot.h"

#include "dataplane/base/strings.h"

#include <cctype>

namespace mailseal::policy {

bool PolicySnapshot::IsTrusted(const sockaddr* peer) const {
  for (const Cidr& c : trusted_networks)
    if (Contains(c, peer)) return true;
  return false;
}

bool PolicySnapshot::IsLocalDomain(const std::string& domain) const {
  return base::DomainListCovers(local_domains, domain);
}

std::shared_ptr<const PolicySnapshot> BuildSnapshot(const mailseal::v1::Config& cfg, uint64_t version) {
  auto s = std::make_shared<PolicySnapshot>();
  s->version = version;
  s->smtp.hostname = cfg.hostname();
  const auto& l = cfg.limits();
  s->smtp.limits.max_message_size = l.max_message_size();
  s->smtp.limits.max_recipients = l.max_recipients();
  s->smtp.limits.max_line_length = l.max_line_length();
  s->smtp.limits.max_data_line_length = l.max_data_line_length();
  s->smtp.limits.max_header_size = l.max_header_size();
  s->smtp.limits.max_errors = l.max_errors();
  s->smtp.limits.max_commands_before_mail = l.max_commands_before_mail();
  s->smtp.bare_newline = cfg.bare_newline() == mailseal::v1::BARE_NEWLINE_NORMALIZE
                             ? smtp::BareNewlinePolicy::kNormalize
                             : smtp::BareNewlinePolicy::kReject;
  s->smtp.starttls = cfg.has_tls();
  s->smtp.require_tls = cfg.has_tls() && cfg.tls().required();   // LoadConfig folds securemail in
  s->spf = cfg.spf().mode() == mailseal::v1::Spf::SPF_OFF    ? PolicySnapshot::Spf::kOff
           : cfg.spf().mode() == mailseal::v1::Spf::SPF_MARK ? PolicySnapshot::Spf::kMark
                                                              : PolicySnapshot::Spf::kEnforce;
  s->spf_accept_temperror = cfg.spf().accept_temperror();
  s->securemail = cfg.securemail();
  s->idle_timeout_ms = l.idle_timeout_ms();
  s->max_connections = l.max_connections();
  s->max_connections_per_client = l.max_connections_per_client();
  s->max_connection_rate_per_client = l.max_connection_rate_per_client();
  s->min_free_spool_bytes = static_cast<uint64_t>(l.min_free_spool_mib()) << 20;
  for (const std::string& t : cfg.trusted_networks()) {
    Cidr c;
    if (ParseCidr(t, &c)) s->trusted_networks.push_back(c);
  }
  for (std::string d : cfg.local_domains()) {
    d = base::AsciiLower(d);
    s->local_domains.push_back(d);
  }
  return s;
}

}  // namespace mailseal::policy
