// config.cc — see config.h.
#include "dataplane/config/config.h"

#include <algorithm>
#include <thread>
#include "dataplane/base/strings.h"
#include "dataplane/base/file.h"

#include <arpa/inet.h>
#include <pwd.h>
#include <unistd.h>

#include <cctype>
#include <charconv>
#include <fstream>
#include <sstream>
#include <vector>

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include "dataplane/policy/cidr.h"

namespace mailseal::config {
namespace {
using google::protobuf::TextFormat;
using mailseal::v1::Config;

class Collector : public google::protobuf::io::ErrorCollector {
 public:
  explicit Collector(std::string name) : name_(std::move(name)) {}
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    if (first_.empty()) first_ = StrCat(name_, ":", line + 1, ":", column + 1, ": ", message);
  }
  void AddWarning(int line, google::protobuf::io::ColumnNumber column,
                  const std::string& message) override {}
  const std::string& first() const { return first_; }

 private:
  std::string name_;
  std::string first_;
};

// Where a field was written, for messages; "name" alone when it was not written at all.
std::string Where(const std::string& name, const TextFormat::ParseInfoTree& tree,
                  const google::protobuf::Message& msg, const std::string& field, int index = -1) {
  const auto* fd = msg.GetDescriptor()->FindFieldByName(field);
  if (fd && fd->is_repeated() && index < 0) index = 0;
  if (fd && fd->is_repeated() && index >= msg.GetReflection()->FieldSize(msg, fd)) fd = nullptr;
  if (fd && !fd->is_repeated()) index = -1;
  if (fd) {
    auto loc = tree.GetLocation(fd, index);
    if (loc.line >= 0) return StrCat(name, ":", loc.line + 1, ":", loc.column + 1);
  }
  return name;
}
}  // namespace

bool ParseHostPort(const std::string& in, std::string* host, uint16_t* port) {
  std::string h, p;
  if (!in.empty() && in.front() == '[') {
    size_t close = in.find(']');
    if (close == std::string::npos || close + 1 >= in.size() || in[close + 1] != ':') return false;
    h = in.substr(1, close - 1);
    p = in.substr(close + 2);
  } else {
    size_t colon = in.rfind(':');
    if (colon == std::string::npos || in.find(':') != colon) return false;
    h = in.substr(0, colon);
    p = in.substr(colon + 1);
  }
  unsigned v = 0;
  auto [ptr, ec] = std::from_chars(p.data(), p.data() + p.size(), v);
  if (h.empty() || p.empty() || ec != std::errc() || ptr != p.data() + p.size() || v > 65535)
    return false;
  *host = h;
  *port = static_cast<uint16_t>(v);
  return true;
}

Result<Config> ParseConfigText(const std::string& text, const std::string& name) {
  Config cfg;
  TextFormat::Parser parser;
  Collector collector(name);
  TextFormat::ParseInfoTree tree;
  parser.RecordErrorsTo(&collector);
  parser.WriteLocationsTo(&tree);
  if (!parser.ParseFromString(text, &cfg)) {
    return InvalidArgumentError(collector.first().empty() ? name + ": cannot parse"
                                                          : collector.first());
  }
  auto bad = [&](const google::protobuf::Message& m, const TextFormat::ParseInfoTree& t,
                 const std::string& field, int index, const std::string& what) {
    return InvalidArgumentError(StrCat(Where(name, t, m, field, index), ": field '", field,
                                       "': ", what));
  };
  // section_bad: the error reporter for one sub-message of Config (its field's line when it was
  // written, else the section's).
  auto section_bad = [&](const google::protobuf::Message& sub, const std::string& section) {
    const auto* st = tree.GetTreeForNested(Config::descriptor()->FindFieldByName(section), -1);
    return [&bad, &cfg, &tree, m = &sub, st, section](const std::string& field, const std::string& what) {
      if (st) return bad(*m, *st, field, -1, what);
      return bad(cfg, tree, section, -1, StrCat(field, ": ", what));
    };
  };

  if (cfg.listen_size() == 0) return bad(cfg, tree, "listen", -1, "at least one listener is required");
  for (int i = 0; i < cfg.listen_size(); ++i) {
    std::string host;
    uint16_t port;
    const auto* sub = tree.GetTreeForNested(Config::descriptor()->FindFieldByName("listen"), i);
    in6_addr a6;
    in_addr a4;
    if (!ParseHostPort(cfg.listen(i).address(), &host, &port) ||
        (inet_pton(AF_INET, host.c_str(), &a4) != 1 && inet_pton(AF_INET6, host.c_str(), &a6) != 1)) {
      if (sub) return bad(cfg.listen(i), *sub, "address", -1,
                          StrCat("'", cfg.listen(i).address(), "' is not IP:port or [IPv6]:port"));
      return bad(cfg, tree, "listen", i, "bad address");
    }
  }
  if (cfg.spool_dir().empty()) return bad(cfg, tree, "spool_dir", -1, "is required");
  if (cfg.spool_dir().front() != '/') return bad(cfg, tree, "spool_dir", -1, "must be an absolute path");
  if (cfg.hostname().empty()) {
    char h[256] = {};
    gethostname(h, sizeof h - 1);
    cfg.set_hostname(h[0] ? h : "localhost");
  }
  for (unsigned char c : cfg.hostname())
    if (c <= 32 || c >= 127) return bad(cfg, tree, "hostname", -1, "must be a plain host name");
  if (cfg.net_threads() == 0) cfg.set_net_threads(2);
  if (cfg.net_threads() > 64) return bad(cfg, tree, "net_threads", -1, "at most 64");
  // Workers wait for the token and for the disk (each copy is synced): two per core keep the
  // cores busy (tools/bench/relay --seal).
  if (cfg.crypto_workers() == 0) cfg.set_crypto_workers(std::clamp(2 * std::thread::hardware_concurrency(), 2u, 64u));
  if (cfg.crypto_workers() > 64) return bad(cfg, tree, "crypto_workers", -1, "at most 64");
  if (cfg.crypto_memory_mib() == 0) cfg.set_crypto_memory_mib(64);
  if (cfg.crypto_memory_mib() > 4096) return bad(cfg, tree, "crypto_memory_mib", -1, "at most 4096");
  for (uint32_t cpu : cfg.crypto_cpus())
    if (cpu >= 1024) return bad(cfg, tree, "crypto_cpus", -1, "CPU numbers are below 1024");
  if (!cfg.user().empty()) {
    std::vector<char> buf(16384);
    passwd pw{};
    passwd* found = nullptr;
    if (getpwnam_r(cfg.user().c_str(), &pw, buf.data(), buf.size(), &found) != 0 || !found)
      return bad(cfg, tree, "user", -1, StrCat("no user '", cfg.user(), "' on this system"));
    if (found->pw_uid == 0) return bad(cfg, tree, "user", -1, "must not be root (nothing would be given up)");
  }
  for (int i = 0; i < cfg.trusted_networks_size(); ++i) {
    policy::Cidr c;
    if (!policy::ParseCidr(cfg.trusted_networks(i), &c))
      return bad(cfg, tree, "trusted_networks", i,
                 StrCat("'", cfg.trusted_networks(i), "' is not a CIDR block"));
  }
  for (int i = 0; i < cfg.local_domains_size(); ++i) {
    const std::string& d = cfg.local_domains(i);
    if (d.empty() || d.find_first_of(" @[]") != std::string::npos)
      return bad(cfg, tree, "local_domains", i, StrCat("'", d, "' is not a domain"));
  }
  if (cfg.bare_newline() == mailseal::v1::BARE_NEWLINE_UNSPECIFIED)
    cfg.set_bare_newline(mailseal::v1::BARE_NEWLINE_REJECT);
  if (cfg.max_active_messages() == 0) cfg.set_max_active_messages(10000);

  if (cfg.has_hsm()) {
    auto* h = cfg.mutable_hsm();
    auto hbad = section_bad(*h, "hsm");
    if (h->module_path().empty() || h->module_path().front() != '/')
      return hbad("module_path", "an absolute path to the PKCS#11 module is required");
    if (h->token_label().empty() && h->token_serial().empty())
      return hbad("token_label", "a token label or serial is required");
    if (h->pin_file().empty() || h->pin_file().front() != '/')
      return hbad("pin_file", "an absolute path to the PIN file is required (never the PIN itself)");
    if (h->sessions() == 0) h->set_sessions(cfg.crypto_workers());
    if (h->sessions() > 64) return hbad("sessions", "at most 64");
    if (h->health_interval_ms() == 0) h->set_health_interval_ms(1000);
  }
  {   // encryption at rest (DE-22, issue #19)
    auto* a = cfg.mutable_at_rest();
    auto abad = section_bad(*a, "at_rest");
    if (a->mode() == mailseal::v1::AtRest::AT_REST_DEFAULT)
      a->set_mode(cfg.has_hsm() ? mailseal::v1::AtRest::AT_REST_ON : mailseal::v1::AtRest::AT_REST_OFF);
    else if (a->mode() == mailseal::v1::AtRest::AT_REST_ON && !cfg.has_hsm())
      return abad("mode", "encryption at rest needs a security module: an hsm section is required");
    if (a->kek_label().empty()) a->set_kek_label("spool-kek");
    if (a->rotate_hours() == 0) a->set_rotate_hours(24);
    if (a->rotate_hours() > 24 * 366) return abad("rotate_hours", "at most a year (8784)");
  }
  if (cfg.has_recipient_directory()) {   // DE-11, issue #19
    auto* d = cfg.mutable_recipient_directory();
    auto dbad = section_bad(*d, "recipient_directory");
    if (!d->url().starts_with("ldap://") && !d->url().starts_with("ldaps://"))
      return dbad("url", "an ldap:// or ldaps:// URL is required");
    if (d->base().empty()) return dbad("base", "required (where the users are)");
    if (d->filter().empty()) d->set_filter("(|(mail=%s)(mailAlternateAddress=%s))");
    if (d->filter().find("%s") == std::string::npos || d->filter().front() != '(' || d->filter().back() != ')')
      return dbad("filter", "an RFC 4515 filter in parentheses with %s where the address goes");
    if (d->bind_dn().empty() != d->bind_password_file().empty())
      return dbad(d->bind_dn().empty() ? "bind_dn" : "bind_password_file", "bind_dn and bind_password_file go together");
    if (!d->bind_password_file().empty() && d->bind_password_file().front() != '/')
      return dbad("bind_password_file", "an absolute path is required (never the password itself)");
    std::string host = d->url().substr(d->url().find("://") + 3);
    bool loopback = host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]");
    if (!d->bind_dn().empty() && d->url().starts_with("ldap://") && !d->starttls() && !loopback)
      return dbad("bind_dn", "the password would cross the network in clear: use ldaps:// or starttls");
    if (d->starttls() && d->url().starts_with("ldaps://")) return dbad("starttls", "not with ldaps:// (TLS already)");
    if (d->timeout_ms() == 0) d->set_timeout_ms(3000);
    if (d->timeout_ms() > 60000) return dbad("timeout_ms", "at most 60000");
    if (d->cache_entries() == 0) d->set_cache_entries(10000);
    if (d->cache_entries() > 10000000) return dbad("cache_entries", "at most 10000000");
    if (d->known_ttl_s() == 0) d->set_known_ttl_s(300);
    if (d->unknown_ttl_s() == 0) d->set_unknown_ttl_s(60);
    if (d->threads() == 0) d->set_threads(2);
    if (d->threads() > 32) return dbad("threads", "at most 32");
  }
  if (cfg.has_scanning()) {   // DE-15, issue #19
    auto* sc = cfg.mutable_scanning();
    auto sbad = section_bad(*sc, "scanning");
    if (sc->scanners_size() == 0) return sbad("scanners", "at least one scanner (clamd or milter)");
    for (int i = 0; i < sc->scanners_size(); ++i) {
      auto* one = sc->mutable_scanners(i);
      if (one->clamd().empty() == one->milter().empty())
        return sbad("scanners", StrCat("scanner ", i + 1, ": exactly one of clamd and milter"));
      if (!one->milter().empty() && !one->milter().starts_with("unix:") && !one->milter().starts_with("inet:") &&
          !one->milter().starts_with("inet6:") && !one->milter().starts_with("local:"))
        return sbad("scanners", StrCat("scanner ", i + 1, ": milter address is unix:/path or inet:port@host"));
      if (one->reject_virus() && one->clamd().empty())
        return sbad("scanners", StrCat("scanner ", i + 1, ": reject_virus is for clamd"));
      if (one->name().empty()) one->set_name(one->clamd().empty() ? "milter" : "clamd");
    }
    if (sc->timeout_ms() == 0) sc->set_timeout_ms(30000);
    if (sc->timeout_ms() > 600000) return sbad("timeout_ms", "at most 600000");
    if (sc->max_bytes() == 0) sc->set_max_bytes(25u << 20);
  }
  if (cfg.has_archive()) {   // DE-21, issue #19
    auto* ar = cfg.mutable_archive();
    auto abad = section_bad(*ar, "archive");
    if (!cfg.has_control() || cfg.control().ceremony().threshold() < 2 ||
        static_cast<uint32_t>(cfg.control().ceremony().custodians_size()) < cfg.control().ceremony().threshold())
      return abad("dir", "the archive key is held by ceremony custodians: control.ceremony needs a threshold of 2 or more "
                         "and at least that many custodians");
    if (ar->dir().empty()) ar->set_dir(StrCat(cfg.spool_dir(), "/archive"));
    if (ar->dir().front() != '/') return abad("dir", "an absolute path is required");
    if (ar->retention_days() == 0) ar->set_retention_days(3650);
    if (ar->max_export_mib() == 0) ar->set_max_export_mib(256);
    if (ar->max_export_mib() > 4096) return abad("max_export_mib", "at most 4096");
  }
  if (cfg.has_cluster()) {   // issue #20
    auto* cl = cfg.mutable_cluster();
    auto cbad = section_bad(*cl, "cluster");
    if (!cfg.has_control()) return cbad("name", "a cluster is managed through the API: a control section is required");
    if (cl->name().empty() || cl->name().size() > 64 ||
        cl->name().find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != std::string::npos)
      return cbad("name", "required: 1-64 letters, digits, '-' or '_'");
    if (cl->endpoints().empty()) return cbad("endpoints", "at least one etcd client address is required");
    bool v6 = false;
    for (int i = 0; i < cl->endpoints_size(); ++i) {
      std::string host;
      uint16_t port = 0;
      in6_addr a6{};
      in_addr a4{};
      const std::string& e = cl->endpoints(i);
      if (!ParseHostPort(e, &host, &port) || port == 0 ||
          (inet_pton(AF_INET, host.c_str(), &a4) != 1 && inet_pton(AF_INET6, host.c_str(), &a6) != 1))
        return cbad("endpoints", StrCat("'", e, "' is not an IP address and port (\"127.0.0.1:2379\", \"[::1]:2379\")"));
      bool is6 = inet_pton(AF_INET6, host.c_str(), &a6) == 1;
      if (i > 0 && is6 != v6) return cbad("endpoints", "all endpoints must be IPv4 or all IPv6");
      v6 = is6;
      bool loopback = is6 ? IN6_IS_ADDR_LOOPBACK(&a6) : (ntohl(a4.s_addr) >> 24) == 127;
      if (cl->ca_file().empty() && !loopback)
        return cbad("endpoints", StrCat("'", e, "' is not on loopback: etcd is reached over TLS (set ca_file)"));
    }
    if (cl->cert_file().empty() != cl->key_file().empty()) return cbad("cert_file", "cert_file and key_file go together");
    if (cl->node_id().empty()) cl->set_node_id(cfg.hostname());
    if (cl->node_id().size() > 64 || cl->node_id().find_first_of("/ \t\r\n") != std::string::npos)
      return cbad("node_id", "at most 64 characters, no '/' or white space");
    if (cl->advertise().empty()) cl->set_advertise(cfg.control().listen());
    if (cl->lease_ttl_s() == 0) cl->set_lease_ttl_s(5);
    if (cl->lease_ttl_s() < 2 || cl->lease_ttl_s() > 60) return cbad("lease_ttl_s", "2 to 60 seconds");
    if (cl->anchor_interval_s() == 0) cl->set_anchor_interval_s(10);
    if (cl->anchor_interval_s() > 3600) return cbad("anchor_interval_s", "at most 3600");
  }
  if (cfg.io().backend() == mailseal::v1::Io::DPDK) {   // issue #17
    auto ibad = section_bad(cfg.io(), "io");
    const auto& d = cfg.io().dpdk();
    if (d.eal_args().empty()) return ibad("dpdk.eal_args", "required (e.g. --no-huge -m 256 --no-pci --vdev=...)");
    if (d.port().empty()) return ibad("dpdk.port", "required: the mail port's device name (e.g. net_af_packet0)");
    auto v4 = [](const std::string& a, bool prefix) {
      size_t slash = a.find('/');
      if (!prefix && slash != std::string::npos) return false;
      in_addr x{};
      if (inet_pton(AF_INET, a.substr(0, slash).c_str(), &x) != 1) return false;
      if (slash == std::string::npos) return !prefix;
      std::string p = a.substr(slash + 1);
      return !p.empty() && p.size() <= 2 && p.find_first_not_of("0123456789") == std::string::npos && std::stoi(p) <= 32;
    };
    if (!v4(d.address(), true)) return ibad("dpdk.address", StrCat("'", d.address(), "' is not an IPv4 address with prefix (10.0.0.2/24)"));
    if (!d.gateway().empty() && !v4(d.gateway(), false))
      return ibad("dpdk.gateway", StrCat("'", d.gateway(), "' is not an IPv4 address"));
    if (d.max_flows() > 4000000) return ibad("dpdk.max_flows", "at most 4000000");
    if (d.lcores() > 16) return ibad("dpdk.lcores", "at most 16");
    if (d.delayed_ack_ms() > 200) return ibad("dpdk.delayed_ack_ms", "at most 200 (RFC 9293: under 500)");
    for (uint32_t cpu : d.cpus())
      if (cpu >= 1024) return ibad("dpdk.cpus", "CPU numbers are below 1024");
  } else if (cfg.io().has_dpdk()) {
    return section_bad(cfg.io(), "io")("dpdk", "set, but backend is not DPDK");
  }
  auto* lim = cfg.mutable_limits();
  auto lbad = section_bad(*lim, "limits");
  if (lim->max_message_size() == 0) lim->set_max_message_size(35ull << 20);
  if (lim->max_recipients() == 0) lim->set_max_recipients(1000);
  if (lim->max_line_length() == 0) lim->set_max_line_length(2048);
  if (lim->max_line_length() < 512) return lbad("max_line_length", "RFC 5321 needs at least 512");
  if (lim->max_line_length() > 65536) return lbad("max_line_length", "at most 65536");
  if (lim->max_data_line_length() == 0) lim->set_max_data_line_length(1000 * 64);
  if (lim->max_data_line_length() < 1000) return lbad("max_data_line_length", "RFC 5321 needs at least 1000");
  if (lim->max_header_size() == 0) lim->set_max_header_size(1u << 20);
  if (lim->max_errors() == 0) lim->set_max_errors(10);
  if (lim->max_commands_before_mail() == 0) lim->set_max_commands_before_mail(50);
  if (lim->idle_timeout_ms() == 0) lim->set_idle_timeout_ms(300000);
  if (lim->max_connections() == 0) lim->set_max_connections(4096);
  if (lim->max_connections_per_client() == 0) lim->set_max_connections_per_client(50);
  if (lim->max_connection_rate_per_client() == 0) lim->set_max_connection_rate_per_client(600);
  if (lim->min_free_spool_mib() == 0) lim->set_min_free_spool_mib(100);

  if (cfg.has_tls()) {
    auto* t = cfg.mutable_tls();
    auto tbad = section_bad(*t, "tls");
    if (t->cert_file().empty() || t->cert_file().front() != '/')
      return tbad("cert_file", "an absolute path to the PEM certificate chain is required");
    if (!t->key_label().empty()) {
      if (!t->key_file().empty()) return tbad("key_label", "key_file or key_label, not both");
      if (!cfg.has_hsm()) return tbad("key_label", "the key is on the token: an hsm section is required");
    } else if (t->key_file().empty() || t->key_file().front() != '/') {
      return tbad("key_file", "an absolute path to the PEM private key (or key_label, a key on the token) is required");
    }
  }
  {
    std::string h = cfg.hostname();
    h = base::AsciiLower(h);
    if (h.rfind("securemail.", 0) == 0) cfg.set_securemail(true);   // SM-6.1: the name says so
  }
  if (cfg.securemail() && !cfg.has_tls())
    return bad(cfg, tree, "securemail", -1,
               "a SecureMail host (SM-6.1) accepts mail only over TLS: a tls section is required");
  if (cfg.securemail()) cfg.mutable_tls()->set_required(true);
  {
    auto* sp = cfg.mutable_spf();
    if (sp->mode() == mailseal::v1::Spf::SPF_MODE_UNSPECIFIED) sp->set_mode(mailseal::v1::Spf::SPF_ENFORCE);
    if (sp->threads() == 0) sp->set_threads(2);
    if (sp->threads() > 16) return section_bad(*sp, "spf")("threads", "at most 16");
    if (cfg.securemail() && sp->mode() != mailseal::v1::Spf::SPF_ENFORCE)
      return bad(cfg, tree, "spf", -1, "a SecureMail host (SM-6.1) must enforce SPF (mode SPF_ENFORCE)");
  }

  if (!cfg.has_delivery()) return bad(cfg, tree, "delivery", -1, "is required");
  auto* del = cfg.mutable_delivery();
  auto dbad = section_bad(*del, "delivery");
  auto known_level = [](const std::string& l) {
    for (const char* k : {"none", "never", "may", "opportunistic", "encrypt", "dane", "verify"})
      if (base::AsciiLower(l) == k) return true;
    return false;
  };
  if (!del->tls().empty() && !known_level(del->tls()))
    return dbad("tls", StrCat("'", del->tls(), "' is not none, may, encrypt or verify"));
  bool default_verify = base::AsciiLower(del->tls()) == "verify";
  int verify_policy = -1;
  for (int i = 0; i < del->tls_policies_size(); ++i) {
    auto* tp = del->mutable_tls_policies(i);
    std::string d = base::AsciiLower(tp->domain());
    std::string bare = !d.empty() && d.front() == '.' ? d.substr(1) : d;
    if (!base::ValidDomainName(bare))
      return dbad("tls_policies", StrCat("policy ", i + 1, ": '", tp->domain(), "' is not a domain"));
    if (!known_level(tp->level()))
      return dbad("tls_policies", StrCat("policy ", i + 1, ": level '", tp->level(), "' is not none, may, encrypt or verify"));
    tp->set_domain(d);
    tp->set_level(base::AsciiLower(tp->level()));
    if (tp->level() == "verify" && verify_policy < 0) verify_policy = i;
    for (const std::string& m : tp->match())
      if (!base::ValidDomainName(m.starts_with("*.") ? m.substr(2) : m))
        return dbad("tls_policies", StrCat("policy ", i + 1, ": match '", m, "' is not a host name"));
  }
  for (const std::string& m : del->tls_match())
    if (!base::ValidDomainName(m.starts_with("*.") ? m.substr(2) : m))
      return dbad("tls_match", StrCat("'", m, "' is not a host name"));
  if (del->mta_sts() && del->tls_ca_file().empty())
    return dbad("mta_sts", "needs delivery.tls_ca_file (the CAs MTA-STS hosts and policy servers are checked against)");
  if ((default_verify || verify_policy >= 0) && del->tls_ca_file().empty())
    return dbad(default_verify ? "tls" : "tls_policies",
                StrCat(default_verify ? "level verify" : StrCat("policy ", verify_policy + 1, ": level verify"),
                       " needs delivery.tls_ca_file (the next hops' CAs; never the system store)"));
  bool any_dane = base::AsciiLower(del->tls()) == "dane";
  for (const auto& tp : del->tls_policies()) any_dane = any_dane || tp.level() == "dane";
  if (any_dane && del->dnssec_trust_anchor_file().empty())
    return dbad(base::AsciiLower(del->tls()) == "dane" ? "tls" : "tls_policies",
                "level dane needs delivery.dnssec_trust_anchor_file (DNSSEC validation of MX and TLSA answers)");
  if (!del->dnssec_trust_anchor_file().empty() && !std::ifstream(del->dnssec_trust_anchor_file()))
    return dbad("dnssec_trust_anchor_file", StrCat(del->dnssec_trust_anchor_file(), " cannot be read"));
  if (!del->tls_ca_file().empty() && !std::ifstream(del->tls_ca_file()))
    return dbad("tls_ca_file", StrCat(del->tls_ca_file(), " cannot be read"));
  if (!del->relay_host().empty()) {
    std::string h;
    uint16_t p;
    if (!ParseHostPort(del->relay_host(), &h, &p) || p == 0)
      return dbad("relay_host", StrCat("'", del->relay_host(), "' is not host:port"));
  }
  for (int i = 0; i < del->routes_size(); ++i) {
    auto* r = del->mutable_routes(i);
    std::string h;
    uint16_t p;
    if (r->domain().empty() || !ParseHostPort(r->next_hop(), &h, &p) || p == 0)
      return dbad("routes", StrCat("route ", i + 1, " needs a domain and next_hop host:port"));
    std::string d = r->domain();
    d = base::AsciiLower(d);
    r->set_domain(d);
  }
  if (del->agents() == 0) del->set_agents(20);
  if (del->agents() > 1000) return dbad("agents", "at most 1000");
  if (del->per_destination_concurrency() == 0) del->set_per_destination_concurrency(10);
  if (del->min_backoff_s() == 0) del->set_min_backoff_s(300);
  if (del->max_backoff_s() == 0) del->set_max_backoff_s(4000);
  if (del->max_backoff_s() < del->min_backoff_s())
    return dbad("max_backoff_s", "must not be below min_backoff_s");
  if (del->max_lifetime_s() == 0) del->set_max_lifetime_s(5 * 24 * 3600);
  if (del->delay_warning_s() == 0) del->set_delay_warning_s(4 * 3600);
  if (del->connect_timeout_ms() == 0) del->set_connect_timeout_ms(30000);
  if (del->command_timeout_ms() == 0) del->set_command_timeout_ms(300000);
  if (del->queue_scan_interval_ms() == 0) del->set_queue_scan_interval_ms(1000);
  return cfg;
}

Result<Config> LoadConfig(const std::string& path) {
  Result<std::string> text = base::ReadFile(path, 1u << 20);
  if (!text.ok()) return InvalidArgumentError(text.status().message());
  return ParseConfigText(*text, path);
}

}  // namespace mailseal::config
