// main.cc — mailsealctl, the operator's CLI for mailseald's management API (issue #5).
//
//   mailsealctl [--server H:P --cert F --key F --ca F | --config FILE] [-o table|json] COMMAND
//     queue counts | list --state S | show ID | release ID | delete ID --reason R
//           | recall (ID | --from ADDR [--since MS] [--until MS]) --reason R
//     policy get [--version N] | set FILE --expect-version N | edit | diff A B | history
//     audit head | records [--start N --limit N] | tail [-f] [--start N] | proof SEQ
//           | export FILE | verify --exported FILE
//     keys list | generate LABEL --purpose P [--type T] --domain D... | csr LABEL --domain D...
//           | install LABEL CERT --domain D... [--chain F] | rotate PURPOSE --label NEW --domain D...
//     ceremony start --key LABEL --reason R | approve ID --custodian NAME --custodian-key F
//           | status ID [--transcript-out F]
//     certs list | crls | reload
//     cluster members | status
//     health | completion bash
//
// Connection settings: flags, else MAILSEALCTL_SERVER / _CERT / _KEY / _CA, else the config file
// (--config, MAILSEALCTL_CONFIG or ~/.config/mailsealctl.conf; lines "server = host:port").
// TLS 1.3 with our client certificate (mTLS); the server is checked against --ca.
// Exit codes: 0 ok, 1 error (including no connection or a failed check), 2 usage, 3 permission
// denied. Private keys given to it (the client key, a custodian's key) never leave this host.
// One file per command group (queue.cc, policy.cc, audit.cc, keys.cc, ceremony.cc, health.cc, certs.cc, cluster.cc);
// cli.h has what they share.
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

#include <cstdio>
#include <functional>
#include <string>

#include "tools/mailsealctl/cli.h"

using namespace mailsealctl;

namespace {
// BashCompletion writes a completion script for the command tree of `app`.
std::string BashCompletion(const CLI::App& app) {
  std::string cases;
  std::function<void(const CLI::App*, const std::string&)> walk = [&](const CLI::App* a, const std::string& path) {
    std::string words;
    for (const CLI::App* sub : a->get_subcommands({})) words += sub->get_name() + " ";
    for (const CLI::Option* o : a->get_options({}))
      for (const std::string& n : o->get_lnames()) words += "--" + n + " ";
    cases += "    \"" + path + "\") words=\"" + words + "\" ;;\n";
    for (const CLI::App* sub : a->get_subcommands({})) walk(sub, path.empty() ? sub->get_name() : path + " " + sub->get_name());
  };
  walk(&app, "");
  return "# bash completion for mailsealctl: source <(mailsealctl completion bash)\n"
         "_mailsealctl() {\n"
         "  local cur=${COMP_WORDS[COMP_CWORD]} path=\"\" w words\n"
         "  for w in \"${COMP_WORDS[@]:1:COMP_CWORD-1}\"; do\n"
         "    [[ $w == -* ]] && continue\n"
         "    case \"${path:+$path }$w\" in\n" + [&] {
           std::string known;
           std::function<void(const CLI::App*, const std::string&)> k = [&](const CLI::App* a, const std::string& p) {
             for (const CLI::App* sub : a->get_subcommands({})) {
               std::string q = p.empty() ? sub->get_name() : p + " " + sub->get_name();
               known += "      \"" + q + "\") path=\"" + q + "\" ;;\n";
               k(sub, q);
             }
           };
           k(&app, "");
           return known;
         }() +
         "    esac\n"
         "  done\n"
         "  case \"$path\" in\n" + cases +
         "  esac\n"
         "  COMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n"
         "}\n"
         "complete -o default -F _mailsealctl mailsealctl\n";
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mailsealctl — manage a mailseal gateway through its management API (mTLS)"};
  app.set_help_all_flag("--help-all", "help for every command");
  std::string server = Env("MAILSEALCTL_SERVER"), cert = Env("MAILSEALCTL_CERT"), key = Env("MAILSEALCTL_KEY"),
              ca = Env("MAILSEALCTL_CA"), server_name = Env("MAILSEALCTL_SERVER_NAME"), output = "table";
  std::string default_config = Env("MAILSEALCTL_CONFIG");
  if (default_config.empty() && !Env("HOME").empty()) default_config = Env("HOME") + "/.config/mailsealctl.conf";
  app.set_config("--config", default_config, "connection settings file (server = , cert = , key = , ca = )");
  app.add_option("--server", server, "management address host:port (MAILSEALCTL_SERVER)");
  app.add_option("--cert", cert, "client certificate, PEM (MAILSEALCTL_CERT)");
  app.add_option("--key", key, "client key, PEM (MAILSEALCTL_KEY)");
  app.add_option("--ca", ca, "CA that issued the server certificate, PEM (MAILSEALCTL_CA)");
  app.add_option("--server-name", server_name,
                 "the name the server's certificate must carry when --server is an address or a forwarded port "
                 "(MAILSEALCTL_SERVER_NAME); default: the host of --server");
  app.add_option("-o,--output", output, "table or json")->check(CLI::IsMember({"table", "json"}));
  app.require_subcommand(1);

  Runner chosen;
  AddQueueCommands(app, &chosen);
  AddHealthCommand(app, &chosen);
  std::string shell;
  app.add_subcommand("completion", "print a shell completion script")->add_option("shell", shell, "bash")->required()
      ->check(CLI::IsMember({"bash"}));
  AddPolicyCommands(app, &chosen);
  AddCertCommands(app, &chosen);
  AddClusterCommands(app, &chosen);
  AddAuditCommands(app, &chosen);
  AddKeyCommands(app, &chosen);
  AddCeremonyCommands(app, &chosen);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? kOk : kUsage;
  }
  if (app.got_subcommand("completion")) {
    std::fputs(BashCompletion(app).c_str(), stdout);
    return kOk;
  }
  if (!chosen) return kUsage;
  std::string cert_pem, key_pem, ca_pem;
  if (server.empty() || !Slurp(cert, &cert_pem) || !Slurp(key, &key_pem) || !Slurp(ca, &ca_pem)) {
    std::fprintf(stderr, "mailsealctl: --server, --cert, --key and --ca (or MAILSEALCTL_*, or a config file) must name "
                         "a server and readable PEM files\n");
    return kUsage;
  }
  auto provider = std::make_shared<grpc::experimental::StaticDataCertificateProvider>(
      ca_pem, std::vector<grpc::experimental::IdentityKeyCertPair>{{key_pem, cert_pem}});
  grpc::experimental::TlsChannelCredentialsOptions tls;
  tls.set_certificate_provider(provider);
  tls.watch_root_certs();
  tls.watch_identity_key_cert_pairs();
  Context ctx;
  grpc::ChannelArguments args;
  if (!server_name.empty()) args.SetSslTargetNameOverride(server_name);
  args.SetMaxReceiveMessageSize(1 << 30);   // an archive export (DE-21) may be large
  ctx.channel = grpc::CreateCustomChannel(server, grpc::experimental::TlsCredentials(tls), args);
  ctx.json = output == "json";
  return chosen(ctx);
}
