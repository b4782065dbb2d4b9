// health.cc — mailsealctl health: SERVING or NOT_SERVING, overall and per part.
#include "grpc/health/v1/health.grpc.pb.h"
#include "tools/mailsealctl/cli.h"

namespace mailsealctl {
namespace {
namespace hv1 = grpc::health::v1;

int Health(const Context& c) {
  auto stub = hv1::Health::NewStub(c.channel);
  hv1::HealthCheckResponse resp;
  if (int rc = Call(stub.get(), &hv1::Health::Stub::Check, hv1::HealthCheckRequest(), &resp)) return rc;
  std::printf("%s\n", hv1::HealthCheckResponse::ServingStatus_Name(resp.status()).c_str());
  for (const char* part : {"mailseal.smtp", "mailseal.sealing", "mailseal.audit", "mailseal.keys", "mailseal.cluster"}) {
    hv1::HealthCheckRequest req;
    req.set_service(part);
    hv1::HealthCheckResponse r;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Status st = stub->Check(&ctx, req, &r);   // a part not reported yet: UNKNOWN
    // Parts a gateway does not have (no cluster, no token) are not listed.
    if ((std::string(part) == "mailseal.cluster" || std::string(part) == "mailseal.keys") &&
        st.error_code() == grpc::StatusCode::NOT_FOUND)
      continue;
    std::printf("  %-17s %s\n", part, st.ok() ? hv1::HealthCheckResponse::ServingStatus_Name(r.status()).c_str() : "UNKNOWN");
  }
  return resp.status() == hv1::HealthCheckResponse::SERVING ? kOk : kError;
}
}  // namespace

void AddHealthCommand(CLI::App& app, Runner* chosen) {
  On(app.add_subcommand("health", "SERVING or NOT_SERVING, overall and per part: smtp (accepting mail), sealing "
                                  "(the token), audit (the trail records), keys (a key certificate in use ends within 7 days), cluster (in contact with etcd; a cut-off node keeps relaying)"),
     chosen, Health);
}

}  // namespace mailsealctl
