// guard.cc — see guard.h.
#include "control/guard.h"

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace mailseal::control {
using grpc::Status;
using grpc::StatusCode;

// Invalid: INVALID_ARGUMENT naming the field in the message and, for programs, in a
// google.rpc.BadRequest detail (the grpc-status-details-bin trailer).
Status Invalid(const std::string& field, const std::string& description) {
  std::string message = StrCat("field '", field, "': ", description);
  google::rpc::BadRequest bad;
  auto* v = bad.add_field_violations();
  v->set_field(field);
  v->set_description(description);
  google::rpc::Status details;
  details.set_code(static_cast<int>(StatusCode::INVALID_ARGUMENT));
  details.set_message(message);
  details.add_details()->PackFrom(bad);
  return Status(StatusCode::INVALID_ARGUMENT, message, details.SerializeAsString());
}

// FromStatus maps an internal status; "field 'x': why" messages become Invalid(x, why).
Status FromStatus(const mailseal::Status& s) {
  if (s.ok()) return Status::OK;
  const std::string& m = s.message();
  static const std::string kField = "field '";
  size_t at = m.find(kField);
  if (static_cast<int>(s.code()) == static_cast<int>(StatusCode::INVALID_ARGUMENT) && at != std::string::npos) {
    size_t end = m.find("': ", at + kField.size());
    if (end != std::string::npos) {
      std::string field = m.substr(at + kField.size(), end - at - kField.size());
      Status st = Invalid(field, m.substr(end + 3));
      return Status(st.error_code(), m, st.error_details());
    }
  }
  return Status(static_cast<StatusCode>(static_cast<int>(s.code())), m);
}

}  // namespace mailseal::control
