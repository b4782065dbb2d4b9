// Config validation: a bad config is refused with file:line:column and the field (issue #2).
#include "dataplane/config/config.h"

#include <gtest/gtest.h>

namespace mailseal::config {
namespace {

const char kGood[] = R"(listen { address: "127.0.0.1:2525" }
spool_dir: "/var/spool/mailseal"
delivery { relay_host: "[127.0.0.1]:25" }
)";

TEST(Config, DefaultsAreApplied) {
  Result<v1::Config> c = ParseConfigText(kGood, "gw.conf");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->net_threads(), 2u);
  EXPECT_EQ(c->limits().max_message_size(), 35ull << 20);
  EXPECT_EQ(c->delivery().max_lifetime_s(), 5u * 24 * 3600);
  EXPECT_EQ(c->bare_newline(), v1::BARE_NEWLINE_REJECT);
  EXPECT_FALSE(c->hostname().empty());
}

TEST(Config, SyntaxErrorNamesLineAndColumn) {
  Result<v1::Config> c = ParseConfigText("listen { address: \"127.0.0.1:25\" }\nrequre_tls: true\n", "gw.conf");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().message().rfind("gw.conf:2:", 0), 0u) << c.status().message();
  EXPECT_NE(c.status().message().find("requre_tls"), std::string::npos);
}

TEST(Config, SemanticErrorsNameTheFieldAndWhereItIs) {
  struct Case {
    std::string text, want_prefix, want_field;
  } cases[] = {
      {"listen { address: \"nonsense\" }\nspool_dir: \"/q\"\ndelivery {}\n", "gw.conf:1:10", "address"},
      {"listen { address: \"127.0.0.1:1\" }\nspool_dir: \"relative\"\ndelivery {}\n", "gw.conf:2:1", "spool_dir"},
      {"listen { address: \"127.0.0.1:1\" }\nspool_dir: \"/q\"\ntrusted_networks: \"10.0.0.0/33\"\ndelivery {}\n",
       "gw.conf:3:1", "trusted_networks"},
      {"listen { address: \"127.0.0.1:1\" }\nspool_dir: \"/q\"\nlimits {\n  max_line_length: 100\n}\ndelivery {}\n",
       "gw.conf:4:3", "max_line_length"},
      {"listen { address: \"127.0.0.1:1\" }\nspool_dir: \"/q\"\ndelivery {\n relay_host: \"x\"\n}\n",
       "gw.conf:4:2", "relay_host"},
      {"spool_dir: \"/q\"\ndelivery {}\n", "gw.conf", "listen"},
      {"listen { address: \"127.0.0.1:1\" }\nspool_dir: \"/q\"\n", "gw.conf", "delivery"},
      {"listen { address: \"127.0.0.1:1\" }\nspool_dir: \"/q\"\ndelivery {}\nhsm {\n  module_path: \"/m.so\"\n  token_label: \"t\"\n  pin_file: \"1234\"\n}\n",
       "gw.conf:7:3", "pin_file"},
      // Issue #16: TLS levels are named ones; verify needs the next hops' CAs.
      {"listen { address: \"127.0.0.1:1\" }\nspool_dir: \"/q\"\ndelivery {\n tls: \"paranoid\"\n}\n", "gw.conf:4:2", "tls"},
      {"listen { address: \"127.0.0.1:1\" }\nspool_dir: \"/q\"\ndelivery {\n tls_policies { domain: \"b.test\" level: \"sure\" }\n}\n",
       "gw.conf:4:2", "tls_policies"},
      {"listen { address: \"127.0.0.1:1\" }\nspool_dir: \"/q\"\ndelivery {\n tls_policies { domain: \"b.test\" level: \"verify\" }\n}\n",
       "gw.conf:4:2", "tls_policies"},
      {"listen { address: \"127.0.0.1:1\" }\nspool_dir: \"/q\"\ndelivery {\n tls_match: \"not a name\"\n}\n",
       "gw.conf:4:2", "tls_match"},
      // Issue #17: the DPDK back end needs its port and address.
      {"listen { address: \"127.0.0.1:1\" }\nspool_dir: \"/q\"\ndelivery {}\nio {\n backend: DPDK\n dpdk { eal_args: \"--no-pci\" }\n}\n",
       "gw.conf", "dpdk.port"},
      {"listen { address: \"127.0.0.1:1\" }\nspool_dir: \"/q\"\ndelivery {}\nio {\n backend: DPDK\n dpdk { eal_args: \"--no-pci\" port: \"p\" address: \"10.0.0.300/24\" }\n}\n",
       "gw.conf", "dpdk.address"},
      {"listen { address: \"127.0.0.1:1\" }\nspool_dir: \"/q\"\ndelivery {}\nio {\n backend: DPDK\n dpdk { eal_args: \"--no-pci\" port: \"p\" address: \"10.0.0.2/24\" lcores: 64 }\n}\n",
       "gw.conf", "dpdk.lcores"},
      {"listen { address: \"127.0.0.1:1\" }\nspool_dir: \"/q\"\ndelivery {}\nio {\n backend: DPDK\n dpdk { eal_args: \"--no-pci\" port: \"p\" address: \"10.0.0.2/24\" delayed_ack_ms: 600 }\n}\n",
       "gw.conf", "dpdk.delayed_ack_ms"},
      {"listen { address: \"127.0.0.1:1\" }\nspool_dir: \"/q\"\ndelivery {}\ncrypto_memory_mib: 5000\n",
       "gw.conf:4:1", "crypto_memory_mib"},
      {"listen { address: \"127.0.0.1:1\" }\nspool_dir: \"/q\"\ndelivery {}\ncrypto_cpus: 0\ncrypto_cpus: 4096\n",
       "gw.conf", "crypto_cpus"},
      {"listen { address: \"127.0.0.1:1\" }\nspool_dir: \"/q\"\ndelivery {}\nio {\n backend: DPDK\n dpdk { eal_args: \"--no-pci\" port: \"p\" address: \"10.0.0.2/24\" cpus: 2000 }\n}\n",
       "gw.conf", "dpdk.cpus"},
  };
  for (const Case& k : cases) {
    Result<v1::Config> c = ParseConfigText(k.text, "gw.conf");
    ASSERT_FALSE(c.ok()) << k.text;
    EXPECT_EQ(c.status().message().rfind(k.want_prefix + ":", 0), 0u) << c.status().message();
    EXPECT_NE(c.status().message().find("field '" + k.want_field + "'"), std::string::npos)
        << c.status().message();
  }
}

// Issue #20: the cluster section.
TEST(Config, ClusterSection) {
  const std::string base = "listen { address: \"127.0.0.1:1\" }\nspool_dir: \"/q\"\ndelivery {}\n";
  const std::string control = "control { listen: \"127.0.0.1:9000\" }\n";
  struct Case {
    std::string text, want_field;
  } bad[] = {
      {base + "cluster {\n name: \"c\"\n endpoints: \"127.0.0.1:2379\"\n}\n", "name"},   // no control section
      {base + control + "cluster {\n name: \"a/b\"\n endpoints: \"127.0.0.1:2379\"\n}\n", "name"},
      {base + control + "cluster {\n name: \"c\"\n}\n", "endpoints"},
      {base + control + "cluster {\n name: \"c\"\n endpoints: \"etcd.example:2379\"\n}\n", "endpoints"},
      {base + control + "cluster {\n name: \"c\"\n endpoints: \"10.0.0.5:2379\"\n}\n", "endpoints"},   // plaintext off loopback
      {base + control + "cluster {\n name: \"c\"\n endpoints: \"127.0.0.1:2379\"\n endpoints: \"[::1]:2379\"\n}\n", "endpoints"},
      {base + control + "cluster {\n name: \"c\"\n endpoints: \"127.0.0.1:2379\"\n lease_ttl_s: 1\n}\n", "lease_ttl_s"},
      {base + control + "cluster {\n name: \"c\"\n endpoints: \"127.0.0.1:2379\"\n node_id: \"a b\"\n}\n", "node_id"},
      {base + control + "cluster {\n name: \"c\"\n endpoints: \"10.0.0.5:2379\"\n ca_file: \"/ca\"\n cert_file: \"/c\"\n}\n", "cert_file"},
  };
  for (const Case& k : bad) {
    Result<v1::Config> c = ParseConfigText(k.text, "gw.conf");
    ASSERT_FALSE(c.ok()) << k.text;
    EXPECT_EQ(c.status().message().rfind("gw.conf:", 0), 0u) << c.status().message();
    EXPECT_NE(c.status().message().find("field '" + k.want_field + "'"), std::string::npos) << c.status().message();
  }
  Result<v1::Config> ok = ParseConfigText(
      base + control + "hostname: \"n1.test\"\ncluster {\n name: \"agency-a\"\n endpoints: \"10.0.0.5:2379\"\n ca_file: \"/ca\"\n}\n",
      "gw.conf");
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  EXPECT_EQ(ok->cluster().node_id(), "n1.test") << "the hostname by default";
  EXPECT_EQ(ok->cluster().advertise(), "127.0.0.1:9000") << "control.listen by default";
  EXPECT_EQ(ok->cluster().lease_ttl_s(), 5u);
  EXPECT_EQ(ok->cluster().anchor_interval_s(), 10u);
}

TEST(Config, HostPort) {
  std::string h;
  uint16_t p;
  EXPECT_TRUE(ParseHostPort("[::1]:25", &h, &p));
  EXPECT_EQ(h, "::1");
  EXPECT_TRUE(ParseHostPort("mx.test:2525", &h, &p));
  EXPECT_EQ(p, 2525);
  EXPECT_FALSE(ParseHostPort("::1:25", &h, &p));
  EXPECT_FALSE(ParseHostPort("h:99999", &h, &p));
}

}  // namespace
}  // namespace mailseal::config
