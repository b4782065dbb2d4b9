// mailseald — the mailseal gateway daemon (kernel I/O back end).
//
// Threads (ARCHITECTURE.md): net threads (epoll, SMTP sessions), the committer (durability),
// the queue manager, crypto workers on SPSC rings, delivery agents, and this main thread as the
// control thread (signals, config reload; the gRPC API joins it with issue #5).
//
// SECURITY: the configuration is validated completely before the spool is touched; a bad
// config exits 2 with file:line:column. Nothing secret is read from argv or the environment.
#include <signal.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <map>
#include <malloc.h>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <functional>
#include <memory>
#include <optional>
#include <sys/stat.h>
#include <string>
#include <vector>

#include "dataplane/base/clock.h"
#include "dataplane/base/strings.h"
#include "dataplane/base/log.h"
#include "dataplane/base/file.h"
#include "dataplane/base/openssl_error.h"
#include "dataplane/config/config.h"
#include "dataplane/io/dns.h"
#include "dataplane/endpoint/smtp_server.h"
#include "dataplane/kernel/backend.h"
#ifdef MAILSEAL_HAVE_DPDK
#include "dataplane/dpdk/backend.h"
#include "dataplane/dpdk/crypto_ring.h"
#endif
#include "dataplane/service/notify.h"
#include "dataplane/service/privileges.h"
#include "dataplane/tls/session.h"
#include "dataplane/policy/classify.h"
#include "dataplane/policy/snapshot.h"
#include "dataplane/queue/committer.h"
#include "dataplane/queue/queue_manager.h"
#include "dataplane/queue/spool.h"
#include "hsm/secret.h"
#include "hsm/token_manager.h"
#include "dataplane/records/archive.h"
#include "dataplane/sealing/at_rest_keys.h"
#include "dataplane/sealing/smime_processor.h"
#include "dataplane/smime/naming.h"
#include "dataplane/pki/smimea.h"
#include "control/audit/log.h"
#include "control/cluster/cluster.h"
#include "control/server.h"
#include "hsm/token_key.h"

namespace {
// The software version (CMake project version), in the start line and the cluster node record.
constexpr const char* kVersion = MAILSEAL_VERSION;
using namespace mailseal;
using base::Log;
using base::LogLevel;

constexpr int kExitOk = 0, kExitRuntime = 1, kExitUsage = 2;

// CpuList: "1,3" for the log ("any" when empty).
template <typename List>
std::string CpuList(const List& cpus) {
  std::string s;
  for (uint32_t c : cpus) s += (s.empty() ? "" : ",") + std::to_string(c);
  return s.empty() ? "any" : s;
}
constexpr int64_t kDrainMs = 10000;

void Usage() {
  std::fprintf(stderr,
               "usage: mailseald --config FILE       run the gateway\n"
               "       mailseald --check-config FILE validate FILE and exit (0: valid)\n");
}

// OpenAudit opens the audit trail; tree heads are signed by the token's audit key through a
// session of the pool (bound for each signature, so a re-opened token is picked up).
Result<std::unique_ptr<audit::AuditLog>> OpenAudit(const v1::Config& cfg, hsm::TokenManager* token) {
  const auto& a = cfg.control().audit();   // its fields and the token were validated (Validate)
  std::string label = a.key_label();
  audit::Signer signer = [token, label](const std::string& input) -> Result<std::string> {
    std::shared_ptr<hsm::TokenHandle> h = token->Handle();
    if (!h) return UnavailableError("security module unavailable: tree head not signed");
    hsm::SessionPool::Lease lease = h->pool->Acquire();
    Result<hsm::KeyPair> kp = hsm::FindKeyPair(*lease, label);
    if (!kp.ok()) return kp.status();
    Result<EVP_PKEY*> key = hsm::TokenPrivateKey(&*lease, *kp);
    if (!key.ok()) return key.status();
    Result<std::string> sig = audit::SignerFor(*key)(input);
    EVP_PKEY_free(*key);
    return sig;
  };
  // Stored heads are checked against the audit key's public half on the token, so that a log
  // and heads file rewritten together are not extended (and laundered by a new head).
  audit::HeadVerifier verify = [token, label](const v1::TreeHead& head) -> Result<bool> {
    std::shared_ptr<hsm::TokenHandle> h = token->Handle();
    if (!h) return UnavailableError("security module unavailable: head signatures not checked");
    hsm::SessionPool::Lease lease = h->pool->Acquire();
    Result<hsm::KeyPair> kp = hsm::FindKeyPair(*lease, label);
    if (!kp.ok()) return kp.status();
    Result<EVP_PKEY*> pub = hsm::PublicKey(*lease, kp->pub);
    if (!pub.ok()) return pub.status();
    bool good = audit::VerifyHeadSignature(head, *pub);
    EVP_PKEY_free(*pub);
    return good;
  };
  return audit::AuditLog::Open({a.log_path(), a.heads_path(), a.head_every() ? a.head_every() : 1000, signer,
                                (a.rotate_mib() ? a.rotate_mib() : 64ull) << 20, verify});
}

// PemCertificates splits a PEM bundle into its certificates.
std::vector<std::string> PemCertificates(const std::string& bundle) {
  static const std::string kBegin = "-----BEGIN CERTIFICATE-----", kEnd = "-----END CERTIFICATE-----";
  std::vector<std::string> out;
  for (size_t at = bundle.find(kBegin); at != std::string::npos; at = bundle.find(kBegin, at + 1)) {
    size_t end = bundle.find(kEnd, at);
    if (end == std::string::npos) break;
    out.push_back(bundle.substr(at, end + kEnd.size() - at) + "\n");
  }
  return out;
}

// LoadKeyDeps: what the Key and Ceremony services need from the configuration.
// `check_only` (validation) creates no directory.
Status LoadKeyDeps(const v1::Config& cfg, hsm::TokenManager* token, control::KeyDeps* k, bool check_only = false) {
  k->token = token;
  k->audit_key_label = cfg.control().audit().key_label();
  k->in_use = {k->audit_key_label};
  if (cfg.has_smime()) {
    k->in_use.insert(cfg.smime().dsa_key_label());
    k->in_use.insert(cfg.smime().dca_key_label());
    for (const auto& [label, file] : {std::pair{cfg.smime().dsa_key_label(), cfg.smime().dsa_cert_file()},
                                      std::pair{cfg.smime().dca_key_label(), cfg.smime().dca_cert_file()}}) {
      if (Result<std::string> pem = base::ReadFile(file); pem.ok()) k->config_certs[label] = *pem;
    }
    if (Result<std::string> anchors = base::ReadFile(cfg.smime().trust_anchors_file()); anchors.ok())
      k->anchors_pem = PemCertificates(*anchors);
  }
  if (const std::string& f = cfg.control().domain_trust_anchors_file(); !f.empty()) {
    Result<std::string> anchors = base::ReadFile(f);
    std::vector<std::string> certs = anchors.ok() ? PemCertificates(*anchors) : std::vector<std::string>{};
    if (certs.empty())
      return InvalidArgumentError(StrCat("field 'control.domain_trust_anchors_file': '", f, "' holds no PEM certificate"));
    k->anchors_pem = std::move(certs);
  }
  const auto& c = cfg.control().ceremony();
  k->keys_only_in_ceremony = c.keys_only_in_ceremony();
  if (c.custodians_size() == 0 && c.threshold() == 0) {
    if (c.keys_only_in_ceremony())
      return InvalidArgumentError("field 'control.ceremony.keys_only_in_ceremony': needs custodians and a threshold "
                                  "(no key could ever be made)");
    return OkStatus();
  }
  for (int i = 0; i < c.custodians_size(); ++i) {
    Result<std::string> read = base::ReadFile(c.custodians(i).cert_file());
    std::string pem = read.ok() ? *read : "";
    if (!read.ok() || PemCertificates(pem).size() != 1)
      return InvalidArgumentError(StrCat("field 'control.ceremony.custodians[", i, "].cert_file': '",
                                         c.custodians(i).cert_file(), "' is not one readable PEM certificate"));
    v1::CustodianRecord r;
    r.set_name(c.custodians(i).name());
    r.set_cert_pem(pem);
    k->custodians.push_back(std::move(r));
  }
  if (c.threshold() < 2 || c.threshold() > static_cast<uint32_t>(c.custodians_size()))
    return InvalidArgumentError(StrCat("field 'control.ceremony.threshold': ", c.threshold(),
                                       " must be at least 2 and at most the number of custodians (",
                                       c.custodians_size(), ")"));
  k->threshold = c.threshold();
  if (cfg.has_archive()) {   // DE-21: exports through open-archive ceremonies
    k->archive_dir = cfg.archive().dir();
    k->archive_max_bytes = uint64_t{cfg.archive().max_export_mib()} << 20;
  }
  k->transcript_dir = c.transcript_dir().empty() ? StrCat(cfg.spool_dir(), "/ceremonies") : c.transcript_dir();
  if (check_only) return OkStatus();
  std::error_code ec;
  std::filesystem::create_directories(k->transcript_dir, ec);
  if (ec) return InvalidArgumentError(StrCat("field 'control.ceremony.transcript_dir': ", ec.message()));
  return OkStatus();
}

// RoleOf: the role a configuration names, or nullopt.
std::optional<v1::Role> RoleOf(const std::string& name) {
  static const std::map<std::string, v1::Role> kRoles = {{"administrator", v1::ROLE_ADMINISTRATOR},
                                                         {"security-officer", v1::ROLE_SECURITY_OFFICER},
                                                         {"auditor", v1::ROLE_AUDITOR},
                                                         {"operator", v1::ROLE_OPERATOR}};
  auto it = kRoles.find(name);
  return it == kRoles.end() ? std::nullopt : std::optional<v1::Role>(it->second);
}

Result<std::unique_ptr<control::ControlServer>> StartControl(const v1::Config& cfg, queue::Spool* spool,
                                                             queue::QueueManager* qmgr, audit::AuditLog* log,
                                                             control::PolicyStore* policy, const control::KeyDeps* keys,
                                                             const control::CertDeps* certs, hsm::SharedTokenKey* key,
                                                             cluster::ClusterNode* cluster) {
  const auto& c = cfg.control();
  control::ServerOptions o{c.listen(), c.cert_file(), c.key_file(), key ? key->pkey() : nullptr, c.client_ca_file(), {},
                           StrCat(cfg.spool_dir(), "/control")};
  for (int i = 0; i < c.roles_size(); ++i) o.roles[c.roles(i).common_name()] = *RoleOf(c.roles(i).role());   // validated
  return control::ControlServer::Start(o, {spool, qmgr, log, policy, keys, certs, cluster});
}

// Describe one certificate for the management API, judged now by the one validator.
v1::CertificateInfo CertInfo(X509* cert, std::string kind, std::string domain, std::string source,
                             pki::Verdict verdict, std::string reason) {
  v1::CertificateInfo i;
  i.set_kind(std::move(kind));
  i.set_domain(std::move(domain));
  i.set_source(std::move(source));
  i.set_subject(pki::SubjectOf(cert));
  i.set_serial(pki::SerialHex(cert));
  i.set_not_after_unix(pki::UnixTime(X509_get0_notAfter(cert)));
  i.set_status(pki::VerdictName(verdict));
  i.set_reason(std::move(reason));
  BIO* b = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(b, cert);
  i.set_pem(base::BioString(b));
  BIO_free(b);
  return i;
}

// CertDepsFor: the certificate service's view of the S/MIME part (issue #15).
control::CertDeps CertDepsFor(sealing::SmimeShared* smime, const std::string* config_path,
                              Result<v1::Config> (*validate)(const std::string&)) {
  control::CertDeps d;
  d.list = [smime](const std::string& only) {
    std::vector<v1::CertificateInfo> out;
    std::shared_ptr<const pki::TrustList> trust = smime->store->trust();
    auto chain_of = [](const pki::Outcome& o, v1::CertificateInfo* i) {
      for (const pki::X509Ptr& x : o.chain) i->add_chain(pki::SubjectOf(x.get()));
    };
    if (only.empty())
      for (const pki::X509Ptr& a : trust->anchor_list()) {
        pki::Request r;
        r.leaf = a.get();
        pki::Outcome o = pki::Validate(*trust, r);
        out.push_back(CertInfo(a.get(), "anchor", "", "trust list", o.verdict, o.reason));
        chain_of(o, &out.back());
      }
    for (const smime::CertStore::Listed& l : smime->store->List()) {
      if (!only.empty() && l.domain != only) continue;
      pki::Request r;
      r.leaf = l.cert.get();
      r.purpose = l.kind == "dca" ? pki::Purpose::kSmimeEncrypt : pki::Purpose::kSmimeSign;
      pki::Outcome o = pki::Validate(trust->store(), r);
      out.push_back(CertInfo(l.cert.get(), l.kind, l.domain, l.pinned ? "pinned" : "learnt", o.verdict, o.reason));
      out.back().set_slot(l.slot);
      out.back().set_pinned_by_config(l.pinned_by_config);
      chain_of(o, &out.back());
    }
    return out;
  };
  d.add = [smime](const std::string& domain, const std::string& data, bool pin) -> Result<std::string> {
    Result<std::vector<pki::X509Ptr>> certs = pki::ParseCertificates(data, 1);
    if (!certs.ok()) return InvalidArgumentError(StrCat("certificate: ", certs.status().message()));
    return smime->store->Add(domain, certs->front().get(), pin);
  };
  d.remove = [smime](const std::string& domain, const std::string& kind) { return smime->store->Remove(domain, kind); };
  d.approve = [smime](const std::string& domain) { return smime->store->Approve(domain); };
  d.sources = [smime] {
    std::vector<v1::RevocationSource> out;
    if (!smime->crls) return out;
    for (const pki::CrlCache::Entry& e : smime->crls->Entries()) {
      v1::RevocationSource r;
      r.set_url(e.url);
      r.set_next_update_unix(e.next_update);
      r.set_fetched_at_unix(e.fetched_at);
      r.set_last_error(e.last_error);
      r.set_failures(e.failures);
      out.push_back(std::move(r));
    }
    return out;
  };
  if (smime->discovery) {
    smime::Discovery* disc = smime->discovery.get();
    d.refresh = [disc](const std::string& domain) {
      std::string outcome = disc->Lookup(domain);
      disc->Found(domain);   // a valid certificate known now (found or not just now) releases held mail
      return outcome;
    };
    d.lookups = [disc] {
      std::vector<v1::CertificateLookup> out;
      for (const smime::Discovery::Entry& e : disc->Entries()) {
        v1::CertificateLookup l;
        l.set_domain(e.domain);
        l.set_state(e.state);
        l.set_last_try_unix_ms(e.last_try_unix_ms);
        out.push_back(std::move(l));
      }
      return out;
    };
  }
  d.smimea = [smime](int ttl) {
    std::vector<std::string> out;
    // Our certificates: the configured files', or the ones installed on the token.
    auto ours = [smime](const smime::X509Ref& configured, const std::string& label) -> smime::X509Ref {
      std::shared_ptr<hsm::TokenHandle> h = configured || !smime->token ? nullptr : smime->token->Handle();
      if (!h) return configured;
      hsm::SessionPool::Lease lease = h->pool->Acquire();
      Result<hsm::KeyPair> kp = hsm::FindKeyPair(*lease, label);
      return kp.ok() ? sealing::TokenCertificate(*lease, *kp) : nullptr;
    };
    smime::X509Ref dsa = ours(smime->dsa_cert, smime->dsa_label), dca = ours(smime->dca_cert, smime->dca_label);
    for (auto [cert, authority] : {std::pair{dsa.get(), "domain-signing-authority"},
                                   std::pair{dca.get(), "domain-confidentiality-authority"}}) {
      if (!cert) continue;
      unsigned char* der = nullptr;
      int n = i2d_X509(cert, &der);
      if (n <= 0) continue;
      std::string bytes(reinterpret_cast<char*>(der), static_cast<size_t>(n));
      OPENSSL_free(der);
      for (const std::string& domain : smime::ExamineAuthority(cert, authority).domains)
        out.push_back(pki::SmimeaZoneLine(StrCat(authority, "@", domain), bytes, ttl));
    }
    return out;
  };
  d.reload = [smime, config_path, validate]() -> Status {
    Result<v1::Config> fresh = validate(*config_path);   // what start-up and SIGHUP accept
    if (!fresh.ok()) return fresh.status();
    return sealing::ReloadCertificates(smime, *fresh);
  };
  return d;
}

// Validate: the one validation path (issue #12). `--check-config`, start-up and SIGHUP all
// load the file through here, so they accept and refuse exactly the same files. It touches
// nothing: it reads the files the configuration names (certificates, keys, the PIN file's
// owner and mode) and checks what start-up would otherwise find out late (resolver settings,
// TLS context, roles, the spool path). Errors are "path: field 'x': why" (or file:line:col).
// `at_start` false (SIGHUP, after the drop to `user`): the files read only at start, as root —
// the SMTP and API keys and certificates, which a reload does not apply — are not read again
// (they may be root's, 0600, and unreadable now); a change to them needs a restart. The PIN
// file is checked either way: it is read after the drop, so `user` must own it.
Result<v1::Config> Validate(const std::string& path, bool at_start = true) {
  Result<v1::Config> loaded = config::LoadConfig(path);
  if (!loaded.ok()) return loaded.status();
  const v1::Config& cfg = *loaded;
  auto bad = [&](const std::string& field, std::string_view why) {
    return InvalidArgumentError(StrCat(path, ": field '", field, "': ", why));
  };
  base::LogLevel level;
  if (!base::ParseLogLevel(cfg.log_level(), &level)) return bad("log_level", StrCat("unknown level '", cfg.log_level(), "'"));
  {
    const auto& d = cfg.delivery();
    io::Resolver probe(d.dns_forwarder(), {d.dns_local_zones().begin(), d.dns_local_zones().end()},
                       {d.dns_local_data().begin(), d.dns_local_data().end()});
    if (!probe.init_status().ok()) return bad("delivery", probe.init_status().message());
  }
  struct stat st {};
  if (::stat(cfg.spool_dir().c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) return bad("spool_dir", StrCat("'", cfg.spool_dir(), "' exists and is not a directory"));
  } else if (std::string parent = std::filesystem::path(cfg.spool_dir()).parent_path().string();
             !parent.empty() && (::stat(parent.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))) {
    return bad("spool_dir", StrCat("'", cfg.spool_dir(), "' cannot be made: '", parent, "' is not a directory"));
  }
  if (cfg.has_tls() && at_start) {   // a key_label's key is checked against the certificate at start (the token)
    Result<::ssl_ctx_st*> made = tls::MakeServerContext(cfg.tls().cert_file(), cfg.tls().key_file());
    if (!made.ok()) return bad("tls", made.status().message());
    tls::FreeContext(*made);
  }
  if (cfg.has_smime()) {
    Result<std::unique_ptr<sealing::SmimeShared>> smime = sealing::LoadSmime(cfg, nullptr, nullptr, true);
    if (!smime.ok()) return InvalidArgumentError(StrCat(path, ": ", smime.status().message()));
  }
  if (cfg.has_hsm()) {
    if (::access(cfg.hsm().module_path().c_str(), R_OK) != 0)
      return bad("hsm.module_path", StrCat("'", cfg.hsm().module_path(), "': ", std::strerror(errno)));
    // The PIN is read (owner, mode 0600/0400, size) and wiped at once.
    // Read after the drop to `user`: that user must own it.
    std::optional<uid_t> owner = ::geteuid();
    if (uid_t uid = 0, gid = 0; !cfg.user().empty() && ::geteuid() == 0 && service::UserIds(cfg.user(), &uid, &gid).ok())
      owner = uid;
    if (Result<hsm::Secret> pin = hsm::ReadSecretFile(cfg.hsm().pin_file(), owner); !pin.ok())
      return bad("hsm.pin_file", pin.status().message());
  }
  if (cfg.has_recipient_directory()) {   // DE-11: the bind password as for the PIN above
    const auto& d = cfg.recipient_directory();
    if (!d.bind_password_file().empty()) {
      std::optional<uid_t> owner = ::geteuid();
      if (uid_t uid = 0, gid = 0; !cfg.user().empty() && ::geteuid() == 0 && service::UserIds(cfg.user(), &uid, &gid).ok())
        owner = uid;
      if (Result<hsm::Secret> pw = hsm::ReadSecretFile(d.bind_password_file(), owner); !pw.ok())
        return bad("recipient_directory.bind_password_file", pw.status().message());
    }
    if (!d.ca_file().empty() && ::access(d.ca_file().c_str(), R_OK) != 0)
      return bad("recipient_directory.ca_file", StrCat("'", d.ca_file(), "': ", std::strerror(errno)));
  }
  if (cfg.has_control()) {
    const auto& c = cfg.control();
    const auto& a = c.audit();
    if (!cfg.has_hsm()) return bad("control", "needs 'hsm' (the audit key lives on the token)");
    if (a.log_path().empty() || a.heads_path().empty() || a.key_label().empty())
      return bad("control.audit", "log_path, heads_path and key_label are required");
    std::string api_host;
    uint16_t api_port = 0;
    if (!cfg.user().empty() && config::ParseHostPort(c.listen(), &api_host, &api_port) && api_port < 1024)
      return bad("control.listen", StrCat("port ", api_port, " is below 1024: the management API starts after the drop "
                                          "to 'user' (", cfg.user(), "), which may not bind it"));
    if (!c.key_label().empty() && !c.key_file().empty()) return bad("control.key_label", "key_file or key_label, not both");
    if (const std::string& so = c.security_officer_address(); !so.empty()) {
      size_t at = so.find('@');
      bool ok = so.size() <= 254 && at != std::string::npos && at > 0 && at + 1 < so.size() && so.find('@', at + 1) == std::string::npos;
      for (char ch : so) ok = ok && ch > ' ' && ch < 0x7f && ch != '<' && ch != '>' && ch != '"' && ch != ',';
      if (!ok) return bad("control.security_officer_address", StrCat("'", so, "' is not a mailbox (local@domain)"));
    }
    for (auto [file, field] : {std::pair{c.cert_file(), "control.cert_file"}, std::pair{c.key_file(), "control.key_file"},
                               std::pair{c.client_ca_file(), "control.client_ca_file"}}) {
      if (file.empty() && std::string_view(field) == "control.key_file" && !c.key_label().empty()) continue;
      if (!at_start) continue;
      if (Result<std::string> r = base::ReadFile(file); !r.ok()) return bad(field, r.status().message());
    }
    for (int i = 0; i < c.roles_size(); ++i)
      if (!RoleOf(c.roles(i).role()))
        return bad(StrCat("control.roles[", i, "].role"),
                   StrCat("'", c.roles(i).role(), "' is not administrator, security-officer, auditor or operator"));
    control::KeyDeps k;
    if (Status ks = LoadKeyDeps(cfg, nullptr, &k, true); !ks.ok()) return InvalidArgumentError(StrCat(path, ": ", ks.message()));
  }
  return loaded;
}

int CheckConfig(const std::string& path) {
  Result<v1::Config> cfg = Validate(path);
  if (!cfg.ok()) {
    std::fprintf(stderr, "mailseald: %s\n", cfg.status().message().c_str());
    return kExitUsage;
  }
  std::printf("%s: OK (hostname %s, %d listener(s), spool %s, next hop %s)\n", path.c_str(),
              cfg->hostname().c_str(), cfg->listen_size(), cfg->spool_dir().c_str(),
              cfg->delivery().relay_host().empty() ? "MX lookup" : cfg->delivery().relay_host().c_str());
  return kExitOk;
}

// Daemon: mailseald's parts, set up stage by stage (Run), in the order they depend on each
// other; members are destroyed in reverse, so every part outlives the parts that use it.
struct Daemon {
  static constexpr int kGoOn = -1;   // a set-up step succeeded: go on (else: the exit code)
  explicit Daemon(std::string config_path) : path(std::move(config_path)) {}

  std::string path;
  v1::Config cfg;
  std::unique_ptr<pki::TrustList> client_trust;   // tls.client_ca_file
  int sfd = -1;
  std::unique_ptr<queue::Spool> spool;
  policy::SnapshotStore policy;
  uint64_t version = 1;
  std::unique_ptr<hsm::TokenManager> token;
  std::atomic<bool> hsm_ok{true};
  std::shared_ptr<sealing::TokenAtRestKeys> at_rest;   // the spool's data keys (DE-22)
  bool archive_key_created = false;                     // this start made the archive key (audited)
  // The SMTP server's and the management API's keys when they are in the token (SEE-2.4b);
  // after the token (they use it), before the contexts that hold them.
  std::unique_ptr<hsm::SharedTokenKey> smtp_key, api_key;
  std::unique_ptr<::ssl_ctx_st, void (*)(::ssl_ctx_st*)> tls_ctx{nullptr, tls::FreeContext};
  std::unique_ptr<sealing::SmimeShared> smime;
  std::unique_ptr<audit::AuditLog> audit_log;
  std::unique_ptr<audit::Recorder> recorder;
  std::atomic<bool> audit_ok{true};   // false: mail events cannot be recorded (fail closed)
  // The network back end: the kernel's (epoll over sockets).
  kernel::KernelBackend backend{"421 4.3.2 Service busy (out of resources), try again later\r\n"};
#ifdef MAILSEAL_HAVE_DPDK
  std::unique_ptr<dpdk::DpdkBackend> dpdk_backend;   // io.backend DPDK (issue #17)
#endif
  io::Backend* network = &backend;                    // the one the endpoints and deliveries use
  std::unique_ptr<queue::QueueManager> qmgr;
  std::unique_ptr<queue::Committer> committer;
  control::KeyDeps key_deps;   // outlives the server that uses it
  control::CertDeps cert_deps;  // likewise
  std::unique_ptr<control::PolicyStore> policy_store;
  std::unique_ptr<cluster::ClusterNode> cluster_node;   // issue #20; outlives the API that shows it
  std::atomic<bool> serving_all{true};                  // the overall health, for the node record
  std::atomic<bool> key_expiry_urgent{false};           // an in-use key's certificate within 7 days of its end
  std::unique_ptr<control::ControlServer> control_server;
  std::unique_ptr<io::SpfChecker> spf;
  std::unique_ptr<directory::RecipientDirectory> directory;   // DE-11; outlives the net threads
  std::vector<std::string> directory_domains;
  io::ClientLimiter limiter;   // per-client connection limits across the net threads (issue #13)
  std::vector<std::unique_ptr<endpoint::SmtpServer>> nets;

  // Configure: the configuration as --check-config accepts it, the STARTTLS context, limits
  // and signals (blocked before any thread starts; the control loop reads them).
  int Configure() {
  Result<v1::Config> loaded = Validate(path);
  if (!loaded.ok()) {
    std::fprintf(stderr, "mailseald: %s\n", loaded.status().message().c_str());
    return kExitUsage;
  }
  cfg = std::move(loaded.value());
  base::LogLevel level = base::LogLevel::kInfo;
  if (base::ParseLogLevel(cfg.log_level(), &level)) base::SetLogLevel(level);   // validated
  // What an attacker who took this process would hold (issue #18): said once, at the start.
  Log(LogLevel::kInfo, "mailseald", "running with", service::Privileges());
  // STARTTLS (SM-5): the certificate and key were checked; the context serves every client.
  if (cfg.has_tls()) {
    Result<::ssl_ctx_st*> made =
        tls::MakeServerContext(cfg.tls().cert_file(), cfg.tls().key_file(), cfg.tls().client_ca_file());
    if (!made.ok()) {
      std::fprintf(stderr, "mailseald: %s: field 'tls': %s\n", path.c_str(), made.status().message().c_str());
      return kExitUsage;
    }
    tls_ctx.reset(*made);
    if (!cfg.tls().client_ca_file().empty()) {   // issue #16: client certificates of partner gateways
      auto t = std::make_unique<pki::TrustList>();
      if (Status st = t->LoadFile(cfg.tls().client_ca_file(), /*anchors=*/true, /*crls=*/false); !st.ok()) {
        std::fprintf(stderr, "mailseald: %s: field 'tls.client_ca_file': %s\n", path.c_str(), st.message().c_str());
        return kExitUsage;
      }
      client_trust = std::move(t);
    }
  }
  // Thousands of SMTP connections need thousands of descriptors: raise the soft limit.
  rlimit nofile{};
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
  }

  // Signals go to the control thread's signalfd only; block them before any thread starts.
  sigset_t sigs;
  sigemptyset(&sigs);
  for (int s : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&sigs, s);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // A file that may not grow (quota, RLIMIT_FSIZE) must give EFBIG to the writer — the spool
  // refuses the message, the audit log fails closed — not kill the daemon.
  signal(SIGXFSZ, SIG_IGN);
  sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
  return kGoOn;

  }

  // OpenStores: the spool, the relay policy snapshot, the security module and what the crypto
  // stage needs (S/MIME, or policy decisions alone).
  int OpenStores() {
  spool = std::make_unique<queue::Spool>(cfg.spool_dir());
  if (Status st = spool->Init(); !st.ok()) {
    Log(LogLevel::kError, "mailseald", "spool unusable", {{"error", st.message()}});
    return kExitRuntime;
  }
  policy.Publish(policy::BuildSnapshot(cfg, version));

  // The security module: opened before mail flows; while it is unreachable, mail is
  // suspended both ways (fail safe). Each crypto worker keeps one session of the pool.
  if (cfg.has_hsm()) {
    const auto& h = cfg.hsm();
    token = std::make_unique<hsm::TokenManager>(
        hsm::TokenConfig{h.module_path(), h.token_label(), h.token_serial(), h.pin_file(),
                         // one session per crypto worker, one for the audit signer, one per TLS key
                         std::max<size_t>(h.sessions(), cfg.crypto_workers() + (cfg.has_control() ? 1 : 0) +
                                                            !cfg.tls().key_label().empty() +
                                                            !cfg.control().key_label().empty())});
    hsm_ok.store(token->Tick());   // now: the audit trail's heads are checked with the token's key
  }
  if (int rc = OpenAtRestKeys(); rc != kGoOn) return rc;
  if (int rc = BindTokenTlsKeys(); rc != kGoOn) return rc;
  if (cfg.has_smime()) {
    Result<std::unique_ptr<sealing::SmimeShared>> loaded_smime = sealing::LoadSmime(cfg, spool.get(), token.get());
    if (!loaded_smime.ok()) {
      std::fprintf(stderr, "mailseald: %s: %s\n", path.c_str(), loaded_smime.status().message().c_str());
      return kExitUsage;
    }
    smime = std::move(loaded_smime.value());
    Log(LogLevel::kInfo, "mailseald", "domain security on",
        {{"partners", std::to_string(smime->policy.partners.size())}, {"authserv_id", smime->policy.authserv_id}});
  }

  if (!smime) {
    // Policy decisions run all the same (issue #12): what must be protected is held.
    smime = sealing::PolicyOnly(cfg, spool.get());
    Log(LogLevel::kWarning, "mailseald",
        "no smime section: nothing can be sealed; mail the policy says must be signed, sealed or held is held (SEE-2.1b)");
  }
  if (cfg.has_archive()) {   // DE-21 (issue #19): the archive key's public half; shares to the custodians
    const auto& ar = cfg.archive();
    std::vector<records::Custodian> custodians;
    for (const auto& cu : cfg.control().ceremony().custodians()) {
      Result<std::string> pem = base::ReadFile(cu.cert_file());
      if (!pem.ok()) {
        std::fprintf(stderr, "mailseald: %s: field 'control.ceremony.custodians': %s\n", path.c_str(), pem.status().message().c_str());
        return kExitUsage;
      }
      custodians.push_back({cu.name(), *pem});
    }
    bool created = false;
    Result<records::Pkey> key = records::EnsureArchiveKey(ar.dir(), custodians, cfg.control().ceremony().threshold(), &created);
    if (!key.ok()) {
      std::fprintf(stderr, "mailseald: %s: field 'archive': %s\n", path.c_str(), key.status().message().c_str());
      return kExitUsage;
    }
    smime->archive_key = std::shared_ptr<EVP_PKEY>(key->release(), EVP_PKEY_free);
    smime->archive_dir = ar.dir();
    smime->archive_run = spool->NewQueueId();
    smime->archive_inbound = ar.directions() != v1::Archive::ARCHIVE_OUTBOUND;
    smime->archive_outbound = ar.directions() != v1::Archive::ARCHIVE_INBOUND;
    archive_key_created = created;
    if (created)
      Log(LogLevel::kWarning, "archive",
          "archive key made: its private half exists only as shares, one per custodian (give each custodian their file)",
          {{"shares", StrCat(ar.dir(), "/shares/")}, {"threshold", std::to_string(cfg.control().ceremony().threshold())},
           {"custodians", std::to_string(custodians.size())}});
    Log(LogLevel::kInfo, "archive", "every message archived",
        {{"dir", ar.dir()}, {"directions", v1::Archive::Directions_Name(ar.directions())},
         {"retention_days", std::to_string(ar.retention_days())}});
  }
  if (cfg.has_scanning()) {   // DE-15 (issue #19): every worker scans with its own connections
    smime->scanning = cfg.scanning();
    std::string names;
    for (const auto& sc : cfg.scanning().scanners()) names += StrCat(names.empty() ? "" : ", ", sc.name());
    Log(LogLevel::kInfo, "mailseald", "content scanning on",
        {{"scanners", names}, {"when_unavailable", v1::Scanning::WhenUnavailable_Name(cfg.scanning().when_unavailable())}});
  }
  if (!cfg.has_tls())
    Log(LogLevel::kWarning, "mailseald", "no tls section: STARTTLS is not offered, all inbound mail arrives in clear (SM-5)");
  if (cfg.has_recipient_directory()) {   // DE-11 (issue #19): local recipients checked at RCPT
    const auto& d = cfg.recipient_directory();
    directory::DirectoryOptions o;
    o.query.server = d.url();
    o.query.base = d.base();
    o.query.filter = d.filter();
    o.query.bind_dn = d.bind_dn();
    o.query.starttls = d.starttls();
    o.query.ca_file = d.ca_file();
    if (!d.bind_password_file().empty()) {
      Result<hsm::Secret> pw = hsm::ReadSecretFile(d.bind_password_file());
      if (!pw.ok()) {
        std::fprintf(stderr, "mailseald: %s: field 'recipient_directory.bind_password_file': %s\n", path.c_str(),
                     pw.status().message().c_str());
        return kExitUsage;
      }
      o.query.bind_password = std::string(pw->Reveal());
    }
    o.timeout_ms = d.timeout_ms();
    o.cache_entries = d.cache_entries();
    o.known_ttl_ms = int64_t{d.known_ttl_s()} * 1000;
    o.unknown_ttl_ms = int64_t{d.unknown_ttl_s()} * 1000;
    o.threads = static_cast<int>(d.threads());
    for (const std::string& dom : d.domains()) directory_domains.push_back(base::AsciiLower(dom));
    directory = std::make_unique<directory::RecipientDirectory>(std::move(o));
    Log(LogLevel::kInfo, "mailseald", "recipients checked in the directory at RCPT",
        {{"url", d.url()}, {"base", d.base()}, {"bind", d.bind_dn().empty() ? "anonymous" : d.bind_dn()},
         {"tls", d.url().starts_with("ldaps://") ? "ldaps" : d.starttls() ? "starttls" : "none"}});
  }
  if (cfg.spf().mode() == v1::Spf::SPF_OFF)
    Log(LogLevel::kWarning, "mailseald", "spf off: senders' SPF policies are not enforced (SM-5b) and no mail is marked tls+spf");
  return kGoOn;
  }

  // AuditArchive records what happened to the archive (made, expired) in the audit trail.
  void AuditArchive(const std::string& action, const std::string& object, const std::string& detail) {
    if (!recorder) return;
    v1::AuditRecord r;
    r.set_actor("mailseald");
    r.set_action(action);
    r.set_object(object);
    r.set_outcome(v1::AuditRecord::OUTCOME_DONE);
    r.set_detail(detail);
    recorder->Record(std::move(r));
  }

  // ExpireArchive removes whole days past the retention period (DE-21), each audited.
  void ExpireArchive() {
    if (!cfg.has_archive()) return;
    auto now = std::chrono::system_clock::now().time_since_epoch();
    Result<std::vector<records::Expired>> gone = records::Expire(
        cfg.archive().dir(), cfg.archive().retention_days(), std::chrono::duration_cast<std::chrono::milliseconds>(now).count());
    if (!gone.ok()) {
      Log(LogLevel::kError, "archive", "expiry failed (tried again in an hour)", {{"error", gone.status().message()}});
      return;
    }
    for (const records::Expired& x : *gone) {
      Log(LogLevel::kInfo, "archive", "day expired", {{"day", x.day}, {"files", std::to_string(x.files)}});
      AuditArchive("archive.expired", x.day, StrCat(x.files, " file(s) removed after ", cfg.archive().retention_days(), " days"));
    }
  }

  // OpenAtRestKeys: the spool's data keys (DE-22), before any spool file is read or written.
  // Without the token they cannot be unwrapped, and the queue cannot be recovered: mailseald
  // waits for it (saying so every 10 s; systemd is not told it is ready), never starts on a
  // spool it cannot read, never writes a message in clear instead.
  int OpenAtRestKeys() {
    if (cfg.at_rest().mode() != v1::AtRest::AT_REST_ON) {
      Log(LogLevel::kWarning, "mailseald", "spool not encrypted at rest (at_rest off): a stolen disk reveals the queued mail (DE-22)");
      return kGoOn;
    }
    sealing::AtRestOptions o;
    o.dir = StrCat(cfg.spool_dir(), "/keys");
    o.kek_label = cfg.at_rest().kek_label();
    o.rotate_s = static_cast<int64_t>(cfg.at_rest().rotate_hours()) * 3600;
    auto last_said = std::chrono::steady_clock::now() - std::chrono::hours(1);
    while (true) {
      bool created = false;
      Result<std::shared_ptr<sealing::TokenAtRestKeys>> ring = sealing::TokenAtRestKeys::Open(token.get(), o, &created);
      if (ring.ok()) {
        at_rest = *ring;
        queue::InstallAtRestKeys(at_rest);
        if (created) Log(LogLevel::kInfo, "at-rest", "spool key-encrypting key made on the token", {{"label", o.kek_label}});
        Log(LogLevel::kInfo, "at-rest", "spool encrypted at rest",
            {{"keys", std::to_string(at_rest->size())}, {"current", at_rest->current_id()}, {"kek", o.kek_label}});
        return kGoOn;
      }
      if (ring.status().code() != StatusCode::kUnavailable) {
        Log(LogLevel::kError, "at-rest", "spool keys unusable", {{"error", ring.status().message()}});
        return kExitRuntime;
      }
      if (std::chrono::steady_clock::now() - last_said >= std::chrono::seconds(10)) {
        last_said = std::chrono::steady_clock::now();
        Log(LogLevel::kWarning, "at-rest", "waiting for the security module to open the spool keys (no mail is taken meanwhile)",
            {{"error", ring.status().message()}});
      }
      pollfd p{sfd, POLLIN, 0};
      if (::poll(&p, 1, 1000) > 0) {
        signalfd_siginfo si{};
        if (::read(sfd, &si, sizeof si) == sizeof si && si.ssi_signo != SIGHUP) return kExitOk;
      }
      if (token) token->Tick();
    }
  }

  // BindTokenTlsKeys: the STARTTLS and management API keys named by key_label, bound to the
  // token and checked against their certificates (when the token is there; else at first use).
  int BindTokenTlsKeys() {
    auto bind = [this](const std::string& field, const std::string& label, const std::string& cert_file,
                       EVP_PKEY* cert_key, std::unique_ptr<hsm::SharedTokenKey>* out) {
      X509* cert = nullptr;
      if (!cert_key) {   // the management API's certificate: read here
        Result<std::string> pem = base::ReadFile(cert_file);
        if (pem.ok()) {
          BIO* b = BIO_new_mem_buf(pem->data(), static_cast<int>(pem->size()));
          cert = PEM_read_bio_X509(b, nullptr, nullptr, nullptr);
          BIO_free(b);
        }
        cert_key = cert ? X509_get0_pubkey(cert) : nullptr;
      }
      Result<std::unique_ptr<hsm::SharedTokenKey>> k =
          cert_key ? hsm::SharedTokenKey::Create(token.get(), label, cert_key)
                   : Result<std::unique_ptr<hsm::SharedTokenKey>>(InvalidArgumentError("no certificate"));
      X509_free(cert);
      Status st = k.ok() && hsm_ok.load() ? (*k)->Check() : k.status();
      if (!st.ok()) {
        std::fprintf(stderr, "mailseald: %s: field '%s': %s\n", path.c_str(), field.c_str(), st.message().c_str());
        return false;
      }
      if (!hsm_ok.load())
        Log(LogLevel::kWarning, "mailseald", "security module unavailable: the TLS key is checked when it is back",
            {{"field", field}, {"label", label}});
      *out = std::move(k.value());
      return true;
    };
    if (cfg.has_tls() && !cfg.tls().key_label().empty()) {
      if (!bind("tls.key_label", cfg.tls().key_label(), "", tls::CertificateKey(tls_ctx.get()), &smtp_key))
        return kExitUsage;
      if (Status st = tls::UseServerKey(tls_ctx.get(), smtp_key->pkey()); !st.ok()) {
        std::fprintf(stderr, "mailseald: %s: field 'tls.key_label': %s\n", path.c_str(), st.message().c_str());
        return kExitUsage;
      }
      Log(LogLevel::kInfo, "mailseald", "STARTTLS key in the token", {{"label", cfg.tls().key_label()}});
    }
    if (cfg.has_control() && !cfg.control().key_label().empty()) {
      if (!bind("control.key_label", cfg.control().key_label(), cfg.control().cert_file(), nullptr, &api_key))
        return kExitUsage;
      Log(LogLevel::kInfo, "mailseald", "management API key in the token", {{"label", cfg.control().key_label()}});
    }
    return kGoOn;
  }

  // OpenAuditTrail: checked before anything is appended; events of a dead audit disk from the
  // last run written; the recorder that batches mail events.
  int OpenAuditTrail() {
  // The audit trail (issue #5): management actions and mail events, the latter in batches.
  if (cfg.has_control()) {
    Result<std::unique_ptr<audit::AuditLog>> a = OpenAudit(cfg, token.get());
    if (!a.ok()) {
      std::fprintf(stderr, "mailseald: %s: %s\n", path.c_str(), a.status().message().c_str());
      return kExitUsage;
    }
    audit_log = std::move(a.value());
    const audit::OpenReport& rep = audit_log->report();
    if (rep.torn_bytes || rep.torn_head_bytes)
      Log(LogLevel::kWarning, "audit", "torn tail cut off (a write that never completed: crash or full disk; no record lost)",
          {{"log_bytes", std::to_string(rep.torn_bytes)}, {"heads_bytes", std::to_string(rep.torn_head_bytes)}});
    bool keep_flowing = cfg.control().audit().accept_unaudited_mail();
    std::string late_path = StrCat(cfg.spool_dir(), "/audit.late");
    if (!rep.damage.empty()) {   // the alarm: the trail is not extended; mail per the fail-closed rule
      Log(LogLevel::kError, "audit", "AUDIT TRAIL DAMAGED OR TAMPERED WITH", {{"why", rep.damage}});
      if (!keep_flowing) audit_ok.store(false, std::memory_order_release);
    } else {
      Log(LogLevel::kInfo, "audit", "audit trail checked",
          {{"records", std::to_string(audit_log->size())}, {"heads_checked", std::to_string(rep.heads_checked)},
           {"not_yet_covered", std::to_string(rep.uncovered)}});
      if (rep.heads_unverified)
        Log(LogLevel::kWarning, "audit", "tree head signatures not checked (the audit key is not reachable): roots only",
            {{"heads", std::to_string(rep.heads_unverified)}});
      // Events a dead audit disk could not take in the last run (issue #13), kept on the spool->
      if (Result<audit::LateRecords> late = audit::WriteLateRecords(audit_log.get(), late_path); !late.ok())
        Log(LogLevel::kError, "audit", "events kept from the last run could not be written (kept, tried at the next start)",
            {{"file", late_path}, {"error", late.status().message()}});
      else if (late->written || !late->problem.empty())
        Log(late->problem.empty() ? LogLevel::kWarning : LogLevel::kError, "audit", "events kept from the last run written late",
            {{"events", std::to_string(late->written)}, {"problem", late->problem}});
      // A head now covers whatever a crash left unsigned (the trail is checked first).
      if (Result<v1::TreeHead> h = audit_log->SignHead(); !h.ok())
        Log(LogLevel::kWarning, "audit", "start-up tree head not signed (tried again later)", {{"error", h.status().message()}});
    }
    recorder = std::make_unique<audit::Recorder>(
        audit_log.get(),
        [this, keep_flowing](const Status& st) {
          if (!keep_flowing) audit_ok.store(false, std::memory_order_release);
          Log(LogLevel::kError, "audit",
              keep_flowing ? "mail events can no longer be recorded (accept_unaudited_mail: mail keeps flowing)"
                           : "mail events can no longer be recorded: new mail gets 451 until the trail records again",
              {{"error", st.message()}});
        },
        100000,
        [this, damaged = !rep.damage.empty()] {
          if (!damaged) audit_ok.store(true, std::memory_order_release);
          Log(LogLevel::kInfo, "audit", "mail events are recorded again: mail accepted");
        },
        late_path);
    if (archive_key_created) AuditArchive("archive.key-created", cfg.archive().dir(),
                                          StrCat("shares for ", cfg.control().ceremony().custodians_size(),
                                                 " custodians, ", cfg.control().ceremony().threshold(), " rebuild it"));
  }
  return kGoOn;
  }

  // BuildQueue: the queue manager (recovered from the spool, not started) and the committer.
  int BuildQueue() {
  // Deliveries connect through the network back end (StartDpdk chose it); the SMTP server
  // endpoints get its listeners in StartNetwork.
  queue::QueueOptions qopts;
  qopts.network = network;
  qopts.hostname = cfg.hostname();
  qopts.delivery = cfg.delivery();
  qopts.max_messages = cfg.max_active_messages();
  qopts.crypto_workers = cfg.crypto_workers();
  qopts.crypto_cpus.assign(cfg.crypto_cpus().begin(), cfg.crypto_cpus().end());
#ifdef MAILSEAL_HAVE_DPDK
  if (dpdk_backend) qopts.crypto_rings = dpdk::MakeCryptoRing;   // rte_ring in EAL memory
#endif
  if (smime) {
    qopts.processor = sealing::SmimeProcessorFactory(smime.get());
    // Jobs carry the message as the spool writer wrote it (within the bound), not a path.
    spool->SetBodyBudget(std::make_shared<queue::BodyBudget>(uint64_t{cfg.crypto_memory_mib()} << 20));
    // Notices about held mail (SEE-2.1b, SEE-2.12), from the policy document in force.
    sealing::SmimeShared* shared = smime.get();
    queue::NotifierOptions base;
    base.hostname = cfg.hostname();
    for (std::string d : cfg.local_domains()) {
      d = base::AsciiLower(d);
      base.local_domains.push_back(d);
    }
    qopts.notifications = [shared, base] {
      queue::NotifierOptions o = base;
      std::shared_ptr<const policy::CompiledPolicy> doc = shared->document.load(std::memory_order_acquire);
      const v1::Notifications& n = doc->notifications;
      o.admin_address = n.admin_address();
      o.notify_sender = doc->version == 0 || n.notify_sender_on_hold();
      if (n.digest_interval_s()) o.interval_ms = static_cast<int64_t>(n.digest_interval_s()) * 1000;
      if (n.gather_s()) o.gather_ms = static_cast<int64_t>(n.gather_s()) * 1000;
      return o;
    };
    qopts.requires_tls = [shared](const std::string& rcpt) {
      return shared->document.load(std::memory_order_acquire)->RequiresTls(rcpt);
    };
    // A copy held for want of a certificate, once durable in hold/, is reported to discovery,
    // which releases it when the certificate is usable by then — the one that turned up while
    // the copy was still being written included (it would otherwise wait for the domain's next
    // lookup). Discovery's release check applies the gateway's suitability rules, so a copy
    // held as unsuitable is not released to be held again.
    if (smime->discovery) {
      smime::Discovery* disc = smime->discovery.get();
      qopts.held_for_certificate = [disc](const std::string& domain) { disc->Found(domain); };
    }
    qopts.hold_expiry_ms = [shared] {
      return static_cast<int64_t>(shared->document.load(std::memory_order_acquire)->hold_expiry_s) * 1000;
    };
  }
  if (cfg.securemail())   // SM-6.1: a SecureMail host sends only over TLS (4.7.5 deferrals, then a DSN)
    qopts.requires_tls = [](const std::string&) { return true; };
  if (recorder) {
    audit::Recorder* rec = recorder.get();
    qopts.on_event = [rec](const queue::MailEvent& e) {
      v1::AuditRecord r;
      r.set_actor("mailseald");
      r.set_action(e.action);
      r.set_object(e.queue_id);
      r.set_outcome(v1::AuditRecord::OUTCOME_DONE);
      if (!e.queue_id.empty()) r.add_message_ids(e.queue_id);
      r.set_detail(e.detail);
      r.set_policy_version(e.policy_version);
      rec->Record(std::move(r));
    };
  }
  qmgr = std::make_unique<queue::QueueManager>(spool.get(), qopts);
  if (Status st = qmgr->Recover(); !st.ok()) {
    Log(LogLevel::kError, "mailseald", "queue recovery failed", {{"error", st.message()}});
    return kExitRuntime;
  }
  committer = std::make_unique<queue::Committer>(spool.get(), qmgr.get());
  return kGoOn;

  }

  // StartDpdk: with io.backend DPDK, the poll-mode port and the project's TCP take the
  // listeners' ports and the deliveries (issue #17).
  int StartDpdk() {
    if (cfg.io().backend() != v1::Io::DPDK) return kGoOn;
#ifdef MAILSEAL_HAVE_DPDK
    const auto& d = cfg.io().dpdk();
    dpdk::DpdkOptions o;
    o.eal_args.assign(d.eal_args().begin(), d.eal_args().end());
    o.port = d.port();
    o.exception_port = d.exception_port();
    dpdk::ParseAddress(d.address(), &o.ip, &o.netmask);   // validated
    uint32_t unused_mask;
    if (!d.gateway().empty()) dpdk::ParseAddress(d.gateway(), &o.gateway, &unused_mask);
    for (const auto& l : cfg.listen()) {
      std::string host;
      uint16_t port = 0;
      config::ParseHostPort(l.address(), &host, &port);
      o.listen_ports.push_back(port);
    }
    o.mbufs = d.mbufs();
    o.max_flows = d.max_flows();
    o.syn_budget = d.syn_budget();
    o.lcores = d.lcores() ? d.lcores() : 1;
    if (d.delayed_ack_ms()) o.delayed_ack_ms = d.delayed_ack_ms();   // 0: DpdkOptions' default
    o.cpus.assign(d.cpus().begin(), d.cpus().end());
    Result<std::unique_ptr<dpdk::DpdkBackend>> b = dpdk::DpdkBackend::Start(o);
    if (!b.ok()) {
      Log(LogLevel::kError, "mailseald", "DPDK back end not started", {{"error", b.status().message()}});
      return kExitRuntime;
    }
    dpdk_backend = std::move(b.value());
    network = dpdk_backend.get();
    return kGoOn;
#else
    std::fprintf(stderr, "mailseald: %s: field 'io.backend': this build has no DPDK (libdpdk-dev missing)\n", path.c_str());
    return kExitUsage;
#endif
  }

  // OpenListeners: one listening socket per (net thread, address); SO_REUSEPORT spreads the
  // connections.
  int OpenListeners(std::vector<std::vector<int>>* fds) {
  // One listening socket per (net thread, address), SO_REUSEPORT spreads the connections.
  fds->assign(cfg.net_threads(), {});
  if (network != &backend) {   // DPDK: the stack listens on the ports (StartDpdk)
    for (const auto& l : cfg.listen())
      Log(LogLevel::kInfo, "mailseald", "listening", {{"address", l.address()}, {"backend", "dpdk"},
                                                      {"on", cfg.io().dpdk().address()}});
    return kGoOn;
  }
  for (const auto& l : cfg.listen()) {
    std::string host;
    uint16_t port = 0;
    config::ParseHostPort(l.address(), &host, &port);
    for (uint32_t t = 0; t < cfg.net_threads(); ++t) {
      Result<int> fd = kernel::OpenListener(host, &port);
      if (!fd.ok()) {
        Log(LogLevel::kError, "mailseald", "cannot listen", {{"error", fd.status().message()}});
        return kExitRuntime;
      }
      (*fds)[t].push_back(*fd);
    }
    std::string shown = host.find(':') != std::string::npos ? StrCat("[", host, "]:", port)
                                                            : StrCat(host, ":", port);
    Log(LogLevel::kInfo, "mailseald", "listening", {{"address", shown}});
  }
  return kGoOn;
  }

  // DropPrivileges: after the listeners are bound (issue #18) — `user`, no capabilities,
  // no_new_privs, the seccomp filter; see service/privileges.h. Nothing that reads outside
  // input runs before this.
  int DropPrivileges() {
    bool was_root = geteuid() == 0;
    if (Status st = service::DropPrivileges(cfg.user()); !st.ok()) {
      Log(LogLevel::kError, "mailseald", "cannot drop privileges", {{"user", cfg.user()}, {"error", st.message()}});
      return kExitRuntime;
    }
    auto fields = service::Privileges();
    fields.emplace_back("from", was_root ? "root" : "unprivileged start");
    for (auto& f : service::ProcStatus()) fields.push_back(std::move(f));   // as /proc/<pid>/status has it
    Log(LogLevel::kInfo, "mailseald", "privileges dropped", fields);
    if (geteuid() == 0)
      Log(LogLevel::kWarning, "mailseald", "still running as root: set 'user' so that a compromise of the daemon is not "
          "a compromise of the machine", {});
    return kGoOn;
  }

  // StartQueueAndControl: the queue and the committer run; the management API (issue #5),
  // whose audit trail was opened before the queue.
  int StartQueueAndControl() {
  if (token) {
    hsm_ok.store(token->Tick());
    qmgr->SetSuspended(!hsm_ok.load());
  }
  if (Status st = qmgr->Start(); !st.ok()) {
    Log(LogLevel::kError, "mailseald", "queue not started", {{"error", st.message()}});
    return kExitRuntime;
  }
  Log(LogLevel::kInfo, "crypto", "workers started",
      {{"workers", std::to_string(cfg.crypto_workers())}, {"rings", qmgr->CryptoRings()},
       {"memory_mib", smime ? std::to_string(cfg.crypto_memory_mib()) : "0"},
       {"cpus", CpuList(cfg.crypto_cpus())}});
  committer->Start();
  // Partner certificates looked up when mail waits for them; held copies released when one
  // turns up (issue #15).
  if (smime && smime->discovery) {
    queue::QueueManager* q = qmgr.get();
    // The SEE-2.8b fallback: a request from domain-certificate-request@<our first domain>,
    // signed on its way out (require_signature), to the partner's.
    std::string ours = cfg.local_domains().empty() ? cfg.hostname() : base::AsciiLower(cfg.local_domains(0));
    sealing::SmimeShared* shared_for_list = smime.get();
    smime->discovery->SetSeemailSink([shared_for_list](std::vector<std::string> list) {
      sealing::SetDirectorySeemail(shared_for_list, std::move(list));
    });
    smime->discovery->SetRequester([q, sp = spool.get(), ours, host = cfg.hostname()](const std::string& domain) -> Status {
      int64_t now = base::QueueNowMs();
      v1::SpoolEnvelope env;
      env.set_mail_from(StrCat("domain-certificate-request@", ours));
      env.add_recipients()->set_address(StrCat("domain-certificate-request@", domain));
      env.set_arrival_unix_ms(now);
      env.set_require_signature(true);
      env.set_body_type("7BIT");
      Result<std::string> qid = queue::WriteWholeMessage(sp, env, smime::CertificateRequest(env.mail_from(), domain, host, now));
      if (!qid.ok()) return qid.status();
      Result<queue::SpoolMessage> m = queue::ReadSpoolFile(sp->PathOf(queue::SpoolState::kActive, *qid));
      if (!m.ok()) return m.status();
      q->Submit(std::move(m.value()));
      return OkStatus();
    });
    sealing::StartDiscovery(smime.get(), [q](const std::string& domain) { return q->ReleaseCertificateHolds(domain); });
  }
  // The management API (issue #5); its audit trail was opened before the queue.
  if (audit_log) {
    const auto& c = cfg.control();
    Result<std::unique_ptr<control::PolicyStore>> ps =
        control::PolicyStore::Open(c.policy_dir().empty() ? StrCat(cfg.spool_dir(), "/policy") : c.policy_dir());
    Status keys_loaded = LoadKeyDeps(cfg, token.get(), &key_deps);
    if (ps.ok() && cfg.has_cluster()) {
      if (Status st = StartCluster(ps->get()); !st.ok()) {
        Log(LogLevel::kError, "mailseald", "cluster not joined", {{"error", st.message()}});
        committer->Stop();
        qmgr->Stop();
        return kExitUsage;
      }
    }
    // The API's certificate reload runs after the drop, as SIGHUP does.
    if (smime && smime->store)
      cert_deps = CertDepsFor(smime.get(), &path, [](const std::string& p) { return Validate(p, /*at_start=*/false); });
    Result<std::unique_ptr<control::ControlServer>> srv =
        !ps.ok()            ? Result<std::unique_ptr<control::ControlServer>>(ps.status())
        : !keys_loaded.ok() ? Result<std::unique_ptr<control::ControlServer>>(keys_loaded)
                            : StartControl(cfg, spool.get(), qmgr.get(), audit_log.get(), ps->get(), &key_deps,
                                           smime && smime->store ? &cert_deps : nullptr, api_key.get(), cluster_node.get());
    if (ps.ok()) {
      policy_store = std::move(ps.value());
      // The data plane acts on the policy document (issue #6): compiled now and after every
      // accepted change; the next message uses it, no restart, no lock on the fast path.
      if (smime) {
        sealing::SmimeShared* shared = smime.get();
        auto publish = [shared](const v1::PolicyDocument& doc) {
          sealing::PublishPolicy(shared, policy::Compile(doc));
          Log(LogLevel::kInfo, "policy", "policy document in force", {{"version", std::to_string(doc.version())}});
        };
        if (Result<v1::PolicyDocument> cur = policy_store->Get(0); cur.ok()) publish(*cur);
        policy_store->SetOnChange(publish);
      }
    }
    if (!srv.ok()) {
      Log(LogLevel::kError, "mailseald", "management API not started", {{"error", srv.status().message()}});
      if (smime && smime->discovery) smime->discovery->Stop();
      committer->Stop();
      qmgr->Stop();
      return kExitUsage;
    }
    control_server = std::move(srv.value());
    if (cluster_node) {   // the cluster part of health changes as soon as the contact does
      control::ControlServer* cs = control_server.get();
      cluster::ClusterNode* node = cluster_node.get();
      node->SetOnChange([cs, node] { cs->SetServing("mailseal.cluster", !node->degraded()); });
    }
  }
  return kGoOn;
  }

  // StartCluster (issue #20): this node's part in the cluster — the policy store replicated
  // through etcd (a change is stored there first, compare-and-swap, then installed on every
  // node), the node record, singleton jobs, the audit trail's heads anchored.
  Status StartCluster(control::PolicyStore* store) {
    const auto& c = cfg.cluster();
    cluster::ClusterOptions o;
    o.etcd.endpoints.assign(c.endpoints().begin(), c.endpoints().end());
    o.etcd.ca_file = c.ca_file();
    o.etcd.cert_file = c.cert_file();
    o.etcd.key_file = c.key_file();
    o.etcd.server_name = c.server_name();
    o.name = c.name();
    o.node_id = c.node_id();
    o.advertise = c.advertise();
    o.version = kVersion;
    o.lease_ttl_s = static_cast<int>(c.lease_ttl_s());
    o.anchor_interval_s = static_cast<int>(c.anchor_interval_s());
    o.jobs = {"key-expiry-notices"};
    cluster::ClusterHooks h;
    h.policy_version = [store] { return store->current(); };
    h.policy_get = [store](uint64_t v) { return store->Record(v); };
    h.policy_install = [store](const v1::PolicyVersionRecord& r) { return store->Install(r); };
    h.describe = [this, store](v1::NodeRecord* r) {
      if (!serving_all.load(std::memory_order_acquire)) r->set_health("NOT_SERVING");
      r->set_policy_version(store->current());
      if (audit_log) r->set_audit_size(audit_log->size());
    };
    if (audit_log) {
      audit::AuditLog* log = audit_log.get();
      // A head is signed only when records were added since the last one anchored.
      auto last = std::make_shared<std::pair<uint64_t, v1::TreeHead>>();
      h.audit_head = [log, last]() -> Result<v1::TreeHead> {
        if (last->second.tree_size() != 0 && log->size() == last->first) return last->second;
        Result<v1::TreeHead> head = log->SignHead();
        if (head.ok()) *last = {head->tree_size(), *head};
        return head;
      };
      h.audit_proof = [log](uint64_t a, uint64_t b) { return log->ConsistencyProofFor(a, b); };
      h.audit = [log](const std::string& action, const std::string& object, const std::string& detail) {
        v1::AuditRecord r;
        r.set_actor("mailseald");
        r.set_action(action);
        r.set_object(object);
        r.set_outcome(action == "cluster.audit-anchor-mismatch" || action == "cluster.audit-anchor-broken"
                          ? v1::AuditRecord::OUTCOME_FAILED
                          : v1::AuditRecord::OUTCOME_ALLOWED);
        r.set_detail(detail);
        (void)log->Append(r);
      };
      Result<std::string> pub = AuditPublicKeyDer();
      if (pub.ok()) h.audit_public_key = *pub;
      else Log(LogLevel::kWarning, "cluster", "audit key not readable: heads not anchored", {{"error", pub.status().message()}});
      if (!pub.ok()) h.audit_head = nullptr;
    }
    Result<std::unique_ptr<cluster::ClusterNode>> n = cluster::ClusterNode::Start(std::move(o), std::move(h));
    if (!n.ok()) return n.status();
    cluster_node = std::move(n.value());
    cluster::ClusterNode* node = cluster_node.get();
    const std::string me = c.node_id();
    store->SetReplicator([node, me](const v1::PolicyVersionRecord& rec, uint64_t expected) {
      v1::PolicyVersionRecord r = rec;
      r.set_node_id(me);
      return node->ProposePolicy(r, expected);
    });
    Log(LogLevel::kInfo, "cluster", "joining", {{"cluster", c.name()}, {"node", me}, {"endpoints", std::to_string(c.endpoints_size())}});
    return OkStatus();
  }

  // KeyExpiry (SEE-2.3, issue #20): on every node, whether an in-use key's certificate is within
  // 7 days of its end or past it (health part mailseal.keys NOT_SERVING: a warning, the gateway
  // as a whole stays SERVING); and, where `send` (the node elected for the job in a cluster, or
  // a single appliance), a notice to the security officers each time a certificate crosses 30,
  // 14, 7 and 1 days before it expires and once expired — once per certificate and threshold,
  // remembered in etcd (or the spool) so that a failover or restart does not repeat it.
  void KeyExpiry(bool send) {
    if (!token) return;
    Result<std::vector<v1::KeyInfo>> keys = control::DescribeKeys(&key_deps);
    if (!keys.ok()) return;   // the token is away: the health loop says so
    bool urgent = false;
    std::string why;
    for (const v1::KeyInfo& k : *keys) {
      if (k.expiry_warning() == 0 || k.certificate_not_after_unix_s() == 0) continue;
      if (k.in_use() && (k.expiry_warning() < 0 || k.expiry_warning() <= 7)) {
        urgent = true;
        why = StrCat("key '", k.label(), "': certificate ", k.expiry_warning() < 0 ? "expired" : "expires within 7 days");
      }
      if (!send) continue;
      // Once per key, certificate end (to the day: the nodes of a cluster hold the same key's
      // certificate, or copies issued together) and threshold.
      const std::string mark = StrCat(k.certificate_not_after_unix_s() / 86400, ":", k.expiry_warning());
      const std::string where = StrCat("notices/key-expiry/", k.label());
      Result<std::string> last = cluster_node ? cluster_node->GetShared(where)
                                              : base::ReadFile(StrCat(cfg.spool_dir(), "/", where), 256);
      if (last.ok() && *last == mark) continue;
      if (!last.ok() && last.status().code() != StatusCode::kNotFound) continue;   // etcd away: next time
      if (Status st = QueueKeyNotice(k); !st.ok()) {
        Log(LogLevel::kError, "keys", "key expiry notice not queued (tried again in an hour)",
            {{"label", k.label()}, {"error", st.message()}});
        continue;
      }
      Status kept = cluster_node ? cluster_node->PutShared(where, mark) : KeepLocalMark(where, mark);
      if (!kept.ok())
        Log(LogLevel::kWarning, "keys", "key expiry notice sent but not remembered (it may come again)",
            {{"label", k.label()}, {"error", kept.message()}});
    }
    if (urgent != key_expiry_urgent.exchange(urgent))
      Log(urgent ? LogLevel::kWarning : LogLevel::kInfo, "keys",
          urgent ? "a domain key's certificate is about to expire or has expired" : "no key certificate about to expire",
          {{"reason", why}});
  }

  Status KeepLocalMark(const std::string& where, const std::string& mark) {
    std::string dir = StrCat(cfg.spool_dir(), "/notices");
    ::mkdir(dir.c_str(), 0700);
    ::mkdir(StrCat(dir, "/key-expiry").c_str(), 0700);
    return base::WriteFileDurably(StrCat(cfg.spool_dir(), "/", where), mark);
  }

  // QueueKeyNotice: one notice about one key, from the null sender, marked auto-generated.
  Status QueueKeyNotice(const v1::KeyInfo& k) {
    std::string ours = cfg.local_domains().empty() ? cfg.hostname() : base::AsciiLower(cfg.local_domains(0));
    const std::string& to = cfg.control().security_officer_address();
    int64_t now = base::QueueNowMs();
    int64_t days = (k.certificate_not_after_unix_s() - now / 1000) / 86400;
    char when[32];
    std::time_t t = static_cast<std::time_t>(k.certificate_not_after_unix_s());
    std::tm tm{};
    gmtime_r(&t, &tm);
    std::strftime(when, sizeof when, "%Y-%m-%d %H:%M UTC", &tm);
    std::string state = k.expiry_warning() < 0 ? "has EXPIRED" : StrCat("expires in ", days, " day", days == 1 ? "" : "s");
    char date[64];
    std::time_t nowt = static_cast<std::time_t>(now / 1000);
    std::tm ntm{};
    gmtime_r(&nowt, &ntm);
    std::strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", &ntm);
    std::string text = StrCat(
        "From: mailseal <postmaster@", ours, ">\r\nTo: <", to, ">\r\nSubject: mailseal: the certificate of key '",
        k.label(), "' ", state, "\r\nDate: ", date, "\r\nMessage-ID: <key-expiry.", k.label(), ".",
        k.certificate_not_after_unix_s(), ".", k.expiry_warning(), "@", cfg.hostname(),
        ">\r\nAuto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
        "The certificate of a key on the gateway's security module ", state, " (SEE-2.3).\r\n\r\n",
        "  key:         ", k.label(), " (", k.purpose(), ", ", k.key_type(), ")\r\n",
        "  in use:      ", k.in_use() ? "yes - mail is sealed or opened with it" : "no", "\r\n",
        "  certificate: ", k.certificate_subject(), "\r\n",
        "  not after:   ", when, "\r\n",
        "  key age:     ", k.age_days(), " days\r\n\r\n",
        "Renew it: mailsealctl keys csr ", k.label(), " --domain ... ; have the CSR signed; mailsealctl keys install.\r\n",
        "A key older than 4 years is replaced instead (mailsealctl keys rotate).\r\n",
        "Reported by ", cfg.hostname(), cluster_node ? StrCat(" for cluster ", cfg.cluster().name()) : std::string(), ".\r\n");
    v1::SpoolEnvelope env;
    env.set_mail_from("");
    env.add_recipients()->set_address(to);
    env.set_arrival_unix_ms(now);
    env.set_is_dsn(true);
    env.set_body_type("7BIT");
    Result<std::string> qid = queue::WriteWholeMessage(spool.get(), env, text);
    if (!qid.ok()) return qid.status();
    Result<queue::SpoolMessage> m = queue::ReadSpoolFile(spool->PathOf(queue::SpoolState::kActive, *qid));
    if (!m.ok()) return m.status();
    qmgr->Submit(std::move(m.value()));
    Log(LogLevel::kWarning, "keys", "key expiry notice queued",
        {{"label", k.label()}, {"state", state}, {"to", to}, {"qid", *qid}});
    if (audit_log) {
      v1::AuditRecord r;
      r.set_actor("mailseald");
      r.set_action("keys.expiry-notice");
      r.set_object(k.label());
      r.set_outcome(v1::AuditRecord::OUTCOME_ALLOWED);
      r.set_detail(StrCat(state, "; not after ", when, "; to <", to, "> qid ", *qid));
      (void)audit_log->Append(r);
    }
    return OkStatus();
  }

  // AuditPublicKeyDer: the audit key's public half (DER SubjectPublicKeyInfo), for the anchors.
  Result<std::string> AuditPublicKeyDer() {
    if (!token) return UnavailableError("no token");
    std::shared_ptr<hsm::TokenHandle> th = token->Handle();
    if (!th) return UnavailableError("security module unavailable");
    hsm::SessionPool::Lease lease = th->pool->Acquire();
    Result<hsm::KeyPair> kp = hsm::FindKeyPair(*lease, cfg.control().audit().key_label());
    if (!kp.ok()) return kp.status();
    Result<EVP_PKEY*> pub = hsm::PublicKey(*lease, kp->pub);
    if (!pub.ok()) return pub.status();
    unsigned char* der = nullptr;
    int n = i2d_PUBKEY(*pub, &der);
    EVP_PKEY_free(*pub);
    if (n <= 0) return InternalError("audit public key not encoded");
    std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(n));
    OPENSSL_free(der);
    return out;
  }

  // StartNetwork: SPF checkers and one SMTP server endpoint per net thread.
  void StartNetwork(std::vector<std::vector<int>> fds) {
  // SPF (SM-5b) with the delivery resolver's settings; its threads outlive the net threads.
  if (cfg.spf().mode() != v1::Spf::SPF_OFF) {
    const auto& d = cfg.delivery();
    spf = std::make_unique<io::SpfChecker>(static_cast<int>(cfg.spf().threads()), d.dns_forwarder(),
                                           std::vector<std::string>(d.dns_local_zones().begin(), d.dns_local_zones().end()),
                                           std::vector<std::string>(d.dns_local_data().begin(), d.dns_local_data().end()));
  }
  // One SMTP server endpoint per net thread on the network back end (kernel: epoll over the
  // sockets opened above).
  if (network == &backend) backend.SetListeners(std::move(fds));
  endpoint::ServerContext ctx{&policy,       spool.get(), committer.get(), qmgr.get(), token ? &hsm_ok : nullptr,
                       recorder ? &audit_ok : nullptr, tls_ctx.get(), client_trust.get(), spf.get(), &limiter,
                       directory.get(), directory_domains};
  for (uint32_t t = 0; t < cfg.net_threads(); ++t) {
    nets.push_back(std::make_unique<endpoint::SmtpServer>(static_cast<int>(t), ctx, network));
    if (Status st = nets.back()->Start(); !st.ok()) {
      Log(LogLevel::kError, "mailseald", "net thread not started", {{"error", st.message()}});
      std::abort();   // broken environment: the listeners were opened above
    }
  }
  Log(LogLevel::kInfo, "mailseald", "started",
      {{"version", kVersion}, {"hostname", cfg.hostname()}, {"pid", std::to_string(getpid())},
       {"net_threads", std::to_string(cfg.net_threads())},
       {"crypto_workers", std::to_string(cfg.crypto_workers())},
       {"agents", std::to_string(cfg.delivery().agents())},
       {"starttls", cfg.has_tls() ? (cfg.tls().required() ? "required" : "offered") : "no"},
       {"spf", v1::Spf::Mode_Name(cfg.spf().mode())}, {"securemail", cfg.securemail() ? "yes" : "no"}});

  }

  // ControlLoop: health, signals (SIGHUP reloads, SIGTERM/SIGINT stop), tree heads, stats.
  void ControlLoop() {
  // systemd (Type=notify): ready now that the listeners and the queue run; the watchdog is fed
  // from this loop, so a hung control thread gets the daemon restarted.
  service::Ready(StrCat("accepting mail on ", cfg.listen_size(), " listener(s)"));
  const int64_t watchdog_ms = service::WatchdogIntervalMs();
  auto last_watchdog = std::chrono::steady_clock::now();
  if (watchdog_ms > 0) service::Watchdog();
  auto last_stats = std::chrono::steady_clock::now();
  auto last_health = std::chrono::steady_clock::now();
  bool head_failing = false;
  const auto health_every = std::chrono::milliseconds(cfg.has_hsm() ? cfg.hsm().health_interval_ms() : 1000);
  bool keys_ready = true;
  auto last_keys_check = std::chrono::steady_clock::now();
  auto last_expiry = std::chrono::steady_clock::now() - std::chrono::hours(2);   // first check at once
  auto last_key_scan = std::chrono::steady_clock::now() - std::chrono::hours(2);
  bool was_key_leader = false;
  if (Status st = sealing::DomainKeysReady(smime.get()); !st.ok()) {
    keys_ready = false;
    Log(LogLevel::kWarning, "mailseald", "domain keys not ready: sealing not serving", {{"reason", st.message()}});
  }
  while (true) {
    // First in the loop: the first answer is there as soon as the API is (not a second later).
    if (control_server) {   // health says what the gateway can do now, part by part (issue #13)
      bool token_ok = !token || hsm_ok.load(std::memory_order_acquire);
      bool audit_up = audit_ok.load(std::memory_order_acquire) && audit_log->healthy();
      bool smtp_up = token_ok && audit_ok.load(std::memory_order_acquire) && qmgr->Accepting();
      control_server->SetServing("mailseal.smtp", smtp_up);
      control_server->SetServing("mailseal.sealing", token_ok && keys_ready);
      control_server->SetServing("mailseal.audit", audit_up);
      if (token) control_server->SetServing("mailseal.keys", !key_expiry_urgent.load(std::memory_order_acquire));
      control_server->SetServing("", smtp_up && token_ok && keys_ready && audit_up);
      serving_all.store(smtp_up && token_ok && keys_ready && audit_up, std::memory_order_release);
      // A node cut off from etcd keeps relaying with its last good state; health says so
      // (issue #20) without taking the whole gateway out of service.
      if (cluster_node) control_server->SetServing("mailseal.cluster", !cluster_node->degraded());
    }
    pollfd p{sfd, POLLIN, 0};
    int64_t wait_ms = std::min<int64_t>(1000, health_every.count());
    if (watchdog_ms > 0) wait_ms = std::min(wait_ms, watchdog_ms);
    int n = ::poll(&p, 1, static_cast<int>(wait_ms));
    if (watchdog_ms > 0 &&
        std::chrono::steady_clock::now() - last_watchdog >= std::chrono::milliseconds(watchdog_ms)) {
      last_watchdog = std::chrono::steady_clock::now();
      service::Watchdog();
    }
    if (std::chrono::steady_clock::now() - last_expiry >= std::chrono::hours(1)) {
      last_expiry = std::chrono::steady_clock::now();
      ExpireArchive();
    }
    // Key expiry (SEE-2.3): hourly, and at once when this node takes the job over.
    {
      bool leader = !cluster_node || cluster_node->IsLeader("key-expiry-notices");
      if (std::chrono::steady_clock::now() - last_key_scan >= std::chrono::hours(1) || (leader && !was_key_leader)) {
        last_key_scan = std::chrono::steady_clock::now();
        // Notices are mailed where the security officers' address is configured; health and
        // `keys list` say it on every node regardless.
        KeyExpiry(leader && !cfg.control().security_officer_address().empty());
      }
      was_key_leader = leader;
    }
    if (token && std::chrono::steady_clock::now() - last_health >= health_every) {
      last_health = std::chrono::steady_clock::now();
      bool ok = token->Tick();
      hsm_ok.store(ok, std::memory_order_release);
      qmgr->SetSuspended(!ok);
      // The spool's data key rotates when due; with the token away the current one stays.
      if (ok && at_rest) {
        if (Result<bool> r = at_rest->Rotate(); !r.ok())
          Log(LogLevel::kWarning, "at-rest", "spool data key rotation failed (the current key stays; tried again)",
              {{"error", r.status().message()}});
      }
      // The domain keys and their certificates (an appliance before its initialise ceremony
      // has neither): looked for every 5 s while missing, every minute once there.
      if (ok && last_health - last_keys_check >= std::chrono::seconds(keys_ready ? 60 : 5)) {
        last_keys_check = last_health;
        Status st = sealing::DomainKeysReady(smime.get());
        if (st.ok() != keys_ready)
          Log(st.ok() ? LogLevel::kInfo : LogLevel::kWarning, "mailseald",
              st.ok() ? "domain keys ready: sealing serving" : "domain keys not ready: sealing not serving",
              {{"reason", st.ok() ? "" : st.message()}});
        keys_ready = st.ok();
      }
    }
    if (n > 0) {
      signalfd_siginfo si{};
      if (::read(sfd, &si, sizeof si) != sizeof si) continue;
      if (si.ssi_signo == SIGHUP) {
        service::Reloading();
        Result<v1::Config> fresh = Validate(path, /*at_start=*/false);   // as --check-config, but the start-only secrets
        if (!fresh.ok()) {
          Log(LogLevel::kError, "mailseald", "reload refused, keeping the running config",
              {{"error", fresh.status().message()}});
          service::Ready(StrCat("reload refused (", fresh.status().message(), "); the running configuration stays"));
          continue;
        }
        policy.Publish(policy::BuildSnapshot(*fresh, ++version));
        Log(LogLevel::kInfo, "mailseald", "policy reloaded (listeners, spool and delivery need a restart)",
            {{"version", std::to_string(version)}});
        if (Status st = sealing::ReloadCertificates(smime.get(), *fresh); !st.ok())
          Log(LogLevel::kError, "mailseald", "certificates not reloaded, keeping the trust list in force", {{"error", st.message()}});
        else if (smime && smime->store)
          Log(LogLevel::kInfo, "mailseald", "trust list, CRL files and pinned partner certificates reloaded", {});
        service::Ready(StrCat("accepting mail; policy version ", version));
        continue;
      }
      Log(LogLevel::kInfo, "mailseald", "stopping: draining sessions", {{"signal", strsignal(static_cast<int>(si.ssi_signo))}});
      service::Stopping();
      return;
    }
    if (audit_log) {   // tree heads every N records (in the log) or every T seconds (here)
      uint32_t every_s = cfg.control().audit().head_every_s() ? cfg.control().audit().head_every_s() : 300;
      Result<bool> signed_head = audit_log->SignHeadIfStale(static_cast<int64_t>(every_s) * 1000);
      if (!signed_head.ok() && !head_failing)
        Log(LogLevel::kError, "audit", "periodic tree head failed (retried every second)",
            {{"error", signed_head.status().message()}});
      head_failing = !signed_head.ok();
    }
    auto now = std::chrono::steady_clock::now();
    if (now - last_stats > std::chrono::seconds(60)) {
      last_stats = now;
      LogQueueStats();
#ifdef MAILSEAL_HAVE_DPDK
      if (dpdk_backend) {
        Log(LogLevel::kInfo, "dpdk", "stats", dpdk_backend->stats().Fields());
      }
#endif
    }
  }
  }

  void LogQueueStats() {
    queue::QueueStats s = qmgr->Stats();
    Log(LogLevel::kInfo, "qmgr", "stats",
        {{"received", std::to_string(s.received)}, {"delivered", std::to_string(s.delivered)},
         {"bounced", std::to_string(s.bounced)}, {"deferrals", std::to_string(s.deferrals)},
         {"in_queue", std::to_string(s.in_queue)}, {"deferred", std::to_string(s.deferred)},
         {"crypto_jobs", std::to_string(s.crypto_jobs)},
         {"crypto_jobs_in_memory", std::to_string(s.crypto_jobs_in_memory)}});
  }

  // Shutdown: drain sessions, stop the stages in order, sign the last tree head.
  void Shutdown() {
  int64_t deadline = base::SteadyMs() + kDrainMs;
  for (auto& t : nets) t->BeginDrain(deadline);
  for (auto& t : nets) t->Join();
  if (spf) spf->Stop();   // a verdict still in hand is posted to a joined (not yet freed) loop
  if (directory) directory->Stop();   // likewise for a directory answer
  if (cluster_node) cluster_node->SetOnChange(nullptr);
  if (control_server) control_server->Stop();
  if (cluster_node) cluster_node->Stop();   // leaves the member list at once (lease revoked)
  if (smime && smime->discovery) smime->discovery->Stop();
  committer->Stop();
  qmgr->Stop();
  LogQueueStats();   // the last figures (the periodic line comes once a minute)
  if (recorder) recorder->Flush();
  // A clean stop leaves every record under a signed head (issue #13): nothing after the last
  // head can be changed undetected while the gateway is down.
  if (audit_log && audit_log->healthy()) {
    Result<v1::TreeHead> h = audit_log->SignHead();
    if (h.ok()) Log(LogLevel::kInfo, "audit", "shutdown tree head signed", {{"records", std::to_string(h->tree_size())}});
    else Log(LogLevel::kWarning, "audit", "shutdown tree head not signed", {{"error", h.status().message()}});
  }
  Log(LogLevel::kInfo, "mailseald", "stopped", {});
  }
};

int Run(const std::string& path) {
  Daemon d(path);
  std::vector<std::vector<int>> fds;
  // Each step runs only when the one before went well (a failed step's exit code is returned).
  // What needs root comes first (the DPDK port, listeners on privileged ports); then the
  // daemon becomes `user` and opens everything else — token, spool, audit trail — as that user.
  std::function<int()> steps[] = {[&] { return d.Configure(); },      [&] { return d.StartDpdk(); },
                                  [&] { return d.OpenListeners(&fds); }, [&] { return d.DropPrivileges(); },
                                  [&] { return d.OpenStores(); },     [&] { return d.OpenAuditTrail(); },
                                  [&] { return d.BuildQueue(); },     [&] { return d.StartQueueAndControl(); }};
  for (auto& step : steps)
    if (int rc = step(); rc != Daemon::kGoOn) return rc;
  d.StartNetwork(std::move(fds));
  d.ControlLoop();
  d.Shutdown();
  return kExitOk;
}
}  // namespace

int main(int argc, char** argv) {
  // Sealing a large message allocates a few buffers of its size; with glibc's defaults each is
  // a fresh mmap that is page-faulted in and unmapped again, which halved 2 MiB throughput
  // (tools/bench/smime). Keep freed memory in the heap instead (bounded by the SMTP size limit
  // times the messages in flight).
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 2 && args[0] == "--check-config") return CheckConfig(args[1]);
  if (args.size() == 2 && args[0] == "--config") return Run(args[1]);
  Usage();
  return kExitUsage;
}
