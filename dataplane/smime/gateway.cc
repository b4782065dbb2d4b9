// gateway.cc — see gateway.h.
#include "dataplane/smime/gateway.h"

#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <strings.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <set>
#include <unordered_map>
#include <cstring>

#include "dataplane/base/strings.h"
#include "dataplane/mime/canonical.h"
#include "dataplane/mime/parser.h"
#include "dataplane/queue/dsn.h"
#include "dataplane/smime/naming.h"
#include "dataplane/smtp/address.h"

namespace mailseal::smime {
namespace {

// Deferred: the reason a job waits for our keys — what is missing, or the token itself.
std::string Deferred(const GatewayKeys& keys, const char* what) {
  return StrCat(keys.unusable.empty() ? "security module unavailable" : keys.unusable, ": ", what, " deferred (SEE-AG-4)");
}

struct Field {
  std::string name;   // as written
  std::string raw;    // whole field with its line ends, byte-exact
  std::string_view Value() const {   // after the colon ("Subject :" has blanks before it)
    std::string_view v(raw);
    size_t colon = v.find(':');
    v.remove_prefix(colon == std::string_view::npos ? v.size() : colon + 1);
    return v;
  }
};

bool NameIs(const Field& f, std::string_view n) {
  return f.name.size() == n.size() && strncasecmp(f.name.data(), n.data(), n.size()) == 0;
}

// SplitHeader parses a message's header block into fields (folded lines kept with their
// field) and returns where the body starts (after the blank line). No header: 0 fields.
size_t SplitHeader(const std::string& m, std::vector<Field>* fields) {
  size_t pos = 0;
  while (pos < m.size()) {
    size_t eol = m.find('\n', pos);
    size_t next = eol == std::string::npos ? m.size() : eol + 1;
    std::string_view line(m.data() + pos, next - pos);
    if (line == "\r\n" || line == "\n") return next;
    if ((line[0] == ' ' || line[0] == '\t') && !fields->empty()) {
      fields->back().raw.append(line);
    } else {
      size_t colon = line.find(':');
      if (colon == std::string_view::npos) return pos;  // not a header line: body starts here
      std::string name(line.substr(0, colon));
      while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.pop_back();
      fields->push_back({name, std::string(line)});
    }
    pos = next;
  }
  return pos;
}

std::string Trim(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t' || v.front() == '\r' || v.front() == '\n')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t' || v.back() == '\r' || v.back() == '\n')) v.remove_suffix(1);
  return std::string(v);
}

// OursAr: an Authentication-Results field that claims to be from us (RFC 8601 §5: remove).
bool OursAr(const Field& f, const std::string& authserv_id) {
  if (!NameIs(f, "Authentication-Results")) return false;
  std::string v = Trim(f.Value());
  size_t end = v.find_first_of("; \t\r\n(");
  std::string id = v.substr(0, end);
  return strcasecmp(id.c_str(), authserv_id.c_str()) == 0;
}

// Mailboxes: every address a reader could take for the author in a From or Sender value
// (RFC 5322 §3.4 mailbox-list, groups included): each angle-addr or bare addr-spec, and any
// address-like word of a display name ("ceo@agency-a.test" <x@agency-b.test> shows ceo@...
// in many clients). Comments and quoted strings are respected; lower case.
std::vector<std::string> Mailboxes(std::string_view v) {
  std::vector<std::string> out;
  std::string piece, angle;
  int depth = 0;   // comment nesting
  bool quoted = false, in_angle = false;
  auto words = [&](const std::string& text) {   // address-like words of a display name or addr-spec
    std::string w;
    auto flush = [&] {
      size_t at = w.rfind('@');
      if (at != std::string::npos && at > 0 && at + 1 < w.size()) out.push_back(base::AsciiLower(w));
      w.clear();
    };
    for (char c : text) {
      if (c == ' ' || c == '\t' || c == '"' || c == '<' || c == '>' || c == ',' || c == ';' || c == '\'') flush();
      else w.push_back(c);
    }
    flush();
  };
  auto end_piece = [&] {
    if (!angle.empty()) out.push_back(base::AsciiLower(Trim(angle)));
    words(piece);
    piece.clear();
    angle.clear();
  };
  for (size_t i = 0; i < v.size(); ++i) {
    char c = v[i];
    if (quoted) {
      if (c == '\\' && i + 1 < v.size()) c = v[++i];
      else if (c == '"') quoted = false;
      piece.push_back(c);
      continue;
    }
    if (depth > 0) {
      if (c == '(') ++depth;
      else if (c == ')') --depth;
      continue;
    }
    if (in_angle) {
      if (c == '>') in_angle = false;
      else angle.push_back(c);
      continue;
    }
    switch (c) {
      case '"': quoted = true; piece.push_back(' '); break;
      case '(': depth = 1; break;
      case '<': in_angle = true; angle.clear(); break;
      case ',': case ';': case ':': end_piece(); break;
      default: piece.push_back(c);
    }
  }
  if (in_angle && !angle.empty()) piece += angle;   // unclosed: still an address to check
  end_piece();
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

// kSingleFields: the fields RFC 5322 §3.6 allows once; delivered once (issue #12).
constexpr std::string_view kSingleFields[] = {"From",    "Sender",     "Reply-To",    "To",         "Cc",        "Bcc",
                                              "Subject", "Date",       "Message-ID",  "In-Reply-To", "References"};
constexpr size_t kSingleCount = sizeof kSingleFields / sizeof kSingleFields[0];
// SingleIndex: the field's place in kSingleFields, or kSingleCount.
size_t SingleIndex(const Field& f) {
  for (size_t i = 0; i < kSingleCount; ++i)
    if (NameIs(f, kSingleFields[i])) return i;
  return kSingleCount;
}

// KeepFirstOfSingles: `fields` with each single-occurrence field kept once (the first); the
// names of the dropped duplicates go to `dropped` (each name once). Linear in the number of
// fields: a hostile header of a quarter million tiny fields costs one pass.
std::vector<Field> KeepFirstOfSingles(const std::vector<Field>& fields, std::vector<std::string>* dropped) {
  std::vector<Field> out;
  bool seen[kSingleCount] = {}, reported[kSingleCount] = {};
  for (const Field& f : fields) {
    size_t i = SingleIndex(f);
    if (i < kSingleCount && seen[i]) {
      if (!reported[i]) dropped->push_back(f.name);
      reported[i] = true;
      continue;
    }
    if (i < kSingleCount) seen[i] = true;
    out.push_back(f);
  }
  return out;
}

std::string Unfold(std::string_view v) {
  std::string out;
  for (char c : v)
    if (c != '\r' && c != '\n') out += c;
  return Trim(out);
}

std::string Sanitize(std::string_view v) {
  // For our own header values: no CR/LF/parentheses that could break the field.
  std::string out;
  for (char c : v) out += (c == '\r' || c == '\n' || c == '(' || c == ')') ? ' ' : c;
  return out;
}

// OurReceived: the message's first Received: field when it is the one this gateway added on
// receipt ("by <gateway_name> (mailseal)"), for the sealed outer message; else "".
std::string OurReceived(const std::string& message, const std::string& gateway_name) {
  std::vector<Field> fields;
  SplitHeader(message, &fields);
  if (fields.empty() || !NameIs(fields.front(), "Received") || gateway_name.empty()) return "";
  return fields.front().raw.find(StrCat("by ", gateway_name, " (mailseal)")) != std::string::npos ? fields.front().raw : "";
}

}  // namespace

std::string UnsuitableDca(X509* dca) {
  AuthorityNames names = ExamineAuthority(dca, "domain-confidentiality-authority");
  if (!names.problem.empty()) return names.problem;
  if (names.domains.empty()) return "it does not name a domain-confidentiality-authority (SEE-2.6)";
  return KeyStrengthProblem(dca);
}

const char* ActionName(Action a) {
  switch (a) {
    case Action::kPass: return "pass";
    case Action::kDeliver: return "deliver";
    case Action::kHold: return "hold";
    case Action::kTempFail: return "tempfail";
    case Action::kConsume: return "consume";
  }
  return "?";
}

std::string WarningFor(CertStatus s) {
  switch (s) {
    case CertStatus::kValid: return "";
    case CertStatus::kRevoked: return "[HARD WARNING: Certificate revoked/suspended - message integrity uncertain]";
    case CertStatus::kUnknownCa: return "[HARD WARNING: Certificate unknown - message integrity uncertain]";
    case CertStatus::kExpired: return "[SOFT WARNING: Certificate expired - message integrity uncertain]";
    case CertStatus::kNotYetValid: return "[SOFT WARNING: Certificate not yet valid - message integrity uncertain]";
    case CertStatus::kStatusUnknown:
      return "[SOFT WARNING: Certificate status could not be checked - message integrity uncertain]";
  }
  return "";
}

std::string ClassificationWord(std::string_view subject) { return policy::FindTriggerWord(subject); }

bool PingLimiter::Allow(const std::string& domain, int64_t now_ms) {
  std::lock_guard<std::mutex> l(mu_);
  for (auto it = last_.begin(); it != last_.end();) it = now_ms - it->second >= per_domain_ms_ ? last_.erase(it) : std::next(it);
  minute_.erase(std::remove_if(minute_.begin(), minute_.end(), [&](int64_t t) { return now_ms - t >= 60000; }), minute_.end());
  if (last_.count(domain) || minute_.size() >= per_minute_) return false;
  last_[domain] = now_ms;
  minute_.push_back(now_ms);
  return true;
}

namespace {
// OurSigner: our DSA with its chain, and our DCA certificate so that partners harvest it
// (SEE-2.10).
Signer OurSigner(const GatewayKeys& keys) {
  Signer signer{keys.dsa_cert.get(), keys.dsa_key, {}};
  for (const X509Ref& c : keys.chain) signer.chain.push_back(c.get());
  if (keys.dca_cert) signer.chain.push_back(keys.dca_cert.get());
  return signer;
}
}  // namespace

bool Gateway::IsLocal(const std::string& domain) const { return base::DomainListCovers(policy_->local_domains, domain); }

const PartnerPolicy* Gateway::PartnerFor(const std::string& domain) const {
  for (std::string_view d = domain; !d.empty();) {
    auto it = policy_->partners.find(std::string(d));
    if (it != policy_->partners.end()) return &it->second;
    size_t dot = d.find('.');
    if (dot == std::string_view::npos) break;
    d = d.substr(dot + 1);
  }
  return nullptr;
}

Plan Gateway::Decide(const std::string& sender, const std::vector<std::string>& recipients, const std::string& message,
                     const policy::CompiledPolicy* doc, bool require_seal, bool require_signature) const {
  static const policy::CompiledPolicy kNoDocument;
  if (!doc) doc = &kNoDocument;
  Plan plan;
  plan.policy_version = doc->version;
  std::map<std::string, std::vector<uint32_t>> remote;
  for (uint32_t i = 0; i < recipients.size(); ++i) {
    std::string d = smtp::DomainOf(recipients[i]);
    std::string lower = base::AsciiLower(recipients[i]);
    if (!d.empty() && IsLocal(d) && lower.rfind("seemail-ping@", 0) == 0) plan.pings[lower].push_back(i);
    else if (!d.empty() && IsLocal(d) && lower.rfind("domain-certificate-request@", 0) == 0) plan.cert_requests[lower].push_back(i);
    else if (d.empty() || IsLocal(d)) plan.local.push_back(i);
    else remote[d].push_back(i);
  }
  if (!store_) {   // policy only (no smime section): nothing to open or answer, local mail as it is
    for (auto& [address, rcpts] : plan.pings) plan.local.insert(plan.local.end(), rcpts.begin(), rcpts.end());
    for (auto& [address, rcpts] : plan.cert_requests) plan.local.insert(plan.local.end(), rcpts.begin(), rcpts.end());
    plan.pings.clear();
    plan.cert_requests.clear();
    plan.open_local = false;
  }
  if (!remote.empty()) plan.classification = policy::Classify(message, doc->trigger_words);
  for (auto& [domain, rcpts] : remote) {
    // One decision per recipient (lists and rules may name addresses); recipients of a domain
    // with the same decision share one sealed copy.
    // Groups in a fixed order (protection, then wrap): a copy's id is its output's position,
    // which must come out the same when a message is processed again after a crash.
    std::map<std::pair<int, bool>, Plan::Group> groups;
    bool partner = PartnerFor(domain) != nullptr;
    for (uint32_t i : rcpts) {
      policy::Decision d = doc->Decide(recipients[i], plan.classification, partner, policy_->seal_when_known, sender);
      if (require_seal && d.protection != policy::Protection::kHold && d.protection != policy::Protection::kSealRequired) {
        d.protection = policy::Protection::kSealRequired;
        d.reason = "a message of the gateway's own that leaves only signed and encrypted (SEE-2.14)";
      }
      if (require_signature && !require_seal && d.protection != policy::Protection::kHold) {
        d.protection = policy::Protection::kSign;
        d.reason = "a certificate request or answer of the gateway's own: signed, sealed when their certificate is "
                   "known, never held for want of it (SEE-2.8b)";
      }
      auto [it, fresh] = groups.try_emplace({static_cast<int>(d.protection), d.triple_wrap}, Plan::Group{domain, d, {}});
      it->second.rcpts.push_back(i);
    }
    for (auto& [key, g] : groups) plan.remote.push_back(std::move(g));
  }
  return plan;
}

std::vector<Output> Gateway::Execute(const Plan& plan, const std::string& sender, const std::string& message,
                                     const GatewayKeys& keys, const policy::CompiledPolicy* doc,
                                     const Inbound* inbound) const {
  static const policy::CompiledPolicy kNoDocument;
  if (!doc) doc = &kNoDocument;
  std::vector<Output> out;
  Output pass;
  auto add = [&](Output o) {
    if (o.action == Action::kPass) {
      pass.rcpts.insert(pass.rcpts.end(), o.rcpts.begin(), o.rcpts.end());
      if (pass.reason.empty()) pass.reason = o.reason;
    } else {
      out.push_back(std::move(o));
    }
  };
  // SEE-2.14: seemail-ping@ answers before any other rule.
  for (const auto& [address, rcpts] : plan.pings) add(Ping(sender, rcpts, address, message, keys, *doc));
  for (const auto& [address, rcpts] : plan.cert_requests) add(CertRequest(sender, rcpts, address, message, keys));
  if (!plan.local.empty()) {
    if (plan.open_local) {
      Output o = Open1(sender, plan.local, message, keys, doc, inbound);
      if (o.action == Action::kDeliver && !doc->classification_header.empty())   // SEE-1.9 label, ours only
        o.body = policy::Label(o.body, doc->classification_header, policy::Classify(o.body, doc->trigger_words));
      add(std::move(o));
    } else {
      Output o;
      o.rcpts = plan.local;
      add(std::move(o));
    }
  }
  // What we seal carries our classification label (SEE-1.9) and version header (SEE-1.8).
  std::string labelled;
  if (!plan.remote.empty() && (!doc->classification_header.empty() || doc->seemail_version_header)) {
    labelled = policy::Label(message, doc->classification_header, plan.classification);
    if (doc->seemail_version_header)
      labelled = policy::Label(labelled, "X-SEEMAIL-Version", policy_->seemail_version);
  }
  const std::string& to_seal = labelled.empty() ? message : labelled;
  for (const Plan::Group& g : plan.remote) {
    const policy::Decision& d = g.decision;
    Output o;
    if (d.protection == policy::Protection::kHold) {
      o.action = Action::kHold;
      o.rcpts = g.rcpts;
      o.reason = StrCat(d.reason, plan.policy_version ? StrCat(" [policy v", plan.policy_version, "]") : "");   // shown to operators
    } else if (d.protection == policy::Protection::kPass) {
      o.rcpts = g.rcpts;
      o.reason = d.reason;
    } else {
      o = Seal1(g.domain, g.rcpts, to_seal, keys, d, plan.classification);
    }
    o.policy_version = plan.policy_version;
    add(std::move(o));
  }
  if (!pass.rcpts.empty()) {
    std::sort(pass.rcpts.begin(), pass.rcpts.end());
    out.push_back(std::move(pass));
  }
  return out;
}

std::vector<Output> Gateway::Process(const std::string& sender, const std::vector<std::string>& recipients,
                                     const std::string& message, const GatewayKeys& keys,
                                     const policy::CompiledPolicy* doc, bool require_seal,
                                     const Inbound* inbound) const {
  return Execute(Decide(sender, recipients, message, doc, require_seal), sender, message, keys, doc, inbound);
}

Output Gateway::Seal1(const std::string& domain, std::vector<uint32_t> rcpts, const std::string& message,
                      const GatewayKeys& keys, const policy::Decision& decision,
                      const std::string& classification) const {
  Output o;
  o.rcpts = std::move(rcpts);
  const PartnerPolicy* partner = PartnerFor(domain);
  bool required = decision.protection == policy::Protection::kSealRequired;
  bool sign = decision.protection == policy::Protection::kSign;
  if (!store_) {
    // Policy only: the decision stands, but nothing can be signed or sealed. What the policy
    // says must be protected is held, never sent in clear (issue #12, fail closed).
    if (!required && !sign) {
      o.reason = StrCat(decision.reason, "; no smime section, so no certificate is known: sent as is");
      return o;
    }
    o.action = Action::kHold;
    o.reason = StrCat(decision.reason, "; but no smime section is configured, so nothing can be ",
                      sign ? "signed" : "sealed", ": held, never sent unprotected");
    return o;
  }
  std::string covering;
  X509Ref dca = store_->Dca(domain, &covering);
  if (sign && dca && (store_->Check(dca.get(), X509_PURPOSE_SMIME_ENCRYPT).first != CertStatus::kValid ||
                      !UnsuitableDca(dca.get()).empty()))
    dca.reset();
  if (sign && !dca) {   // signed only: no certificate of theirs needed (SEE-2.9)
    if (!keys.dsa_key || !keys.dsa_cert) {
      o.action = Action::kTempFail;
      o.reason = Deferred(keys, "signing");
      return o;
    }
    Signer signer = OurSigner(keys);
    SealOptions so;
    so.sign_only = true;
    so.trace = OurReceived(message, policy_->gateway_name);
    Result<std::string> signed_msg = Seal(message, signer, {}, so);
    if (!signed_msg.ok()) {
      o.action = Action::kHold;
      o.reason = StrCat("signing for ", domain, " failed: ", signed_msg.status().message());
      return o;
    }
    o.action = Action::kDeliver;
    o.treatment = Treatment::kSigned;
    o.body = std::move(*signed_msg);
    o.protection = StrCat("signed for ", domain, " (signed-data, no certificate of theirs known): ", decision.reason);
    return o;
  }
  if (!required && !dca) {
    o.reason = StrCat(decision.reason, "; no certificate known: sent as is");
    return o;  // kPass (SEE-AG-1)
  }
  // Held for want of a usable certificate: the watcher looks for one (the CA's directory,
  // issue #15) and the copy is released when one turns up.
  auto wanting = [&](Output& out) {
    out.cert_domain = domain;
    if (std::string state = store_->Wanted(domain); !state.empty()) out.reason = StrCat(out.reason, "; ", state);
  };
  if (!dca) {
    o.action = Action::kHold;
    o.reason = StrCat("no DCA certificate known for ", domain, " (", decision.reason,
                      "; SEE-2.8: hold, never send in clear)");
    wanting(o);
    return o;
  }
  auto [status, detail] = store_->Check(dca.get(), X509_PURPOSE_SMIME_ENCRYPT);
  // SEE-2.6 and SEE-2.4 for the certificate we would encrypt to (pinned ones too): it must name
  // the domain authority properly and carry a key strong enough; else it is unsuitable.
  if (std::string unsuitable = UnsuitableDca(dca.get()); !unsuitable.empty()) {
    if (!required) {
      o.reason = StrCat("known DCA certificate for ", covering, " is unsuitable: ", unsuitable, "; sealing not required: sent as is");
      return o;
    }
    o.action = Action::kHold;
    o.reason = StrCat("DCA certificate for ", covering, " is unsuitable: ", unsuitable, " (", decision.reason,
                      "); held, never sent in clear");
    wanting(o);
    return o;
  }
  if (status != CertStatus::kValid && status != CertStatus::kStatusUnknown) {
    if (!required) {
      o.reason = StrCat("known DCA certificate for ", domain, " is ", CertStatusName(status), "; sealing not required: sent as is");
      return o;  // only valid certificates are used (SEE-2.9)
    }
    o.action = Action::kHold;
    o.reason = StrCat("DCA certificate for ", covering, " is ", CertStatusName(status),
                      detail.empty() ? "" : StrCat(" (", detail, ")"), " (", decision.reason, "); held (SEE-2.8)");
    wanting(o);
    return o;
  }
  if (!keys.dsa_key || !keys.dsa_cert) {
    o.action = Action::kTempFail;
    o.reason = Deferred(keys, "sealing");
    return o;
  }
  std::vector<std::string> caps = store_->Capabilities(covering);
  SealOptions so;
  so.cipher = ChooseCipher(caps);
  so.key_transport = KeyTransportFor(caps);
  so.triple_wrap = (partner && partner->triple_wrap) || decision.triple_wrap;
  so.detached_signature = partner && partner->detached_signature;
  so.outer_subject = policy_->outer_subject;
  so.trace = OurReceived(message, policy_->gateway_name);
  if (policy_->keep_subject) {
    // The first Subject, as a reader that shows the first would; the classification word
    // (from every Subject, decoded) is added in front when this one does not show it.
    std::vector<std::string> subjects = mime::HeaderValues(message, "Subject");
    so.outer_subject = subjects.empty() ? "" : Sanitize(subjects.front());
    if (!classification.empty() && policy::FindTriggerWord(policy::DecodeRfc2047(so.outer_subject)).empty())
      so.outer_subject = StrCat(classification, " ", so.outer_subject);
  } else if (policy_->show_classification && !classification.empty()) {
    so.outer_subject = StrCat(classification, " ", policy_->outer_subject);
  }
  Signer signer = OurSigner(keys);
  std::vector<X509*> recips = {dca.get()};
  Result<std::string> sealed = Seal(message, signer, recips, so);
  if (!sealed.ok()) {
    o.action = Action::kHold;
    o.reason = StrCat("sealing for ", domain, " failed: ", sealed.status().message());
    return o;
  }
  o.action = Action::kDeliver;
  o.treatment = Treatment::kSealed;
  o.body = std::move(*sealed);
  o.protection = StrCat("sealed for ", covering, " (", so.triple_wrap ? "triple-wrapped, " : "",
                        IsAead(so.cipher) ? "authEnveloped-data " : "enveloped-data ", CipherName(so.cipher),
                        so.key_transport == KeyTransport::kRsaOaep ? ", RSA-OAEP" : "", "): ", decision.reason);
  if (status == CertStatus::kStatusUnknown) {
    // SEE-2.8, sending: status unknown -> send, and the administrator is told (in the notifier's
    // digest: a thousand such messages are one notice).
    o.reason = StrCat("DCA certificate status could not be checked (SEE-2.8: send, notify)",
                      detail.empty() ? "" : StrCat(": ", detail));
    o.warned = true;
  }
  return o;
}

Output Gateway::Open1(const std::string& sender, std::vector<uint32_t> rcpts, const std::string& message,
                      const GatewayKeys& keys, const policy::CompiledPolicy* doc, const Inbound* inbound,
                      bool* verified, bool* encrypted) const {
  Output o;
  o.rcpts = std::move(rcpts);
  const std::string& id = policy_->authserv_id;
  std::vector<Field> outer;
  SplitHeader(message, &outer);
  // SM-8.2: the level, then RFC 8601 results (smime; spf when checked) with the transport.
  std::string spf_part, transport;
  bool tls_spf = false;
  if (inbound) {
    if (!inbound->spf_result.empty())
      spf_part = StrCat(";\r\n\tspf=", Sanitize(inbound->spf_result), " smtp.mailfrom=", Sanitize(inbound->spf_domain));
    transport = inbound->tls.empty() ? " (received in clear)" : StrCat(" (received over ", Sanitize(inbound->tls), ")");
    tls_spf = !inbound->tls.empty() && inbound->spf_result == "pass";
  }
  auto mark = [&](const std::string& result, const std::string& comment, const std::string& identifier) {
    const char* level = result == "pass" ? "signed+verified" : tls_spf ? "tls+spf" : "none";
    return StrCat(kAuthLevelHeader, ": ", level, "\r\n",
                  "Authentication-Results: ", id, "; smime=", result, " (", Sanitize(comment), ")",
                  identifier.empty() ? "" : StrCat(" body.smime-identifier=", Sanitize(identifier)), spf_part,
                  transport, "\r\n");
  };
  // Rebuild helper: marks + fields (minus forged marks) + separator + body.
  auto rebuild = [&](const std::string& marks, const std::vector<Field>& fields, std::string_view rest) {
    std::string body = marks;
    for (const Field& f : fields)
      if (!OursAr(f, id) && !NameIs(f, kAuthLevelHeader)) body += f.raw;
    body.append(rest);
    return body;
  };
  size_t sep = 0;  // start of the separator line within message (outer_body points after it)
  {
    size_t p = 0;
    for (const Field& f : outer) p += f.raw.size();
    sep = p;
  }
  if (!IsSmimeEntity(message)) {
    o.action = Action::kDeliver;
    o.treatment = Treatment::kMarked;
    o.protection = "inbound, not S/MIME";
    o.body = rebuild(mark("none", "not S/MIME", ""), outer, std::string_view(message).substr(sep));
    return o;
  }
  std::vector<X509Ref> known_refs = store_->KnownSigners();
  std::vector<X509*> known;
  for (const X509Ref& k : known_refs) known.push_back(k.get());
  OpenOptions opts;
  opts.domain_layers_only = true;
  std::shared_ptr<const pki::TrustList> trust = store_->trust();   // held while the message is judged
  Recipient us(keys.dca_cert.get(), keys.dca_key);
  for (const auto& [c, k] : keys.previous_dca) us.previous.emplace_back(c.get(), k);
  Result<Opened> r = Open(message, us, trust->store(), known, opts);
  if (!r.ok()) {
    if (r.status().code() == StatusCode::kFailedPrecondition) {
      o.action = Action::kDeliver;
      o.treatment = Treatment::kMarked;
      o.protection = "inbound, user-level S/MIME left intact";
      o.body = rebuild(mark("none", "user-level S/MIME, not for this domain; left intact", ""), outer,
                       std::string_view(message).substr(sep));
      return o;
    }
    if (!keys.dca_key) {
      o.action = Action::kTempFail;
      o.reason = Deferred(keys, "opening");
      return o;
    }
    o.action = Action::kHold;
    o.reason = StrCat("S/MIME could not be opened: ", r.status().message());
    return o;
  }
  Opened& op = *r;
  // The delivered header (issue #12; RFC 8551 §3.1, RFC 9788): our marks, the outer trace
  // fields, then the protected header — the wrapped message's own (message/rfc822), or the
  // header fields a signed entity carries itself (a whole RFC 5322 message signed as it is, as
  // `openssl cms -sign` and gpgsm do) followed by the outer fields it does not protect. A
  // single-occurrence field (RFC 5322 §3.6) is delivered once: the protected one, else the
  // first. So what we check (warning, sender name) is what the mail client shows.
  std::vector<Field> inner;
  SplitHeader(op.message, &inner);
  size_t inner_len = 0;
  for (const Field& f : inner) inner_len += f.raw.size();
  auto is_content = [](const Field& f) {
    return NameIs(f, "MIME-Version") || strncasecmp(f.name.c_str(), "Content-", 8) == 0;
  };
  auto is_trace = [](const Field& f) { return NameIs(f, "Received") || NameIs(f, "Return-Path"); };
  std::vector<Field> fields;
  std::vector<std::string> replaced;   // outer fields that differed from the protected ones
  for (const Field& f : outer)
    if (is_trace(f)) fields.push_back(f);
  std::string rest;
  if (op.rfc822) {
    fields.insert(fields.end(), inner.begin(), inner.end());
    rest = op.message.substr(inner_len);
  } else {
    std::vector<Field> protected_fields;
    for (const Field& f : inner)
      if (is_content(f)) rest += f.raw;   // the entity keeps its own Content-* fields
      else protected_fields.push_back(f);
    rest += op.message.substr(inner_len);
    fields.insert(fields.end(), protected_fields.begin(), protected_fields.end());
    // One lookup per outer field (both headers come from outside: no quadratic pass).
    std::unordered_map<std::string, const Field*> shadowing;   // lower-case name -> first protected field
    for (const Field& p : protected_fields) shadowing.emplace(base::AsciiLower(p.name), &p);
    std::set<std::string> reported;
    for (const Field& f : outer) {
      if (is_trace(f) || is_content(f)) continue;
      auto shadow = shadowing.find(base::AsciiLower(f.name));
      if (shadow == shadowing.end()) fields.push_back(f);
      else if (Unfold(shadow->second->Value()) != Unfold(f.Value()) && reported.insert(shadow->first).second)
        replaced.push_back(shadow->second->name);
    }
    fields.push_back({"MIME-Version", "MIME-Version: 1.0\r\n"});
  }
  std::vector<std::string> dropped;
  fields = KeepFirstOfSingles(fields, &dropped);
  // Every author the user can see (From and Sender, display names included); the envelope
  // sender when the header names none.
  std::vector<std::string> authors;
  for (const Field& f : fields)
    if (NameIs(f, "From") || NameIs(f, "Sender"))
      for (std::string& m : Mailboxes(Unfold(f.Value()))) authors.push_back(std::move(m));
  bool header_has_author = std::any_of(fields.begin(), fields.end(), [](const Field& f) { return NameIs(f, "From"); });
  if (!header_has_author) authors.push_back(base::AsciiLower(sender));
  std::string result = "none", comment, identifier, warning;
  std::string how = op.cipher.empty() ? "not encrypted" : StrCat("encrypted as ", op.cipher);
  if (op.signature_ok) {
    for (const std::string& e : op.signer_emails)
      if (identifier.empty()) identifier = e;
    // SEE-2.6 whole (CN and rfc822Name), then every visible author against its domains.
    AuthorityNames names = ExamineAuthority(op.signer_cert.get(), "domain-signing-authority");
    std::vector<std::string> authority;
    for (const std::string& d : names.domains) authority.push_back(StrCat("domain-signing-authority@", d));
    NamingVerdict nv;
    nv.reason = "the message names no author";
    for (const std::string& a : authors) {
      nv = CheckDomainSigner(authority, a);
      if (!nv.ok) {
        nv.reason = StrCat(nv.reason, ", author ", a);
        break;
      }
    }
    std::string weak_key = KeyStrengthProblem(op.signer_cert.get());
    const std::string kUnknown = WarningFor(CertStatus::kUnknownCa);
    if (op.cert_status != CertStatus::kValid) {
      result = "fail";
      comment = StrCat("signature good, certificate ", CertStatusName(op.cert_status),
                       op.cert_detail.empty() ? "" : StrCat(": ", op.cert_detail), "; ", how);
      warning = WarningFor(op.cert_status);
      if (!names.problem.empty() || !nv.ok) {   // a soft status never softens a naming failure
        comment = StrCat(comment, "; and ", !names.problem.empty() ? names.problem : nv.reason);
        if (warning.rfind("[SOFT", 0) == 0)
          warning = "[HARD WARNING: Sender address does not match the domain certificate - message integrity uncertain]";
      }
    } else if (!names.problem.empty()) {
      result = "fail";
      comment = StrCat("signature good, but the signing certificate is not a domain authority: ", names.problem, "; ", how);
      warning = kUnknown;
    } else if (!weak_key.empty()) {
      result = "fail";
      comment = StrCat("signature good, but the signing certificate is unsuitable: ", weak_key, "; ", how);
      warning = kUnknown;
    } else if (op.weak_digest == "MD5") {
      result = "fail";
      comment = StrCat("signature made with MD5, which is broken; ", how);
      warning = kUnknown;
    } else if (!nv.ok) {
      result = "fail";
      comment = StrCat("signature good, but ", nv.reason, "; ", how);
      // Warning 2B (unverified sender): HARD, or SOFT from a Trusted Listserv / Server (SEE 2.11).
      const policy::CompiledPolicy::Server* trusted =
          doc && inbound ? doc->TrustedServerFor(inbound->client_address, inbound->helo) : nullptr;
      if (trusted) comment = StrCat(comment, "; relayed by ", trusted->shown, ": warning softened (SEE 2.11)");
      warning = StrCat(trusted ? "[SOFT WARNING" : "[HARD WARNING",
                       ": Sender address does not match the domain certificate - message integrity uncertain]");
    } else if (op.weak_digest == "SHA1") {
      // SEE-2.4: SHA-1 only to read legacy mail — readable, marked, never "verified" or learnt.
      result = "policy";
      comment = StrCat("legacy SHA-1 signature by the domain of ", nv.matched_domain, ": readable, not verified (SEE-2.4); ", how);
      warning = "[SOFT WARNING: Legacy SHA-1 signature - message integrity uncertain]";
    } else {
      result = "pass";
      comment = StrCat("signed by the domain of ", nv.matched_domain, ", certificate valid; ", how);
      std::string learnt = store_->Learn(nv.matched_domain, op.certs, op.capabilities);
      if (!learnt.empty()) o.reason = StrCat("learnt from ", nv.matched_domain, ": ", learnt);
    }
  } else {
    comment = StrCat(how, " to this domain; not signed");
  }
  auto list = [](const std::vector<std::string>& v) {
    std::string out;
    for (const std::string& d : v) out += StrCat(out.empty() ? "" : ", ", d);
    return out;
  };
  if (!replaced.empty()) comment = StrCat(comment, "; outer ", list(replaced), " differed, the signed ones are shown");
  if (!dropped.empty()) comment = StrCat(comment, "; duplicate ", list(dropped), " removed, RFC 5322 3.6");
  std::string marks = mark(result, comment, identifier);
  if (!warning.empty()) {
    bool found = false;
    for (Field& f : fields) {
      if (!NameIs(f, "Subject")) continue;
      std::string v(f.Value());
      size_t lead = v.find_first_not_of(" \t");
      f.raw = StrCat("Subject: ", warning, " ", lead == std::string::npos ? v : v.substr(lead));
      found = true;
    }
    if (!found) fields.push_back({"Subject", StrCat("Subject: ", warning, "\r\n")});
  }
  o.action = Action::kDeliver;
  o.treatment = Treatment::kOpened;
  o.warned = result == "fail";
  o.body = rebuild(marks, fields, rest);
  o.protection = StrCat("opened: smime=", result, " (", Sanitize(comment), ")");
  if (verified) *verified = result == "pass";
  if (encrypted) *encrypted = !op.cipher.empty();
  return o;
}

Output Gateway::Ping(const std::string& sender, std::vector<uint32_t> rcpts, const std::string& ping_address,
                     const std::string& message, const GatewayKeys& keys, const policy::CompiledPolicy& doc) const {
  bool verified = false, encrypted = false;
  Output opened = Open1(sender, rcpts, message, keys, nullptr, nullptr, &verified, &encrypted);
  if (opened.action == Action::kTempFail) return opened;
  Output o;
  o.rcpts = std::move(rcpts);
  o.action = Action::kConsume;
  std::string from = sender;
  from = base::AsciiLower(from);
  std::string local = from.substr(0, from.rfind('@'));
  std::string domain = smtp::DomainOf(from);
  if (!verified) {
    o.reason = "seemail-ping: the probe is not signed by a verified domain authority, no reply (SEE-2.14)";
    return o;
  }
  if (from.empty() || local == "seemail-ping" || local == "postmaster" || local == "mailer-daemon") {
    o.reason = "seemail-ping: no reply to an automatic sender (loop protection)";
    return o;
  }
  int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch()).count();
  if (ping_limiter_ && !ping_limiter_->Allow(domain, now)) {
    o.reason = StrCat("seemail-ping: reply to ", domain, " rate limited");
    return o;
  }
  std::set<std::string> partners;
  for (const auto& [d, p] : policy_->partners) partners.insert(d);
  for (const auto& [d, note] : doc.seemail)
    if (d.find('@') == std::string::npos) partners.insert(d);
  std::string known;
  for (const std::string& d : partners) known += StrCat(known.empty() ? "" : ", ", d);
  std::string probe_id;
  std::vector<Field> fields;
  SplitHeader(opened.body, &fields);
  for (const Field& f : fields)
    if (NameIs(f, "Message-ID")) probe_id = Sanitize(Unfold(f.Value()));
  std::string self = ping_address;
  std::string body;
  body += StrCat("From: SEEMAIL ping <", self, ">\r\nTo: <", from, ">\r\n");
  body += "Subject: SEEMAIL ping reply\r\n";
  body += StrCat("Date: ", queue::Rfc5322Date(now), "\r\n");
  body += StrCat("Message-ID: <ping.", now, "@", policy_->gateway_name, ">\r\n");
  if (!probe_id.empty()) body += StrCat("In-Reply-To: ", probe_id, "\r\n");
  body += "Auto-Submitted: auto-replied\r\n";
  body += StrCat("X-SEEMAIL-Version: ", policy_->seemail_version, "\r\n");
  body += "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n";
  body += StrCat("SEEMAIL version: ", policy_->seemail_version, "\r\n");
  body += StrCat("Gateway: ", policy_->gateway_name, "\r\n");
  body += StrCat("Software: ", policy_->product_version, "\r\n");
  body += StrCat("Partner domains: ", known.empty() ? "(none)" : known, "\r\n");
  body += StrCat("Probe: ", encrypted ? "signed and encrypted" : "signed", ", verified\r\n");
  o.action = Action::kDeliver;
  o.treatment = Treatment::kPingReply;
  o.body = std::move(body);
  o.envelope_from = self;
  o.envelope_to = from;
  o.require_seal = true;
  o.protection = StrCat("seemail-ping reply to <", from, "> (probe ", encrypted ? "signed and encrypted" : "signed",
                        ", verified)");
  return o;
}

namespace {

// DecodeBase64: RFC 2045 base64 (line breaks and blanks skipped); "" when it is not base64.
std::string DecodeBase64(std::string_view in) {
  std::string clean;
  for (char ch : in)
    if (!std::isspace(static_cast<unsigned char>(ch))) clean += ch;
  std::string out((clean.size() / 4 + 1) * 3, '\0');
  EVP_ENCODE_CTX* ctx = EVP_ENCODE_CTX_new();
  int n = 0, total = 0;
  EVP_DecodeInit(ctx);
  bool ok = EVP_DecodeUpdate(ctx, reinterpret_cast<unsigned char*>(out.data()), &n,
                             reinterpret_cast<const unsigned char*>(clean.data()), static_cast<int>(clean.size())) >= 0;
  total = n;
  ok = ok && EVP_DecodeFinal(ctx, reinterpret_cast<unsigned char*>(out.data()) + total, &n) == 1;
  EVP_ENCODE_CTX_free(ctx);
  if (!ok) return "";
  out.resize(static_cast<size_t>(total + n));
  return out;
}

// AttachedName: a part's file name (Content-Disposition filename, else Content-Type name), lower case.
std::string AttachedName(const mime::Part& p) {
  std::string name;
  if (const mime::HeaderField* cd = p.Find("Content-Disposition")) {
    std::string v = base::AsciiLower(cd->Value());
    size_t at = v.find("filename=");
    if (at != std::string::npos) {
      name = v.substr(at + 9);
      if (!name.empty() && name.front() == '"') name = name.substr(1, name.find('"', 1) - 1);
      else name = name.substr(0, name.find_first_of("; \t"));
    }
  }
  if (name.empty()) {
    auto it = p.params.find("name");
    if (it != p.params.end()) name = base::AsciiLower(it->second);
  }
  return name;
}

bool CertificateAttachment(const mime::Part& p) {
  std::string t = p.type + "/" + p.subtype;
  if (t == "application/pkix-cert" || t == "application/x-x509-ca-cert" || t == "application/x-x509-user-cert" ||
      t == "application/x-pkcs7-certificates")
    return true;
  if (t == "application/pkcs7-mime" || t == "application/x-pkcs7-mime") {
    auto it = p.params.find("smime-type");
    return it != p.params.end() && base::AsciiLower(it->second) == "certs-only";
  }
  std::string name = AttachedName(p);
  for (const char* ext : {".cer", ".crt", ".der", ".p7b", ".p7c"})
    if (name.ends_with(ext)) return true;
  return false;
}

}  // namespace

std::vector<X509Ref> CertificatesIn(const std::string& message, size_t* attachments) {
  constexpr size_t kMax = 16;
  std::vector<X509Ref> out;
  size_t seen = 0;
  mime::Parser parser;
  if (parser.Feed(message).ok() && parser.Finish().ok()) {
    for (const mime::Part& p : parser.parts()) {
      if (p.IsMultipart() || !p.header_complete || !CertificateAttachment(p) || p.end < p.body_begin) continue;
      ++seen;
      std::string_view body(message.data() + p.body_begin, p.end - p.body_begin);
      std::string data = p.transfer_encoding == "base64" ? DecodeBase64(body) : std::string(body);
      Result<std::vector<pki::X509Ptr>> certs = pki::ParseCertificates(data, kMax);
      if (!certs.ok()) continue;
      for (pki::X509Ptr& x : *certs)
        if (out.size() < kMax) out.push_back(std::move(x));
    }
  }
  if (attachments) *attachments = seen;
  return out;
}

std::string CertificateRequest(const std::string& from, const std::string& domain, const std::string& gateway_name,
                               int64_t now_ms) {
  std::string wanted = StrCat("domain-confidentiality-authority@", domain);
  std::string m;
  m += StrCat("From: Certificate requests <", from, ">\r\nTo: <domain-certificate-request@", domain, ">\r\n");
  m += StrCat("Subject: ", wanted, "\r\n");
  m += StrCat("Date: ", queue::Rfc5322Date(now_ms), "\r\n");
  m += StrCat("Message-ID: <certreq.", now_ms, "@", gateway_name, ">\r\n");
  m += "Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n";
  m += StrCat("The mail gateway ", gateway_name, " asks for the certificate of ", wanted, "\r\n");
  m += "(SEEMAIL: a signed request to domain-certificate-request@; please answer with the certificate\r\n";
  m += "attached as .cer, .crt, .p7b or .p7c).\r\n";
  return m;
}

Output Gateway::CertRequest(const std::string& sender, std::vector<uint32_t> rcpts, const std::string& address,
                            const std::string& message, const GatewayKeys& keys) const {
  bool verified = false, encrypted = false;
  Output opened = Open1(sender, rcpts, message, keys, nullptr, nullptr, &verified, &encrypted);
  if (opened.action == Action::kTempFail) return opened;
  Output o;
  o.rcpts = std::move(rcpts);
  o.action = Action::kConsume;
  std::string from = base::AsciiLower(sender);
  std::string local = from.substr(0, from.rfind('@'));
  std::string domain = smtp::DomainOf(from);
  if (!verified) {
    o.reason = "domain-certificate-request: not signed by a verified domain authority: ignored (SEE-2.8b)";
    return o;
  }
  // An answer: certificates attached. Only what validates and names the sender's domain's
  // authority is taken (CertStore::Learn); mail held for it is then released.
  size_t attachments = 0;
  std::vector<X509Ref> certs = CertificatesIn(opened.body, &attachments);
  if (attachments > 0) {
    std::string learnt = domain.empty() ? "" : store_->Offer(domain, certs, StrCat("an answer from ", from));
    o.reason = StrCat("certificate answer from ", domain.empty() ? "<>" : domain, ": ", certs.size(), " certificate",
                      certs.size() == 1 ? "" : "s", attachments > certs.size() ? " (some attachments unreadable)" : "",
                      learnt.empty() ? "; nothing new taken (already held)" : StrCat("; learnt ", learnt), " (SEE-2.8b)");
    return o;
  }
  // A request: its Subject is the address of the certificate wanted.
  std::vector<Field> fields;
  SplitHeader(opened.body, &fields);
  std::string wanted;
  for (const Field& f : fields)
    if (NameIs(f, "Subject")) wanted = base::AsciiLower(Sanitize(Unfold(f.Value())));
  while (!wanted.empty() && (wanted.front() == '<' || wanted.front() == ' ')) wanted.erase(0, 1);
  while (!wanted.empty() && (wanted.back() == '>' || wanted.back() == ' ')) wanted.pop_back();
  if (from.empty() || local == "postmaster" || local == "mailer-daemon" || local == "seemail-ping") {
    o.reason = "domain-certificate-request: no answer to an automatic sender (loop protection)";
    return o;
  }
  X509* cert = nullptr;
  for (auto [c, authority] : {std::pair{keys.dca_cert.get(), "domain-confidentiality-authority"},
                              std::pair{keys.dsa_cert.get(), "domain-signing-authority"}}) {
    if (!c) continue;
    for (const std::string& d : ExamineAuthority(c, authority).domains)
      if (wanted == StrCat(authority, "@", d) && IsLocal(d)) cert = c;
  }
  if (!cert) {
    o.reason = StrCat("domain-certificate-request: no certificate of ours is named '", wanted, "' (SEE-2.8b)");
    return o;
  }
  int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch()).count();
  if (ping_limiter_ && !ping_limiter_->Allow(StrCat("certreq:", domain), now)) {
    o.reason = StrCat("domain-certificate-request: answer to ", domain, " rate limited");
    return o;
  }
  unsigned char* der = nullptr;
  int n = i2d_X509(cert, &der);
  if (n <= 0) {
    o.reason = "domain-certificate-request: our certificate cannot be encoded";
    return o;
  }
  std::string bytes(reinterpret_cast<char*>(der), static_cast<size_t>(n));
  OPENSSL_free(der);
  std::string boundary = StrCat("=_certanswer_", now);
  std::string body;
  body += StrCat("From: Certificate requests <", address, ">\r\nTo: <", from, ">\r\n");
  body += StrCat("Subject: Certificate of ", wanted, "\r\n");
  body += StrCat("Date: ", queue::Rfc5322Date(now), "\r\n");
  body += StrCat("Message-ID: <certanswer.", now, "@", policy_->gateway_name, ">\r\n");
  body += "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n";
  body += StrCat("Content-Type: multipart/mixed; boundary=\"", boundary, "\"\r\n\r\n");
  body += StrCat("--", boundary, "\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n");
  body += StrCat("The certificate of ", wanted, ", as asked (SEEMAIL domain-certificate-request).\r\n");
  body += StrCat("--", boundary, "\r\nContent-Type: application/pkix-cert; name=\"", wanted, ".cer\"\r\n");
  body += StrCat("Content-Disposition: attachment; filename=\"", wanted, ".cer\"\r\nContent-Transfer-Encoding: base64\r\n\r\n");
  body += mime::EncodeBase64Lines(bytes);
  body += StrCat("--", boundary, "--\r\n");
  o.action = Action::kDeliver;
  o.treatment = Treatment::kCertAnswer;
  o.body = std::move(body);
  o.envelope_from = address;
  o.envelope_to = from;
  o.require_signature = true;
  o.protection = StrCat("certificate of ", wanted, " sent to <", from, "> (request signed", encrypted ? " and encrypted" : "",
                        ", verified; SEE-2.8b)");
  return o;
}

}  // namespace mailseal::smime
