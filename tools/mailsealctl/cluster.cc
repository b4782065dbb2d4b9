// cluster.cc — mailsealctl cluster members|status (issue #20): the cluster as the node reached
// sees it. Every other command works against any node of a cluster.
#include "tools/mailsealctl/cli.h"

namespace mailsealctl {
namespace {

int Members(const Context& c) {
  auto stub = v1::ClusterService::NewStub(c.channel);
  v1::ListMembersResponse resp;
  if (int rc = Call(stub.get(), &v1::ClusterService::Stub::ListMembers, v1::ListMembersRequest(), &resp)) return rc;
  return c.Print(resp, [&] {
    if (resp.from_cache()) std::printf("(etcd unreachable from this node: the members it saw last)\n");
    std::printf("%-20s %-24s %-10s %-8s %-10s %s\n", "NODE", "ADVERTISE", "VERSION", "POLICY", "AUDIT", "HEALTH");
    for (const auto& m : resp.members())
      std::printf("%-20s %-24s %-10s %-8llu %-10llu %s\n", m.node_id().c_str(), m.advertise().c_str(), m.version().c_str(),
                  static_cast<unsigned long long>(m.policy_version()), static_cast<unsigned long long>(m.audit_size()),
                  m.health().c_str());
  });
}

int Status(const Context& c) {
  auto stub = v1::ClusterService::NewStub(c.channel);
  v1::GetClusterStatusResponse resp;
  if (int rc = Call(stub.get(), &v1::ClusterService::Stub::GetClusterStatus, v1::GetClusterStatusRequest(), &resp))
    return rc;
  c.Print(resp, [&] {
    if (!resp.enabled()) {
      std::printf("not part of a cluster (a single appliance: its state is local)\n");
      return;
    }
    std::printf("cluster   %s\nnode      %s\nconnected %s\n", resp.cluster().c_str(), resp.node_id().c_str(),
                resp.connected() ? "yes" : "no");
    if (!resp.degraded().empty()) std::printf("degraded  %s (serving with the last good state)\n", resp.degraded().c_str());
    std::printf("revision  %lld\npolicy    version %llu\nmembers   %u\n", static_cast<long long>(resp.revision()),
                static_cast<unsigned long long>(resp.policy_version()), resp.members());
    for (const auto& j : resp.jobs())
      std::printf("job       %s on %s\n", j.job().c_str(), j.leader().empty() ? "(nobody yet)" : j.leader().c_str());
    for (const auto& a : resp.alarms())
      std::printf("ALARM     audit trail of %s: %s (found by %s at %s)\n", a.node_id().c_str(), a.reason().c_str(),
                  a.detected_by().c_str(), Time(a.unix_ms()).c_str());
  });
  return resp.alarms_size() > 0 ? kError : kOk;
}
}  // namespace

void AddClusterCommands(CLI::App& app, Runner* chosen) {
  CLI::App* cl = app.add_subcommand("cluster", "the cluster this node belongs to (issue #20)");
  cl->require_subcommand(1);
  On(cl->add_subcommand("members", "the nodes alive in the cluster, with their health and policy version"), chosen,
     Members);
  On(cl->add_subcommand("status", "this node's contact with etcd, singleton jobs and audit alarms (exit 1 on an alarm)"),
     chosen, Status);
}

}  // namespace mailsealctl
