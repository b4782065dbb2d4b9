// policy_store.cc — see policy_store.h.
#include "control/policy_store.h"

#include "dataplane/base/file.h"
#include "dataplane/base/strings.h"

#include "dataplane/policy/cidr.h"

#include <fcntl.h>
#include <google/protobuf/util/message_differencer.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

namespace mailseal::control {
namespace {
using mailseal::v1::PolicyDocument;
using mailseal::v1::PolicyVersionInfo;

bool ValidDomain(const std::string& d) {
  if (d.empty() || d.size() > 253 || d.front() == '.' || d.back() == '.' || d.find("..") != std::string::npos) return false;
  for (char c : d)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.')) return false;
  return true;
}

// ValidEntry: a domain, or an address ("user@domain") for per-sender/recipient entries.
bool ValidEntry(const std::string& e) {
  size_t at = e.rfind('@');
  if (at == std::string::npos) return ValidDomain(e);
  if (at == 0 || at > 64) return false;
  for (size_t i = 0; i < at; ++i)
    if (e[i] <= ' ' || e[i] > '~' || e[i] == '@' || e[i] == '<' || e[i] == '>') return false;
  return ValidDomain(e.substr(at + 1));
}

std::string Name(const std::string& dir, uint64_t v, const char* ext) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "/v%06llu.%s", static_cast<unsigned long long>(v), ext);
  return dir + buf;
}

bool ReadMessage(const std::string& path, google::protobuf::MessageLite* m) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  return m->ParseFromString(ss.str());
}

Status CheckList(google::protobuf::RepeatedPtrField<mailseal::v1::ListedDomain>* list, const char* name) {
  std::set<std::string> seen;
  for (int i = 0; i < list->size(); ++i) {
    auto* e = list->Mutable(i);
    e->set_domain(base::AsciiLower(e->domain()));
    if (!ValidEntry(e->domain()))
      return InvalidArgumentError(StrCat("field '", name, "[", i, "].domain': '", e->domain(),
                                         "' is not a domain name or an address"));
    if (!seen.insert(e->domain()).second)
      return InvalidArgumentError(StrCat("field '", name, "[", i, "].domain': '", e->domain(), "' is listed twice"));
  }
  return OkStatus();
}
}  // namespace

Status ValidatePolicy(PolicyDocument* doc) {
  for (int i = 0; i < doc->trigger_words_size(); ++i) {
    const std::string& w = doc->trigger_words(i);
    bool ok = !w.empty() && w.size() <= 64;
    for (char c : w) ok = ok && c >= 0x20 && c < 0x7f && c != '[' && c != ']' && c != '{' && c != '}';
    if (!ok)
      return InvalidArgumentError(StrCat("field 'trigger_words[", i, "]': '", w,
                                         "' must be 1-64 printable ASCII characters without brackets"));
  }
  if (Status st = CheckList(doc->mutable_seemail_list(), "seemail_list"); !st.ok()) return st;
  if (Status st = CheckList(doc->mutable_trusted_list(), "trusted_list"); !st.ok()) return st;
  std::set<std::string> seen;
  for (int i = 0; i < doc->domain_rules_size(); ++i) {
    auto* r = doc->mutable_domain_rules(i);
    r->set_domain(base::AsciiLower(r->domain()));
    if (!ValidEntry(r->domain()))
      return InvalidArgumentError(StrCat("field 'domain_rules[", i, "].domain': '", r->domain(),
                                         "' is not a domain name or an address"));
    if (r->protection() == mailseal::v1::DomainRule::PROTECTION_UNSPECIFIED)
      return InvalidArgumentError(StrCat("field 'domain_rules[", i, "].protection': required"));
    if (!seen.insert(r->domain()).second)
      return InvalidArgumentError(StrCat("field 'domain_rules[", i, "].domain': '", r->domain(), "' has two rules"));
  }
  {
    std::set<std::string> seen_senders;
    for (int i = 0; i < doc->sender_rules_size(); ++i) {
      auto* r = doc->mutable_sender_rules(i);
      r->set_domain(base::AsciiLower(r->domain()));
      if (!ValidEntry(r->domain()))
        return InvalidArgumentError(StrCat("field 'sender_rules[", i, "].domain': '", r->domain(),
                                           "' is not a domain name or an address"));
      if (r->protection() == mailseal::v1::DomainRule::PROTECTION_UNSPECIFIED ||
          r->protection() == mailseal::v1::DomainRule::PROTECTION_NONE)
        return InvalidArgumentError(StrCat("field 'sender_rules[", i, "].protection': a sender rule only raises "
                                           "protection (SEAL_REQUIRED, SEAL_WHEN_POSSIBLE or SIGN)"));
      if (!seen_senders.insert(r->domain()).second)
        return InvalidArgumentError(StrCat("field 'sender_rules[", i, "].domain': '", r->domain(), "' has two rules"));
    }
  }
  for (int i = 0; i < doc->trusted_servers_size(); ++i) {
    auto* t = doc->mutable_trusted_servers(i);
    t->set_name(base::AsciiLower(t->name()));
    if (t->kind() == mailseal::v1::TrustedServer::KIND_UNSPECIFIED)
      return InvalidArgumentError(StrCat("field 'trusted_servers[", i, "].kind': KIND_LISTSERV or KIND_SERVER"));
    policy::Cidr cidr;
    if (t->address().empty() || !policy::ParseCidr(t->address(), &cidr))
      return InvalidArgumentError(StrCat("field 'trusted_servers[", i, "].address': '", t->address(),
                                         "' is not an IP address or network"));
    if (!t->name().empty() && !ValidDomain(t->name()))
      return InvalidArgumentError(StrCat("field 'trusted_servers[", i, "].name': '", t->name(), "' is not a host name"));
  }
  {
    const std::string& h = doc->classification_header();
    bool ok = h.size() <= 64;
    for (char ch : h) ok = ok && ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-');
    if (!ok) return InvalidArgumentError(StrCat("field 'classification_header': '", h, "' is not a header field name"));
  }
  const std::string& admin = doc->notifications().admin_address();
  size_t at = admin.find('@');
  if (!admin.empty() && (at == 0 || at == std::string::npos || at + 1 >= admin.size() || admin.find('@', at + 1) != std::string::npos))
    return InvalidArgumentError(StrCat("field 'notifications.admin_address': '", admin, "' is not an address"));
  if (doc->comment().size() > 1000) return InvalidArgumentError("field 'comment': longer than 1000 characters");
  return OkStatus();
}

Result<std::unique_ptr<PolicyStore>> PolicyStore::Open(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    return InternalError(StrCat("mkdir ", dir, ": ", std::strerror(errno)));
  std::unique_ptr<PolicyStore> s(new PolicyStore());
  s->dir_ = dir;
  for (uint64_t v = 1;; ++v) {
    PolicyVersionInfo info;
    if (!ReadMessage(Name(dir, v, "info"), &info)) break;
    s->history_.push_back(info);
  }
  return s;
}

uint64_t PolicyStore::current() const {
  std::lock_guard<std::mutex> l(mu_);
  return history_.size();
}

Result<PolicyDocument> PolicyStore::Get(uint64_t version) const {
  std::lock_guard<std::mutex> l(mu_);
  if (version == 0) version = history_.size();
  if (version == 0 || version > history_.size()) return NotFoundError(StrCat("no policy version ", version));
  PolicyDocument d;
  if (!ReadMessage(Name(dir_, version, "pb"), &d)) return DataLossError(StrCat("policy version ", version, " unreadable"));
  return d;
}

Result<uint64_t> PolicyStore::Set(PolicyDocument doc, uint64_t expected, const std::string& actor) {
  if (Status st = ValidatePolicy(&doc); !st.ok()) return st;
  uint64_t v = expected + 1;
  doc.set_version(v);
  PolicyVersionInfo info;
  info.set_version(v);
  info.set_set_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::chrono::system_clock::now().time_since_epoch()).count());
  info.set_actor(actor);
  info.set_comment(doc.comment());
  Replicator replicate;
  {
    std::lock_guard<std::mutex> l(mu_);
    replicate = replicator_;
    if (!replicate) {
      if (expected != history_.size())
        return FailedPreconditionError(StrCat("the policy is at version ", history_.size(), ", not ", expected,
                                              ": get it again and re-apply the change"));
      if (Status st = WriteLocked(doc, info); !st.ok()) return st;
      return v;
    }
  }
  // Outside the lock: the cluster installs the version through Install before this returns.
  mailseal::v1::PolicyVersionRecord rec;
  *rec.mutable_info() = info;
  *rec.mutable_document() = doc;
  if (Status st = replicate(rec, expected); !st.ok()) return st;
  return v;
}

Status PolicyStore::WriteLocked(const PolicyDocument& doc, const PolicyVersionInfo& info) {
  uint64_t v = info.version();
  // The document first, its info last: a version exists once its info file does.
  if (Status st = base::WriteFileDurably(Name(dir_, v, "pb"), doc.SerializeAsString()); !st.ok()) return st;
  if (Status st = base::WriteFileDurably(Name(dir_, v, "info"), info.SerializeAsString()); !st.ok()) return st;
  history_.push_back(info);
  if (on_change_) on_change_(doc);
  return OkStatus();
}

void PolicyStore::SetReplicator(Replicator r) {
  std::lock_guard<std::mutex> l(mu_);
  replicator_ = std::move(r);
}

Status PolicyStore::Install(const mailseal::v1::PolicyVersionRecord& record) {
  PolicyDocument doc = record.document();
  const uint64_t v = record.info().version();
  if (doc.version() != v) return InvalidArgumentError(StrCat("policy record ", v, " holds document version ", doc.version()));
  if (Status st = ValidatePolicy(&doc); !st.ok()) return st;
  std::lock_guard<std::mutex> l(mu_);
  if (v >= 1 && v <= history_.size()) return OkStatus();
  if (v != history_.size() + 1)
    return FailedPreconditionError(StrCat("policy version ", v, " cannot follow version ", history_.size()));
  return WriteLocked(doc, record.info());
}

Result<mailseal::v1::PolicyVersionRecord> PolicyStore::Record(uint64_t version) const {
  Result<PolicyDocument> d = Get(version);
  if (!d.ok()) return d.status();
  mailseal::v1::PolicyVersionRecord rec;
  {
    std::lock_guard<std::mutex> l(mu_);
    *rec.mutable_info() = history_[d->version() - 1];
  }
  *rec.mutable_document() = *d;
  return rec;
}

Result<std::vector<std::string>> PolicyStore::Diff(uint64_t from, uint64_t to) const {
  Result<PolicyDocument> a = Get(from), b = Get(to);
  if (!a.ok()) return a.status();
  if (!b.ok()) return b.status();
  a->clear_version();
  b->clear_version();
  std::string report;
  {
    google::protobuf::io::StringOutputStream out(&report);
    google::protobuf::util::MessageDifferencer::StreamReporter reporter(&out);
    google::protobuf::util::MessageDifferencer d;
    d.ReportDifferencesTo(&reporter);
    d.Compare(*a, *b);
  }
  std::vector<std::string> lines;
  std::istringstream in(report);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(line);
  return lines;
}

std::vector<PolicyVersionInfo> PolicyStore::History() const {
  std::lock_guard<std::mutex> l(mu_);
  return std::vector<PolicyVersionInfo>(history_.rbegin(), history_.rend());
}

void PolicyStore::SetOnChange(std::function<void(const mailseal::v1::PolicyDocument&)> f) {
  std::lock_guard<std::mutex> l(mu_);
  on_change_ = std::move(f);
}

}  // namespace mailseal::control
