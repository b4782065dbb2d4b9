// cli.cc — see cli.h.
#include "tools/mailsealctl/cli.h"

#include <google/protobuf/util/json_util.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>

#include "dataplane/base/file.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace mailsealctl {

int Context::Print(const google::protobuf::Message& m, const std::function<void()>& table) const {
  if (json) std::printf("%s\n", Json(m).c_str());
  else table();
  return kOk;
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

bool Slurp(const std::string& path, std::string* out) {
  mailseal::Result<std::string> r = mailseal::base::ReadFile(path);
  if (!r.ok()) return false;
  *out = std::move(*r);
  return true;
}

int Report(const grpc::Status& st) {
  bool denied = st.error_code() == grpc::StatusCode::PERMISSION_DENIED;
  std::fprintf(stderr, "mailsealctl: %s: %s\n", denied ? "permission denied" : "error", st.error_message().c_str());
  google::rpc::Status details;
  if (!st.error_details().empty() && details.ParseFromString(st.error_details()))
    for (const auto& any : details.details()) {
      google::rpc::BadRequest bad;
      if (any.UnpackTo(&bad))
        for (const auto& v : bad.field_violations())
          std::fprintf(stderr, "  field %s: %s\n", v.field().c_str(), v.description().c_str());
    }
  return denied ? kDenied : kError;
}

std::string Json(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

std::string Hex(const std::string& b) {
  static const char* d = "0123456789abcdef";
  std::string h;
  for (unsigned char c : b) h += {d[c >> 4], d[c & 15]};
  return h;
}

std::string Time(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  time_t t = static_cast<time_t>(unix_ms / 1000);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
  return buf;
}

void PrintRecord(const v1::AuditRecord& r) {
  std::printf("%6llu %s %-28s %-44s %-7s %s %s\n", static_cast<unsigned long long>(r.seq()), Time(r.time_unix_ms()).c_str(),
              r.actor().c_str(), r.action().c_str(), v1::AuditRecord::Outcome_Name(r.outcome()).c_str() + 8,
              r.object().c_str(), r.detail().c_str());
}

void PrintKey(const v1::KeyInfo& k) {
  std::printf("%-20s %-12s %-9s %5lld d  %-3s %-40s %s%s\n", k.label().c_str(), k.purpose().c_str(), k.key_type().c_str(),
              static_cast<long long>(k.age_days()), k.in_use() ? "yes" : "no",
              k.certificate_subject().empty() ? "(no certificate)" : k.certificate_subject().c_str(),
              k.certificate_not_after_unix_s() ? Time(k.certificate_not_after_unix_s() * 1000).c_str() : "",
              k.expiry_warning() < 0 ? " EXPIRED" : k.expiry_warning() > 0 ? " (expires soon)" : "");
}

}  // namespace mailsealctl
